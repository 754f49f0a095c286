"""An encrypted input from Zama's client SDK, all the way to the host chain.

On a fresh anvil (host and gateway on one chain, as on the dev stack): our gateway
contracts with three coprocessors and a majority of two; Zama's host contracts whose
InputVerifier trusts the three signers (threshold 2) under our InputVerification's
EIP-712 domain; a ConfidentialToken on @fhevm/solidity. Each coprocessor is the real
thing - its own database, gateway listener, verify worker and sender, long-running.
The SDK (`@zama-fhe/relayer-sdk`, `encrypt()`) proves an amount and hands it to the
relayer stand-in; the coprocessors verify and answer; the SDK checks the consensus
signatures against the host's InputVerifier and builds the inputProof; the user's
transfer with it is accepted by the host; the host listener records the VerifyInput,
and the stored input decrypts to the amount.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from eth_account import Account
from pydantic import SecretStr
from web3 import Web3

from coprocessor.chain.contracts import funded_account
from coprocessor.crs import ensure_crs
from coprocessor.db import migrate, queries
from coprocessor.settings import MIGRATIONS_DIR, Settings
from coprocessor.storage import ObjectStore
from coprocessor.tenants import create_tenant, key_objects, load_client
from devstack import process
from devstack.chain import Anvil
from devstack.host_chain import deploy_dapp, ensure_host_chain
from devstack.input_path import run_input_path
from devstack.relayer import RelayerStandIn
from devstack.sdk import sdk_encrypt
from listeners.host import HostListener
from tests.gateway import coprocessor, deploy_gateway, host_chain
from tests.hostchain import send
from tests.keysets import session_keyset

from .builder import kms_key_id_for

CRS_BITS = 128  # the amount fits; deployments use 2048 (the SDK proves ~11 s with it)
COPROCESSORS = 3
MAJORITY = 2


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    anvil = Anvil(port=process.free_port())
    info = anvil.up(tmp_path_factory.mktemp("anvil"), None)
    yield anvil.env(info)["FHE_HOST_RPC_URL"]
    anvil.down(info)


async def test_an_sdk_input_verified_by_a_majority_is_accepted_by_the_host(
    chain, dev_stack, tmp_path
):
    w3 = Web3(Web3.HTTPProvider(chain))
    chain_id = w3.eth.chain_id
    keys = [(funded_account(w3, 10**19), Account.create()) for _ in range(COPROCESSORS)]
    gateway = deploy_gateway(
        w3,
        [coprocessor(s.address, k.address, f"http://s3/{i}") for i, (s, k) in enumerate(keys)],
        [host_chain(chain_id)],
    )
    assert gateway.config.functions.getCoprocessorMajorityThreshold().call() == MAJORITY
    host = ensure_host_chain(
        w3,
        tmp_path / "state",
        coprocessor_signers=[k.address for _, k in keys],
        threshold=MAJORITY,
        gateway_chain_id=chain_id,
        input_verification_address=gateway.input_verification.address,
    )
    token = deploy_dapp(w3, host, "ConfidentialToken")
    owner, alice, bob = w3.eth.accounts[:3]
    send(w3, token.functions.mint(alice, 1000), owner)

    keyset = session_keyset("tfhe-rs")
    server = dev_stack["FHE_DATABASE_URL"]
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        settings = []
        for index, (tx_sender, signer) in enumerate(keys):
            url = await stack.enter_async_context(
                migrate.scratch_database(server, MIGRATIONS_DIR, f"coprocessor{index}")
            )
            each = Settings(
                database_url=url,
                cache_dir=tmp_path / f"cache{index}",
                crs_max_bits=CRS_BITS,
                gateway_rpc_url=chain,
                gateway_ws_url="off",
                gateway_poll_interval_s=0.2,
                gateway_start_block=w3.eth.block_number,
                **gateway.settings(),
                host_acl_address=host.acl,  # GatewayConfig registers the chain without it
                sender_private_key=SecretStr("0x" + bytes(tx_sender.key).hex()),
                signer_private_key=SecretStr("0x" + bytes(signer.key).hex()),
                notify_poll_interval_s=1.0,
            )
            connection = await asyncpg.connect(url)
            try:
                tenant = (
                    await create_tenant(
                        connection,
                        ObjectStore(each),
                        each,
                        "sdk-input",
                        chain_id,
                        "tfhe-rs",
                        keyset=keyset,
                        kms_key_id=kms_key_id_for("sdk-input"),
                    )
                ).tenant
            finally:
                await connection.close()
            settings.append(each)
        store = ObjectStore(settings[0])
        crs = ensure_crs(store, "tfhe-rs", CRS_BITS)
        tasks = [asyncio.create_task(run_input_path(each, w3, chain_id, stop)) for each in settings]
        relayer = RelayerStandIn(w3, gateway.input_verification, w3.eth.accounts[5])
        relayer_url = relayer.start()
        try:
            handles, input_proof = await asyncio.wait_for(
                asyncio.to_thread(
                    sdk_encrypt,
                    tmp_path,
                    keyset.public_params,
                    crs,
                    host,
                    contract=token.address,
                    user=alice,
                    relayer_url=relayer_url,
                    rpc_url=chain,
                    items=["Uint64:300"],
                ),
                timeout=240,
            )
        finally:
            relayer.stop()
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 30)
        for task in tasks:
            assert task.done() and task.exception() is None, task.exception()

        # The SDK accepted MAJORITY signatures; each coprocessor sent its own verdict.
        assert input_proof[0] == 1 and input_proof[1] >= MAJORITY
        (zk_proof_id,) = relayer.requested()
        verification = gateway.input_verification.functions
        assert verification.isProofVerified(zk_proof_id).call()
        senders = verification.getVerifyProofConsensusTxSenders(zk_proof_id).call()
        assert len(senders) >= MAJORITY and set(senders) <= {s.address for s, _ in keys}

        # The user's transaction with it: the real InputVerifier checks the signatures.
        sent = send(w3, token.functions.transfer(bob, handles[0], input_proof), alice)
        assert sent["status"] == 1

        # The host listener sees the input verified; the stored input is the amount.
        host_settings = settings[0].model_copy(
            update={
                "host_executor_address": host.executor,
                "host_start_block": sent["blockNumber"],
            }
        )
        pool = await asyncpg.create_pool(host_settings.database_url, min_size=1, max_size=2)
        try:
            listener = HostListener(host_settings, w3, pool, None)
            await listener.start()
            await listener.poll()
            async with pool.acquire() as connection:
                inputs = await connection.fetch("SELECT handle FROM host_verified_inputs")
                stored = await queries.get_ciphertexts(connection, tenant.tenant_id, handles)
        finally:
            await pool.close()
        assert [bytes(r["handle"]) for r in inputs] == handles
        client = load_client(settings[0], tenant)
        assert client.decrypt(stored[handles[0]].ciphertext) == 300
        store.delete(key_objects(tenant))
