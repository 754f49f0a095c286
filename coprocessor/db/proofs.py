"""The verify_proofs queue: input lists waiting for their proof to be checked.

A request row is written once (by the gateway listener, or ``insert_request``); the
verify stage claims pending rows with FOR UPDATE SKIP LOCKED, and in the same
transaction stores the expanded ciphertexts and the verdict, so a pod that dies half
way leaves the row pending and nothing half-stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from .queries import (
    ZKPOK_COMPUTED,
    ZKPOK_NEW_WORK,
    Tenant,
    get_tenant_by_id,
    notify,
    require_transaction,
    storable_reason,
)


@dataclass(frozen=True)
class ProofRequest:
    zk_proof_id: int
    chain_id: int
    contract_address: bytes
    user_address: bytes
    input: bytes | None


@dataclass(frozen=True)
class ChainTenant:
    """The tenant whose keys serve a chain (its newest: ActivateKey rotates keys), with
    the compact public key that input lists are encrypted under."""

    tenant: Tenant
    public_params: bytes | None


async def insert_request(connection: asyncpg.Connection, request: ProofRequest) -> bool:
    """Queue a request once (its id is the gateway's); True if this call queued it."""
    async with connection.transaction():
        status = await connection.execute(
            """INSERT INTO verify_proofs (zk_proof_id, chain_id, contract_address,
                                          user_address, input)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (zk_proof_id) DO NOTHING""",
            request.zk_proof_id,
            request.chain_id,
            request.contract_address,
            request.user_address,
            request.input,
        )
        inserted = status.endswith(" 1")
        if inserted:
            await notify(connection, ZKPOK_NEW_WORK, str(request.zk_proof_id))
    return inserted


async def claim_pending(
    connection: asyncpg.Connection, passed_over: Sequence[int] = ()
) -> ProofRequest | None:
    """The oldest pending request but those passed over (left pending by this run),
    locked until the caller's transaction ends; rows other pods hold are skipped."""
    require_transaction(connection)
    row = await connection.fetchrow(
        """SELECT zk_proof_id, chain_id, contract_address, user_address, input
           FROM verify_proofs WHERE verified IS NULL AND zk_proof_id <> ALL($1::bigint[])
           ORDER BY created_at, zk_proof_id LIMIT 1 FOR UPDATE SKIP LOCKED""",
        list(passed_over),
    )
    return ProofRequest(**dict(row)) if row else None


async def tenant_for_chain(connection: asyncpg.Connection, chain_id: int) -> ChainTenant | None:
    row = await connection.fetchrow(
        """SELECT tenant_id, public_params FROM tenants
           WHERE chain_id = $1 ORDER BY tenant_id DESC LIMIT 1""",
        chain_id,
    )
    if row is None:
        return None
    tenant = await get_tenant_by_id(connection, row["tenant_id"])
    assert tenant is not None
    return ChainTenant(tenant, row["public_params"])


async def record_verified(
    connection: asyncpg.Connection, zk_proof_id: int, handles: list[bytes]
) -> None:
    require_transaction(connection)
    await connection.execute(
        """UPDATE verify_proofs SET verified = true, handles = $2, error_message = NULL,
                  verified_at = now() WHERE zk_proof_id = $1""",
        zk_proof_id,
        b"".join(handles),
    )
    await notify(connection, ZKPOK_COMPUTED, str(zk_proof_id))


async def record_rejected(connection: asyncpg.Connection, zk_proof_id: int, reason: str) -> None:
    require_transaction(connection)
    await connection.execute(
        """UPDATE verify_proofs SET verified = false, handles = NULL, error_message = $2,
                  verified_at = now() WHERE zk_proof_id = $1""",
        zk_proof_id,
        storable_reason(reason),
    )
    await notify(connection, ZKPOK_COMPUTED, str(zk_proof_id))


@dataclass(frozen=True)
class RequestState:
    """What a requester may know of its request: verdict (None while pending), the
    input handles of a verified list and the reason of a rejected one."""

    verified: bool | None
    handles: tuple[bytes, ...]
    error_message: str | None


async def get_request_state(
    connection: asyncpg.Connection, zk_proof_id: int
) -> RequestState | None:
    row = await connection.fetchrow(
        "SELECT verified, handles, error_message FROM verify_proofs WHERE zk_proof_id = $1",
        zk_proof_id,
    )
    if row is None:
        return None
    packed = bytes(row["handles"] or b"")
    return RequestState(
        row["verified"],
        tuple(packed[i : i + 32] for i in range(0, len(packed), 32)),
        row["error_message"],
    )
