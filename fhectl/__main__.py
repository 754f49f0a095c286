"""The ``fhectl`` entry point: assembles the command groups and turns errors into one
line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from coprocessor.errors import EXIT_FATAL, CoprocessorError, UserError
from coprocessor.logs import configure_logging
from coprocessor.settings import load_settings

from . import batch, ciphertext, crd, db, fhe, inputs, tenant

GROUPS = (tenant, ciphertext, inputs, fhe, crd, batch, db)
PLUGIN_GROUP = "fhectl.commands"  # e.g. `dev`, registered by the dev stack when installed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhectl", description="Operate the FHE coprocessor and its local stack."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        plugin.load()(groups)
    for group in GROUPS:
        group.register(groups)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging("DEBUG" if args.verbose else settings.log_level, "text")
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UserError as error:
        print(f"fhectl: error: {error}", file=sys.stderr)
        return error.exit_code
    except CoprocessorError as error:
        print(f"fhectl: {type(error).__name__}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as error:  # e.g. permission denied on the state dir
        print(f"fhectl: error: {error}", file=sys.stderr)
        return EXIT_FATAL


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
