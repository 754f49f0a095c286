"""``fhe-job send``: what a batch owes the gateway chain, sent by this coprocessor.

The last stage of a batch (the reference's transaction-sender): every handle the SNS
stage published has a ``ciphertext_digest`` row, committed with
``CiphertextCommits.addCiphertextMaterial`` under the tenant's KMS key id; every host
ACL event about the batch's handles has a ``gateway_acl_calls`` row, relayed to the
gateway's ``MultichainACL``. One transaction per call, from this coprocessor's tx
sender (``coprocessor.chain.committer`` does the exactly-once part). The stage
succeeds when each of the batch's calls is on chain; whether the coprocessors' majority
agreed is reported (``accepted``), not waited for - the others run on their own
schedule. ACL events about handles no batch computes (inputs, later blocks) are the
long-running sender's (``fhe-listener sender``).

Exit codes: 0 all sent; 75 the chain did not answer, a handle is not published yet, or
a receipt is late, or the KMS has not activated the tenant's keyset yet (a re-run
continues where this one stopped); 3 the key is not a registered tx sender, a setting
is missing, or a contract refused a call.
"""

from __future__ import annotations

import asyncio
import logging
import time

from coprocessor.api.summary import SendSummary
from coprocessor.chain.committer import CommitResult, Committer, Row
from coprocessor.chain.gateway import GatewayClient, load_signer, require_gateway
from coprocessor.db import acl, commits, queries
from coprocessor.db.pool import pool_of
from coprocessor.errors import Recoverable
from coprocessor.settings import Settings

from .compute import batch_tenant

log = logging.getLogger(__name__)


class NotActivated(Recoverable):
    """The tenant's keyset has no KMS key id yet: nothing of it can be committed until the
    KMS activates it. A wait, not a failure (exit 75: the Job retries the pod)."""


async def run_send(settings: Settings, batch_id: str) -> SendSummary:
    started = time.monotonic()
    require_gateway(settings)  # a missing setting fails before any connection
    signer = load_signer(settings)
    pool = await pool_of(settings, size=max(3, settings.database_pool_size))
    try:
        async with pool.acquire() as connection:
            tenant = await batch_tenant(connection, batch_id)
            kms_key_id = await queries.kms_key_id(connection, tenant.tenant_id)
            wanted = await commits.batch_commits(connection, batch_id)
            calls = await acl.batch_calls(connection, batch_id)
        if kms_key_id is None and wanted:
            raise NotActivated(
                f"tenant {tenant.name!r} has no KMS key id: the KMS has not activated its "
                "keyset, and material is committed under the KMS's key id; set it with "
                f"`fhectl tenant activate {tenant.name} --kms-key-id <id>`"
            )
        summary = SendSummary(total=len(wanted) + len(calls), signer=signer.address)
        unpublished = [w for w in wanted if w.digest is None and not w.publish_error]
        for item in wanted:
            if item.publish_error:
                summary.failures["0x" + item.handle.hex()] = f"not published: {item.publish_error}"
        rows: list[Row] = [w.digest for w in wanted if w.digest and not w.digest.txn_is_sent]
        rows += [c for c in calls if not c.txn_is_sent]
        gateway = GatewayClient.connect(settings, signer)
        log.info(
            "send started",
            extra={
                "fields": {
                    "batch": batch_id,
                    "tx_sender": signer.address,
                    "handles": len(wanted),
                    "acl_calls": len(calls),
                    "to_send": len(rows),
                    "unpublished": len(unpublished),
                    "max_in_flight": settings.sender_max_in_flight,
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
        summary.failures.update(result.rejected)
        summary.failed = len(summary.failures)
        summary.sent, summary.found, summary.gas_used = (result.sent, result.found, result.gas_used)
        async with pool.acquire() as connection:
            after = await commits.batch_commits(connection, batch_id)
            calls_after = await acl.batch_calls(connection, batch_id)
            acl_transactions = {c.txn_hash for c in calls_after if c.txn_is_sent and c.txn_hash}
            summary.transactions = await commits.batch_transactions(connection, batch_id) + len(
                acl_transactions
            )
        committed = [a.handle for a in after if a.digest and a.digest.txn_is_sent]
        summary.acl_calls = sum(c.txn_is_sent for c in calls_after)
        summary.completed = len(committed) + summary.acl_calls
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
        owed = summary.total - summary.completed - summary.failed
        if owed > 0 and summary.error is None:  # e.g. a vote that ran out of gas
            summary.error = f"{owed} call(s) not on chain yet"
        if summary.error:
            summary.error = (
                f"{summary.error} ({summary.completed}/{summary.total} sent; a re-run continues)"
            )
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        await pool.close()
