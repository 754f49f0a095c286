"""Queries of the host listener: the block cursor, a block's rows, reorgs, batches.

Blocks are written once (``blocks_canonical`` is unique per height among non-orphaned
rows) together with their computations, ACL rows and transactions, in one transaction.
A reorg marks the replaced blocks orphaned and their unfinished computations failed
("orphaned") unless a canonical transaction also emitted them; when a transaction comes
back in the new branch its computations (same deterministic handles) are revived instead
of duplicated. A block orphaned and then canonical again (A -> B -> A) is revived
too, with a new batch name (the old FheBatch may still be finishing its deletion).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .acl import AclCall, record_calls
from .queries import WORK_AVAILABLE, notify, require_transaction
from .rows import ComputationRow

ORPHANED = "orphaned by a chain reorganisation"


@dataclass(frozen=True)
class SeenBlock:
    number: int
    hash: bytes


async def canonical_blocks(
    connection: asyncpg.Connection, chain_id: int, since: int
) -> list[SeenBlock]:
    """Non-orphaned blocks at height >= since, highest first."""
    rows = await connection.fetch(
        """SELECT block_number, block_hash FROM blocks
           WHERE chain_id = $1 AND block_number >= $2 AND NOT is_orphaned
           ORDER BY block_number DESC""",
        chain_id,
        since,
    )
    return [SeenBlock(r["block_number"], bytes(r["block_hash"])) for r in rows]


async def last_block(connection: asyncpg.Connection, chain_id: int) -> SeenBlock | None:
    row = await connection.fetchrow(
        """SELECT block_number, block_hash FROM blocks
           WHERE chain_id = $1 AND NOT is_orphaned
           ORDER BY block_number DESC LIMIT 1""",
        chain_id,
    )
    return SeenBlock(row["block_number"], bytes(row["block_hash"])) if row else None


@dataclass(frozen=True)
class AllowedHandle:
    handle: bytes
    account_address: bytes
    event_type: int
    transaction_id: bytes


@dataclass(frozen=True)
class VerifiedInputRow:
    """``VerifyInput``: the host accepted an input proof for ``handle``; its ciphertext
    is the verify stage's to store before anything computes on it."""

    handle: bytes
    transaction_id: bytes
    contract_address: bytes
    user_address: bytes
    input_type: int


@dataclass(frozen=True)
class Delegation:
    """A user-decryption delegation on the host ACL, or its revocation."""

    delegator: bytes
    delegate: bytes
    contract_address: bytes
    delegation_counter: int
    old_expiration: int
    new_expiration: int | None  # None: revoked
    transaction_id: bytes


@dataclass(frozen=True)
class BlockRecord:
    chain_id: int
    number: int
    hash: bytes
    parent_hash: bytes
    tenant_id: int
    computations: tuple[ComputationRow, ...]
    allowed: tuple[AllowedHandle, ...]
    transactions: tuple[bytes, ...]  # those with FHE work, in block order
    batch_name: str | None  # the block's batch name (a prefix when split in parts)
    parts: tuple[int, ...] = ()  # batch part of each transaction; empty: all part 0
    verified_inputs: tuple[VerifiedInputRow, ...] = ()
    delegations: tuple[Delegation, ...] = ()
    # (transaction, handle): a handle computed in an earlier block that this block's
    # transaction allows; linked to it so the block's batch publishes it (SNS, commit).
    late_allowed: tuple[tuple[bytes, bytes], ...] = ()


async def computed_handles(
    connection: asyncpg.Connection, tenant_id: int, handles: list[bytes]
) -> set[bytes]:
    """Which of ``handles`` are outputs of computations stored for the tenant."""
    if not handles:
        return set()
    rows = await connection.fetch(
        """SELECT output_handle FROM computations
           WHERE tenant_id = $1 AND output_handle = ANY($2::bytea[])""",
        tenant_id,
        handles,
    )
    return {bytes(r["output_handle"]) for r in rows}


