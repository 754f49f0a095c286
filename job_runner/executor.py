"""Run a graph's nodes on a thread pool, committing each result as soon as it exists.

Each node runs in its own database transaction: lock the row (``SKIP LOCKED``), skip
it if it is already completed, evaluate, store the ciphertext and mark it completed,
commit. So a crash loses only the nodes in flight, a re-run skips what is done, and
two pods (or two batches sharing a computation) never compute one node twice: the
second finds the row locked and waits for the first.

Threads, not processes: both backends release the GIL while they compute (the
TFHE-rs extension wraps every native call in ``allow_threads``; concrete's ``run``
does too, measured 1.83x on two threads), and threads share the loaded server key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import asyncpg

from coprocessor.api.summary import ComputeSummary
from coprocessor.db import queries
from coprocessor.db.notify import NotificationWaiter
from coprocessor.db.pool import DEFAULT_OPTIONS, ConnectOptions
from coprocessor.errors import (
    Irrecoverable,
    MissingInputs,
)
from coprocessor.fhe.engine import Evaluator
from coprocessor.fhe.envelope import Envelope

from .dag import Graph, Node, label
from .schedule import Schedule, Strategy

log = logging.getLogger(__name__)

CIPHERTEXT_VERSION = 0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Computed:
    ciphertext: bytes


@dataclass(frozen=True)
class _Skipped:  # completed before this run looked
    pass


@dataclass(frozen=True)
class _Busy:  # another worker holds the row
    pass


@dataclass(frozen=True)
class _Failed:
    reason: str


_Outcome = _Computed | _Skipped | _Busy | _Failed


class Executor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        tenant_id: int,
        evaluator: Evaluator | None,
        graph: Graph,
        *,
        workers: int,
        strategy: Strategy = Strategy.MAX_PARALLELISM,
        input_wait_s: float = 120.0,
        poll_interval_s: float = 2.0,
        connect_options: ConnectOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.tenant_id = tenant_id
        self.evaluator = evaluator  # None only when the share has nothing left to run
        self.graph = graph
        self.workers = max(1, workers)
        self.strategy = strategy
        self.input_wait_s = input_wait_s
        self.poll_interval_s = poll_interval_s
        self.connect_options = connect_options
        self.schedule = Schedule(graph)
        self.summary = ComputeSummary(total=len(graph.nodes))
        self._cache: dict[bytes, bytes] = {}  # results of this run, until consumed
        self._consumers = {h: len(set(graph.dependents.get(h, ()))) for h in graph.nodes}

    async def run(self) -> ComputeSummary:
        started = time.monotonic()
        try:
            if not self.schedule.finished:
                with ThreadPoolExecutor(self.workers, thread_name_prefix="fhe") as threads:
                    await self._loop(threads)
        finally:
            self.summary.completed = len(self.schedule.done)
            self.summary.failed = len(self.schedule.failed)
            self.summary.failures = {label(h): r for h, r in self.schedule.failed.items()}
            self.summary.seconds = time.monotonic() - started
        return self.summary

    # --- the loop ------------------------------------------------------------------
    async def _loop(self, threads: ThreadPoolExecutor) -> None:
        schedule = self.schedule
        tasks: dict[asyncio.Task[_Outcome], bytes] = {}
        async with NotificationWaiter(
            self.database_url,
            (queries.CIPHERTEXT_COMPUTED,),
            poll_interval=self.poll_interval_s,
            options=self.connect_options,
        ) as waiter:
            await self._refresh_awaited()
            last_progress = last_refresh = time.monotonic()
            try:
                while not schedule.finished:
                    for handle in schedule.next_batch(self.workers - len(tasks), self.strategy):
                        schedule.started(handle)
                        task = asyncio.create_task(self._run_node(threads, handle))
                        tasks[task] = handle
                    if tasks:
                        done, _ = await asyncio.wait(
                            tasks, timeout=self.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in done:
                            await self._record(tasks.pop(task), task.result())
                            last_progress = time.monotonic()
                    else:
                        waited = time.monotonic() - last_progress
                        if waited >= self.input_wait_s:
                            missing = sorted(schedule.awaited())
                            raise MissingInputs(missing, await self._why_missing(missing))
                        await waiter.wait(min(self.poll_interval_s, self.input_wait_s - waited))
                    if schedule.awaited() and (
                        not tasks or time.monotonic() - last_refresh >= self.poll_interval_s
                    ):
                        if await self._refresh_awaited():
                            last_progress = time.monotonic()
                        last_refresh = time.monotonic()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _why_missing(self, missing: list[bytes]) -> str:
        """Name the inputs the host accepted that this coprocessor never verified: the
        wait is for the verify stage (a proof request the gateway listener queues)."""
        async with self.pool.acquire() as connection:
            unverified = await queries.host_inputs_awaiting_verification(
                connection, self.tenant_id, missing
            )
        if not unverified:
            return ""
        handle, tx = next(iter(unverified.items()))
        return (
            f"; {len(unverified)} of them the host accepted as inputs (VerifyInput, e.g. "
            f"0x{handle.hex()} in tx 0x{tx.hex()}) but the verify stage has not stored: "
            "is its proof request queued (gateway listener, `fhectl input submit`)?"
        )

    async def _refresh_awaited(self) -> bool:
        """Look up what this pod waits for; True if anything arrived or failed."""
        awaited = self.schedule.awaited()
        if not awaited:
            return False
        async with self.pool.acquire() as connection:
            states = await queries.input_states(connection, self.tenant_id, sorted(awaited))
            changed = False
            for handle, state in states.items():
                if state.stored:
                    self.schedule.arrived(handle)
                    changed = True
                elif state.failed is not None:
                    changed = True
                    if handle in self.schedule.elsewhere:
                        self.schedule.failed_node(handle, state.failed)
                        continue
                    for consumer in self.schedule.input_failed(handle, state.failed):
                        await queries.mark_error(
                            connection, self.tenant_id, consumer, self.schedule.failed[consumer]
                        )
        log.debug("inputs awaited", extra={"fields": {"count": len(awaited)}})
        return changed

    async def _record(self, handle: bytes, outcome: _Outcome) -> None:
        schedule = self.schedule
        if isinstance(outcome, _Computed):
            self.summary.computed += 1
            schedule.finished_node(handle)
            if self._consumers.get(handle):
                self._cache[handle] = outcome.ciphertext
        elif isinstance(outcome, _Skipped):
            schedule.finished_node(handle)
        elif isinstance(outcome, _Busy):
            schedule.held_elsewhere(handle)
        else:
            lost = schedule.failed_node(handle, outcome.reason)
            log.warning(
                "computation failed",
                extra={
                    "fields": {
                        "handle": label(handle),
                        "reason": outcome.reason,
                        "dependents": len(lost),
                    }
                },
            )
        for operand in set(self.graph.nodes[handle].operands):
            if operand in self._consumers:
                self._consumers[operand] -= 1
                if self._consumers[operand] <= 0:
                    self._cache.pop(operand, None)

    # --- one node --------------------------------------------------------------------
    async def _run_node(self, threads: ThreadPoolExecutor, handle: bytes) -> _Outcome:
        node = self.graph.nodes[handle]
        async with self.pool.acquire() as connection, connection.transaction():
            state = await queries.lock_computation(connection, self.tenant_id, handle)
            if state is None:
                return _Busy()
            if state.is_completed:
                return _Skipped()
            if state.is_error:
                return _Failed(state.error_message or "failed")
            started = time.monotonic()
            try:
                operands = await self._operands(connection, node)
                result = await asyncio.get_running_loop().run_in_executor(
                    threads, self._evaluate, node, operands
                )
            except Irrecoverable as error:
                reason = str(error)
                await queries.mark_error(connection, self.tenant_id, handle, reason)
                return _Failed(reason)
            await queries.complete_computation(
                connection,
                self.tenant_id,
                handle,
                result,
                CIPHERTEXT_VERSION,
                int(node.result_type),
            )
        log.info(
            "computed",
            extra={
                "fields": {
                    "handle": label(handle),
                    "op": node.op.event_name,
                    "type": node.result_type.name,
                    "seconds": round(time.monotonic() - started, 3),
                }
            },
        )
        return _Computed(result)

    async def _operands(self, connection: asyncpg.Connection, node: Node) -> list[bytes]:
        missing = [h for h in dict.fromkeys(node.operands) if h not in self._cache]
        stored = await queries.get_ciphertexts(connection, self.tenant_id, missing)
        if len(stored) != len(missing):
            absent = [h for h in missing if h not in stored]
            raise MissingInputs(absent)
        return [self._cache[h] if h in self._cache else stored[h].ciphertext for h in node.operands]

    def _evaluate(self, node: Node, operands: Sequence[bytes]) -> bytes:
        assert self.evaluator is not None, "an executor with work needs an evaluator"
        result = self.evaluator.evaluate(node.request(operands))
        produced = Envelope.from_bytes(result).fhe_type
        if produced is not node.result_type:
            raise ResultTypeMismatch(
                f"computation {label(node.handle)}: {node.op.event_name} produced "
                f"{produced.name} but the row says {node.result_type.name}"
            )
        return result


class ResultTypeMismatch(Irrecoverable):
    """A row's output type disagrees with what its operation produces."""
