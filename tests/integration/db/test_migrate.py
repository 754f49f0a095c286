import asyncio
import shutil
import uuid

import asyncpg
import pytest

from coprocessor.db import migrate
from coprocessor.errors import Fatal, SchemaTooNew
from coprocessor.settings import MIGRATIONS_DIR

MIGRATIONS = MIGRATIONS_DIR


@pytest.fixture
async def empty_database(dev_stack):
    server = dev_stack["FHE_DATABASE_URL"]
    name = f"empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + "/" + name
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_migrate_empty_then_rerun_is_a_no_op(empty_database):
    latest = migrate.latest_version(MIGRATIONS)
    assert await migrate.migrate(empty_database, MIGRATIONS) == list(range(1, latest + 1))
    assert await migrate.migrate(empty_database, MIGRATIONS) == []
    connection = await asyncpg.connect(empty_database)
    try:
        tables = {
            r["tablename"]
            for r in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        assert {
            "tenants",
            "computations",
            "ciphertexts",
            "ciphertext_digest",
            "pbs_computations",
            "allowed_handles",
            "verify_proofs",
            "blocks",
            "batches",
            "batch_computations",
            "schema_migrations",
        } <= tables
        assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == latest
    finally:
        await connection.close()


async def test_concurrent_migrations_apply_once(empty_database):
    results = await asyncio.gather(*(migrate.migrate(empty_database, MIGRATIONS) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, migrate.latest_version(MIGRATIONS)]


async def test_refuses_a_database_newer_than_the_code(empty_database):
    await migrate.migrate(empty_database, MIGRATIONS)
    connection = await asyncpg.connect(empty_database)
    await connection.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
    )
    await connection.close()
    with pytest.raises(SchemaTooNew, match="schema version 9999"):
        await migrate.migrate(empty_database, MIGRATIONS)


async def test_refuses_an_edited_migration(empty_database, tmp_path):
    await migrate.migrate(empty_database, MIGRATIONS)
    edited = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, edited)
    first = sorted(edited.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(Fatal, match="changed after it was applied"):
        await migrate.migrate(empty_database, edited)


@pytest.mark.parametrize("name", ["1_short.sql", "0002-dash.sql", "0003_Upper.sql"])
def test_badly_named_migration_is_refused(tmp_path, name):
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(Fatal, match=r"NNNN_description\.sql"):
        migrate.load_migrations(tmp_path)


async def test_failed_migration_leaves_nothing_half_applied(empty_database, tmp_path):
    broken = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, broken)
    (broken / "9000_broken.sql").write_text(
        "CREATE TABLE half_done (id INT);\nSELECT no_such_function();\n"
    )
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate.migrate(empty_database, broken)
    connection = await asyncpg.connect(empty_database)
    try:
        assert await connection.fetchval("SELECT to_regclass('half_done')") is None
        assert await connection.fetchval(
            "SELECT max(version) FROM schema_migrations"
        ) == migrate.latest_version(MIGRATIONS)
    finally:
        await connection.close()
