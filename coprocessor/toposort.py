"""Kahn's algorithm, once: rows, job-runner graphs and FheBatch graphs all order by it."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def topological_order(needs: Mapping[K, Iterable[K]]) -> tuple[list[K], list[K]]:
    """(keys in dependency order, keys left on or behind a cycle).

    ``needs[k]`` are the keys ``k`` waits for; keys outside the mapping are ignored
    (inputs from elsewhere). Ties keep the mapping's order, so results are stable.
    """
    waiting = {key: {d for d in deps if d in needs} for key, deps in needs.items()}
    dependents: dict[K, list[K]] = {key: [] for key in needs}
    for key, deps in waiting.items():
        for dependency in deps:
            dependents[dependency].append(key)
    ready = [key for key, deps in waiting.items() if not deps]
    ordered: list[K] = []
    while ready:
        key = ready.pop(0)
        ordered.append(key)
        for dependent in dependents[key]:
            waiting[dependent].discard(key)
            if not waiting[dependent]:
                ready.append(dependent)
    stuck = [key for key, deps in waiting.items() if deps]
    return ordered, stuck
