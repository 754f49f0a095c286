"""The real input flow against anvil, PostgreSQL and S3: a request on the gateway's
InputVerification is read by the gateway listener, verified by the verify stage and
answered by the sender with a verdict signed by the coprocessor's signer; with three
coprocessors and a majority of two, the gateway's consensus event carries the
signatures a client builds its inputProof from. Key and CRS activations on the
KMSGeneration stand-in are applied only when the material served matches the digests.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import threading
from pathlib import Path

import asyncpg
import pytest
from eth_account import Account
from web3 import Web3

from coprocessor.chain.contracts import funded_account
from coprocessor.chain.gateway import GatewayClient
from coprocessor.chain.verdicts import VerdictSigner
from coprocessor.crs import ensure_crs
from coprocessor.db import queries
from coprocessor.fhe.engine import input_metadata
from coprocessor.inputs import input_handles
from coprocessor.kms import (
    CRS_SEPARATOR,
    KEY_SEPARATOR,
    KeyType,
    crs_object_key,
    material_digest,
    object_url,
)
from coprocessor.storage import ObjectStore
from coprocessor.tenants import load_server_key
from coprocessor.types import FheType
from job_runner.verify import run_verify
from listeners.gateway import GatewayListener
from listeners.sender import Sender
from tests.gateway import coprocessor, deploy_gateway, host_chain

from .builder import CHAIN_ID

CONTRACT, USER = "0x" + "11" * 20, "0x" + "22" * 20
ACL = "0x" + "33" * 20  # the host chain's ACL as the gateway registers it
CRS_BITS = 128  # enough for the lists below; deployments use 2048
NO_EXTRA = b"\x00"


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_GATEWAY_RPC_URL"]))
    assert web3.is_connected()
    return web3


@pytest.fixture(scope="module")
def coprocessors(w3):
    """Three coprocessors (tx sender, signer): ours first; the gateway's majority is 2."""
    return [(funded_account(w3, 10**19), Account.create()) for _ in range(3)]


@pytest.fixture(scope="module")
def gateway(w3, coprocessors):
    return deploy_gateway(
        w3,
        [
            coprocessor(s.address, k.address, f"http://s3/ct-{i}")
            for i, (s, k) in enumerate(coprocessors)
        ],
        [host_chain(CHAIN_ID, acl=ACL)],
    )


@pytest.fixture(scope="module")
def settings(compute_settings, dev_stack, gateway, coprocessors):
    tx_sender, signer = coprocessors[0]
    return compute_settings.model_copy(
        update={
            "crs_max_bits": CRS_BITS,
            "gateway_rpc_url": dev_stack["FHE_GATEWAY_RPC_URL"],
            **gateway.settings(),
            "gateway_ws_url": "off",
            "sender_private_key": _secret(tx_sender),
            "signer_private_key": _secret(signer),
            "sender_backoff_s": 0.05,
            "sender_backoff_cap_s": 0.2,
        }
    )


def _secret(account):
    from pydantic import SecretStr

    return SecretStr("0x" + bytes(account.key).hex())


@pytest.fixture(scope="module")
def proven(settings, tenant) -> bytes:
    """(Uint64 1000, Bool true) bound to CONTRACT / USER / ACL / CHAIN_ID."""
    import fhe_native

    record, _client = tenant
    crs = ensure_crs(ObjectStore(settings), record.backend, CRS_BITS)
    public_key = asyncio.run(_public_key(settings, record.tenant_id))
    return fhe_native.prove_inputs(
        public_key,
        crs,
        input_metadata(CONTRACT, USER, ACL, CHAIN_ID),
        [
            (int(FheType.Uint64), (1000).to_bytes(32, "little")),
            (int(FheType.Bool), (1).to_bytes(32, "little")),
        ],
    )


async def _public_key(settings, tenant_id: int) -> bytes:
    connection = await asyncpg.connect(settings.database_url)
    try:
        return await queries.get_public_params(connection, tenant_id)
    finally:
        await connection.close()


def request_proof(w3, gateway, input_list: bytes, chain_id: int = CHAIN_ID) -> int:
    """What the relayer does: verifyProofRequest; returns the zkProofId."""
    receipt = w3.eth.wait_for_transaction_receipt(
        gateway.input_verification.functions.verifyProofRequest(
            chain_id, CONTRACT, USER, input_list, NO_EXTRA
        ).transact({"from": w3.eth.accounts[0]})
    )
    assert receipt["status"] == 1
    (event,) = gateway.input_verification.events.VerifyProofRequest().process_receipt(receipt)
    return int(event["args"]["zkProofId"])


