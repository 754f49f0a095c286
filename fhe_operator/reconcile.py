"""The FheBatch phase machine, as pure functions: what is observed -> what to do.

The controller gathers an ``Observed`` (the resource, its Jobs and pods, the database
counts, the capacity decision) and applies the ``Plan`` this module returns: admit,
create Jobs, post Events, write status. Nothing here remembers anything between
calls; status is recomputed from the world every time, so a lost event or an
operator restart converges (docs/design.md section 10).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

from coprocessor.api.batch import FheBatchSpec
from coprocessor.api.stages import pod_group
from coprocessor.api.summary import STATUS_KEYS

PHASE_OF_STAGE = {"compute": "Computing", "sns": "Squashing", "send": "Sending"}
RUNNING_PHASES = tuple(PHASE_OF_STAGE.values())  # a stage's Job runs
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class JobView:
    """What the controller read about one stage's Job and its pods."""

    name: str
    active: int = 0
    succeeded: bool = False
    failed: bool = False
    failure_message: str | None = None
    attempts: int = 1
    started_at: str | None = None
    finished_at: str | None = None
    summary: dict[str, Any] | None = None  # the last pod's termination message (JSON)
    waiting: str | None = None  # why a pod is not running (unschedulable, ...)
    group: tuple[str, ...] = ()  # the stages its pod runs, when more than one


def stage_views(view: JobView, group: tuple[str, ...]) -> dict[str, JobView]:
    """What a Job of consecutive stages says about each of them.

    Its pod's termination message holds one summary per stage it ran, under ``stages``,
    and the stage it ended in under ``stage`` (coprocessor.api.summary). Finished: every
    stage succeeded, each with its own summary. Failed: the stages before the one it
    ended in succeeded, that one failed, the later ones never started (absent). Running:
    all of them run (the planner tells compute's end from the database)."""
    if len(group) < 2:
        return {group[0]: view}
    summary = view.summary or {}
    per_stage = summary.get("stages") if isinstance(summary.get("stages"), dict) else {}
    shared = replace(view, group=group, summary=None)
    if not (view.succeeded or view.failed):
        return {stage: shared for stage in group}
    ended = summary.get("stage") if summary.get("stage") in group else group[0]
    views: dict[str, JobView] = {}
    for stage in group:
        own = per_stage.get(stage) if isinstance(per_stage.get(stage), dict) else None
        if view.succeeded or stage != ended:
            views[stage] = replace(shared, succeeded=True, failed=False, summary=own)
        else:
            error = summary.get("error")
            if error and not (own or {}).get("error"):
                own = {**(own or {}), "error": error}
            views[stage] = replace(shared, summary=own)
            break
    return views


@dataclass(frozen=True)
class Progress:
    total: int
    completed: int
    failed: int


@dataclass(frozen=True)
class Observed:
    generation: int
    created_at: dt.datetime
    now: dt.datetime
    spec: FheBatchSpec | None
    spec_error: str | None = None
    batch_id: str | None = None
    admitted: bool = False
    progress: Progress | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, JobView] = field(default_factory=dict)
    device: str = "cpu"
    may_start: bool = True
    wait_reason: str | None = None
    previous: dict[str, Any] = field(default_factory=dict)  # status on the resource now
    cost: int | None = None  # estimated PBS of its computations (coprocessor/costs.py)
    fuse: bool = False  # one pod runs consecutive stages (FHE_JOB_FUSE_STAGES)


@dataclass
class Plan:
    status: dict[str, Any]
    admit: bool = False
    create_jobs: list[tuple[str, ...]] = field(default_factory=list)  # stages per Job
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, msg

    @property
    def phase(self) -> str:
        return self.status["phase"]


def stage_state(job: JobView | None) -> str:
    if job is None:
        return "Pending"
    if job.failed:
        return "Failed"
    if job.succeeded:
        return "Succeeded"
    return "Running"


def owned_by_batch(owner_references: list[tuple[str, str]], batch_uids: set[str]) -> bool:
    """Whether a Job is one of ours: owned (kind, uid) by an FheBatch that exists."""
    return any(kind == "FheBatch" and uid in batch_uids for kind, uid in owner_references)


