"""``fhe-listener host|gateway|sender``: long-running chain listeners."""

from __future__ import annotations

import argparse
import sys

from coprocessor.errors import EXIT_IRRECOVERABLE

LISTENERS = ("host", "gateway", "sender")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-listener", description=__doc__.splitlines()[0])
    parser.add_argument("listener", choices=LISTENERS)
    args = parser.parse_args(argv)
    print(f"fhe-listener: error: listener {args.listener!r} is not available in this release",
          file=sys.stderr)
    sys.exit(EXIT_IRRECOVERABLE)
