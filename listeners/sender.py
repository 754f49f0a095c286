"""``fhe-listener sender``: send every tenant's gateway calls as they appear.

Verdicts on the gateway's input requests (``verifyProofResponse``, signed with the
coprocessor's signer key, or ``rejectProofResponse``) first - a user waits on them -
then the digests the SNS stage published (``addCiphertextMaterial``) and the
MultichainACL calls the host listener stored, including those about handles no batch
computes (inputs allowed with ``FHE.allowThis``, handles allowed in a later block).
Verdicts are sent only where FHE_SIGNER_PRIVATE_KEY and
FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS are set.

The long-running form of the send stage, for deployments that run the reference's
standalone transaction-sender instead of (or besides) per-batch ``send`` Jobs. It
wakes on the SNS stage's ``event_ciphertexts_uploaded`` and the verify stage's
``event_zkpok_computed`` NOTIFY, or every poll interval
in any case, and runs one Committer pass over the oldest unsent rows. Both forms share
the tx sender's advisory lock, so they never race for nonces, and the write-ahead hash,
so either may die at any line.

Metrics (coprocessor.metrics): the Committer sees the gateway client through
``MeteredGateway``, which moves the transaction series as this process's transactions
go out and settle; the loop counts its wake-ups (NOTIFY or poll), settled calls and
passes cut short. SIGTERM lets the pass in flight finish (its receipts included).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from coprocessor import metrics
from coprocessor.chain.committer import Committer, Row
from coprocessor.chain.gateway import GatewayClient, Receipt, SignedCall
from coprocessor.chain.verdicts import VerdictSigner
from coprocessor.db import acl, commits, proofs
from coprocessor.db.notify import NotificationWaiter
from coprocessor.db.pool import ConnectOptions
from coprocessor.db.queries import CIPHERTEXTS_UPLOADED, WORK_AVAILABLE, ZKPOK_COMPUTED
from coprocessor.errors import Recoverable
from coprocessor.observability import Heartbeat
from coprocessor.settings import Settings

log = logging.getLogger(__name__)

PASS_LIMIT = 512  # rows per pass; a backlog drains over consecutive passes
WORKER = "sender"  # the worker label of its series


class MeteredGateway:
    """A GatewayClient as the Committer uses it, the same calls and answers, moving the
    sender's transaction series on the way: a transaction broadcast is in flight until
    its receipt is seen (then counted by gateway function and outcome, its gas added)
    or the node turns out to have lost it (``dropped``; the Committer sends the call
    again). A broadcast that raised is in flight only if the node knows it. Only this
    process's own transactions are counted. Every call beats ``heartbeat``: a pass
    waiting on receipts is alive."""

    def __init__(self, gateway: GatewayClient, heartbeat: Heartbeat | None = None) -> None:
        self._gateway = gateway
        self._heartbeat = heartbeat
        self._in_flight: dict[bytes, str] = {}  # tx hash -> gateway function
        self._unsure: dict[bytes, str] = {}  # broadcast raised: out there, or not

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)

    def _beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.beat()

    def _track(self, tx_hash: bytes, kind: str) -> None:
        if tx_hash not in self._in_flight:
            self._in_flight[tx_hash] = kind
            metrics.SENDER_INFLIGHT.inc()

    def _forget(self, tx_hash: bytes) -> tuple[str | None, bool]:
        """(gateway function, whether it was in flight) of a transaction settled now."""
        kind = self._in_flight.pop(tx_hash, None)
        if kind is not None:
            metrics.SENDER_INFLIGHT.dec()
            return kind, True
        return self._unsure.pop(tx_hash, None), False

    def broadcast(self, submission: SignedCall) -> None:
        kind = submission.call.function()[0]
        self._beat()
        try:
            self._gateway.broadcast(submission)
        except BaseException:
            self._unsure[submission.tx_hash] = kind
            raise
        self._track(submission.tx_hash, kind)

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        receipt = self._gateway.receipt(tx_hash)
        self._beat()
        if receipt is not None:
            kind, _ = self._forget(tx_hash)
            if kind is not None:
                outcome = "succeeded" if receipt.succeeded else "reverted"
                metrics.SENDER_TRANSACTIONS.labels(kind, outcome).inc()
                metrics.SENDER_GAS_USED.labels(kind).inc(receipt.gas_used)
        return receipt

    def is_known(self, tx_hash: bytes) -> bool:
        known = self._gateway.is_known(tx_hash)
        self._beat()
        if tx_hash in self._unsure:
            kind = self._unsure.pop(tx_hash)
            if known:  # the broadcast had landed after all
                self._track(tx_hash, kind)
        elif not known:
            kind, was_in_flight = self._forget(tx_hash)
            if kind is not None and was_in_flight:
                metrics.SENDER_TRANSACTIONS.labels(kind, "dropped").inc()
        return known


@dataclass
class SenderCounters:
    passes: int = 0
    sent: int = 0
    found: int = 0
    transactions: int = 0
    rejected: int = 0
    unavailable: int = 0  # passes cut short by an unreachable chain or database


class Sender:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        gateway: GatewayClient,
        verdicts: VerdictSigner | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.gateway = gateway
        self.verdicts = verdicts
        self.heartbeat = heartbeat
        metered: Any = MeteredGateway(gateway, heartbeat)
        self.committer = Committer(pool, metered, settings, verdicts)
        self.counters = SenderCounters()

    async def pass_once(self) -> int:
        """Commit one slice of the backlog; returns how many rows it looked at."""
        async with self.pool.acquire() as connection:
            rows: list[Row] = []
            if self.verdicts is not None:
                rows += await proofs.unanswered(
                    connection, PASS_LIMIT, max_retries=self.settings.sender_attempts
                )
            rows += await commits.unsent(
                connection, PASS_LIMIT - len(rows), max_retries=self.settings.sender_attempts
            )
            rows += await acl.unsent(
                connection, PASS_LIMIT - len(rows), max_retries=self.settings.sender_attempts
            )
        result = await self.committer.commit(rows)
        self.counters.passes += 1
        self.counters.sent += result.sent
        self.counters.found += result.found
        self.counters.transactions += len(result.transactions)
        self.counters.rejected += len(result.rejected)
        metrics.WORK_ITEMS_PROCESSED.labels(WORKER).inc(result.sent + result.found)
        if rows:
            log.info(
                "sender pass",
                extra={
                    "fields": {
                        "rows": len(rows),
                        "sent": result.sent,
                        "found": result.found,
                        "transactions": len(result.transactions),
                        "rejected": len(result.rejected),
                    }
                },
            )
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        # A wrong key stops us at once, the signer's too.
        await asyncio.to_thread(
            self.gateway.check_signer, self.verdicts.address if self.verdicts else None
        )
        log.info(
            "sender started",
            extra={
                "fields": {
                    "tx_sender": self.gateway.address,
                    "signer": self.verdicts.address if self.verdicts else None,
                    "contracts": {n: c.address for n, c in self.gateway.contracts.items()},
                }
            },
        )
        async with NotificationWaiter(
            self.settings.database_url,
            (CIPHERTEXTS_UPLOADED, WORK_AVAILABLE, ZKPOK_COMPUTED),
            poll_interval=self.settings.notify_poll_interval_s,
            options=ConnectOptions.of(self.settings),
        ) as waiter:
            while not stop.is_set():
                try:
                    looked_at = await self.pass_once()
                except Recoverable as error:
                    self.counters.unavailable += 1
                    metrics.WORKER_ERRORS.labels(WORKER).inc()
                    log.warning("sender pass cut short", extra={"fields": {"error": str(error)}})
                    looked_at = 0
                if self.heartbeat is not None:
                    self.heartbeat.beat()
                if looked_at >= PASS_LIMIT:
                    continue  # more backlog: no need to wait
                waiting = asyncio.create_task(waiter.wait())
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in (waiting, stopping):
                    task.cancel()
                if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
                    metrics.count_wakeup(WORKER, waiting.result().reason)
