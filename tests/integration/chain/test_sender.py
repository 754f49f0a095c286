"""The send stage against a real anvil and a real PostgreSQL: digests the SNS stage
recorded are committed to the gateway's CiphertextCommits, and the host ACL events
about the batch's handles relayed to its MultichainACL, once per coprocessor tx sender,
whatever dies when.

Every test deploys its own gateway (tests/gateway.py: GatewayConfig with the test's
coprocessors and the tenants' host chain, and the two contracts reading it). The rows
a batch's SNS stage writes (queue row done, digest row) and those the host listener
writes (gateway_acl_calls) are inserted here directly: what is under test is
everything after them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from coprocessor.chain.contracts import funded_account
from coprocessor.db import acl, migrate, queries
from coprocessor.db.acl import AclCall
from coprocessor.db.rows import ComputationRow
from coprocessor.errors import EXIT_IRRECOVERABLE
from coprocessor.settings import MIGRATIONS_DIR, Settings
from coprocessor.types import FheType, Op
from devstack import process
from devstack.chain import Anvil
from job_runner.send import run_send
from tests.gateway import GatewayContracts, coprocessor, deploy_gateway, host_chain
from tests.paths import REPO_ROOT

from ...e2e.conftest import wait_for
from ..db.helpers import CHAIN_ID, KMS_KEY_ID, add, admission, handle, tenant

OUR_KEY_ID = bytes(range(32))  # ciphertext_digest.key_id: our digest, never committed
UNREGISTERED_CHAIN_ID = 999_001  # a host chain no test's GatewayConfig registers
ACCOUNT = bytes.fromhex("5a" * 20)  # the account the host ACL allowed on every handle
HOST_TRANSACTION = bytes.fromhex("77" * 32)


def new_tx_sender(w3: Web3) -> LocalAccount:
    return funded_account(w3, 10**19)


def gateway_for(w3: Web3, tx_senders: list[LocalAccount]) -> GatewayContracts:
    """A gateway whose coprocessors are ``tx_senders`` (majority threshold) and whose
    only host chain is the tenants'."""
    return deploy_gateway(
        w3,
        [
            coprocessor(s.address, Account.create().address, f"s3://ct-{i}")
            for i, s in enumerate(tx_senders)
        ],
        [host_chain(CHAIN_ID)],
    )


def digests(n: int, *, salt: bytes = b"") -> tuple[bytes, bytes]:
    """Stand-ins for keccak256(ct64), keccak256(ct128) of handle n."""
    return (
        Web3.keccak(b"ct64" + salt + n.to_bytes(4, "big")),
        Web3.keccak(b"ct128" + salt + n.to_bytes(4, "big")),
    )


def acl_calls_for(tenant_id: int, handles: list[bytes]) -> list[AclCall]:
    """What the host listener owes for ``Allowed(ACCOUNT, h)`` and
    ``AllowedForDecryption(h)`` of each handle."""
    calls = []
    for h in handles:
        calls.append(
            AclCall(tenant_id, "allow_account", HOST_TRANSACTION, handle=h, account_address=ACCOUNT)
        )
        calls.append(AclCall(tenant_id, "allow_public_decrypt", HOST_TRANSACTION, handle=h))
    return calls


