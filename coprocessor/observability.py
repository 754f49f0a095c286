"""What a long-running component tells Prometheus and the kubelet, over HTTP.

One small aiohttp server per process, on ``FHE_METRICS_HOST:FHE_METRICS_PORT`` (port 0:
none), serving

* ``/metrics`` - the default prometheus_client registry in the text format (the metric
  objects are in ``coprocessor.metrics``);
* ``/healthz`` - liveness: 200 while every registered heartbeat is fresh; 503 with a JSON
  body naming the stale ones (a loop that stopped turning: the kubelet restarts the pod);
* ``/readyz`` - readiness: the registered checks (PostgreSQL, S3, a chain's JSON-RPC, the
  Kubernetes API server) run concurrently, each with a timeout; 200 when all answer,
  else 503; the body is ``{check: "ok" | what failed}``. Failures are redacted: a URL
  keeps its scheme, host and port only, so no DSN, password or RPC API key is served.

A component builds one ``Probes``, registers its heartbeats and checks, and runs inside
``async with serving(settings, probes):``; the server is closed when the block ends,
whichever way. Stage Jobs' pods serve nothing.

Freshness and the status of each endpoint are pure functions of their inputs
(``stale_heartbeats``, ``health_report``, ``readiness_report``, ``redact``), tested
without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from .errors import Fatal, ServiceUnavailable
from .settings import Settings

log = logging.getLogger(__name__)

OK = "ok"
READY_TIMEOUT_S = 2.0  # each readiness check: give the probe a timeoutSeconds of 3 or more
SHUTDOWN_TIMEOUT_S = 3.0  # requests in flight when the server closes (a /readyz: <= 2 s)
MAX_DETAIL = 300  # characters of one failed check's text

ReadinessCheck = Callable[[], Awaitable[object]]
T = TypeVar("T")


# --- heartbeats and checks -------------------------------------------------------------


class Heartbeat:
    """A loop's sign of life: ``beat()`` on every turn (every block, pass, request); the
    heartbeat is stale when no beat came for ``max_age_s``. Fresh when created. Safe to
    beat from a worker thread."""

    def __init__(
        self, name: str, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_age_s <= 0:
            raise ValueError(f"heartbeat {name!r}: max_age_s must be positive")
        self.name = name
        self.max_age_s = max_age_s
        self._clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self._clock()

    def age(self, now: float | None = None) -> float:
        return (self._clock() if now is None else now) - self.last


def stale_heartbeats(heartbeats: Iterable[Heartbeat], now: float) -> dict[str, str]:
    """{name: why} of the heartbeats older than their max age at ``now``."""
    return {
        beat.name: f"no beat for {beat.age(now):.1f}s (at most {beat.max_age_s:g}s)"
        for beat in heartbeats
        if beat.age(now) > beat.max_age_s
    }


def health_report(heartbeats: Iterable[Heartbeat], now: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of /healthz."""
    stale = stale_heartbeats(heartbeats, now)
    if stale:
        return 503, {"status": "stale", "stale": stale}
    return 200, {"status": OK}


def readiness_report(results: Mapping[str, str]) -> tuple[int, dict[str, str]]:
    """(HTTP status, JSON body) of /readyz from each check's result (``"ok"`` or what
    failed). No check registered: ready."""
    ready = all(result == OK for result in results.values())
    return (200 if ready else 503), dict(sorted(results.items()))


_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://[^\s'\"<>(){},]+")
_PUNCTUATION = ".,;:!?"  # ends a sentence, not a URL


