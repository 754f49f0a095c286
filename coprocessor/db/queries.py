"""Every SQL statement of the product, one small function each, named for what it does.

Functions take a connection (or a pool where they own their transaction). Those that
must run inside a caller's transaction say so and check it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .rows import BatchAdmission, ComputationRow, check_batch

# NOTIFY channels (docs/design.md section 6): every channel name of the product, once.
WORK_AVAILABLE = "work_available"
CIPHERTEXT_COMPUTED = "event_ciphertext_computed"
PBS_COMPUTATIONS = "event_pbs_computations"
CIPHERTEXTS_UPLOADED = "event_ciphertexts_uploaded"
ZKPOK_NEW_WORK = "event_zkpok_new_work"
ZKPOK_COMPUTED = "event_zkpok_computed"
CIPHERTEXTS_COMMITTED = "event_ciphertexts_committed"  # submissions mined
CHANNELS = (
    WORK_AVAILABLE,
    CIPHERTEXT_COMPUTED,
    PBS_COMPUTATIONS,
    CIPHERTEXTS_UPLOADED,
    ZKPOK_NEW_WORK,
    ZKPOK_COMPUTED,
    CIPHERTEXTS_COMMITTED,
)


def _computation_fields(record: asyncpg.Record) -> dict[str, Any]:
    """A computations row as keyword arguments for the dataclasses below (the SELECTs
    name their columns after the fields); the operand array becomes a tuple."""
    fields = dict(record)
    fields["dependencies"] = tuple(bytes(d) for d in fields["dependencies"])
    return fields


def require_transaction(connection: asyncpg.Connection) -> None:
    if not connection.is_in_transaction():
        raise RuntimeError("this query must run inside the caller's transaction")


def storable_reason(reason: str, limit: int = 2000) -> str:
    """An error message PostgreSQL text accepts: native errors may quote raw bytes, and
    a NUL would make the very write that records the failure fail."""
    return reason.replace("\x00", "\\x00")[:limit]


# --- notifications ---------------------------------------------------------------------


async def notify(connection: asyncpg.Connection, channel: str, payload: str = "") -> None:
    """Delivered at commit when called inside a transaction, so listeners never see
    work that was rolled back."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    await connection.execute("SELECT pg_notify($1, $2)", channel, payload)


# --- tenants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    tenant_id: int
    name: str
    chain_id: int
    key_id: bytes
    backend: str
    keys_location: str | None
    kms_key_id: int | None = None  # the KMS's id of the keyset; None until activated
    # {purpose: {"object": S3 key, "sha256": hex}}: each stage's share of the server key
    key_parts: dict[str, dict[str, str]] = field(default_factory=dict)


_TENANT_COLUMNS = "tenant_id, name, chain_id, key_id, backend, keys_location, kms_key_id, key_parts"


def _tenant(row: asyncpg.Record | None) -> Tenant | None:
    if row is None:
        return None
    fields = dict(row)
    if fields["kms_key_id"] is not None:
        fields["kms_key_id"] = int(fields["kms_key_id"])
    fields["key_id"] = bytes(fields["key_id"])
    parts = fields["key_parts"]
    fields["key_parts"] = json.loads(parts) if isinstance(parts, str) else dict(parts)
    return Tenant(**fields)


async def create_tenant(
    connection: asyncpg.Connection,
    name: str,
    chain_id: int,
    key_id: bytes,
    backend: str,
    *,
    server_key: bytes | None = None,
    keys_location: str | None = None,
    public_params: bytes | None = None,
    kms_key_id: int | None = None,
    key_parts: dict[str, dict[str, str]] | None = None,
) -> Tenant:
    """Idempotent by name: a second call returns the existing tenant unchanged."""
    await connection.execute(
        """INSERT INTO tenants (name, chain_id, key_id, backend, server_key, keys_location,
                                public_params, kms_key_id, key_parts)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) ON CONFLICT (name) DO NOTHING""",
        name,
        chain_id,
        key_id,
        backend,
        server_key,
        keys_location,
        public_params,
        kms_key_id,
        json.dumps(key_parts or {}),
    )
    tenant = await get_tenant(connection, name)
    assert tenant is not None
    return tenant


