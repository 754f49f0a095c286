"""Build computation graphs in the database, with the plaintext each node must decrypt to.

Values follow the engine's reference implementation, so a test compares what the
compute stage stored, after decryption, with ``expected`` - never with a constant.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field

import asyncpg

from coprocessor.db import queries
from coprocessor.db.rows import BatchAdmission, ComputationRow
from coprocessor.fhe import reference
from coprocessor.fhe.engine import Client
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import create_tenant, key_objects, load_client
from coprocessor.types import FheType, Op, derive_handle

from ...keysets import session_keyset

CHAIN_ID = 12345


def kms_key_id_for(name: str) -> int:
    """A KMS key id in Zama's numbering ((4 << 248) + n), one per tenant name."""
    return (4 << 248) + zlib.crc32(name.encode())


@dataclass
class GraphBuilder:
    client: Client
    tenant_id: int
    context: bytes = field(default_factory=lambda: uuid.uuid4().bytes)
    rows: list[ComputationRow] = field(default_factory=list)
    inputs: dict[bytes, bytes] = field(default_factory=dict)  # handle -> ciphertext
    expected: dict[bytes, int] = field(default_factory=dict)
    types: dict[bytes, FheType] = field(default_factory=dict)

    def input(self, value: int, fhe_type: FheType) -> bytes:
        ciphertext = self.client.encrypt(value, fhe_type)
        handle = derive_handle(
            Op.TrivialEncrypt,
            (value.to_bytes(32, "big"),),
            self.context + b"input" + len(self.inputs).to_bytes(4, "big"),
            CHAIN_ID,
            fhe_type,
            scalar=True,
        ).raw
        self.inputs[handle] = ciphertext
        self.expected[handle] = value
        self.types[handle] = fhe_type
        return handle

    def node(self, op: Op, *args: bytes | int, chain: bytes | None = None) -> bytes:
        """Operands are handles; a trailing int is a scalar."""
        handles = [a for a in args if isinstance(a, bytes)]
        scalar = args[-1] if args and isinstance(args[-1], int) else None
        values = [self.expected[h] for h in handles]
        fhe_type = self.types[handles[0]]
        if op is Op.IfThenElse:
            fhe_type = self.types[handles[1]]
            value = reference.if_then_else(*values)
        else:
            rhs = scalar if scalar is not None else values[1]
            value = reference.binary(op, values[0], reference.wrap(rhs, fhe_type), fhe_type)
        result_type = FheType.Bool if op.signature.result == "bool" else fhe_type
        dependencies = tuple(handles)
        if scalar is not None:
            dependencies += (scalar.to_bytes(max(1, (scalar.bit_length() + 7) // 8), "big"),)
        handle = derive_handle(
            op, dependencies, self.context, CHAIN_ID, result_type, scalar=scalar is not None
        ).raw
        self.rows.append(
            ComputationRow(
                handle,
                int(result_type),
                int(op),
                dependencies,
                is_scalar=scalar is not None,
                dependence_chain_id=chain,
            )
        )
        self.expected[handle] = value
        self.types[handle] = result_type
        return handle

    async def admit(self, connection, name: str | None = None, outputs=()) -> str:
        """Store the inputs and admit the rows as one batch; returns the batch id.
        ``outputs`` are the handles the SNS stage publishes."""
        for handle, ciphertext in self.inputs.items():
            await queries.insert_ciphertext(
                connection, self.tenant_id, handle, ciphertext, 0, int(self.types[handle])
            )
        name = name or "b-" + uuid.uuid4().hex[:8]
        batch_id = f"fhe/{name}@{uuid.uuid4().hex[:8]}"
        await queries.admit_batch(
            connection,
            BatchAdmission(
                batch_id,
                self.tenant_id,
                "fhe",
                name,
                batch_id.split("@")[1],
                None,
                tuple(self.rows),
                frozenset(outputs),
            ),
        )
        self.rows = []
        return batch_id

    async def check(self, connection, handles) -> dict[bytes, int]:
        """Decrypt the stored results; returns {handle: plaintext} for the caller to
        compare with ``expected``."""
        stored = await queries.get_ciphertexts(connection, self.tenant_id, list(handles))
        return {h: self.client.decrypt(s.ciphertext) for h, s in stored.items()}


async def new_tenant(settings: Settings, name: str, backend: str):
    """A tenant with the session's keyset in S3 and its row, plus the client that holds
    its secret key. Call ``drop_server_key`` when done: each copy is hundreds of MB."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        created = await create_tenant(
            connection,
            ObjectStore(settings),
            settings,
            name,
            CHAIN_ID,
            backend,
            keyset=session_keyset(backend),
            kms_key_id=kms_key_id_for(name),
        )
    finally:
        await connection.close()
    return created.tenant, load_client(settings, created.tenant)


def drop_server_key(settings: Settings, tenant: queries.Tenant) -> None:
    """Free the tenant's copy of the server key in S3 (keeps the suite's disk use low)."""
    ObjectStore(settings).delete(key_objects(tenant))
