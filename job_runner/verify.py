"""``fhe-job verify``: check the zero-knowledge proofs of queued input lists.

Each pending verify_proofs row is claimed (FOR UPDATE SKIP LOCKED, so several pods
share the queue), its list verified against the deployment's CRS, the compact public
key of the tenant serving its chain and the metadata it must be bound to (contract,
user, chain id), then expanded: one ciphertext per value, stored under the handles of
coprocessor.inputs, and the verdict recorded, all in the row's transaction. A refused
proof is an answer, not a failure: the row says why and the stage exits 0. The database
or S3 being down leaves the row pending and exits 75 (the Job retries the pod).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from coprocessor.crs import ensure_crs
from coprocessor.db import proofs, queries
from coprocessor.db.notify import NotificationWaiter
from coprocessor.db.pool import classify
from coprocessor.errors import Recoverable, UserError
from coprocessor.fhe.engine import (
    Evaluator,
    InvalidInputProof,
    UnsupportedOperation,
    input_metadata,
)
from coprocessor.fhe.envelope import Envelope
from coprocessor.inputs import input_handles
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import load_evaluator

from .executor import partial_exit_code, summary_fields

log = logging.getLogger(__name__)


@dataclass
class VerifySummary:
    """What a verify pod reports in its termination message."""

    total: int = 0  # requests this run decided
    verified: int = 0
    rejected: int = 0  # refused proofs, malformed lists, chains nobody serves
    inputs: int = 0  # ciphertexts stored by this run
    failed: int = 0
    seconds: float = 0.0
    error: str | None = None
    failures: dict[str, str] = field(default_factory=dict)  # proof id -> why rejected

    @property
    def exit_code(self) -> int:
        return partial_exit_code(self.error, self.failed)

    def as_dict(self) -> dict[str, object]:
        return summary_fields(self)


class _Rejected(Exception):
    """The request is answered 'no'; the message is stored on its row."""


class _Verifier:
    """Per-run caches: a tenant's evaluator (its server key is hundreds of MB) and the
    CRS per backend are fetched once per pod, not once per request."""

    def __init__(self, settings: Settings) -> None:
        self.store = ObjectStore(settings)
        self.crs_bits = settings.crs_max_bits
        self._evaluators: dict[int, Evaluator] = {}
        self._crs: dict[str, bytes] = {}

    def crs(self, backend: str) -> bytes:
        if backend not in self._crs:
            try:
                self._crs[backend] = ensure_crs(self.store, backend, self.crs_bits)
            except UserError as error:  # a backend without input proofs
                raise _Rejected(str(error)) from None
        return self._crs[backend]

    def evaluator(self, tenant: queries.Tenant) -> Evaluator:
        if tenant.tenant_id not in self._evaluators:
            self._evaluators[tenant.tenant_id] = load_evaluator(self.store, tenant)
        return self._evaluators[tenant.tenant_id]

    async def answer(self, connection: asyncpg.Connection,
                     request: proofs.ProofRequest) -> list[bytes]:
        """Verify and store one request's inputs; returns their handles or raises
        _Rejected. Runs inside the transaction that holds the row."""
        served = await proofs.tenant_for_chain(connection, request.chain_id)
        if served is None:
            raise _Rejected(f"no tenant serves chain id {request.chain_id}")
        if not request.input:
            raise _Rejected("the request carries no input list")
        if not served.public_params:
            raise _Rejected(f"tenant {served.tenant.name!r} has no compact public key")
        tenant = served.tenant
        evaluator = self.evaluator(tenant)
        crs = self.crs(tenant.backend)
        try:
            metadata = input_metadata("0x" + request.contract_address.hex(),
                                      "0x" + request.user_address.hex(), request.chain_id)
            loop = asyncio.get_running_loop()
            ciphertexts = await loop.run_in_executor(
                None, evaluator.verify_inputs, crs, served.public_params, request.input,
                metadata)
            types = [Envelope.from_bytes(c).fhe_type for c in ciphertexts]
            handles = input_handles(request.input, request.contract_address,
                                    request.chain_id, types)
        except (InvalidInputProof, UnsupportedOperation) as error:
            raise _Rejected(str(error)) from None
        for handle, ciphertext, fhe_type in zip(handles, ciphertexts, types, strict=True):
            await queries.insert_ciphertext(connection, tenant.tenant_id, handle, ciphertext,
                                            0, int(fhe_type))
        return handles


async def run_verify(settings: Settings, limit: int | None = None,
                     verifier: _Verifier | None = None) -> VerifySummary:
    """Answer pending requests until none is left (or ``limit`` were answered)."""
    started = time.monotonic()
    summary = VerifySummary()
    verifier = verifier or _Verifier(settings)
    connection = await asyncpg.connect(settings.database_url)
    try:
        while limit is None or summary.total < limit:
            async with connection.transaction():
                request = await proofs.claim_pending(connection)
                if request is None:
                    break
                try:
                    handles = await verifier.answer(connection, request)
                except _Rejected as rejected:
                    await proofs.record_rejected(connection, request.zk_proof_id, str(rejected))
                    summary.rejected += 1
                    summary.failures.setdefault(str(request.zk_proof_id), str(rejected)[:200])
                    log.info("input list rejected", extra={"fields": {
                        "zk_proof_id": request.zk_proof_id, "reason": str(rejected)}})
                else:
                    await proofs.record_verified(connection, request.zk_proof_id, handles)
                    summary.verified += 1
                    summary.inputs += len(handles)
                    log.info("input list verified", extra={"fields": {
                        "zk_proof_id": request.zk_proof_id, "inputs": len(handles)}})
            summary.total += 1
    finally:
        await connection.close()
        summary.seconds = time.monotonic() - started
    return summary


PASS_LIMIT = 64  # requests answered between two looks at the stop signal


async def follow(settings: Settings, stop: asyncio.Event) -> None:
    """``fhe-job verify --follow``: the long-running form (a Deployment, like the
    reference's zkproof-worker). Answers the queue, then sleeps until a request is
    queued (event_zkpok_new_work) or the poll interval passes; the database being down
    is logged and waited out. Returns when ``stop`` is set."""
    verifier = _Verifier(settings)
    async with NotificationWaiter(settings.database_url, (queries.ZKPOK_NEW_WORK,),
                                  poll_interval=settings.notify_poll_interval_s) as waiter:
        while not stop.is_set():
            answered = 0
            try:
                answered = (await run_verify(settings, PASS_LIMIT, verifier)).total
            except Exception as raised:
                error = classify(raised)
                if not isinstance(error, Recoverable):
                    raise error from raised
                log.warning("verify pass cut short", extra={"fields": {"error": str(error)}})
            if answered >= PASS_LIMIT:
                continue  # more backlog: no need to wait
            waiting = asyncio.create_task(waiter.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiting, stopping):
                task.cancel()
