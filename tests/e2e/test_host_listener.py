"""The host listener on Zama's real host contracts (FHEVMExecutor, ACL), a real anvil,
PostgreSQL and control plane: confidential token transfers become computations, ACL
rows and one FheBatch per block - exactly once, across restarts and reorgs - and logs
it cannot use are skipped with a reason."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest
from kubernetes import client
from web3 import Web3

from coprocessor.api.batch import GROUP, PLURAL, VERSION
from coprocessor.chain.contracts import bound, decode_logs, deploy
from coprocessor.db import queries
from coprocessor.db.host import ORPHANED
from coprocessor.db.pool import create_pool
from coprocessor.settings import Settings
from coprocessor.types import FheType, Op, derive_handle, make_handle
from devstack.host_chain import ensure_host_chain
from listeners.host import HostListener
from tests.hostchain import deploy_dapp, send, signed_input_proof
from tests.paths import TESTING_CONTRACTS

U64 = FheType.Uint64


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    return Web3(Web3.HTTPProvider(dev_stack["FHE_HOST_RPC_URL"]))


@pytest.fixture(scope="module")
def host(w3, dev_stack):
    return ensure_host_chain(w3, Path(dev_stack["FHE_STATE_DIR"]))


@pytest.fixture(scope="module")
def token(w3, host):
    return deploy_dapp(w3, host, "ConfidentialToken")


@pytest.fixture
async def listener_settings(database_url, w3, host, namespace):
    connection = await asyncpg.connect(database_url)
    try:
        await queries.create_tenant(connection, "chain", w3.eth.chain_id, os.urandom(32), "tfhe-rs")
    finally:
        await connection.close()
    return Settings(
        database_url=database_url,
        host_executor_address=host.executor,
        host_acl_address=host.acl,
        host_start_block=w3.eth.block_number + 1,
        namespace=namespace,
    )


@pytest.fixture
async def pool(listener_settings):
    created = await create_pool(listener_settings.database_url, size=4)
    yield created
    await created.close()


def custom(kube_api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


async def make_listener(settings, w3, pool, api) -> HostListener:
    listener = HostListener(settings, w3, pool, api)
    await listener.start()
    return listener


def transfer(w3, token, sender, to, amount=1):
    return send(w3, token.functions.transferTrivial(to, amount), sender)


def results(w3, host, receipt) -> set[bytes]:
    """The distinct result handles the executor emitted in a transaction."""
    executor = bound(w3, "host/FHEVMExecutor", host.executor)
    return {bytes(a["result"]) for _, a in decode_logs(executor, receipt["logs"])}


def batches(kube_api, namespace) -> dict[str, dict]:
    items = custom(kube_api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
        "items"
    ]
    return {item["metadata"]["name"]: item for item in items}


async def rows_of(pool, transaction: bytes):
    """Every computation a transaction emitted, including those it shares with another
    transaction (handles are deterministic, so equal computations are one row)."""
    async with pool.acquire() as connection:
        return await connection.fetch(
            "SELECT c.output_handle, c.fhe_operation, c.is_error, c.error_message "
            "FROM computations c JOIN transaction_computations l "
            "ON l.tenant_id = c.tenant_id AND l.output_handle = c.output_handle "
            "WHERE l.transaction_id = $1 ORDER BY c.schedule_order",
            transaction,
        )


async def test_transfers_become_rows_and_one_batch_per_block_exactly_once(
    w3, host, token, listener_settings, pool, kube_api, installed, namespace
):
    owner, alice, bob = w3.eth.accounts[:3]
    mint = send(w3, token.functions.mint(alice, 1000), owner)
    moves = [transfer(w3, token, alice, bob, 7), transfer(w3, token, bob, alice, 3)]
    listener = await make_listener(listener_settings, w3, pool, custom(kube_api))
    assert await listener.poll() == w3.eth.block_number - listener_settings.host_start_block + 1

    for receipt in moves:
        rows = await rows_of(pool, bytes(receipt["transactionHash"]))
        assert {bytes(r["output_handle"]) for r in rows} == results(w3, host, receipt)
        assert {r["fhe_operation"] for r in rows} == {
            int(Op.TrivialEncrypt),
            int(Op.Le),
            int(Op.IfThenElse),
            int(Op.Sub),
            int(Op.Add),
        }
    minted = await rows_of(pool, bytes(mint["transactionHash"]))
    assert [r["fhe_operation"] for r in minted] == [int(Op.TrivialEncrypt), int(Op.Add)]
    made = batches(kube_api, namespace)
    assert len(made) == 3  # one per block with FHE work
    by_block = {
        int(b["metadata"]["annotations"]["fhe.coprocessor.dev/block"]): b for b in made.values()
    }
    for receipt in [mint, *moves]:
        spec = by_block[receipt["blockNumber"]]["spec"]
        assert spec["source"]["transactions"] == ["0x" + bytes(receipt["transactionHash"]).hex()]
        assert spec["tenant"] == "chain" and spec["stages"] == ["compute", "sns"]
    async with pool.acquire() as connection:
        allowed = await connection.fetchval(
            "SELECT count(DISTINCT handle) FROM allowed_handles WHERE event_type = 0"
        )
        count = await connection.fetchval("SELECT count(*) FROM computations")
    assert allowed == 1 + 2 * len(moves)  # the minted balance, both new balances per move
    assert listener.counters.skipped_logs == 0

    # A second poll, and a second listener, find nothing new and create nothing twice.
    assert await listener.poll() == 0
    again = await make_listener(listener_settings, w3, pool, custom(kube_api))
    assert await again.poll() == 0
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM computations") == count
    assert set(batches(kube_api, namespace)) == set(made)


async def test_a_batch_lost_between_commit_and_create_is_created_on_restart(
    w3, token, listener_settings, pool, kube_api, installed, namespace
):
    owner, alice = w3.eth.accounts[:2]
    receipt = send(w3, token.functions.mint(alice, 5), owner)
    # The first listener "dies" right after its commit: it writes rows but no batch.
    rows_only = await make_listener(listener_settings, w3, pool, None)
    await rows_only.poll()
    assert batches(kube_api, namespace) == {}
    restarted = await make_listener(listener_settings, w3, pool, custom(kube_api))
    assert await restarted.poll() == 0  # no block processed twice
    (made,) = batches(kube_api, namespace).values()
    assert made["spec"]["source"]["transactions"] == [
        "0x" + bytes(receipt["transactionHash"]).hex()
    ]


async def test_a_reorg_orphans_the_old_block_and_cancels_its_batch(
    w3, host, token, listener_settings, pool, kube_api, installed, namespace
):
    alice, bob = w3.eth.accounts[1:3]
    mint = send(w3, token.functions.mint(alice, 50), w3.eth.accounts[0])
    listener = await make_listener(listener_settings, w3, pool, custom(kube_api))
    await listener.poll()
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    old = transfer(w3, token, alice, bob, 11)
    await listener.poll()
    old_batches = set(batches(kube_api, namespace))
    assert w3.provider.make_request("evm_revert", [snapshot])["result"] is True
    new = transfer(w3, token, alice, bob, 12)  # same height, another block
    assert new["blockNumber"] == old["blockNumber"]
    await listener.poll()
    assert listener.counters.reorgs == 1
    async with pool.acquire() as connection:
        orphaned = await connection.fetchval(
            "SELECT count(*) FROM blocks WHERE block_hash = $1 AND is_orphaned",
            bytes(old["blockHash"]),
        )
    assert orphaned == 1
    old_rows = await rows_of(pool, bytes(old["transactionHash"]))
    # What only the replaced transaction emitted fails as orphaned; a computation a
    # canonical transaction shares (the trivial 0 of the mint) stays as it was.
    shared = results(w3, host, mint) | results(w3, host, new)
    only_old = [r for r in old_rows if bytes(r["output_handle"]) not in shared]
    assert only_old and all(r["is_error"] and r["error_message"] == ORPHANED for r in only_old)
    assert not any(r["is_error"] for r in old_rows if bytes(r["output_handle"]) in shared)
    assert not any(r["is_error"] for r in await rows_of(pool, bytes(new["transactionHash"])))
    now = batches(kube_api, namespace)
    cancelled = {
        n for n in old_batches if n.startswith(f"host-{w3.eth.chain_id}-{old['blockNumber']}-")
    }
    assert cancelled and not cancelled & set(now)
    assert any(
        n.startswith(
            f"host-{w3.eth.chain_id}-{new['blockNumber']}-{bytes(new['blockHash']).hex()[:8]}"
        )
        for n in now
    )


async def test_logs_it_cannot_use_are_counted_and_skipped(w3, listener_settings, pool):
    rogue = deploy(w3, "RogueExecutor", build_dir=TESTING_CONTRACTS)
    settings = listener_settings.model_copy(update={"host_executor_address": rogue.address})
    sender = w3.eth.accounts[0]
    chain = w3.eth.chain_id
    lhs, rhs = (make_handle(os.urandom(32), 0, chain, U64).raw for _ in range(2))
    # The host's rule hashes the ACL address, whoever emits the event.
    acl = bytes.fromhex(listener_settings.host_acl_address[2:])
    good = derive_handle(Op.Add, (lhs, rhs), acl, chain, U64, scalar=False).raw
    bad_type = bytearray(good)
    bad_type[30] = 99
    calls = [
        rogue.functions.emitAdd(lhs, rhs, b"\x00", good),
        rogue.functions.emitAdd(
            lhs, rhs, b"\x00", make_handle(os.urandom(32), 0xFF, chain, U64).raw
        ),
        rogue.functions.emitAdd(lhs, rhs, b"\x00", bytes(bad_type)),
        rogue.functions.emitTeleport(lhs, good),
    ]
    receipts = [send(w3, call, sender) for call in calls]
    listener = await make_listener(settings, w3, pool, None)
    await listener.poll()
    assert listener.counters.skipped_logs == 3
    reasons = " | ".join(listener.counters.skipped_reasons)
    assert "is not the derived handle" in reasons
    assert "type byte 99" in reasons
    assert "unknown event topic" in reasons
    assert len(await rows_of(pool, bytes(receipts[0]["transactionHash"]))) == 1
    assert listener.counters.computations == 1
    # A transaction with one good and one bad event is refused whole.
    pair = send(w3, rogue.functions.emitAddPair(lhs, rhs, good, good), sender)
    await listener.poll()
    assert await rows_of(pool, bytes(pair["transactionHash"])) == []
    assert listener.counters.skipped_logs == 4
    # Later blocks are still read: the listener did not stop at the bad logs.
    more = send(
        w3,
        rogue.functions.emitAdd(
            rhs,
            lhs,
            b"\x00",
            derive_handle(Op.Add, (rhs, lhs), acl, chain, U64, scalar=False).raw,
        ),
        sender,
    )
    await listener.poll()
    assert len(await rows_of(pool, bytes(more["transactionHash"]))) == 1


def test_a_listener_without_contracts_is_a_clear_fatal_error(w3):
    from coprocessor.errors import Fatal

    with pytest.raises(Fatal, match="FHE_HOST_EXECUTOR_ADDRESS"):
        HostListener(Settings(), w3, None, None)  # type: ignore[arg-type]


def test_bound_refuses_a_missing_artifact(w3):
    from coprocessor.errors import Fatal

    with pytest.raises(Fatal, match="not compiled"):
        bound(w3, "NoSuchContract", "0x" + "00" * 20)


@pytest.mark.parametrize("signum", ["SIGKILL", "SIGTERM"])
async def test_killed_mid_backlog_and_restarted_misses_and_duplicates_nothing(
    signum,
    w3,
    host,
    token,
    listener_settings,
    pool,
    kube_api,
    installed,
    namespace,
    kube_cluster,
    tmp_path,
):
    import signal
    import subprocess
    import sys

    owner, alice, bob = w3.eth.accounts[:3]
    send(w3, token.functions.mint(alice, 10**6), owner)
    moves = [transfer(w3, token, alice, bob) for _ in range(25)]
    last = w3.eth.block_number
    env = {
        **os.environ,
        "FHE_DATABASE_URL": listener_settings.database_url,
        "FHE_HOST_RPC_URL": w3.provider.endpoint_uri,
        "FHE_HOST_TENANT": "chain",
        "FHE_HOST_EXECUTOR_ADDRESS": listener_settings.host_executor_address,
        "FHE_HOST_ACL_ADDRESS": listener_settings.host_acl_address,
        "FHE_HOST_START_BLOCK": str(listener_settings.host_start_block),
        "FHE_HOST_POLL_INTERVAL_S": "0.2",
        "FHE_NAMESPACE": namespace,
        "FHE_KUBECONFIG": kube_cluster["KUBECONFIG"],
        "FHE_LOG_FORMAT": "text",
    }
    log = (tmp_path / "listener.log").open("w")

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "listeners", "host"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def seen() -> int:
        async with pool.acquire() as connection:
            return await connection.fetchval("SELECT count(*) FROM blocks")

    first = start()
    for _ in range(600):
        if await seen() >= 10 or first.poll() is not None:
            break
        await asyncio.sleep(0.05)
    first.send_signal(getattr(signal, signum))
    code = first.wait(timeout=30)
    if signum == "SIGTERM":  # a drain: the block in hand is committed, then exit 0
        assert code == 0
    killed_at = await seen()
    assert 10 <= killed_at < last - listener_settings.host_start_block + 1
    second = start()
    try:
        expected_blocks = last - listener_settings.host_start_block + 1
        for _ in range(1200):
            if await seen() == expected_blocks and len(batches(kube_api, namespace)) == 26:
                break
            await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    assert await seen() == expected_blocks
    made = batches(kube_api, namespace)
    assert len(made) == 26  # the mint block and 25 transfer blocks
    transactions = [t for b in made.values() for t in b["spec"]["source"]["transactions"]]
    assert len(transactions) == len(set(transactions)) == 26
    for receipt in moves:
        rows = await rows_of(pool, bytes(receipt["transactionHash"]))
        assert {bytes(r["output_handle"]) for r in rows} == results(w3, host, receipt)


@pytest.mark.parametrize(
    ("ws_url", "poll_s", "subscribed"),
    [
        (None, 120.0, True),  # only the newHeads subscription can wake it in time
        ("ws://127.0.0.1:1", 0.3, False),  # no subscription: the polling fallback
    ],
)
async def test_new_blocks_wake_the_listener(
    w3, host, token, listener_settings, pool, ws_url, poll_s, subscribed
):
    owner, alice = w3.eth.accounts[:2]
    settings = listener_settings.model_copy(
        update={"host_ws_url": ws_url, "host_poll_interval_s": poll_s}
    )
    listener = HostListener(settings, w3, pool, None)
    stop = asyncio.Event()
    running = asyncio.create_task(listener.run(stop))
    try:
        for _ in range(100):  # the first poll and, with a subscription, its set-up
            if listener.counters.subscribed == subscribed and listener.chain_id:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        receipt = await asyncio.to_thread(send, w3, token.functions.mint(alice, 1), owner)
        for _ in range(150):
            if await rows_of(pool, bytes(receipt["transactionHash"])):
                break
            await asyncio.sleep(0.1)
        rows = await rows_of(pool, bytes(receipt["transactionHash"]))
        assert {bytes(r["output_handle"]) for r in rows} == results(w3, host, receipt)
        assert listener.counters.subscribed is subscribed
        if subscribed:
            assert listener.counters.heads >= 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def test_a_busy_block_is_split_into_batches_of_whole_transactions(
    w3, token, listener_settings, pool, kube_api, installed, namespace
):
    owner, alice, bob = w3.eth.accounts[:3]
    send(w3, token.functions.mint(alice, 100), owner)
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        hashes = [
            token.functions.transferTrivial(bob, amount).transact({"from": alice, "gas": 2_000_000})
            for amount in (1, 2, 3)
        ]
        w3.provider.make_request("evm_mine", [])
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
    receipts = [w3.eth.wait_for_transaction_receipt(h) for h in hashes]
    assert len({r["blockNumber"] for r in receipts}) == 1 and all(r["status"] for r in receipts)
    settings = listener_settings.model_copy(update={"host_batch_max_computations": 5})
    listener = await make_listener(settings, w3, pool, custom(kube_api))
    await listener.poll()
    block = receipts[0]["blockNumber"]
    parts = {
        name: b
        for name, b in batches(kube_api, namespace).items()
        if int(b["metadata"]["annotations"]["fhe.coprocessor.dev/block"]) == block
    }
    assert sorted(parts) == sorted(
        f"host-{w3.eth.chain_id}-{block}-{bytes(receipts[0]['blockHash']).hex()[:8]}-{n}"
        for n in range(3)
    )
    held = sorted(t for b in parts.values() for t in b["spec"]["source"]["transactions"])
    assert held == sorted("0x" + bytes(h).hex() for h in hashes)
    assert all(len(b["spec"]["source"]["transactions"]) == 1 for b in parts.values())
    assert listener.counters.split_blocks == 1


async def test_equal_computations_of_two_transactions_belong_to_both(
    w3, token, listener_settings, pool, kube_api, installed, namespace
):
    """The host's handles hash no caller and no transaction: two mints of one amount to
    fresh accounts emit the same two computations (trivial 0, then + 777). Stored once,
    they are linked to both transactions, so both blocks' FheBatches hold them."""
    owner, first, second = w3.eth.accounts[0], w3.eth.accounts[5], w3.eth.accounts[6]
    mints = [send(w3, token.functions.mint(who, 777), owner) for who in (first, second)]
    listener = await make_listener(listener_settings, w3, pool, custom(kube_api))
    await listener.poll()
    async with pool.acquire() as connection:
        tenant = await queries.get_tenant(connection, "chain")
        held = [
            await queries.transaction_computations(
                connection, tenant.tenant_id, [bytes(m["transactionHash"])]
            )
            for m in mints
        ]
        stored = await connection.fetchval("SELECT count(*) FROM computations")
    assert [len(rows) for rows in held] == [2, 2]
    assert {r.output_handle for r in held[0]} == {r.output_handle for r in held[1]}
    assert stored == 2
    assert len(batches(kube_api, namespace)) == 2
    assert listener.counters.skipped_logs == 0


