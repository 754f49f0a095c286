"""The CRS (common reference string) that input proofs are made and verified against.

It is independent of any tenant's keys, and clients and coprocessors must all use the
same one, so a deployment has exactly one per backend and size, in S3 at
``crs/<backend>-<max bits>``. The first process to need it generates it and writes it
with a conditional put; a racer that loses reads the winner's.

S3 is not trusted to keep it: ``pinned_crs`` records its SHA-256 in PostgreSQL when it
is first made or first seen (a deployment from before pinning is pinned at its next
use), and refuses, from then on, any object that is not those bytes. A swapped CRS
would otherwise make the verify stage accept proofs made against another setup, or
reject every honest one.
"""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg

from .db import crs_pins
from .errors import Irrecoverable, UserError
from .fhe.engine import get_backend
from .storage import ObjectStore

# fhEVM's limit on the bits one input list may carry.
DEFAULT_MAX_BITS = 2048


def crs_key(backend: str, max_bits: int) -> str:
    return f"crs/{backend}-{max_bits}"


def ensure_crs(store: ObjectStore, backend: str, max_bits: int = DEFAULT_MAX_BITS) -> bytes:
    """The deployment's CRS, generated (seconds to a minute) the first time."""
    if not 0 < max_bits <= DEFAULT_MAX_BITS:
        raise UserError(f"CRS size {max_bits} bits must be in 1..{DEFAULT_MAX_BITS}")
    key = crs_key(backend, max_bits)
    try:
        return store.get(key)
    except KeyError:
        pass
    generate = getattr(get_backend(backend), "generate_crs", None)
    if generate is None:
        raise UserError(f"backend {backend!r} has no input proofs, so no CRS")
    store.put_if_absent(key, generate(max_bits))
    return store.get(key)


class CrsMismatch(Irrecoverable):
    """The CRS in S3 is not the one pinned: nothing is verified against it."""


async def pinned_crs(
    connection: asyncpg.Connection,
    store: ObjectStore,
    backend: str,
    max_bits: int = DEFAULT_MAX_BITS,
) -> bytes:
    """The deployment's generated CRS, checked against the digest pinned for it."""
    key = crs_key(backend, max_bits)
    pin = await crs_pins.pinned(connection, backend, max_bits)
    if pin is None:
        data = await asyncio.to_thread(ensure_crs, store, backend, max_bits)
        pin = await crs_pins.pin(connection, backend, max_bits, key, hashlib.sha256(data).digest())
    else:
        try:
            data = await asyncio.to_thread(store.get, pin.object_key)
        except KeyError:
            raise CrsMismatch(
                f"the CRS pinned at {pin.pinned_at:%Y-%m-%d %H:%M:%S} is missing from S3 "
                f"({pin.object_key}); a new one would not match the proofs clients make: "
                "restore the object"
            ) from None
    found = hashlib.sha256(data).digest()
    if found != pin.digest:
        raise CrsMismatch(
            f"the CRS at {pin.object_key} (sha256 {found.hex()[:16]}...) is not the one "
            f"pinned at {pin.pinned_at:%Y-%m-%d %H:%M:%S} (sha256 {pin.digest.hex()[:16]}...): "
            "refusing to verify against it"
        )
    return data
