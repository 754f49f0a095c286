"""What the KMS activated (``ActivateKey`` / ``ActivateCrs``), as this deployment applied it.

A row is written only after every object of the activation was fetched and matched its
digest, in the same transaction as what it changes (the tenant, the pinned CRS), so an
activation is applied once and never half.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class KmsCrs:
    crs_id: int
    object_key: str  # in this deployment's bucket
    digest: bytes


async def key_applied(connection: asyncpg.Connection, kms_key_id: int) -> int | None:
    """The tenant an activated key became, None when it was not applied yet."""
    return await connection.fetchval(
        "SELECT tenant_id FROM kms_keys WHERE kms_key_id = $1", kms_key_id
    )


async def record_key(
    connection: asyncpg.Connection,
    kms_key_id: int,
    tenant_id: int,
    digests: dict[str, str],
    storage_urls: Sequence[str],
) -> None:
    await connection.execute(
        """INSERT INTO kms_keys (kms_key_id, tenant_id, digests, storage_urls)
           VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (kms_key_id) DO NOTHING""",
        kms_key_id,
        tenant_id,
        json.dumps(digests),
        list(storage_urls),
    )


async def record_crs(
    connection: asyncpg.Connection,
    crs_id: int,
    object_key: str,
    digest: bytes,
    storage_urls: Sequence[str],
) -> bool:
    """Pin a CRS (idempotent by id); True if this call pinned it."""
    status = await connection.execute(
        """INSERT INTO kms_crs (crs_id, object_key, digest, storage_urls)
           VALUES ($1, $2, $3, $4) ON CONFLICT (crs_id) DO NOTHING""",
        crs_id,
        object_key,
        digest,
        list(storage_urls),
    )
    return status.endswith(" 1")


async def active_crs(connection: asyncpg.Connection) -> KmsCrs | None:
    """The CRS inputs are proven against: the one the KMS activated last."""
    row = await connection.fetchrow(
        """SELECT crs_id, object_key, digest FROM kms_crs
           ORDER BY activated_at DESC, crs_id DESC LIMIT 1"""
    )
    if row is None:
        return None
    return KmsCrs(int(row["crs_id"]), row["object_key"], bytes(row["digest"]))


# --- the queue of activations read from the gateway -----------------------------------


@dataclass(frozen=True)
class Activation:
    activation_id: int
    kind: str  # "key" | "crs"
    material_id: int
    storage_urls: tuple[str, ...]
    digests: dict[str, str]  # object directory -> hex digest
    attempts: int


async def queue_activation(
    connection: asyncpg.Connection,
    kind: str,
    material_id: int,
    storage_urls: Sequence[str],
    digests: dict[str, str],
) -> bool:
    """Queue an activation once (read again after a restart or reorg: nothing new)."""
    status = await connection.execute(
        """INSERT INTO kms_activations (kind, material_id, storage_urls, digests)
           VALUES ($1, $2, $3, $4::jsonb)
           ON CONFLICT (kind, material_id, digests) DO NOTHING""",
        kind,
        material_id,
        list(storage_urls),
        json.dumps(digests, sort_keys=True),
    )
    return status.endswith(" 1")


async def due_activations(connection: asyncpg.Connection, limit: int = 8) -> list[Activation]:
    rows = await connection.fetch(
        """SELECT activation_id, kind, material_id, storage_urls, digests, attempts
           FROM kms_activations WHERE state = 'pending' AND next_attempt_at <= now()
           ORDER BY activation_id LIMIT $1""",
        limit,
    )
    return [
        Activation(
            r["activation_id"],
            r["kind"],
            int(r["material_id"]),
            tuple(r["storage_urls"]),
            json.loads(r["digests"]) if isinstance(r["digests"], str) else dict(r["digests"]),
            r["attempts"],
        )
        for r in rows
    ]


async def settle_activation(
    connection: asyncpg.Connection, activation_id: int, state: str, error: str | None = None
) -> None:
    await connection.execute(
        """UPDATE kms_activations SET state = $2, last_error = $3, attempts = attempts + 1
           WHERE activation_id = $1""",
        activation_id,
        state,
        error,
    )


async def retry_activation(
    connection: asyncpg.Connection, activation_id: int, error: str, delay_s: float
) -> None:
    await connection.execute(
        """UPDATE kms_activations
           SET attempts = attempts + 1, last_error = $2,
               next_attempt_at = now() + make_interval(secs => $3)
           WHERE activation_id = $1""",
        activation_id,
        error,
        delay_s,
    )


async def key_digests(connection: asyncpg.Connection, kms_key_id: int) -> dict[str, str] | None:
    """The digests an applied key was activated with."""
    value = await connection.fetchval(
        "SELECT digests FROM kms_keys WHERE kms_key_id = $1", kms_key_id
    )
    if value is None:
        return None
    return json.loads(value) if isinstance(value, str) else dict(value)
