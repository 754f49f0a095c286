"""``fhe-job verify`` against real PostgreSQL and S3, on lists made by node-tfhe: proven
inputs become stored ciphertexts under deterministic handles; refused proofs, other
metadata, unknown chains and garbage are answered 'no' with the reason on the row and
store nothing; the queue survives a pod dying mid-request and a second run."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from coprocessor.crs import CrsMismatch, crs_key, ensure_crs, pinned_crs
from coprocessor.db import crs_pins, proofs, queries
from coprocessor.fhe.engine import input_metadata
from coprocessor.inputs import input_handles
from coprocessor.storage import ObjectStore
from coprocessor.types import FheType, Handle
from job_runner.verify import run_verify

from ...prover import node_prove
from .builder import CHAIN_ID

CONTRACT, USER = bytes.fromhex("11" * 20), bytes.fromhex("22" * 20)
ACL = bytes.fromhex("33" * 20)  # the host chain's ACL: fhEVM binds proofs and handles to it
CRS_BITS = 128  # enough for the lists below; deployments use 2048


@pytest.fixture(scope="module")
def settings(compute_settings):
    return compute_settings.model_copy(update={"crs_max_bits": CRS_BITS})


@pytest.fixture(scope="module")
def proven(settings, tenant, tmp_path_factory) -> bytes:
    """(Uint64 1000, Bool true, Uint8 7) under the tenant's public key, bound to
    CONTRACT / USER / CHAIN_ID, against the deployment's CRS."""
    record, _client = tenant
    crs = ensure_crs(ObjectStore(settings), record.backend, CRS_BITS)
    public_key = asyncio.run(_public_key(settings, record.tenant_id))
    return node_prove(
        tmp_path_factory.mktemp("prove"),
        public_key,
        crs,
        input_metadata("0x" + CONTRACT.hex(), "0x" + USER.hex(), "0x" + ACL.hex(), CHAIN_ID),
        "Uint64:1000",
        "Bool:1",
        "Uint8:7",
    )


async def _public_key(settings, tenant_id: int) -> bytes:
    import asyncpg

    connection = await asyncpg.connect(settings.database_url)
    try:
        return await queries.get_public_params(connection, tenant_id)
    finally:
        await connection.close()


_ids = iter(range(1000, 10**6))


def request(input_list: bytes | None, **changes) -> proofs.ProofRequest:
    base = proofs.ProofRequest(next(_ids), CHAIN_ID, CONTRACT, USER, input_list, acl_address=ACL)
    return replace(base, **changes)


async def row_of(conn, zk_proof_id: int):
    return await conn.fetchrow("SELECT * FROM verify_proofs WHERE zk_proof_id = $1", zk_proof_id)


async def test_a_proven_list_becomes_stored_ciphertexts_under_its_handles(
    conn, settings, tenant, proven
):
    record, client = tenant
    ask = request(proven)
    assert await proofs.insert_request(conn, ask)
    assert not await proofs.insert_request(conn, ask)  # the gateway may say it twice

    summary = await run_verify(settings)
    assert (summary.total, summary.verified, summary.rejected, summary.inputs) == (1, 1, 0, 3)
    assert summary.exit_code == 0

    row = await row_of(conn, ask.zk_proof_id)
    assert row["verified"] is True and row["error_message"] is None
    handles = [bytes(row["handles"])[i : i + 32] for i in range(0, len(row["handles"]), 32)]
    types = [FheType.Uint64, FheType.Bool, FheType.Uint8]
    assert handles == input_handles(proven, ACL, CHAIN_ID, types)
    assert [Handle(h).fhe_type for h in handles] == types
    assert [Handle(h).index for h in handles] == [0, 1, 2]
    stored = await queries.get_ciphertexts(conn, record.tenant_id, handles)
    assert [client.decrypt(stored[h].ciphertext) for h in handles] == [1000, 1, 7]
    # Each stored input carries the full hash its handle is cut from (re-randomisation).
    from coprocessor.inputs import prehandles
    from coprocessor.tenants import load_evaluator

    evaluator = load_evaluator(ObjectStore(settings), record, "verify")
    assert [evaluator.rerand_metadata(stored[h].ciphertext) for h in handles] == prehandles(
        proven, ACL, CHAIN_ID, 3
    )

    # Nothing is pending: a second run answers nothing and stores nothing twice.
    again = await run_verify(settings)
    assert (again.total, again.verified) == (0, 0)
    assert (
        await conn.fetchval("SELECT count(*) FROM ciphertexts WHERE handle = ANY($1)", handles) == 3
    )


