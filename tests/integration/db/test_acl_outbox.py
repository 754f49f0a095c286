"""The MultichainACL outbox (``gateway_acl_calls``) on a real PostgreSQL: what the host
listener's blocks owe the gateway, once per call, and the rows migration 0006 made from
events stored before it (the same ``call_key`` the product computes)."""

from __future__ import annotations

import shutil
import uuid

import asyncpg
import pytest

from coprocessor.db import acl, host, migrate
from coprocessor.db.acl import AclCall
from coprocessor.db.host import AllowedHandle, Delegation
from coprocessor.settings import MIGRATIONS_DIR

from .helpers import CHAIN_ID, handle, tenant

ALICE, BOB, TOKEN = bytes([0xA1]) * 20, bytes([0xB0]) * 20, bytes([0x70]) * 20
TX = bytes([0x11]) * 32


def block(number: int, tenant_id: int, allowed=(), delegations=()) -> host.BlockRecord:
    return host.BlockRecord(
        CHAIN_ID,
        number,
        number.to_bytes(32, "big"),
        (number - 1).to_bytes(32, "big"),
        tenant_id,
        (),
        tuple(allowed),
        (),
        None,
        delegations=tuple(delegations),
    )


EVENTS = (
    AllowedHandle(handle(1), ALICE, 0, TX),  # Allowed(alice)
    AllowedHandle(handle(1), BOB, 0, TX),  # Allowed(bob): a call of its own
    AllowedHandle(handle(2), TOKEN, 1, TX),  # AllowedForDecryption
)
DELEGATIONS = (
    Delegation(ALICE, BOB, TOKEN, 1, 0, 2_000_000_000, TX),
    Delegation(ALICE, BOB, TOKEN, 2, 2_000_000_000, None, TX),  # revoked
)


