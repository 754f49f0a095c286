"""Pinned server versions and where the installer puts their binaries."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

from coprocessor.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent  # the dev stack runs from the checkout

VERSIONS_FILE = REPO_ROOT / "tools" / "versions.env"


def pinned() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _cache(cache_dir: Path | None) -> Path:
    """FHE_CACHE_DIR (the installer's cache) unless a directory is given."""
    return cache_dir or load_settings().cache_dir


def bin_dir(cache_dir: Path | None = None) -> Path:
    return _cache(cache_dir) / "bin"


def minio_binary(cache_dir: Path | None = None) -> Path:
    return bin_dir(cache_dir) / f"minio-{pinned()['MINIO_VERSION']}" / "minio"


def npm_prefix(cache_dir: Path | None = None) -> Path:
    return _cache(cache_dir) / "npm"


def anvil_binary(cache_dir: Path | None = None) -> Path:
    """The native anvil shipped inside the npm package's platform dependency."""
    pattern = str(npm_prefix(cache_dir) / "node_modules/@foundry-rs/anvil-linux-*/bin/anvil")
    found = sorted(glob.glob(pattern))
    if found:
        return Path(found[0])
    on_path = shutil.which("anvil")
    return Path(on_path) if on_path else Path(pattern.replace("*", "amd64"))


def postgres_bin_dir() -> Path:
    """Debian installs each major under /usr/lib/postgresql/<major>/bin; take the newest."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("postgres")
    return Path(found).resolve().parent if found else Path("/usr/lib/postgresql/15/bin")


def kubernetes_version() -> str:
    """The k8s.io/kubernetes release pinned in tools/k8s/go.mod."""
    for line in (REPO_ROOT / "tools" / "k8s" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise RuntimeError("tools/k8s/go.mod does not require k8s.io/kubernetes")


def kubernetes_bin_dir(cache_dir: Path | None = None) -> Path:
    return bin_dir(cache_dir) / f"k8s-{kubernetes_version()}"


def kubectl_binary(cache_dir: Path | None = None) -> Path:
    """Ours when scripts/build-k8s built one (the machine's was too far off), else the
    machine's."""
    built = kubernetes_bin_dir(cache_dir) / "kubectl"
    if built.exists():
        return built
    return Path(shutil.which("kubectl") or built)


def helm_binary(cache_dir: Path | None = None) -> Path:
    """The helm scripts/build-helm builds, at the helm.sh/helm/v3 release pinned in
    tools/helm/go.mod."""
    for line in (REPO_ROOT / "tools" / "helm" / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["require"]:  # a lone requirement: `require helm.sh/helm/v3 vX`
            parts = parts[1:]
        if len(parts) == 2 and parts[0] == "helm.sh/helm/v3":
            return bin_dir(cache_dir) / f"helm-{parts[1]}" / "helm"
    raise RuntimeError("tools/helm/go.mod does not require helm.sh/helm/v3")