def is_settled(generation: int, status: dict[str, Any]) -> bool:
    """Terminal is terminal: a batch that finished (Succeeded or Failed) for the spec it
    has now is never reconciled again. Its phase, outputs and stage results live in its
    status, so losing its Jobs to their TTL, an operator restart, another operator or a
    database without its tenant changes nothing. Editing the spec (a new generation)
    asks for a new computation and is reconciled as one."""
    return status.get("phase") in TERMINAL and status.get("observedGeneration") == generation


def plan(observed: Observed) -> Plan:
    phase, message, admit, create = _decide(observed)
    status = _status(observed, phase, message)
    result = Plan(status, admit=admit, create_jobs=create)
    before = observed.previous.get("phase")
    if phase != before or (phase == "Failed" and message != observed.previous.get("message")):
        kind = "Warning" if phase == "Failed" else "Normal"
        result.events.append((kind, phase, message))
    for group in create:
        plural = "s" if len(group) > 1 else ""
        result.events.append(
            ("Normal", "JobCreated", f"created Job for stage{plural} {', '.join(group)}")
        )
    return result


def _computed(o: Observed) -> bool:
    """Every computation of the batch is done, as the database counts them."""
    return o.progress is not None and o.progress.completed == o.progress.total


def _moved_on(o: Observed, stage: str, job: JobView, later: list[str]) -> bool:
    """Whether a running pod of several stages is past ``stage``: compute, once the
    database counts every computation done, and only towards a stage the batch still
    lists (a spec edited down to compute alone is not done while its pod runs)."""
    return stage == "compute" and _computed(o) and any(s in job.group for s in later)


def _decide(o: Observed) -> tuple[str, str, bool, list[tuple[str, ...]]]:
    """(phase, message, admit?, the Jobs to create, as the stages each runs)."""
    if o.spec is None or o.spec_error:
        return "Failed", o.spec_error or "invalid spec", False, []
    if not o.admitted:
        return "Pending", "admitting the graph into the database", True, []
    spec = o.spec
    for position, stage in enumerate(spec.stages):
        job = o.jobs.get(stage)
        state = stage_state(job)
        if state == "Succeeded":
            continue
        if state == "Failed":
            assert job is not None
            return "Failed", f"stage {stage} failed: {_failure(job)}", False, []
        if state == "Running":
            assert job is not None
            if _moved_on(o, stage, job, spec.stages[position + 1 :]):
                continue  # its pod has gone on to the next stage
            return PHASE_OF_STAGE[stage], _running_message(o, stage, job), False, []
        # No Job yet for this stage: every earlier one succeeded.
        elapsed = (o.now - o.created_at).total_seconds()
        if elapsed >= spec.deadline_seconds:
            return (
                "Failed",
                f"deadline of {spec.deadline_seconds}s passed before stage {stage} started",
                False,
                [],
            )
        if spec.suspend:
            return "Suspended", f"suspended before stage {stage}; {_done(o)}", False, []
        if stage == "compute" and not o.may_start:
            return "Admitted", o.wait_reason or "waiting for capacity", False, []
        group = pod_group(spec.stages, stage, fuse=o.fuse, parallelism=spec.parallelism)
        return PHASE_OF_STAGE[stage], f"starting stage {stage}", False, [group]
    return ("Succeeded", f"all stages done; {_done(o)}{_published(o)}{_committed(o)}", False, [])


def _done(o: Observed) -> str:
    if o.progress is None:
        return "no computations"
    p = o.progress
    failed = f", {p.failed} failed" if p.failed else ""
    return f"{p.completed}/{p.total} computed{failed}"


def _published(o: Observed) -> str:
    sns = o.jobs.get("sns")
    if sns is None or not sns.summary:
        return ""
    return f"; {sns.summary.get('completed', 0)}/{sns.summary.get('total', 0)} outputs published"


def _committed(o: Observed) -> str:
    send = o.jobs.get("send")
    if send is None or not send.summary:
        return ""
    summary = send.summary
    return (
        f"; {summary.get('completed', 0)}/{summary.get('total', 0)} sent to the gateway in "
        f"{summary.get('transactions', 0)} transaction(s)"
    )


def _failure(job: JobView) -> str:
    if job.summary and job.summary.get("error"):
        return str(job.summary["error"])
    return job.failure_message or "the Job failed"


