"""The send stage against a real anvil and a real PostgreSQL: digests the SNS stage
recorded are committed to CiphertextCommits once per signer, whatever dies when.

The rows a batch's SNS stage writes (queue row done, digest row) are inserted here
directly: what is under test is everything after them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from web3 import Web3

from coprocessor.chain.contracts import deploy, funded_account
from coprocessor.db import migrate, queries
from coprocessor.settings import MIGRATIONS_DIR, Settings
from devstack import process
from devstack.chain import Anvil
from job_runner.send import run_send
from tests.paths import REPO_ROOT

from ...e2e.conftest import wait_for
from ..db.helpers import add, admission, tenant

KEY_ID = bytes(range(32))


def new_signer(w3: Web3):
    return funded_account(w3, 10**19)


def commits_contract(w3: Web3, signers, threshold: int):
    return deploy(w3, "CiphertextCommits", [s.address for s in signers], threshold)


def digests(n: int, *, salt: bytes = b"") -> tuple[bytes, bytes]:
    """Stand-ins for keccak256(ct64), keccak256(ct128) of handle n."""
    return (
        Web3.keccak(b"ct64" + salt + n.to_bytes(4, "big")),
        Web3.keccak(b"ct128" + salt + n.to_bytes(4, "big")),
    )


async def published_batch(
    database_url: str, count: int, *, name: str = "b1", salt_for: dict[int, bytes] | None = None
) -> tuple[str, list[bytes]]:
    """A batch of ``count`` outputs, as the SNS stage leaves it: queue rows done and
    digest rows written. Returns (batch id, handles)."""
    salt_for = salt_for or {}
    connection = await asyncpg.connect(database_url)
    try:
        tenant_id = await tenant(connection)
        rows = [add(100 + i, 1, 2) for i in range(count)]
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
                KEY_ID,
                ct64,
                ct128,
            )
        return batch_id, handles
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_GATEWAY_RPC_URL"]))
    assert web3.is_connected()
    return web3


def settings_for(database_url: str, rpc_url: str, contract, signer, **extra) -> Settings:
    return Settings(
        database_url=database_url,
        gateway_rpc_url=rpc_url,
        gateway_commits_address=contract.address,
        sender_private_key="0x" + bytes(signer.key).hex(),
        sender_backoff_s=0.05,
        sender_backoff_cap_s=0.2,
        **extra,
    )


async def digest_rows(database_url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(
            "SELECT handle, txn_is_sent, txn_hash, txn_nonce FROM ciphertext_digest ORDER BY handle"
        )
    finally:
        await connection.close()


def submissions_by(w3: Web3, contract, signer: str) -> dict[bytes, int]:
    """How many times ``signer`` submitted each handle, from the chain's own logs."""
    events = contract.events.CiphertextMaterialSubmitted().get_logs(
        from_block=0, argument_filters={"signer": signer}
    )
    counts: dict[bytes, int] = {}
    for event in events:
        counts[bytes(event["args"]["ctHandle"])] = (
            counts.get(bytes(event["args"]["ctHandle"]), 0) + 1
        )
    return counts


async def test_a_batch_is_committed_once_and_a_rerun_sends_nothing(w3, database_url, dev_stack):
    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    batch_id, handles = await published_batch(database_url, 5)
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], contract, signer)

    first = await run_send(settings, batch_id)
    assert (
        first.exit_code,
        first.total,
        first.completed,
        first.sent,
        first.transactions,
        first.accepted,
    ) == (0, 5, 5, 5, 5, 5), first
    for i, h in enumerate(handles):
        key_id, ct64, ct128, agreed = contract.functions.getCiphertextMaterial(h).call()
        assert (key_id.to_bytes(32, "big"), ct64, ct128) == (KEY_ID, *digests(i))
        assert agreed == [signer.address]
    rows = await digest_rows(database_url)
    assert all(r["txn_is_sent"] and r["txn_hash"] for r in rows)
    nonce = w3.eth.get_transaction_count(signer.address)

    again = await run_send(settings, batch_id)
    assert (again.exit_code, again.completed, again.sent, again.found) == (0, 5, 0, 0)
    assert w3.eth.get_transaction_count(signer.address) == nonce
    assert submissions_by(w3, contract, signer.address) == dict.fromkeys(handles, 1)


