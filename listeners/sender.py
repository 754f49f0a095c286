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
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from coprocessor.chain.committer import Committer, Row
from coprocessor.chain.gateway import GatewayClient
from coprocessor.chain.verdicts import VerdictSigner
from coprocessor.db import acl, commits, proofs
from coprocessor.db.notify import NotificationWaiter
from coprocessor.db.queries import CIPHERTEXTS_UPLOADED, WORK_AVAILABLE, ZKPOK_COMPUTED
from coprocessor.errors import Recoverable
from coprocessor.settings import Settings

log = logging.getLogger(__name__)

PASS_LIMIT = 512  # rows per pass; a backlog drains over consecutive passes


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
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.gateway = gateway
        self.verdicts = verdicts
        self.committer = Committer(pool, gateway, settings, verdicts)
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
        ) as waiter:
            while not stop.is_set():
                try:
                    looked_at = await self.pass_once()
                except Recoverable as error:
                    self.counters.unavailable += 1
                    log.warning("sender pass cut short", extra={"fields": {"error": str(error)}})
                    looked_at = 0
                if looked_at >= PASS_LIMIT:
                    continue  # more backlog: no need to wait
                waiting = asyncio.create_task(waiter.wait())
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in (waiting, stopping):
                    task.cancel()
