"""A compute pod killed mid-batch, then run again: nothing computed twice, all correct."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from coprocessor.types import FheType, Op
from tests.paths import REPO_ROOT


async def wait_for_completed(conn, batch: str, at_least: int, process, timeout: float) -> int:
    """Poll the database (the observable effect), not the clock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            """SELECT count(*) FROM batch_computations b JOIN computations c
               USING (tenant_id, output_handle) WHERE b.batch_id = $1 AND c.is_completed""",
            batch,
        )
        if done >= at_least:
            return done
        assert process.poll() is None, process.stderr.read()
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} computations completed in {timeout} s")


async def test_kill_in_the_middle_then_rerun(graph, conn, compute_settings):
    from job_runner.compute import run_compute

    x = graph.input(11, FheType.Uint8)
    chain = [x]
    for step in range(10):
        chain.append(graph.node(Op.Mul if step % 2 else Op.Add, chain[-1], step + 3))
    batch = await graph.admit(conn)
    env = {
        **os.environ,
        "FHE_DATABASE_URL": compute_settings.database_url,
        "FHE_CACHE_DIR": str(compute_settings.cache_dir),
        "FHE_TERMINATION_LOG": str(compute_settings.termination_log),
        "FHE_COMPUTE_WORKERS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "job_runner", "compute", "--batch", batch],
        env=env,
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await wait_for_completed(conn, batch, 3, process, timeout=180)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = {
        bytes(r["output_handle"]): r["completed_at"]
        for r in await conn.fetch(
            "SELECT output_handle, completed_at FROM computations WHERE is_completed "
            "AND output_handle = ANY($1::bytea[])",
            chain[1:],
        )
    }
    assert 3 <= len(before) < 10, "the kill should land mid-batch"

    summary = await run_compute(compute_settings, batch)
    assert summary.computed == 10 - len(before)
    assert (summary.completed, summary.failed) == (10, 0)
    after = {
        bytes(r["output_handle"]): r["completed_at"]
        for r in await conn.fetch(
            "SELECT output_handle, completed_at FROM computations "
            "WHERE output_handle = ANY($1::bytea[])",
            list(before),
        )
    }
    assert after == before  # the nodes done before the kill were not computed again
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM ciphertexts WHERE handle = ANY($1::bytea[])", chain[1:]
        )
        == 10
    )
    decrypted = await graph.check(conn, chain[1:])
    assert decrypted == {h: graph.expected[h] for h in chain[1:]}