def _origin(match: re.Match[str]) -> str:
    url = match.group(0).rstrip(_PUNCTUATION)
    tail = match.group(0)[len(url) :]
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        if ":" in host:  # IPv6
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{match.group(1)}://?{tail}"
    return f"{parts.scheme}://{host}{port}{tail}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` safe to serve: every URL cut to scheme://host:port (no user, password,
    path - RPC providers put API keys there - or query), each of ``secrets`` masked,
    at most MAX_DETAIL characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL.sub(_origin, text)
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def describe_failure(error: BaseException, timeout_s: float | None = None) -> str:
    """One redacted line for a failed check."""
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout_s:g}s" if timeout_s else "timed out"
    if isinstance(error, ServiceUnavailable):
        return redact(f"unavailable: {error.detail}")
    return redact(f"{type(error).__name__}: {error}")


class Probes:
    """The heartbeats and readiness checks of one process."""

    def __init__(
        self,
        *,
        timeout_s: float = READY_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._heartbeats: dict[str, Heartbeat] = {}
        self._checks: dict[str, ReadinessCheck] = {}

    def heartbeat(self, name: str, max_age_s: float) -> Heartbeat:
        """Register a heartbeat (fresh now); /healthz fails once it goes stale."""
        if name in self._heartbeats:
            raise ValueError(f"heartbeat {name!r} is registered already")
        beat = Heartbeat(name, max_age_s, self._clock)
        self._heartbeats[name] = beat
        return beat

    def readiness(self, name: str, check: ReadinessCheck) -> None:
        """Register a readiness check: an async callable that returns when the dependency
        answers and raises when it does not."""
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is registered already")
        self._checks[name] = check

    def health(self) -> tuple[int, dict[str, Any]]:
        return health_report(self._heartbeats.values(), self._clock())

    async def ready(self) -> tuple[int, dict[str, str]]:
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
        return readiness_report(dict(zip(names, results, strict=True)))

    async def _run(self, check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), self.timeout_s)
        except Exception as error:  # a check's failure is its answer, never the server's
            return describe_failure(error, self.timeout_s)
        return OK


# --- ready-made checks -----------------------------------------------------------------


