"""``fhe-job verify``: check the zero-knowledge proofs of queued input lists.

Each pending verify_proofs row is claimed (FOR UPDATE SKIP LOCKED, so several pods
share the queue), its list verified against the deployment's CRS (the one the KMS
activated, else the generated one), the compact public key of the tenant serving its
chain and the 92 bytes fhEVM binds a proof to (contract, user, the host chain's ACL,
chain id), then expanded: one ciphertext per value, stored under fhEVM's input handles
(coprocessor.inputs), and the verdict recorded, all in the row's transaction. A list
larger than FHE_INPUT_MAX_BYTES is refused before anything parses it. The verdict of a
request read from the gateway is then sent back by the committer (signed there: the
signer key never reaches this stage).

Three outcomes per row:
* answered: verified, or refused (bad proof, other metadata, malformed list, a chain
  nobody serves, a backend without proofs); the reason is on the row; exit 0;
* left pending, this run moves on: the fault is ours (the tenant's server key missing
  or damaged in S3, a CRS that does not load); counted as failed (exit 3) and retried
  by the next run, never answered 'no' on the requester's behalf;
* left pending, the run stops: the database or S3 is down (exit 75; the Job retries).

Metrics (``worker="verify"``): answered requests count as processed, requests left
pending and passes cut short as errors, each proof verification is timed; ``--follow``
counts its wake-ups (NOTIFY or poll) and beats its heartbeat per request and per turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import asyncpg

from coprocessor import kms, metrics
from coprocessor.api.summary import VerifySummary
from coprocessor.crs import pinned_crs
from coprocessor.db import kms as kms_rows
from coprocessor.db import proofs, queries
from coprocessor.db.notify import NotificationWaiter
from coprocessor.db.pool import ConnectOptions, classify, connect_settings
from coprocessor.errors import ConfigError, Irrecoverable, Recoverable, UserError
from coprocessor.fhe.engine import (
    Evaluator,
    InvalidInputProof,
    UnsupportedOperation,
    input_metadata,
)
from coprocessor.fhe.envelope import Envelope
from coprocessor.inputs import MAX_INPUTS, input_handles, prehandles
from coprocessor.keycache import KeyCache
from coprocessor.observability import Heartbeat
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import load_evaluator

log = logging.getLogger(__name__)

EVALUATORS_KEPT = 2  # each holds a tenant's decompressed server key (GBs)
PASS_LIMIT = 64  # requests a --follow pass answers before it looks for new ones
WORKER = "verify"  # the worker label of its series


class _Rejected(Exception):
    """The request is answered 'no'; the message is stored on its row."""


class _Verifier:
    """Per-process caches: a few tenants' evaluators (a server key is hundreds of MB to
    fetch and GBs once decompressed) and the CRS per backend."""

    def __init__(self, settings: Settings) -> None:
        self.store = ObjectStore(settings)
        self.settings = settings
        self.crs_bits = settings.crs_max_bits
        self._evaluators: OrderedDict[int, Evaluator] = OrderedDict()
        self._crs: dict[str, bytes] = {}

    async def crs(self, connection: asyncpg.Connection, backend: str) -> bytes:
        """The KMS's active CRS when one was activated (it may change: looked up per
        request, cached by object), else the deployment's generated one."""
        active = await kms_rows.active_crs(connection) if backend == "tfhe-rs" else None
        key = active.object_key if active else backend
        if key not in self._crs:
            if active:
                self._crs[key] = await asyncio.to_thread(kms.load_crs, self.store, active)
            else:
                # Its own connection: the caller's is inside the request's transaction,
                # and the pin must commit (and not hold a row lock) whatever happens to
                # the request.
                own = await connect_settings(self.settings)
                try:
                    self._crs[key] = await pinned_crs(own, self.store, backend, self.crs_bits)
                finally:
                    await own.close()
        return self._crs[key]

    def acl_address(self, request: proofs.ProofRequest) -> bytes:
        if request.acl_address is not None:
            return request.acl_address
        if self.settings.host_acl_address is None:  # ours to fix: the row waits
            raise ConfigError(
                f"no ACL address is known for chain id {request.chain_id}: the request "
                "carries none and FHE_HOST_ACL_ADDRESS is not set"
            )
        return bytes.fromhex(self.settings.host_acl_address[2:])

    async def evaluator(self, tenant: queries.Tenant) -> Evaluator:
        if tenant.tenant_id in self._evaluators:
            self._evaluators.move_to_end(tenant.tenant_id)
        else:
            try:
                loaded = await asyncio.to_thread(
                    load_evaluator, self.store, tenant, "verify", KeyCache.of(self.settings)
                )
            except KeyError:
                raise UserError(
                    f"tenant {tenant.name!r}'s server key is missing from S3 "
                    f"({tenant.keys_location})"
                ) from None
            self._evaluators[tenant.tenant_id] = loaded
            while len(self._evaluators) > EVALUATORS_KEPT:
                self._evaluators.popitem(last=False)
        return self._evaluators[tenant.tenant_id]

    async def answer(
        self, connection: asyncpg.Connection, request: proofs.ProofRequest
    ) -> list[bytes]:
        """Verify and store one request's inputs; returns their handles, or raises
        _Rejected (answer 'no') or another error (leave it pending). Runs inside the
        transaction that holds the row."""
        served = await proofs.tenant_for_chain(connection, request.chain_id)
        if served is None:
            raise _Rejected(f"no tenant serves chain id {request.chain_id}")
        if not request.input:
            raise _Rejected("the request carries no input list")
        if len(request.input) > self.settings.input_max_bytes:
            raise _Rejected(
                f"the input list is {len(request.input)} bytes; at most "
                f"{self.settings.input_max_bytes} (FHE_INPUT_MAX_BYTES) are accepted"
            )
        acl_address = self.acl_address(request)
        tenant = served.tenant
        if tenant.backend != "tfhe-rs":
            raise _Rejected(
                f"tenant {tenant.name!r} runs backend {tenant.backend!r}, which has no input proofs"
            )
        if not served.public_params:
            raise UserError(f"tenant {tenant.name!r} has no compact public key")
        crs = await self.crs(connection, tenant.backend)
        evaluator = await self.evaluator(tenant)
        try:
            metadata = input_metadata(
                "0x" + request.contract_address.hex(),
                "0x" + request.user_address.hex(),
                "0x" + acl_address.hex(),
                request.chain_id,
            )
            # Each input carries the full hash its handle is cut from (fhEVM's
            # re-randomisation metadata): one per possible index, the list's count is
            # known only once it is expanded.
            rerand = prehandles(request.input, acl_address, request.chain_id, MAX_INPUTS)
            with metrics.ZKPROOF_VERIFY_LATENCY.time():
                ciphertexts = await asyncio.to_thread(
                    evaluator.verify_inputs,
                    crs,
                    served.public_params,
                    request.input,
                    metadata,
                    rerand,
                )
            types = [Envelope.from_bytes(c).fhe_type for c in ciphertexts]
            handles = input_handles(request.input, acl_address, request.chain_id, types)
        except (InvalidInputProof, UnsupportedOperation) as error:
            raise _Rejected(str(error)) from None
        for handle, ciphertext, fhe_type in zip(handles, ciphertexts, types, strict=True):
            await queries.insert_ciphertext(
                connection, tenant.tenant_id, handle, ciphertext, 0, int(fhe_type)
            )
        return handles