def _tampered(proven: bytes) -> bytes:
    middle = len(proven) // 2
    return proven[:middle] + bytes([proven[middle] ^ 0x01]) + proven[middle + 1 :]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tampered", "input proof is invalid"),
        ("other user", "input proof is invalid"),
        ("other contract", "input proof is invalid"),
        ("other ACL", "input proof is invalid"),
        ("oversized", "at most 1024 (FHE_INPUT_MAX_BYTES)"),
        ("unknown chain", "no tenant serves chain id 999"),
        ("empty", "carries no input list"),
        ("garbage", "malformed input list"),
    ],
)
async def test_bad_requests_are_answered_no_with_the_reason_and_store_nothing(
    conn, settings, proven, case, message
):
    ask = {
        "tampered": request(_tampered(proven)),
        "other user": request(proven, user_address=bytes(20)),
        "other contract": request(proven, contract_address=bytes.fromhex("44" * 20)),
        "other ACL": request(proven, acl_address=bytes.fromhex("55" * 20)),
        "oversized": request(proven + b"\x00"),
        "unknown chain": request(proven, chain_id=999),
        "empty": request(b""),
        "garbage": request(b"\x00" * 64),
    }[case]
    before = await conn.fetchval("SELECT count(*) FROM ciphertexts")
    await proofs.insert_request(conn, ask)
    if case == "oversized":  # the cap is checked before anything parses the list
        settings = settings.model_copy(update={"input_max_bytes": 1024})
    summary = await run_verify(settings)
    assert (summary.total, summary.verified, summary.rejected) == (1, 0, 1)
    assert summary.exit_code == 0  # an answer, not a failure
    row = await row_of(conn, ask.zk_proof_id)
    assert row["verified"] is False and row["handles"] is None
    assert message in row["error_message"]
    assert summary.failures[str(ask.zk_proof_id)] in row["error_message"]
    assert await conn.fetchval("SELECT count(*) FROM ciphertexts") == before


async def test_a_row_without_an_acl_address_waits_for_ours_to_be_configured(conn, settings, proven):
    """A hand-queued row without --acl and no FHE_HOST_ACL_ADDRESS: our configuration is
    missing, not the requester's proof - the row stays pending, the run says why."""
    ask = request(proven, acl_address=None)
    await proofs.insert_request(conn, ask)
    try:
        summary = await run_verify(settings)
        assert (summary.verified, summary.rejected, summary.failed) == (0, 0, 1)
        assert "FHE_HOST_ACL_ADDRESS is not set" in summary.failures[str(ask.zk_proof_id)]
        assert (await row_of(conn, ask.zk_proof_id))["verified"] is None
        configured = settings.model_copy(update={"host_acl_address": "0x" + ACL.hex()})
        assert (await run_verify(configured)).verified == 1
    finally:
        await conn.execute("DELETE FROM verify_proofs WHERE zk_proof_id = $1", ask.zk_proof_id)


async def test_a_pod_dying_mid_request_leaves_it_pending_for_the_next(conn, settings, proven):
    ask = request(proven)
    await proofs.insert_request(conn, ask)
    transaction = conn.transaction()
    await transaction.start()
    claimed = await proofs.claim_pending(conn)
    assert claimed is not None and claimed.zk_proof_id == ask.zk_proof_id
    # While one pod holds it, another passes it by (SKIP LOCKED) instead of waiting.
    meanwhile = await run_verify(settings)
    assert (meanwhile.total, meanwhile.verified) == (0, 0)
    await transaction.rollback()  # what the server does when the pod's connection drops
    assert (await row_of(conn, ask.zk_proof_id))["verified"] is None

    summary = await run_verify(settings)
    assert summary.verified == 1
    assert (await row_of(conn, ask.zk_proof_id))["verified"] is True


def test_the_crs_is_made_once_and_shared(settings, tenant):
    record, _client = tenant
    store = ObjectStore(settings)
    first = ensure_crs(store, record.backend, CRS_BITS)
    assert store.get(crs_key(record.backend, CRS_BITS)) == first
    assert ensure_crs(store, record.backend, CRS_BITS) == first
    scratch = f"scratch/{uuid.uuid4()}"
    assert store.put_if_absent(scratch, b"first")
    assert not store.put_if_absent(scratch, b"second")  # the racer that loses
    assert store.get(scratch) == b"first"
    store.delete([scratch])


