"""Where a benchmark's CPU time goes, by process, read from /proc (Linux).

On two cores a burst of batches is CPU-bound, so its rate is set by the CPU seconds
each batch costs across every process of the stack: the control plane, the operator,
the node agent, PostgreSQL, S3 and the stage pods. ``snapshot()`` before and after a
measurement and ``usage()`` of the two give those seconds per component.

A process that exited between the snapshots (a stage pod, a PostgreSQL backend) is
counted through its parent's reaped-children time (``cutime``/``cstime``), which is why
every component has a ``children`` share beside its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# (component, a substring of the command line that names it), first match wins.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("stage pods", "fhe-job"),
    ("node agent", "devstack.node_agent"),
    ("operator", "fhe-operator"),
    ("kube-apiserver", "kube-apiserver"),
    ("kube-controller-manager", "kube-controller-manager"),
    ("kube-scheduler", "kube-scheduler"),
    ("etcd", "etcd"),
    ("postgres", "postgres"),
    ("s3 (minio)", "minio"),
    ("anvil", "anvil"),
)


@dataclass(frozen=True)
class Sample:
    component: str
    own_ticks: int
    children_ticks: int


def component_of(cmdline: str) -> str:
    for component, needle in COMPONENTS:
        if needle in cmdline:
            return component
    return "other"


def parse_stat(text: str) -> tuple[int, int]:
    """(own ticks, reaped children's ticks) from a /proc/PID/stat line.

    The command name (field 2) is in parentheses and may hold spaces, so fields are
    counted from the last ')'.
    """
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return utime + stime, cutime + cstime


def snapshot(proc: Path = Path("/proc")) -> dict[int, Sample]:
    samples: dict[int, Sample] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            own, children = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError):  # gone meanwhile, or a kernel thread's odd stat
            continue
        samples[int(entry.name)] = Sample(component_of(cmdline), own, children)
    return samples


def usage(before: dict[int, Sample], after: dict[int, Sample]) -> dict[str, dict[str, float]]:
    """CPU seconds per component between two snapshots: own and reaped children's."""
    totals: dict[str, dict[str, float]] = {}
    for pid, sample in after.items():
        start = before.get(pid)
        if start is not None and start.component != sample.component:
            start = None  # the pid was reused by another program
        own = sample.own_ticks - (start.own_ticks if start else 0)
        children = sample.children_ticks - (start.children_ticks if start else 0)
        if own == 0 and children == 0:
            continue
        entry = totals.setdefault(sample.component, {"own_s": 0.0, "children_s": 0.0})
        entry["own_s"] += own / TICKS_PER_S
        entry["children_s"] += children / TICKS_PER_S
    return {
        name: {key: round(value, 2) for key, value in entry.items()}
        for name, entry in sorted(totals.items(), key=lambda kv: -sum(kv[1].values()))
    }
