"""The engine harness: one keyset per backend and session (tests/keysets.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from coprocessor.fhe.engine import Client, Evaluator, OpRequest, backend_names, get_backend
from coprocessor.types import FheType, Op

from ..keysets import session_keyset


@dataclass
class Harness:
    """Encrypt, evaluate and decrypt through the engine interface only."""

    name: str
    client: Client = field(repr=False)
    evaluator: Evaluator = field(repr=False)
    server_key: bytes = field(repr=False)  # hundreds of MB: never in a failure report
    public_params: bytes = field(repr=False, default=b"")

    def enc(self, value: int, fhe_type: FheType) -> bytes:
        return self.client.encrypt(value, fhe_type)

    def dec(self, ciphertext: bytes) -> int:
        return self.client.decrypt(ciphertext)

    def run(
        self,
        op: Op,
        *operands: bytes,
        scalars: tuple[int, ...] = (),
        result_type: FheType | None = None,
        seed: bytes = b"",
    ) -> bytes:
        return self.evaluator.evaluate(
            OpRequest(op, tuple(operands), tuple(scalars), result_type, seed)
        )


_HARNESSES: dict[str, Harness] = {}


def harness_for(name: str) -> Harness:
    """One keyset per backend for the whole session, whichever fixture asks first."""
    if name not in _HARNESSES:
        backend = get_backend(name)
        keyset = session_keyset(name)
        _HARNESSES[name] = Harness(
            backend.name,
            backend.client(keyset.client_key, keyset.key_id),
            backend.evaluator(keyset.server_key),
            keyset.server_key,
            keyset.public_params,
        )
    return _HARNESSES[name]


@pytest.fixture(scope="session", params=backend_names())
def engine(request) -> Harness:
    return harness_for(request.param)


@pytest.fixture(scope="session")
def tfhe_engine() -> Harness:
    """Input proofs exist only where clients can encrypt under a public key: tfhe-rs."""
    return harness_for("tfhe-rs")
