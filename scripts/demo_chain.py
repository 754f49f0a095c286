"""The host-chain half of `make demo`: Zama's fhEVM host contracts (@fhevm/host-contracts)
on anvil, a ConfidentialToken on Zama's FHE library, confidential transfers, the host
listener, the FheBatches it creates (compute, sns, send), and the decrypted balances
with their digests committed on the gateway chain.

Run by scripts/demo with the dev stack's environment (FHE_*, KUBECONFIG) and the
operator already running; exits non-zero if a balance is not what plain arithmetic
says.

The transfers use ``transferTrivial``: the amount is trivially encrypted on chain
(TrivialEncrypt) while the balances stay encrypted. Handles follow the host's rule (no
transaction in the hash), so equal computations in different transactions, such as the
TrivialEncrypt(0) of every transfer, share one handle.
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
from coprocessor.settings import load_settings
from coprocessor.tenants import load_client
from devstack.host_chain import deploy_dapp, ensure_host_chain
from devstack.settings import default_state_dir
from listeners.host import HostListener

NAMESPACE, TENANT = "fhe-demo", "demo"
MINTED = 1000


def transact(w3: Web3, token: Contract, names: dict[str, str]) -> tuple[int, dict[str, int]]:
    """Mint, then the transfers; returns the first block and the expected balances."""
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
    return start, expected


async def main() -> int:
    settings = load_settings()
    w3 = Web3(Web3.HTTPProvider(settings.host_rpc_url))
    alice, bob, carol = w3.eth.accounts[1:4]
    names = {alice: "alice", bob: "bob", carol: "carol"}
    host = ensure_host_chain(w3, default_state_dir())
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

        start, expected = transact(w3, token, names)

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


def stage_times(status: dict) -> str:
    """Seconds per stage (Job start to finish) from the batch's status, and their sum."""
    from datetime import datetime

    def seconds(entry: dict) -> float | None:
        if not entry.get("startedAt") or not entry.get("finishedAt"):
            return None
        start, end = (
            datetime.fromisoformat(entry[k].replace("Z", "+00:00"))
            for k in ("startedAt", "finishedAt")
        )
        return (end - start).total_seconds()

    parts = {stage: seconds(entry) for stage, entry in (status.get("stages") or {}).items()}
    shown = ", ".join(f"{stage} {t:.0f}s" for stage, t in parts.items() if t is not None)
    total = sum(t for t in parts.values() if t is not None)
    return f"stages: {shown} (Jobs {total:.0f}s in all)"


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