async def test_batching_puts_many_handles_in_one_transaction(w3, database_url, dev_stack):
    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    batch_id, handles = await published_batch(database_url, 10)
    settings = settings_for(
        database_url, dev_stack["FHE_GATEWAY_RPC_URL"], contract, signer, sender_batch_size=4
    )
    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.transactions) == (0, 10, 3)
    assert w3.eth.get_transaction_count(signer.address) == 3
    assert submissions_by(w3, contract, signer.address) == dict.fromkeys(handles, 1)


async def test_three_signers_threshold_two_accept_after_the_second(w3, database_url, dev_stack):
    """Three coprocessors, each with its own database, computed the same handles; the
    third disagrees on one handle's ct128 digest and does not join that consensus."""
    signers = [new_signer(w3) for _ in range(3)]
    contract = commits_contract(w3, signers, 2)
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
            settings_for(url, rpc, contract, s) for url, s in zip(databases, signers, strict=True)
        ]

        first = await run_send(runs[0], batches[0][0])
        assert (first.completed, first.accepted) == (3, 0)
        assert not any(contract.functions.isAccepted(h).call() for h in handles)

        second_run = await run_send(runs[1], batches[1][0])
        assert (second_run.completed, second_run.accepted) == (3, 3)
        accepted = contract.events.AddCiphertextMaterial().get_logs(from_block=0)
        assert sorted(bytes(e["args"]["ctHandle"]) for e in accepted) == sorted(handles)

        third_run = await run_send(runs[2], batches[2][0])
        assert (third_run.exit_code, third_run.completed, third_run.accepted) == (0, 3, 3)
        assert len(contract.events.AddCiphertextMaterial().get_logs(from_block=0)) == 3
    for i, h in enumerate(handles):
        _, ct64, ct128, agreed = contract.functions.getCiphertextMaterial(h).call()
        assert (ct64, ct128) == digests(i)
        expected = [s.address for s in signers] if i != 1 else [s.address for s in signers[:2]]
        assert agreed == expected, i


async def test_a_key_that_is_not_a_signer_fails_with_a_clear_message(w3, database_url, dev_stack):
    registered, stranger = new_signer(w3), new_signer(w3)
    contract = commits_contract(w3, [registered], 1)
    batch_id, _ = await published_batch(database_url, 2)
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], contract, stranger)
    from coprocessor.chain.gateway import NotASigner

    with pytest.raises(NotASigner) as raised:
        await run_send(settings, batch_id)
    assert f"signer {stranger.address} is not a registered coprocessor signer" in str(raised.value)
    assert w3.eth.get_transaction_count(stranger.address) == 0  # nothing was sent
    assert not any(r["txn_is_sent"] or r["txn_hash"] for r in await digest_rows(database_url))


async def test_a_recorded_transaction_the_chain_never_saw_is_sent_again(
    w3, database_url, dev_stack
):
    """Killed between recording the hash and broadcasting: the re-run finds no such
    transaction, puts the row back and sends it."""
    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    batch_id, handles = await published_batch(database_url, 2)
    connection = await asyncpg.connect(database_url)
    await connection.execute(
        "UPDATE ciphertext_digest SET txn_hash = $1, txn_nonce = 0 WHERE handle = $2",
        os.urandom(32),
        handles[0],
    )
    await connection.close()
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], contract, signer)
    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.sent) == (0, 2, 2)
    assert submissions_by(w3, contract, signer.address) == dict.fromkeys(handles, 1)


async def test_a_submission_already_on_chain_is_found_not_sent(w3, database_url, dev_stack):
    """The database lost the record (restored from a backup): the contract's
    one-submission rule tells the sender, which marks it without a transaction."""
    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    batch_id, handles = await published_batch(database_url, 2)
    ct64, ct128 = digests(0)
    call = contract.functions.addCiphertextMaterial(
        handles[0], int.from_bytes(KEY_ID, "big"), ct64, ct128
    )
    signed = signer.sign_transaction(
        call.build_transaction({"from": signer.address, "nonce": 0, "chainId": w3.eth.chain_id})
    )
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], contract, signer)
    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.sent, summary.found) == (0, 2, 1, 1)
    assert w3.eth.get_transaction_count(signer.address) == 2
    assert submissions_by(w3, contract, signer.address) == dict.fromkeys(handles, 1)


