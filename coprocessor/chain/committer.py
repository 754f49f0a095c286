"""Committing digest rows to the gateway chain, exactly once per signer and handle.

Shared by the send stage (one batch's rows) and the long-running sender (every
tenant's unsent rows). One pass, under the signer's advisory lock:

1. settle rows a previous pass left *pending* (a transaction was recorded, then the
   process died or the node stopped answering): a receipt marks them sent, a
   transaction still in the mempool is waited for, one the node never saw puts them
   back to unsent;
2. sign the unsent rows in chunks (``FHE_SENDER_BATCH_SIZE`` handles per transaction)
   with consecutive nonces, record each hash, *then* broadcast, keeping up to
   ``FHE_SENDER_MAX_IN_FLIGHT`` transactions in flight;
3. wait for their receipts and mark the rows sent.

Because the hash is in the database before the transaction can exist anywhere else,
a process killed at any line re-runs into step 1 and sends nothing twice; the
contract's one-submission-per-signer rule is the last guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import asyncpg

from ..db import commits
from ..db.commits import DigestRow
from ..errors import Recoverable
from ..settings import Settings
from .gateway import (
    AlreadyAdded,
    GatewayClient,
    Material,
    NonceTooLow,
    Receipt,
    SignedSubmission,
    SubmissionRejected,
)

log = logging.getLogger(__name__)


@dataclass
class CommitResult:
    sent: int = 0  # handles carried by this pass's mined transactions
    found: int = 0  # handles whose submission was already on chain
    transactions: list[str] = field(default_factory=list)  # mined by this pass, 0x-hex
    rejected: dict[bytes, str] = field(default_factory=dict)  # handle -> contract's reason
    gas_used: int = 0


def material(row: DigestRow) -> Material:
    return Material(
        row.handle, int.from_bytes(row.key_id[:32], "big"), row.ciphertext, row.ciphertext128
    )


def chunks(rows: Sequence[DigestRow], size: int) -> list[list[DigestRow]]:
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


class Committer:
    def __init__(self, pool: asyncpg.Pool, gateway: GatewayClient, settings: Settings) -> None:
        self.pool = pool
        self.gateway = gateway
        self.settings = settings
        self._signer = bytes.fromhex(gateway.address[2:])

    async def commit(self, rows: Sequence[DigestRow]) -> CommitResult:
        result = CommitResult()
        if not rows:
            return result
        async with self._signer_lock():
            async with self.pool.acquire() as connection:
                current = [
                    r
                    for r in await commits.reload(
                        connection, [(r.tenant_id, r.handle) for r in rows]
                    )
                    if not r.txn_is_sent
                ]
            todo = [r for r in current if r.txn_hash is None]
            todo += await self._settle_recorded([r for r in current if r.txn_hash], result)
            await self._send(todo, result)
        return result

    @contextlib.asynccontextmanager
    async def _signer_lock(self) -> AsyncIterator[None]:
        """One pass per signer at a time, across processes (nonces are per signer)."""
        deadline = time.monotonic() + self.settings.sender_receipt_timeout_s
        async with self.pool.acquire() as connection:
            while not await commits.try_lock_signer(connection, self._signer):
                if time.monotonic() > deadline:
                    raise Recoverable(
                        f"another sender of signer {self.gateway.address} "
                        "held its lock throughout; a re-run continues"
                    )
                await asyncio.sleep(0.2)
            try:
                yield
            finally:
                await commits.unlock_signer(connection, self._signer)

    # --- step 1 ---------------------------------------------------------------------

    async def _settle_recorded(
        self, rows: list[DigestRow], result: CommitResult
    ) -> list[DigestRow]:
        """Settle rows pending in a recorded transaction; returns those to send again."""
        by_hash: dict[bytes, list[DigestRow]] = {}
        for row in rows:
            assert row.txn_hash is not None
            by_hash.setdefault(row.txn_hash, []).append(row)
        again: list[DigestRow] = []
        waiting: list[tuple[bytes, list[DigestRow]]] = []
        for tx_hash, group in by_hash.items():
            receipt = await asyncio.to_thread(self.gateway.receipt, tx_hash)
            if receipt is not None:
                await self._settle(receipt, group, result)
            elif await asyncio.to_thread(self.gateway.is_known, tx_hash):
                waiting.append((tx_hash, group))
            else:
                log.info(
                    "recorded transaction unknown to the chain; sending again",
                    extra={"fields": {"tx": "0x" + tx_hash.hex(), "handles": len(group)}},
                )
                async with self.pool.acquire() as connection:
                    await commits.reset_unsent(
                        connection, group, f"transaction 0x{tx_hash.hex()} never reached the chain"
                    )
                again += group
        await self._await_receipts(waiting, result)
        return again

    # --- steps 2 and 3 --------------------------------------------------------------

    async def _send(self, rows: list[DigestRow], result: CommitResult) -> None:
        if not rows:
            return
        fees = await asyncio.to_thread(self.gateway.fees)
        nonce = await asyncio.to_thread(self.gateway.next_nonce)
        in_flight: list[tuple[bytes, list[DigestRow]]] = []
        for chunk in chunks(rows, self.settings.sender_batch_size):
            placed, nonce = await self._place(chunk, nonce, fees, result)
            if placed is None:
                continue
            in_flight.append((placed.tx_hash, chunk))
            if len(in_flight) >= self.settings.sender_max_in_flight:
                await self._await_receipts(in_flight, result)
                in_flight = []
        await self._await_receipts(in_flight, result)

    async def _place(
        self, chunk: list[DigestRow], nonce: int, fees: tuple[int, int], result: CommitResult
    ) -> tuple[SignedSubmission | None, int]:
        """Sign, record and broadcast one chunk; returns it (None: nothing to send) and
        the next nonce."""
        for attempt in (1, 2):
            submission = await self._sign(chunk, nonce, fees, result)
            if submission is None:
                return None, nonce
            try:
                await self._record_and_broadcast(submission, chunk)
                return submission, nonce + 1
            except NonceTooLow as error:
                if await asyncio.to_thread(self.gateway.is_known, submission.tx_hash):
                    return submission, nonce + 1  # a retried broadcast whose first try landed
                if attempt == 2:
                    raise Recoverable(
                        f"nonce {nonce} of signer {self.gateway.address} "
                        f"taken twice in a row: {error}"
                    ) from None
                # Another transaction of this key took the nonce: sign again.
                nonce = await asyncio.to_thread(self.gateway.next_nonce)
        raise AssertionError("unreachable")

    async def _sign(
        self, chunk: list[DigestRow], nonce: int, fees: tuple[int, int], result: CommitResult
    ) -> SignedSubmission | None:
        """The signed transaction, or None when the contract says there is nothing to
        send (already on chain) or refuses these handles (recorded as rejected)."""
        try:
            return await asyncio.to_thread(
                self.gateway.sign, [material(r) for r in chunk], nonce, fees
            )
        except AlreadyAdded:
            await self._mark_sent(chunk, None, None)
            result.found += len(chunk)
        except SubmissionRejected as error:
            await self._reject(chunk, str(error), result)
        return None

    async def _record_and_broadcast(
        self, submission: SignedSubmission, chunk: list[DigestRow]
    ) -> None:
        async with self.pool.acquire() as connection:
            await commits.record_pending(
                connection, chunk, submission.tx_hash, self._signer, submission.nonce
            )
        await asyncio.to_thread(self.gateway.broadcast, submission)
        log.info(
            "transaction sent",
            extra={
                "fields": {
                    "tx": "0x" + submission.tx_hash.hex(),
                    "nonce": submission.nonce,
                    "handles": len(chunk),
                }
            },
        )

    async def _await_receipts(
        self, in_flight: list[tuple[bytes, list[DigestRow]]], result: CommitResult
    ) -> None:
        deadline = time.monotonic() + self.settings.sender_receipt_timeout_s
        pause = 0.02
        for tx_hash, group in in_flight:
            while (receipt := await asyncio.to_thread(self.gateway.receipt, tx_hash)) is None:
                if time.monotonic() > deadline:
                    raise Recoverable(
                        f"transaction 0x{tx_hash.hex()} not mined after "
                        f"{self.settings.sender_receipt_timeout_s:g}s; it stays recorded and "
                        "the next run settles it"
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            await self._settle(receipt, group, result)

    async def _settle(self, receipt: Receipt, group: list[DigestRow], result: CommitResult) -> None:
        if receipt.succeeded:
            await self._mark_sent(group, receipt.tx_hash, receipt.block_number)
            result.sent += len(group)
            result.gas_used += receipt.gas_used
            result.transactions.append("0x" + receipt.tx_hash.hex())
            return
        why = await asyncio.to_thread(
            self.gateway.why_reverted, receipt.tx_hash, receipt.block_number
        )
        if isinstance(why, AlreadyAdded):
            await self._mark_sent(group, None, None)
            result.found += len(group)
        elif isinstance(why, SubmissionRejected):
            await self._reject(group, str(why), result)
        else:
            raise why  # NotASigner: the key was removed from the contract meanwhile

    async def _mark_sent(
        self, rows: list[DigestRow], tx_hash: bytes | None, block: int | None
    ) -> None:
        async with self.pool.acquire() as connection:
            await commits.mark_sent(connection, rows, tx_hash, block)

    async def _reject(self, rows: list[DigestRow], reason: str, result: CommitResult) -> None:
        log.warning(
            "submission rejected",
            extra={
                "fields": {"handles": ["0x" + r.handle.hex() for r in rows[:5]], "error": reason}
            },
        )
        async with self.pool.acquire() as connection:
            await commits.reset_unsent(connection, rows, reason)
        for row in rows:
            result.rejected[row.handle] = reason
