"""Small builders shared by the database tests."""

from coprocessor.db import queries
from coprocessor.db.rows import BatchAdmission, ComputationRow
from coprocessor.types import FheType, Op

CHAIN_ID = 12345  # the tenants' host chain, in the handles handle(...) makes by default
KMS_KEY_ID = (4 << 248) + 1  # a KMS key id as KMSGeneration numbers them (type 4, counter 1)


def handle(n: int, fhe_type: FheType = FheType.Uint64, chain_id: int = CHAIN_ID) -> bytes:
    return n.to_bytes(21, "big") + b"\xff" + chain_id.to_bytes(8, "big") + bytes([fhe_type, 0])


def add(out: int, a: int, b: int, chain: int | None = None) -> ComputationRow:
    return ComputationRow(
        handle(out),
        FheType.Uint64,
        Op.Add,
        (handle(a), handle(b)),
        dependence_chain_id=None if chain is None else bytes([chain]) * 32,
    )


async def tenant(connection, name: str = "acme", kms_key_id: int | None = KMS_KEY_ID) -> int:
    """A tenant of chain CHAIN_ID; activated by the KMS under ``kms_key_id`` (None: not yet)."""
    created = await queries.create_tenant(
        connection, name, CHAIN_ID, b"key-1", "reference", kms_key_id=kms_key_id
    )
    return created.tenant_id


def admission(tenant_id: int, rows, name: str = "b1", spec_hash: str = "h1") -> BatchAdmission:
    return BatchAdmission(
        batch_id=f"fhe/{name}@{spec_hash}",
        tenant_id=tenant_id,
        namespace="fhe",
        name=name,
        spec_hash=spec_hash,
        uid="uid-1",
        rows=tuple(rows),
    )


async def store_inputs(connection, tenant_id: int, numbers) -> None:
    for n in numbers:
        await queries.insert_ciphertext(connection, tenant_id, handle(n), b"ct", 0, FheType.Uint64)
