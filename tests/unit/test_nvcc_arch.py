"""scripts/nvcc-arch: the GPU build's nvcc on a machine without a GPU (make setup-gpu).

The real nvcc is replaced by a test double that prints the arguments it was given: what
is checked is the rewriting of TFHE-rs's sm_70 fallback, not CUDA itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

WRAPPER = REPO_ROOT / "scripts" / "nvcc-arch"


@pytest.fixture
def echo_nvcc(tmp_path: Path) -> Path:
    fake = tmp_path / "nvcc"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return fake


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WRAPPER), *args], env=env, capture_output=True, text=True)


def test_the_sm_70_fallback_becomes_the_chosen_architecture(echo_nvcc):
    args = [
        "-DCUDA_ARCH=700",
        "--generate-code=arch=compute_70,code=[compute_70,sm_70]",
        "-arch=sm_70",
        "-I/path with spaces/include",
        "-c",
        "cmux.cu",
    ]
    done = run(args, {"FHE_CUDA_ARCH": "90", "FHE_REAL_NVCC": str(echo_nvcc), "PATH": "/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "-DCUDA_ARCH=900",
        "--generate-code=arch=compute_90,code=[compute_90,sm_90]",
        "-arch=sm_90",
        "-I/path with spaces/include",  # one argument still, untouched
        "-c",
        "cmux.cu",
    ]


def test_other_architectures_pass_through(echo_nvcc):
    args = ["-arch=sm_80", "-DCUDA_ARCH=800", "--version"]
    done = run(args, {"FHE_CUDA_ARCH": "90", "FHE_REAL_NVCC": str(echo_nvcc), "PATH": "/bin"})
    assert done.stdout.splitlines() == args


@pytest.mark.parametrize("missing", ["FHE_CUDA_ARCH", "FHE_REAL_NVCC"])
def test_it_refuses_to_guess(echo_nvcc, missing):
    env = {"FHE_CUDA_ARCH": "90", "FHE_REAL_NVCC": str(echo_nvcc), "PATH": "/bin"}
    del env[missing]
    done = run(["-c", "x.cu"], env)
    assert done.returncode != 0
    assert f"{missing} is not set" in done.stderr