async def test_handles_not_published_yet_leave_the_stage_recoverable(w3, database_url, dev_stack):
    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    batch_id, handles = await published_batch(database_url, 3)
    connection = await asyncpg.connect(database_url)
    await connection.execute("DELETE FROM ciphertext_digest WHERE handle = $1", handles[2])
    await connection.execute(
        "UPDATE pbs_computations SET is_completed = false WHERE handle = $1", handles[2]
    )
    await connection.close()
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], contract, signer)
    summary = await run_send(settings, batch_id)
    assert (summary.exit_code, summary.completed, summary.total) == (75, 2, 3)
    assert "1 handle(s) not published yet" in summary.error
    assert "2/3 committed; a re-run continues" in summary.error


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


def send_process(settings: Settings, batch_id: str, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "FHE_DATABASE_URL": settings.database_url,
        "FHE_GATEWAY_RPC_URL": settings.gateway_rpc_url,
        "FHE_GATEWAY_COMMITS_ADDRESS": settings.gateway_commits_address,
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


def sent_count(database_url: str) -> int:
    async def fetch() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            return await connection.fetchval(
                "SELECT count(*) FROM ciphertext_digest WHERE txn_is_sent"
            )
        finally:
            await connection.close()

    return asyncio.run(fetch())


def pending_hash(database_url: str) -> bytes | None:
    async def fetch() -> bytes | None:
        connection = await asyncpg.connect(database_url)
        try:
            value = await connection.fetchval(
                "SELECT txn_hash FROM ciphertext_digest WHERE NOT txn_is_sent "
                "AND txn_hash IS NOT NULL LIMIT 1"
            )
            return bytes(value) if value else None
        finally:
            await connection.close()

    return asyncio.run(fetch())


async def sent_transactions(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(
            "SELECT count(DISTINCT txn_hash) FROM ciphertext_digest WHERE txn_is_sent"
        )
    finally:
        await connection.close()


async def test_killed_after_sending_before_marking_the_rerun_sends_nothing_twice(
    private_chain, database_url, tmp_path
):
    w3, _, _ = private_chain
    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    batch_id, handles = await published_batch(database_url, 4)
    settings = settings_for(database_url, w3.provider.endpoint_uri, contract, signer)
    sender = send_process(settings, batch_id, tmp_path / "first.log")

    def broadcast_not_marked() -> bytes | None:
        tx_hash = pending_hash(database_url)
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
        what="a broadcast transaction not yet marked",
        interval=0.02,
    )
    sender.send_signal(signal.SIGKILL)
    sender.wait()

    again = send_process(settings, batch_id, tmp_path / "second.log")
    assert again.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()[-3000:]
    summary = json.loads((tmp_path / "second.summary").read_text())
    assert (summary["completed"], summary["total"]) == (4, 4)
    assert submissions_by(w3, contract, signer.address) == dict.fromkeys(handles, 1)
    # Every transaction the signer ever sent is one the database records as carrying
    # commits: the killed one was settled by its hash, not sent again.
    assert w3.eth.get_transaction_count(signer.address) == await sent_transactions(database_url)
    rows = {bytes(r["handle"]): r for r in await digest_rows(database_url)}
    assert any(bytes(r["txn_hash"]) == in_flight for r in rows.values())


async def test_chain_stopped_mid_send_retries_exits_75_then_completes(
    private_chain, database_url, tmp_path
):
    w3, stop, restart = private_chain
    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    batch_id, handles = await published_batch(database_url, 8)
    settings = settings_for(database_url, w3.provider.endpoint_uri, contract, signer)
    sender = send_process(settings, batch_id, tmp_path / "first.log")
    await asyncio.to_thread(
        wait_for,
        lambda: sent_count(database_url) >= 2,
        timeout=60,
        what="two commits before stopping the chain",
        interval=0.05,
    )
    stop()
    assert sender.wait(timeout=60) == 75, (tmp_path / "first.log").read_text()[-3000:]
    first = json.loads((tmp_path / "first.summary").read_text())
    assert "gateway chain is unavailable" in first["error"], first
    assert first["retries"] >= 1 and 2 <= first["completed"] < 8, first
    assert "retry" in (tmp_path / "first.log").read_text()

    restart()
    again = send_process(settings, batch_id, tmp_path / "second.log")
    assert again.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()[-3000:]
    summary = json.loads((tmp_path / "second.summary").read_text())
    assert (summary["completed"], summary["total"]) == (8, 8)
    assert submissions_by(w3, contract, signer.address) == dict.fromkeys(handles, 1)
    assert w3.eth.get_transaction_count(signer.address) == await sent_transactions(database_url)


async def test_the_long_running_sender_commits_what_sns_publishes_as_it_appears(
    w3, database_url, dev_stack
):
    """``fhe-listener sender``'s loop: the backlog at start, then a digest published
    later (with the SNS stage's NOTIFY) without waiting for the poll interval."""
    from coprocessor.chain.gateway import GatewayClient
    from coprocessor.db.pool import create_pool
    from coprocessor.db.queries import CIPHERTEXTS_UPLOADED, notify
    from listeners.sender import Sender

    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    _, handles = await published_batch(database_url, 3)
    connection = await asyncpg.connect(database_url)
    late = handles[2]
    await connection.execute(
        "UPDATE ciphertext_digest SET ciphertext = NULL WHERE handle = $1", late
    )  # not published yet
    settings = settings_for(
        database_url,
        dev_stack["FHE_GATEWAY_RPC_URL"],
        contract,
        signer,
        notify_poll_interval_s=60.0,
    )
    pool = await create_pool(database_url, size=4)
    stop = asyncio.Event()
    sender = Sender(settings, pool, GatewayClient.connect(settings))
    running = asyncio.create_task(sender.run(stop))
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
    assert submissions_by(w3, contract, signer.address) == dict.fromkeys(handles, 1)
    assert (sender.counters.sent, sender.counters.transactions) == (3, 3)


async def test_a_nonce_taken_by_another_transaction_is_signed_again(w3, database_url, dev_stack):
    """The nonce the sender read was taken meanwhile (another tool using the key): the
    node answers 'nonce too low', the sender re-reads the nonce and signs again."""
    from coprocessor.chain.committer import Committer
    from coprocessor.chain.gateway import GatewayClient
    from coprocessor.db import commits
    from coprocessor.db.pool import create_pool

    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    await published_batch(database_url, 1)
    settings = settings_for(database_url, dev_stack["FHE_GATEWAY_RPC_URL"], contract, signer)
    gateway = GatewayClient.connect(settings)
    stale = gateway.next_nonce()
    elsewhere = signer.sign_transaction(
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
    real = gateway.next_nonce
    gateway.next_nonce = lambda: reads.pop() if reads else real()  # the first read is stale
    pool = await create_pool(database_url, size=4)
    try:
        async with pool.acquire() as connection:
            rows = await commits.unsent(connection, 10, max_retries=5)
        result = await Committer(pool, gateway, settings).commit(rows)
    finally:
        await pool.close()
    assert not reads  # the stale value was used
    assert (result.sent, len(result.transactions)) == (1, 1)
    assert w3.eth.get_transaction_count(signer.address) == stale + 2


@pytest.mark.parametrize(
    ("signers", "threshold", "error"),
    [
        (1, 0, "InvalidThreshold(uint256,uint256)"),
        (2, 3, "InvalidThreshold(uint256,uint256)"),
        ("duplicate", 1, "InvalidSigner(address)"),
        ("zero", 1, "InvalidSigner(address)"),
    ],
)
def test_a_contract_with_an_impossible_signer_set_is_not_deployed(w3, signers, threshold, error):
    from web3.exceptions import ContractCustomError

    from coprocessor.chain.contracts import artifact, revert_selector

    accounts = w3.eth.accounts
    if signers == "duplicate":
        addresses = [accounts[1], accounts[1]]
    elif signers == "zero":
        addresses = ["0x" + "00" * 20]
    else:
        addresses = accounts[1 : 1 + signers]
    built = artifact("CiphertextCommits")
    factory = w3.eth.contract(abi=built.abi, bytecode=built.bytecode)
    with pytest.raises(ContractCustomError) as raised:
        factory.constructor(addresses, threshold).transact({"from": accounts[0]})
    assert str(raised.value.data).startswith(revert_selector(error))


def test_a_malformed_batch_submission_is_refused_whole(w3):
    from web3.exceptions import ContractLogicError

    signer = new_signer(w3)
    contract = commits_contract(w3, [signer], 1)
    call = contract.functions.addCiphertextMaterials(
        [b"\x01" * 32, b"\x02" * 32], [1], [b"\x03" * 32] * 2, [b"\x04" * 32] * 2
    )
    with pytest.raises(ContractLogicError, match="length mismatch"):
        call.estimate_gas({"from": signer.address})
    assert not contract.functions.hasSubmitted(b"\x01" * 32, signer.address).call()
