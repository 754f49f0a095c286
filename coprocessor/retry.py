"""Retrying a flaky dependency without hammering it: capped exponential backoff and a
circuit breaker. Pure bookkeeping (the clock and the sleeping are the caller's), so the
policy is unit-tested as tables.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator


def backoff_delays(attempts: int, first_s: float, cap_s: float) -> Iterator[float]:
    """The pauses between ``attempts`` tries: first_s, 2*first_s, ... capped at cap_s."""
    delay = first_s
    for _ in range(attempts - 1):
        yield min(delay, cap_s)
        delay *= 2


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures across every caller.

    Once open it stays open for the rest of the pod's life: the stage then exits
    recoverably and the Job controller's pod backoff is the half-open probe. That keeps
    a dead S3 server from costing every remaining handle its full retry budget.
    """

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self._consecutive = 0
        self._open = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._open

    def success(self) -> None:
        with self._lock:
            if not self._open:
                self._consecutive = 0

    def failure(self) -> bool:
        """Record a failure; True when this one opened the circuit."""
        with self._lock:
            self._consecutive += 1
            if not self._open and self._consecutive >= self.threshold:
                self._open = True
                return True
            return False
