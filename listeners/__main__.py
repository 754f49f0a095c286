"""``fhe-listener host|gateway|sender``: long-running chain listeners.

Exit codes as every deployable: 0 stopped by a signal, 1 fatal (misconfiguration: the
supervisor restarts it, the log says what to fix), 3 a listener this release lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from coprocessor.errors import EXIT_IRRECOVERABLE, EXIT_OK, exit_code_for
from coprocessor.logs import configure_logging
from coprocessor.settings import load_settings

LISTENERS = ("host", "gateway", "sender")
AVAILABLE = LISTENERS

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
        if args.listener == "sender":
            asyncio.run(_run_sender(settings))
        elif args.listener == "gateway":
            asyncio.run(_run_gateway(settings))
        else:
            asyncio.run(_run_host(settings, batches=not args.no_batches))
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


async def _run_sender(settings) -> None:
    from coprocessor.chain.gateway import GatewayClient, load_signer, require_gateway
    from coprocessor.chain.verdicts import VerdictSigner
    from coprocessor.db.pool import create_pool

    from .sender import Sender

    require_gateway(settings)  # before any connection: the message says what to set
    signer = load_signer(settings)
    stop = _stop_on_signals()
    pool = await create_pool(settings.database_url, size=4)
    try:
        gateway = GatewayClient.connect(settings, signer)
        verdicts = None
        if settings.signer_private_key is not None:
            chain_id = await asyncio.to_thread(gateway.chain_id)
            verdicts = VerdictSigner.from_settings(settings, chain_id)
        else:
            log.warning(
                "FHE_SIGNER_PRIVATE_KEY is not set: this sender sends no verdicts on input requests"
            )
        sender = Sender(settings, pool, gateway, verdicts)
        await sender.run(stop)
        log.info("sender stopped", extra={"fields": vars(sender.counters)})
    finally:
        await pool.close()


async def _run_gateway(settings) -> None:
    from web3 import Web3

    from coprocessor.db.pool import create_pool

    from .gateway import GatewayListener, require_gateway_contracts

    require_gateway_contracts(settings)  # before any connection: the message says what to set
    stop = _stop_on_signals()
    w3 = Web3(Web3.HTTPProvider(settings.gateway_rpc_url, request_kwargs={"timeout": 10}))
    pool = await create_pool(settings.database_url, size=4)
    try:
        listener = GatewayListener(settings, w3, pool)
        await listener.run(stop)
        log.info("gateway listener stopped", extra={"fields": vars(listener.counters)})
    finally:
        await pool.close()


async def _run_host(settings, *, batches: bool) -> None:
    from web3 import Web3

    from coprocessor.db.pool import create_pool

    from .host import HostListener, require_contracts

    require_contracts(settings)  # before any connection: the message says what to set
    stop = _stop_on_signals()
    api = None
    if batches:
        from kubernetes import client

        from coprocessor.api.kube import api_client

        api = client.CustomObjectsApi(api_client(settings.kubeconfig))
    w3 = Web3(Web3.HTTPProvider(settings.host_rpc_url, request_kwargs={"timeout": 10}))
    pool = await create_pool(settings.database_url, size=4)
    try:
        listener = HostListener(settings, w3, pool, api)
        await listener.run(stop)
        log.info("listener stopped", extra={"fields": vars(listener.counters)})
    finally:
        await pool.close()


if __name__ == "__main__":
    main()
