"""The digests of generated CRSs (table ``deployment_crs``): one row per backend and
size, written once (the first writer wins; every later reader compares)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class CrsPin:
    object_key: str
    digest: bytes
    pinned_at: datetime


async def pin(
    connection: asyncpg.Connection, backend: str, max_bits: int, object_key: str, digest: bytes
) -> CrsPin:
    """Record ``digest`` unless a pin exists; return the pin that holds either way."""
    await connection.execute(
        """INSERT INTO deployment_crs (backend, max_bits, object_key, digest)
           VALUES ($1, $2, $3, $4) ON CONFLICT (backend, max_bits) DO NOTHING""",
        backend,
        max_bits,
        object_key,
        digest,
    )
    found = await pinned(connection, backend, max_bits)
    assert found is not None  # just written, or written by a racer
    return found


async def pinned(connection: asyncpg.Connection, backend: str, max_bits: int) -> CrsPin | None:
    row = await connection.fetchrow(
        """SELECT object_key, digest, pinned_at FROM deployment_crs
           WHERE backend = $1 AND max_bits = $2""",
        backend,
        max_bits,
    )
    return CrsPin(row["object_key"], bytes(row["digest"]), row["pinned_at"]) if row else None
