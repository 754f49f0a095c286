"""What a stage pod reports in its termination message, and what the operator shows of it.

The four stages (compute, sns, send, verify) share one base: the counters every stage
has, an error and a few failures, and one rule for the exit code. Counters marked
``shown`` are copied into ``status.stages.<stage>.summary`` of the FheBatch; the rest
(signer address, gas, megabytes) stay in the message for logs and benchmarks. The
operator reads ``STATUS_KEYS`` from here, so a new counter cannot be shown by one side
and dropped by the other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import EXIT_IRRECOVERABLE, EXIT_OK, EXIT_RECOVERABLE
from .stages import BATCH_STAGES

MAX_ERROR_CHARS = 800  # the termination message is capped at 4 KiB
_TAIL = ("error", "failures")


def shown(default: Any = 0) -> Any:
    """A counter the operator copies into the batch's status."""
    return field(default=default, metadata={"shown": True})


def error_fields(error: str | None, failures: dict[str, str]) -> dict[str, object]:
    """The tail every stage summary ends with: the error and a few failures, trimmed so
    the termination message stays under its 4 KiB."""
    few = dict(list(failures.items())[:3])
    return {
        "error": (error or "")[:MAX_ERROR_CHARS] or None,
        "failures": {k: v[:200] for k, v in few.items()},
    }


def partial_exit_code(error: str | None, failed: int) -> int:
    """Stages that keep what they did: something left for a re-run is recoverable (75),
    else a failed item is irrecoverable (3)."""
    if error:
        return EXIT_RECOVERABLE
    return EXIT_IRRECOVERABLE if failed else EXIT_OK


@dataclass(kw_only=True)
class StageSummary:
    """The counters every stage reports; subclasses add their own before the tail."""

    total: int = shown()  # items in this pod's share
    completed: int = shown()  # of them, done (by this run or an earlier one)
    failed: int = shown()
    seconds: float = shown(0.0)
    error: str | None = None  # why some items were left for a re-run (recoverable)
    failures: dict[str, str] = field(default_factory=dict)  # a few, for the message

    @property
    def exit_code(self) -> int:
        return partial_exit_code(self.error, self.failed)

    def as_dict(self) -> dict[str, object]:
        """The termination message: every counter (seconds and megabytes to three
        decimals), then the error tail."""
        counters = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TAIL}
        return {
            **{
                name: round(value, 3) if isinstance(value, float) else value
                for name, value in counters.items()
            },
            **error_fields(self.error, self.failures),
        }


@dataclass(kw_only=True)
class ComputeSummary(StageSummary):
    computed: int = shown()  # computed by this run
    key_load_s: float = shown(0.0)  # loading the tenant's server key (before ``seconds``)

    @property
    def exit_code(self) -> int:
        # Work left undone is the executor's to report as an error; a failed node is final.
        return EXIT_IRRECOVERABLE if self.failed else EXIT_OK


@dataclass(kw_only=True)
class SnsSummary(StageSummary):
    squashed: int = shown()  # squashed by this run
    uploaded: int = shown()  # objects uploaded by this run
    reused: int = shown()  # objects already in S3 with the same bytes
    retries: int = shown()  # S3 requests retried
    megabytes: float = 0.0  # uploaded by this run


@dataclass(kw_only=True)
class SendSummary(StageSummary):
    sent: int = shown()  # carried by this run's transactions
    found: int = 0  # already on chain when this run looked (a lost record)
    transactions: int = shown()  # distinct transactions that carried the batch's commits
    accepted: int = shown()  # handles whose material reached the coprocessors' majority
    acl_calls: int = shown()  # MultichainACL calls about the batch's handles, on chain
    retries: int = shown()  # gateway RPC calls retried
    gas_used: int = 0
    signer: str = ""


@dataclass(kw_only=True)
class VerifySummary(StageSummary):
    verified: int = 0
    rejected: int = 0  # answered 'no': the reason is on the row
    inputs: int = 0  # ciphertexts stored by this run


def _shown_keys() -> tuple[str, ...]:
    keys: list[str] = []
    for summary in (ComputeSummary, SnsSummary, SendSummary, VerifySummary):
        keys += [f.name for f in fields(summary) if f.metadata.get("shown") and f.name not in keys]
    return (*keys, "exit_code")


# Counters of the stage pods' termination messages shown in status.stages.<stage>.summary.
STATUS_KEYS = _shown_keys()


def stages_message(
    reports: dict[str, dict[str, object]], ended: str, exit_code: int
) -> dict[str, object]:
    """The termination message of a pod that ran several stages in turn: each stage's
    own counters under ``stages``, the stage it ended in (or is in, while it runs), its
    exit code and error at the top, as a one-stage pod's. The error is there once: the
    message is capped at 4 KiB."""
    last = reports.get(ended, {})
    return {
        "stage": ended,
        "exit_code": exit_code,
        "error": last.get("error"),
        "stages": {
            stage: {
                k: v for k, v in report.items() if k not in ("failures", "error") and v is not None
            }
            for stage, report in reports.items()
        },
    }


def read_termination_message(text: str) -> dict[str, Any]:
    """What the operator keeps of a stage pod's termination message: the shown counters
    (numbers only), the error (a string, trimmed) and nothing else; for a pod that ran
    several stages (``stages_message``) the same of each stage's report, and the name of
    the stage it ended in.

    The message is whatever the pod left in /dev/termination-log, or with
    FallbackToLogsOnError the tail of its log: a crash's traceback, a half-written JSON,
    a counter that is a list. None of it may reach the status unchecked or break a
    reconcile."""
    stripped = text.strip()
    try:
        parsed = json.loads(stripped) if stripped else {}
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return {"error": stripped.splitlines()[-1][:MAX_ERROR_CHARS]}
    if not isinstance(parsed, dict):
        return {"error": str(parsed)[:MAX_ERROR_CHARS]}
    kept = _kept(parsed)
    stages = parsed.get("stages")
    if isinstance(stages, dict):
        kept["stages"] = {
            stage: _kept(report)
            for stage, report in stages.items()
            if stage in BATCH_STAGES and isinstance(report, dict)
        }
        if parsed.get("stage") in BATCH_STAGES:
            kept["stage"] = parsed["stage"]
    return kept


def _kept(parsed: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key in STATUS_KEYS:
        value = parsed.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, int) and abs(value) >= 2**53:
            continue  # no counter is that large, and JSON readers lose such ints
        kept[key] = value
    error = parsed.get("error")
    if error is not None:
        kept["error"] = (error if isinstance(error, str) else _shown(error))[:MAX_ERROR_CHARS]
    return kept


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