def send_as(w3, account, function):
    """A transaction signed here (the other coprocessors' keys are not the node's)."""
    transaction = function.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    signed = account.sign_transaction(transaction)
    return w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))


@pytest.fixture
async def pool(settings):
    connection_pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    yield connection_pool
    await connection_pool.close()


def listener_for(settings, w3, pool, **changes) -> GatewayListener:
    return GatewayListener(
        settings.model_copy(update={"gateway_start_block": w3.eth.block_number, **changes}),
        w3,
        pool,
        host_chain_id=CHAIN_ID,
    )


def sender_for(settings, w3, pool, signer=None) -> Sender:
    gateway = GatewayClient(w3, settings)
    chosen = (
        settings
        if signer is None
        else settings.model_copy(update={"signer_private_key": _secret(signer)})
    )
    return Sender(chosen, pool, gateway, VerdictSigner.from_settings(chosen, w3.eth.chain_id))


async def row_of(pool, zk_proof_id: int):
    async with pool.acquire() as connection:
        return await connection.fetchrow(
            "SELECT * FROM verify_proofs WHERE zk_proof_id = $1", zk_proof_id
        )


async def test_a_request_is_verified_and_answered_and_a_majority_signs_it(
    w3, gateway, coprocessors, settings, pool, proven
):
    listener = listener_for(settings, w3, pool)
    zk_proof_id = request_proof(w3, gateway, proven)
    assert await listener.poll() >= 1
    assert listener.counters.requests == 1
    row = await row_of(pool, zk_proof_id)
    assert bytes(row["acl_address"]).hex() == ACL[2:]  # from GatewayConfig's registry
    assert row["from_gateway"] and row["verified"] is None
    assert await listener.poll() == 0  # read once

    summary = await run_verify(settings)
    assert (summary.verified, summary.rejected) == (1, 0)
    row = await row_of(pool, zk_proof_id)
    handles = tuple(bytes(row["handles"])[i : i + 32] for i in range(0, 64, 32))
    assert list(handles) == input_handles(
        proven, bytes.fromhex(ACL[2:]), CHAIN_ID, [FheType.Uint64, FheType.Bool]
    )

    # Another coprocessor (outside this database) agrees first: no consensus with one.
    other_sender, other_signer = coprocessors[1]
    other = VerdictSigner(
        other_signer, VerdictSigner.from_settings(settings, w3.eth.chain_id).domain
    )
    verification = gateway.input_verification.functions
    other_signature = other.sign(
        handles, bytes.fromhex(USER[2:]), bytes.fromhex(CONTRACT[2:]), CHAIN_ID, NO_EXTRA
    )
    receipt = send_as(
        w3,
        other_sender,
        verification.verifyProofResponse(zk_proof_id, list(handles), other_signature, NO_EXTRA),
    )
    assert receipt["status"] == 1 and not verification.isProofVerified(zk_proof_id).call()

    sender = sender_for(settings, w3, pool)
    assert await sender.pass_once() == 1
    assert (sender.counters.sent, sender.counters.transactions) == (1, 1)
    assert verification.isProofVerified(zk_proof_id).call()
    (consensus,) = gateway.input_verification.events.VerifyProofResponse().get_logs(
        from_block=receipt["blockNumber"]
    )
    assert consensus["args"]["zkProofId"] == zk_proof_id
    assert [bytes(h) for h in consensus["args"]["ctHandles"]] == list(handles)
    signatures = [bytes(s) for s in consensus["args"]["signatures"]]
    assert signatures[0] == other_signature and len(signatures) == 2
    ours = VerdictSigner.from_settings(settings, w3.eth.chain_id)
    assert ours is not None
    assert signatures[1] == ours.sign(
        handles, bytes.fromhex(USER[2:]), bytes.fromhex(CONTRACT[2:]), CHAIN_ID, NO_EXTRA
    )
    row = await row_of(pool, zk_proof_id)
    assert row["txn_is_sent"] and row["txn_hash"] is not None

    # Nothing is owed any more: a second pass (or a restarted sender) sends nothing.
    again = sender_for(settings, w3, pool)
    assert await again.pass_once() == 0
    assert w3.eth.get_transaction_count(coprocessors[0][0].address) == 1


