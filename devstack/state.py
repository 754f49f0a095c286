"""The dev stack's state file: which components run, on which ports, with which pids.

Written atomically (temp file + rename) so a crash mid-write never leaves a
half-written file that would make ``fhectl dev down`` forget its processes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StackState:
    directory: Path
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    @classmethod
    def load(cls, directory: Path) -> StackState:
        path = directory / "state.json"
        if not path.exists():
            return cls(directory)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            # A state file we cannot read cannot tell us what to stop; start afresh
            # but keep the evidence next to it.
            path.rename(path.with_suffix(".corrupt"))
            return cls(directory)
        return cls(directory, dict(data.get("components", {})))

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"components": self.components}, indent=2, sort_keys=True))
        os.replace(tmp, self.path)
