"""Host listener benchmark: events ingested per second from a backlog.

    .venv/bin/python bench/listener.py [--transfers 40] [--mint-every 10]

On the dev stack's anvil and a scratch PostgreSQL database: deploy (or find) Zama's
fhEVM host contracts and a ConfidentialToken, make a backlog of confidential
transfers (``transferTrivial``, each in its own block: 6 FHEVMExecutor events and 4
ACL ``Allowed`` events) with a mint every ``--mint-every`` transfers (1 executor
event, 2 ACL events), then time one listener poll that reads, decodes, checks (every
handle re-derived by the host's rule) and writes the whole backlog. Rows only (no
FheBatch creation: that is the operator benchmark's business). Writes
bench/results/listener.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import asyncpg
from benchlib import dev_services, write_result
from web3 import Web3

from coprocessor.chain.contracts import bound
from coprocessor.db import queries
from coprocessor.db.migrate import scratch_database
from coprocessor.db.pool import create_pool
from coprocessor.settings import Settings
from devstack.host_chain import HostChain, deploy_dapp, ensure_host_chain
from listeners.host import HostListener


def backlog(w3: Web3, host: HostChain, transfers: int, mint_every: int) -> tuple[int, int]:
    """(first block, mints) of a backlog of ``transfers`` transfers and some mints."""
    owner, alice, bob = w3.eth.accounts[:3]
    token = deploy_dapp(w3, host, "ConfidentialToken", sender=owner)
    start = w3.eth.block_number + 1
    hashes = [
        token.functions.mint(holder, 10**9).transact({"from": owner}) for holder in (alice, bob)
    ]
    mints = 2
    for n in range(transfers):
        sender, to = (alice, bob) if n % 2 == 0 else (bob, alice)
        # A distinct amount per transfer, so its TrivialEncrypt is a handle of its own.
        hashes.append(token.functions.transferTrivial(to, 1 + n).transact({"from": sender}))
        if mint_every and n % mint_every == mint_every - 1:
            hashes.append(token.functions.mint(sender, 1 + n).transact({"from": owner}))
            mints += 1
    for tx in hashes:  # anvil mines each on arrival; check none reverted
        if w3.eth.wait_for_transaction_receipt(tx)["status"] != 1:
            raise SystemExit(f"transaction 0x{bytes(tx).hex()} reverted")
    return start, mints


async def ingest(env: dict[str, str], w3: Web3, host: HostChain, start: int) -> dict:
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
            host_executor_address=host.executor,
            host_acl_address=host.acl,
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
        "skipped_reasons": counters.skipped_reasons,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=40)
    parser.add_argument("--mint-every", type=int, default=10, help="0: no mints between")
    args = parser.parse_args()
    with dev_services() as env:
        w3 = Web3(Web3.HTTPProvider(env["FHE_HOST_RPC_URL"]))
        made = time.perf_counter()
        host = ensure_host_chain(w3, Path(env["FHE_STATE_DIR"]))
        start, mints = backlog(w3, host, args.transfers, args.mint_every)
        print(
            f"backlog: {args.transfers} transfers, {mints} mints in "
            f"{time.perf_counter() - made:.1f} s",
            flush=True,
        )
        result = asyncio.run(ingest(env, w3, host, start))
        result["host_contracts"] = (
            bound(w3, "host/FHEVMExecutor", host.executor).functions.getVersion().call()
        )
    result["transfers"] = args.transfers
    result["mints"] = mints
    write_result("listener", result)


if __name__ == "__main__":
    main()