async def published_batch(
    database_url: str,
    count: int,
    *,
    name: str = "b1",
    salt_for: dict[int, bytes] | None = None,
    chain_for: dict[int, int] | None = None,
    kms_key_id: int | None = KMS_KEY_ID,
    with_acl: bool = False,
) -> tuple[str, list[bytes]]:
    """A batch of ``count`` outputs, as the SNS stage leaves it: queue rows done and
    digest rows written; ``with_acl``: the host listener's allow_account and
    allow_public_decrypt rows for each. ``chain_for`` puts output i on another host
    chain. Returns (batch id, handles)."""
    salt_for, chain_for = salt_for or {}, chain_for or {}
    connection = await asyncpg.connect(database_url)
    try:
        tenant_id = await tenant(connection, kms_key_id=kms_key_id)
        rows = [
            ComputationRow(
                handle(100 + i, chain_id=chain_for[i]),
                FheType.Uint64,
                Op.Add,
                (handle(1), handle(2)),
            )
            if i in chain_for
            else add(100 + i, 1, 2)
            for i in range(count)
        ]
        await queries.admit_batch(connection, admission(tenant_id, rows, name=name))
        batch_id = f"fhe/{name}@h1"
        handles = [row.output_handle for row in rows]
        for i, h in enumerate(handles):
            ct64, ct128 = digests(i, salt=salt_for.get(i, b""))
            await connection.execute(
                """INSERT INTO pbs_computations (tenant_id, handle, batch_id, is_completed)
                   VALUES ($1, $2, $3, true)""",
                tenant_id,
                h,
                batch_id,
            )
            await connection.execute(
                """INSERT INTO ciphertext_digest (tenant_id, handle, key_id, ciphertext,
                       ciphertext128, ciphertext128_format) VALUES ($1, $2, $3, $4, $5, 10)""",
                tenant_id,
                h,
                OUR_KEY_ID,
                ct64,
                ct128,
            )
        if with_acl:
            assert await acl.record_calls(connection, acl_calls_for(tenant_id, handles)) == (
                2 * count
            )
        return batch_id, handles
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_GATEWAY_RPC_URL"]))
    assert web3.is_connected()
    return web3


def settings_for(
    database_url: str, rpc_url: str, gateway: GatewayContracts, tx_sender, **extra
) -> Settings:
    return Settings(
        database_url=database_url,
        gateway_rpc_url=rpc_url,
        gateway_config_address=gateway.config.address,
        gateway_commits_address=gateway.commits.address,
        gateway_acl_address=gateway.acl.address,
        sender_private_key="0x" + bytes(tx_sender.key).hex(),
        sender_backoff_s=0.05,
        sender_backoff_cap_s=0.2,
        **extra,
    )


async def fetch(database_url: str, query: str, *args) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def digest_rows(database_url: str) -> list[asyncpg.Record]:
    return await fetch(
        database_url,
        """SELECT handle, txn_is_sent, txn_hash, txn_nonce, txn_block_number, txn_last_error
           FROM ciphertext_digest ORDER BY handle""",
    )


async def acl_rows(database_url: str) -> list[asyncpg.Record]:
    return await fetch(
        database_url,
        """SELECT kind, handle, txn_is_sent, txn_hash, txn_block_number
           FROM gateway_acl_calls ORDER BY call_id""",
    )


async def recorded_transactions(database_url: str, tx_sender: str) -> int:
    """Distinct transactions the database records as carrying this tx sender's calls,
    commits and ACL calls together."""
    (row,) = await fetch(
        database_url,
        """SELECT count(DISTINCT txn_hash) FROM (
               SELECT txn_hash, txn_signer FROM ciphertext_digest WHERE txn_is_sent
               UNION ALL
               SELECT txn_hash, txn_signer FROM gateway_acl_calls WHERE txn_is_sent) s
           WHERE txn_hash IS NOT NULL AND txn_signer = $1""",
        bytes.fromhex(tx_sender[2:]),
    )
    return row[0]


def submissions_by(gateway: GatewayContracts, tx_sender: str) -> Counter[bytes]:
    """How many times ``tx_sender`` submitted each handle, from the chain's own logs."""
    return Counter(
        bytes(event["args"]["ctHandle"])
        for event in gateway.commits.events.AddCiphertextMaterial().get_logs(from_block=0)
        if event["args"]["coprocessorTxSender"] == tx_sender
    )


def relays_by(gateway: GatewayContracts, tx_sender: str) -> Counter[tuple[str, bytes]]:
    """How many times ``tx_sender`` relayed each grant: ("account" | "public", handle)."""
    events = gateway.acl.events
    relays: Counter[tuple[str, bytes]] = Counter()
    for kind, event in (("account", events.AllowAccount), ("public", events.AllowPublicDecrypt)):
        for log in event().get_logs(from_block=0):
            if log["args"]["coprocessorTxSender"] == tx_sender:
                relays[(kind, bytes(log["args"]["ctHandle"]))] += 1
    return relays


def each_relayed_once(handles: list[bytes]) -> Counter[tuple[str, bytes]]:
    return Counter({(kind, h): 1 for h in handles for kind in ("account", "public")})


