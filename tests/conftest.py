"""Session fixtures: the real local stack, reused when one runs, started otherwise.

Markers are given by directory (tests/unit -> unit, tests/integration -> integration,
tests/e2e -> e2e), so a test cannot forget its marker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from coprocessor.db import migrate
from coprocessor.settings import MIGRATIONS_DIR, Settings, load_settings
from devstack import stack
from devstack.kube import KubeControlPlane
from devstack.settings import default_state_dir
from tests.paths import REPO_ROOT


def checkout_temp_root(checkout: Path, base: Path) -> Path:
    """The temp root of this checkout's test sessions. pytest's retention
    (``tmp_path_retention_count = 1``) deletes the older numbered session dirs under its
    root as a new session starts; with one root per user, a session from another
    checkout (a CI clone) lost its live stack - PostgreSQL's data dir - that way. One
    root per checkout keeps the retention and ends the interference."""
    import hashlib

    # Short: PostgreSQL's Unix socket lives in a test's data dir, and a socket path has
    # at most 107 bytes (measured: a 26-byte root broke test_notify's own server).
    digest = hashlib.sha256(str(checkout.resolve()).encode()).hexdigest()[:6]
    return base / f"fhe-{digest}"


os.environ.setdefault(
    "PYTEST_DEBUG_TEMPROOT", str(checkout_temp_root(REPO_ROOT, Path(tempfile.gettempdir())))
)
Path(os.environ["PYTEST_DEBUG_TEMPROOT"]).mkdir(parents=True, exist_ok=True)

_MARKERS = {
    "unit": pytest.mark.unit,
    "integration": pytest.mark.integration,
    "e2e": pytest.mark.e2e,
    "engine": pytest.mark.engine,
}


# A whole run's peak: the local stack's S3 with at most three copies of a 465 MB
# server key (each test module frees its own), PostgreSQL, the Kubernetes control plane
# and the compile caches: measured at most 2.0 GB under /tmp/pytest-of-root (330 MB
# keys, a second session beside it).
_DISK_NEEDED = 3 * 2**30


def disk_shortfall(places: list[Path], needed: int) -> str | None:
    """Why the suite cannot run here, or None: the first place with too little room."""
    for where in places:
        probe = next(p for p in (where, *where.parents) if p.exists())
        free = shutil.disk_usage(probe).free
        if free < needed:
            return (
                f"only {free / 2**30:.1f} GiB free under {where}; the suite needs "
                f"{needed / 2**30:.0f} GiB (local stack, server keys, caches)"
            )
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to start on a nearly full disk: one clear line instead of a cascade of
    PostgreSQL and S3 errors half way through (seen in CI)."""
    why = disk_shortfall([Path(tempfile.gettempdir()), Settings().cache_dir], _DISK_NEEDED)
    if why:
        pytest.exit(why, returncode=3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").parts
        if parts and parts[0] in _MARKERS:
            item.add_marker(_MARKERS[parts[0]])


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment variables of a healthy stack: the user's own if it is up, else ours."""
    components = stack.service_components()
    state_dir, started = stack.reuse_or_start(
        default_state_dir(), tmp_path_factory.mktemp("stack"), components
    )
    variables = stack.env(state_dir, components)
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    load_settings.cache_clear()
    try:
        yield variables
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        load_settings.cache_clear()
        if started:
            stack.down(state_dir, components)


async def _fresh_database(server_url: str) -> AsyncIterator[str]:
    async with migrate.scratch_database(server_url, MIGRATIONS_DIR, "test") as url:
        yield url


@pytest.fixture
async def database_url(dev_stack: dict[str, str]) -> AsyncIterator[str]:
    """A fresh, migrated database per test, dropped afterwards."""
    async for url in _fresh_database(dev_stack["FHE_DATABASE_URL"]):
        yield url


@pytest.fixture(scope="module")
async def database_url_module(dev_stack: dict[str, str]) -> AsyncIterator[str]:
    """The same, shared by one module's tests (when setting up is expensive)."""
    async for url in _fresh_database(dev_stack["FHE_DATABASE_URL"]):
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real control plane (and node agent): the user's own if healthy, else ours."""
    components = [KubeControlPlane()]
    state_dir, started = stack.reuse_or_start(
        default_state_dir(), tmp_path_factory.mktemp("kube"), components
    )
    try:
        yield {**stack.env(state_dir, components), "STATE_DIR": str(state_dir)}
    finally:
        if started:
            stack.down(state_dir, components)
