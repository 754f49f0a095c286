"""``fhe-listener host``: follow the host chain and turn FHE events into work.

Each poll:

1. **reorg check** - the stored canonical blocks within ``FHE_HOST_REORG_WINDOW`` are
   compared with the chain's; from the highest one that still matches, everything above
   is orphaned (unfinished computations of transactions that are in no canonical block
   fail as "orphaned"; their FheBatches are deleted);
2. **new blocks** up to ``head - FHE_HOST_FINALITY_DEPTH``, one at a time and in
   order: the executor's and ACL's logs are decoded (``host_events``); the block row, its
   computations, ACL rows and transactions are written in one transaction and
   ``work_available`` is notified. A log that does not decode is counted and skipped
   with a warning;
3. **batches** - one FheBatch per block with FHE work (``source.transactions``; split
   into parts of at most ``FHE_HOST_BATCH_MAX_COMPUTATIONS`` when set), created
   after the commit and then stamped, so a listener killed in between creates it on
   restart; a 409 means it exists.

A poll runs on every ``newHeads`` notification of a WebSocket subscription and, as the
fallback when there is none (or it drops), every ``FHE_HOST_POLL_INTERVAL_S``.

Restartable at any line: the cursor is the database, block rows are unique, rows are
inserted ON CONFLICT DO NOTHING, and batch names are deterministic.

Metrics: ``fhe_listener_blocks_processed`` and ``fhe_listener_lag_blocks``
(``listener="host"``), ``coprocessor_worker_errors{worker="host-listener"}`` per
deferred poll; the heartbeat beats per block and per turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from web3 import Web3

from coprocessor import metrics
from coprocessor.api.batch import API_VERSION, GROUP, KIND, PLURAL, VERSION
from coprocessor.api.names import ANNOTATION_BLOCK, LABEL_SOURCE, SOURCE_HOST_LISTENER
from coprocessor.chain.contracts import bound, decode_logs
from coprocessor.costs import row_cost
from coprocessor.db import host as host_db
from coprocessor.db import proofs, queries
from coprocessor.db.pool import classify
from coprocessor.errors import Fatal, Recoverable, ServiceUnavailable
from coprocessor.observability import Heartbeat
from coprocessor.settings import Settings

from .heads import chain_call, follow_heads, wait_for_head, ws_url
from .host_events import (
    DELEGATED,
    IGNORED_EVENTS,
    REVOKED,
    VERIFY_INPUT,
    AllowedRow,
    UndecodableEvent,
    allowed_rows,
    batch_parts,
    check_derivation,
    computation_row,
    delegation_row,
    verified_input,
)
from .skips import record_skip

log = logging.getLogger(__name__)

LISTENER = "host"  # the listener label of its series
WORKER = "host-listener"  # the worker label of its error count


def batch_name(chain_id: int, number: int, block_hash: bytes) -> str:
    return f"host-{chain_id}-{number}-{block_hash.hex()[:8]}"


def batch_manifest(
    name: str,
    namespace: str,
    tenant: str,
    stages: list[str],
    transactions: tuple[bytes, ...],
    block: int,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_SOURCE: SOURCE_HOST_LISTENER},
            "annotations": {ANNOTATION_BLOCK: str(block)},
        },
        "spec": {
            "tenant": tenant,
            "stages": stages,
            "source": {"transactions": ["0x" + t.hex() for t in transactions]},
        },
    }


def require_contracts(settings: Settings) -> None:
    if not settings.host_executor_address or not settings.host_acl_address:
        raise Fatal(
            "FHE_HOST_EXECUTOR_ADDRESS and FHE_HOST_ACL_ADDRESS are required "
            "(the FheExecutor and ACL contracts on the host chain)"
        )


@dataclass
class Counters:
    blocks: int = 0
    computations: int = 0
    allowed: int = 0
    skipped_logs: int = 0
    batches: int = 0
    reorgs: int = 0
    split_blocks: int = 0  # blocks whose work needed more than one FheBatch
    orphaned_blocks: int = 0
    heads: int = 0  # newHeads notifications received
    subscribed: bool = False
    skipped_reasons: list[str] = field(default_factory=list)


class HostListener:
    def __init__(
        self,
        settings: Settings,
        w3: Web3,
        pool: asyncpg.Pool,
        batches_api: Any | None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        """``batches_api`` is a kubernetes CustomObjectsApi, or None to write rows only."""
        self.stopping = asyncio.Event()  # run() replaces it with its stop event
        require_contracts(settings)
        self.settings = settings
        self.heartbeat = heartbeat
        self.w3 = w3
        self.pool = pool
        self.batches_api = batches_api
        # Zama's FHEVMExecutor and ACL (@fhevm/host-contracts), ABIs shipped compiled.
        self.executor = bound(w3, "host/FHEVMExecutor", settings.host_executor_address)
        self.acl = bound(w3, "host/ACL", settings.host_acl_address)
        self.acl_raw = bytes.fromhex(self.acl.address[2:])  # what the handle rule hashes
        self.counters = Counters()
        self.chain_id = 0
        self.tenant: queries.Tenant | None = None

    async def start(self) -> None:
        self.chain_id = await self._rpc(lambda: self.w3.eth.chain_id)
        wanted = self.settings.host_tenant
        async with self.pool.acquire() as connection:
            if wanted is None:  # the tenant whose keys serve this host chain
                found = await proofs.tenant_for_chain(connection, self.chain_id)
                self.tenant = found.tenant if found else None
            else:
                self.tenant = await queries.get_tenant(connection, wanted)
        if self.tenant is None:
            raise Fatal(
                f"no tenant serves host chain {self.chain_id}; create one with "
                f"`fhectl tenant create NAME --chain-id {self.chain_id}`"
                if wanted is None
                else f"tenant {wanted!r} does not exist"
            )
        if self.tenant.chain_id != self.chain_id:
            raise Fatal(
                f"tenant {self.tenant.name!r} is on chain {self.tenant.chain_id}, "
                f"the host RPC serves chain {self.chain_id}"
            )

    async def _rpc(self, call):
        return await chain_call(call, "host chain")

    async def _block_hash_at(self, number: int) -> bytes | None:
        from web3.exceptions import BlockNotFound

        try:
            block = await self._rpc(lambda: self.w3.eth.get_block(number))
        except BlockNotFound:  # the chain is shorter now (a reorg to a shorter branch)
            return None
        return bytes(block["hash"])

    async def poll(self) -> int:
        """One round: reorgs, new blocks, batches. Returns the blocks processed."""
        head = await self._rpc(lambda: self.w3.eth.block_number)
        target = head - self.settings.host_finality_depth
        await self._check_reorg()
        async with self.pool.acquire() as connection:
            last = await host_db.last_block(connection, self.chain_id)
        start = last.number + 1 if last else self.settings.host_start_block
        processed = 0
        parent = last.hash if last else None
        for number in range(start, target + 1):
            if self.stopping.is_set():  # SIGTERM: each block is committed; stop between
                break
            block_hash = await self._process(number, parent)
            if block_hash is None:  # the chain moved under us: re-check for a reorg
                break
            parent = block_hash
            processed += 1
            metrics.LISTENER_BLOCKS_PROCESSED.labels(LISTENER).inc()
            self._beat()
        metrics.LISTENER_LAG_BLOCKS.labels(LISTENER).set(max(0, head - (start - 1 + processed)))
        await self._sync_batches()
        return processed

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll on every new head the subscription reports, and at least every
        ``host_poll_interval_s`` (the fallback when there is no subscription). On
        ``stop`` the block in hand is finished and committed, then it returns."""
        self.stopping = stop
        await self.start()
        new_head = asyncio.Event()
        heads = asyncio.create_task(follow_heads(self.ws_url(), new_head, stop, self.counters))
        try:
            while not stop.is_set():
                new_head.clear()
                try:
                    await self.poll()
                except Exception as raised:
                    error = classify(raised)
                    if not isinstance(error, Recoverable):
                        raise
                    metrics.WORKER_ERRORS.labels(WORKER).inc()
                    log.warning("host poll deferred", extra={"fields": {"error": str(error)}})
                self._beat()
                await wait_for_head(new_head, stop, self.settings.host_poll_interval_s)
        finally:
            heads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heads

    def ws_url(self) -> str | None:
        return ws_url(self.settings.host_ws_url, self.settings.host_rpc_url)

    # --- reorgs ----------------------------------------------------------------------
    async def _check_reorg(self) -> None:
        async with self.pool.acquire() as connection:
            last = await host_db.last_block(connection, self.chain_id)
            if last is None:
                return
            window = await host_db.canonical_blocks(
                connection, self.chain_id, last.number - self.settings.host_reorg_window + 1
            )
        fork = None
        for seen in window:  # highest first; stored blocks are parent-linked
            if await self._block_hash_at(seen.number) == seen.hash:
                fork = seen.number
                break
        if fork == last.number:
            return
        # No match in the window: orphan the window; the next poll's parent check finds
        # the older stored block does not fit either, and the search goes on from there.
        keep = fork if fork is not None else window[-1].number - 1
        async with self.pool.acquire() as connection, connection.transaction():
            assert self.tenant is not None
            names = await host_db.orphan_above(
                connection, self.chain_id, self.tenant.tenant_id, keep
            )
        self.counters.reorgs += 1
        self.counters.orphaned_blocks += last.number - keep
        log.warning(
            "reorg",
            extra={
                "fields": {
                    "chain": self.chain_id,
                    "kept": keep,
                    "orphaned": last.number - keep,
                    "batches": names,
                }
            },
        )

    # --- one block -------------------------------------------------------------------
    async def _process(self, number: int, parent: bytes | None) -> bytes | None:
        """Record one block; None (nothing written) when it does not extend the stored
        chain - a reorg happened since the check, and the next poll handles it."""
        from web3.exceptions import BlockNotFound

        try:
            block = await self._rpc(lambda: self.w3.eth.get_block(number))
        except BlockNotFound:
            return None
        block_hash = bytes(block["hash"])
        if parent is not None and bytes(block["parentHash"]) != parent:
            log.warning(
                "parent mismatch",
                extra={
                    "fields": {
                        "number": number,
                        "parent": "0x" + bytes(block["parentHash"]).hex()[:16],
                        "stored": "0x" + parent.hex()[:16],
                    }
                },
            )
            return None
        logs = await self._rpc(
            lambda: self.w3.eth.get_logs(
                {"blockHash": block_hash, "address": [self.executor.address, self.acl.address]}
            )
        )
        assert self.tenant is not None
        computations, allowed, transactions, inputs, delegations = self._decode(logs)
        late_allowed = await self._late_allowed(computations, allowed)
        for tx, _ in late_allowed:  # an ACL-only transaction has FHE work now: publishing
            if tx not in transactions:
                transactions.append(tx)
        name = batch_name(self.chain_id, number, block_hash) if transactions else None
        per_transaction = [
            sum(1 for r in computations if r.transaction_id == t)
            + sum(1 for link_tx, _ in late_allowed if link_tx == t)
            for t in transactions
        ]
        costs = [
            sum(row_cost(r) for r in computations if r.transaction_id == t) for t in transactions
        ]
        parts = batch_parts(
            per_transaction,
            self.settings.host_batch_max_computations,
            cost_per_transaction=costs,
            max_cost=self.settings.batch_max_cost,
        )
        if parts and parts[-1] > 0:
            self.counters.split_blocks += 1
            log.info(
                "block split",
                extra={
                    "fields": {
                        "number": number,
                        "batches": parts[-1] + 1,
                        "transactions": len(transactions),
                        "computations": len(computations),
                    }
                },
            )
        record = host_db.BlockRecord(
            self.chain_id,
            number,
            block_hash,
            bytes(block["parentHash"]),
            self.tenant.tenant_id,
            tuple(computations),
            tuple(
                host_db.AllowedHandle(a.handle, a.account_address, a.event_type, a.transaction_id)
                for a in allowed
            ),
            tuple(transactions),
            name,
            tuple(parts),
            tuple(inputs),
            tuple(delegations),
            tuple(late_allowed),
        )
        async with self.pool.acquire() as connection, connection.transaction():
            new = await host_db.record_block(connection, record)
        if new:
            self.counters.blocks += 1
            self.counters.computations += len(computations)
            self.counters.allowed += len(allowed)
        log.info(
            "block",
            extra={
                "fields": {
                    "number": number,
                    "hash": "0x" + block_hash.hex()[:16],
                    "new": new,
                    "computations": len(computations),
                    "allowed": len(allowed),
                    "batch": name,
                }
            },
        )
        return block_hash

    async def _late_allowed(
        self, computations: list[Any], allowed: list[AllowedRow]
    ) -> list[tuple[bytes, bytes]]:
        """(transaction, handle) of the handles this block allows (``Allowed`` or
        ``AllowedForDecryption``) that an earlier block computed: a persistent allow is
        what makes a handle decryptable, so it is published however late it comes.
        Handles of this block's own computations are published with them already;
        inputs and unknown handles have nothing to publish."""
        here = {r.output_handle for r in computations}
        wanted = {a.handle for a in allowed if a.event_type in (0, 1)} - here
        if not wanted:
            return []
        assert self.tenant is not None
        async with self.pool.acquire() as connection:
            known = await host_db.computed_handles(
                connection, self.tenant.tenant_id, sorted(wanted)
            )
        links = dict.fromkeys(
            (a.transaction_id, a.handle)
            for a in allowed
            if a.handle in known and a.event_type in (0, 1)
        )
        return list(links)

    def _decode(self, logs: list[Any]) -> tuple[list, list[AllowedRow], list[bytes], list, list]:
        """Rows of the block's logs. A transaction with an executor event that cannot
        be used is refused whole: half of its graph would leave the rest waiting for
        handles nothing produces."""
        by_index = sorted(logs, key=lambda item: (item["transactionIndex"], item["logIndex"]))
        per_transaction: dict[bytes, list] = {}
        refused: dict[bytes, str] = {}
        inputs: list = []
        for entry, (name, args) in self._events(self.executor, by_index):
            tx = bytes(entry["transactionHash"])
            if name in IGNORED_EVENTS:
                continue
            try:
                if name == VERIFY_INPUT:
                    inputs.append(verified_input(name, args, tx))
                    continue
                row = computation_row(name, args, tx)
                check_derivation(row, self.acl_raw, self.chain_id)
                # The same computation twice in one transaction is one row.
                if all(r.output_handle != row.output_handle for r in per_transaction.get(tx, [])):
                    per_transaction.setdefault(tx, []).append(row)
            except (UndecodableEvent, KeyError, TypeError, ValueError) as error:
                self._skip(entry, str(error))
                refused.setdefault(tx, str(error))
        allowed: list[AllowedRow] = []
        delegations: list = []
        for entry, (name, args) in self._events(self.acl, by_index):
            try:
                if name in (DELEGATED, REVOKED):
                    delegations.append(delegation_row(name, args, bytes(entry["transactionHash"])))
                    continue
                allowed.extend(allowed_rows(name, args, bytes(entry["transactionHash"])))
            except (UndecodableEvent, KeyError, TypeError, ValueError) as error:
                self._skip(entry, str(error))
        for tx, reason in refused.items():
            dropped = per_transaction.pop(tx, [])
            if dropped:
                log.warning(
                    "transaction refused",
                    extra={
                        "fields": {
                            "tx": "0x" + tx.hex(),
                            "dropped": len(dropped),
                            "reason": reason[:300],
                        }
                    },
                )
        computations = [row for rows in per_transaction.values() for row in rows]
        kept = [v for v in inputs if v.transaction_id not in refused]
        return computations, allowed, list(per_transaction), kept, delegations

    def _events(self, contract, logs):
        """(log, (name, args)) of the logs this contract emitted that decode at all."""
        for entry in logs:
            if entry["address"] != contract.address:
                continue
            try:
                decoded = decode_logs(contract, [entry])
            except Exception as error:  # web3 raises several types on bad data
                self._skip(entry, f"cannot decode: {type(error).__name__}: {error}")
                continue
            if not decoded:
                self._skip(entry, "unknown event topic")
                continue
            yield entry, decoded[0]

    def _skip(self, entry: Any, reason: str) -> None:
        record_skip(self.counters, entry, reason, "log skipped")

    # --- batches ---------------------------------------------------------------------
    async def _sync_batches(self) -> None:
        if self.batches_api is None:
            return
        from kubernetes.client.rest import ApiException

        async with self.pool.acquire() as connection:
            pending = await host_db.pending_batches(connection, self.chain_id)
            cancelled = await host_db.pending_cancellations(connection, self.chain_id)
        namespace = self.settings.namespace
        for block_hash, names in cancelled:
            for name in names:
                try:
                    await asyncio.to_thread(
                        self.batches_api.delete_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        name,
                    )
                except ApiException as error:
                    if error.status != 404:
                        raise ServiceUnavailable("kubernetes", str(error)) from None
                log.info("batch cancelled", extra={"fields": {"batch": name}})
            async with self.pool.acquire() as connection:
                await host_db.mark_batch_cancelled(connection, self.chain_id, block_hash)
        assert self.tenant is not None
        by_block: dict[bytes, list[host_db.PendingBatch]] = {}
        for item in pending:
            by_block.setdefault(item.hash, []).append(item)
        for block_hash, parts in by_block.items():  # stamped only when every part exists
            for item in parts:
                manifest = batch_manifest(
                    item.batch_name,
                    namespace,
                    self.tenant.name,
                    self.settings.host_batch_stages,
                    item.transactions,
                    item.number,
                )
                try:
                    await asyncio.to_thread(
                        self.batches_api.create_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        manifest,
                    )
                    self.counters.batches += 1
                except ApiException as error:
                    if error.status != 409:
                        raise ServiceUnavailable("kubernetes", str(error)) from None
                log.info(
                    "batch created",
                    extra={"fields": {"batch": item.batch_name, "block": item.number}},
                )
            async with self.pool.acquire() as connection:
                await host_db.mark_batch_created(connection, self.chain_id, block_hash)
