"""Send-stage benchmark: digests committed per second to the gateway chain.

    .venv/bin/python bench/sender.py [--handles 300]

On the dev stack's anvil (automine: one block per transaction) and a scratch
PostgreSQL database: per mode a fresh gateway (GatewayConfig with one coprocessor,
majority 1, and the handles' host chain; CiphertextCommits; MultichainACL) and funded
tx sender, ``--handles`` digest rows of a tenant the KMS activated, then one Committer
pass (what `fhe-job send` and `fhe-listener sender` run) timed from the first RPC to
the last row marked sent. One handle per ``addCiphertextMaterial`` transaction (Zama's
ABI has no batch call); the modes differ in how many consecutive nonces are in flight
before the sender waits for receipts (``FHE_SENDER_MAX_IN_FLIGHT``): 1, 8 and 32.

Writes bench/results/sender.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import asyncpg
from benchlib import dev_services, write_result
from eth_account import Account
from web3 import Web3

from coprocessor.chain.committer import Committer
from coprocessor.chain.contracts import funded_account
from coprocessor.chain.gateway import GatewayClient
from coprocessor.db import commits, queries
from coprocessor.db.migrate import scratch_database
from coprocessor.db.pool import create_pool
from coprocessor.settings import Settings
from coprocessor.types import FheType, make_handle
from devstack.gateway import deploy_gateway, host_chain

MODES = {"in-flight-1": 1, "in-flight-8": 8, "in-flight-32": 32}
HOST_CHAIN_ID = 12345
KMS_KEY_ID = (4 << 248) + 1


async def one_mode(env: dict[str, str], w3: Web3, handles: int, in_flight: int) -> dict:
    tx_sender = funded_account(w3, 10**20)
    gateway = deploy_gateway(
        w3,
        [(tx_sender.address, Account.create().address, "s3://bench-ct128")],
        [host_chain(HOST_CHAIN_ID)],
    )
    config, ciphertext_commits, multichain_acl = gateway.config, gateway.commits, gateway.acl
    async with scratch_database(
        env["FHE_DATABASE_URL"], Settings().migrations_dir, "bench_sender"
    ) as url:
        connection = await asyncpg.connect(url)
        try:
            tenant = await queries.create_tenant(
                connection,
                "bench",
                HOST_CHAIN_ID,
                os.urandom(32),
                "tfhe-rs",
                kms_key_id=KMS_KEY_ID,
            )
            await connection.executemany(
                """INSERT INTO ciphertext_digest (tenant_id, handle, key_id, ciphertext,
                       ciphertext128, ciphertext128_format) VALUES ($1, $2, $3, $4, $5, 10)""",
                [
                    (
                        tenant.tenant_id,
                        make_handle(os.urandom(21), 0xFF, HOST_CHAIN_ID, FheType.Uint64).raw,
                        tenant.key_id,
                        os.urandom(32),
                        os.urandom(32),
                    )
                    for _ in range(handles)
                ],
            )
            rows = await commits.unsent(connection, handles, max_retries=5)
        finally:
            await connection.close()
        settings = Settings(
            database_url=url,
            gateway_rpc_url=env["FHE_GATEWAY_RPC_URL"],
            gateway_config_address=config.address,
            gateway_commits_address=ciphertext_commits.address,
            gateway_acl_address=multichain_acl.address,
            sender_private_key="0x" + bytes(tx_sender.key).hex(),
            sender_max_in_flight=in_flight,
        )
        pool = await create_pool(url, size=4)
        try:
            committer = Committer(pool, GatewayClient.connect(settings), settings)
            started = time.perf_counter()
            result = await committer.commit(rows)
            seconds = time.perf_counter() - started
        finally:
            await pool.close()
    assert result.sent == handles and not result.rejected, result
    accepted = ciphertext_commits.functions.isCiphertextMaterialAdded(rows[-1].handle).call()
    assert accepted, "majority 1: the last handle's material reached consensus"
    return {
        "handles": handles,
        "in_flight": in_flight,
        "transactions": len(result.transactions),
        "seconds": round(seconds, 3),
        "commits_per_s": round(handles / seconds, 1),
        "gas_per_handle": round(result.gas_used / handles),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handles", type=int, default=300)
    args = parser.parse_args()
    with dev_services() as env:
        w3 = Web3(Web3.HTTPProvider(env["FHE_GATEWAY_RPC_URL"]))
        results = {}
        for name, in_flight in MODES.items():
            results[name] = asyncio.run(one_mode(env, w3, args.handles, in_flight))
            print(
                f"{name:12s} {results[name]['commits_per_s']:8.1f} commits/s "
                f"({results[name]['transactions']} tx, "
                f"{results[name]['gas_per_handle']} gas/handle)",
                flush=True,
            )
    write_result(
        "sender",
        {
            "chain": "anvil (automine)",
            "contracts": "GatewayConfig + CiphertextCommits (Zama ABI), one coprocessor",
            "one_handle_per_transaction": True,
            "modes": results,
        },
    )


if __name__ == "__main__":
    main()
