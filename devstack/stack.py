"""``fhectl dev up | down | status | env``: the components in start order, one state file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .chain import Anvil
from .component import Component
from .kube import KubeControlPlane
from .postgres import Postgres
from .s3 import MinioS3
from .state import StackState

log = logging.getLogger(__name__)


def default_components(ports: dict[str, int | None] | None = None) -> list[Component]:
    """Start order matters: later components may need earlier ones."""
    ports = ports or {}
    return [
        Postgres(ports.get("postgres")),
        MinioS3(ports.get("s3")),
        Anvil(ports.get("chain")),
        KubeControlPlane(),
    ]


def service_components() -> list[Component]:
    """The data services alone: what integration tests need."""
    return [c for c in default_components() if c.name != "kube"]


def select(components: list[Component], skip: set[str]) -> list[Component]:
    known = {c.name for c in components}
    unknown = skip - known
    if unknown:
        from coprocessor.errors import UserError

        raise UserError(f"unknown component(s) {sorted(unknown)}; known: {sorted(known)}")
    return [c for c in components if c.name not in skip]


def up(state_dir: Path, components: list[Component]) -> dict[str, Any]:
    """Start what is not running; adopt what is. Saves state after each component so a
    failure half-way still lets ``down`` stop what did start."""
    state = StackState.load(state_dir)
    report: dict[str, Any] = {}
    for component in components:
        started = time.monotonic()
        previous = state.components.get(component.name)
        info = component.up(state_dir, previous)
        state.components[component.name] = info
        state.save()
        seconds = round(time.monotonic() - started, 2)
        reused = previous is not None and info == previous
        report[component.name] = {"reused": reused, "seconds": seconds}
        log.info(
            "component up",
            extra={"fields": {"component": component.name, "reused": reused, "seconds": seconds}},
        )
    return report


def down(state_dir: Path, components: list[Component]) -> list[str]:
    """Stop in reverse start order; forget each component once it is stopped."""
    state = StackState.load(state_dir)
    stopped = []
    for component in reversed(components):
        info = state.components.get(component.name)
        if info is None:
            continue
        component.down(info)
        del state.components[component.name]
        state.save()
        stopped.append(component.name)
    return stopped


def status(state_dir: Path, components: list[Component]) -> dict[str, Any]:
    state = StackState.load(state_dir)
    report: dict[str, Any] = {}
    for component in components:
        info = state.components.get(component.name)
        report[component.name] = (
            component.health(info) if info else {"healthy": False, "reason": "not started"}
        )
    return report


def env(state_dir: Path, components: list[Component]) -> dict[str, str]:
    state = StackState.load(state_dir)
    variables: dict[str, str] = {"FHE_STATE_DIR": str(state_dir)}
    for component in components:
        info = state.components.get(component.name)
        if info:
            variables.update(component.env(info))
    return variables


def reuse_or_start(
    own_dir: Path, fallback_dir: Path, components: list[Component]
) -> tuple[Path, bool]:
    """For tests and benchmarks: use the stack in ``own_dir`` if it is fully healthy,
    else start one in ``fallback_dir``. Returns (state dir, whether we started it)."""
    report = status(own_dir, components)
    if all(entry["healthy"] for entry in report.values()):
        return own_dir, False
    up(fallback_dir, components)
    return fallback_dir, True