async def test_verify_input_and_delegations_are_recorded(w3, host, token, listener_settings, pool):
    """A transfer of an input the (dev) gateway signed: the host emits VerifyInput, the
    listener records the input handle the verify stage owes, and the computations on it
    depend on it; an ACL delegation and its revocation are stored for the gateway."""
    from devstack.host_chain import host_artifact

    owner, alice, bob = w3.eth.accounts[:3]
    send(w3, token.functions.mint(alice, 100), owner)
    digest = Web3.keccak(os.urandom(16))
    handle = digest[:21] + b"\x00" + w3.eth.chain_id.to_bytes(8, "big") + bytes([int(U64), 0])
    proof = signed_input_proof(host, [handle], alice, token.address)
    sent = send(w3, token.functions.transfer(bob, handle, proof), alice)
    acl = w3.eth.contract(address=host.acl, abi=host_artifact("ACL").abi)
    expiry = w3.eth.get_block("latest")["timestamp"] + 7200
    send(w3, acl.functions.delegateForUserDecryption(bob, token.address, expiry), alice)
    w3.provider.make_request("evm_mine", [])  # the ACL refuses two changes in one block
    send(w3, acl.functions.revokeDelegationForUserDecryption(bob, token.address), alice)
    listener = await make_listener(listener_settings, w3, pool, None)
    await listener.poll()
    assert listener.counters.skipped_logs == 0
    async with pool.acquire() as connection:
        inputs = await connection.fetch("SELECT * FROM host_verified_inputs")
        delegations = await connection.fetch(
            "SELECT * FROM user_decryption_delegations ORDER BY new_expiration NULLS LAST"
        )
    assert [(bytes(r["handle"]), bytes(r["transaction_id"])) for r in inputs] == [
        (handle, bytes(sent["transactionHash"]))
    ]
    assert bytes(inputs[0]["contract_address"]) == bytes.fromhex(token.address[2:])
    assert bytes(inputs[0]["user_address"]) == bytes.fromhex(alice[2:])
    consumers = [
        r
        for r in await rows_of(pool, bytes(sent["transactionHash"]))
        if r["fhe_operation"] == int(Op.Le)
    ]
    assert len(consumers) == 1
    async with pool.acquire() as connection:
        deps = await connection.fetchval(
            "SELECT dependencies FROM computations WHERE output_handle = $1",
            consumers[0]["output_handle"],
        )
    assert handle in [bytes(d) for d in deps]
    assert [(bytes(d["delegate"]), d["new_expiration"]) for d in delegations] == [
        (bytes.fromhex(bob[2:]), expiry),
        (bytes.fromhex(bob[2:]), None),
    ]


