"""A tenant on the concrete backend through the real stages: its keys go to S3 like any
tenant's, the compute stage loads them in the stage's process, the SNS stage publishes
both forms, and everything decrypts to the plaintext reference. Same database and S3 as
the TFHE-rs tests; only the backend named on the tenant row differs."""

from __future__ import annotations

import pytest

from coprocessor.fhe.envelope import BadCiphertext
from coprocessor.types import FheType, Op
from job_runner.compute import run_compute
from job_runner.sns import run_sns
from tests.published import published_objects

from .builder import GraphBuilder, drop_server_key, new_tenant

U8 = FheType.Uint8


@pytest.fixture(scope="module")
async def concrete_tenant(compute_settings):
    record, client = await new_tenant(compute_settings, "concrete-test", "concrete")
    yield record, client
    drop_server_key(compute_settings, record)


async def test_a_batch_on_a_concrete_tenant_computes_publishes_and_decrypts(
    concrete_tenant, conn, compute_settings
):
    record, client = concrete_tenant
    assert record.backend == "concrete"
    graph = GraphBuilder(client, record.tenant_id)
    balance, amount = graph.input(200, U8), graph.input(77, U8)
    ok = graph.node(Op.Ge, balance, amount)
    spent = graph.node(Op.Sub, balance, amount)
    new = graph.node(Op.IfThenElse, ok, spent, balance)
    fee = graph.node(Op.Add, new, 9)  # a plaintext operand
    batch = await graph.admit(conn, outputs=[new, fee])
    summary = await run_compute(compute_settings, batch)
    assert (summary.completed, summary.failed) == (4, 0), summary.failures
    assert await graph.check(conn, [ok, spent, new, fee]) == {
        h: graph.expected[h] for h in (ok, spent, new, fee)
    }

    published = await run_sns(compute_settings, batch)
    assert (published.completed, published.failed) == (2, 0)
    for handle in (new, fee):
        row = await conn.fetchrow(
            """SELECT ciphertext, ciphertext128 FROM ciphertext_digest
               WHERE tenant_id = $1 AND handle = $2""",
            record.tenant_id,
            handle,
        )
        ct64, ct128 = published_objects(compute_settings, row)  # checked against digests
        assert not ct64.startswith(b"FHE1")  # concrete's own bytes, no envelope of ours
        expected = graph.expected[handle]
        assert client.decrypt_published(ct64, U8, squashed=False) == expected
        assert client.decrypt_published(ct128, U8, squashed=True) == expected


async def test_a_tfhe_rs_ciphertext_offered_to_a_concrete_tenant_fails_that_node_only(
    concrete_tenant, tenant, conn, compute_settings
):
    (record, client), (_, tfhe_client) = concrete_tenant, tenant
    graph = GraphBuilder(client, record.tenant_id)
    good = graph.input(5, U8)
    foreign = graph.input(6, U8)
    graph.inputs[foreign] = tfhe_client.encrypt(6, U8)  # stored under the concrete tenant
    fine = graph.node(Op.Add, good, 1)
    broken = graph.node(Op.Add, foreign, 1)
    batch = await graph.admit(conn)
    summary = await run_compute(compute_settings, batch)
    assert (summary.completed, summary.failed) == (1, 1)
    assert await graph.check(conn, [fine]) == {fine: 6}
    message = await conn.fetchval(
        "SELECT error_message FROM computations WHERE output_handle = $1", broken
    )
    assert "from backend 'tfhe-rs', not 'concrete'" in message
    with pytest.raises(BadCiphertext, match="tfhe-rs"):
        client.decrypt(tfhe_client.encrypt(1, U8))


def test_circuits_compile_in_worker_threads(tmp_path):
    """The compute stage evaluates in a thread pool; concrete's tracer keeps state in
    thread-locals set up only by the importing thread. A fresh cache forces a compile in
    a thread that never traced before."""
    import threading

    from coprocessor.fhe import concrete_backend, concrete_circuits

    concrete_backend.compile_spec(concrete_circuits.refresh_spec(1), 2.0**-64, None)  # main
    outcome: list = []

    def compile_elsewhere() -> None:
        try:
            p_error = concrete_backend.get_settings().concrete_p_error
            restriction = concrete_backend.tenant_restriction(p_error)
            cache = concrete_backend.CircuitCache(restriction, p_error, tmp_path)
            cache.server(concrete_circuits.select_spec(2))
            outcome.append(cache.compiled)
        except Exception as error:  # reported below, with its message
            outcome.append(error)

    worker = threading.Thread(target=compile_elsewhere)
    worker.start()
    worker.join(timeout=300)
    assert outcome == [1]
    assert any(tmp_path.glob("select2-*.zip"))
