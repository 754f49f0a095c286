"""The host-chain half of `make demo`: Zama's fhEVM host contracts (@fhevm/host-contracts)
on anvil, a ConfidentialToken on Zama's FHE library, confidential transfers, the host
listener, the FheBatches it creates (compute, sns, send), and the decrypted balances
with their digests committed on the gateway chain.

Run by scripts/demo with the dev stack's environment (FHE_*, KUBECONFIG) and the
operator already running; exits non-zero if a balance is not what plain arithmetic
says.

Three transfers use ``transferTrivial``: the amount is trivially encrypted on chain
(TrivialEncrypt) while the balances stay encrypted. Handles follow the host's rule (no
transaction in the hash), so equal computations in different transactions, such as the
TrivialEncrypt(0) of every transfer, share one handle.

The fourth is what a real dapp does: the amount is encrypted by Zama's client SDK
(``@zama-fhe/relayer-sdk``, ``encrypt()``) under the tenant's public key, sent to a
relayer stand-in, verified by this coprocessor's input path (gateway listener, verify
worker, sender, in-process here) and answered on the gateway with its signer's
signature; the SDK builds the inputProof from the consensus, and the host's
InputVerifier accepts it in ``transfer(to, externalEuint64, inputProof)``. A host chain
initialised for another gateway (an older dev stack) cannot check our signatures: the
demo then says so and skips that transfer.
"""

from __future__ import annotations

import asyncio
import sys
import time

from kubernetes import client, config
from web3 import Web3
from web3.contract import Contract

from coprocessor.api.batch import GROUP, PLURAL, VERSION
from coprocessor.chain.contracts import bound
from coprocessor.db import queries
from coprocessor.db.pool import create_pool
from coprocessor.errors import Fatal
from coprocessor.settings import load_settings
from coprocessor.tenants import load_client
from devstack.host_chain import HostChain, deploy_dapp, ensure_host_chain
from devstack.settings import default_state_dir
from listeners.host import HostListener

NAMESPACE, TENANT = "fhe-demo", "demo"
MINTED = 1000
ENCRYPTED_AMOUNT = 250


def transact(
    w3: Web3, token: Contract, names: dict[str, str], encrypted: tuple[bytes, bytes] | None
) -> tuple[int, dict[str, int]]:
    """Mint, then the transfers (the last with an SDK-encrypted amount when ``encrypted``
    holds its handle and inputProof); returns the first block and the expected balances."""
    owner, alice, bob, carol = w3.eth.accounts[:4]
    start = w3.eth.block_number + 1
    expected = dict.fromkeys(names, 0)
    send(w3, token.functions.mint(alice, MINTED), owner)
    expected[alice] += MINTED
    print(f"mint {names[alice]}: {MINTED}")
    # The last is more than alice holds: the token moves nothing, without revealing it.
    for sender, to, value in ((alice, bob, 300), (bob, carol, 100), (alice, carol, 5000)):
        send(w3, token.functions.transferTrivial(to, value), sender)
        if expected[sender] >= value:  # otherwise the contract moves nothing
            expected[sender] -= value
            expected[to] += value
        print(f"transfer {names[sender]} -> {names[to]}: {value} (balances encrypted)")
    if encrypted is not None:
        handle, proof = encrypted
        send(w3, token.functions.transfer(bob, handle, proof), alice)
        expected[alice] -= ENCRYPTED_AMOUNT
        expected[bob] += ENCRYPTED_AMOUNT
        print(
            f"transfer alice -> bob: {ENCRYPTED_AMOUNT}, encrypted by the client SDK "
            "(inputProof accepted by the host's InputVerifier)"
        )
    return start, expected


def host_for_inputs(w3: Web3, settings, gateway) -> tuple[HostChain, bool]:
    """The host contracts, trusting our gateway's InputVerification and signer where the
    chain is new enough to be initialised so; (host, whether inputs can be verified)."""
    try:
        host = ensure_host_chain(
            w3,
            default_state_dir(),
            coprocessor_signers=[gateway.signer],
            gateway_chain_id=w3.eth.chain_id,
            input_verification_address=gateway.input_verification,
        )
        return host, True
    except Fatal as error:
        print(f"host chain: {error}; the SDK-encrypted transfer is skipped")
        return ensure_host_chain(w3, default_state_dir()), False