async def test_a_batch_is_committed_once_and_a_rerun_sends_nothing(w3, database_url, dev_stack):
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 5)
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)

    first = await run_send(settings, batch_id)
    assert (
        first.exit_code,
        first.total,
        first.completed,
        first.sent,
        first.transactions,
        first.accepted,
    ) == (0, 5, 5, 5, 5, 5), first
    materials = gateway.commits.functions.getCiphertextMaterials(handles).call()
    sns_materials = gateway.commits.functions.getSnsCiphertextMaterials(handles).call()
    for i, (h, material, sns) in enumerate(zip(handles, materials, sns_materials, strict=True)):
        ct64, ct128 = digests(i)
        # Committed under the tenant's KMS key id, not our own digest of its server key.
        assert tuple(material) == (h, KMS_KEY_ID, ct64, [sender.address])
        assert tuple(sns) == (h, KMS_KEY_ID, ct128, [sender.address])
    rows = await digest_rows(database_url)
    assert all(r["txn_is_sent"] and r["txn_hash"] for r in rows)
    nonce = w3.eth.get_transaction_count(sender.address)
    assert nonce == 5  # one transaction per handle

    again = await run_send(settings, batch_id)
    assert (again.exit_code, again.completed, again.sent, again.found) == (0, 5, 0, 0)
    assert w3.eth.get_transaction_count(sender.address) == nonce
    assert submissions_by(gateway, sender.address) == Counter(dict.fromkeys(handles, 1))


async def test_three_coprocessors_agree_after_the_second_and_the_third_joins_late(
    w3, database_url, dev_stack
):
    """Three coprocessors, each with its own database, computed the same handles; the
    majority (2) decides at the second send stage. The third's agreeing submissions
    join the consensus list without a second consensus event; on one handle it
    disagrees (another ct128 digest) and joins nothing."""
    senders = [new_tx_sender(w3) for _ in range(3)]
    gateway = gateway_for(w3, senders)
    assert gateway.config.functions.getCoprocessorMajorityThreshold().call() == 2
    server = dev_stack["FHE_DATABASE_URL"]
    async with (
        migrate.scratch_database(server, MIGRATIONS_DIR, "test") as second,
        migrate.scratch_database(server, MIGRATIONS_DIR, "test") as third,
    ):
        databases = [database_url, second, third]
        batches = [
            await published_batch(url, 3, salt_for={1: b"x"} if url == third else None)
            for url in databases
        ]
        handles = batches[0][1]
        assert all(b[1] == handles for b in batches)  # deterministic handles
        rpc = dev_stack["FHE_GATEWAY_RPC_URL"]
        runs = [
            settings_for(url, rpc, gateway, s) for url, s in zip(databases, senders, strict=True)
        ]
        consensus = gateway.commits.events.AddCiphertextMaterialConsensus()

        first = await run_send(runs[0], batches[0][0])
        assert (first.exit_code, first.completed, first.accepted) == (0, 3, 0)
        assert not any(
            gateway.commits.functions.isCiphertextMaterialAdded(h).call() for h in handles
        )
        assert len(consensus.get_logs(from_block=0)) == 0

        second_run = await run_send(runs[1], batches[1][0])
        assert (second_run.exit_code, second_run.completed, second_run.accepted) == (0, 3, 3)
        reached = consensus.get_logs(from_block=0)
        assert sorted(bytes(e["args"]["ctHandle"]) for e in reached) == sorted(handles)
        assert all(
            list(e["args"]["coprocessorTxSenders"]) == [s.address for s in senders[:2]]
            for e in reached
        )

        third_run = await run_send(runs[2], batches[2][0])
        assert (third_run.exit_code, third_run.completed, third_run.accepted) == (0, 3, 3)
        assert len(consensus.get_logs(from_block=0)) == 3  # no second consensus event
    every = [s.address for s in senders]
    for i, h in enumerate(handles):
        agreed = gateway.commits.functions.getAddCiphertextMaterialConsensusTxSenders(h).call()
        assert agreed == (every if i != 1 else every[:2]), i
        (sns,) = gateway.commits.functions.getSnsCiphertextMaterials([h]).call()
        assert tuple(sns) == (h, KMS_KEY_ID, digests(i)[1], agreed)
    for s in senders:
        assert submissions_by(gateway, s.address) == Counter(dict.fromkeys(handles, 1))


