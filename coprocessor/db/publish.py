"""Queries of the SNS stage: the publication queue, squashed ciphertexts and digests.

A batch publishes its outputs (graph nodes marked ``output: true``; for listener-made
batches, handles allowed for decryption by the ACL). Each published handle has one
``pbs_computations`` row - the queue - and, once squashed and uploaded, one
``ciphertext_digest`` row that the sender commits on the gateway chain. A handle shared
by two batches has one row of each: the first batch to publish it does the work, the
second finds it done.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .queries import (
    CIPHERTEXTS_UPLOADED,
    PBS_COMPUTATIONS,
    notify,
    require_transaction,
    storable_reason,
)


async def enqueue_batch_outputs(connection: asyncpg.Connection, batch_id: str) -> int:
    """Queue the batch's published handles (idempotent); returns how many were new.

    Published: the nodes marked as outputs, and every handle the host ACL allowed
    (``Allowed`` or ``AllowedForDecryption``), as Zama's coprocessors do: a persistent
    allow is what makes a handle decryptable by a user or the public later."""
    rows = await connection.fetch(
        """INSERT INTO pbs_computations (tenant_id, handle, batch_id)
           SELECT bc.tenant_id, bc.output_handle, bc.batch_id
           FROM batch_computations bc
           WHERE bc.batch_id = $1
             AND (bc.is_output OR EXISTS (
                    SELECT 1 FROM allowed_handles a
                    WHERE a.tenant_id = bc.tenant_id AND a.handle = bc.output_handle
                      AND a.event_type IN (0, 1)))  -- Allowed, AllowedForDecryption
           ORDER BY bc.position
           ON CONFLICT (tenant_id, handle) DO NOTHING
           RETURNING handle""",
        batch_id,
    )
    if rows:
        await notify(connection, PBS_COMPUTATIONS, batch_id)
    return len(rows)


@dataclass(frozen=True)
class Publication:
    handle: bytes
    is_completed: bool
    is_error: bool
    error_message: str | None


async def batch_publications(connection: asyncpg.Connection, batch_id: str) -> list[Publication]:
    """The batch's queued handles and their state, in graph order."""
    rows = await connection.fetch(
        """SELECT p.handle, p.is_completed, p.is_error, p.error_message
           FROM batch_computations bc
           JOIN pbs_computations p ON p.tenant_id = bc.tenant_id
                                  AND p.handle = bc.output_handle
           WHERE bc.batch_id = $1 ORDER BY bc.position""",
        batch_id,
    )
    return [
        Publication(bytes(r["handle"]), r["is_completed"], r["is_error"], r["error_message"])
        for r in rows
    ]


async def lock_publication(
    connection: asyncpg.Connection, tenant_id: int, handle: bytes
) -> Publication | None:
    """Claim one queued handle for this transaction; None when another pod holds it."""
    require_transaction(connection)
    row = await connection.fetchrow(
        """SELECT handle, is_completed, is_error, error_message FROM pbs_computations
           WHERE tenant_id = $1 AND handle = $2 FOR UPDATE SKIP LOCKED""",
        tenant_id,
        handle,
    )
    return (
        Publication(
            bytes(row["handle"]), row["is_completed"], row["is_error"], row["error_message"]
        )
        if row
        else None
    )


@dataclass(frozen=True)
class PublicationSource:
    """What there is to publish for a handle: the computed bytes, maybe already squashed."""

    ciphertext: bytes | None
    ciphertext_type: int | None
    ciphertext128: bytes | None
    ciphertext128_format: int | None
    computation_error: str | None


async def publication_source(
    connection: asyncpg.Connection, tenant_id: int, handle: bytes
) -> PublicationSource:
    row = await connection.fetchrow(
        """SELECT t.ciphertext, t.ciphertext_type, t.ciphertext128, t.ciphertext128_format,
                  (SELECT coalesce(c.error_message, 'failed') FROM computations c
                   WHERE c.tenant_id = $1 AND c.output_handle = $2 AND c.is_error)
                      AS computation_error
           FROM (SELECT 1) AS one
           LEFT JOIN ciphertexts t ON t.tenant_id = $1 AND t.handle = $2""",
        tenant_id,
        handle,
    )
    return PublicationSource(
        bytes(row["ciphertext"]) if row["ciphertext"] is not None else None,
        row["ciphertext_type"],
        bytes(row["ciphertext128"]) if row["ciphertext128"] is not None else None,
        row["ciphertext128_format"],
        row["computation_error"],
    )


@dataclass(frozen=True)
class Digests:
    key_id: bytes  # our digest of the keyset (tenants.key_id), not the KMS key id
    ciphertext: bytes  # keccak256 of the ct64 object (also its S3 key, in hex)
    ciphertext128: bytes  # keccak256 of the ct128 object
    ciphertext128_format: int
    ct64_bucket: str | None = None
    ct128_bucket: str | None = None


async def complete_publication(
    connection: asyncpg.Connection, tenant_id: int, handle: bytes, squashed: bytes, digests: Digests
) -> None:
    """Store the squashed form and the digests, mark the handle published, NOTIFY.

    A digest row the sender already committed on chain is left as it is.
    """
    require_transaction(connection)
    await connection.execute(
        """UPDATE ciphertexts SET ciphertext128 = $3, ciphertext128_format = $4
           WHERE tenant_id = $1 AND handle = $2
             AND ciphertext128 IS DISTINCT FROM $3""",
        tenant_id,
        handle,
        squashed,
        digests.ciphertext128_format,
    )
    await connection.execute(
        """INSERT INTO ciphertext_digest (tenant_id, handle, key_id, ciphertext,
               ciphertext128, ciphertext128_format, ct64_bucket, ct128_bucket)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (tenant_id, handle) DO UPDATE
             SET key_id = EXCLUDED.key_id, ciphertext = EXCLUDED.ciphertext,
                 ciphertext128 = EXCLUDED.ciphertext128,
                 ciphertext128_format = EXCLUDED.ciphertext128_format,
                 ct64_bucket = EXCLUDED.ct64_bucket, ct128_bucket = EXCLUDED.ct128_bucket
             WHERE NOT ciphertext_digest.txn_is_sent""",
        tenant_id,
        handle,
        digests.key_id,
        digests.ciphertext,
        digests.ciphertext128,
        digests.ciphertext128_format,
        digests.ct64_bucket,
        digests.ct128_bucket,
    )
    await connection.execute(
        """UPDATE pbs_computations SET is_completed = true, completed_at = now()
           WHERE tenant_id = $1 AND handle = $2""",
        tenant_id,
        handle,
    )
    await notify(connection, CIPHERTEXTS_UPLOADED, "0x" + handle.hex())


async def fail_publication(
    connection: asyncpg.Connection, tenant_id: int, handle: bytes, reason: str
) -> None:
    require_transaction(connection)
    await connection.execute(
        """UPDATE pbs_computations SET is_error = true, error_message = $3
           WHERE tenant_id = $1 AND handle = $2""",
        tenant_id,
        handle,
        storable_reason(reason),
    )
