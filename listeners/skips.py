"""A chain log a listener cannot use: counted, its first reasons kept for the summary,
and logged with where it is, so an operator can find it on chain."""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)

REASONS_KEPT = 20


class SkipCounters(Protocol):
    skipped_logs: int
    skipped_reasons: list[str]


def record_skip(counters: SkipCounters, entry: Any, reason: str, message: str) -> None:
    counters.skipped_logs += 1
    if len(counters.skipped_reasons) < REASONS_KEPT:
        counters.skipped_reasons.append(reason)
    log.warning(
        message,
        extra={
            "fields": {
                "tx": "0x" + bytes(entry["transactionHash"]).hex(),
                "log_index": entry["logIndex"],
                "reason": reason[:300],
            }
        },
    )
