"""The CRS (common reference string) that input proofs are made and verified against.

It is independent of any tenant's keys, and clients and coprocessors must all use the
same one, so a deployment has exactly one per backend and size, in S3 at
``crs/<backend>-<max bits>``. The first process to need it generates it and writes it
with a conditional put; a racer that loses reads the winner's.
"""

from __future__ import annotations

from .errors import UserError
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
