"""Uploading ciphertexts to S3 with retries, backoff and a circuit breaker.

Called from worker threads (boto3 clients are thread-safe), so several uploads are in
flight at once. Each object is idempotent: ``ObjectStore.put`` skips an object already
stored with the same bytes, so a re-run after a crash re-uses what was uploaded. One
uploader (one breaker, one set of counters) serves every bucket a pod writes to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from coprocessor.errors import ServiceUnavailable
from coprocessor.retry import CircuitBreaker, backoff_delays
from coprocessor.storage import ObjectStore

log = logging.getLogger(__name__)


class CircuitOpen(ServiceUnavailable):
    """Too many consecutive S3 failures: stop trying in this pod."""


class Uploader:
    def __init__(
        self,
        store: ObjectStore,
        *,
        attempts: int,
        first_delay_s: float,
        max_delay_s: float,
        breaker: CircuitBreaker,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.breaker = breaker
        self._sleep = sleep
        self._lock = threading.Lock()
        self.retries = 0  # across all uploads, for the stage summary
        self.uploaded_bytes = 0

    def put(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key``; True if uploaded now, False if already there."""
        return self._retried(key, data, lambda: self.store.put(key, data))

    def publish(
        self, store: ObjectStore, key: str, data: bytes, metadata: dict[str, str] | None = None
    ) -> bool:
        """Store a content-addressed published object in ``store``'s bucket, never
        overwriting one (``ObjectStore.put_content_addressed``); True if uploaded now."""
        return self._retried(key, data, lambda: store.put_content_addressed(key, data, metadata))

    def _retried(self, key: str, data: bytes, upload: Callable[[], bool]) -> bool:
        delays = backoff_delays(self.attempts, self.first_delay_s, self.max_delay_s)
        while True:
            if self.breaker.is_open:
                raise CircuitOpen(
                    "s3",
                    f"circuit open after {self.breaker.threshold} "
                    f"consecutive failures; not uploading {key}",
                )
            try:
                uploaded = upload()
            except ServiceUnavailable as error:
                if self.breaker.failure():
                    log.warning(
                        "s3 circuit open",
                        extra={
                            "fields": {"threshold": self.breaker.threshold, "error": error.detail}
                        },
                    )
                delay = next(delays, None)
                if delay is None:
                    raise
                with self._lock:
                    self.retries += 1
                log.info(
                    "upload retry",
                    extra={"fields": {"key": key, "in_s": delay, "error": error.detail[:200]}},
                )
                self._sleep(delay)
                continue
            self.breaker.success()
            if uploaded:
                with self._lock:
                    self.uploaded_bytes += len(data)
            return uploaded
