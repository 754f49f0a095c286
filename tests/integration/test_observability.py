"""/metrics, /healthz and /readyz of the long-running components, run in-process against
the real stack: the sender sending, the host and gateway listeners reading blocks and
the verify worker answering, each scraped over HTTP and parsed as Prometheus text; the verify
worker's readiness follows a PostgreSQL of its own that really goes down and comes
back, while its liveness stays green and its work resumes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from web3 import Web3

from coprocessor.db import migrate, proofs, queries
from coprocessor.settings import MIGRATIONS_DIR, Settings
from devstack.host_chain import ensure_host_chain
from devstack.postgres import Postgres
from job_runner.__main__ import serve_verify
from listeners.__main__ import run_gateway, run_host, run_sender

from .chain.test_sender import gateway_for, new_tx_sender, published_batch, settings_for

UNSERVED_CHAIN = 999_777  # a host chain no tenant serves: answered 'no' without any keys


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, labels): value} of /metrics, parsed by prometheus_client."""
    status, text = await get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Await ``check()`` until it is truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def serving(port: int, running: asyncio.Task) -> None:
    async def up() -> bool:
        assert not running.done(), running
        try:
            return (await get(port, "/healthz"))[0] == 200
        except aiohttp.ClientConnectionError:
            return False

    await eventually(up, f"the server on port {port}")


async def stopped(stop: asyncio.Event, running: asyncio.Task, port: int) -> None:
    """SIGTERM's path: the loop ends, the server is closed."""
    stop.set()
    await asyncio.wait_for(running, 30)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(port, "/metrics")


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_GATEWAY_RPC_URL"]))
    assert web3.is_connected()
    return web3


