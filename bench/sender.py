"""Send-stage benchmark: digests committed per second to the gateway chain.

    .venv/bin/python bench/sender.py [--handles 300]

On the dev stack's anvil (automine: one block per transaction) and a scratch
PostgreSQL database: a fresh CiphertextCommits and funded signer per mode, ``--handles``
digest rows, then one Committer pass (what `fhe-job send` and `fhe-listener sender`
run) timed from the first RPC to the last row marked sent. Modes:

* sequential  - one handle per transaction, wait for each receipt (in flight 1);
* pipelined   - one handle per transaction, 32 consecutive nonces in flight;
* batched-N   - N handles per addCiphertextMaterials transaction.

Writes bench/results/sender.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import asyncpg
from benchlib import dev_services, write_result
from web3 import Web3

from coprocessor.chain.committer import Committer
from coprocessor.chain.contracts import deploy, funded_account
from coprocessor.chain.gateway import GatewayClient
from coprocessor.db import commits, queries
from coprocessor.db.migrate import scratch_database
from coprocessor.db.pool import create_pool
from coprocessor.settings import Settings

MODES = {"sequential": (1, 1), "pipelined": (1, 32), "batched-16": (16, 8), "batched-64": (64, 8)}


async def one_mode(env: dict[str, str], w3: Web3, handles: int, batch: int, in_flight: int) -> dict:
    signer = funded_account(w3, 10**20)
    contract = deploy(w3, "CiphertextCommits", [signer.address], 1)
    async with scratch_database(
        env["FHE_DATABASE_URL"], Settings().migrations_dir, "bench_sender"
    ) as url:
        connection = await asyncpg.connect(url)
        try:
            tenant = await queries.create_tenant(
                connection, "bench", w3.eth.chain_id, os.urandom(32), "tfhe-rs"
            )
            await connection.executemany(
                """INSERT INTO ciphertext_digest (tenant_id, handle, key_id, ciphertext,
                       ciphertext128, ciphertext128_format) VALUES ($1, $2, $3, $4, $5, 10)""",
                [
                    (
                        tenant.tenant_id,
                        os.urandom(32),
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
            gateway_commits_address=contract.address,
            sender_private_key="0x" + bytes(signer.key).hex(),
            sender_batch_size=batch,
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
    assert result.sent == handles, result
    return {
        "handles": handles,
        "batch_size": batch,
        "in_flight": in_flight,
        "transactions": len(result.transactions),
        "seconds": round(seconds, 3),
        "commits_per_s": round(handles / seconds, 1),
        "transactions_per_s": round(len(result.transactions) / seconds, 1),
        "gas_per_handle": round(result.gas_used / handles),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handles", type=int, default=300)
    args = parser.parse_args()
    with dev_services() as env:
        w3 = Web3(Web3.HTTPProvider(env["FHE_GATEWAY_RPC_URL"]))
        results = {}
        for name, (batch, in_flight) in MODES.items():
            results[name] = asyncio.run(one_mode(env, w3, args.handles, batch, in_flight))
            print(
                f"{name:11s} {results[name]['commits_per_s']:8.1f} commits/s "
                f"({results[name]['transactions']} tx, "
                f"{results[name]['gas_per_handle']} gas/handle)",
                flush=True,
            )
    write_result("sender", {"chain": "anvil (automine)", "modes": results})


if __name__ == "__main__":
    main()
