"""``fhe-job compute``: load one batch's graph, take this pod's share, run it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from coprocessor.api.summary import ComputeSummary
from coprocessor.db import queries
from coprocessor.db.pool import ConnectOptions, pool_of
from coprocessor.errors import Irrecoverable
from coprocessor.fhe.engine import Evaluator
from coprocessor.keycache import KeyCache
from coprocessor.settings import Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import devices_for, load_evaluator

from .dag import build_graph, node_from_row, partition, restrict
from .executor import Executor, usable_cores
from .schedule import Strategy

log = logging.getLogger(__name__)


class UnknownBatch(Irrecoverable):
    """The batch id names nothing in the database (never admitted, or a typo)."""


async def run_compute(
    settings: Settings,
    batch_id: str,
    index: int = 0,
    count: int = 1,
    shared_key: Callable[[], Awaitable[Evaluator | None]] | None = None,
) -> ComputeSummary:
    """``shared_key``: the whole key a pod that also runs SNS is loading
    (``sns.Preload``), used instead of loading compute's share; None where that load
    failed, and the share is loaded after all."""
    pool = await pool_of(settings)
    try:
        async with pool.acquire() as connection:
            tenant = await batch_tenant(connection, batch_id)
            rows = await queries.batch_computations(connection, batch_id)
        graph = build_graph(node_from_row(r) for r in rows)
        share = restrict(graph, partition(graph, index, count))
        workers = settings.compute_workers or usable_cores()
        log.info(
            "batch loaded",
            extra={
                "fields": {
                    "batch": batch_id,
                    "tenant": tenant.name,
                    "nodes": len(graph.nodes),
                    "share": len(share.nodes),
                    "pod": f"{index}/{count}",
                    "workers": workers,
                    "strategy": settings.compute_strategy,
                }
            },
        )
        loading = time.monotonic()
        evaluator = None  # nothing to compute: do not load a key of hundreds of MB
        if not all(n.completed or n.error for n in share.nodes.values()):
            if shared_key is not None:
                evaluator = await shared_key()
            if evaluator is None:
                # In a thread: S3, the key's expansion and (on GPU nodes) CUDA's start.
                evaluator = await asyncio.to_thread(
                    lambda: load_evaluator(
                        ObjectStore(settings),
                        tenant,
                        "compute",
                        KeyCache.of(settings),
                        devices_for(settings, tenant),
                    )
                )
        key_load_s = time.monotonic() - loading
        executor = Executor(
            pool,
            settings.database_url,
            tenant.tenant_id,
            evaluator,
            share,
            workers=workers,
            strategy=Strategy(settings.compute_strategy),
            input_wait_s=settings.compute_input_wait_s,
            poll_interval_s=min(settings.notify_poll_interval_s, 2.0),
            connect_options=ConnectOptions.of(settings),
        )
        summary = await executor.run()
        summary.key_load_s = key_load_s
        return summary
    finally:
        await pool.close()


async def batch_tenant(connection, batch_id: str) -> queries.Tenant:
    """The tenant of an admitted batch; UnknownBatch when it was never admitted."""
    batch = await queries.get_batch(connection, batch_id)
    if batch is None:
        raise UnknownBatch(f"batch {batch_id!r} is not admitted in the database")
    tenant = await queries.get_tenant_by_id(connection, batch.tenant_id)
    assert tenant is not None  # foreign key
    return tenant