async def get_tenant(connection: asyncpg.Connection, name: str) -> Tenant | None:
    row = await connection.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = $1", name)
    return _tenant(row)


async def get_tenant_by_id(connection: asyncpg.Connection, tenant_id: int) -> Tenant | None:
    row = await connection.fetchrow(
        f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1", tenant_id
    )
    return _tenant(row)


async def bind_namespaces(
    connection: asyncpg.Connection, tenant_id: int, namespaces: Sequence[str]
) -> list[str]:
    """Let FheBatches of these namespaces use the tenant (idempotent); returns all of the
    tenant's namespaces."""
    await connection.executemany(
        """INSERT INTO tenant_namespaces (tenant_id, namespace) VALUES ($1, $2)
           ON CONFLICT DO NOTHING""",
        [(tenant_id, n) for n in namespaces],
    )
    return await tenant_namespaces(connection, tenant_id)


async def unbind_namespaces(
    connection: asyncpg.Connection, tenant_id: int, namespaces: Sequence[str]
) -> list[str]:
    await connection.execute(
        "DELETE FROM tenant_namespaces WHERE tenant_id = $1 AND namespace = ANY($2::text[])",
        tenant_id,
        list(namespaces),
    )
    return await tenant_namespaces(connection, tenant_id)


async def tenant_namespaces(connection: asyncpg.Connection, tenant_id: int) -> list[str]:
    rows = await connection.fetch(
        "SELECT namespace FROM tenant_namespaces WHERE tenant_id = $1 ORDER BY namespace",
        tenant_id,
    )
    return [r["namespace"] for r in rows]


async def namespace_may_use(connection: asyncpg.Connection, tenant_id: int, namespace: str) -> bool:
    return await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM tenant_namespaces WHERE tenant_id = $1 AND namespace = $2)",
        tenant_id,
        namespace,
    )


async def kms_key_id(connection: asyncpg.Connection, tenant_id: int) -> int | None:
    value = await connection.fetchval(
        "SELECT kms_key_id FROM tenants WHERE tenant_id = $1", tenant_id
    )
    return int(value) if value is not None else None


async def activate_tenant(connection: asyncpg.Connection, name: str, kms_key_id: int) -> bool:
    """Record the KMS key id the tenant's keyset was activated under; False when the
    tenant already has another one (a keyset's id never changes) or does not exist."""
    row = await connection.fetchrow(
        """UPDATE tenants SET kms_key_id = $2
           WHERE name = $1 AND (kms_key_id IS NULL OR kms_key_id = $2)
           RETURNING tenant_id""",
        name,
        kms_key_id,
    )
    return row is not None


async def get_public_params(connection: asyncpg.Connection, tenant_id: int) -> bytes | None:
    """The tenant's compact public key (what clients encrypt and prove under)."""
    return await connection.fetchval(
        "SELECT public_params FROM tenants WHERE tenant_id = $1", tenant_id
    )


# --- ciphertexts -----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCiphertext:
    handle: bytes
    ciphertext: bytes
    version: int
    fhe_type: int


async def insert_ciphertext(
    connection: asyncpg.Connection,
    tenant_id: int,
    handle: bytes,
    ciphertext: bytes,
    version: int,
    fhe_type: int,
) -> bool:
    """Store a ciphertext once; True if this call stored it."""
    status = await connection.execute(
        """INSERT INTO ciphertexts (tenant_id, handle, ciphertext, ciphertext_version,
                                    ciphertext_type)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, handle) DO NOTHING""",
        tenant_id,
        handle,
        ciphertext,
        version,
        fhe_type,
    )
    return status.endswith(" 1")