async def off_loop(call: Callable[[], T]) -> T:
    """``call()`` in a daemon thread of its own: a blocking client (boto3, kubernetes)
    that hangs past the check's timeout neither occupies the executor the component's
    own ``to_thread`` calls use nor delays the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # timed out and cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (call(), None)
        except BaseException as error:
            outcome = (None, error)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="readiness-check", daemon=True).start()
    return await future


def _password(dsn: str) -> list[str]:
    try:
        password = urlsplit(dsn).password
    except ValueError:
        return []
    return [password] if password else []


def postgres_check(target: Any, sslmode: str | None = None) -> ReadinessCheck:
    """``SELECT 1`` on an asyncpg pool, or on a connection opened for it from a DSN
    (closed after, with ``sslmode`` as the product's connections use it). Failures name
    PostgreSQL, never the DSN."""
    import asyncpg

    async def check() -> None:
        try:
            if isinstance(target, str):
                tls = {"ssl": sslmode} if sslmode else {}
                connection = await asyncpg.connect(target, timeout=READY_TIMEOUT_S, **tls)
                try:
                    await connection.fetchval("SELECT 1")
                finally:
                    await connection.close(timeout=READY_TIMEOUT_S)
            else:
                async with target.acquire(timeout=READY_TIMEOUT_S) as connection:
                    await connection.fetchval("SELECT 1")
        except TimeoutError:
            raise
        except Exception as error:
            secrets = _password(target) if isinstance(target, str) else []
            detail = redact(f"{type(error).__name__}: {error}", secrets)
            raise ServiceUnavailable("postgres", detail) from None

    return check


def s3_check(settings: Settings, bucket: str | None = None) -> ReadinessCheck:
    """HEAD of the bucket (default FHE_S3_BUCKET) through ``ObjectStore.check``, off the
    loop, one attempt with a short connect timeout."""
    from .storage import ObjectStore

    store = ObjectStore(settings, bucket=bucket, connect_timeout=READY_TIMEOUT_S, attempts=1)
    secrets = [settings.s3_secret_key]

    async def check() -> None:
        try:
            await off_loop(store.check)
        except ServiceUnavailable as error:
            raise ServiceUnavailable("s3", redact(error.detail, secrets)) from None

    return check


def _http_url(url: str) -> str:
    return "http" + url[2:] if url.startswith("ws") else url


def rpc_check(url: str) -> ReadinessCheck:
    """``eth_blockNumber`` by a plain JSON-RPC POST; ready when it answers a number."""
    import aiohttp

    endpoint = _http_url(url)
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}

    async def check() -> int:
        timeout = aiohttp.ClientTimeout(total=READY_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(endpoint, json=body) as response,
            ):
                if response.status != 200:
                    raise ServiceUnavailable("json-rpc", f"HTTP {response.status}")
                answer = await response.json(content_type=None)
        except aiohttp.ClientError as error:
            raise ServiceUnavailable("json-rpc", f"{type(error).__name__}: {error}") from None
        except json.JSONDecodeError:
            raise ServiceUnavailable("json-rpc", "the answer is not JSON") from None
        if not isinstance(answer, dict) or "error" in answer:
            failure = answer.get("error") if isinstance(answer, dict) else answer
            message = failure.get("message") if isinstance(failure, dict) else failure
            raise ServiceUnavailable("json-rpc", f"eth_blockNumber failed: {message}")
        result = answer.get("result")
        if not isinstance(result, str) or not result.startswith("0x"):
            raise ServiceUnavailable("json-rpc", f"eth_blockNumber answered {result!r}")
        return int(result, 16)

    return check


def kubernetes_check(api_client: Any) -> ReadinessCheck:
    """GET ``/readyz`` of the API server through a kubernetes ``ApiClient`` (its
    credentials), off the loop."""

    def call() -> None:
        from kubernetes.client.rest import ApiException

        try:
            api_client.call_api(
                "/readyz",
                "GET",
                auth_settings=["BearerToken"],
                response_types_map={},
                _request_timeout=READY_TIMEOUT_S,
            )
        except ApiException as error:  # its text carries headers: keep status and reason
            raise ServiceUnavailable("kubernetes", f"HTTP {error.status} {error.reason}") from None
        except Exception as error:
            raise ServiceUnavailable("kubernetes", f"{type(error).__name__}: {error}") from None

    async def check() -> None:
        await off_loop(call)

    return check


# --- the server ------------------------------------------------------------------------


def make_app(probes: Probes, registry: CollectorRegistry = REGISTRY) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        status, body = probes.health()
        return web.json_response(body, status=status)

    async def readyz(_request: web.Request) -> web.Response:
        status, body = await probes.ready()
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class ProbeServer:
    """A started server; ``port`` is the one it bound (useful when asked for 0)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_server(
    probes: Probes, host: str, port: int, registry: CollectorRegistry = REGISTRY
) -> ProbeServer:
    """Serve the three endpoints on ``host:port`` (0: any free port). A port that cannot
    be bound is Fatal: the supervisor's probes would fail anyway, the log says why."""
    runner = web.AppRunner(
        make_app(probes, registry), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise Fatal(
            f"cannot serve /metrics on {host}:{port} (FHE_METRICS_HOST, FHE_METRICS_PORT): "
            f"{error.strerror or error}"
        ) from None
    bound = next((a[1] for a in runner.addresses if isinstance(a, tuple)), port)
    return ProbeServer(runner, host, bound)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, probes: Probes, registry: CollectorRegistry = REGISTRY
) -> AsyncIterator[ProbeServer | None]:
    """Serve for the duration of the block; yields None (serves nothing) when
    FHE_METRICS_PORT is 0."""
    if settings.metrics_port == 0:
        yield None
        return
    server = await start_server(probes, settings.metrics_host, settings.metrics_port, registry)
    log.info(
        "serving /metrics, /healthz, /readyz",
        extra={"fields": {"host": settings.metrics_host, "port": server.port}},
    )
    try:
        yield server
    finally:
        await server.close()
