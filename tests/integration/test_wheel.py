"""The product wheel: what `pip wheel .` builds holds the product and only the product,
and runs from a venv outside the checkout (migrations and ABIs as package data).

The fresh venv gets our wheel and nothing else of ours; third-party packages come from
the dev venv through a directory of links that leaves out every distribution of ours
(fhe-coprocessor, fhe-devstack, the editable-install hooks), so an import that still
reached into the checkout would fail here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from coprocessor.db import migrate
from tests.paths import REPO_ROOT

PRODUCT = {"coprocessor", "fhe_operator", "job_runner", "listeners", "fhectl"}
OURS = ("fhe_coprocessor", "fhe_devstack", "__editable__", "_fhe_coprocessor", "fhe-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    scratch = REPO_ROOT / "build"  # setuptools builds in the source tree
    had_scratch = scratch.exists()
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    try:
        subprocess.run([*command, "-q", "-w", str(out), str(REPO_ROOT)], check=True, cwd=out)
    finally:
        if not had_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    (built,) = out.glob("fhe_coprocessor-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    env = root / "env"
    purelib = Path(
        subprocess.run(
            [
                env / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)  # what pip does for a pure wheel, minus the scripts
    deps = root / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not entry.name.startswith(OURS) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    (purelib / "third_party.pth").write_text(f"{deps}\n")
    return env


def run_in(
    venv: Path, *code_or_module: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "python"), *code_or_module],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_the_wheel_holds_the_product_and_its_data_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == PRODUCT
    assert not [n for n in names if "devstack" in n or n.startswith("tests/")]
    assert {Path(n).name for n in names if n.startswith("coprocessor/db/migrations/")} >= {
        "0001_initial.sql",
        "0004_sender.sql",
    }
    abis = [n for n in names if n.startswith("coprocessor/chain/compiled/")]
    assert any(n.endswith("host/FHEVMExecutor.json") for n in abis)
    assert any(n.endswith("host/ACL.json") for n in abis)
    assert not any("RogueExecutor" in n for n in abis)  # a test contract
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("fhectl", "fhe-operator", "fhe-job", "fhe-listener"):
        assert f"{command} = " in text


@pytest.mark.parametrize("module", ["fhe_operator", "job_runner", "listeners", "fhectl"])
def test_every_deployable_starts_from_the_installed_wheel(venv, tmp_path, module):
    result = run_in(venv, "-m", module, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    where = run_in(
        venv,
        "-c",
        f"import {module}, coprocessor; print({module}.__file__); print(coprocessor.__file__)",
        cwd=tmp_path,
    )
    for path in where.stdout.split():
        assert str(venv) in path and str(REPO_ROOT) not in path


def test_the_installed_fhectl_has_no_dev_commands(venv, tmp_path):
    result = run_in(venv, "-m", "fhectl", "dev", "up", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'dev'" in result.stderr


async def test_fhectl_db_migrate_from_the_wheel(venv, tmp_path, dev_stack):
    empty = tmp_path / "none"
    empty.mkdir()
    async with migrate.scratch_database(dev_stack["FHE_DATABASE_URL"], empty, "wheel") as url:
        result = run_in(
            venv,
            "-m",
            "fhectl",
            "db",
            "migrate",
            "-o",
            "json",
            env={"FHE_DATABASE_URL": url},
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["applied"] == list(range(1, report["version"] + 1))
        assert report["version"] == migrate.latest_version(
            REPO_ROOT / "coprocessor" / "db" / "migrations"
        )