async def _answer_next(
    connection: asyncpg.Connection,
    verifier: _Verifier,
    summary: VerifySummary,
    passed_over: list[int],
) -> bool:
    """Claim and answer one request; False when none is pending (but those passed over)."""
    async with connection.transaction():
        request = await proofs.claim_pending(connection, passed_over)
        if request is None:
            return False
        summary.total += 1
        key = str(request.zk_proof_id)
        try:
            handles = await verifier.answer(connection, request)
        except _Rejected as rejected:
            await proofs.record_rejected(connection, request.zk_proof_id, str(rejected))
            summary.rejected += 1
            metrics.WORK_ITEMS_PROCESSED.labels(WORKER).inc()
            summary.failures.setdefault(key, str(rejected)[:200])
            log.info(
                "input list rejected",
                extra={"fields": {"zk_proof_id": request.zk_proof_id, "reason": str(rejected)}},
            )
            return True
        except Exception as raised:
            error = classify(raised)
            if not isinstance(error, Irrecoverable):
                raise error from raised  # outages stop the run: the row stays pending
            passed_over.append(request.zk_proof_id)
            summary.failed += 1
            metrics.WORKER_ERRORS.labels(WORKER).inc()
            summary.failures.setdefault(key, str(error)[:200])
            log.error(
                "input list left pending",
                extra={"fields": {"zk_proof_id": request.zk_proof_id, "error": str(error)}},
            )
            return True
        await proofs.record_verified(connection, request.zk_proof_id, handles)
    summary.verified += 1
    summary.inputs += len(handles)
    metrics.WORK_ITEMS_PROCESSED.labels(WORKER).inc()
    log.info(
        "input list verified",
        extra={"fields": {"zk_proof_id": request.zk_proof_id, "inputs": len(handles)}},
    )
    return True


