"""This coprocessor's input path run in-process, for the demo and the tests: the gateway
listener, the verify worker and the sender, long-running until ``stop``.

In a deployment each is its own Deployment (``fhe-listener gateway``, ``fhe-job verify
--follow``, ``fhe-listener sender``); here they share one event loop so a script can
drive a client, the relayer stand-in and the coprocessor side by side.
"""

from __future__ import annotations

import asyncio

import asyncpg
from web3 import Web3

from coprocessor.chain.gateway import GatewayClient
from coprocessor.chain.verdicts import VerdictSigner
from coprocessor.settings import Settings
from job_runner.verify import follow
from listeners.gateway import GatewayListener
from listeners.sender import Sender


async def run_input_path(
    settings: Settings, w3: Web3, host_chain_id: int, stop: asyncio.Event
) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        chain_id = await asyncio.to_thread(lambda: w3.eth.chain_id)
        listener = GatewayListener(settings, w3, pool, host_chain_id=host_chain_id)
        verdicts = VerdictSigner.from_settings(settings, chain_id)
        sender = Sender(settings, pool, GatewayClient(w3, settings), verdicts)
        await asyncio.gather(listener.run(stop), follow(settings, stop), sender.run(stop))
    finally:
        await pool.close()
