"""How commands print: ``-o/--output text|json``, defined once for every command."""

from __future__ import annotations

import argparse
import json
from typing import Any

OUTPUT = argparse.ArgumentParser(add_help=False)
OUTPUT.add_argument(
    "-o",
    "--output",
    choices=["text", "json"],
    default="text",
    help="text for people (default) or json for scripts",
)


def emit(data: Any, output: str) -> None:
    """JSON as one sorted document, or ``key: value`` lines for a person."""
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif isinstance(data, dict):
        for key, value in data.items():
            print(f"{key}: {json.dumps(value, default=str) if isinstance(value, dict) else value}")
    else:
        print(data)