async def encrypt_amount(settings, pool, w3: Web3, host, gateway, tenant, token, user, public_key):
    """The SDK's encrypt() through the relayer stand-in, answered by this coprocessor's
    input path; (handle, inputProof)."""
    import tempfile
    from pathlib import Path

    from pydantic import SecretStr

    from coprocessor.kms import deployment_crs
    from coprocessor.storage import ObjectStore
    from devstack.input_path import run_input_path
    from devstack.keys import key_at
    from devstack.relayer import RelayerStandIn
    from devstack.sdk import sdk_encrypt

    inputs = settings.model_copy(
        update={
            "signer_private_key": SecretStr(
                "0x" + bytes(key_at(gateway.signer_key_file).key).hex()
            ),
            "sender_private_key": SecretStr("0x" + bytes(key_at(gateway.key_file).key).hex()),
            "gateway_start_block": w3.eth.block_number,
            "gateway_ws_url": "off",
            "gateway_poll_interval_s": 0.2,
            "host_acl_address": host.acl,
        }
    )
    async with pool.acquire() as connection:  # the KMS's CRS if one was activated
        crs = await deployment_crs(
            connection, ObjectStore(settings), tenant.backend, settings.crs_max_bits
        )
    relayer = RelayerStandIn(
        w3, bound(w3, "InputVerification", gateway.input_verification), w3.eth.accounts[5]
    )
    stop = asyncio.Event()
    path = asyncio.create_task(run_input_path(inputs, w3, host.chain_id, stop))
    url = relayer.start()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="fhe-demo-sdk-") as scratch:
            handles, proof = await asyncio.to_thread(
                sdk_encrypt,
                Path(scratch),
                public_key,
                crs,
                host,
                contract=token.address,
                user=user,
                relayer_url=url,
                rpc_url=settings.host_rpc_url,
                items=[f"Uint64:{ENCRYPTED_AMOUNT}"],
            )
    finally:
        relayer.stop()
        stop.set()
        await asyncio.wait_for(path, 60)
    print(
        f"input: SDK encrypt() -> relayer -> gateway request -> verified and signed by this "
        f"coprocessor -> inputProof, {time.monotonic() - started:.1f} s"
    )
    return handles[0], proof


