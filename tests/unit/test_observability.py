"""coprocessor.observability: heartbeats, readiness, redaction as pure functions, and
the aiohttp server on a real socket (port 0), with fake dependencies."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from coprocessor import metrics
from coprocessor.errors import Fatal, ServiceUnavailable
from coprocessor.observability import (
    OK,
    Heartbeat,
    Probes,
    describe_failure,
    health_report,
    kubernetes_check,
    off_loop,
    postgres_check,
    readiness_report,
    redact,
    rpc_check,
    s3_check,
    serving,
    stale_heartbeats,
    start_server,
)
from coprocessor.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- pure parts --------------------------------------------------------------------------


def test_a_heartbeat_is_fresh_when_made_and_stale_past_its_max_age():
    clock = Clock()
    blocks = Heartbeat("host-blocks", 30, clock)
    passes = Heartbeat("sender", 60, clock)
    assert stale_heartbeats([blocks, passes], clock.now) == {}
    clock.now += 45
    assert stale_heartbeats([blocks, passes], clock.now) == {
        "host-blocks": "no beat for 45.0s (at most 30s)"
    }
    blocks.beat()
    assert blocks.age() == 0
    assert stale_heartbeats([blocks, passes], clock.now + 20) == {
        "sender": "no beat for 65.0s (at most 60s)"
    }
    with pytest.raises(ValueError, match="must be positive"):
        Heartbeat("x", 0)


def test_health_is_200_while_fresh_and_503_naming_the_stale_ones():
    clock = Clock()
    beats = [Heartbeat("a", 10, clock), Heartbeat("b", 100, clock)]
    assert health_report(beats, clock.now + 5) == (200, {"status": OK})
    status, body = health_report(beats, clock.now + 11)
    assert status == 503
    assert body == {"status": "stale", "stale": {"a": "no beat for 11.0s (at most 10s)"}}
    assert health_report([], clock.now) == (200, {"status": OK})


def test_readiness_is_200_only_when_every_check_is_ok():
    assert readiness_report({}) == (200, {})
    assert readiness_report({"s3": OK, "postgres": OK}) == (200, {"postgres": OK, "s3": OK})
    assert readiness_report({"postgres": "unavailable: refused", "s3": OK}) == (
        503,
        {"postgres": "unavailable: refused", "s3": OK},
    )


def test_redaction_keeps_a_urls_origin_and_masks_secrets():
    text = (
        "connect to postgresql://fhe:hunter2@db.internal:5432/coprocessor failed; "
        "rpc https://mainnet.example.io/v3/0123456789abcdef?key=zzz refused; token s3cr3t"
    )
    shown = redact(text, ["s3cr3t", ""])
    assert shown == (
        "connect to postgresql://db.internal:5432 failed; rpc https://mainnet.example.io "
        "refused; token ***"
    )
    assert len(redact("x" * 1000)) == 300
    assert redact("http://[::1:5432/x") == "http://?"  # unparsable: nothing of it
    assert redact("at http://[::1]:8545/key.") == "at http://[::1]:8545."


def test_failures_are_described_in_one_redacted_line():
    assert describe_failure(TimeoutError(), 2.0) == "timed out after 2s"
    assert describe_failure(TimeoutError()) == "timed out"
    unavailable = ServiceUnavailable("s3", "http://u:p@minio:9000/bucket: refused")
    assert describe_failure(unavailable) == "unavailable: http://minio:9000: refused"
    assert describe_failure(ValueError("bad")) == "ValueError: bad"


# --- Probes ------------------------------------------------------------------------------


async def test_readiness_checks_run_concurrently_each_with_a_timeout():
    probes = Probes(timeout_s=0.3)

    async def slow_ok() -> None:
        await asyncio.sleep(0.2)

    async def hangs() -> None:
        await asyncio.sleep(60)

    async def fails() -> None:
        raise ConnectionRefusedError("postgresql://fhe:pw@10.0.0.5:5432/db refused")

    for name, check in (("a", slow_ok), ("b", slow_ok), ("hangs", hangs), ("fails", fails)):
        probes.readiness(name, check)
    started = time.monotonic()
    status, body = await probes.ready()
    assert time.monotonic() - started < 0.6  # not 0.2 + 0.2 + 0.3
    assert status == 503
    assert body == {
        "a": OK,
        "b": OK,
        "fails": "ConnectionRefusedError: postgresql://10.0.0.5:5432 refused",
        "hangs": "timed out after 0.3s",
    }


def test_a_name_is_registered_once():
    probes = Probes()
    probes.heartbeat("loop", 10)
    with pytest.raises(ValueError, match="registered already"):
        probes.heartbeat("loop", 10)

    async def check() -> None:
        return None

    probes.readiness("postgres", check)
    with pytest.raises(ValueError, match="registered already"):
        probes.readiness("postgres", check)


# --- the server --------------------------------------------------------------------------


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_the_server_serves_metrics_health_and_readiness():
    registry = CollectorRegistry()
    processed = Counter("demo_items_processed", "Items.", ["worker"], registry=registry)
    processed.labels("verify").inc(3)
    clock = Clock()
    probes = Probes(clock=clock)
    loop_beat = probes.heartbeat("verify", 60)
    database_up = True

    async def database() -> None:
        if not database_up:
            raise ServiceUnavailable("postgres", "ConnectionRefusedError: refused")

    probes.readiness("postgres", database)
    server = await start_server(probes, "127.0.0.1", 0, registry)
    try:
        assert server.port > 0
        status, text = await get(server.port, "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = families["demo_items_processed"].samples
        (sample,) = [s for s in samples if s.name.endswith("_total")]
        assert (sample.labels, sample.value) == ({"worker": "verify"}, 3.0)

        assert await get(server.port, "/healthz") == (200, '{"status": "ok"}')
        clock.now += 61
        status, text = await get(server.port, "/healthz")
        assert status == 503 and '"verify": "no beat for 61.0s' in text
        loop_beat.beat()
        assert (await get(server.port, "/healthz"))[0] == 200

        assert await get(server.port, "/readyz") == (200, '{"postgres": "ok"}')
        database_up = False
        assert await get(server.port, "/readyz") == (
            503,
            '{"postgres": "unavailable: ConnectionRefusedError: refused"}',
        )
        database_up = True
        assert (await get(server.port, "/readyz"))[0] == 200
        assert (await get(server.port, "/other"))[0] == 404
    finally:
        await server.close()


async def test_the_default_registry_carries_the_products_metrics():
    metrics.declare_worker("unit-observability")
    server = await start_server(Probes(), "127.0.0.1", 0)
    try:
        _, text = await get(server.port, "/metrics")
    finally:
        await server.close()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "coprocessor_work_items_processed",
        "coprocessor_worker_errors",
        "coprocessor_work_items_polls",
        "coprocessor_work_items_notifications",
        "coprocessor_sns_op_latency_seconds",
        "coprocessor_zkproof_verify_latency_seconds",
        "coprocessor_fhe_batch_latency_seconds",
        "fhe_listener_lag_blocks",
        "fhe_listener_blocks_processed",
        "fhe_sender_inflight_transactions",
        "fhe_sender_gas_used",
        "fhe_sender_transactions",
        "fhe_operator_batches",
        "fhe_operator_reconcile_seconds",
        "fhe_operator_job_starts",
        "fhe_stage_key_load_seconds",
        "fhe_stage_seconds",
    } <= names
    assert 'coprocessor_work_items_polls_total{worker="unit-observability"} 0.0' in text


async def test_serving_is_a_no_op_on_port_0_and_closes_the_server_on_the_way_out():
    async with serving(Settings(metrics_port=0), Probes()) as nothing:
        assert nothing is None
    port = closed_port()
    with pytest.raises(RuntimeError, match="stopping"):
        async with serving(Settings(metrics_host="127.0.0.1", metrics_port=port), Probes()) as s:
            assert s is not None and s.port == port
            assert (await get(port, "/healthz"))[0] == 200
            raise RuntimeError("stopping")
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(port, "/healthz")


async def test_a_port_that_cannot_be_bound_is_fatal_naming_the_settings():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Fatal, match=f"127.0.0.1:{port} .FHE_METRICS_HOST, FHE_METRICS_PORT"):
            await start_server(Probes(), "127.0.0.1", port)


# --- ready-made checks -------------------------------------------------------------------


async def test_off_loop_returns_raises_and_never_blocks_the_loop():
    assert await off_loop(lambda: 41 + 1) == 42
    with pytest.raises(ZeroDivisionError):
        await off_loop(lambda: 1 / 0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(off_loop(lambda: time.sleep(1.0)), 0.1)
    assert time.monotonic() - started < 0.5


async def test_the_postgres_check_names_postgres_never_the_password():
    dsn = f"postgresql://fhe:hunter2@127.0.0.1:{closed_port()}/coprocessor"
    probes = Probes()
    probes.readiness("postgres", postgres_check(dsn))
    status, body = await probes.ready()
    assert status == 503
    assert body["postgres"].startswith("unavailable: ")
    assert "hunter2" not in body["postgres"]

    class Pool:  # an asyncpg pool whose server answers
        def acquire(self, timeout: float):
            pool = self

            class Acquired:
                async def __aenter__(self):
                    return pool

                async def __aexit__(self, *_):
                    return None

            return Acquired()

        async def fetchval(self, query: str) -> int:
            assert query == "SELECT 1"
            return 1

    await postgres_check(Pool())()


async def test_the_s3_check_reports_the_endpoint_not_the_credentials():
    settings = Settings(
        s3_endpoint=f"http://127.0.0.1:{closed_port()}", s3_secret_key="very-secret-key"
    )
    with pytest.raises(ServiceUnavailable) as raised:
        await asyncio.wait_for(s3_check(settings)(), 10)
    assert raised.value.service == "s3"
    assert "very-secret-key" not in str(raised.value)
    assert "fhe-ciphertexts" in raised.value.detail  # the bucket, named by the storage code


async def fake_rpc(answer: object, status: int = 200) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["method"] == "eth_blockNumber"
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/v3/api-key-in-the-path", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.mark.parametrize(
    ("answer", "status", "expected"),
    [
        ({"jsonrpc": "2.0", "id": 1, "result": "0x2a"}, 200, 42),
        ({"jsonrpc": "2.0", "id": 1, "error": {"message": "syncing"}}, 200, "failed: syncing"),
        ({"jsonrpc": "2.0", "id": 1, "result": None}, 200, "answered None"),
        ({}, 503, "HTTP 503"),
    ],
)
async def test_the_rpc_check_asks_eth_block_number(answer, status, expected):
    runner, port = await fake_rpc(answer, status)
    check = rpc_check(f"http://127.0.0.1:{port}/v3/api-key-in-the-path")
    try:
        if isinstance(expected, int):
            assert await check() == expected
        else:
            with pytest.raises(ServiceUnavailable, match=expected):
                await check()
    finally:
        await runner.cleanup()


async def test_an_unreachable_rpc_is_reported_without_its_path():
    probes = Probes()
    probes.readiness("host-rpc", rpc_check(f"ws://127.0.0.1:{closed_port()}/v3/secret-key"))
    status, body = await probes.ready()
    assert status == 503
    assert body["host-rpc"].startswith("unavailable: ClientConnectorError")
    assert "secret-key" not in body["host-rpc"]


async def test_the_kubernetes_check_gets_readyz_with_the_clients_credentials():
    from kubernetes.client.rest import ApiException

    calls = []

    class ApiClient:
        refuse = False

        def call_api(self, path, method, **kwargs):
            calls.append((path, method, kwargs["auth_settings"], kwargs["_request_timeout"]))
            if self.refuse:
                raise ApiException(status=403, reason="Forbidden")
            return None, 200, {}

    client = ApiClient()
    await kubernetes_check(client)()
    assert calls == [("/readyz", "GET", ["BearerToken"], 2.0)]
    client.refuse = True
    with pytest.raises(ServiceUnavailable, match="HTTP 403 Forbidden"):
        await kubernetes_check(client)()


def test_wakeups_are_counted_by_reason():
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"worker": "unit-wakeups"}) or 0.0

    before = (
        value("coprocessor_work_items_notifications_total"),
        value("coprocessor_work_items_polls_total"),
    )
    metrics.count_wakeup("unit-wakeups", "notified")
    metrics.count_wakeup("unit-wakeups", "notified")
    metrics.count_wakeup("unit-wakeups", "poll")
    assert value("coprocessor_work_items_notifications_total") == before[0] + 2
    assert value("coprocessor_work_items_polls_total") == before[1] + 1
