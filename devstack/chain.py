"""A local chain node: anvil from the npm package ``@foundry-rs/anvil``.

One anvil serves as both host and gateway chain in the dev stack; they are separate
settings so production points them at different networks.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from . import process
from .component import Info
from .versions import anvil_binary

DEV_CHAIN_ID = 12345
# Fixed rather than anvil's "latest", so a newer anvil does not change the chain under us;
# fhEVM's host contracts use transient storage (cancun or later).
HARDFORK = "prague"


def rpc(url: str, method: str, params: list | None = None, timeout: float = 2.0) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["result"]


def _chain_id(port: int) -> int | None:
    try:
        return int(str(rpc(f"http://127.0.0.1:{port}", "eth_chainId")), 16)
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None


class Anvil:
    name = "chain"

    def __init__(
        self, port: int | None = None, chain_id: int = DEV_CHAIN_ID, block_time: int | None = None
    ) -> None:
        self.requested_port = port
        self.chain_id = chain_id
        self.block_time = block_time  # None: mine each transaction at once (automine)

    def up(self, state_dir: Path, previous: Info | None) -> Info:
        if previous and self.health(previous)["healthy"]:
            return previous
        binary = process.require_installed(anvil_binary(), "anvil")
        logfile = state_dir / "chain" / "anvil.log"
        dump = state_dir / "chain" / "state.json"
        port = process.choose_port(self.requested_port, previous, "chain")
        argv = [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(self.chain_id),
            "--hardfork",
            HARDFORK,
            "--state",
            str(dump),
        ]
        if self.block_time:
            argv += ["--block-time", str(self.block_time)]
        pid = process.spawn(argv, logfile)
        process.wait_until(
            lambda: _chain_id(port) == self.chain_id,
            timeout=60,
            service="chain",
            log_path=logfile,
            pid=pid,
        )
        return {"pid": pid, "port": port, "chain_id": self.chain_id, "log": str(logfile)}

    def down(self, info: Info) -> None:
        process.stop(info.get("pid"), expect="anvil")

    def health(self, info: Info) -> Info:
        alive = process.is_running(info.get("pid"), expect="anvil")
        chain_id = _chain_id(int(info["port"])) if alive else None
        return {
            "healthy": chain_id == info.get("chain_id"),
            "pid": info.get("pid"),
            "port": info.get("port"),
            "chain_id": chain_id,
            "url": f"http://127.0.0.1:{info.get('port')}",
        }

    def env(self, info: Info) -> dict[str, str]:
        url = f"http://127.0.0.1:{info['port']}"
        return {
            "FHE_HOST_RPC_URL": url,
            "FHE_GATEWAY_RPC_URL": url,
            "FHE_CHAIN_ID": str(info["chain_id"]),
        }
