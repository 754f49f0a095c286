"""Sending what this coprocessor owes the gateway, exactly once per tx sender and call.

Three outboxes feed it: ``ciphertext_digest`` rows (one ``addCiphertextMaterial`` per
published handle), ``gateway_acl_calls`` rows (one MultichainACL call per host ACL
event) and answered ``verify_proofs`` requests from the gateway (one
``verifyProofResponse``, signed by the coprocessor's signer key, or
``rejectProofResponse``). Shared by the send stage (one batch's rows) and the
long-running sender (every tenant's, and the verdicts). One pass, under the tx
sender's advisory lock:

1. settle rows a previous pass left *pending* (a transaction was recorded, then the
   process died or the node stopped answering): a receipt marks them sent, a
   transaction still in the mempool is waited for, one the node never saw puts them
   back to unsent;
2. sign one transaction per row with consecutive nonces, record its hash, *then*
   broadcast it, keeping up to ``FHE_SENDER_MAX_IN_FLIGHT`` transactions in flight;
3. wait for their receipts and mark the rows sent.

Because the hash is in the database before the transaction can exist anywhere else,
a process killed at any line re-runs into step 1 and sends nothing twice; the
contracts' one-call-per-tx-sender rule is the last guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import asyncpg

from ..db import acl, commits, proofs
from ..db.acl import AclCallRow
from ..db.commits import DigestRow
from ..db.proofs import ResponseRow
from ..errors import ConfigError, Recoverable
from ..settings import Settings
from .calls import (
    AllowAccount,
    AllowPublicDecrypt,
    AlreadyDone,
    CallRejected,
    Commit,
    Delegation,
    GatewayCall,
    RejectProofResponse,
    VerifyProofResponse,
)
from .gateway import GatewayClient, NonceTooLow, Receipt, SignedCall
from .verdicts import VerdictSigner

log = logging.getLogger(__name__)

Row = DigestRow | AclCallRow | ResponseRow


@dataclass
class CommitResult:
    sent: int = 0  # calls carried by this pass's mined transactions
    found: int = 0  # calls already on chain
    transactions: list[str] = field(default_factory=list)  # mined by this pass, 0x-hex
    rejected: dict[str, str] = field(default_factory=dict)  # call label -> reason
    again: int = 0  # reverted but would pass now: back to unsent, for the next pass
    gas_used: int = 0


class NotActivated(CallRejected):
    """The tenant has no KMS key id: its material cannot be committed yet."""


def gateway_call(row: Row, verdicts: VerdictSigner | None = None) -> GatewayCall:
    """The call a row stands for; NotActivated for a digest of a tenant the KMS has not
    activated (the key id committed must be the KMS's). A verified input list's answer
    is signed with ``verdicts`` (the coprocessor's signer)."""
    if isinstance(row, ResponseRow):
        # The request's extraData, signed and sent back as it came (Zama's sender does the
        # same): another value would be another EIP-712 digest than the others sign.
        if not row.verified:
            return RejectProofResponse(row.zk_proof_id, row.extra_data)
        if verdicts is None:
            raise ConfigError(
                f"input request {row.zk_proof_id} is verified, but setting "
                "FHE_SIGNER_PRIVATE_KEY is not set: its answer must be signed by this "
                "coprocessor's signer key"
            )
        signature = verdicts.sign(
            row.handles,
            row.user_address,
            row.contract_address,
            row.chain_id,
            row.extra_data,
        )
        return VerifyProofResponse(row.zk_proof_id, row.handles, signature, row.extra_data)
    if isinstance(row, DigestRow):
        if row.kms_key_id is None:
            raise NotActivated(
                f"0x{row.handle.hex()}: its tenant has no KMS key id yet (the KMS has not "
                "activated its keyset); set it with `fhectl tenant activate`"
            )
        return Commit(row.handle, row.kms_key_id, row.ciphertext, row.ciphertext128)
    call = row.call
    if call.kind == "allow_account":
        assert call.handle is not None and call.account_address is not None
        return AllowAccount(call.handle, call.account_address)
    if call.kind == "allow_public_decrypt":
        assert call.handle is not None
        return AllowPublicDecrypt(call.handle)
    assert call.chain_id is not None and call.delegator and call.delegate
    assert call.contract_address and call.delegation_counter is not None
    assert call.expiration_date is not None
    return Delegation(
        call.chain_id,
        call.delegator,
        call.delegate,
        call.contract_address,
        call.delegation_counter,
        call.expiration_date,
        revoke=call.kind == "revoke",
    )


def label(row: Row) -> str:
    if isinstance(row, DigestRow):
        return "0x" + row.handle.hex()
    if isinstance(row, ResponseRow):
        verb = "verifyProofResponse" if row.verified else "rejectProofResponse"
        return f"{verb} {row.zk_proof_id}"
    try:
        return gateway_call(row).label
    except CallRejected:
        return f"gateway ACL call {row.call_id}"


# --- the three outboxes, behind one set of verbs -----------------------------------------


def _split(rows: Sequence[Row]) -> tuple[list[DigestRow], list[int], list[int]]:
    digests = [r for r in rows if isinstance(r, DigestRow)]
    return (
        digests,
        [r.call_id for r in rows if isinstance(r, AclCallRow)],
        [r.zk_proof_id for r in rows if isinstance(r, ResponseRow)],
    )


async def _reload(connection: asyncpg.Connection, rows: Sequence[Row]) -> list[Row]:
    digests, call_ids, proof_ids = _split(rows)
    current: list[Row] = []
    if digests:
        current += await commits.reload(connection, [(r.tenant_id, r.handle) for r in digests])
    if call_ids:
        current += await acl.reload(connection, call_ids)
    if proof_ids:
        current += await proofs.reload_responses(connection, proof_ids)
    return current


async def _record_pending(
    connection: asyncpg.Connection, rows: Sequence[Row], tx_hash: bytes, signer: bytes, nonce: int
) -> None:
    digests, call_ids, proof_ids = _split(rows)
    async with connection.transaction():
        if digests:
            await commits.record_pending(connection, digests, tx_hash, signer, nonce)
        if call_ids:
            await acl.record_pending(connection, call_ids, tx_hash, signer, nonce)
        if proof_ids:
            await proofs.record_pending(connection, proof_ids, tx_hash, signer, nonce)


async def _mark_sent(
    connection: asyncpg.Connection, rows: Sequence[Row], tx_hash: bytes | None, block: int | None
) -> None:
    digests, call_ids, proof_ids = _split(rows)
    async with connection.transaction():
        if digests:
            await commits.mark_sent(connection, digests, tx_hash, block)
        if call_ids:
            await acl.mark_sent(connection, call_ids, tx_hash, block)
        if proof_ids:
            await proofs.mark_sent(connection, proof_ids, tx_hash, block)


async def _reset_unsent(connection: asyncpg.Connection, rows: Sequence[Row], reason: str) -> None:
    digests, call_ids, proof_ids = _split(rows)
    async with connection.transaction():
        if digests:
            await commits.reset_unsent(connection, digests, reason)
        if call_ids:
            await acl.reset_unsent(connection, call_ids, reason)
        if proof_ids:
            await proofs.reset_unsent(connection, proof_ids, reason)


def _key(row: Row) -> tuple[object, ...]:
    if isinstance(row, DigestRow):
        return ("digest", row.tenant_id, row.handle)
    if isinstance(row, ResponseRow):
        return ("proof", row.zk_proof_id)
    return ("acl", row.call_id)


class Committer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        gateway: GatewayClient,
        settings: Settings,
        verdicts: VerdictSigner | None = None,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.settings = settings
        self.verdicts = verdicts
        self._signer = bytes.fromhex(gateway.address[2:])

    async def commit(self, rows: Sequence[Row]) -> CommitResult:
        """Send every row's call that is not on chain yet (digests first: a handle is
        decryptable only once its material is committed)."""
        result = CommitResult()
        if not rows:
            return result
        async with self._signer_lock():
            async with self.pool.acquire() as connection:
                current = [r for r in await _reload(connection, rows) if not r.txn_is_sent]
            order = {_key(r): i for i, r in enumerate(rows)}
            current.sort(key=lambda r: order.get(_key(r), len(order)))
            todo = [r for r in current if r.txn_hash is None]
            again, waiting = await self._settle_recorded([r for r in current if r.txn_hash], result)
            # Send before waiting: a recorded transaction the node lost leaves a nonce
            # gap that the ones still waiting cannot be mined past until it is filled.
            await self._send(again + todo, result)
            await self._await_receipts(waiting, result)
        return result

    @contextlib.asynccontextmanager
    async def _signer_lock(self) -> AsyncIterator[None]:
        """One pass per tx sender at a time, across processes (nonces are per key)."""
        deadline = time.monotonic() + self.settings.sender_receipt_timeout_s
        async with self.pool.acquire() as connection:
            while not await commits.try_lock_signer(connection, self._signer):
                if time.monotonic() > deadline:
                    raise Recoverable(
                        f"another sender of {self.gateway.address} "
                        "held its lock throughout; a re-run continues"
                    )
                await asyncio.sleep(0.2)
            try:
                yield
            finally:
                await commits.unlock_signer(connection, self._signer)

    # --- step 1 ---------------------------------------------------------------------

    async def _settle_recorded(
        self, rows: list[Row], result: CommitResult
    ) -> tuple[list[Row], list[tuple[bytes, list[Row]]]]:
        """Settle rows pending in a recorded transaction whose receipt is there; returns
        those to send again and the transactions still in the mempool."""
        by_hash: dict[bytes, list[Row]] = {}
        for row in rows:
            assert row.txn_hash is not None
            by_hash.setdefault(row.txn_hash, []).append(row)
        again: list[Row] = []
        waiting: list[tuple[bytes, list[Row]]] = []
        for tx_hash, group in by_hash.items():
            receipt = await asyncio.to_thread(self.gateway.receipt, tx_hash)
            if receipt is not None:
                await self._settle(receipt, group, result)
            elif await asyncio.to_thread(self.gateway.is_known, tx_hash):
                waiting.append((tx_hash, group))
            else:
                log.info(
                    "recorded transaction unknown to the chain; sending again",
                    extra={"fields": {"tx": "0x" + tx_hash.hex(), "calls": len(group)}},
                )
                async with self.pool.acquire() as connection:
                    await _reset_unsent(
                        connection, group, f"transaction 0x{tx_hash.hex()} never reached the chain"
                    )
                again += group
        return again, waiting

    # --- steps 2 and 3 --------------------------------------------------------------

    async def _send(self, rows: list[Row], result: CommitResult) -> None:
        if not rows:
            return
        fees = await asyncio.to_thread(self.gateway.fees)
        nonce = await asyncio.to_thread(self.gateway.next_nonce)
        in_flight: list[tuple[bytes, list[Row]]] = []
        for row in rows:
            placed, nonce = await self._place(row, nonce, fees, result)
            if placed is None:
                continue
            in_flight.append((placed.tx_hash, [row]))
            if len(in_flight) >= self.settings.sender_max_in_flight:
                await self._await_receipts(in_flight, result)
                in_flight = []
        await self._await_receipts(in_flight, result)

    async def _place(
        self, row: Row, nonce: int, fees: tuple[int, int], result: CommitResult
    ) -> tuple[SignedCall | None, int]:
        """Sign, record and broadcast one row's call; returns it (None: nothing to send)
        and the next nonce."""
        for attempt in (1, 2):
            signed = await self._sign(row, nonce, fees, result)
            if signed is None:
                return None, nonce
            try:
                await self._record_and_broadcast(signed, row)
                return signed, nonce + 1
            except NonceTooLow as error:
                if await asyncio.to_thread(self.gateway.is_known, signed.tx_hash):
                    return signed, nonce + 1  # a retried broadcast whose first try landed
                if attempt == 2:
                    raise Recoverable(
                        f"nonce {nonce} of {self.gateway.address} taken twice in a row: {error}"
                    ) from None
                # Another transaction of this key took the nonce: sign again.
                nonce = await asyncio.to_thread(self.gateway.next_nonce)
        raise AssertionError("unreachable")

    async def _sign(
        self, row: Row, nonce: int, fees: tuple[int, int], result: CommitResult
    ) -> SignedCall | None:
        """The signed transaction, or None when there is nothing to send (already on
        chain) or the call is refused (recorded as rejected)."""
        try:
            call = gateway_call(row, self.verdicts)
        except NotActivated as error:  # waits for the KMS: left as it is, not a retry
            result.rejected[label(row)] = str(error)
            return None
        try:
            return await asyncio.to_thread(self.gateway.sign, call, nonce, fees)
        except AlreadyDone:
            await self._mark_sent([row], None, None)
            result.found += 1
        except CallRejected as error:
            await self._reject([row], str(error), result)
        return None

    async def _record_and_broadcast(self, signed: SignedCall, row: Row) -> None:
        async with self.pool.acquire() as connection:
            await _record_pending(connection, [row], signed.tx_hash, self._signer, signed.nonce)
        await asyncio.to_thread(self.gateway.broadcast, signed)
        log.info(
            "transaction sent",
            extra={
                "fields": {
                    "tx": "0x" + signed.tx_hash.hex(),
                    "nonce": signed.nonce,
                    "call": signed.call.label,
                }
            },
        )

    async def _await_receipts(
        self, in_flight: list[tuple[bytes, list[Row]]], result: CommitResult
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

    async def _settle(self, receipt: Receipt, group: list[Row], result: CommitResult) -> None:
        if receipt.succeeded:
            await self._mark_sent(group, receipt.tx_hash, receipt.block_number)
            result.sent += len(group)
            result.gas_used += receipt.gas_used
            result.transactions.append("0x" + receipt.tx_hash.hex())
            return
        why = await asyncio.to_thread(
            self.gateway.why_reverted, gateway_call(group[0], self.verdicts)
        )
        if why is None:  # it would pass now (out of gas): send it again
            log.info(
                "reverted transaction would pass now; sending again",
                extra={"fields": {"tx": "0x" + receipt.tx_hash.hex(), "calls": len(group)}},
            )
            async with self.pool.acquire() as connection:
                await _reset_unsent(
                    connection,
                    group,
                    f"transaction 0x{receipt.tx_hash.hex()} reverted (gas {receipt.gas_used}) "
                    "but the call would pass now: sent again",
                )
            result.again += len(group)
        elif isinstance(why, AlreadyDone):
            await self._mark_sent(group, None, None)
            result.found += len(group)
        elif isinstance(why, CallRejected):
            await self._reject(group, str(why), result)
        else:
            raise why  # NotATxSender: the key was removed from GatewayConfig meanwhile

    async def _mark_sent(self, rows: list[Row], tx_hash: bytes | None, block: int | None) -> None:
        async with self.pool.acquire() as connection:
            await _mark_sent(connection, rows, tx_hash, block)

    async def _reject(self, rows: list[Row], reason: str, result: CommitResult) -> None:
        log.warning(
            "call rejected",
            extra={"fields": {"calls": [label(r) for r in rows[:5]], "error": reason}},
        )
        async with self.pool.acquire() as connection:
            await _reset_unsent(connection, rows, reason)
        for row in rows:
            result.rejected[label(row)] = reason
