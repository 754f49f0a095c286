"""The operator's health, readiness and metrics: what the kubelet and Prometheus see.

* /readyz: PostgreSQL and the API server answer (a standby replica is ready too: it can
  take over at once);
* /healthz: the election loop turns (the Lease is renewed, or a standby keeps looking)
  and, on the active replica, kopf's task is running;
* metrics: the phase of every batch the operator has seen, reconcile latency, the Jobs
  it created, and each finished stage's wall time and key-load time from its Job's
  termination summary (stage pods push nothing).

Pure functions (``phase_counts``, ``finished_stages``) decide what to export.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

from coprocessor import metrics
from coprocessor.observability import Heartbeat, Probes, kubernetes_check, postgres_check
from coprocessor.settings import Settings

PHASES = (
    "Pending",
    "Admitted",
    "Computing",
    "Squashing",
    "Sending",
    "Succeeded",
    "Failed",
    "Suspended",
)
FINISHED = ("Succeeded", "Failed")


def operator_probes(settings: Settings) -> Probes:
    from coprocessor.api.kube import api_client

    probes = Probes()
    probes.readiness("postgres", postgres_check(settings.database_url, settings.database_sslmode))
    probes.readiness("kubernetes", kubernetes_check(api_client(settings.kubeconfig)))
    return probes


async def watch_task(beat: Heartbeat, task: asyncio.Task[Any], every_s: float) -> None:
    """Beat while ``task`` runs: once it has ended, /healthz goes stale."""
    while not task.done():
        beat.beat()
        await asyncio.sleep(every_s)


def phase_counts(phases: Mapping[tuple[str, str], str | None]) -> dict[str, int]:
    """Batches per phase, every known phase present (a gauge that drops to 0 must be
    set to 0, not left at its last value)."""
    counts = Counter(phase for phase in phases.values() if phase)
    return {phase: counts.get(phase, 0) for phase in sorted({*PHASES, *counts})}


def finished_stages(
    previous: Mapping[str, Any], status: Mapping[str, Any]
) -> list[tuple[str, dict]]:
    """(stage, summary) of each stage that finished between two statuses: observed
    once per run, when its state turns Succeeded or Failed - or, for a stage shown
    done while its pod went on to the next (one pod of several stages), when its
    summary arrives with the pod's end."""
    before = previous.get("stages") or {}
    after = status.get("stages") or {}
    done = []
    for stage, entry in after.items():
        state = (entry or {}).get("state")
        old_entry = before.get(stage) or {}
        summary = dict((entry or {}).get("summary") or {})
        old = old_entry.get("state")
        if state in FINISHED and (
            old not in FINISHED or (summary and not old_entry.get("summary"))
        ):
            done.append((stage, summary))
    return done


class OperatorMetrics:
    """The operator's view, kept in memory and exported as it changes."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str], str | None] = {}

    def phase(self, namespace: str, name: str, phase: str | None) -> None:
        if phase is None:
            self.phases.pop((namespace, name), None)
        else:
            self.phases[(namespace, name)] = phase
        for key, count in phase_counts(self.phases).items():
            metrics.OPERATOR_BATCHES.labels(key).set(count)

    @staticmethod
    def job_started(stage: str) -> None:
        metrics.OPERATOR_JOB_STARTS.labels(stage).inc()

    @staticmethod
    def status_written(previous: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        for stage, summary in finished_stages(previous, status):
            seconds = summary.get("seconds")
            if isinstance(seconds, int | float):
                metrics.STAGE_SECONDS.labels(stage).observe(seconds)
            key_load = summary.get("key_load_s")
            if isinstance(key_load, int | float) and key_load > 0:
                metrics.STAGE_KEY_LOAD_SECONDS.labels(stage).observe(key_load)
