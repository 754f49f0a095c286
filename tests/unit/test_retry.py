"""The S3 retry policy: backoff delays and the circuit breaker, as tables."""

import pytest

from coprocessor.errors import ServiceUnavailable
from coprocessor.retry import CircuitBreaker, backoff_delays
from job_runner.upload import CircuitOpen, Uploader


@pytest.mark.parametrize(
    ("attempts", "first", "cap", "expected"),
    [
        (1, 0.2, 5.0, []),
        (2, 0.2, 5.0, [0.2]),
        (5, 0.2, 1.0, [0.2, 0.4, 0.8, 1.0]),
        (4, 3.0, 2.0, [2.0, 2.0, 2.0]),
    ],
)
def test_backoff_doubles_up_to_the_cap(attempts, first, cap, expected):
    assert list(backoff_delays(attempts, first, cap)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("events", "opens_at"),
    [
        ("fff", 3),
        ("ffsfff", 6),  # a success resets the count
        ("ffsffsff", None),
        ("fffs", 3),  # and once open, it stays open
    ],
)
def test_breaker_opens_after_consecutive_failures(events, opens_at):
    breaker = CircuitBreaker(3)
    opened = None
    for number, event in enumerate(events, start=1):
        if event == "f" and breaker.failure():
            opened = number
        elif event == "s":
            breaker.success()
    assert opened == opens_at
    assert breaker.is_open == (opens_at is not None)


def test_breaker_needs_a_positive_threshold():
    with pytest.raises(ValueError):
        CircuitBreaker(0)


class FlakyStore:
    """Stands in for S3 here only to script failures; the real server is tested in
    tests/integration/job_runner/test_sns.py."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def put(self, key: str, data: bytes) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            raise ServiceUnavailable("s3", "connection refused")
        return True


def uploader(store, attempts=3, threshold=10):
    slept: list[float] = []
    return Uploader(
        store,
        attempts=attempts,
        first_delay_s=0.5,
        max_delay_s=2.0,
        breaker=CircuitBreaker(threshold),
        sleep=slept.append,
    ), slept


def test_transient_failures_are_retried_with_backoff():
    up, slept = uploader(FlakyStore(2))
    assert up.put("ct64/aa", b"x") is True
    assert (slept, up.retries, up.uploaded_bytes) == ([0.5, 1.0], 2, 1)


def test_attempts_run_out_then_the_error_surfaces():
    up, slept = uploader(FlakyStore(5), attempts=3)
    with pytest.raises(ServiceUnavailable):
        up.put("ct64/aa", b"x")
    assert slept == [0.5, 1.0]


def test_an_open_circuit_stops_every_later_upload_without_a_request():
    store = FlakyStore(100)
    up, _ = uploader(store, attempts=10, threshold=3)
    with pytest.raises(CircuitOpen):
        up.put("ct64/aa", b"x")
    calls = store.calls
    with pytest.raises(CircuitOpen):
        up.put("ct64/bb", b"y")
    assert calls == 3 and store.calls == 3
