"""Tenants: creation's checks that come before any service is touched, and which GPUs
a stage computes a tenant's work on."""

from __future__ import annotations

import logging

import pytest

from coprocessor import tenants
from coprocessor.db import queries
from coprocessor.errors import UserError
from coprocessor.fhe.engine import Keyset, UnsupportedOperation
from coprocessor.settings import Settings
from coprocessor.tenants import create_tenant, key_dir


async def test_a_keyset_of_another_backend_is_refused_before_anything_is_stored(tmp_path):
    settings = Settings(cache_dir=tmp_path)
    foreign = Keyset("concrete", b"client", b"server", b"")
    with pytest.raises(UserError, match="keyset given is for backend 'concrete', not 'tfhe-rs'"):
        # No connection and no store: the check must come first.
        await create_tenant(None, None, settings, "acme", 1, "tfhe-rs", keyset=foreign)
    assert not key_dir(settings, "acme").exists()


@pytest.mark.parametrize("name", ["", "Acme", "-a", "a" * 64, "a_b"])
async def test_bad_names_are_refused_before_anything_is_stored(tmp_path, name):
    settings = Settings(cache_dir=tmp_path)
    with pytest.raises(UserError, match="tenant name"):
        await create_tenant(None, None, settings, name, 1, "tfhe-rs")
    assert not any(tmp_path.iterdir())


# --- which GPUs a stage computes a tenant's work on -----------------------------------


def _tenant(backend: str = "tfhe-rs") -> queries.Tenant:
    return queries.Tenant(1, "acme", 1, b"k" * 32, backend, None)


class _Backend:
    def __init__(self, runs_on_gpu: bool) -> None:
        self.runs_on_gpu = runs_on_gpu


def _no_probe() -> None:
    raise AssertionError("CUDA was asked")


def test_a_cpu_stage_asks_cuda_nothing(monkeypatch):
    monkeypatch.setattr(tenants, "stage_devices", lambda settings: _no_probe())
    monkeypatch.setattr(tenants, "get_backend", lambda name: _Backend(True))
    assert tenants.devices_for(Settings(compute_device="cpu"), _tenant()) is None


def test_a_build_without_gpu_support_on_a_gpu_node_computes_on_cpu_without_a_probe(
    monkeypatch, caplog
):
    """The probe (cupy and the CUDA driver) costs 0.7 s of CPU per pod; a build that
    cannot use a GPU has no use for its answer. It says so, once per process."""
    monkeypatch.setattr(tenants, "stage_devices", lambda settings: _no_probe())
    monkeypatch.setattr(tenants, "get_backend", lambda name: _Backend(False))
    tenants._warn_cpu_build.cache_clear()
    with caplog.at_level(logging.WARNING, logger="coprocessor.tenants"):
        for _ in range(2):
            assert tenants.devices_for(Settings(compute_device="gpu"), _tenant("x")) is None
    said = [r for r in caplog.records if "cannot compute on GPUs" in r.getMessage()]
    assert len(said) == 1


def test_a_gpu_build_on_a_gpu_node_gets_the_devices_cuda_reports(monkeypatch):
    pool = object()
    monkeypatch.setattr(tenants, "stage_devices", lambda settings: pool)
    monkeypatch.setattr(tenants, "get_backend", lambda name: _Backend(True))
    assert tenants.devices_for(Settings(compute_device="gpu"), _tenant()) is pool


@pytest.mark.parametrize("has_gpu", [True, False])
def test_the_tfhe_rs_backend_runs_on_gpus_only_when_built_for_them(monkeypatch, has_gpu):
    from coprocessor.fhe import tfhe_backend

    class Extension:
        HAS_GPU = has_gpu

    monkeypatch.setattr(tfhe_backend, "_native", lambda: Extension())
    assert tfhe_backend.TfheRsBackend().runs_on_gpu is has_gpu


def test_the_tfhe_rs_backend_without_its_extension_runs_on_no_gpu(monkeypatch):
    from coprocessor.fhe import tfhe_backend

    def missing():
        raise UnsupportedOperation("the tfhe-rs extension is not built")

    monkeypatch.setattr(tfhe_backend, "_native", missing)
    assert tfhe_backend.TfheRsBackend().runs_on_gpu is False