async def main() -> int:
    settings = load_settings()
    w3 = Web3(Web3.HTTPProvider(settings.host_rpc_url))
    alice, bob, carol = w3.eth.accounts[1:4]
    names = {alice: "alice", bob: "bob", carol: "carol"}
    from devstack.gateway import ensure_dev_gateway

    gateway = ensure_dev_gateway(default_state_dir(), settings)
    host, inputs_ok = host_for_inputs(w3, settings, gateway)
    token = deploy_dapp(w3, host, "ConfidentialToken")
    print(
        f"host contracts: FHEVMExecutor {host.executor}, ACL {host.acl}, "
        f"KMSVerifier {host.kms_verifier} (chain {host.chain_id}); "
        f"ConfidentialToken {token.address}"
    )
    assert settings.gateway_commits_address, "scripts/demo deploys the gateway first"
    commits = bound(w3, "CiphertextCommits", settings.gateway_commits_address)
    assert settings.gateway_acl_address, "scripts/demo deploys the gateway first"
    gateway_acl = bound(w3, "MultichainACL", settings.gateway_acl_address)
    pool = await create_pool(settings.database_url, size=2)
    try:
        async with pool.acquire() as connection:
            tenant = await queries.get_tenant(connection, TENANT)
        assert tenant is not None, "scripts/demo creates the tenant first"
        tenant_client = load_client(settings, tenant)

        encrypted = None
        if inputs_ok:
            async with pool.acquire() as connection:
                public_key = await queries.get_public_params(connection, tenant.tenant_id)
            encrypted = await encrypt_amount(
                settings, pool, w3, host, gateway, tenant, token, alice, public_key
            )
        start, expected = transact(w3, token, names, encrypted)

        listener_settings = settings.model_copy(
            update={
                "host_tenant": TENANT,
                "host_executor_address": host.executor,
                "host_acl_address": host.acl,
                "host_start_block": start,
                "namespace": NAMESPACE,
                "host_batch_stages": ["compute", "sns", "send"],
            }
        )
        config.load_kube_config()
        api = client.CustomObjectsApi()
        listener = HostListener(listener_settings, w3, pool, api)
        await listener.start()
        await listener.poll()
        counters = listener.counters
        print(
            f"host listener: {counters.blocks} blocks, {counters.computations} "
            f"computations, {counters.allowed} ACL rows, {counters.batches} FheBatches"
        )
        ok = counters.skipped_logs == 0
        for reason in counters.skipped_reasons:
            print(f"  log skipped: {reason}")
        made = [
            item
            for item in api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)[
                "items"
            ]
            if item["metadata"]["name"].startswith(f"host-{tenant.chain_id}-")
            and int(item["metadata"]["annotations"][f"{GROUP}/block"]) >= start
        ]
        wait_all(api, sorted(item["metadata"]["name"] for item in made), timeout=900)

        print("balances, decrypted:")
        for account, name in names.items():
            handle = bytes(token.functions.balanceOf(account).call())
            async with pool.acquire() as connection:
                stored = await queries.get_ciphertexts(connection, tenant.tenant_id, [handle])
            if handle not in stored:
                ok = False
                print(f"  {name:6s} handle 0x{handle.hex()} has NO CIPHERTEXT")
                continue
            value = tenant_client.decrypt(stored[handle].ciphertext)
            committed = commits.functions.isCiphertextMaterialAdded(handle).call()
            # The token allowed each new balance to its owner on the host ACL; the send
            # stage relayed it, so the gateway lets the owner ask the KMS to decrypt it.
            allowed = gateway_acl.functions.isAccountAllowed(handle, account).call()
            ok &= value == expected[account] and committed and allowed
            print(
                f"  {name:6s} {value:5d} (expected {expected[account]}), digests "
                f"{'committed on the gateway chain' if committed else 'NOT COMMITTED'}, "
                f"{'owner allowed on' if allowed else 'owner NOT ALLOWED on'} MultichainACL"
            )
    finally:
        await pool.close()
    return 0 if ok else 1


def send(w3: Web3, call, sender: str) -> None:
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    if receipt["status"] != 1:
        raise SystemExit(f"transaction {receipt['transactionHash'].hex()} reverted")


def job_seconds(status: dict) -> dict[str, float]:
    """Each Job's time (start to finish) from a batch's status, by Job name: one Job may
    run several stages (FHE_JOB_FUSE_STAGES), and then several stages name it."""
    from datetime import datetime

    def at(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return {
        entry["job"]: at(entry["finishedAt"]) - at(entry["startedAt"])
        for entry in (status.get("stages") or {}).values()
        if entry.get("job") and entry.get("startedAt") and entry.get("finishedAt")
    }


def work_seconds(status: dict) -> dict[str, float]:
    """Each stage's own time as its pod reported it (summary ``seconds``; compute's key
    load, ``key_load_s``, comes before it and is shown apart)."""
    out = {}
    for stage, entry in (status.get("stages") or {}).items():
        summary = entry.get("summary") or {}
        if stage == "compute" and "key_load_s" in summary:
            out["compute key"] = summary["key_load_s"]
        if "seconds" in summary:
            out[stage] = summary["seconds"]
    return out


def stage_times(status: dict) -> str:
    """The stages' own times and the Jobs' (start to finish), from the batch's status."""
    work = ", ".join(f"{stage} {t:.1f}s" for stage, t in work_seconds(status).items())
    jobs = job_seconds(status)
    return f"stages: {work}; {len(jobs)} Job(s) {sum(jobs.values()):.0f}s in all"


def wait_all(api: client.CustomObjectsApi, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            status = (
                api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name).get(
                    "status"
                )
                or {}
            )
            if status.get("phase") == "Failed":
                raise SystemExit(f"batch {name} failed: {status.get('message')}")
            if status.get("phase") == "Succeeded":
                pending.discard(name)
                print(f"{name}: {status.get('message')}")
                print(f"  {stage_times(status)}")
        time.sleep(1)
    if pending:
        raise SystemExit(f"batches not finished in {timeout}s: {sorted(pending)}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