async def test_a_block_owes_one_call_per_acl_event_and_a_replay_adds_none(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        async with connection.transaction():
            await host.record_block(connection, block(7, tenant_id, EVENTS, DELEGATIONS))
        # Another block repeating the same events (another transaction allowing the same
        # handle to the same account): the gateway hears each call once.
        async with connection.transaction():
            await host.record_block(connection, block(8, tenant_id, EVENTS[:1]))
        rows = await acl.unsent(connection, 100, max_retries=5)
    calls = {(r.call.kind, r.call.handle, r.call.account_address) for r in rows}
    assert calls == {
        ("allow_account", handle(1), ALICE),
        ("allow_account", handle(1), BOB),
        ("allow_public_decrypt", handle(2), None),
        ("delegate", None, None),
        ("revoke", None, None),
    }
    delegate = next(r.call for r in rows if r.call.kind == "delegate")
    revoke = next(r.call for r in rows if r.call.kind == "revoke")
    assert (delegate.chain_id, delegate.delegation_counter, delegate.expiration_date) == (
        CHAIN_ID,
        1,
        2_000_000_000,
    )
    # A revocation names the expiration it ends, as Zama's MultichainACL expects.
    assert (revoke.delegation_counter, revoke.expiration_date) == (2, 2_000_000_000)
    assert all(not r.txn_is_sent and r.txn_hash is None for r in rows)


async def test_sent_pending_and_reset_states(db):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        call = AclCall(tenant_id, "allow_public_decrypt", TX, handle=handle(3))
        assert await acl.record_calls(connection, [call, call]) == 1
        (row,) = await acl.unsent(connection, 10, max_retries=5)
        await acl.record_pending(connection, [row.call_id], b"\x01" * 32, ALICE, 7)
        (pending,) = await acl.reload(connection, [row.call_id])
        assert (pending.txn_is_sent, pending.txn_hash) == (False, b"\x01" * 32)
        await acl.reset_unsent(connection, [row.call_id], "never reached\x00 the chain")
        (again,) = await acl.unsent(connection, 10, max_retries=5)
        assert again.txn_hash is None and again.txn_last_error == "never reached\\x00 the chain"
        assert await acl.unsent(connection, 10, max_retries=1) == []  # refused once: left out
        await acl.mark_sent(connection, [row.call_id], b"\x02" * 32, 12)
        assert await acl.unsent(connection, 10, max_retries=5) == []
        assert await acl.sent_transactions(connection, ALICE) == 1


@pytest.mark.parametrize(
    "bad",
    [
        AclCall(0, "allow_account", TX, handle=handle(1)),  # no account
        AclCall(0, "allow_public_decrypt", TX, handle=b"short"),
        AclCall(0, "grant_everything", TX, handle=handle(1)),
    ],
)
async def test_malformed_calls_are_refused_by_the_schema(db, bad):
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        call = AclCall(tenant_id, bad.kind, bad.transaction_id, bad.handle, bad.account_address)
        with pytest.raises((asyncpg.CheckViolationError, AssertionError)):
            await acl.record_calls(connection, [call])
        assert await acl.unsent(connection, 10, max_retries=5) == []


@pytest.fixture
async def database_before_0006(dev_stack, tmp_path):
    """An empty database and a directory with the migrations before 0006."""
    older = tmp_path / "migrations"
    older.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name.split("_")[0]) < 6:
            shutil.copy(path, older / path.name)
    server = dev_stack["FHE_DATABASE_URL"]
    name = f"acl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + "/" + name, older
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_events_stored_before_0006_are_owed_with_the_products_call_keys(
    database_before_0006,
):
    url, older = database_before_0006
    assert await migrate.migrate(url, older) == [1, 2, 3, 4, 5]
    connection = await asyncpg.connect(url)
    try:
        tenant_id = await connection.fetchval(
            """INSERT INTO tenants (name, chain_id, key_id, backend)
               VALUES ('old', $1, 'k', 'reference') RETURNING tenant_id""",
            CHAIN_ID,
        )
        async with connection.transaction():
            await connection.executemany(
                """INSERT INTO allowed_handles (tenant_id, handle, account_address, event_type,
                       transaction_id) VALUES ($1, $2, $3, $4, $5)""",
                [(tenant_id, e.handle, e.account_address, e.event_type, TX) for e in EVENTS],
            )
            await connection.executemany(
                """INSERT INTO user_decryption_delegations (chain_id, delegator, delegate,
                       contract_address, delegation_counter, old_expiration, new_expiration,
                       transaction_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                [
                    (
                        CHAIN_ID,
                        d.delegator,
                        d.delegate,
                        d.contract_address,
                        d.delegation_counter,
                        d.old_expiration,
                        d.new_expiration,
                        TX,
                    )
                    for d in DELEGATIONS
                ],
            )
        latest = migrate.latest_version(MIGRATIONS_DIR)
        assert await migrate.migrate(url, MIGRATIONS_DIR) == list(range(6, latest + 1))
        backfilled = {
            r["call_key"] for r in await connection.fetch("SELECT call_key FROM gateway_acl_calls")
        }
        # What the product would write for the same events: the same rows, no second copy.
        expected = host.gateway_acl_calls(block(7, tenant_id, EVENTS, DELEGATIONS))
        assert backfilled == {c.call_key for c in expected}
        assert await acl.record_calls(connection, expected) == 0
    finally:
        await connection.close()


async def test_a_call_of_an_orphaned_block_is_not_owed_until_a_canonical_block_asks(db):
    """A grant the canonical chain never made must not reach the gateway."""
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        async with connection.transaction():
            await host.record_block(connection, block(7, tenant_id, EVENTS[:1]))
        assert len(await acl.unsent(connection, 10, max_retries=5)) == 1
        async with connection.transaction():
            await host.orphan_above(connection, CHAIN_ID, tenant_id, 6)  # block 7 reorged out
        assert await acl.unsent(connection, 10, max_retries=5) == []
        # The same grant in a block of the new branch: owed again, now from that block.
        async with connection.transaction():
            await host.record_block(connection, block(17, tenant_id, EVENTS[:1]))
        (row,) = await acl.unsent(connection, 10, max_retries=5)
        assert row.call.host_block_hash == (17).to_bytes(32, "big")
