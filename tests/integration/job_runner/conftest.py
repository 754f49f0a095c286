"""One real tenant (TFHE-rs keys in S3) and database for the compute-stage tests."""

from __future__ import annotations

import asyncpg
import pytest

from coprocessor.settings import Settings, load_settings

from .builder import GraphBuilder, drop_server_key, new_tenant


@pytest.fixture(scope="module")
def compute_settings(dev_stack, database_url_module, tmp_path_factory) -> Settings:
    base = tmp_path_factory.mktemp("compute")
    return Settings(
        database_url=database_url_module,
        cache_dir=base / "cache",
        termination_log=base / "termination-log",
        compute_input_wait_s=60,
        notify_poll_interval_s=1.0,
    )


@pytest.fixture(scope="module")
async def tenant(compute_settings):
    record, client = await new_tenant(compute_settings, "compute-test", "tfhe-rs")
    yield record, client
    drop_server_key(compute_settings, record)


@pytest.fixture
def graph(tenant) -> GraphBuilder:
    record, client = tenant
    return GraphBuilder(client, record.tenant_id)


@pytest.fixture
async def conn(compute_settings):
    connection = await asyncpg.connect(compute_settings.database_url)
    yield connection
    await connection.close()


@pytest.fixture
def stage_env(monkeypatch, compute_settings):
    """The environment of a stage pod; returns where its termination message goes."""
    monkeypatch.setenv("FHE_DATABASE_URL", compute_settings.database_url)
    monkeypatch.setenv("FHE_CACHE_DIR", str(compute_settings.cache_dir))
    monkeypatch.setenv("FHE_TERMINATION_LOG", str(compute_settings.termination_log))
    monkeypatch.setenv("FHE_LOG_FORMAT", "text")
    load_settings.cache_clear()
    yield compute_settings.termination_log
    load_settings.cache_clear()
