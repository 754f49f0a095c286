"""``fhe-operator``: the kopf operator that reconciles FheBatch resources into Jobs.

Several replicas may run: with ``FHE_OPERATOR_LEADER_ELECTION=true`` only the one
holding the Lease reconciles (``leader.py``); the others stand by, serving health and
metrics. kopf runs inside our own event loop, so the Lease, the probes and kopf share
one process lifetime: losing the Lease stops kopf and exits 75 (the container restarts
and stands by again); SIGTERM stops kopf, releases the Lease and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any

from coprocessor.errors import EXIT_FATAL, EXIT_OK, EXIT_RECOVERABLE, exit_code_for
from coprocessor.logs import configure_logging
from coprocessor.settings import Settings, load_settings

log = logging.getLogger("fhe-operator")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-operator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all",
    )
    parser.add_argument(
        "--liveness",
        default="http://127.0.0.1:8080/healthz",
        help="kopf's own liveness endpoint URL (reflects the watch streams); 'off' = none",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except Exception as error:
        print(f"fhe-operator: error: {error}", file=sys.stderr)
        sys.exit(exit_code_for(error))
    configure_logging(settings.log_level, settings.log_format)
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = str(settings.kubeconfig)  # kopf's own login reads it
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=False)
    configure_logging(settings.log_level, settings.log_format)  # kopf replaced handlers
    liveness = None if args.liveness in ("", "off", "none") else args.liveness
    try:
        code = asyncio.run(_serve(settings, args.namespace, liveness))
    except Exception as error:
        code = exit_code_for(error)
        log.error(
            "operator stopped",
            exc_info=error if code == 1 else None,
            extra={"fields": {"error": str(error), "exit_code": code}},
        )
    sys.exit(code)


async def _serve(settings: Settings, namespaces: list[str], liveness: str | None) -> int:
    """Probes first, then (with election) the Lease, then kopf until a signal or the
    Lease is lost. Returns the exit code."""
    from coprocessor.observability import Probes, serving

    from .probes import operator_probes

    probes: Probes = operator_probes(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serving(settings, probes):
        elector = None
        lost = asyncio.Event()
        holding: asyncio.Task[None] | None = None
        election = probes.heartbeat("election", max_age_s=3 * settings.operator_lease_renew_s)
        if settings.operator_leader_election:
            from coprocessor.api.kube import api_client

            from .leader import LeaseElector

            elector = LeaseElector(
                api_client(settings.kubeconfig),
                settings.namespace,
                settings.operator_lease_name,
                duration_s=settings.operator_lease_duration_s,
                renew_s=settings.operator_lease_renew_s,
                renew_deadline_s=settings.operator_lease_renew_deadline_s,
            )
            if not await elector.acquire(stop, beat=election.beat):
                return EXIT_OK
            holding = asyncio.create_task(elector.hold(lost, beat=election.beat))
        else:
            holding = asyncio.create_task(_beat_forever(election, settings, lost))
        try:
            return await _run_kopf(settings, namespaces, liveness, stop, lost, probes)
        finally:
            lost.set()
            if holding is not None:
                await holding
            if elector is not None:
                await elector.release()


async def _run_kopf(
    settings: Settings,
    namespaces: list[str],
    liveness: str | None,
    stop: asyncio.Event,
    lost: asyncio.Event,
    probes: Any,
) -> int:
    import kopf

    from .probes import watch_task

    # kopf runs on an event loop of its own, in a thread: at shutdown it waits for, then
    # cancels, every task of its loop, which must not include our Lease renewals or the
    # probe server's requests (on a shared loop each stop took kopf's 5 s hung-task
    # timeout, and cut the Lease's release short). Signals reach our loop only.
    kopf_stop = threading.Event()

    def run_kopf() -> None:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            stop_flag=kopf_stop,
        )

    operator = asyncio.create_task(asyncio.to_thread(run_kopf))
    kopf_alive = probes.heartbeat("kopf", max_age_s=30)
    watchdog = asyncio.create_task(watch_task(kopf_alive, operator, every_s=5))
    waiters = {
        asyncio.create_task(stop.wait()): "signal",
        asyncio.create_task(lost.wait()): "lease lost",
    }
    done, _ = await asyncio.wait({operator, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (*waiters, watchdog):
        waiter.cancel()
    reason = "kopf stopped" if operator in done else waiters[next(iter(done))]
    kopf_stop.set()
    await operator  # kopf finishes the handlers in flight, then returns
    if reason == "lease lost" and not stop.is_set():
        return EXIT_RECOVERABLE
    if reason == "kopf stopped" and not stop.is_set():
        log.error("kopf stopped on its own: exiting so the pod restarts")
        return EXIT_FATAL
    log.info("operator stopped", extra={"fields": {"reason": reason}})
    return EXIT_OK


async def _beat_forever(beat: Any, settings: Settings, stop: asyncio.Event) -> None:
    """Without election there is nothing to renew; the heartbeat says the loop runs."""
    while not stop.is_set():
        beat.beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.operator_lease_renew_s)


if __name__ == "__main__":
    main()
