"""Small builders shared by the database tests."""

from coprocessor.db import queries
from coprocessor.db.rows import BatchAdmission, ComputationRow
from coprocessor.types import FheType, Op


def handle(n: int, fhe_type: FheType = FheType.Uint64) -> bytes:
    return n.to_bytes(21, "big") + b"\xff" + (12345).to_bytes(8, "big") + bytes([fhe_type, 0])


def add(out: int, a: int, b: int, chain: int | None = None) -> ComputationRow:
    return ComputationRow(
        handle(out),
        FheType.Uint64,
        Op.Add,
        (handle(a), handle(b)),
        dependence_chain_id=None if chain is None else bytes([chain]) * 32,
    )


async def tenant(connection, name: str = "acme") -> int:
    created = await queries.create_tenant(connection, name, 12345, b"key-1", "reference")
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