async def test_a_chain_served_by_a_backend_without_proofs_is_answered_no(conn, settings, proven):
    await queries.create_tenant(conn, "concrete-chain", 777, b"c" * 32, "concrete")
    ask = request(proven, chain_id=777)
    await proofs.insert_request(conn, ask)
    summary = await run_verify(settings)
    assert (summary.total, summary.rejected) == (1, 1)
    assert "has no input proofs" in (await row_of(conn, ask.zk_proof_id))["error_message"]


async def test_our_own_fault_leaves_the_row_pending_and_the_queue_moving(
    conn, settings, tenant, proven
):
    """A tenant whose server key is gone from S3 is not the requester's fault: no 'no' on
    their behalf; the row stays pending (exit 3 says why) and the rows behind it are
    still answered."""
    record, _client = tenant
    public_key = await _public_key(settings, record.tenant_id)
    await queries.create_tenant(
        conn,
        "keyless",
        778,
        b"k" * 32,
        "tfhe-rs",
        keys_location="s3://fhe-ciphertexts/keys/keyless/gone",
        public_params=public_key,
    )
    stuck, behind = request(proven, chain_id=778), request(proven)
    await proofs.insert_request(conn, stuck)
    await proofs.insert_request(conn, behind)
    try:
        summary = await run_verify(settings)
        assert (summary.total, summary.verified, summary.failed) == (2, 1, 1)
        assert summary.exit_code == 3
        assert "server key is missing" in summary.failures[str(stuck.zk_proof_id)]
        assert (await row_of(conn, stuck.zk_proof_id))["verified"] is None
        assert (await row_of(conn, behind.zk_proof_id))["verified"] is True
    finally:  # later tests count what a run looks at
        await conn.execute("DELETE FROM verify_proofs WHERE zk_proof_id = $1", stuck.zk_proof_id)


async def test_the_follow_worker_answers_requests_as_they_are_queued(conn, settings, proven):
    from job_runner.verify import follow

    stop, idle = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(
        follow(settings.model_copy(update={"notify_poll_interval_s": 300.0}), stop, idle)
    )  # a NOTIFY wakes it
    try:
        async with asyncio.timeout(60):
            await idle.wait()  # asleep with an empty queue: only the NOTIFY can wake it
        ask = request(proven)
        await proofs.insert_request(conn, ask)
        async with asyncio.timeout(120):
            while (await row_of(conn, ask.zk_proof_id))["verified"] is None:
                assert not worker.done(), worker.exception()
                await asyncio.sleep(0.2)
        assert (await row_of(conn, ask.zk_proof_id))["verified"] is True
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


async def test_a_swapped_crs_is_refused_and_the_request_waits_for_the_right_one(
    conn, settings, tenant, proven
):
    """The CRS's digest is pinned in PostgreSQL at first use: an S3 object swapped
    afterwards (here one flipped byte) is refused, the request is left pending with the
    reason, and once the pinned bytes are back the same request verifies."""
    record, _client = tenant
    store = ObjectStore(settings)
    key = crs_key(record.backend, CRS_BITS)
    good = await pinned_crs(conn, store, record.backend, CRS_BITS)  # pins it for this database
    pin = await crs_pins.pinned(conn, record.backend, CRS_BITS)
    assert pin is not None and pin.object_key == key
    ask = request(proven)
    assert await proofs.insert_request(conn, ask)
    store.put(key, good[:-1] + bytes([good[-1] ^ 1]))
    try:
        with pytest.raises(CrsMismatch, match=f"the CRS at {key} .* is not the one pinned"):
            await pinned_crs(conn, store, record.backend, CRS_BITS)
        summary = await run_verify(settings)
        assert (summary.verified, summary.rejected, summary.failed) == (0, 0, 1)
        assert "is not the one pinned" in summary.failures[str(ask.zk_proof_id)]
        assert (await row_of(conn, ask.zk_proof_id))["verified"] is None  # not answered 'no'
    finally:
        store.put(key, good)
    summary = await run_verify(settings)
    assert summary.verified == 1
    assert (await row_of(conn, ask.zk_proof_id))["verified"] is True


async def test_a_pinned_crs_missing_from_s3_is_not_silently_regenerated(conn, settings, tenant):
    record, _client = tenant
    store = ObjectStore(settings)
    bits = 8  # a size of its own: its object is deleted below
    key = crs_key(record.backend, bits)
    store.delete([key])
    try:
        made = await pinned_crs(conn, store, record.backend, bits)
        store.delete([key])
        with pytest.raises(CrsMismatch, match="missing from S3"):
            await pinned_crs(conn, store, record.backend, bits)
        store.put(key, made)
        assert await pinned_crs(conn, store, record.backend, bits) == made
    finally:
        store.delete([key])
