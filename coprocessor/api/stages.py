"""The stages a coprocessor runs, which of them an FheBatch may list, and which of them
share a pod.

``fhe-job`` runs each of them in a pod; the operator validates a batch's stages against
``BATCH_STAGES``. ``verify`` is a stage of ``fhe-job`` but not of a batch: it drains the
verify_proofs queue (input lists waiting for their proof), whoever queued them.

A pod may run several consecutive stages of one batch (``fhe-job compute,sns,send``):
every pod start, key load and Job hand-over between stages is seconds the transfer
waits, against a few seconds of FHE work (issue #26). The operator fuses them unless
told not to (``FHE_JOB_FUSE_STAGES=false``: the gateway keys then stay off the compute
nodes) or the compute stage is spread over several pods.
"""

from __future__ import annotations

from collections.abc import Sequence

BATCH_STAGES = ("compute", "sns", "send")
JOB_STAGES = (*BATCH_STAGES, "verify")

# How a group of stages is written on fhe-job's command line and in a Job's label (a
# label value allows neither commas nor '+').
COMMAND_SEPARATOR = ","
LABEL_SEPARATOR = "."


def pod_group(
    stages: Sequence[str], first: str, *, fuse: bool, parallelism: int
) -> tuple[str, ...]:
    """The stages one pod runs, starting with ``first``: ``first`` alone, or with fusing
    ``first`` and every later stage of the batch. A compute stage spread over several
    pods runs alone (each pod has a share of the graph; SNS and send are per batch)."""
    start = list(stages).index(first)
    if not fuse or (first == "compute" and parallelism > 1):
        return (first,)
    return tuple(stages[start:])


def parse_group(text: str) -> tuple[str, ...]:
    """``compute``, ``compute,sns,send``... as fhe-job takes it: ValueError unless the
    stages are known, distinct and in the order a batch runs them (verify only alone)."""
    group = tuple(part.strip() for part in text.split(COMMAND_SEPARATOR))
    if group == ("verify",):
        return group
    unknown = [s for s in group if s not in BATCH_STAGES]
    if unknown:
        raise ValueError(
            f"unknown stage {unknown[0]!r} in {text!r}: stages are {', '.join(JOB_STAGES)} "
            f"(verify runs alone)"
        )
    order = [BATCH_STAGES.index(s) for s in group]
    if order != sorted(set(order)):
        raise ValueError(
            f"stages {text!r} must be distinct and in the order {', '.join(BATCH_STAGES)}"
        )
    return group


def group_label(group: Sequence[str]) -> str:
    return LABEL_SEPARATOR.join(group)


def group_of_label(value: str | None, stage: str) -> tuple[str, ...]:
    """A Job's stages from its labels: the group label when it has one and it is valid
    and begins with the stage label, else the stage alone (a Job from before fusing, or
    one whose labels were edited)."""
    if value:
        try:
            group = parse_group(value.replace(LABEL_SEPARATOR, COMMAND_SEPARATOR))
        except ValueError:
            return (stage,)
        if group and group[0] == stage:
            return group
    return (stage,)