async def get_ciphertexts(
    connection: asyncpg.Connection, tenant_id: int, handles: Sequence[bytes]
) -> dict[bytes, StoredCiphertext]:
    rows = await connection.fetch(
        """SELECT handle, ciphertext, ciphertext_version, ciphertext_type FROM ciphertexts
           WHERE tenant_id = $1 AND handle = ANY($2::bytea[])""",
        tenant_id,
        list(handles),
    )
    return {
        bytes(r["handle"]): StoredCiphertext(
            bytes(r["handle"]),
            bytes(r["ciphertext"]),
            r["ciphertext_version"],
            r["ciphertext_type"],
        )
        for r in rows
    }


# --- batches and computations ----------------------------------------------------------


async def admit_batch(connection: asyncpg.Connection, admission: BatchAdmission) -> bool:
    """Write a batch and its computations in one transaction.

    Returns False, writing nothing, when the batch id was admitted before (the
    resource was re-applied or re-created with the same spec). A computation whose
    handle another batch already holds is linked, not duplicated: handles are
    derived deterministically, so equal handles are equal computations.
    """
    ordered = check_batch(admission.rows)
    async with connection.transaction():
        inserted = await connection.fetchval(
            """INSERT INTO batches (batch_id, tenant_id, namespace, name, spec_hash, uid, total)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id""",
            admission.batch_id,
            admission.tenant_id,
            admission.namespace,
            admission.name,
            admission.spec_hash,
            admission.uid,
            len(ordered),
        )
        if inserted is None:
            await connection.execute(
                "UPDATE batches SET uid = $2 WHERE batch_id = $1 AND uid IS DISTINCT FROM $2",
                admission.batch_id,
                admission.uid,
            )
            return False
        await connection.executemany(
            """INSERT INTO computations (tenant_id, output_handle, output_type, fhe_operation,
                   dependencies, is_scalar, transaction_id, dependence_chain_id, schedule_order)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, nextval('computations_schedule_order'))
               ON CONFLICT (tenant_id, output_handle) DO NOTHING""",
            [
                (
                    admission.tenant_id,
                    r.output_handle,
                    r.output_type,
                    r.fhe_operation,
                    list(r.dependencies),
                    r.is_scalar,
                    r.transaction_id,
                    r.dependence_chain_id,
                )
                for r in ordered
            ],
        )
        await connection.executemany(
            """INSERT INTO batch_computations (batch_id, tenant_id, output_handle, position,
                   is_output)
               VALUES ($1, $2, $3, $4, $5)""",
            [
                (
                    admission.batch_id,
                    admission.tenant_id,
                    r.output_handle,
                    i,
                    r.output_handle in admission.outputs,
                )
                for i, r in enumerate(ordered)
            ],
        )
        await notify(connection, WORK_AVAILABLE, admission.batch_id)
    return True


async def complete_computation(
    connection: asyncpg.Connection,
    tenant_id: int,
    handle: bytes,
    ciphertext: bytes,
    version: int,
    fhe_type: int,
) -> None:
    """Store the result and mark it completed, in the caller's claim transaction."""
    require_transaction(connection)
    await insert_ciphertext(connection, tenant_id, handle, ciphertext, version, fhe_type)
    await connection.execute(
        """UPDATE computations SET is_completed = true, completed_at = now(),
                                   retry_after = NULL
           WHERE tenant_id = $1 AND output_handle = $2""",
        tenant_id,
        handle,
    )
    await notify(connection, CIPHERTEXT_COMPUTED, "0x" + handle.hex())