async def test_a_list_made_by_the_real_client_sdk_is_verified_under_the_sdks_handles(
    w3, gateway, coprocessors, settings, pool, tenant, tmp_path
):
    """@zama-fhe/relayer-sdk proves (92-byte metadata, its node-tfhe 1.4) against our
    tenant's public key and the deployment's CRS; the handles we store are the ones the
    SDK will accept back from a relayer, and the values decrypt."""
    from devstack.sdk import sdk_prove

    record, client = tenant
    crs = ensure_crs(ObjectStore(settings), record.backend, CRS_BITS)
    public_key = await _public_key(settings, record.tenant_id)
    sdk_list, sdk_handles = await asyncio.to_thread(
        sdk_prove,
        tmp_path,
        public_key,
        crs,
        contract=Web3.to_checksum_address(CONTRACT),
        user=Web3.to_checksum_address(USER),
        acl=Web3.to_checksum_address(ACL),
        chain_id=CHAIN_ID,
        gateway_chain_id=w3.eth.chain_id,
        input_verification=gateway.input_verification.address,
        items=["Uint64:4242", "Bool:1", "Uint8:7"],
    )
    listener = listener_for(settings, w3, pool)
    zk_proof_id = request_proof(w3, gateway, sdk_list)
    await listener.poll()
    summary = await run_verify(settings)
    assert (summary.verified, summary.rejected) == (1, 0), summary.failures
    row = await row_of(pool, zk_proof_id)
    stored = [bytes(row["handles"])[i : i + 32] for i in range(0, len(row["handles"]), 32)]
    assert stored == sdk_handles
    async with pool.acquire() as connection:
        found = await queries.get_ciphertexts(connection, record.tenant_id, stored)
    assert [client.decrypt(found[h].ciphertext) for h in stored] == [4242, 1, 7]
    sender = sender_for(settings, w3, pool)
    await sender.pass_once()
    (call,) = gateway.input_verification.events.VerifyProofResponseCall().get_logs(
        from_block=w3.eth.block_number - 1,
        argument_filters={"zkProofId": zk_proof_id},
    )
    assert [bytes(h) for h in call["args"]["ctHandles"]] == sdk_handles


async def test_a_bad_list_is_rejected_on_the_gateway_and_the_queue_moves(
    w3, gateway, settings, pool, proven
):
    listener = listener_for(settings, w3, pool)
    middle = len(proven) // 2
    tampered = proven[:middle] + bytes([proven[middle] ^ 1]) + proven[middle + 1 :]
    bad = request_proof(w3, gateway, tampered)
    garbage = request_proof(w3, gateway, b"\x00" * 64)
    good = request_proof(w3, gateway, proven)
    await listener.poll()
    summary = await run_verify(settings)
    assert (summary.verified, summary.rejected) == (1, 2)
    sender = sender_for(settings, w3, pool)
    await sender.pass_once()
    verification = gateway.input_verification.functions
    ours = settings.sender_private_key.get_secret_value()
    for zk_proof_id in (bad, garbage):
        row = await row_of(pool, zk_proof_id)
        assert row["verified"] is False and row["txn_is_sent"]
        assert row["error_message"]  # the reason stays with us; the gateway takes none
        assert verification.getRejectProofConsensusTxSenders(zk_proof_id).call() == [
            Account.from_key(ours).address
        ]
    assert (await row_of(pool, good))["txn_is_sent"]