async def test_the_sender_serves_its_transactions_and_readiness(w3, database_url, dev_stack):
    tx_sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [tx_sender])
    port = free_port()
    settings = settings_for(
        database_url,
        dev_stack["FHE_GATEWAY_RPC_URL"],
        gateway,
        tx_sender,
        signer_private_key=None,
        metrics_host="127.0.0.1",
        metrics_port=port,
        notify_poll_interval_s=0.5,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(run_sender(settings, stop))
    try:
        await serving(port, running)
        before = await scrape(port)
        assert value(before, "fhe_sender_inflight_transactions") == 0
        _, handles = await published_batch(database_url, 2)  # two digests to commit

        async def committed() -> bool:
            connection = await asyncpg.connect(database_url)
            try:
                return await connection.fetchval(
                    "SELECT count(*) FROM ciphertext_digest WHERE txn_is_sent"
                ) == len(handles)
            finally:
                await connection.close()

        await eventually(committed, "both digests committed")
        after = await scrape(port)
        assert await get(port, "/readyz") == (200, '{"gateway-rpc": "ok", "postgres": "ok"}')
        assert (await get(port, "/healthz"))[0] == 200
    finally:
        await stopped(stop, running, port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    kind = {"kind": "addCiphertextMaterial"}
    assert moved("fhe_sender_transactions_total", **kind, outcome="succeeded") == 2
    assert moved("fhe_sender_gas_used_total", **kind) > 2 * 21_000
    assert value(after, "fhe_sender_inflight_transactions") == 0
    assert moved("coprocessor_work_items_processed_total", worker="sender") == 2
    assert moved("coprocessor_work_items_polls_total", worker="sender") >= 1


async def test_the_gateway_listener_serves_its_blocks_and_lag(w3, database_url, dev_stack):
    gateway = gateway_for(w3, [new_tx_sender(w3)])
    port = free_port()
    settings = Settings(
        database_url=database_url,
        gateway_rpc_url=dev_stack["FHE_GATEWAY_RPC_URL"],
        **gateway.settings(),
        gateway_ws_url="off",
        gateway_poll_interval_s=0.2,
        gateway_tenant_chain_id=12345,
        metrics_host="127.0.0.1",
        metrics_port=port,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(run_gateway(settings, stop))
    try:
        await serving(port, running)
        listener = {"listener": "gateway"}

        async def read(blocks: float) -> dict | None:
            samples = await scrape(port)
            done = value(samples, "fhe_listener_blocks_processed_total", **listener)
            return samples if done >= blocks else None

        first = await eventually(lambda: read(1), "the head block read")
        for _ in range(3):
            w3.provider.make_request("evm_mine", [])
        start = value(first, "fhe_listener_blocks_processed_total", **listener)
        later = await eventually(lambda: read(start + 3), "three mined blocks read")
        assert value(later, "fhe_listener_lag_blocks", **listener) == 0
        assert await get(port, "/readyz") == (200, '{"gateway-rpc": "ok", "postgres": "ok"}')
        status, text = await get(port, "/healthz")
        assert (status, json.loads(text)) == (200, {"status": "ok"})
    finally:
        await stopped(stop, running, port)


async def test_the_host_listener_serves_its_blocks_and_lag(w3, database_url, dev_stack):
    host = ensure_host_chain(w3, Path(dev_stack["FHE_STATE_DIR"]))
    connection = await asyncpg.connect(database_url)
    try:  # the tenant serving the chain, as `fhectl tenant create` makes it
        await queries.create_tenant(connection, "chain", w3.eth.chain_id, os.urandom(32), "tfhe-rs")
    finally:
        await connection.close()
    port = free_port()
    settings = Settings(
        database_url=database_url,
        host_rpc_url=dev_stack["FHE_HOST_RPC_URL"],
        host_executor_address=host.executor,
        host_acl_address=host.acl,
        host_start_block=w3.eth.block_number + 1,
        host_ws_url="off",
        host_poll_interval_s=0.2,
        metrics_host="127.0.0.1",
        metrics_port=port,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(run_host(settings, stop, batches=False))
    try:
        await serving(port, running)
        listener = {"listener": "host"}
        before = value(await scrape(port), "fhe_listener_blocks_processed_total", **listener)
        for _ in range(2):
            w3.provider.make_request("evm_mine", [])

        async def read() -> dict | None:
            samples = await scrape(port)
            done = value(samples, "fhe_listener_blocks_processed_total", **listener)
            return samples if done >= before + 2 else None

        samples = await eventually(read, "two mined blocks read")
        assert value(samples, "fhe_listener_lag_blocks", **listener) == 0
        # Without --no-batches the API server would be a third check.
        assert await get(port, "/readyz") == (200, '{"host-rpc": "ok", "postgres": "ok"}')
        assert (await get(port, "/healthz"))[0] == 200
    finally:
        await stopped(stop, running, port)


@pytest.fixture
def own_postgres(tmp_path):
    """A PostgreSQL of this test's own, to be stopped and started again (the shared one
    serves every other test)."""
    server = Postgres()
    running = {"info": server.up(tmp_path, None)}
    yield server, tmp_path, running
    server.down(running["info"])


async def _ask(url: str, zk_proof_id: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        request = proofs.ProofRequest(
            zk_proof_id, UNSERVED_CHAIN, bytes(20), bytes(20), b"\x01", acl_address=bytes(20)
        )
        assert await proofs.insert_request(connection, request)  # NOTIFYs the worker
    finally:
        await connection.close()


async def _answered(url: str, zk_proof_id: int) -> bool:
    connection = await asyncpg.connect(url)
    try:
        return (
            await connection.fetchval(
                "SELECT verified FROM verify_proofs WHERE zk_proof_id = $1", zk_proof_id
            )
            is False
        )
    finally:
        await connection.close()


async def test_the_verify_worker_is_unready_while_its_postgres_is_down(own_postgres, dev_stack):
    server, state_dir, running_db = own_postgres
    url = server.env(running_db["info"])["FHE_DATABASE_URL"]
    await migrate.migrate(url, MIGRATIONS_DIR)
    port = free_port()
    settings = Settings(
        database_url=url, metrics_host="127.0.0.1", metrics_port=port, notify_poll_interval_s=0.5
    )
    stop = asyncio.Event()
    running = asyncio.create_task(serve_verify(settings, stop))
    try:
        await serving(port, running)
        before = await scrape(port)
        assert await get(port, "/readyz") == (200, '{"postgres": "ok", "s3": "ok"}')

        await _ask(url, 1)
        await eventually(lambda: _answered(url, 1), "the first request answered")
        answered = await scrape(port)

        await asyncio.to_thread(server.down, running_db["info"])

        async def unready() -> dict | None:
            status, text = await get(port, "/readyz")
            return json.loads(text) if status == 503 else None

        body = await eventually(unready, "/readyz 503 with PostgreSQL down")
        assert body["s3"] == "ok"
        assert body["postgres"].startswith("unavailable: ")
        assert "postgresql://" not in body["postgres"]  # the check is named, not the DSN
        assert (await get(port, "/healthz"))[0] == 200  # the loop turns: alive, waiting

        async def cut_short() -> bool:
            samples = await scrape(port)
            errors = "coprocessor_worker_errors_total"
            return value(samples, errors, worker="verify") > value(before, errors, worker="verify")

        await eventually(cut_short, "a verify pass cut short by the outage")

        running_db["info"] = await asyncio.to_thread(server.up, state_dir, running_db["info"])
        assert server.env(running_db["info"])["FHE_DATABASE_URL"] == url  # same port

        async def ready() -> bool:
            return await get(port, "/readyz") == (200, '{"postgres": "ok", "s3": "ok"}')

        await eventually(ready, "/readyz 200 with PostgreSQL back")
        await _ask(url, 2)
        await eventually(lambda: _answered(url, 2), "a request answered after the restart")
        after = await scrape(port)
    finally:
        await stopped(stop, running, port)

    processed = "coprocessor_work_items_processed_total"
    assert value(answered, processed, worker="verify") - value(before, processed, worker="verify")
    assert value(after, processed, worker="verify") - value(before, processed, worker="verify") == 2
    notified = "coprocessor_work_items_notifications_total"
    assert value(answered, notified, worker="verify") > value(before, notified, worker="verify")
    polls = "coprocessor_work_items_polls_total"
    assert value(after, polls, worker="verify") > value(before, polls, worker="verify")