async def mark_error(
    connection: asyncpg.Connection, tenant_id: int, handle: bytes, reason: str
) -> list[bytes]:
    """An irrecoverable failure: mark it and, transitively, every computation that
    consumes it (they can never run). Returns the handles of those dependents."""
    await connection.execute(
        """UPDATE computations SET is_error = true, error_message = $3
           WHERE tenant_id = $1 AND output_handle = $2""",
        tenant_id,
        handle,
        storable_reason(reason),
    )
    rows = await connection.fetch(
        """WITH RECURSIVE downstream(handle) AS (
               SELECT c.output_handle FROM computations c
               WHERE c.tenant_id = $1 AND c.dependencies @> ARRAY[$2::bytea]
                 AND NOT c.is_completed
             UNION
               SELECT c.output_handle FROM computations c JOIN downstream d
                 ON c.dependencies @> ARRAY[d.handle]
               WHERE c.tenant_id = $1 AND NOT c.is_completed)
           UPDATE computations SET is_error = true,
                  error_message = 'input 0x' || encode($2, 'hex') || ' failed: ' || $3
           WHERE tenant_id = $1 AND output_handle IN (SELECT handle FROM downstream)
             AND NOT is_error
           RETURNING output_handle""",
        tenant_id,
        handle,
        storable_reason(reason),
    )
    return [bytes(r["output_handle"]) for r in rows]


@dataclass(frozen=True)
class Batch:
    batch_id: str
    tenant_id: int
    namespace: str
    name: str
    total: int
    released: bool


async def get_batch(connection: asyncpg.Connection, batch_id: str) -> Batch | None:
    row = await connection.fetchrow(
        """SELECT batch_id, tenant_id, namespace, name, total,
                  released_at IS NOT NULL AS released
           FROM batches WHERE batch_id = $1""",
        batch_id,
    )
    return Batch(**dict(row)) if row else None


@dataclass(frozen=True, kw_only=True)
class BatchComputation(ComputationRow):
    """A computation of a batch as the job runner sees it: the row, with its place in
    the schedule and its state."""

    schedule_order: int
    is_completed: bool
    is_error: bool
    error_message: str | None


async def batch_computations(
    connection: asyncpg.Connection, batch_id: str
) -> list[BatchComputation]:
    rows = await connection.fetch(
        """SELECT c.output_handle, c.output_type, c.fhe_operation, c.dependencies,
                  c.is_scalar, c.dependence_chain_id, c.schedule_order, c.is_completed,
                  c.is_error, c.error_message
           FROM batch_computations bc
           JOIN computations c ON c.tenant_id = bc.tenant_id
                              AND c.output_handle = bc.output_handle
           WHERE bc.batch_id = $1 ORDER BY bc.position""",
        batch_id,
    )
    return [BatchComputation(**_computation_fields(r)) for r in rows]


@dataclass(frozen=True)
class LockedComputation:
    is_completed: bool
    is_error: bool
    error_message: str | None


async def lock_computation(
    connection: asyncpg.Connection, tenant_id: int, handle: bytes
) -> LockedComputation | None:
    """Claim one computation for this transaction; None when another worker holds it
    (or it does not exist). The lock ends with the transaction, so a crashed worker's
    claim is released with its connection."""
    require_transaction(connection)
    row = await connection.fetchrow(
        """SELECT is_completed, is_error, error_message FROM computations
           WHERE tenant_id = $1 AND output_handle = $2 FOR UPDATE SKIP LOCKED""",
        tenant_id,
        handle,
    )
    return LockedComputation(**dict(row)) if row else None


@dataclass(frozen=True)
class InputState:
    """Where an input handle stands: stored, failed (with why), or neither yet."""

    stored: bool
    failed: str | None = None


async def host_inputs_awaiting_verification(
    connection: asyncpg.Connection, tenant_id: int, handles: Sequence[bytes]
) -> dict[bytes, bytes]:
    """Of ``handles``, those the host accepted as inputs (VerifyInput) whose ciphertext
    the verify stage has not stored: handle -> the host transaction."""
    rows = await connection.fetch(
        """SELECT DISTINCT ON (v.handle) v.handle, v.transaction_id
           FROM host_verified_inputs v
           WHERE v.tenant_id = $1 AND v.handle = ANY($2::bytea[])
             AND NOT EXISTS (SELECT 1 FROM ciphertexts t
                             WHERE t.tenant_id = v.tenant_id AND t.handle = v.handle)
           ORDER BY v.handle, v.created_at""",
        tenant_id,
        list(handles),
    )
    return {bytes(r["handle"]): bytes(r["transaction_id"]) for r in rows}


