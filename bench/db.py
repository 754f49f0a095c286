"""Database benchmark: lock + complete throughput and NOTIFY-to-wakeup latency.

    .venv/bin/python bench/db.py [--items 2000] [--samples 300]

Uses the running dev stack (or starts one in a temporary directory), a fresh database
of its own, and writes bench/results/db.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from coprocessor.db import migrate, queries
from coprocessor.db.notify import NotificationWaiter
from coprocessor.db.rows import BatchAdmission, ComputationRow
from coprocessor.settings import MIGRATIONS_DIR
from coprocessor.types import FheType, Op
from devstack import stack
from devstack.settings import default_state_dir
from devstack.versions import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def handle(n: int) -> bytes:
    return n.to_bytes(21, "big") + b"\xff" + (12345).to_bytes(8, "big") + bytes([5, 0])


async def reset(pool: asyncpg.Pool, items: int, run: int) -> tuple[int, str]:
    async with pool.acquire() as connection:
        await connection.execute(
            "TRUNCATE batch_computations, batches, computations, "
            "ciphertexts RESTART IDENTITY CASCADE"
        )
        tenant = await queries.create_tenant(connection, "bench", 12345, b"k", "reference")
        rows = tuple(
            ComputationRow(handle(1000 + i), FheType.Uint64, Op.Add, (handle(1), handle(2)))
            for i in range(items)
        )
        batch_id = f"bench/run{run}@x"
        await queries.admit_batch(
            connection,
            BatchAdmission(batch_id, tenant.tenant_id, "bench", f"run{run}", "x", None, rows),
        )
    return tenant.tenant_id, batch_id


async def claim_throughput(pool: asyncpg.Pool, workers: int, items: int, run: int) -> float:
    tenant_id, batch_id = await reset(pool, items, run)
    async with pool.acquire() as connection:
        handles = [c.output_handle for c in await queries.batch_computations(connection, batch_id)]
    ciphertext = bytes(4096)  # the size class of a small compressed ciphertext

    async def worker() -> int:
        done = 0
        while True:
            # What a compute pod does per node: lock the row (SKIP LOCKED), store the
            # result, mark it completed, in one transaction.
            progressed = 0
            for handle_ in handles:
                async with pool.acquire() as connection, connection.transaction():
                    state = await queries.lock_computation(connection, tenant_id, handle_)
                    if state is None or state.is_completed:
                        continue
                    await queries.complete_computation(
                        connection, tenant_id, handle_, ciphertext, 0, 5
                    )
                    progressed += 1
            if not progressed:
                return done
            done += progressed

    started = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(workers)))
    seconds = time.perf_counter() - started
    assert sum(counts) == items, f"processed {sum(counts)} of {items}"
    return items / seconds


async def notify_latency(url: str, samples: int) -> dict[str, float]:
    delays: list[float] = []
    sender = await asyncpg.connect(url)
    async with NotificationWaiter(url, (queries.WORK_AVAILABLE,), poll_interval=5) as waiter:
        for _ in range(samples):
            sent = time.perf_counter_ns()
            await queries.notify(sender, queries.WORK_AVAILABLE, str(sent))
            wakeup = await waiter.wait(timeout=5)
            assert wakeup.reason == "notified" and wakeup.payload == str(sent)
            delays.append((time.perf_counter_ns() - sent) / 1e6)
    await sender.close()
    delays.sort()
    return {
        "p50_ms": round(statistics.median(delays), 3),
        "p99_ms": round(delays[int(len(delays) * 0.99) - 1], 3),
        "max_ms": round(delays[-1], 3),
        "samples": samples,
    }


async def main_async(args: argparse.Namespace, server_url: str) -> dict:
    async with migrate.scratch_database(server_url, MIGRATIONS_DIR, "bench") as url:
        pool = await asyncpg.create_pool(url, min_size=4, max_size=8)
        throughput = {}
        for run, workers in enumerate((1, 2, 4)):
            rate = await claim_throughput(pool, workers, args.items, run)
            throughput[str(workers)] = round(rate, 1)
            print(f"lock+complete, {workers} worker(s): {rate:8.1f} rows/s", flush=True)
        await pool.close()
        latency = await notify_latency(url, args.samples)
        print(f"NOTIFY -> wakeup: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms")
    return {"lock_complete_rows_per_s": throughput, "notify_wakeup": latency, "items": args.items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    components = stack.default_components()
    with tempfile.TemporaryDirectory(prefix="fhe-bench-") as fallback:
        state_dir, started = stack.reuse_or_start(default_state_dir(), Path(fallback), components)
        try:
            server_url = stack.env(state_dir, components)["FHE_DATABASE_URL"]
            result = asyncio.run(main_async(args, server_url))
        finally:
            if started:
                stack.down(state_dir, components)
    result["machine"] = {"cpus": __import__("os").cpu_count(), "python": sys.version.split()[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "db.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'db.json'}")


if __name__ == "__main__":
    main()
