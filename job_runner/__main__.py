"""``fhe-job STAGE[,STAGE...] --batch ID``: the entry point of every stage pod.

A pod may run several consecutive stages of one batch in turn (``compute,sns,send``,
coprocessor.api.stages): each runs as it would alone, the next only when the one
before exited 0, and SNS's key loads while compute runs. The exit code is that of the
stage it ended in, and the termination message holds every stage's report.

Exit codes follow coprocessor.errors: 0 done, 3 irrecoverable (bad input; the Job's
podFailurePolicy fails the Job at once), 75 recoverable (database or S3 down, inputs
not produced yet; the Job controller retries the pod), 1 fatal. Whatever happens, a
JSON summary goes to the termination log, where Kubernetes (and our node agent)
reads it into the pod status for the operator.

Stage pods serve nothing. ``fhe-job verify --follow`` (a Deployment) serves /metrics,
/healthz and /readyz on FHE_METRICS_HOST:FHE_METRICS_PORT while it runs
(coprocessor.observability): ready when PostgreSQL and S3 answer, alive while its loop
turns. SIGTERM lets the request in hand finish, then the server is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from coprocessor.api.stages import JOB_STAGES, parse_group
from coprocessor.api.summary import stages_message
from coprocessor.db.pool import classify
from coprocessor.errors import exit_code_for
from coprocessor.logs import configure_logging
from coprocessor.settings import Settings, load_settings

if TYPE_CHECKING:  # imported where used: `fhe-job --help` stays fast
    from .sns import Preload

log = logging.getLogger("fhe-job")

# The verify worker's loop beats per request; one request may wait on a tenant's server
# key (hundreds of MB from S3, GBs decompressed), so its liveness is generous.
VERIFY_LIVENESS_S = 900.0


def _index_default() -> int:
    """Indexed Jobs give each pod its index in JOB_COMPLETION_INDEX."""
    value = os.environ.get("JOB_COMPLETION_INDEX", "0")
    return int(value) if value.isdigit() else 0


def write_termination_message(path: Path, summary: dict[str, object]) -> None:
    """Best effort: outside a pod the path may not exist; the summary is logged anyway."""
    text = json.dumps(summary, separators=(",", ":"))[:4000]
    try:
        path.write_text(text)
    except OSError as error:
        log.info("no termination log", extra={"fields": {"path": str(path), "error": str(error)}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-job", description=__doc__.splitlines()[0])
    parser.add_argument(
        "stage",
        type=_group,
        metavar="STAGE[,STAGE...]",
        help=f"{', '.join(JOB_STAGES)}; or consecutive batch stages to run in turn "
        "(compute,sns,send)",
    )
    parser.add_argument(
        "--batch",
        help="batch id (namespace/name@spec-hash); verify "
        "takes none: it drains the verify_proofs queue",
    )
    parser.add_argument(
        "--index",
        type=int,
        default=_index_default(),
        help="this pod's index in an Indexed Job (default: $JOB_COMPLETION_INDEX or 0)",
    )
    parser.add_argument("--count", type=int, default=1, help="pods sharing the batch")
    parser.add_argument(
        "--follow",
        action="store_true",
        help="verify only: keep answering as requests arrive, until SIGTERM",
    )
    args = parser.parse_args(argv)
    group: tuple[str, ...] = args.stage
    named = ",".join(group)
    if (args.batch is None) != (group == ("verify",)):
        parser.error("verify takes no --batch" if args.batch else f"{named} needs --batch")
    if args.count < 1 or not 0 <= args.index < args.count:
        parser.error(f"--index {args.index} must be in 0..{args.count - 1}")
    if args.count > 1 and len(group) > 1:
        parser.error("--count is for a compute stage alone: SNS and send run once a batch")
    if args.follow and group != ("verify",):
        parser.error("--follow is for verify only")
    if args.follow:
        sys.exit(follow_verify())
    sys.exit(run_stages(group, args.batch, args.index, args.count))


def _group(text: str) -> tuple[str, ...]:
    try:
        return parse_group(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _settings_or_exit_code() -> Settings | int:
    """The settings, logging configured; or the exit code of settings that do not load
    (one line on stderr: there is no logging yet)."""
    try:
        settings = load_settings()
    except Exception as error:
        print(f"fhe-job: error: {error}", file=sys.stderr)
        return exit_code_for(error)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def follow_verify() -> int:
    """The long-running verify worker: 0 when stopped by a signal."""
    settings = _settings_or_exit_code()
    if isinstance(settings, int):
        return settings

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_verify(settings, stop)

    try:
        asyncio.run(run())
    except Exception as raised:
        error = classify(raised)
        code = exit_code_for(error)
        log.error(
            "verify worker stopped",
            exc_info=raised if code == 1 else None,
            extra={"fields": {"error": str(error), "exit_code": code}},
        )
        return code
    return 0


async def serve_verify(settings: Settings, stop: asyncio.Event) -> None:
    """The verify worker until ``stop``, serving its probes meanwhile."""
    from coprocessor import metrics
    from coprocessor.observability import Probes, postgres_check, s3_check, serving

    from .verify import WORKER, follow

    probes = Probes()
    heartbeat = probes.heartbeat(
        "verify", max(VERIFY_LIVENESS_S, 3 * settings.notify_poll_interval_s)
    )
    probes.readiness("postgres", postgres_check(settings.database_url, settings.database_sslmode))
    probes.readiness("s3", s3_check(settings))
    metrics.declare_worker(WORKER)
    async with serving(settings, probes):
        await follow(settings, stop, heartbeat=heartbeat)


def run_stage(stage: str, batch_id: str | None, index: int, count: int) -> int:
    """One stage in this pod (what ``run_stages`` does for a group of one)."""
    return run_stages((stage,), batch_id, index, count)


def run_stages(group: tuple[str, ...], batch_id: str | None, index: int, count: int) -> int:
    settings = _settings_or_exit_code()
    if isinstance(settings, int):
        return settings
    return asyncio.run(_run_group(group, settings, batch_id, index, count))


async def _run_group(
    group: tuple[str, ...],
    settings: Settings,
    batch_id: str | None,
    index: int,
    count: int,
) -> int:
    """Each stage in turn until one exits non-zero; its exit code.

    A pod of several stages leaves its termination message at each stage's start too
    (the reports so far, and the stage it is in): a pod killed mid-stage (memory, the
    deadline, a node lost) then shows which stage it was in, not the first."""
    reports: dict[str, dict[str, object]] = {}

    def leave(stage: str, code: int) -> None:
        message = reports[stage] if len(group) == 1 else stages_message(reports, stage, code)
        write_termination_message(settings.termination_log, message)

    preload = None
    if batch_id and {"compute", "sns"} <= set(group):
        # SNS's key (the whole of it) loads from now on: beside compute, or for compute
        # too where the node cache holds it (on the CPU only: see start_preload).
        from .sns import start_preload

        try:
            preload = await start_preload(settings, batch_id)
        except Exception as error:  # each stage loads its own key, and reports what fails
            log.warning(
                "no key preload for this pod", extra={"fields": {"error": str(error)[:300]}}
            )
    try:
        ended, code = group[-1], 0
        for stage in group:
            if len(group) > 1:
                leave(stage, 0)
            code = await _run_reported(stage, settings, batch_id, index, count, reports, preload)
            if code != 0:
                ended = stage
                break
        # Before waiting for a preload still running, which may take seconds.
        leave(ended, code)
        return code
    finally:
        if preload is not None:
            preload.cancel()
            await asyncio.gather(preload.key, return_exceptions=True)


async def _run_reported(
    stage: str,
    settings: Settings,
    batch_id: str | None,
    index: int,
    count: int,
    reports: dict[str, dict[str, object]],
    preload: Preload | None,
) -> int:
    """One stage: its exit code, its report in ``reports`` and its log line."""
    try:
        summary = await _run(stage, settings, batch_id, index, count, preload)
    except Exception as raised:  # every class of error maps to its exit code
        error = classify(raised)
        code = exit_code_for(error)
        log.error(
            "stage failed",
            exc_info=raised if code == 1 else None,
            extra={
                "fields": {
                    "stage": stage,
                    "batch": batch_id,
                    "error": str(error),
                    "exit_code": code,
                }
            },
        )
        reports[stage] = {
            "completed": 0,
            "failed": 0,
            "error": str(error)[:800],
            "exit_code": code,
        }
        return code
    report = summary.as_dict()
    code = summary.exit_code
    if summary.failed and not report.get("error"):
        first = next(iter(summary.failures.items()), ("?", "?"))
        report["error"] = (f"{summary.failed} {_ITEMS[stage]} failed; {first[0]}: {first[1]}")[:800]
    report["exit_code"] = code
    reports[stage] = report
    log.info("stage finished", extra={"fields": {"stage": stage, "batch": batch_id, **report}})
    return code


_ITEMS = {
    "compute": "computation(s)",
    "sns": "handle(s)",
    "send": "submission(s)",
    "verify": "input list(s)",
}


async def _run(
    stage: str,
    settings,
    batch_id: str | None,
    index: int,
    count: int,
    preload: Preload | None = None,
):
    """The stage's runner; imported here so `fhe-job --help` stays fast."""
    if stage == "compute":
        from .compute import run_compute

        shared = preload.evaluator if preload is not None and preload.for_compute else None
        return await run_compute(settings, batch_id, index, count, shared)
    if stage == "verify":
        from .verify import run_verify

        return await run_verify(settings)
    if stage == "send":
        from .send import run_send

        return await run_send(settings, batch_id)
    from .sns import run_sns

    return await run_sns(settings, batch_id, preload)


if __name__ == "__main__":
    main()