async def input_states(
    connection: asyncpg.Connection, tenant_id: int, handles: Sequence[bytes]
) -> dict[bytes, InputState]:
    rows = await connection.fetch(
        """SELECT h.handle,
                  EXISTS (SELECT 1 FROM ciphertexts t
                          WHERE t.tenant_id = $1 AND t.handle = h.handle) AS stored,
                  (SELECT coalesce(c.error_message, 'failed') FROM computations c
                   WHERE c.tenant_id = $1 AND c.output_handle = h.handle
                     AND c.is_error) AS failed
           FROM unnest($2::bytea[]) AS h(handle)""",
        tenant_id,
        list(handles),
    )
    return {bytes(r["handle"]): InputState(r["stored"], r["failed"]) for r in rows}


@dataclass(frozen=True)
class BatchProgress:
    total: int
    completed: int
    failed: int

    @property
    def pending(self) -> int:
        return self.total - self.completed - self.failed


async def batch_progress(connection: asyncpg.Connection, batch_id: str) -> BatchProgress | None:
    row = await connection.fetchrow(
        """SELECT b.total,
                  count(*) FILTER (WHERE c.is_completed) AS completed,
                  count(*) FILTER (WHERE c.is_error AND NOT c.is_completed) AS failed
           FROM batches b
           LEFT JOIN batch_computations bc ON bc.batch_id = b.batch_id
           LEFT JOIN computations c ON c.tenant_id = bc.tenant_id
                                   AND c.output_handle = bc.output_handle
           WHERE b.batch_id = $1 GROUP BY b.total""",
        batch_id,
    )
    return BatchProgress(row["total"], row["completed"], row["failed"]) if row else None


async def release_batch(connection: asyncpg.Connection, batch_id: str) -> bool:
    """The finalizer's step: record that the resource is gone. Results stay."""
    status = await connection.execute(
        "UPDATE batches SET released_at = now() WHERE batch_id = $1 AND released_at IS NULL",
        batch_id,
    )
    return status.endswith(" 1")


async def known_handles(
    connection: asyncpg.Connection, tenant_id: int, handles: Sequence[bytes]
) -> set[bytes]:
    """The handles that exist for the tenant: stored, or a computation will make them."""
    rows = await connection.fetch(
        """SELECT h.handle FROM unnest($2::bytea[]) AS h(handle)
           WHERE EXISTS (SELECT 1 FROM ciphertexts t
                         WHERE t.tenant_id = $1 AND t.handle = h.handle)
              OR EXISTS (SELECT 1 FROM computations c
                         WHERE c.tenant_id = $1 AND c.output_handle = h.handle)""",
        tenant_id,
        list(handles),
    )
    return {bytes(r["handle"]) for r in rows}


async def transaction_computations(
    connection: asyncpg.Connection, tenant_id: int, transactions: Sequence[bytes]
) -> list[ComputationRow]:
    """The computations listeners stored for these transactions (a ``source`` batch):
    those stored with the transaction, and those it emitted again (linked)."""
    rows = await connection.fetch(
        """SELECT c.output_handle, c.output_type, c.fhe_operation, c.dependencies,
                  c.is_scalar, c.transaction_id, c.dependence_chain_id
           FROM computations c
           WHERE c.tenant_id = $1
             AND (c.transaction_id = ANY($2::bytea[]) OR EXISTS (
                    SELECT 1 FROM transaction_computations l
                    WHERE l.tenant_id = c.tenant_id AND l.output_handle = c.output_handle
                      AND l.transaction_id = ANY($2::bytea[])))
           ORDER BY c.schedule_order""",
        tenant_id,
        list(transactions),
    )
    return [ComputationRow(**_computation_fields(r)) for r in rows]
