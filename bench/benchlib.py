"""What every benchmark does around its measurement: reuse the developer's running
stack (or start a throw-away one and stop it after), and write its JSON result."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack import stack
from devstack.component import Component
from devstack.settings import default_state_dir
from devstack.versions import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


@contextmanager
def dev_services(components: list[Component] | None = None) -> Iterator[dict[str, str]]:
    """The FHE_* environment of a healthy stack of ``components`` (default: the data
    services), started for the duration when none runs."""
    components = components or stack.service_components()
    with tempfile.TemporaryDirectory(prefix="fhe-bench-") as fallback:
        state_dir, started = stack.reuse_or_start(default_state_dir(), Path(fallback), components)
        try:
            yield stack.env(state_dir, components)
        finally:
            if started:
                stack.down(state_dir, components)


def write_result(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
