"""Numbered SQL migrations applied under an advisory lock.

Files are ``NNNN_description.sql``; each is applied in its own transaction and
recorded with its checksum, so a migration that was edited after it ran is caught.
Two processes migrating at once serialize on the advisory lock; the second finds
nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg

from ..errors import Fatal, SchemaTooNew
from .pool import DEFAULT_OPTIONS, ConnectOptions, connect

MIGRATION_LOCK_KEY = 0x46484543  # "FHEC"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise Fatal(f"migration file {path.name} is not named NNNN_description.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise Fatal(f"two migrations share a version number in {directory}")
    return migrations


def latest_version(directory: Path) -> int:
    migrations = load_migrations(directory)
    return migrations[-1].version if migrations else 0


async def migrate(
    database_url: str, directory: Path, options: ConnectOptions = DEFAULT_OPTIONS
) -> list[int]:
    """Apply what is missing; return the versions applied now (empty when up to date).

    A migration may rewrite a large table: its statements run without the usual
    command timeout."""
    migrations = load_migrations(directory)
    connection = await connect(database_url, replace(options, command_timeout_s=None))
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            return await _apply(connection, migrations)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await connection.close()


async def _apply(connection: asyncpg.Connection, migrations: list[Migration]) -> list[int]:
    await connection.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version INT PRIMARY KEY,
               name TEXT NOT NULL,
               checksum TEXT NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
    )
    applied = {
        row["version"]: row["checksum"]
        for row in await connection.fetch("SELECT version, checksum FROM schema_migrations")
    }
    known = {m.version: m for m in migrations}
    newest_code = max(known, default=0)
    newest_db = max(applied, default=0)
    if newest_db > newest_code:
        raise SchemaTooNew(
            f"the database is at schema version {newest_db} but this code knows only up to "
            f"{newest_code}; upgrade the code, never downgrade the schema"
        )
    for version, checksum in applied.items():
        if version in known and known[version].checksum != checksum:
            raise Fatal(
                f"migration {version:04d}_{known[version].name} changed after it was "
                "applied; add a new migration instead of editing an old one"
            )
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        done.append(migration.version)
    return done


@asynccontextmanager
async def scratch_database(
    server_url: str, directory: Path, prefix: str = "scratch"
) -> AsyncIterator[str]:
    """A new, migrated database on the server of ``server_url``, dropped on exit: what
    tests and benchmarks use so they never touch a database someone works in."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = server_url.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url, directory)
        yield url
    finally:
        admin = await connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
