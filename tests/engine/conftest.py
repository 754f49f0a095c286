"""One keyset per backend and session: key generation takes tens of seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from coprocessor.fhe.engine import Client, Evaluator, OpRequest, backend_names, get_backend
from coprocessor.types import FheType, Op


@dataclass
class Harness:
    """Encrypt, evaluate and decrypt through the engine interface only."""

    name: str
    client: Client = field(repr=False)
    evaluator: Evaluator = field(repr=False)
    server_key: bytes = field(repr=False)  # hundreds of MB: never in a failure report

    def enc(self, value: int, fhe_type: FheType) -> bytes:
        return self.client.encrypt(value, fhe_type)

    def dec(self, ciphertext: bytes) -> int:
        return self.client.decrypt(ciphertext)

    def run(self, op: Op, *operands: bytes, scalars: tuple[int, ...] = (),
            result_type: FheType | None = None, seed: bytes = b"") -> bytes:
        return self.evaluator.evaluate(OpRequest(op, tuple(operands), tuple(scalars),
                                                 result_type, seed))


@pytest.fixture(scope="session", params=backend_names())
def engine(request) -> Harness:
    backend = get_backend(request.param)
    keyset = backend.generate_keyset()
    return Harness(backend.name, backend.client(keyset.client_key, keyset.key_id),
                   backend.evaluator(keyset.server_key), keyset.server_key)