async def record_block(connection: asyncpg.Connection, block: BlockRecord) -> bool:
    """Write one block and its rows; False (and nothing written) if it was seen before."""
    require_transaction(connection)
    inserted = await connection.fetchval(
        """INSERT INTO blocks (chain_id, block_number, block_hash, parent_hash, batch_name)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (chain_id, block_hash) DO UPDATE
             SET is_orphaned = false, batch_created_at = NULL, batch_cancelled_at = NULL,
                 batch_name = blocks.batch_name || '-r'
             WHERE blocks.is_orphaned
           RETURNING block_number""",
        block.chain_id,
        block.number,
        block.hash,
        block.parent_hash,
        block.batch_name,
    )
    if inserted is None:
        return False
    await connection.executemany(
        """INSERT INTO computations (tenant_id, output_handle, output_type, fhe_operation,
               dependencies, is_scalar, transaction_id, schedule_order)
           VALUES ($1, $2, $3, $4, $5, $6, $7, nextval('computations_schedule_order'))
           ON CONFLICT (tenant_id, output_handle) DO UPDATE
             SET is_error = false, error_message = NULL, transaction_id = EXCLUDED.transaction_id
             WHERE computations.is_error AND computations.error_message = $8""",
        [
            (
                block.tenant_id,
                r.output_handle,
                r.output_type,
                r.fhe_operation,
                list(r.dependencies),
                r.is_scalar,
                r.transaction_id,
                ORPHANED,
            )
            for r in block.computations
        ],
    )
    # A publication that failed because its computation was orphaned may run again.
    await connection.execute(
        """UPDATE pbs_computations SET is_error = false, error_message = NULL
           WHERE tenant_id = $1 AND handle = ANY($2::bytea[]) AND is_error
             AND error_message LIKE '%' || $3 || '%'""",
        block.tenant_id,
        [r.output_handle for r in block.computations],
        ORPHANED,
    )
    await connection.executemany(
        """INSERT INTO transaction_computations (tenant_id, transaction_id, output_handle)
           VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
        [
            *((block.tenant_id, r.transaction_id, r.output_handle) for r in block.computations),
            *((block.tenant_id, tx, handle) for tx, handle in block.late_allowed),
        ],
    )
    await connection.executemany(
        """INSERT INTO allowed_handles (tenant_id, handle, account_address, event_type,
               transaction_id)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
        [
            (block.tenant_id, a.handle, a.account_address, a.event_type, a.transaction_id)
            for a in block.allowed
        ],
    )
    await connection.executemany(
        """INSERT INTO host_verified_inputs (tenant_id, handle, transaction_id,
               contract_address, user_address, input_type)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
        [
            (
                block.tenant_id,
                v.handle,
                v.transaction_id,
                v.contract_address,
                v.user_address,
                v.input_type,
            )
            for v in block.verified_inputs
        ],
    )
    await connection.executemany(
        """INSERT INTO user_decryption_delegations (chain_id, delegator, delegate,
               contract_address, delegation_counter, old_expiration, new_expiration,
               transaction_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING""",
        [
            (
                block.chain_id,
                d.delegator,
                d.delegate,
                d.contract_address,
                d.delegation_counter,
                d.old_expiration,
                d.new_expiration,
                d.transaction_id,
            )
            for d in block.delegations
        ],
    )
    await record_calls(connection, gateway_acl_calls(block))
    await connection.executemany(
        """INSERT INTO block_transactions (chain_id, block_hash, transaction_id, batch_part)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
        [
            (block.chain_id, block.hash, t, block.parts[i] if block.parts else 0)
            for i, t in enumerate(block.transactions)
        ],
    )
    if block.computations:
        await notify(connection, WORK_AVAILABLE, f"block:{block.chain_id}:{block.number}")
    return True


def gateway_acl_calls(block: BlockRecord) -> list[AclCall]:
    """The MultichainACL calls the block's ACL events owe the gateway (docs/design.md
    section 2): the KMS checks them before it decrypts anything."""
    calls = []
    for allowed in block.allowed:
        if allowed.event_type == 0:  # Allowed(caller, account, handle)
            calls.append(
                AclCall(
                    block.tenant_id,
                    "allow_account",
                    allowed.transaction_id,
                    handle=allowed.handle,
                    account_address=allowed.account_address,
                    host_block_hash=block.hash,
                )
            )
        elif allowed.event_type == 1:  # AllowedForDecryption(caller, handles)
            calls.append(
                AclCall(
                    block.tenant_id,
                    "allow_public_decrypt",
                    allowed.transaction_id,
                    handle=allowed.handle,
                    host_block_hash=block.hash,
                )
            )
    for delegation in block.delegations:
        revoked = delegation.new_expiration is None
        calls.append(
            AclCall(
                block.tenant_id,
                "revoke" if revoked else "delegate",
                delegation.transaction_id,
                chain_id=block.chain_id,
                delegator=delegation.delegator,
                delegate=delegation.delegate,
                contract_address=delegation.contract_address,
                delegation_counter=delegation.delegation_counter,
                expiration_date=(
                    delegation.old_expiration if revoked else delegation.new_expiration
                ),
                host_block_hash=block.hash,
            )
        )
    return calls


async def orphan_above(
    connection: asyncpg.Connection, chain_id: int, tenant_id: int, number: int
) -> list[str]:
    """Orphan every canonical block above ``number``; fail their unfinished computations
    whose transaction is in no canonical block. Returns the orphans' batch names."""
    require_transaction(connection)
    rows = await connection.fetch(
        """UPDATE blocks SET is_orphaned = true
           WHERE chain_id = $1 AND block_number > $2 AND NOT is_orphaned
           RETURNING block_hash, batch_name""",
        chain_id,
        number,
    )
    hashes = [bytes(r["block_hash"]) for r in rows]
    await connection.execute(
        """UPDATE computations c SET is_error = true, error_message = $4
           WHERE c.tenant_id = $2 AND NOT c.is_completed AND NOT c.is_error
             AND EXISTS (
                 SELECT 1 FROM transaction_computations l JOIN block_transactions bt
                   ON bt.transaction_id = l.transaction_id
                 WHERE l.tenant_id = c.tenant_id AND l.output_handle = c.output_handle
                   AND bt.chain_id = $1 AND bt.block_hash = ANY($3::bytea[]))
             AND NOT EXISTS (
                 SELECT 1 FROM transaction_computations l
                 JOIN block_transactions bt ON bt.transaction_id = l.transaction_id
                 JOIN blocks b ON b.chain_id = bt.chain_id AND b.block_hash = bt.block_hash
                 WHERE l.tenant_id = c.tenant_id AND l.output_handle = c.output_handle
                   AND NOT b.is_orphaned)""",
        chain_id,
        tenant_id,
        hashes,
        ORPHANED,
    )
    return [r["batch_name"] for r in rows if r["batch_name"]]


@dataclass(frozen=True)
class PendingBatch:
    number: int
    hash: bytes
    batch_name: str  # the name of this part
    transactions: tuple[bytes, ...]


def part_name(batch_name: str, part: int, parts: int) -> str:
    return batch_name if parts == 1 else f"{batch_name}-{part}"


async def pending_batches(connection: asyncpg.Connection, chain_id: int) -> list[PendingBatch]:
    """The FheBatches of canonical blocks not created yet, oldest first."""
    rows = await connection.fetch(
        """SELECT b.block_number, b.block_hash, b.batch_name, bt.batch_part,
                  array_agg(bt.transaction_id ORDER BY bt.transaction_id) AS transactions,
                  count(*) OVER (PARTITION BY b.block_hash) AS parts
           FROM blocks b JOIN block_transactions bt
             ON bt.chain_id = b.chain_id AND bt.block_hash = b.block_hash
           WHERE b.chain_id = $1 AND NOT b.is_orphaned AND b.batch_name IS NOT NULL
             AND b.batch_created_at IS NULL
           GROUP BY b.block_number, b.block_hash, b.batch_name, bt.batch_part
           ORDER BY b.block_number, bt.batch_part""",
        chain_id,
    )
    return [
        PendingBatch(
            r["block_number"],
            bytes(r["block_hash"]),
            part_name(r["batch_name"], r["batch_part"], r["parts"]),
            tuple(bytes(t) for t in r["transactions"]),
        )
        for r in rows
    ]


async def mark_batch_created(
    connection: asyncpg.Connection, chain_id: int, block_hash: bytes
) -> None:
    await connection.execute(
        """UPDATE blocks SET batch_created_at = now()
           WHERE chain_id = $1 AND block_hash = $2 AND batch_created_at IS NULL""",
        chain_id,
        block_hash,
    )


async def pending_cancellations(
    connection: asyncpg.Connection, chain_id: int
) -> list[tuple[bytes, list[str]]]:
    """(block hash, its FheBatch names) of orphaned blocks not cancelled yet."""
    rows = await connection.fetch(
        """SELECT b.block_hash, b.batch_name,
                  array_agg(DISTINCT bt.batch_part ORDER BY bt.batch_part) AS parts
           FROM blocks b JOIN block_transactions bt
             ON bt.chain_id = b.chain_id AND bt.block_hash = b.block_hash
           WHERE b.chain_id = $1 AND b.is_orphaned AND b.batch_name IS NOT NULL
             AND b.batch_cancelled_at IS NULL
           GROUP BY b.block_number, b.block_hash, b.batch_name
           ORDER BY b.block_number""",
        chain_id,
    )
    return [
        (
            bytes(r["block_hash"]),
            [part_name(r["batch_name"], p, len(r["parts"])) for p in r["parts"]],
        )
        for r in rows
    ]


async def mark_batch_cancelled(
    connection: asyncpg.Connection, chain_id: int, block_hash: bytes
) -> None:
    await connection.execute(
        """UPDATE blocks SET batch_cancelled_at = now()
           WHERE chain_id = $1 AND block_hash = $2 AND is_orphaned""",
        chain_id,
        block_hash,
    )
