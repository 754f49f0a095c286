"""The compute stage on real TFHE-rs ciphertexts, a real PostgreSQL and a real S3.

Every result is decrypted and compared with the engine's plaintext reference. Small
types (Uint8, Bool) keep each operation under a second on two cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from coprocessor.errors import MissingInputs
from coprocessor.fhe.envelope import Envelope
from coprocessor.settings import load_settings
from coprocessor.types import FheType, Op
from job_runner.__main__ import run_stage
from job_runner.compute import run_compute

U8 = FheType.Uint8


async def assert_results(graph, conn, handles):
    decrypted = await graph.check(conn, handles)
    assert decrypted == {h: graph.expected[h] for h in handles}


async def test_diamond_matches_the_reference(graph, conn, compute_settings):
    x, y = graph.input(200, U8), graph.input(77, U8)
    a = graph.node(Op.Add, x, y)
    b = graph.node(Op.Mul, a, 3)
    c = graph.node(Op.Sub, a, y)
    d = graph.node(Op.BitXor, b, c)
    ok = graph.node(Op.Ge, d, c)
    out = graph.node(Op.IfThenElse, ok, d, c)
    batch = await graph.admit(conn)
    summary = await run_compute(compute_settings, batch)
    assert (summary.total, summary.completed, summary.computed, summary.failed) == (6, 6, 6, 0)
    await assert_results(graph, conn, [a, b, c, d, ok, out])
    # A second run finds everything done and computes nothing.
    again = await run_compute(compute_settings, batch)
    assert (again.completed, again.computed) == (6, 0)


async def test_long_chain_and_wide_fan_out_in_one_batch(graph, conn, compute_settings):
    x = graph.input(5, U8)
    chain = [x]
    for step in range(8):
        chain.append(graph.node(Op.Add, chain[-1], 31 * step + 1))
    fan = [graph.node(Op.Sub, x, k) for k in range(1, 9)]
    batch = await graph.admit(conn)
    summary = await run_compute(compute_settings, batch)
    assert (summary.completed, summary.failed) == (16, 0)
    await assert_results(graph, conn, chain[1:] + fan)


async def test_max_locality_gives_the_same_results(graph, conn, compute_settings):
    x, y = graph.input(9, U8), graph.input(250, U8)
    nodes = [graph.node(Op.Add, x, y), graph.node(Op.Max, x, y), graph.node(Op.Lt, x, y)]
    nodes.append(graph.node(Op.Min, nodes[0], nodes[1]))
    batch = await graph.admit(conn)
    settings = compute_settings.model_copy(update={"compute_strategy": "max_locality"})
    summary = await run_compute(settings, batch)
    assert (summary.completed, summary.failed) == (4, 0)
    await assert_results(graph, conn, nodes)


async def test_an_input_the_host_accepted_but_nobody_verified_is_named(
    graph, conn, compute_settings
):
    """VerifyInput gave a handle whose ciphertext only the verify stage can store: the
    compute pod waits for it, then says which input and where the host accepted it."""
    import os

    from coprocessor.types import make_handle

    unverified = make_handle(os.urandom(32), 0, 12345, U8).raw
    graph.types[unverified], graph.expected[unverified] = U8, 0
    graph.node(Op.Add, unverified, 1)
    batch = await graph.admit(conn)
    tx = os.urandom(32)
    await conn.execute(
        """INSERT INTO host_verified_inputs (tenant_id, handle, transaction_id,
               contract_address, user_address, input_type) VALUES ($1, $2, $3, $4, $5, $6)""",
        graph.tenant_id,
        unverified,
        tx,
        b"\x01" * 20,
        b"\x02" * 20,
        int(U8),
    )
    impatient = compute_settings.model_copy(update={"compute_input_wait_s": 0.5})
    with pytest.raises(MissingInputs) as missing:
        await run_compute(impatient, batch)
    message = str(missing.value)
    assert "0x" + unverified.hex() in message and "VerifyInput" in message
    assert "0x" + tx.hex() in message and "verify stage" in message


async def test_cross_batch_input_is_waited_for(graph, conn, compute_settings):
    x = graph.input(40, U8)
    produced = graph.node(Op.Add, x, 2)
    producer = await graph.admit(conn, "producer")
    consumed = graph.node(Op.Mul, produced, 3)
    consumer = await graph.admit(conn, "consumer")
    impatient = compute_settings.model_copy(update={"compute_input_wait_s": 0.5})
    with pytest.raises(MissingInputs) as missing:
        await run_compute(impatient, consumer)
    assert "0x" + produced.hex() in str(missing.value)
    waiting = asyncio.create_task(run_compute(compute_settings, consumer))
    await run_compute(compute_settings, producer)
    summary = await asyncio.wait_for(waiting, 60)
    assert (summary.completed, summary.computed) == (1, 1)
    await assert_results(graph, conn, [produced, consumed])


async def test_a_shared_computation_is_computed_once(graph, conn, compute_settings):
    """Two batches (or two pods) holding one computation: the second finds the row
    locked, waits, and counts it done; nothing is computed twice."""
    x = graph.input(100, U8)
    shared = graph.node(Op.Mul, x, 7)
    after = graph.node(Op.Add, shared, 1)
    first = await graph.admit(conn, "first")
    graph.node(Op.Mul, x, 7)  # the same operation: the same handle
    second = await graph.admit(conn, "second")
    results = await asyncio.gather(
        run_compute(compute_settings, first), run_compute(compute_settings, second)
    )
    assert sum(r.computed for r in results) == 2  # shared once + after once
    assert [r.failed for r in results] == [0, 0]
    await assert_results(graph, conn, [shared, after])


async def test_indexed_pods_split_by_chain_and_cover_the_batch(graph, conn, compute_settings):
    x = graph.input(3, U8)
    left = graph.node(Op.Add, graph.node(Op.Add, x, 1), 1)
    right = graph.node(Op.Mul, graph.node(Op.Mul, x, 2), 2)
    batch = await graph.admit(conn)
    pods = await asyncio.gather(*(run_compute(compute_settings, batch, i, 2) for i in (0, 1)))
    assert [p.total for p in pods] == [2, 2]
    assert [p.computed for p in pods] == [2, 2]
    await assert_results(graph, conn, [left, right])


async def test_a_corrupted_input_fails_its_dependents_and_nothing_else(
    graph, conn, compute_settings
):
    good, bad = graph.input(10, U8), graph.input(20, U8)
    envelope = Envelope.from_bytes(graph.inputs[bad])
    payload = bytearray(envelope.payload)
    payload[len(payload) // 2 : len(payload) // 2 + 64] = b"\xff" * 64
    graph.inputs[bad] = dataclasses.replace(envelope, payload=bytes(payload)).to_bytes()
    broken = graph.node(Op.Add, bad, 1)
    downstream = graph.node(Op.Add, broken, good)
    fine = graph.node(Op.Add, good, 5)
    batch = await graph.admit(conn)
    summary = await run_compute(compute_settings, batch)
    assert (summary.completed, summary.failed) == (1, 2)
    await assert_results(graph, conn, [fine])
    rows = {
        bytes(r["output_handle"]): r
        for r in await conn.fetch("SELECT output_handle, is_error, error_message FROM computations")
    }
    assert rows[broken]["is_error"] and "rejected by TFHE-rs" in rows[broken]["error_message"]
    assert rows[downstream]["is_error"]
    assert rows[downstream]["error_message"].startswith("input 0x" + broken.hex())


async def test_unsupported_operation_fails_that_node_with_the_reason(graph, conn, compute_settings):
    x = graph.input(10, U8)
    graph.rows.append(_muldiv_row(graph, x))
    batch = await graph.admit(conn)
    summary = await run_compute(compute_settings, batch)
    assert summary.failed == 1 and "MulDiv" in next(iter(summary.failures.values()))


def _muldiv_row(graph, x):
    from coprocessor.db.rows import ComputationRow
    from coprocessor.types import derive_handle

    handle = derive_handle(Op.MulDiv, (x, x, x), graph.context, 12345, U8, scalar=False).raw
    return ComputationRow(handle, int(U8), int(Op.MulDiv), (x, x, x))


# --- the process entry point: exit codes and termination messages -----------------


def run_in_thread(*args):
    """run_stage owns its event loop (asyncio.run), so it runs beside the test's."""
    return asyncio.to_thread(run_stage, "compute", *args)


