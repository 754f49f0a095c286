"""The SNS stage on real TFHE-rs ciphertexts, a real PostgreSQL and a real S3 (MinIO).

What it publishes is read back from S3, checked against the digests in the database
and decrypted - both forms - to the engine's plaintext reference.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from coprocessor import outputs as published
from coprocessor.fhe.engine import SquashedFormat
from coprocessor.storage import ObjectStore
from coprocessor.tenants import server_key_object
from coprocessor.types import FheType, Op
from devstack.s3 import MinioS3
from job_runner.__main__ import run_stage
from job_runner.compute import run_compute
from job_runner.sns import run_sns
from tests.published import buckets, published_objects

U8 = FheType.Uint8


async def digest_rows(conn, tenant_id, handles):
    rows = await conn.fetch(
        """SELECT handle, key_id, ciphertext, ciphertext128, ciphertext128_format, txn_is_sent
           FROM ciphertext_digest WHERE tenant_id = $1 AND handle = ANY($2::bytea[])""",
        tenant_id,
        list(handles),
    )
    return {bytes(r["handle"]): r for r in rows}


async def computed_batch(graph, conn, settings, outputs_of):
    """Admit the graph with the outputs chosen by ``outputs_of(handles)`` and compute it."""
    x, y = graph.input(200, U8), graph.input(77, U8)
    a = graph.node(Op.Add, x, y)
    b = graph.node(Op.Mul, a, 3)
    ok = graph.node(Op.Ge, b, a)
    out = graph.node(Op.IfThenElse, ok, b, a)
    handles = {"a": a, "b": b, "ok": ok, "out": out}
    outputs = [handles[n] for n in outputs_of]
    batch = await graph.admit(conn, outputs=outputs)
    summary = await run_compute(settings, batch)
    assert summary.failed == 0
    return batch, handles, outputs


async def test_outputs_are_squashed_uploaded_and_decrypt(graph, conn, compute_settings, tenant):
    record, client = tenant
    batch, handles, outputs = await computed_batch(
        graph, conn, compute_settings, ["a", "ok", "out"]
    )
    summary = await run_sns(compute_settings, batch)
    assert (
        summary.total,
        summary.completed,
        summary.squashed,
        summary.uploaded,
        summary.failed,
        summary.exit_code,
    ) == (3, 3, 3, 6, 0, 0)

    ct64_bucket, ct128_bucket = buckets(compute_settings)
    digests = await digest_rows(conn, graph.tenant_id, handles.values())
    assert set(digests) == set(outputs)  # b is not an output: not published
    stored = await graph.check(conn, outputs)  # the computed ciphertexts
    for handle in outputs:
        row = digests[handle]
        # Named by their keccak256 in their own buckets, raw TFHE-rs bytes (no envelope).
        ct64, ct128 = published_objects(compute_settings, row)
        assert not ct64.startswith(b"FHE1") and not ct128.startswith(b"FHE1")
        assert b"CompressedCiphertextList" in ct64[:256]
        assert bytes(row["key_id"]) == record.key_id
        # tfhe-rs packs U8 and wider into a compressed list; a Bool stays bare (smaller).
        expected_format = (
            SquashedFormat.UNCOMPRESSED_ON_CPU
            if graph.types[handle] is FheType.Bool
            else SquashedFormat.COMPRESSED_ON_CPU
        )
        assert row["ciphertext128_format"] == expected_format
        assert ct128_bucket.metadata(bytes(row["ciphertext128"]).hex())["ct-format"] == (
            published.ct_format_name(expected_format)
        )
        assert not row["txn_is_sent"]
        fhe_type = graph.types[handle]
        assert client.decrypt_published(ct64, fhe_type, squashed=False) == graph.expected[handle]
        assert client.decrypt_published(ct128, fhe_type, squashed=True) == graph.expected[handle]
        assert stored[handle] == graph.expected[handle]
    assert all(ct64_bucket.exists(bytes(r["ciphertext"]).hex()) for r in digests.values())

    # A second run finds every handle published and does nothing.
    again = await run_sns(compute_settings, batch)
    assert (again.completed, again.squashed, again.uploaded) == (3, 0, 0)
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pbs_computations WHERE tenant_id = $1 AND handle = ANY($2)",
            graph.tenant_id,
            outputs,
        )
        == 3
    )


async def test_rerun_after_a_lost_commit_reuses_the_uploaded_objects(graph, conn, compute_settings):
    """A pod killed after its uploads and before its commit: the re-run squashes again
    (deterministically), finds the same bytes in S3 and uploads nothing."""
    batch, _, outputs = await computed_batch(graph, conn, compute_settings, ["out"])
    first = await run_sns(compute_settings, batch)
    assert first.uploaded == 2
    before = await digest_rows(conn, graph.tenant_id, outputs)
    await conn.execute(
        "DELETE FROM ciphertext_digest WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        outputs[0],
    )
    await conn.execute(
        """UPDATE pbs_computations SET is_completed = false, completed_at = NULL
           WHERE tenant_id = $1 AND handle = $2""",
        graph.tenant_id,
        outputs[0],
    )
    await conn.execute(
        "UPDATE ciphertexts SET ciphertext128 = NULL WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        outputs[0],
    )
    again = await run_sns(compute_settings, batch)
    assert (again.completed, again.squashed, again.uploaded, again.reused) == (1, 1, 0, 2)
    after = await digest_rows(conn, graph.tenant_id, outputs)
    assert dict(after[outputs[0]]) == dict(before[outputs[0]])


async def test_corrupted_ciphertext_fails_that_handle_only(
    graph, conn, compute_settings, tenant, stage_env
):
    _, client = tenant
    batch, handles, outputs = await computed_batch(
        graph, conn, compute_settings, ["a", "ok", "out"]
    )
    good = await conn.fetchval(
        "SELECT ciphertext FROM ciphertexts WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        handles["a"],
    )
    await conn.execute(
        "UPDATE ciphertexts SET ciphertext = $3 WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        handles["a"],
        good[:40] + bytes(64),
    )  # a valid header, a broken payload
    code = await asyncio.to_thread(run_stage, "sns", batch, 0, 1)
    assert code == 3
    report = json.loads(stage_env.read_text())
    assert (report["total"], report["completed"], report["failed"]) == (3, 2, 1)
    label = "0x" + handles["a"].hex()
    assert "rejected by TFHE-rs" in report["failures"][label]
    assert label in report["error"]
    row = await conn.fetchrow(
        "SELECT is_error, error_message FROM pbs_computations WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        handles["a"],
    )
    assert row["is_error"] and "rejected by TFHE-rs" in row["error_message"]
    digests = await digest_rows(conn, graph.tenant_id, outputs)
    assert set(digests) == {handles["ok"], handles["out"]}
    _, ct128 = published_objects(compute_settings, digests[handles["out"]])
    assert (
        client.decrypt_published(ct128, FheType.Uint8, squashed=True)
        == graph.expected[handles["out"]]
    )


async def test_ciphertext_of_another_type_is_refused(graph, conn, compute_settings):
    """A row whose bytes do not match its declared type never gets published."""
    batch, handles, _ = await computed_batch(graph, conn, compute_settings, ["out"])
    await conn.execute(
        "UPDATE ciphertexts SET ciphertext_type = $3 WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        handles["out"],
        int(FheType.Uint64),
    )
    summary = await run_sns(compute_settings, batch)
    assert summary.failed == 1 and summary.exit_code == 3
    assert "expected Uint64" in next(iter(summary.failures.values()))


async def test_unknown_batch_exits_3(stage_env):
    assert await asyncio.to_thread(run_stage, "sns", "fhe/none@0", 0, 1) == 3
    assert "not admitted" in json.loads(stage_env.read_text())["error"]


async def test_s3_down_at_start_exits_75(graph, conn, compute_settings, stage_env, monkeypatch):
    batch, _, _ = await computed_batch(graph, conn, compute_settings, ["out"])
    monkeypatch.setenv("FHE_S3_ENDPOINT", "http://127.0.0.1:1")
    from coprocessor.settings import load_settings

    load_settings.cache_clear()
    assert await asyncio.to_thread(run_stage, "sns", batch, 0, 1) == 75
    assert "s3 is unavailable" in json.loads(stage_env.read_text())["error"]


# --- S3 stopped in the middle of the stage -------------------------------------------


@pytest.fixture
def own_s3(tmp_path, compute_settings, tenant):
    """A MinIO of this test's own, so stopping it disturbs nothing else; it holds a copy
    of the tenant's server key."""
    server = MinioS3()
    info = server.up(tmp_path / "s3", None)
    own = compute_settings.model_copy(
        update={
            "s3_endpoint": f"http://127.0.0.1:{info['port']}",
            "sns_workers": 1,
            "sns_upload_concurrency": 2,
            "sns_upload_attempts": 3,
            "sns_backoff_s": 0.2,
            "sns_breaker_threshold": 4,
        }
    )
    record, _ = tenant
    key = server_key_object(record)
    ObjectStore(own).put(key, ObjectStore(compute_settings).get(key))
    running = {"info": info}  # the test restarts it: stop whichever runs at the end
    yield server, running, own, tmp_path / "s3"
    server.down(running["info"])


