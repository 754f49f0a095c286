"""Connections to a real PostgreSQL: TLS by sslmode, and a statement that hangs.

The server is one of this module's own (the dev stack's PostgreSQL class), which speaks
TLS with a certificate from a CA of its own, so every sslmode can be tried for real.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from coprocessor.db.pool import ConnectOptions, classify, connect, connect_settings, pool_of
from coprocessor.errors import ConfigError, ServiceUnavailable
from coprocessor.settings import Settings
from devstack.pki import ensure_serving_cert
from devstack.postgres import Postgres

SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("tls-postgres")
    postgres = Postgres()
    info = postgres.up(state, None)
    yield postgres.env(info)["FHE_DATABASE_URL"], Path(info["tls_ca"])
    postgres.down(info)


async def ssl_in_use(url: str, options: ConnectOptions) -> bool:
    connection = await connect(url, options)
    try:
        return bool(await connection.fetchval(SSL_IN_USE))
    finally:
        await connection.close()


@pytest.mark.parametrize(("sslmode", "encrypted"), [("disable", False), ("require", True)])
async def test_sslmode_decides_whether_the_connection_is_encrypted(server, sslmode, encrypted):
    url, _ = server
    assert await ssl_in_use(url, ConnectOptions(sslmode=sslmode)) is encrypted


async def test_verify_full_trusts_the_servers_ca_and_nothing_else(server, tmp_path):
    url, ca = server
    verified = f"{url}?sslrootcert={ca}"
    assert await ssl_in_use(verified, ConnectOptions(sslmode="verify-full")) is True
    stranger, _, _ = ensure_serving_cert(tmp_path / "other", "stranger", "IP:127.0.0.1")
    with pytest.raises(ConfigError, match="TLS certificate is not trusted"):
        await connect(f"{url}?sslrootcert={stranger}", ConnectOptions(sslmode="verify-full"))


async def test_the_sslmode_setting_overrides_the_url(server, monkeypatch):
    url, _ = server
    settings = Settings(database_url=f"{url}?sslmode=disable", database_sslmode="require")
    connection = await connect_settings(settings)
    try:
        assert await connection.fetchval(SSL_IN_USE) is True
    finally:
        await connection.close()
    pool = await pool_of(Settings(database_url=f"{url}?sslmode=require"), size=1)
    try:  # unset: the URL's own sslmode holds
        assert await pool.fetchval(SSL_IN_USE) is True
    finally:
        await pool.close()


async def test_a_statement_over_the_command_timeout_is_cancelled_and_unavailable(server):
    """A server that stops answering fails the call as 'postgres unavailable'
    (recoverable) instead of hanging it, and the server stops running the statement."""
    url, _ = server
    connection = await connect(url, ConnectOptions(command_timeout_s=0.5))
    watcher = await asyncpg.connect(url)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as raised:
            await connection.fetchval("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
        assert isinstance(classify(raised.value), ServiceUnavailable)
        running = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
        )
        for _ in range(100):  # the cancel request reaches the server within moments
            if await watcher.fetchval(running) == 0:
                break
            await asyncio.sleep(0.1)
        assert await watcher.fetchval(running) == 0
        assert await connection.fetchval("SELECT 1") == 1  # and the connection still works
    finally:
        await connection.close()
        await watcher.close()


def test_an_unknown_sslmode_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="database_sslmode"):
        Settings(database_sslmode="sometimes")


@pytest.mark.parametrize(
    "url_suffix", ["?sslrootcert=/nonexistent/ca.crt", ""], ids=["missing-ca-file", "no-ca"]
)
async def test_a_tls_setting_no_retry_can_fix_is_a_config_error(server, url_suffix, monkeypatch):
    """verify-full with a CA file that is not there, or with none at all, fails at once
    as configuration (a stage pod exits 3), never as an outage to wait out (exit 75)."""
    url, _ = server
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.postgresql/root.crt either
    with pytest.raises(ConfigError, match="postgres connection settings"):
        await connect(url + url_suffix, ConnectOptions(sslmode="verify-full"))
