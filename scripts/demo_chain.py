"""The host-chain half of `make demo`: contracts on anvil, confidential transfers, the
host listener, the FheBatches it creates (compute, sns, send), and the decrypted
balances with their digests committed on the gateway chain.

Run by scripts/demo with the dev stack's environment (FHE_*, KUBECONFIG) and the
operator already running; exits non-zero if a balance is not what plain arithmetic
says.
"""

from __future__ import annotations

import asyncio
import sys
import time

from kubernetes import client, config
from web3 import Web3

from coprocessor.api.batch import GROUP, PLURAL, VERSION
from coprocessor.chain.contracts import bound, deploy_host, deploy_token
from coprocessor.db import queries
from coprocessor.db.pool import create_pool
from coprocessor.settings import load_settings
from coprocessor.tenants import input_handle, load_client
from coprocessor.types import FheType
from listeners.host import HostListener

NAMESPACE, TENANT = "fhe-demo", "demo"
U64 = FheType.Uint64


async def main() -> int:
    settings = load_settings()
    w3 = Web3(Web3.HTTPProvider(settings.host_rpc_url))
    owner, alice, bob, carol = w3.eth.accounts[:4]
    names = {alice: "alice", bob: "bob", carol: "carol"}
    host = deploy_host(w3)
    executor, acl, token = host.executor, host.acl, deploy_token(w3, host)
    print(
        f"contracts: FheExecutor {executor.address}, ACL {acl.address}, "
        f"ConfidentialERC20 {token.address}"
    )
    assert settings.gateway_commits_address, "scripts/demo deploys the gateway first"
    commits = bound(w3, "CiphertextCommits", settings.gateway_commits_address)
    pool = await create_pool(settings.database_url, size=2)
    try:
        async with pool.acquire() as connection:
            tenant = await queries.get_tenant(connection, TENANT)
        assert tenant is not None, "scripts/demo creates the tenant first"
        tenant_client = load_client(settings, tenant)

        async def amount(value: int) -> bytes:
            """What a wallet does: encrypt, and hand the ciphertext to the coprocessor."""
            ciphertext = tenant_client.encrypt(value, U64)
            handle = input_handle(ciphertext, tenant.chain_id, int(U64))
            async with pool.acquire() as connection:
                await queries.insert_ciphertext(
                    connection, tenant.tenant_id, handle, ciphertext, 0, int(U64)
                )
            return handle

        start = w3.eth.block_number + 1
        expected = {alice: 1000, bob: 0, carol: 0}
        send(w3, token.functions.mint(alice, 1000), owner)
        for sender, to, value in ((alice, bob, 300), (bob, carol, 100), (alice, carol, 5000)):
            handle = await amount(value)
            send(w3, acl.functions.claimInput(handle), sender)  # the wallet's input
            send(w3, acl.functions.allow(handle, token.address), sender)  # for the token
            send(w3, token.functions.transfer(to, handle), sender)
            if expected[sender] >= value:  # otherwise the contract moves nothing
                expected[sender] -= value
                expected[to] += value
            print(f"transfer {names[sender]} -> {names[to]}: {value} (encrypted)")

        listener_settings = settings.model_copy(
            update={
                "host_tenant": TENANT,
                "host_executor_address": executor.address,
                "host_acl_address": acl.address,
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
        ok = True
        for account, name in names.items():
            handle = bytes(token.functions.balanceOf(account).call())
            async with pool.acquire() as connection:
                stored = await queries.get_ciphertexts(connection, tenant.tenant_id, [handle])
            value = tenant_client.decrypt(stored[handle].ciphertext)
            committed = commits.functions.isAccepted(handle).call()
            ok &= value == expected[account] and committed
            print(
                f"  {name:6s} {value:5d} (expected {expected[account]}), digests "
                f"{'committed on the gateway chain' if committed else 'NOT COMMITTED'}"
            )
    finally:
        await pool.close()
    return 0 if ok else 1


def send(w3: Web3, call, sender: str) -> None:
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    if receipt["status"] != 1:
        raise SystemExit(f"transaction {receipt['transactionHash'].hex()} reverted")


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
        time.sleep(1)
    if pending:
        raise SystemExit(f"batches not finished in {timeout}s: {sorted(pending)}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
