"""Input lists made by the real fhEVM client library (node-tfhe from npm, WASM), driven
by tests/engine/node/prove.js: what a wallet would send."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from coprocessor.settings import load_settings
from devstack.versions import npm_prefix

PROVER = Path(__file__).parent / "engine" / "node" / "prove.js"


def node_prove(
    tmp_path: Path, public_key: bytes, crs: bytes, metadata: bytes, *items: str
) -> bytes:
    node_modules = npm_prefix(load_settings().cache_dir) / "node_modules"
    assert (node_modules / "node-tfhe").is_dir(), "run `make setup` (installs node-tfhe)"
    (tmp_path / "pk").write_bytes(public_key)
    (tmp_path / "crs").write_bytes(crs)
    out = tmp_path / "list"
    done = subprocess.run(
        [
            shutil.which("node") or "node",
            str(PROVER),
            str(tmp_path / "pk"),
            str(tmp_path / "crs"),
            metadata.hex(),
            str(out),
            *items,
        ],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out.read_bytes()
