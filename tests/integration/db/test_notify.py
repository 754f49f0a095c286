import asyncio
import time

import asyncpg
import pytest

from coprocessor.db import migrate, queries
from coprocessor.db.notify import NotificationWaiter
from coprocessor.settings import MIGRATIONS_DIR
from devstack.postgres import Postgres

from .helpers import add, admission, tenant


async def test_waiter_wakes_on_notify_and_polls_without_one(database_url):
    async with NotificationWaiter(
        database_url, (queries.WORK_AVAILABLE,), poll_interval=0.3
    ) as waiter:
        started = time.monotonic()
        assert (await waiter.wait()).reason == "poll"
        assert time.monotonic() - started >= 0.29
        connection = await asyncpg.connect(database_url)
        try:
            await queries.notify(connection, queries.WORK_AVAILABLE, "b1")
        finally:
            await connection.close()
        wakeup = await waiter.wait(timeout=10)
        assert (wakeup.reason, wakeup.channel, wakeup.payload) == (
            "notified",
            "work_available",
            "b1",
        )


@pytest.fixture
def own_postgres(tmp_path):
    """A PostgreSQL of this test's own: it is about to be restarted."""
    server = Postgres()
    running = {"info": server.up(tmp_path, None)}  # the test replaces it on restart
    yield server, tmp_path, running
    server.down(running["info"])


async def test_waiter_survives_a_postgres_restart(own_postgres):
    server, state_dir, running = own_postgres
    info = running["info"]
    url = server.env(info)["FHE_DATABASE_URL"]
    await migrate.migrate(url, MIGRATIONS_DIR)
    async with NotificationWaiter(
        url, (queries.WORK_AVAILABLE,), poll_interval=0.5, max_reconnect_delay=0.5
    ) as waiter:
        server.down(info)
        # While the server is down the waiter degrades to polling, without raising.
        assert (await waiter.wait(timeout=1.0)).reason == "poll"
        assert not waiter.connected
        info = running["info"] = server.up(state_dir, info)
        assert server.env(info)["FHE_DATABASE_URL"] == url  # same port after restart

        connection = await asyncpg.connect(url)
        try:
            tenant_id = await tenant(connection)
            batch = admission(tenant_id, [add(10, 1, 2)])
            await queries.admit_batch(connection, batch)
            # Later work is seen: by notification once reconnected, else by polling.
            deadline = time.monotonic() + 30
            seen = False
            while not seen and time.monotonic() < deadline:
                await waiter.wait()
                seen = bool(await queries.batch_computations(connection, batch.batch_id))
            assert seen
            deadline = time.monotonic() + 30
            while not waiter.connected and time.monotonic() < deadline:
                await waiter.wait(timeout=0.2)
            assert waiter.reconnects == 1
            await queries.notify(connection, queries.WORK_AVAILABLE, "after-restart")
            wakeup = await asyncio.wait_for(waiter.wait(timeout=10), timeout=15)
            while wakeup.reason == "poll" or wakeup.payload != "after-restart":
                wakeup = await waiter.wait(timeout=10)
            assert wakeup.reason == "notified"
        finally:
            await connection.close()
