"""One keyset per backend for the whole test session.

Generating a TFHE-rs keyset takes tens of seconds and its server key is 465 MB, so
the engine harness and every test tenant share one per backend; the tenant CLI tests
still generate their own, through the product's path.
"""

from __future__ import annotations

import functools

from coprocessor.fhe.engine import Keyset, get_backend


@functools.cache
def session_keyset(backend_name: str) -> Keyset:
    return get_backend(backend_name).generate_keyset()