def _running_message(o: Observed, stage: str, job: JobView) -> str:
    if job.waiting:
        return f"stage {stage}: {job.waiting}"
    suffix = "; suspended: no new Jobs will start" if o.spec and o.spec.suspend else ""
    if stage == "compute":
        return f"computing: {_done(o)}{suffix}"
    if stage == "sns":
        return f"squashing and uploading the outputs{suffix}"
    if stage == "send":
        return f"committing the outputs' digests to the gateway chain{suffix}"
    return f"stage {stage} running{suffix}"


def _status(o: Observed, phase: str, message: str) -> dict[str, Any]:
    progress = o.progress or Progress(0, 0, 0)
    stages: dict[str, Any] = {}
    for stage in o.spec.stages if o.spec else []:
        job = o.jobs.get(stage)
        state = stage_state(job)
        if state == "Running" and job and stage == "compute" and len(job.group) > 1:
            state = "Succeeded" if _computed(o) else state  # its pod went on to SNS
        entry: dict[str, Any] = {"state": state}
        if job is not None:
            entry.update({"job": job.name, "attempts": job.attempts})
            if job.started_at:
                entry["startedAt"] = job.started_at
            if job.finished_at:
                entry["finishedAt"] = job.finished_at
            if job.summary:
                entry["summary"] = {k: v for k, v in job.summary.items() if k in STATUS_KEYS}
        stages[stage] = entry
    status: dict[str, Any] = {
        "phase": phase,
        "message": message[:1000],
        "observedGeneration": o.generation,
        "computations": {
            "total": progress.total,
            "completed": progress.completed,
            "failed": progress.failed,
        },
        "done": f"{progress.completed}/{progress.total}",
        "device": o.device,
        "stages": stages,
        "outputs": dict(o.outputs) if phase == "Succeeded" else {},
        "conditions": _conditions(o, phase, message),
    }
    if o.batch_id:
        status["batchId"] = o.batch_id
    if o.cost is not None:
        status["cost"] = o.cost
    return status


def _conditions(o: Observed, phase: str, message: str) -> list[dict[str, str]]:
    now = o.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = {c.get("type"): c for c in o.previous.get("conditions") or []}
    wanted = {
        "Ready": ("True" if phase == "Succeeded" else "False", phase),
        "Failed": ("True" if phase == "Failed" else "False", phase),
        "Progressing": ("False" if phase in (*TERMINAL, "Suspended") else "True", phase),
    }
    conditions = []
    for kind, (value, reason) in wanted.items():
        old = previous.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == value else None
        conditions.append(
            {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message[:300],
                "lastTransitionTime": since or now,
            }
        )
    return conditions


# --- capacity ----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEntry:
    name: str  # namespace/name
    priority: int
    created_at: dt.datetime


def capacity_decision(
    me: QueueEntry, waiting: list[QueueEntry], running: int, limit: int | None, device: str
) -> tuple[bool, str | None]:
    """May ``me`` start its compute Job now? Higher priority first, then older.

    ``waiting`` are the batches of this device class that want to start (``me``
    included); ``running`` those whose compute Job is active.
    """
    if limit is None:
        return True, None
    free = limit - running
    order = sorted(
        {e.name: e for e in [*waiting, me]}.values(),
        key=lambda e: (-e.priority, e.created_at, e.name),
    )
    position = [e.name for e in order].index(me.name)
    if position < free:
        return True, None
    ahead = position - max(free, 0)
    return False, (
        f"waiting for capacity: {running} of {limit} {device} batches running"
        + (f", {ahead} waiting ahead" if ahead else "")
    )


def budget_decision(
    my_cost: int, running: list[Any], budget: int, namespace: str
) -> tuple[bool, str | None]:
    """May a batch of ``my_cost`` start while batches of ``running`` costs compute in
    its namespace? A running batch whose cost is unknown (an older operator wrote its
    status) counts as the whole budget: unknown is not free. A batch alone may always
    start (it passed the per-batch limit), or a budget below it would block it forever."""
    used = sum(c if isinstance(c, int) and c >= 0 else budget for c in running)
    if not running or used + my_cost <= budget:
        return True, None
    return False, (
        f"waiting for the namespace budget: {used:,} of {budget:,} PBS running in "
        f"{namespace!r}, this batch needs {my_cost:,} (FHE_NAMESPACE_MAX_RUNNING_COST)"
    )
