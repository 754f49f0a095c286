"""``fhe-job compute,sns``: one process computes a batch, then publishes its outputs,
on real TFHE-rs ciphertexts, PostgreSQL and S3 (coprocessor.api.stages)."""

from __future__ import annotations

import asyncio
import json

from coprocessor.api.summary import read_termination_message
from coprocessor.fhe.tfhe_backend import TfheRsBackend
from coprocessor.keycache import KeyCache
from coprocessor.settings import load_settings
from coprocessor.tenants import whole_key_is_cached
from coprocessor.types import FheType, Op
from fhe_operator.reconcile import JobView, stage_views
from job_runner import compute as compute_module
from job_runner.__main__ import run_stages
from tests.published import published_objects

from .test_sns import digest_rows

U8 = FheType.Uint8


async def test_compute_then_sns_publish_in_one_run(
    graph, conn, compute_settings, tenant, stage_env
):
    _, client = tenant
    x, y = graph.input(200, U8), graph.input(77, U8)
    total = graph.node(Op.Add, x, y)
    bigger = graph.node(Op.Ge, total, x)
    batch = await graph.admit(conn, outputs=[total, bigger])
    code = await asyncio.to_thread(run_stages, ("compute", "sns"), batch, 0, 1)
    assert code == 0
    report = json.loads(stage_env.read_text())
    assert (report["stage"], report["exit_code"]) == ("sns", 0)
    assert report["stages"]["compute"]["computed"] == 2
    assert report["stages"]["sns"]["squashed"] == 2
    assert report["stages"]["sns"]["uploaded"] == 4
    digests = await digest_rows(conn, graph.tenant_id, [total, bigger])
    for handle, fhe_type in ((total, U8), (bigger, FheType.Bool)):
        _, ct128 = published_objects(compute_settings, digests[handle])
        assert client.decrypt_published(ct128, fhe_type, squashed=True) == graph.expected[handle]
    # What the operator makes of the message: both stages done, each with its counters.
    views = stage_views(
        JobView("b-compute-sns", succeeded=True, summary=read_termination_message(
            stage_env.read_text()
        )),
        ("compute", "sns"),
    )  # fmt: skip
    assert views["compute"].summary["completed"] == 2
    assert views["sns"].summary["uploaded"] == 4
    # Run again (a retried pod): nothing is computed, squashed or uploaded twice.
    assert await asyncio.to_thread(run_stages, ("compute", "sns"), batch, 0, 1) == 0
    again = json.loads(stage_env.read_text())
    assert again["stages"]["compute"]["computed"] == 0
    assert (again["stages"]["sns"]["squashed"], again["stages"]["sns"]["uploaded"]) == (0, 0)


async def test_a_failed_computation_stops_the_pod_before_sns(
    graph, conn, compute_settings, stage_env
):
    x = graph.input(5, U8)
    out = graph.node(Op.Add, x, 1)
    batch = await graph.admit(conn, outputs=[out])
    good = await conn.fetchval(
        "SELECT ciphertext FROM ciphertexts WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        x,
    )
    await conn.execute(
        "UPDATE ciphertexts SET ciphertext = $3 WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        x,
        good[:40] + bytes(64),
    )  # a valid header, a broken payload
    code = await asyncio.to_thread(run_stages, ("compute", "sns"), batch, 0, 1)
    assert code == 3
    report = json.loads(stage_env.read_text())
    assert (report["stage"], set(report["stages"])) == ("compute", {"compute"})
    assert "1 computation(s) failed" in report["error"]
    queued = await conn.fetchval(
        "SELECT count(*) FROM pbs_computations WHERE tenant_id = $1 AND handle = $2",
        graph.tenant_id,
        out,
    )
    assert queued == 0  # SNS never ran: nothing was queued for publication


async def test_on_a_node_caching_the_whole_key_compute_uses_it_instead_of_its_share(
    graph, conn, compute_settings, tenant, stage_env, monkeypatch, tmp_path
):
    """A cold node: compute loads its share while SNS's whole key decompresses beside
    it (and lands in the node cache). A warm one: the pod reads the whole key once and
    both stages use it; compute never asks for its share, and its results decrypt."""
    monkeypatch.setenv("FHE_KEY_CACHE_DIR", str(tmp_path / "key-cache"))
    _, client = tenant
    asked: list[str | None] = []
    original = compute_module.load_evaluator

    def spy(store, record, purpose=None, *args):
        asked.append(purpose)
        return original(store, record, purpose, *args)

    monkeypatch.setattr(compute_module, "load_evaluator", spy)
    TfheRsBackend.named_evaluators.clear()  # this process's keys: only the node cache's
    for warm in (False, True):
        asked.clear()
        x, y = graph.input(9, U8), graph.input(4, U8)
        out = graph.node(Op.Sub, x, y)
        batch = await graph.admit(conn, outputs=[out])
        assert await asyncio.to_thread(run_stages, ("compute", "sns"), batch, 0, 1) == 0
        assert asked == ([] if warm else ["compute"])
        assert whole_key_is_cached(tenant[0], KeyCache.of(load_settings()))
        report = json.loads(stage_env.read_text())
        assert report["stages"]["compute"]["computed"] == 1
        digests = await digest_rows(conn, graph.tenant_id, [out])
        _, ct128 = published_objects(compute_settings, digests[out])
        assert client.decrypt_published(ct128, U8, squashed=True) == 5