async def test_the_send_stage_relays_the_batchs_acl_events_after_its_commits(
    w3, database_url, dev_stack
):
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 3, with_acl=True)
    connection = await asyncpg.connect(database_url)
    try:  # an input's grant: no batch computes it, the long-running sender's to relay
        tenant_id = await tenant(connection)
        await acl.record_calls(connection, acl_calls_for(tenant_id, [handle(1)]))
    finally:
        await connection.close()
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)

    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.total, summary.completed) == (0, 9, 9), summary
    assert (summary.sent, summary.acl_calls, summary.transactions) == (9, 6, 9)
    functions = gateway.acl.functions
    account = Web3.to_checksum_address(ACCOUNT)
    for h in handles:
        assert functions.isAccountAllowed(h, account).call()
        assert functions.isPublicDecryptAllowed(h).call()
        assert functions.getAllowAccountConsensusTxSenders(h, account).call() == [sender.address]
    assert not functions.isAccountAllowed(handle(1), account).call()
    assert not functions.isPublicDecryptAllowed(handle(1)).call()
    # Material first: a grant is only useful for a handle the KMS can find.
    commit_blocks = [r["txn_block_number"] for r in await digest_rows(database_url)]
    grant_blocks = [r["txn_block_number"] for r in await acl_rows(database_url) if r["txn_is_sent"]]
    assert len(grant_blocks) == 6 and max(commit_blocks) < min(grant_blocks)
    assert w3.eth.get_transaction_count(sender.address) == 9

    again = await run_send(settings, batch_id)
    assert (again.exit_code, again.completed, again.sent, again.found) == (0, 9, 0, 0)
    assert w3.eth.get_transaction_count(sender.address) == 9
    assert relays_by(gateway, sender.address) == each_relayed_once(handles)


def send_process(settings: Settings, batch_id: str, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "FHE_DATABASE_URL": settings.database_url,
        "FHE_GATEWAY_RPC_URL": settings.gateway_rpc_url,
        "FHE_GATEWAY_CONFIG_ADDRESS": settings.gateway_config_address,
        "FHE_GATEWAY_COMMITS_ADDRESS": settings.gateway_commits_address,
        "FHE_GATEWAY_ACL_ADDRESS": settings.gateway_acl_address,
        "FHE_SENDER_PRIVATE_KEY": settings.sender_private_key.get_secret_value(),
        "FHE_SENDER_BACKOFF_S": "0.1",
        "FHE_SENDER_BACKOFF_CAP_S": "0.4",
        "FHE_SENDER_ATTEMPTS": "4",
        "FHE_SENDER_MAX_IN_FLIGHT": "1",
        "FHE_TERMINATION_LOG": str(log.with_suffix(".summary")),
        "FHE_LOG_FORMAT": "text",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "job_runner", "send", "--batch", batch_id],
        env=env,
        cwd=REPO_ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


async def test_a_key_that_is_not_a_tx_sender_fails_the_stage_naming_it(
    w3, database_url, dev_stack, tmp_path
):
    registered, stranger = new_tx_sender(w3), new_tx_sender(w3)
    gateway = gateway_for(w3, [registered])
    batch_id, _ = await published_batch(database_url, 2, with_acl=True)
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, stranger)

    stage = send_process(settings, batch_id, tmp_path / "send.log")
    assert await asyncio.to_thread(stage.wait, 60) == EXIT_IRRECOVERABLE
    summary = json.loads((tmp_path / "send.summary").read_text())
    assert f"{stranger.address} is not a registered coprocessor tx sender" in summary["error"]
    assert "GatewayConfig" in summary["error"]
    assert w3.eth.get_transaction_count(stranger.address) == 0  # nothing was sent
    assert not any(r["txn_is_sent"] or r["txn_hash"] for r in await digest_rows(database_url))
    assert not any(r["txn_is_sent"] or r["txn_hash"] for r in await acl_rows(database_url))