async def test_unknown_batch_exits_3_with_a_message(stage_env):
    assert await run_in_thread("fhe/nothing@0", 0, 1) == 3
    message = json.loads(stage_env.read_text())
    assert "not admitted" in message["error"] and message["exit_code"] == 3


async def test_database_down_exits_75(stage_env, monkeypatch):
    monkeypatch.setenv("FHE_DATABASE_URL", "postgresql://fhe@127.0.0.1:1/none")
    load_settings.cache_clear()
    assert await run_in_thread("fhe/x@0", 0, 1) == 75
    assert "postgres is unavailable" in json.loads(stage_env.read_text())["error"]


async def test_s3_down_exits_75_and_computes_nothing(stage_env, monkeypatch, graph, conn):
    x = graph.input(1, U8)
    node = graph.node(Op.Add, x, 1)
    batch = await graph.admit(conn)
    from coprocessor.fhe.tfhe_backend import TfheRsBackend

    TfheRsBackend._evaluators.clear()  # make the pod load its key, as a fresh pod would
    monkeypatch.setenv("FHE_S3_ENDPOINT", "http://127.0.0.1:1")
    load_settings.cache_clear()
    assert await run_in_thread(batch, 0, 1) == 75
    assert "s3 is unavailable" in json.loads(stage_env.read_text())["error"]
    assert not await conn.fetchval(
        "SELECT is_completed FROM computations WHERE output_handle = $1", node
    )


