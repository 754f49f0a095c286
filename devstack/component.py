"""What every dev-stack component (postgres, s3, chain, kube...) provides.

A component is started once per state directory; ``up`` must be idempotent (a second
call while it runs changes nothing), ``down`` stops only what ``up`` recorded, and
``health`` answers quickly without side effects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

Info = dict[str, Any]


class Component(Protocol):
    name: str

    def up(self, state_dir: Path, previous: Info | None) -> Info:
        """Start (or adopt the already running) service; return what ``down``/``env`` need."""

    def down(self, info: Info) -> None:
        """Stop the processes recorded in ``info``; nothing else."""

    def health(self, info: Info) -> Info:
        """``{"healthy": bool, ...details}``; never raises for a dead service."""

    def env(self, info: Info) -> dict[str, str]:
        """``FHE_*`` (and other) variables that point clients at this service."""