async def test_a_reorg_that_gives_the_id_to_another_request_queues_that_one(
    w3, gateway, settings, pool, proven, tenant
):
    """The gateway's request id n is mined, read and answered; a reorg replaces its block
    and n is now another request: the listener finds the fork, reads the new block and
    queues the new request anew, so the verdict sent is about the list actually asked."""
    import fhe_native

    record, _client = tenant
    listener = listener_for(settings, w3, pool)
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    first = request_proof(w3, gateway, proven)
    await listener.poll()
    await run_verify(settings)
    answered = await row_of(pool, first)
    assert answered["verified"] is True
    assert w3.provider.make_request("evm_revert", [snapshot])["result"]
    w3.provider.make_request("evm_mine", [])  # the new branch: other blocks, same heights
    other_list = fhe_native.prove_inputs(
        await _public_key(settings, record.tenant_id),
        ensure_crs(ObjectStore(settings), record.backend, CRS_BITS),
        input_metadata(CONTRACT, USER, ACL, CHAIN_ID),
        [(int(FheType.Uint8), (42).to_bytes(32, "little"))],
    )
    second = request_proof(w3, gateway, other_list)
    assert second == first  # the gateway's counter was rewound with its state
    await listener.poll()
    assert listener.counters.reorgs >= 1
    requeued = await row_of(pool, first)
    assert bytes(requeued["input"]) == other_list
    assert requeued["verified"] is None and not requeued["txn_is_sent"]
    summary = await run_verify(settings)
    assert summary.verified >= 1
    row = await row_of(pool, first)
    assert len(bytes(row["handles"])) == 32  # the new list: one value


async def test_a_request_for_an_unregistered_chain_never_reaches_the_queue(w3, gateway):
    from web3.exceptions import ContractLogicError

    with pytest.raises(ContractLogicError):
        request_proof(w3, gateway, b"list", chain_id=999_777)


async def test_a_signer_the_gateway_does_not_know_is_refused_at_start_and_sends_nothing(
    w3, gateway, coprocessors, settings, pool, proven
):
    from coprocessor.errors import ConfigError

    listener = listener_for(settings, w3, pool)
    zk_proof_id = request_proof(w3, gateway, proven)
    await listener.poll()
    await run_verify(settings)
    before = w3.eth.get_transaction_count(coprocessors[0][0].address)
    wrong = sender_for(settings, w3, pool, signer=Account.create())
    assert wrong.verdicts is not None
    with pytest.raises(ConfigError, match="FHE_SIGNER_PRIVATE_KEY is the key of"):
        wrong.gateway.check_signer(wrong.verdicts.address)  # what Sender.run does first
    # Had it gone on, the gateway would refuse each verdict: that row only, nothing sent.
    await wrong.pass_once()
    assert w3.eth.get_transaction_count(coprocessors[0][0].address) == before
    row = await row_of(pool, zk_proof_id)
    assert not row["txn_is_sent"] and "FHE_SIGNER_PRIVATE_KEY" in row["txn_last_error"]
    right = sender_for(settings, w3, pool)
    right.gateway.check_signer(right.verdicts.address)
    await right.pass_once()
    assert (await row_of(pool, zk_proof_id))["txn_is_sent"]


# --- the KMS's activations -----------------------------------------------------------


@pytest.fixture(scope="module")
def kms_storage(tmp_path_factory):
    """A KMS node's public storage: files over HTTP (what the listener fetches)."""
    root = tmp_path_factory.mktemp("kms-storage")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/kms-node-1"
    server.shutdown()


def publish(root: Path, url: str, directory: str, material_id: int, data: bytes) -> None:
    path = root / object_url(url, directory, material_id).split("/", 3)[3]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def activate_key(w3, gateway, key_id: int, url: str, server_digest: bytes, public_digest: bytes):
    w3.eth.wait_for_transaction_receipt(
        gateway.kms_generation.functions.activateKey(
            key_id,
            [url],
            [(int(KeyType.SERVER), server_digest), (int(KeyType.PUBLIC), public_digest)],
        ).transact({"from": w3.eth.accounts[0]})
    )


