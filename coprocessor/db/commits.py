"""Queries of the send stage: which digests to commit and what happened to them.

A ``ciphertext_digest`` row is in one of three states (``gateway_acl_calls`` rows, the
MultichainACL calls of ``acl``, share them):

* unsent                - ``NOT txn_is_sent AND txn_hash IS NULL``;
* pending               - ``NOT txn_is_sent AND txn_hash IS NOT NULL``: a transaction
                          was signed and recorded *before* being broadcast; whether it
                          reached the chain is looked up, never assumed;
* sent                  - ``txn_is_sent``: this coprocessor's submission is on chain
                          (``txn_hash`` NULL when it was found there, not sent by us).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from .queries import CIPHERTEXTS_COMMITTED, notify, storable_reason


@dataclass(frozen=True)
class DigestRow:
    tenant_id: int
    handle: bytes
    key_id: bytes
    ciphertext: bytes
    ciphertext128: bytes
    txn_is_sent: bool
    txn_hash: bytes | None
    txn_last_error: str | None
    kms_key_id: int | None = None  # the tenant's, at read time (NULL: not activated)


_COLUMNS = """d.tenant_id, d.handle, d.key_id, d.ciphertext, d.ciphertext128,
              d.txn_is_sent, d.txn_hash, d.txn_last_error,
              (SELECT t.kms_key_id FROM tenants t WHERE t.tenant_id = d.tenant_id)
                AS kms_key_id"""


def _row(record: asyncpg.Record) -> DigestRow:
    txn_hash = record["txn_hash"]
    return DigestRow(
        record["tenant_id"],
        bytes(record["handle"]),
        bytes(record["key_id"]),
        bytes(record["ciphertext"]),
        bytes(record["ciphertext128"]),
        record["txn_is_sent"],
        bytes(txn_hash) if txn_hash else None,
        record["txn_last_error"],
        int(record["kms_key_id"]) if record["kms_key_id"] is not None else None,
    )


@dataclass(frozen=True)
class BatchCommit:
    """One handle the batch publishes, and its digest row once the SNS stage made it."""

    handle: bytes
    published: bool
    publish_error: str | None
    digest: DigestRow | None


async def batch_commits(connection: asyncpg.Connection, batch_id: str) -> list[BatchCommit]:
    """The batch's published handles (its SNS queue rows) in graph order."""
    rows = await connection.fetch(
        f"""SELECT p.handle AS queued_handle, p.is_completed, p.is_error, p.error_message,
                   d.handle IS NOT NULL AS has_digest, {_COLUMNS}
            FROM batch_computations bc
            JOIN pbs_computations p ON p.tenant_id = bc.tenant_id
                                   AND p.handle = bc.output_handle
            LEFT JOIN ciphertext_digest d ON d.tenant_id = p.tenant_id AND d.handle = p.handle
                  AND d.ciphertext IS NOT NULL AND d.ciphertext128 IS NOT NULL
            WHERE bc.batch_id = $1 ORDER BY bc.position""",
        batch_id,
    )
    return [
        BatchCommit(
            bytes(r["queued_handle"]),
            r["is_completed"],
            r["error_message"] or ("failed" if r["is_error"] else None),
            _row(r) if r["has_digest"] else None,
        )
        for r in rows
    ]


async def unsent(connection: asyncpg.Connection, limit: int, max_retries: int) -> list[DigestRow]:
    """Digests of every tenant waiting for a transaction (or pending in one), oldest
    first: what the long-running sender works through. A row the contract refused
    ``max_retries`` times is left out (its ``txn_last_error`` says why), and so are the
    rows of tenants the KMS has not activated yet (they wait, they do not fail)."""
    rows = await connection.fetch(
        f"""SELECT {_COLUMNS} FROM ciphertext_digest d
            WHERE NOT d.txn_is_sent AND d.ciphertext IS NOT NULL
              AND d.ciphertext128 IS NOT NULL AND d.txn_retry_count < $2
              AND EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = d.tenant_id
                          AND t.kms_key_id IS NOT NULL)
            ORDER BY d.created_at, d.tenant_id, d.handle LIMIT $1""",
        limit,
        max_retries,
    )
    return [_row(r) for r in rows]