async def test_a_handle_of_an_unregistered_host_chain_fails_alone(w3, database_url, dev_stack):
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 3, chain_for={1: UNREGISTERED_CHAIN_ID})
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)

    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.failed) == (EXIT_IRRECOVERABLE, 2, 1)
    refused = "0x" + handles[1].hex()
    assert list(summary.failures) == [refused]
    assert f"host chain {UNREGISTERED_CHAIN_ID} is not registered" in summary.failures[refused]
    rows = {bytes(r["handle"]): r for r in await digest_rows(database_url)}
    assert not rows[handles[1]]["txn_is_sent"] and rows[handles[1]]["txn_hash"] is None
    assert str(UNREGISTERED_CHAIN_ID) in rows[handles[1]]["txn_last_error"]
    assert submissions_by(gateway, sender.address) == Counter(
        {handles[0]: 1, handles[2]: 1}
    )  # the others went on; the refused one cost no transaction
    assert w3.eth.get_transaction_count(sender.address) == 2


async def test_a_tenant_the_kms_has_not_activated_sends_nothing(w3, database_url, dev_stack):
    from job_runner.send import NotActivated

    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 2, kms_key_id=None, with_acl=True)
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)

    with pytest.raises(NotActivated) as raised:
        await run_send(settings, batch_id)
    assert raised.value.exit_code == 75  # a wait for the KMS, not a failure
    assert "fhectl tenant activate acme" in str(raised.value)
    assert w3.eth.get_transaction_count(sender.address) == 0
    assert not any(r["txn_is_sent"] or r["txn_hash"] for r in await digest_rows(database_url))
    assert not any(r["txn_is_sent"] or r["txn_hash"] for r in await acl_rows(database_url))

    connection = await asyncpg.connect(database_url)
    try:
        assert await queries.activate_tenant(connection, "acme", KMS_KEY_ID)
    finally:
        await connection.close()
    summary = await run_send(settings, batch_id)  # what `fhectl tenant activate` unblocks
    assert (summary.exit_code, summary.completed, summary.total) == (0, 6, 6)
    (material,) = gateway.commits.functions.getCiphertextMaterials(handles[:1]).call()
    assert material[1] == KMS_KEY_ID


async def test_a_recorded_transaction_the_chain_never_saw_is_sent_again(
    w3, database_url, dev_stack
):
    """Killed between recording the hash and broadcasting: the re-run finds no such
    transaction, puts the row back and sends it."""
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 2)
    connection = await asyncpg.connect(database_url)
    await connection.execute(
        "UPDATE ciphertext_digest SET txn_hash = $1, txn_nonce = 0 WHERE handle = $2",
        os.urandom(32),
        handles[0],
    )
    await connection.close()
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)
    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.sent) == (0, 2, 2)
    assert submissions_by(gateway, sender.address) == Counter(dict.fromkeys(handles, 1))


async def test_a_submission_already_on_chain_is_found_not_sent(w3, database_url, dev_stack):
    """The database lost the record (restored from a backup): the contract's
    one-submission-per-tx-sender rule tells the sender, which marks it without a
    transaction."""
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 2)
    ct64, ct128 = digests(0)
    call = gateway.commits.functions.addCiphertextMaterial(handles[0], KMS_KEY_ID, ct64, ct128)
    signed = sender.sign_transaction(
        call.build_transaction({"from": sender.address, "nonce": 0, "chainId": w3.eth.chain_id})
    )
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)
    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.sent, summary.found) == (0, 2, 1, 1)
    assert w3.eth.get_transaction_count(sender.address) == 2
    assert submissions_by(gateway, sender.address) == Counter(dict.fromkeys(handles, 1))


async def test_handles_not_published_yet_leave_the_stage_recoverable(w3, database_url, dev_stack):
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 3)
    connection = await asyncpg.connect(database_url)
    await connection.execute("DELETE FROM ciphertext_digest WHERE handle = $1", handles[2])
    await connection.execute(
        "UPDATE pbs_computations SET is_completed = false WHERE handle = $1", handles[2]
    )
    await connection.close()
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)
    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.total) == (75, 2, 3)
    assert "1 handle(s) not published yet" in summary.error
    assert "2/3 sent; a re-run continues" in summary.error


# --- the process dies, the chain goes away: a private anvil and `fhe-job send` ------------


@pytest.fixture
def private_chain(tmp_path):
    """An anvil of our own, mining a block every second so transactions stay pending a
    while, that the test may stop and start again on the same port and state."""
    (tmp_path / "chain").mkdir()
    chain = Anvil(port=process.free_port(), chain_id=31337, block_time=1)
    info = chain.up(tmp_path, None)
    holder = {"info": info}

    def restart() -> None:
        holder["info"] = chain.up(tmp_path, None)

    def stop() -> None:
        chain.down(holder["info"])

    yield Web3(Web3.HTTPProvider(f"http://127.0.0.1:{info['port']}")), stop, restart
    chain.down(holder["info"])