async def test_a_cycle_written_by_someone_else_exits_3_naming_it(stage_env, graph, conn):
    x = graph.input(1, U8)
    a, b = graph.node(Op.Add, x, 1), graph.node(Op.Add, x, 2)
    batch = await graph.admit(conn)
    # Rows written around admission's checks (as a buggy listener might): a <-> b.
    await conn.execute(
        "UPDATE computations SET dependencies = ARRAY[$2::bytea, $3::bytea], "
        "is_scalar = false WHERE output_handle = $1",
        a,
        b,
        x,
    )
    await conn.execute(
        "UPDATE computations SET dependencies = ARRAY[$2::bytea, $3::bytea], "
        "is_scalar = false WHERE output_handle = $1",
        b,
        a,
        x,
    )
    assert await run_in_thread(batch, 0, 1) == 3
    assert "dependency cycle among 2" in json.loads(stage_env.read_text())["error"]


async def test_failed_nodes_make_the_pod_exit_3_after_finishing_the_rest(stage_env, graph, conn):
    x = graph.input(1, U8)
    fine = graph.node(Op.Add, x, 1)
    graph.rows.append(_muldiv_row(graph, x))
    batch = await graph.admit(conn)
    assert await run_in_thread(batch, 0, 1) == 3
    message = json.loads(stage_env.read_text())
    assert (message["completed"], message["failed"]) == (1, 1)
    assert "1 computation(s) failed" in message["error"]
    await assert_results(graph, conn, [fine])


async def test_fresh_pods_on_one_node_share_the_expanded_key(
    graph, conn, compute_settings, tmp_path
):
    """With FHE_KEY_CACHE_DIR (the Job's hostPath), the first compute pod on a node
    expands the tenant's compute key and writes it to the node cache; the next pod
    reads it from there instead of S3, and computes the same results."""
    from coprocessor.fhe.tfhe_backend import TfheRsBackend
    from coprocessor.keycache import KeyCache

    settings = compute_settings.model_copy(update={"key_cache_dir": tmp_path / "keys"})
    cache = KeyCache.of(settings)
    assert cache is not None
    results = []
    for value in (11, 12):
        TfheRsBackend._evaluators.clear()  # a fresh pod: nothing in the process
        TfheRsBackend.named_evaluators.clear()
        x = graph.input(value, U8)
        node = graph.node(Op.Add, x, 100)
        batch = await graph.admit(conn)
        assert (await run_compute(settings, batch)).computed == 1
        results.append(node)
        files = list((tmp_path / "keys").glob("*-compute-*.key"))
        assert len(files) == 1, files  # written by the first pod, reused by the second
        if value == 11:
            first = files[0].stat().st_mtime_ns
    assert files[0].stat().st_mtime_ns >= first  # touched (LRU), not rewritten: same name
    await assert_results(graph, conn, results)
    # The second pod's key came from the node: with S3 unreachable it still computes.
    TfheRsBackend._evaluators.clear()
    TfheRsBackend.named_evaluators.clear()
    x = graph.input(13, U8)
    node = graph.node(Op.Add, x, 1)
    batch = await graph.admit(conn)
    offline = settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:1"})
    assert (await run_compute(offline, batch)).computed == 1
    await assert_results(graph, conn, [node])
