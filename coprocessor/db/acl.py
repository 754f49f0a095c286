"""The MultichainACL outbox: one ``gateway_acl_calls`` row per call this coprocessor owes.

The host listener writes a row for every ``Allowed`` (allowAccount),
``AllowedForDecryption`` (allowPublicDecrypt) and delegation or revocation event, in the
block's own transaction, naming that block: a call whose block a reorg orphaned is not
sent (until the block comes back, or another canonical block asks for the same call).
The sender (the batch's send stage for its handles, the long-running sender for all)
sends each once, in the states of ``ciphertext_digest``: unsent, pending (hash recorded
before the broadcast) and sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from .outbox import Outbox

KINDS = ("allow_account", "allow_public_decrypt", "delegate", "revoke")


@dataclass(frozen=True)
class AclCall:
    """What the host asked for; ``call_key`` identifies the call on the gateway."""

    tenant_id: int
    kind: str
    transaction_id: bytes | None
    handle: bytes | None = None
    account_address: bytes | None = None
    chain_id: int | None = None
    delegator: bytes | None = None
    delegate: bytes | None = None
    contract_address: bytes | None = None
    delegation_counter: int | None = None
    expiration_date: int | None = None
    host_block_hash: bytes | None = None  # the block of the host event

    @property
    def call_key(self) -> str:
        """The same text migration 0006 builds for rows stored before it."""
        if self.kind == "allow_account":
            assert self.handle is not None and self.account_address is not None
            return f"allow_account:{self.handle.hex()}:{self.account_address.hex()}"
        if self.kind == "allow_public_decrypt":
            assert self.handle is not None
            return f"allow_public_decrypt:{self.handle.hex()}"
        assert self.delegator and self.delegate and self.contract_address
        return (
            f"{self.kind}:{self.chain_id}:{self.delegator.hex()}:{self.delegate.hex()}:"
            f"{self.contract_address.hex()}:{self.delegation_counter}:{self.expiration_date}"
        )


@dataclass(frozen=True)
class AclCallRow:
    call_id: int
    call: AclCall
    txn_is_sent: bool
    txn_hash: bytes | None
    txn_last_error: str | None


_FIELDS = (
    "tenant_id",
    "kind",
    "transaction_id",
    "handle",
    "account_address",
    "chain_id",
    "delegator",
    "delegate",
    "contract_address",
    "delegation_counter",
    "expiration_date",
    "host_block_hash",
)
_COLUMNS = "call_id, " + ", ".join(_FIELDS) + ", txn_is_sent, txn_hash, txn_last_error"
# The call's host block was orphaned by a reorg (and not revived): it is not owed.
_ORPHANED = """EXISTS (SELECT 1 FROM blocks b WHERE b.block_hash = g.host_block_hash
                           AND b.is_orphaned)"""


def _bytes(value: object) -> bytes | None:
    return bytes(value) if value is not None else None  # type: ignore[call-overload]


def _int(value: object) -> int | None:
    return int(value) if value is not None else None  # type: ignore[call-overload]


def _row(record: asyncpg.Record) -> AclCallRow:
    call = AclCall(
        tenant_id=record["tenant_id"],
        kind=record["kind"],
        transaction_id=_bytes(record["transaction_id"]),
        handle=_bytes(record["handle"]),
        account_address=_bytes(record["account_address"]),
        chain_id=record["chain_id"],
        delegator=_bytes(record["delegator"]),
        delegate=_bytes(record["delegate"]),
        contract_address=_bytes(record["contract_address"]),
        delegation_counter=_int(record["delegation_counter"]),
        expiration_date=_int(record["expiration_date"]),
        host_block_hash=_bytes(record["host_block_hash"]),
    )
    return AclCallRow(
        record["call_id"],
        call,
        record["txn_is_sent"],
        _bytes(record["txn_hash"]),
        record["txn_last_error"],
    )


async def record_calls(connection: asyncpg.Connection, calls: Sequence[AclCall]) -> int:
    """Owe these calls (idempotent by ``call_key``); returns how many are new. A call owed
    from a block a reorg orphaned is re-pointed at the block asking for it now."""
    calls = list({c.call_key: c for c in calls}.values())  # one row per call, last wins
    if not calls:
        return 0
    rows = await connection.fetch(
        f"""INSERT INTO gateway_acl_calls AS g (call_key, {", ".join(_FIELDS)})
            SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::bytea[], $5::bytea[],
                                 $6::bytea[], $7::bigint[], $8::bytea[], $9::bytea[],
                                 $10::bytea[], $11::numeric[], $12::numeric[], $13::bytea[])
            ON CONFLICT (call_key) DO UPDATE
              SET host_block_hash = EXCLUDED.host_block_hash,
                  transaction_id = EXCLUDED.transaction_id
              WHERE NOT g.txn_is_sent AND {_ORPHANED}
            RETURNING call_id, (xmax = 0) AS inserted""",
        [c.call_key for c in calls],
        *([getattr(c, name) for c in calls] for name in _FIELDS),
    )
    return sum(r["inserted"] for r in rows)


async def unsent(connection: asyncpg.Connection, limit: int, max_retries: int) -> list[AclCallRow]:
    """Calls of every tenant waiting for (or pending in) a transaction, oldest first."""
    rows = await connection.fetch(
        f"""SELECT {_COLUMNS} FROM gateway_acl_calls g
            WHERE NOT txn_is_sent AND txn_retry_count < $2 AND NOT {_ORPHANED}
            ORDER BY created_at, call_id LIMIT $1""",
        limit,
        max_retries,
    )
    return [_row(r) for r in rows]


async def batch_calls(connection: asyncpg.Connection, batch_id: str) -> list[AclCallRow]:
    """The calls about the batch's handles (what its send stage owes besides commits)."""
    rows = await connection.fetch(
        f"""SELECT {_COLUMNS} FROM gateway_acl_calls g
            WHERE (g.tenant_id, g.handle) IN (
                SELECT bc.tenant_id, bc.output_handle FROM batch_computations bc
                WHERE bc.batch_id = $1)
              AND (g.txn_is_sent OR NOT {_ORPHANED})
            ORDER BY g.call_id""",
        batch_id,
    )
    return [_row(r) for r in rows]


async def reload(connection: asyncpg.Connection, call_ids: Sequence[int]) -> list[AclCallRow]:
    rows = await connection.fetch(
        f"SELECT {_COLUMNS} FROM gateway_acl_calls WHERE call_id = ANY($1::bigint[])",
        list(call_ids),
    )
    return [_row(r) for r in rows]


# Write-ahead verbs (record_pending, mark_sent, reset_unsent), as the other outboxes.
ACL_CALLS = Outbox("gateway_acl_calls", "call_id")
record_pending = ACL_CALLS.record_pending
mark_sent = ACL_CALLS.mark_sent
reset_unsent = ACL_CALLS.reset_unsent


async def sent_transactions(connection: asyncpg.Connection, tx_sender: bytes) -> int:
    """Distinct transactions this tx sender's ACL calls were sent in (tests, figures)."""
    return await connection.fetchval(
        """SELECT count(DISTINCT txn_hash) FROM gateway_acl_calls
           WHERE txn_is_sent AND txn_hash IS NOT NULL AND txn_signer = $1""",
        tx_sender,
    )