def sent_count(database_url: str) -> int:
    rows = asyncio.run(
        fetch(database_url, "SELECT count(*) FROM ciphertext_digest WHERE txn_is_sent")
    )
    return rows[0][0]


def pending_hash(database_url: str, table: str) -> bytes | None:
    rows = asyncio.run(
        fetch(
            database_url,
            f"SELECT txn_hash FROM {table} WHERE NOT txn_is_sent AND txn_hash IS NOT NULL LIMIT 1",
        )
    )
    return bytes(rows[0][0]) if rows else None


@pytest.mark.parametrize("table", ["ciphertext_digest", "gateway_acl_calls"])
async def test_killed_after_sending_before_marking_the_rerun_sends_nothing_twice(
    private_chain, database_url, tmp_path, table
):
    """Killed while a commit (or an ACL call) is broadcast but not marked sent: the
    re-run settles it by its recorded hash, for both outboxes."""
    w3, _, _ = private_chain
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 2, with_acl=True)
    settings = settings_for(database_url, w3.provider.endpoint_uri, gateway, sender)
    stage = send_process(settings, batch_id, tmp_path / "first.log")

    def broadcast_not_marked() -> bytes | None:
        tx_hash = pending_hash(database_url, table)
        if tx_hash is None:
            return None
        try:
            w3.eth.get_transaction(tx_hash)  # the node has it: sent, not yet marked
        except Exception:
            return None
        return tx_hash

    in_flight = await asyncio.to_thread(
        wait_for,
        broadcast_not_marked,
        timeout=60,
        what=f"a broadcast transaction of {table} not yet marked",
        interval=0.02,
    )
    stage.send_signal(signal.SIGKILL)
    stage.wait()

    again = send_process(settings, batch_id, tmp_path / "second.log")
    assert await asyncio.to_thread(again.wait, 120) == 0, (tmp_path / "second.log").read_text()[
        -3000:
    ]
    summary = json.loads((tmp_path / "second.summary").read_text())
    assert (summary["completed"], summary["total"], summary["acl_calls"]) == (6, 6, 4)
    assert submissions_by(gateway, sender.address) == Counter(dict.fromkeys(handles, 1))
    assert relays_by(gateway, sender.address) == each_relayed_once(handles)
    # Every transaction the tx sender ever sent is one the database records as carrying
    # a call: the killed one was settled by its hash, not sent again.
    assert w3.eth.get_transaction_count(sender.address) == await recorded_transactions(
        database_url, sender.address
    )
    recorded = await fetch(database_url, f"SELECT txn_hash FROM {table} WHERE txn_is_sent")
    assert any(bytes(r["txn_hash"]) == in_flight for r in recorded)


async def test_chain_stopped_mid_send_retries_exits_75_then_completes(
    private_chain, database_url, tmp_path
):
    w3, stop, restart = private_chain
    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    batch_id, handles = await published_batch(database_url, 8)
    settings = settings_for(database_url, w3.provider.endpoint_uri, gateway, sender)
    stage = send_process(settings, batch_id, tmp_path / "first.log")
    await asyncio.to_thread(
        wait_for,
        lambda: sent_count(database_url) >= 2,
        timeout=60,
        what="two commits before stopping the chain",
        interval=0.05,
    )
    stop()
    assert await asyncio.to_thread(stage.wait, 60) == 75, (tmp_path / "first.log").read_text()[
        -3000:
    ]
    first = json.loads((tmp_path / "first.summary").read_text())
    assert "gateway chain is unavailable" in first["error"], first
    assert first["retries"] >= 1 and 2 <= first["completed"] < 8, first
    assert "retry" in (tmp_path / "first.log").read_text()

    restart()
    again = send_process(settings, batch_id, tmp_path / "second.log")
    assert await asyncio.to_thread(again.wait, 120) == 0, (tmp_path / "second.log").read_text()[
        -3000:
    ]
    summary = json.loads((tmp_path / "second.summary").read_text())
    assert (summary["completed"], summary["total"]) == (8, 8)
    assert submissions_by(gateway, sender.address) == Counter(dict.fromkeys(handles, 1))
    assert w3.eth.get_transaction_count(sender.address) == await recorded_transactions(
        database_url, sender.address
    )