async def test_s3_stopped_mid_stage_then_rerun_completes_without_duplicates(
    graph, conn, compute_settings, own_s3, tmp_path
):
    server, running, own, state = own_s3
    x = graph.input(3, U8)
    outputs = [graph.node(Op.Add, x, k) for k in range(1, 13)]
    batch = await graph.admit(conn, outputs=outputs)
    assert (await run_compute(compute_settings, batch)).failed == 0

    termination = tmp_path / "termination-log"
    env = {
        **os.environ,
        "FHE_DATABASE_URL": own.database_url,
        "FHE_S3_ENDPOINT": own.s3_endpoint,
        "FHE_SNS_WORKERS": "1",
        "FHE_SNS_UPLOAD_ATTEMPTS": "3",
        "FHE_SNS_BACKOFF_S": "0.2",
        "FHE_SNS_BREAKER_THRESHOLD": "4",
        "FHE_TERMINATION_LOG": str(termination),
        "FHE_CACHE_DIR": str(own.cache_dir),
        "FHE_LOG_FORMAT": "text",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "job_runner", "sns", "--batch", batch],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    published = 0
    for _ in range(1200):  # until the first handle is published (at most 2 minutes)
        published = await conn.fetchval(
            """SELECT count(*) FROM pbs_computations
               WHERE tenant_id = $1 AND handle = ANY($2) AND is_completed""",
            graph.tenant_id,
            outputs,
        )
        if published or process.poll() is not None:
            break
        await asyncio.sleep(0.1)
    assert published >= 1, process.communicate()[0].decode()[-3000:]
    server.down(running["info"])  # S3 goes away mid-stage
    output = (await asyncio.to_thread(process.communicate, timeout=180))[0].decode()
    assert process.returncode == 75, output[-3000:]
    report = json.loads(termination.read_text())
    assert report["retries"] >= 1 and "s3 is unavailable" in report["error"]
    assert report["completed"] < len(outputs)
    done_before = await conn.fetchval(
        "SELECT count(*) FROM ciphertext_digest WHERE tenant_id = $1 AND handle = ANY($2)",
        graph.tenant_id,
        outputs,
    )
    assert done_before == report["completed"]

    running["info"] = server.up(state, running["info"])  # back, same data and port
    summary = await run_sns(own, batch)
    assert (summary.completed, summary.failed, summary.error) == (len(outputs), 0, None)
    assert summary.squashed == len(outputs) - done_before
    assert summary.uploaded <= 2 * (len(outputs) - done_before)
    assert await conn.fetchval(
        "SELECT count(*) FROM ciphertext_digest WHERE tenant_id = $1 AND handle = ANY($2)",
        graph.tenant_id,
        outputs,
    ) == len(outputs)
    rows = await digest_rows(conn, graph.tenant_id, outputs)
    ct64_bucket, ct128_bucket = buckets(own)
    assert ct64_bucket.keys() == sorted(bytes(r["ciphertext"]).hex() for r in rows.values())
    assert ct128_bucket.keys() == sorted(bytes(r["ciphertext128"]).hex() for r in rows.values())


async def test_an_output_not_computed_yet_is_left_for_a_retry(graph, conn, compute_settings):
    x = graph.input(3, U8)
    out = graph.node(Op.Add, x, 1)
    batch = await graph.admit(conn, outputs=[out])  # not computed
    summary = await run_sns(compute_settings, batch)
    assert summary.exit_code == 75 and "not computed" in summary.error
    assert not await conn.fetchval("SELECT is_error FROM pbs_computations WHERE handle = $1", out)
    assert (await run_compute(compute_settings, batch)).failed == 0
    assert (await run_sns(compute_settings, batch)).completed == 1
