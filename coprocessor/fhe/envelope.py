"""The bytes every stored ciphertext and key starts with.

A backend's own serialization says nothing about *which* keys made it, so feeding a
ciphertext to another backend, another tenant's keys or the wrong type would compute
garbage silently. The envelope makes those mistakes loud:

    magic "FHE1" | backend id (1) | type code (1) | kind (1) | key digest (8) | payload

The key digest is the first 8 bytes of the SHA-256 of the tenant's server key, so a
ciphertext names the keyset it belongs to without carrying it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

from ..errors import Irrecoverable
from ..types import FheType

MAGIC = b"FHE1"
HEADER_LENGTH = len(MAGIC) + 3 + 8

BACKEND_IDS = {"concrete": 1, "tfhe-rs": 2}
BACKEND_NAMES = {value: key for key, value in BACKEND_IDS.items()}


class Kind(IntEnum):
    CIPHERTEXT = 1  # computable ("ct64" in the reference)
    SQUASHED = 2  # decryption-ready ("ct128")


class BadCiphertext(Irrecoverable):
    """Bytes that cannot be the ciphertext the caller expects; the message says why."""


def key_digest(server_key: bytes) -> bytes:
    return hashlib.sha256(server_key).digest()[:8]


@dataclass(frozen=True)
class Envelope:
    backend: str
    fhe_type: FheType
    kind: Kind
    key_digest: bytes
    payload: bytes

    def to_bytes(self) -> bytes:
        return (
            MAGIC
            + bytes([BACKEND_IDS[self.backend], int(self.fhe_type), int(self.kind)])
            + self.key_digest
            + self.payload
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadCiphertext(f"ciphertext must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < HEADER_LENGTH or not data.startswith(MAGIC):
            raise BadCiphertext("not a coprocessor ciphertext (bad magic or too short)")
        backend_id, type_code, kind = data[4], data[5], data[6]
        if backend_id not in BACKEND_NAMES:
            raise BadCiphertext(f"unknown backend id {backend_id}")
        try:
            fhe_type, parsed_kind = FheType(type_code), Kind(kind)
        except ValueError:
            raise BadCiphertext(f"bad type code {type_code} or kind {kind}") from None
        return cls(BACKEND_NAMES[backend_id], fhe_type, parsed_kind, data[7:15], data[15:])

    def expect(
        self,
        *,
        backend: str,
        digest: bytes,
        fhe_type: FheType | None = None,
        kind: Kind = Kind.CIPHERTEXT,
    ) -> Envelope:
        """Raise BadCiphertext unless this is what the caller can compute on."""
        if self.backend != backend:
            raise BadCiphertext(f"ciphertext is from backend {self.backend!r}, not {backend!r}")
        if self.key_digest != digest:
            raise BadCiphertext(
                "ciphertext was made under another tenant's keys "
                f"(key {self.key_digest.hex()}, expected {digest.hex()})"
            )
        if fhe_type is not None and self.fhe_type is not fhe_type:
            raise BadCiphertext(f"ciphertext is {self.fhe_type.name}, expected {fhe_type.name}")
        if self.kind is not kind:
            raise BadCiphertext(
                f"ciphertext is {self.kind.name.lower()}, expected {kind.name.lower()}"
            )
        return self
