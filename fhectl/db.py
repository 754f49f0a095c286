"""``fhectl db``: the database schema."""

from __future__ import annotations

import argparse
import asyncio

from coprocessor.db import migrate
from coprocessor.db.pool import ConnectOptions
from coprocessor.settings import load_settings

from .output import OUTPUT, emit


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    applied = asyncio.run(
        migrate.migrate(settings.database_url, settings.migrations_dir, ConnectOptions.of(settings))
    )
    emit(
        {"applied": applied, "version": migrate.latest_version(settings.migrations_dir)},
        args.output,
    )
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    db = groups.add_parser("db", help="database schema")
    commands = db.add_subparsers(dest="command", required=True, metavar="ACTION")
    commands.add_parser(
        "migrate", parents=[OUTPUT], help="apply migrations under an advisory lock"
    ).set_defaults(handler=cmd_migrate)
