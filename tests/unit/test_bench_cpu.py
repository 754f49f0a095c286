"""bench/cpu.py: CPU seconds per stack component, from /proc snapshots."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from tests.paths import REPO_ROOT

_spec = importlib.util.spec_from_file_location("bench_cpu", REPO_ROOT / "bench" / "cpu.py")
assert _spec and _spec.loader
cpu = importlib.util.module_from_spec(_spec)
sys.modules["bench_cpu"] = cpu  # dataclasses look their module up there
_spec.loader.exec_module(cpu)


def stat_line(comm: str, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    return f"42 ({comm}) S 1 42 42 0 -1 4194560 10 0 0 0 {utime} {stime} {cutime} {cstime} 20 0"


def test_stat_fields_are_counted_after_a_command_name_with_spaces_and_parens() -> None:
    assert cpu.parse_stat(stat_line("a b) c", 5, 7, 11, 13)) == (12, 24)


def test_a_truncated_stat_line_is_an_error_not_a_zero() -> None:
    with pytest.raises((ValueError, IndexError)):
        cpu.parse_stat("42 (x) S 1 2")


@pytest.mark.parametrize(
    ("cmdline", "component"),
    [
        ("/v/.venv/bin/python /v/.venv/bin/fhe-job compute --batch 3", "stage pods"),
        ("python -m devstack.node_agent --node n1", "node agent"),
        ("/x/bin/kube-apiserver --etcd-servers http://127.0.0.1:1", "kube-apiserver"),
        ("/x/bin/etcd --name fhe-dev", "etcd"),
        ("postgres: fhe fhe 127.0.0.1 idle", "postgres"),
        ("/usr/bin/bash", "other"),
    ],
)
def test_processes_are_named_by_their_command_line(cmdline: str, component: str) -> None:
    assert cpu.component_of(cmdline) == component


def test_usage_subtracts_the_first_snapshot_and_counts_new_and_reused_pids_whole() -> None:
    ticks = cpu.TICKS_PER_S
    before = {
        1: cpu.Sample("node agent", 10 * ticks, 100 * ticks),
        2: cpu.Sample("operator", 5 * ticks, 0),
        3: cpu.Sample("postgres", 1 * ticks, 0),
    }
    after = {
        1: cpu.Sample("node agent", 12 * ticks, 130 * ticks),  # 30 s of reaped pods
        2: cpu.Sample("operator", 5 * ticks, 0),  # idle: left out
        3: cpu.Sample("stage pods", 4 * ticks, 0),  # pid reused by a new pod
        4: cpu.Sample("stage pods", 1 * ticks, 0),  # a pod still running
    }
    assert cpu.usage(before, after) == {
        "node agent": {"own_s": 2.0, "children_s": 30.0},
        "stage pods": {"own_s": 5.0, "children_s": 0.0},
    }


def test_a_real_snapshot_sees_this_process() -> None:
    mine = cpu.snapshot()[os.getpid()]
    assert mine.own_ticks >= 0 and mine.children_ticks >= 0
