"""Every Prometheus metric of the product, in one place.

Names follow Zama's coprocessor where it has the metric (``coprocessor_*``); the
others are ours (``fhe_*``). All live in prometheus_client's default registry, which
``coprocessor.observability`` serves on ``/metrics``; a process that serves nothing (a
stage Job's pod) may still move them, at no cost.

Counters are exposed with prometheus_client's ``_total`` suffix (and a ``_created``
sample): ``coprocessor_work_items_processed`` is scraped as
``coprocessor_work_items_processed_total``. Label values are a small fixed set (a
component, a stage, a gateway function name), never an id.

Worker label values: ``verify`` (``fhe-job verify --follow``), ``sender``
(``fhe-listener sender``), ``host-listener`` and ``gateway-listener``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds, from a fast database round trip to a GPU batch or a server key's load.
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)

# --- work queues (Zama's names) --------------------------------------------------------

WORK_ITEMS_PROCESSED = Counter(
    "coprocessor_work_items_processed",
    "Work items a worker finished: input requests answered (verified or refused) by "
    "the verify worker; gateway calls settled (mined or found on chain) by the sender.",
    ["worker"],
)
"""Moved by the verify worker per answered request and by the sender per settled call."""

WORKER_ERRORS = Counter(
    "coprocessor_worker_errors",
    "Errors a worker met and carried on after: a pass or poll cut short by a service "
    "down, an input request left pending because of our own fault.",
    ["worker"],
)
"""Moved where a long-running loop logs a recoverable error and goes on."""

WORK_ITEMS_POLLS = Counter(
    "coprocessor_work_items_polls",
    "Times a worker woke up because its poll interval passed without a notification.",
    ["worker"],
)
"""Moved by the LISTEN/NOTIFY waiters of the verify worker and the sender."""

WORK_ITEMS_NOTIFICATIONS = Counter(
    "coprocessor_work_items_notifications",
    "Times a worker woke up on a PostgreSQL NOTIFY.",
    ["worker"],
)
"""Moved by the LISTEN/NOTIFY waiters of the verify worker and the sender."""

SNS_OP_LATENCY = Histogram(
    "coprocessor_sns_op_latency_seconds",
    "Time to switch-and-squash one ciphertext (one PBS operation).",
    buckets=_LATENCY_BUCKETS,
)
"""For the SNS stage; defined here, not wired yet (stage pods serve no metrics)."""

ZKPROOF_VERIFY_LATENCY = Histogram(
    "coprocessor_zkproof_verify_latency_seconds",
    "Time to verify one input list's zero-knowledge proof and expand its ciphertexts.",
    buckets=_LATENCY_BUCKETS,
)
"""Observed by the verify stage around each proof verification."""

FHE_BATCH_LATENCY = Histogram(
    "coprocessor_fhe_batch_latency_seconds",
    "Time to compute one batch of FHE operations.",
    buckets=_LATENCY_BUCKETS,
)
"""For the compute stage; defined here, not wired yet (stage pods serve no metrics)."""

# --- chain listeners -------------------------------------------------------------------

LISTENER_LAG_BLOCKS = Gauge(
    "fhe_listener_lag_blocks",
    "Blocks between the chain's head and the last block the listener processed "
    "(the finality depth included), as of its last poll.",
    ["listener"],
)
"""Set by the host (``listener="host"``) and gateway (``"gateway"``) listeners per poll."""

LISTENER_BLOCKS_PROCESSED = Counter(
    "fhe_listener_blocks_processed",
    "Blocks a listener read and recorded (a block read again after a reorg counts again).",
    ["listener"],
)
"""Moved by the host and gateway listeners per block recorded."""

# --- transaction sender ----------------------------------------------------------------

SENDER_INFLIGHT = Gauge(
    "fhe_sender_inflight_transactions",
    "Gateway transactions this sender broadcast whose receipt it has not seen yet.",
)
"""Moved by ``fhe-listener sender`` on broadcast and on receipt."""

SENDER_GAS_USED = Counter(
    "fhe_sender_gas_used",
    "Gas used by the mined gateway transactions this sender broadcast, by gateway "
    "function (addCiphertextMaterial, allowAccount, verifyProofResponse, ...).",
    ["kind"],
)
"""Moved by ``fhe-listener sender`` per receipt of its own transactions."""

SENDER_TRANSACTIONS = Counter(
    "fhe_sender_transactions",
    "Gateway transactions this sender broadcast, by gateway function and outcome: "
    "succeeded or reverted (mined), dropped (the node lost it; the call is sent again).",
    ["kind", "outcome"],
)
"""Moved by ``fhe-listener sender`` when one of its transactions is settled."""

# --- operator and stages ---------------------------------------------------------------

OPERATOR_BATCHES = Gauge(
    "fhe_operator_batches",
    "FheBatch resources the operator sees, by phase.",
    ["phase"],
)
"""For the operator (wired with it)."""

OPERATOR_RECONCILE_SECONDS = Histogram(
    "fhe_operator_reconcile_seconds",
    "Time of one reconcile of one FheBatch.",
    buckets=_LATENCY_BUCKETS,
)
"""For the operator (wired with it)."""

OPERATOR_JOB_STARTS = Counter(
    "fhe_operator_job_starts",
    "Stage Jobs the operator created, by stage.",
    ["stage"],
)
"""For the operator (wired with it)."""

STAGE_KEY_LOAD_SECONDS = Histogram(
    "fhe_stage_key_load_seconds",
    "Time a stage spent fetching and loading a tenant's keys, by stage.",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
"""For the stages (compute, sns, verify); defined here, wired with the operator's."""

STAGE_SECONDS = Histogram(
    "fhe_stage_seconds",
    "Wall time of one stage run of one batch, by stage.",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
"""For the operator, from the stage Jobs' summaries (wired with it)."""


def declare_worker(worker: str) -> None:
    """Create a worker's series at zero, so they are scraped (and rate() works) before
    its first event."""
    for metric in (WORK_ITEMS_PROCESSED, WORKER_ERRORS, WORK_ITEMS_POLLS, WORK_ITEMS_NOTIFICATIONS):
        metric.labels(worker)


def count_wakeup(worker: str, reason: str) -> None:
    """A NotificationWaiter's wake-up: ``reason`` "notified" or "poll"."""
    counter = WORK_ITEMS_NOTIFICATIONS if reason == "notified" else WORK_ITEMS_POLLS
    counter.labels(worker).inc()