async def test_a_handle_allowed_in_a_later_block_is_published_by_that_blocks_batch(
    w3, host, token, listener_settings, pool, kube_api, installed, namespace
):
    """An ACL grant with no computation (shareBalance: FHE.allow of a stored balance)
    in a later block: the balance, computed blocks earlier, is linked to the grant's
    transaction, so that block gets a batch whose SNS publishes it."""
    owner, alice, viewer = w3.eth.accounts[:3]
    mint = send(w3, token.functions.mint(alice, 500), owner)
    listener = await make_listener(listener_settings, w3, pool, custom(kube_api))
    await listener.poll()
    balance = bytes(token.functions.balanceOf(alice).call())
    share = send(w3, token.functions.shareBalance(viewer), alice)
    await listener.poll()
    shared = await rows_of(pool, bytes(share["transactionHash"]))
    assert [bytes(r["output_handle"]) for r in shared] == [balance]
    assert balance in {
        bytes(r["output_handle"]) for r in await rows_of(pool, bytes(mint["transactionHash"]))
    }
    by_block = {
        int(b["metadata"]["annotations"]["fhe.coprocessor.dev/block"]): b
        for b in batches(kube_api, namespace).values()
    }
    spec = by_block[share["blockNumber"]]["spec"]
    assert spec["source"]["transactions"] == ["0x" + bytes(share["transactionHash"]).hex()]
    assert "sns" in spec["stages"]
    # Its SNS stage queues the balance: admitted as the operator admits source batches.
    async with pool.acquire() as connection, connection.transaction():
        rows = await queries.transaction_computations(
            connection, listener.tenant.tenant_id, [bytes(share["transactionHash"])]
        )
        assert [r.output_handle for r in rows] == [balance]
        accounts = await connection.fetch(
            "SELECT account_address FROM allowed_handles WHERE handle = $1 AND event_type = 0",
            balance,
        )
    assert viewer.lower() in {"0x" + bytes(r["account_address"]).hex() for r in accounts}
