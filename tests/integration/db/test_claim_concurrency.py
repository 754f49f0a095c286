"""N workers claiming from one queue: every item exactly once, dependencies first."""

import asyncio
import itertools
import random
import time

from coprocessor.db import queries

from .helpers import add, admission, handle, store_inputs, tenant

WORKERS = 4
CHAINS = 30
CHAIN_LENGTH = 5
SOLO = 150  # items with no in-batch dependencies


async def test_concurrent_claimers_process_each_item_exactly_once(db):
    rng = random.Random(7)
    rows, dependencies = [], {}
    number = itertools.count(1000)
    for chain in range(CHAINS):
        previous = 1
        for _ in range(CHAIN_LENGTH):
            out = next(number)
            rows.append(add(out, previous, 2, chain=chain))
            dependencies[out] = previous
            previous = out
    for _ in range(SOLO):
        rows.append(add(next(number), 1, 2))
    rng.shuffle(rows)
    async with db.acquire() as connection:
        tenant_id = await tenant(connection)
        await store_inputs(connection, tenant_id, [1, 2])
        await queries.admit_batch(connection, admission(tenant_id, rows))

    events = itertools.count()
    claimed_at: dict[bytes, int] = {}
    committed_at: dict[bytes, int] = {}
    processed: list[tuple[int, bytes]] = []

    async def worker(worker_id: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with queries.claimed_work(db, limit=4) as (connection, work):
                for item in work:
                    claimed_at.setdefault(item.output_handle, next(events))
                    processed.append((worker_id, item.output_handle))
                    await queries.complete_computation(connection, item.tenant_id,
                                                       item.output_handle, b"result", 0, 5)
            for item in work:
                committed_at[item.output_handle] = next(events)
            if not work:
                async with db.acquire() as connection:
                    progress = await queries.batch_progress(connection, "fhe/b1@h1")
                if progress.pending == 0:
                    return
                await asyncio.sleep(0.005)  # others hold the ready items; poll again
        raise AssertionError(f"worker {worker_id} did not finish in time")

    await asyncio.gather(*(worker(i) for i in range(WORKERS)))

    handles = [h for _, h in processed]
    assert len(handles) == len(rows) == len(set(handles))
    assert set(handles) == {r.output_handle for r in rows}
    assert len({w for w, _ in processed}) > 1, "work was not shared between workers"
    checked = 0
    for out, dependency in dependencies.items():
        if dependency >= 1000:  # produced in this batch, not a stored input
            assert committed_at[handle(dependency)] < claimed_at[handle(out)]
            checked += 1
    assert checked == CHAINS * (CHAIN_LENGTH - 1)
    async with db.acquire() as connection:
        assert await connection.fetchval(
            "SELECT count(*) FROM computations WHERE NOT is_completed") == 0
        assert await connection.fetchval("SELECT count(*) FROM ciphertexts") == len(rows) + 2