# --- the long-running sender ------------------------------------------------------------


async def test_the_long_running_sender_commits_what_sns_publishes_as_it_appears(
    w3, database_url, dev_stack
):
    """``fhe-listener sender``'s loop: the backlog at start, then a digest published
    later (with the SNS stage's NOTIFY) without waiting for the poll interval."""
    from coprocessor.chain.gateway import GatewayClient
    from coprocessor.db.pool import create_pool
    from coprocessor.db.queries import CIPHERTEXTS_UPLOADED, notify
    from listeners.sender import Sender

    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    _, handles = await published_batch(database_url, 3)
    connection = await asyncpg.connect(database_url)
    late = handles[2]
    await connection.execute(
        "UPDATE ciphertext_digest SET ciphertext = NULL WHERE handle = $1", late
    )  # not published yet
    settings = settings_for(
        database_url,
        dev_stack["FHE_GATEWAY_RPC_URL"],
        gateway,
        sender,
        notify_poll_interval_s=60.0,
    )
    pool = await create_pool(database_url, size=4)
    stop = asyncio.Event()
    loop = Sender(settings, pool, GatewayClient.connect(settings))
    running = asyncio.create_task(loop.run(stop))
    try:

        async def sent() -> int:
            return await connection.fetchval(
                "SELECT count(*) FROM ciphertext_digest WHERE txn_is_sent"
            )

        while await sent() < 2:
            assert not running.done(), running
            await asyncio.sleep(0.05)
        await connection.execute(
            "UPDATE ciphertext_digest SET ciphertext = $2 WHERE handle = $1", late, digests(2)[0]
        )
        await notify(connection, CIPHERTEXTS_UPLOADED, "0x" + late.hex())
        async with asyncio.timeout(20):  # far below the 60 s poll: the NOTIFY woke it
            while await sent() < 3:
                assert not running.done(), running
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await pool.close()
        await connection.close()
    assert submissions_by(gateway, sender.address) == Counter(dict.fromkeys(handles, 1))
    assert (loop.counters.sent, loop.counters.transactions) == (3, 3)


async def test_the_long_running_sender_relays_a_delegation_then_its_revocation(
    w3, database_url, dev_stack
):
    """Delegations concern no handle, so no batch's send stage relays them: the
    long-running sender does, woken by the host listener's NOTIFY. The revocation
    (a higher counter) ends the delegation on the gateway."""
    from coprocessor.chain.gateway import GatewayClient
    from coprocessor.db.pool import create_pool
    from coprocessor.db.queries import WORK_AVAILABLE, notify
    from listeners.sender import Sender

    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    delegator, delegate, contract = (bytes([n]) * 20 for n in (0xD1, 0xD2, 0xC3))
    expiration = int(time.time()) + 30 * 86400
    pair = (CHAIN_ID, *(Web3.to_checksum_address(a) for a in (delegator, delegate, contract)))
    delegated = gateway.acl.functions.isUserDecryptionDelegated(*pair)
    connection = await asyncpg.connect(database_url)
    tenant_id = await tenant(connection)

    def delegation(kind: str, counter: int) -> AclCall:
        return AclCall(
            tenant_id,
            kind,
            HOST_TRANSACTION,
            chain_id=CHAIN_ID,
            delegator=delegator,
            delegate=delegate,
            contract_address=contract,
            delegation_counter=counter,
            expiration_date=expiration,
        )

    async def host_event(call: AclCall) -> None:
        """What the host listener's record_block does for a delegation event."""
        async with connection.transaction():
            assert await acl.record_calls(connection, [call]) == 1
            await notify(connection, WORK_AVAILABLE, "")

    settings = settings_for(
        database_url,
        dev_stack["FHE_GATEWAY_RPC_URL"],
        gateway,
        sender,
        notify_poll_interval_s=60.0,
    )
    pool = await create_pool(database_url, size=4)
    stop = asyncio.Event()
    loop = Sender(settings, pool, GatewayClient.connect(settings))
    running = asyncio.create_task(loop.run(stop))

    async def until(expected: bool) -> None:
        async with asyncio.timeout(20):  # far below the 60 s poll: the NOTIFY woke it
            while delegated.call() is not expected:
                assert not running.done(), running
                await asyncio.sleep(0.05)

    try:
        assert not delegated.call()
        await host_event(delegation("delegate", 1))
        await until(True)
        await host_event(delegation("revoke", 2))
        await until(False)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await pool.close()
        await connection.close()
    rows = await acl_rows(database_url)
    assert [(r["kind"], r["txn_is_sent"]) for r in rows] == [("delegate", True), ("revoke", True)]
    assert (loop.counters.sent, loop.counters.transactions) == (2, 2)
    args = (*pair, 2, expiration)
    revokers = gateway.acl.functions.getRevokeUserDecryptionDelegationConsensusTxSenders(*args)
    assert revokers.call() == [sender.address]


