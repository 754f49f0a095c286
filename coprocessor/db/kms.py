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