async def run_verify(
    settings: Settings,
    limit: int | None = None,
    verifier: _Verifier | None = None,
    stop: asyncio.Event | None = None,
    heartbeat: Heartbeat | None = None,
) -> VerifySummary:
    """Answer pending requests until none is left, ``limit`` were looked at, or ``stop``
    (the request in hand is finished first); ``heartbeat`` beats after each."""
    started = time.monotonic()
    summary = VerifySummary()
    verifier = verifier or _Verifier(settings)
    passed_over: list[int] = []
    connection = await connect_settings(settings)
    try:
        while (limit is None or summary.total < limit) and not (stop and stop.is_set()):
            if not await _answer_next(connection, verifier, summary, passed_over):
                break
            if heartbeat is not None:
                heartbeat.beat()
    finally:
        await connection.close()
        summary.seconds = time.monotonic() - started
    return summary


async def follow(
    settings: Settings,
    stop: asyncio.Event,
    idle: asyncio.Event | None = None,
    heartbeat: Heartbeat | None = None,
) -> None:
    """``fhe-job verify --follow``: the long-running form (a Deployment, like the
    reference's zkproof-worker). Answers the queue, then sleeps until a request is
    queued (event_zkpok_new_work) or the poll interval passes; the database being down
    is logged and waited out. Sets ``idle`` whenever it goes to sleep; returns when
    ``stop`` is set, once the request in hand is answered. ``heartbeat`` beats per
    request and per turn of the loop."""
    verifier = _Verifier(settings)
    async with NotificationWaiter(
        settings.database_url,
        (queries.ZKPOK_NEW_WORK,),
        poll_interval=settings.notify_poll_interval_s,
        options=ConnectOptions.of(settings),
    ) as waiter:
        while not stop.is_set():
            waiter.drain()  # the pass below sees everything queued before it starts
            looked_at = 0
            try:
                looked_at = (
                    await run_verify(settings, PASS_LIMIT, verifier, stop, heartbeat)
                ).total
            except Exception as raised:
                error = classify(raised)
                if not isinstance(error, Recoverable):
                    raise error from raised
                metrics.WORKER_ERRORS.labels(WORKER).inc()
                log.warning("verify pass cut short", extra={"fields": {"error": str(error)}})
            if heartbeat is not None:
                heartbeat.beat()
            if looked_at >= PASS_LIMIT:
                continue  # more backlog: no need to wait
            if idle is not None:
                idle.set()
            waiting = asyncio.create_task(waiter.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiting, stopping):
                task.cancel()
            if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
                metrics.count_wakeup(WORKER, waiting.result().reason)
            if idle is not None:
                idle.clear()