async def test_a_nonce_taken_by_another_transaction_is_signed_again(w3, database_url, dev_stack):
    """The nonce the sender read was taken meanwhile (another tool using the key): the
    node answers 'nonce too low', the sender re-reads the nonce and signs again."""
    from coprocessor.chain.committer import Committer
    from coprocessor.chain.gateway import GatewayClient
    from coprocessor.db import commits
    from coprocessor.db.pool import create_pool

    sender = new_tx_sender(w3)
    gateway = gateway_for(w3, [sender])
    await published_batch(database_url, 1)
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], gateway, sender)
    client = GatewayClient.connect(settings)
    stale = client.next_nonce()
    elsewhere = sender.sign_transaction(
        {
            "to": w3.eth.accounts[0],
            "value": 1,
            "gas": 21000,
            "nonce": stale,
            "chainId": w3.eth.chain_id,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 1,
        }
    )
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(elsewhere.raw_transaction))
    reads = [stale]
    real = client.next_nonce
    client.next_nonce = lambda: reads.pop() if reads else real()  # the first read is stale
    pool = await create_pool(database_url, size=4)
    try:
        async with pool.acquire() as connection:
            rows = await commits.unsent(connection, 10, max_retries=5)
        result = await Committer(pool, client, settings).commit(rows)
    finally:
        await pool.close()
    assert not reads  # the stale value was used
    assert (result.sent, len(result.transactions)) == (1, 1)
    assert w3.eth.get_transaction_count(sender.address) == stale + 2


async def test_a_vote_that_becomes_the_consensus_vote_after_its_estimate_lands(
    w3, database_url, dev_stack, monkeypatch
):
    """Two coprocessors, majority 2, both estimating before either vote is mined: the
    second to land is the consensus vote, which writes more than either estimate saw.
    With the consensus allowance it lands; without it, it runs out of gas, and the
    sender reads that as 'send again' (the call would pass now), never as done."""
    import coprocessor.chain.gateway as gateway_module
    from coprocessor.chain.calls import Commit
    from coprocessor.chain.gateway import GatewayClient

    senders = [new_tx_sender(w3), new_tx_sender(w3)]
    gateway = gateway_for(w3, senders)
    rpc = dev_stack["FHE_GATEWAY_RPC_URL"]
    clients = [
        GatewayClient(w3, settings_for(database_url, rpc, gateway, s, sender_gas_margin=1.0))
        for s in senders
    ]
    for n, (allowance, landed) in enumerate(((0, False), (gateway_module.CONSENSUS_GAS, True))):
        monkeypatch.setattr(gateway_module, "CONSENSUS_GAS", allowance)
        call = Commit(handle(2000 + n), KMS_KEY_ID, *digests(2000 + n))
        # Both sign (and so estimate) before either vote is on chain.
        signed = [c.sign(call, c.next_nonce(), c.fees()) for c in clients]
        for client, tx in zip(clients, signed, strict=True):
            client.broadcast(tx)
            w3.eth.wait_for_transaction_receipt(tx.tx_hash)
        receipt = clients[1].receipt(signed[1].tx_hash)
        assert receipt is not None and receipt.succeeded is landed, (allowance, receipt)
        if landed:
            assert gateway.commits.functions.isCiphertextMaterialAdded(call.handle).call()
        else:
            assert clients[1].why_reverted(call) is None  # it would pass now: send again
