"""``fhe-listener host|gateway|sender``: long-running chain listeners.

Exit codes as every deployable: 0 stopped by a signal, 1 fatal (misconfiguration: the
supervisor restarts it, the log says what to fix), 3 a listener this release lacks.

Each serves /metrics, /healthz and /readyz on FHE_METRICS_HOST:FHE_METRICS_PORT
(coprocessor.observability) while it runs. Readiness: the host listener checks
PostgreSQL, the host RPC and (when it creates batches) the API server; the gateway
listener and the sender check PostgreSQL and the gateway RPC. Liveness: the loop's
heartbeat. SIGTERM or SIGINT lets the poll or pass in flight finish, then the server
and the pool are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from coprocessor.errors import EXIT_IRRECOVERABLE, EXIT_OK, exit_code_for
from coprocessor.logs import configure_logging
from coprocessor.settings import Settings, load_settings

LISTENERS = ("host", "gateway", "sender")
AVAILABLE = LISTENERS

# A loop that has not turned for this long is stuck: /healthz fails and the kubelet
# restarts the pod. Generous: one turn may read many blocks (each beats), wait out a
# backoff of up to a minute, or - the gateway listener - fetch a KMS keyset.
LIVENESS_S = 300.0
GATEWAY_LIVENESS_S = 600.0

log = logging.getLogger("fhe-listener")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-listener", description=__doc__.splitlines()[0])
    parser.add_argument("listener", choices=LISTENERS)
    parser.add_argument(
        "--no-batches", action="store_true", help="write rows only; create no FheBatch resources"
    )
    args = parser.parse_args(argv)
    if args.listener not in AVAILABLE:
        print(
            f"fhe-listener: error: listener {args.listener!r} is not available in this release",
            file=sys.stderr,
        )
        sys.exit(EXIT_IRRECOVERABLE)
    try:
        settings = load_settings()
    except Exception as error:
        print(f"fhe-listener: error: {error}", file=sys.stderr)
        sys.exit(exit_code_for(error))
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_until_signalled(args.listener, settings, batches=not args.no_batches))
    except Exception as error:
        code = exit_code_for(error)
        log.error(
            "listener stopped",
            exc_info=error if code == 1 else None,
            extra={"fields": {"error": str(error), "exit_code": code}},
        )
        sys.exit(code)
    sys.exit(EXIT_OK)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _until_signalled(listener: str, settings: Settings, *, batches: bool) -> None:
    stop = _stop_on_signals()
    if listener == "sender":
        await run_sender(settings, stop)
    elif listener == "gateway":
        await run_gateway(settings, stop)
    else:
        await run_host(settings, stop, batches=batches)


async def run_sender(settings: Settings, stop: asyncio.Event) -> None:
    """``fhe-listener sender`` until ``stop``, serving its probes meanwhile."""
    from coprocessor import metrics
    from coprocessor.chain.gateway import GatewayClient, load_signer, require_gateway
    from coprocessor.chain.verdicts import VerdictSigner
    from coprocessor.db.pool import pool_of
    from coprocessor.observability import Probes, postgres_check, rpc_check, serving

    from .sender import WORKER, Sender

    require_gateway(settings)  # before any connection: the message says what to set
    signer = load_signer(settings)
    probes = Probes()
    heartbeat = probes.heartbeat("sender", max(LIVENESS_S, 3 * settings.notify_poll_interval_s))
    metrics.declare_worker(WORKER)
    pool = await pool_of(settings, size=4)
    try:
        probes.readiness("postgres", postgres_check(pool))
        probes.readiness("gateway-rpc", rpc_check(settings.gateway_rpc_url))
        async with serving(settings, probes):
            gateway = GatewayClient.connect(settings, signer)
            verdicts = None
            if settings.signer_private_key is not None:
                chain_id = await asyncio.to_thread(gateway.chain_id)
                verdicts = VerdictSigner.from_settings(settings, chain_id)
            else:
                log.warning(
                    "FHE_SIGNER_PRIVATE_KEY is not set: this sender sends no verdicts on "
                    "input requests"
                )
            sender = Sender(settings, pool, gateway, verdicts, heartbeat)
            await sender.run(stop)
            log.info("sender stopped", extra={"fields": vars(sender.counters)})
    finally:
        await pool.close()


async def run_gateway(settings: Settings, stop: asyncio.Event) -> None:
    """``fhe-listener gateway`` until ``stop``, serving its probes meanwhile."""
    from coprocessor import metrics
    from coprocessor.chain.rpc import gateway_web3
    from coprocessor.db.pool import pool_of
    from coprocessor.observability import Probes, postgres_check, rpc_check, serving

    from .gateway import WORKER, GatewayListener, require_gateway_contracts

    require_gateway_contracts(settings)  # before any connection: the message says what to set
    probes = Probes()
    heartbeat = probes.heartbeat(
        "gateway-listener", max(GATEWAY_LIVENESS_S, 10 * settings.gateway_poll_interval_s)
    )
    metrics.WORKER_ERRORS.labels(WORKER)
    w3 = gateway_web3(settings)
    pool = await pool_of(settings, size=4)
    try:
        probes.readiness("postgres", postgres_check(pool))
        probes.readiness("gateway-rpc", rpc_check(settings.gateway_rpc_url))
        async with serving(settings, probes):
            listener = GatewayListener(settings, w3, pool, heartbeat=heartbeat)
            await listener.run(stop)
            log.info("gateway listener stopped", extra={"fields": vars(listener.counters)})
    finally:
        await pool.close()


async def run_host(settings: Settings, stop: asyncio.Event, *, batches: bool = True) -> None:
    """``fhe-listener host`` until ``stop``, serving its probes meanwhile."""
    from coprocessor import metrics
    from coprocessor.chain.rpc import host_web3
    from coprocessor.db.pool import pool_of
    from coprocessor.observability import (
        Probes,
        kubernetes_check,
        postgres_check,
        rpc_check,
        serving,
    )

    from .host import WORKER, HostListener, require_contracts

    require_contracts(settings)  # before any connection: the message says what to set
    probes = Probes()
    heartbeat = probes.heartbeat(
        "host-listener", max(LIVENESS_S, 10 * settings.host_poll_interval_s)
    )
    metrics.WORKER_ERRORS.labels(WORKER)
    api = None
    if batches:
        from kubernetes import client

        from coprocessor.api.kube import api_client

        api = client.CustomObjectsApi(api_client(settings.kubeconfig))
        probes.readiness("kubernetes", kubernetes_check(api.api_client))
    w3 = host_web3(settings)
    pool = await pool_of(settings, size=4)
    try:
        probes.readiness("postgres", postgres_check(pool))
        probes.readiness("host-rpc", rpc_check(settings.host_rpc_url))
        async with serving(settings, probes):
            listener = HostListener(settings, w3, pool, api, heartbeat)
            await listener.run(stop)
            log.info("listener stopped", extra={"fields": vars(listener.counters)})
    finally:
        await pool.close()


if __name__ == "__main__":
    main()
