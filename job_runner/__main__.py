"""``fhe-job STAGE --batch ID``: the entry point of every stage pod.

Exit codes follow coprocessor.errors: 0 done, 3 irrecoverable (the Job's
podFailurePolicy fails the Job at once), 75 recoverable (retried), 1 fatal.
"""

from __future__ import annotations

import argparse
import sys

from coprocessor.errors import EXIT_IRRECOVERABLE

STAGES = ("compute", "sns", "send", "verify")
AVAILABLE: dict[str, object] = {}  # stage name -> runner; filled as stages are built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-job", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--batch", required=True, help="batch id (namespace/name@spec-hash)")
    args = parser.parse_args(argv)
    if args.stage not in AVAILABLE:
        print(f"fhe-job: error: stage {args.stage!r} is not available in this release",
              file=sys.stderr)
        sys.exit(EXIT_IRRECOVERABLE)
