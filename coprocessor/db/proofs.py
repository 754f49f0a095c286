"""The verify_proofs queue: input lists waiting for their proof to be checked.

A request row is written once (by the gateway listener, or ``insert_request``); the
verify stage claims pending rows with FOR UPDATE SKIP LOCKED, and in the same
transaction stores the expanded ciphertexts and the verdict, so a pod that dies half
way leaves the row pending and nothing half-stored.

A request read from the gateway (``from_gateway``) also owes the gateway its verdict:
the row is then an outbox too (``unanswered`` ... ``mark_sent``), sent by the
committer with the same write-ahead discipline as the digests and ACL calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from .outbox import Outbox
from .queries import (
    ZKPOK_COMPUTED,
    ZKPOK_NEW_WORK,
    Tenant,
    get_tenant_by_id,
    notify,
    require_transaction,
    storable_reason,
)

log = logging.getLogger(__name__)

NO_EXTRA_DATA = b"\x00"  # what Zama's gateway and SDK pass as extraData (version 0)


@dataclass(frozen=True)
class ProofRequest:
    zk_proof_id: int
    chain_id: int
    contract_address: bytes
    user_address: bytes
    input: bytes | None
    acl_address: bytes | None = None  # the host chain's ACL; None: FHE_HOST_ACL_ADDRESS
    extra_data: bytes = NO_EXTRA_DATA
    from_gateway: bool = False  # the gateway is owed a verdict transaction
    gateway_block_hash: bytes | None = None


_REQUEST_COLUMNS = """zk_proof_id, chain_id, contract_address, user_address, input,
                      acl_address, extra_data, from_gateway, gateway_block_hash"""


@dataclass(frozen=True)
class ChainTenant:
    """The tenant whose keys serve a chain (its newest: ActivateKey rotates keys), with
    the compact public key that input lists are encrypted under."""

    tenant: Tenant
    public_params: bytes | None


async def insert_request(connection: asyncpg.Connection, request: ProofRequest) -> bool:
    """Queue a request once (its id is the gateway's); True if this call queued it.

    Read again from the gateway with other content - a reorg, and the gateway gave the id
    to another request on the new branch - it is queued anew, even if answered: the
    verdict owed is on the new request. A hand-queued row never replaces one."""
    async with connection.transaction():
        status = await connection.execute(
            f"""INSERT INTO verify_proofs ({_REQUEST_COLUMNS})
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (zk_proof_id) DO NOTHING""",
            *_request_values(request),
        )
        inserted = status.endswith(" 1")
        if not inserted and request.from_gateway:
            inserted = await _requeue_if_changed(connection, request)
        if inserted:
            await notify(connection, ZKPOK_NEW_WORK, str(request.zk_proof_id))
    return inserted


def _content(request: ProofRequest) -> tuple[object, ...]:
    """What a request asks (not where it was read from)."""
    return (
        request.chain_id,
        request.contract_address,
        request.user_address,
        request.input,
        request.acl_address,
        request.extra_data,
    )


def _request_values(request: ProofRequest) -> tuple[object, ...]:
    """The values of _REQUEST_COLUMNS, in order."""
    return (
        request.zk_proof_id,
        *_content(request),
        request.from_gateway,
        request.gateway_block_hash,
    )


async def _requeue_if_changed(connection: asyncpg.Connection, request: ProofRequest) -> bool:
    row = await connection.fetchrow(
        f"SELECT {_REQUEST_COLUMNS} FROM verify_proofs WHERE zk_proof_id = $1 FOR UPDATE",
        request.zk_proof_id,
    )
    assert row is not None
    same = _content(_request(row)) == _content(request)
    if same:  # the same request (perhaps in another block of a reorg): nothing owed anew
        await connection.execute(
            "UPDATE verify_proofs SET gateway_block_hash = $2, from_gateway = true "
            "WHERE zk_proof_id = $1",
            request.zk_proof_id,
            request.gateway_block_hash,
        )
        return False
    log.warning(
        "input request id reused with other content: queued anew",
        extra={"fields": {"zk_proof_id": request.zk_proof_id}},
    )
    await connection.execute(
        f"""UPDATE verify_proofs SET ({_REQUEST_COLUMNS}) =
                ($1, $2, $3, $4, $5, $6, $7, $8, $9),
                verified = NULL, handles = NULL, error_message = NULL, verified_at = NULL,
                txn_is_sent = false, txn_hash = NULL, txn_signer = NULL, txn_nonce = NULL,
                txn_block_number = NULL, txn_sent_at = NULL, txn_retry_count = 0,
                txn_last_error = NULL
            WHERE zk_proof_id = $1""",
        *_request_values(request),
    )
    return True


async def claim_pending(
    connection: asyncpg.Connection, passed_over: Sequence[int] = ()
) -> ProofRequest | None:
    """The oldest pending request but those passed over (left pending by this run),
    locked until the caller's transaction ends; rows other pods hold are skipped."""
    require_transaction(connection)
    row = await connection.fetchrow(
        f"""SELECT {_REQUEST_COLUMNS}
           FROM verify_proofs WHERE verified IS NULL AND zk_proof_id <> ALL($1::bigint[])
           ORDER BY created_at, zk_proof_id LIMIT 1 FOR UPDATE SKIP LOCKED""",
        list(passed_over),
    )
    return _request(row) if row else None


def _request(row: asyncpg.Record) -> ProofRequest:
    fields = dict(row)
    for name in ("contract_address", "user_address", "input", "acl_address", "extra_data"):
        if fields[name] is not None:
            fields[name] = bytes(fields[name])
    if fields["gateway_block_hash"] is not None:
        fields["gateway_block_hash"] = bytes(fields["gateway_block_hash"])
    return ProofRequest(**fields)


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


# --- the verdict's outbox ------------------------------------------------------------


@dataclass(frozen=True)
class ResponseRow:
    """A verdict owed to the gateway: ``verifyProofResponse`` with the handles (signed by
    the coprocessor's signer) when verified, ``rejectProofResponse`` when not."""

    zk_proof_id: int
    chain_id: int
    contract_address: bytes
    user_address: bytes
    verified: bool
    handles: tuple[bytes, ...]
    extra_data: bytes
    txn_is_sent: bool
    txn_hash: bytes | None
    txn_last_error: str | None


_RESPONSE_COLUMNS = """zk_proof_id, chain_id, contract_address, user_address, verified,
                       handles, extra_data, txn_is_sent, txn_hash, txn_last_error"""


def _response(row: asyncpg.Record) -> ResponseRow:
    packed = bytes(row["handles"] or b"")
    return ResponseRow(
        row["zk_proof_id"],
        row["chain_id"],
        bytes(row["contract_address"]),
        bytes(row["user_address"]),
        row["verified"],
        tuple(packed[i : i + 32] for i in range(0, len(packed), 32)),
        bytes(row["extra_data"]),
        row["txn_is_sent"],
        bytes(row["txn_hash"]) if row["txn_hash"] is not None else None,
        row["txn_last_error"],
    )


async def unanswered(
    connection: asyncpg.Connection, limit: int, max_retries: int
) -> list[ResponseRow]:
    """Verdicts of gateway requests not on the gateway yet (or pending in a transaction),
    oldest verdict first; a row refused ``max_retries`` times is left out (its
    ``txn_last_error`` says why)."""
    rows = await connection.fetch(
        f"""SELECT {_RESPONSE_COLUMNS} FROM verify_proofs
            WHERE verified IS NOT NULL AND from_gateway AND NOT txn_is_sent
              AND txn_retry_count < $2
            ORDER BY verified_at, zk_proof_id LIMIT $1""",
        limit,
        max_retries,
    )
    return [_response(r) for r in rows]


async def reload_responses(
    connection: asyncpg.Connection, zk_proof_ids: Sequence[int]
) -> list[ResponseRow]:
    rows = await connection.fetch(
        f"""SELECT {_RESPONSE_COLUMNS} FROM verify_proofs
            WHERE zk_proof_id = ANY($1::bigint[]) AND verified IS NOT NULL AND from_gateway""",
        list(zk_proof_ids),
    )
    return [_response(r) for r in rows]


# Write-ahead verbs (record_pending, mark_sent, reset_unsent), as the other outboxes.
VERDICTS = Outbox("verify_proofs", "zk_proof_id")
record_pending = VERDICTS.record_pending
mark_sent = VERDICTS.mark_sent
reset_unsent = VERDICTS.reset_unsent
