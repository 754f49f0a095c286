"""``fhe-operator``: the kopf operator that reconciles FheBatch resources into Jobs."""

from __future__ import annotations

import argparse
import sys

from coprocessor.errors import EXIT_IRRECOVERABLE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-operator", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print("fhe-operator: error: the operator is not available in this release", file=sys.stderr)
    sys.exit(EXIT_IRRECOVERABLE)
