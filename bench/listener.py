"""Host listener benchmark: events ingested per second from a backlog.

    .venv/bin/python bench/listener.py [--transfers 200]

On the dev stack's anvil and a scratch PostgreSQL database: deploy the contracts, make
a backlog of confidential transfers (each: 5 executor events plus ACL events, in its own block after
the wallet's claim and share transactions), then
time one listener poll that reads, decodes, checks (every handle re-derived) and
writes the whole backlog. Rows only (no FheBatch creation: that is the operator
benchmark's business). Writes bench/results/listener.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import asyncpg
from benchlib import dev_services, write_result
from web3 import Web3

from coprocessor.chain.contracts import deploy_host, deploy_token
from coprocessor.db import queries
from coprocessor.db.migrate import scratch_database
from coprocessor.db.pool import create_pool
from coprocessor.settings import Settings
from coprocessor.types import FheType, make_handle
from listeners.host import HostListener


def backlog(w3: Web3, transfers: int) -> tuple[object, object, int]:
    host = deploy_host(w3)
    executor, acl, token = host.executor, host.acl, deploy_token(w3, host)
    owner, alice, bob = w3.eth.accounts[:3]
    start = w3.eth.block_number + 1
    w3.eth.wait_for_transaction_receipt(
        token.functions.mint(alice, 10**9).transact({"from": owner})
    )
    hashes = []
    for n in range(transfers):
        sender, to = (alice, bob) if n % 2 == 0 else (bob, alice)
        amount = make_handle(os.urandom(32), 0, w3.eth.chain_id, FheType.Uint64).raw
        w3.eth.wait_for_transaction_receipt(
            acl.functions.claimInput(amount).transact({"from": sender})
        )
        w3.eth.wait_for_transaction_receipt(
            acl.functions.allow(amount, token.address).transact({"from": sender})
        )
        hashes.append(token.functions.transfer(to, amount).transact({"from": sender}))
    for tx in hashes[-1:]:
        w3.eth.wait_for_transaction_receipt(tx)
    return executor, acl, start


async def ingest(env: dict[str, str], w3: Web3, executor, acl, start: int) -> dict:
    async with scratch_database(
        env["FHE_DATABASE_URL"], Settings().migrations_dir, "bench_listener"
    ) as url:
        connection = await asyncpg.connect(url)
        try:
            await queries.create_tenant(
                connection, "bench", w3.eth.chain_id, os.urandom(32), "tfhe-rs"
            )
        finally:
            await connection.close()
        settings = Settings(
            database_url=url,
            host_tenant="bench",
            host_executor_address=executor.address,
            host_acl_address=acl.address,
            host_start_block=start,
        )
        pool = await create_pool(url, size=4)
        try:
            listener = HostListener(settings, w3, pool, None)
            await listener.start()
            started = time.perf_counter()
            blocks = await listener.poll()
            seconds = time.perf_counter() - started
        finally:
            await pool.close()
    counters = listener.counters
    events = counters.computations + counters.allowed
    return {
        "blocks": blocks,
        "executor_events": counters.computations,
        "acl_rows": counters.allowed,
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds, 1),
        "blocks_per_s": round(blocks / seconds, 1),
        "skipped": counters.skipped_logs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=200)
    args = parser.parse_args()
    with dev_services() as env:
        w3 = Web3(Web3.HTTPProvider(env["FHE_HOST_RPC_URL"]))
        made = time.perf_counter()
        executor, acl, start = backlog(w3, args.transfers)
        print(
            f"backlog: {args.transfers} transfers in {time.perf_counter() - made:.1f} s", flush=True
        )
        result = asyncio.run(ingest(env, w3, executor, acl, start))
    result["transfers"] = args.transfers
    write_result("listener", result)


if __name__ == "__main__":
    main()
