import asyncpg
import pytest

from coprocessor.db import queries
from coprocessor.db.rows import ComputationRow
from coprocessor.errors import InvalidRow
from coprocessor.types import FheType, Op

from .helpers import add, admission, handle, store_inputs, tenant


async def test_tenant_creation_is_idempotent(db):
    async with db.acquire() as connection:
        first = await queries.create_tenant(connection, "acme", 12345, b"k", "reference")
        second = await queries.create_tenant(connection, "acme", 999, b"other", "tfhe-rs")
        assert first == second
        assert await queries.get_tenant(connection, "nobody") is None


async def test_tenant_name_is_checked_by_the_schema(db):
    async with db.acquire() as connection:
        with pytest.raises(asyncpg.CheckViolationError):
            await queries.create_tenant(connection, "Not A Name", 1, b"k", "reference")


async def test_admission_is_one_transaction_and_a_second_is_a_no_op(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        batch = admission(tenant_id, [add(10, 1, 2), add(11, 10, 3)])
        assert await queries.admit_batch(connection, batch) is True
        assert await queries.admit_batch(connection, batch) is False
        assert await connection.fetchval("SELECT count(*) FROM computations") == 2
        assert await connection.fetchval("SELECT count(*) FROM batch_computations") == 2
        progress = await queries.batch_progress(connection, batch.batch_id)
        assert (progress.total, progress.completed, progress.failed) == (2, 0, 0)


async def test_a_computation_shared_by_two_batches_is_stored_once(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        await queries.admit_batch(connection, admission(tenant_id, [add(10, 1, 2)], "a"))
        await queries.admit_batch(
            connection, admission(tenant_id, [add(10, 1, 2), add(11, 10, 1)], "b")
        )
        assert await connection.fetchval("SELECT count(*) FROM computations") == 2
        assert (await queries.batch_progress(connection, "fhe/b@h1")).total == 2


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [add(10, 1, 2), ComputationRow(b"\x01" * 31, 5, 0, (handle(1), handle(2)))],
            "not 32 bytes",
        ),
        (
            [add(10, 1, 2), ComputationRow(handle(11), 5, 42, (handle(1), handle(2)))],
            "unknown op code 42",
        ),
        ([add(10, 11, 1), add(11, 10, 1)], "dependency cycle"),
        (
            [add(10, 1, 2), ComputationRow(handle(11), 12, 0, (handle(1), handle(2)))],
            "type code 12",
        ),
    ],
)
async def test_bad_rows_rejected_and_nothing_written(db, rows, message):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        with pytest.raises(InvalidRow, match=message):
            await queries.admit_batch(connection, admission(tenant_id, rows))
        assert await connection.fetchval("SELECT count(*) FROM computations") == 0
        assert await connection.fetchval("SELECT count(*) FROM batches") == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("output_handle", b"\x01" * 31),
        ("fhe_operation", 22),
        ("fhe_operation", 31),
        ("output_type", 12),
        ("output_type", -1),
    ],
)
async def test_schema_checks_catch_rows_that_bypass_python(db, column, value):
    row = {"output_handle": handle(10), "fhe_operation": 0, "output_type": 5}
    row[column] = value
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(
                """INSERT INTO computations (tenant_id, output_handle, output_type,
                       fhe_operation, dependencies, schedule_order)
                   VALUES ($1, $2, $3, $4, $5, 1)""",
                tenant_id,
                row["output_handle"],
                row["output_type"],
                row["fhe_operation"],
                [handle(1)],
            )


async def test_irrecoverable_error_fails_dependents_and_spares_the_rest(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        batch = admission(
            tenant_id, [add(10, 1, 2), add(11, 10, 1), add(12, 11, 10), add(20, 1, 2)]
        )
        await queries.admit_batch(connection, batch)
        failed = await queries.mark_error(connection, tenant_id, handle(10), "bad ciphertext")
        assert sorted(failed) == [handle(11), handle(12)]
        messages = dict(
            await connection.fetch(
                "SELECT output_handle, error_message FROM computations WHERE is_error"
            )
        )
        assert messages[handle(10)] == "bad ciphertext"
        assert messages[handle(12)].endswith("failed: bad ciphertext")
        progress = await queries.batch_progress(connection, batch.batch_id)
        assert (progress.completed, progress.failed, progress.pending) == (0, 3, 1)
        states = {
            c.output_handle: c.is_error
            for c in await queries.batch_computations(connection, batch.batch_id)
        }
        assert states[handle(20)] is False


async def test_ciphertexts_are_stored_once(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        assert await queries.insert_ciphertext(connection, tenant_id, handle(1), b"a", 0, 5)
        assert not await queries.insert_ciphertext(connection, tenant_id, handle(1), b"b", 0, 5)
        stored = await queries.get_ciphertexts(connection, tenant_id, [handle(1), handle(2)])
        assert list(stored) == [handle(1)] and stored[handle(1)].ciphertext == b"a"
        await store_inputs(connection, tenant_id, [2, 3])
        assert (
            len(await queries.get_ciphertexts(connection, tenant_id, [handle(2), handle(3)])) == 2
        )


async def test_release_batch_keeps_results(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        batch = admission(tenant_id, [add(10, 1, 2)])
        await queries.admit_batch(connection, batch)
        async with connection.transaction():
            assert await queries.lock_computation(connection, tenant_id, handle(10))
            await queries.complete_computation(connection, tenant_id, handle(10), b"r", 0, 5)
        assert await queries.release_batch(connection, batch.batch_id) is True
        assert await queries.release_batch(connection, batch.batch_id) is False
        assert (await queries.batch_progress(connection, batch.batch_id)).completed == 1


async def test_unknown_channel_is_refused(db):
    async with db.acquire() as connection:
        with pytest.raises(ValueError, match="unknown channel"):
            await queries.notify(connection, "work-avialable")
    assert Op.Add == 0 and FheType.Uint64 == 5