async def reload(
    connection: asyncpg.Connection, keys: Sequence[tuple[int, bytes]]
) -> list[DigestRow]:
    """The current state of these rows (another sender may have moved them on)."""
    rows = await connection.fetch(
        f"""SELECT {_COLUMNS} FROM ciphertext_digest d
            JOIN unnest($1::int[], $2::bytea[]) AS k(tenant_id, handle)
              ON d.tenant_id = k.tenant_id AND d.handle = k.handle""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return [_row(r) for r in rows]


def _keys(rows: Sequence[DigestRow]) -> tuple[list[int], list[bytes]]:
    return [r.tenant_id for r in rows], [r.handle for r in rows]


async def record_pending(
    connection: asyncpg.Connection,
    rows: Sequence[DigestRow],
    tx_hash: bytes,
    signer: bytes,
    nonce: int,
) -> None:
    """Write-ahead: remember the signed transaction before it is broadcast."""
    await connection.execute(
        """UPDATE ciphertext_digest d SET txn_hash = $3, txn_signer = $4, txn_nonce = $5
           FROM unnest($1::int[], $2::bytea[]) AS k(tenant_id, handle)
           WHERE d.tenant_id = k.tenant_id AND d.handle = k.handle AND NOT d.txn_is_sent""",
        *_keys(rows),
        tx_hash,
        signer,
        nonce,
    )


async def mark_sent(
    connection: asyncpg.Connection,
    rows: Sequence[DigestRow],
    tx_hash: bytes | None,
    block_number: int | None,
) -> None:
    """This signer's submission is on chain; ``tx_hash`` None when found, not sent."""
    async with connection.transaction():
        await connection.execute(
            """UPDATE ciphertext_digest d
               SET txn_is_sent = true, txn_hash = $3, txn_block_number = $4,
                   txn_sent_at = now(), txn_last_error = NULL
               FROM unnest($1::int[], $2::bytea[]) AS k(tenant_id, handle)
               WHERE d.tenant_id = k.tenant_id AND d.handle = k.handle""",
            *_keys(rows),
            tx_hash,
            block_number,
        )
        await notify(connection, CIPHERTEXTS_COMMITTED, str(len(rows)))


async def reset_unsent(
    connection: asyncpg.Connection, rows: Sequence[DigestRow], reason: str
) -> None:
    """Back to unsent with the reason: the recorded transaction never reached the
    chain, or the contract refused the submission."""
    await connection.execute(
        """UPDATE ciphertext_digest d
           SET txn_hash = NULL, txn_nonce = NULL, txn_retry_count = txn_retry_count + 1,
               txn_last_error = $3
           FROM unnest($1::int[], $2::bytea[]) AS k(tenant_id, handle)
           WHERE d.tenant_id = k.tenant_id AND d.handle = k.handle AND NOT d.txn_is_sent""",
        *_keys(rows),
        storable_reason(reason),
    )


async def batch_transactions(connection: asyncpg.Connection, batch_id: str) -> int:
    """Distinct transactions that carried the batch's commits (every run's)."""
    return await connection.fetchval(
        """SELECT count(DISTINCT d.txn_hash) FROM batch_computations bc
           JOIN pbs_computations p ON p.tenant_id = bc.tenant_id
                                  AND p.handle = bc.output_handle
           JOIN ciphertext_digest d ON d.tenant_id = p.tenant_id AND d.handle = p.handle
           WHERE bc.batch_id = $1 AND d.txn_is_sent AND d.txn_hash IS NOT NULL""",
        batch_id,
    )


def signer_lock_key(signer: bytes) -> int:
    """The advisory lock one signer's senders share: nonces are per signer, so two
    processes sending for the same key at once would fight over them."""
    return int.from_bytes(signer[:8], "big", signed=True)


async def try_lock_signer(connection: asyncpg.Connection, signer: bytes) -> bool:
    return await connection.fetchval("SELECT pg_try_advisory_lock($1)", signer_lock_key(signer))


async def unlock_signer(connection: asyncpg.Connection, signer: bytes) -> None:
    await connection.execute("SELECT pg_advisory_unlock($1)", signer_lock_key(signer))
