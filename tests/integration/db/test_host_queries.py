"""The host listener's queries on a real PostgreSQL: blocks once, reorgs, revivals."""

from dataclasses import replace

from coprocessor.db import host
from coprocessor.db.rows import ComputationRow
from coprocessor.types import FheType, Op

from .helpers import add, handle, tenant

CHAIN = 12345
A, B = b"\xaa" * 32, b"\xbb" * 32
TX1, TX2 = b"\x01" * 32, b"\x02" * 32


def block(tenant_id: int, block_hash: bytes, rows=(), transactions=()) -> host.BlockRecord:
    return host.BlockRecord(
        CHAIN,
        7,
        block_hash,
        b"\x00" * 32,
        tenant_id,
        tuple(rows),
        (),
        tuple(transactions),
        "host-7" if rows else None,
    )


async def record(db, record_: host.BlockRecord) -> bool:
    async with db.acquire() as connection, connection.transaction():
        return await host.record_block(connection, record_)


async def orphan(db, tenant_id: int) -> None:
    async with db.acquire() as connection, connection.transaction():
        await host.orphan_above(connection, CHAIN, tenant_id, 6)


async def state(db, out: bytes):
    return await db.fetchrow(
        "SELECT is_error, error_message FROM computations WHERE output_handle = $1", out
    )


async def test_a_block_is_written_once(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
    row = replace(add(10, 1, 2), transaction_id=TX1)
    assert await record(db, block(tenant_id, A, [row], [TX1])) is True
    assert await record(db, block(tenant_id, A, [row], [TX1])) is False
    assert await db.fetchval("SELECT count(*) FROM blocks") == 1
    assert await db.fetchval("SELECT count(*) FROM transaction_computations") == 1


async def test_a_reorg_back_to_an_orphaned_block_revives_it(db):
    """A -> B -> A: the block row, its computations and a fresh batch name come back."""
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
    row = replace(add(10, 1, 2), transaction_id=TX1)
    await record(db, block(tenant_id, A, [row], [TX1]))
    await orphan(db, tenant_id)
    assert (await state(db, handle(10)))["error_message"] == host.ORPHANED
    await db.execute(
        "INSERT INTO pbs_computations (tenant_id, handle, is_error, "
        "error_message) VALUES ($1, $2, true, $3)",
        tenant_id,
        handle(10),
        f"its computation failed: {host.ORPHANED}",
    )
    assert await record(db, block(tenant_id, B)) is True  # the other branch
    await orphan(db, tenant_id)
    assert await record(db, block(tenant_id, A, [row], [TX1])) is True
    revived = await db.fetchrow(
        "SELECT is_orphaned, batch_name, batch_cancelled_at FROM blocks WHERE block_hash = $1", A
    )
    assert (revived["is_orphaned"], revived["batch_name"]) == (False, "host-7-r")
    assert revived["batch_cancelled_at"] is None
    assert (await state(db, handle(10)))["is_error"] is False
    assert await db.fetchval("SELECT is_error FROM pbs_computations") is False


async def test_a_computation_another_canonical_transaction_emitted_is_not_orphaned(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
    shared = ComputationRow(
        handle(20), int(FheType.Uint64), int(Op.TrivialEncrypt), (b"\x07",), is_scalar=True
    )
    await record(
        db, replace(block(tenant_id, B, [replace(shared, transaction_id=TX2)], [TX2]), number=6)
    )
    await record(db, block(tenant_id, A, [replace(shared, transaction_id=TX1)], [TX1]))
    await orphan(db, tenant_id)  # orphans A (height 7); B (height 6) stays canonical
    assert (await state(db, handle(20)))["is_error"] is False