async def test_activations_apply_only_matching_material_and_only_once(
    w3, gateway, settings, pool, tenant, kms_storage, proven
):
    record, _client = tenant
    root, url = kms_storage
    store = ObjectStore(settings)
    server_key = load_server_key(store, record)
    public_key = await _public_key(settings, record.tenant_id)
    digests = (
        material_digest(KEY_SEPARATOR, server_key),
        material_digest(KEY_SEPARATOR, public_key),
    )
    listener = listener_for(settings, w3, pool, kms_fetch_backoff_s=0.01)

    async def kms_rows(table: str) -> list:
        async with pool.acquire() as connection:
            return await connection.fetch(f"SELECT * FROM {table} ORDER BY 1")

    # A forged digest: refused, nothing changes, the listener goes on.
    forged_id = record.kms_key_id + 1
    for directory, data in (("ServerKey", server_key), ("PublicKey", public_key)):
        publish(root, url, directory, forged_id, data)
    activate_key(w3, gateway, forged_id, url, bytes(32), digests[1])
    await listener.poll()
    assert (listener.counters.refused_activations, listener.counters.keys_activated) == (1, 0)
    assert await kms_rows("kms_keys") == []
    async with pool.acquire() as connection:
        assert await queries.get_tenant_by_id(connection, record.tenant_id) == record
    (refused,) = await kms_rows("kms_activations")
    assert refused["state"] == "refused" and "no storage URL served bytes" in refused["last_error"]

    # The same keyset under another key id: the tenant holds it under its own; refused.
    activate_key(w3, gateway, forged_id, url, *digests)
    await listener.poll()
    assert listener.counters.refused_activations == 2
    assert "under another KMS key id" in (await kms_rows("kms_activations"))[-1]["last_error"]

    # The real one: the tenant holding that keyset is the KMS key's; read twice, applied once.
    for directory, data in (("ServerKey", server_key), ("PublicKey", public_key)):
        publish(root, url, directory, record.kms_key_id, data)
    activate_key(w3, gateway, record.kms_key_id, url, *digests)
    await listener.poll()
    assert listener.counters.keys_activated == 1
    await listener.poll()  # nothing new: the activation is not applied twice
    assert [(int(r["kms_key_id"]), r["tenant_id"]) for r in await kms_rows("kms_keys")] == [
        (record.kms_key_id, record.tenant_id)
    ]
    # Announced again with other digests: a key id names one keyset; refused, kept.
    activate_key(w3, gateway, record.kms_key_id, url, digests[0], bytes(32))
    await listener.poll()
    assert (
        "activated again with other digests"
        in (await kms_rows("kms_activations"))[-1]["last_error"]
    )
    assert len(await kms_rows("kms_keys")) == 1

    # The CRS with its storage down: deferred, and requests behind it still flow.
    crs = ensure_crs(store, record.backend, CRS_BITS)
    crs_id = 7
    w3.eth.wait_for_transaction_receipt(
        gateway.kms_generation.functions.activateCrs(
            crs_id, [url], material_digest(CRS_SEPARATOR, crs)
        ).transact({"from": w3.eth.accounts[0]})
    )
    zk_proof_id = request_proof(w3, gateway, proven)
    await listener.poll()
    assert listener.counters.fetch_retries == 1 and listener.counters.crs_activated == 0
    assert (await row_of(pool, zk_proof_id)) is not None  # the cursor did not wait
    publish(root, url, "CRS", crs_id, crs)
    await asyncio.sleep(0.05)  # past the (test-sized) backoff
    await listener.poll()
    assert listener.counters.crs_activated == 1
    assert store.get(crs_object_key(crs_id)) == crs
    # The verify stage now proves against the pinned CRS (the same bytes here).
    summary = await run_verify(settings)
    assert summary.failed == 0 and summary.verified >= 1


async def test_the_dev_kms_stand_in_publishes_what_the_listener_fetches_from_s3(
    w3, gateway, settings, pool, tenant
):
    """`fhectl dev kms activate`'s work: the keyset and the CRS in the KMS layout in a
    public S3 bucket, activated on KMSGeneration; the listener fetches them over plain
    HTTP from MinIO, checks the digests and pins the CRS; a second run sends nothing."""
    from devstack.kms import publish_and_activate

    record, _client = tenant
    store = ObjectStore(settings)
    crs = ensure_crs(store, record.backend, CRS_BITS)
    args = (
        settings,
        w3,
        record.kms_key_id,
        load_server_key(store, record),
        await _public_key(settings, record.tenant_id),
        crs,
    )
    crs_id = (5 << 248) | 77
    listener = listener_for(settings, w3, pool)
    published = publish_and_activate(*args, crs_id=crs_id)
    assert published.storage_url.endswith("/fhe-kms") and published.transactions
    assert publish_and_activate(*args, crs_id=crs_id).transactions == ()  # idempotent
    await listener.poll()
    async with pool.acquire() as connection:
        pinned = await connection.fetchrow(
            "SELECT object_key, digest FROM kms_crs WHERE crs_id = $1", crs_id
        )
        tenant_row = await queries.get_tenant_by_id(connection, record.tenant_id)
    assert pinned is not None and store.get(pinned["object_key"]) == crs
    assert bytes(pinned["digest"]) == material_digest(CRS_SEPARATOR, crs)
    assert tenant_row.kms_key_id == record.kms_key_id
