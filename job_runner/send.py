"""``fhe-job send``: commit a batch's published digests to the gateway chain.

The last stage of a batch (the reference's transaction-sender, ``add_ciphertext``):
every handle the SNS stage published has a ``ciphertext_digest`` row; this coprocessor's
signer submits each to CiphertextCommits (coprocessor.chain.committer does the
exactly-once part). The stage succeeds when every one of the batch's submissions is
on chain; whether the *threshold* of signers agreed is reported (``accepted``), not
waited for - the other coprocessors run on their own schedule.

Exit codes: 0 all committed; 75 the chain did not answer, a handle is not published
yet, or a receipt is late (a re-run continues where this one stopped); 3 the key is not
a registered signer, a setting is missing, or the contract refused a handle.
"""

from __future__ import annotations

import asyncio
import logging
import time

from coprocessor.api.summary import SendSummary
from coprocessor.chain.committer import CommitResult, Committer
from coprocessor.chain.gateway import GatewayClient, load_signer, require_gateway
from coprocessor.db import commits
from coprocessor.db.pool import create_pool
from coprocessor.errors import Recoverable
from coprocessor.settings import Settings

log = logging.getLogger(__name__)


async def run_send(settings: Settings, batch_id: str) -> SendSummary:
    started = time.monotonic()
    require_gateway(settings)  # a missing setting fails before any connection
    signer = load_signer(settings)
    pool = await create_pool(settings.database_url, size=max(3, settings.database_pool_size))
    try:
        async with pool.acquire() as connection:
            wanted = await commits.batch_commits(connection, batch_id)
        summary = SendSummary(total=len(wanted), signer=signer.address)
        unpublished = [w for w in wanted if w.digest is None and not w.publish_error]
        for item in wanted:
            if item.publish_error:
                summary.failures["0x" + item.handle.hex()] = f"not published: {item.publish_error}"
        rows = [w.digest for w in wanted if w.digest and not w.digest.txn_is_sent]
        gateway = GatewayClient.connect(settings, signer)
        log.info(
            "send started",
            extra={
                "fields": {
                    "batch": batch_id,
                    "signer": signer.address,
                    "handles": len(wanted),
                    "to_send": len(rows),
                    "unpublished": len(unpublished),
                    "contract": gateway.contract.address,
                    "batch_size": settings.sender_batch_size,
                }
            },
        )
        result = CommitResult()
        try:
            await asyncio.to_thread(gateway.check_signer)
            result = await Committer(pool, gateway, settings).commit(rows)
        except Recoverable as error:
            summary.error = str(error)
        finally:
            summary.retries = gateway.retries
        for handle, reason in result.rejected.items():
            summary.failures["0x" + handle.hex()] = reason
        summary.failed = len(summary.failures)
        summary.sent, summary.found, summary.gas_used = (result.sent, result.found, result.gas_used)
        async with pool.acquire() as connection:
            after = await commits.batch_commits(connection, batch_id)
            summary.transactions = await commits.batch_transactions(connection, batch_id)
        committed = [a.handle for a in after if a.digest and a.digest.txn_is_sent]
        summary.completed = len(committed)
        if summary.error is None:
            try:
                summary.accepted = sum(
                    [await asyncio.to_thread(gateway.is_accepted, h) for h in committed]
                )
            except Recoverable as error:
                summary.error = str(error)
        if unpublished and summary.error is None:
            summary.error = (
                f"{len(unpublished)} handle(s) not published yet (the sns stage "
                f"has not squashed them), e.g. 0x{unpublished[0].handle.hex()}"
            )
        if summary.error:
            summary.error = (
                f"{summary.error} ({summary.completed}/{summary.total} "
                "committed; a re-run continues)"
            )
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        await pool.close()
