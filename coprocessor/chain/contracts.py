"""Compiled contracts and their deployment through web3.

``scripts/install`` compiles ``contracts/*.sol`` and ``contracts/gateway/*.sol`` with
solc into ``compiled/`` next to this module, which the wheel ships as package data;
contracts only tests deploy (``contracts/testing``) go to ``contracts/build/testing`` in
the checkout instead. The ABIs are read from the build output, never copied by hand, so
the listener decodes exactly the events the deployed bytecode emits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import Wei

from ..errors import Fatal

BUILD_DIR = Path(__file__).resolve().parent / "compiled"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def artifact(name: str, build_dir: Path = BUILD_DIR) -> Artifact:
    path = build_dir / f"{name}.json"
    if not path.is_file():
        raise Fatal(f"contract {name} is not compiled ({path} missing); run `make setup`")
    data = json.loads(path.read_text())
    return Artifact(name, data["abi"], data["bytecode"])


def deploy(
    w3: Web3, name: str, *args: Any, sender: str | None = None, build_dir: Path = BUILD_DIR
) -> Contract:
    """Deploy and wait for the receipt; returns the bound contract."""
    built = artifact(name, build_dir)
    factory = w3.eth.contract(abi=built.abi, bytecode=built.bytecode)
    tx_hash = factory.constructor(*args).transact({"from": sender or w3.eth.accounts[0]})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise Fatal(f"deploying {name} reverted (tx {tx_hash.hex()})")
    address = receipt["contractAddress"]
    if address is None:
        raise Fatal(f"deploying {name} gave no contract address (tx {tx_hash.hex()})")
    return w3.eth.contract(address=address, abi=built.abi)


def bound(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact(name).abi)


def decode_logs(contract: Contract, logs: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, arguments) for each log this contract emitted, in order; logs of
    other contracts and unknown topics are left out."""
    from eth_utils import event_abi_to_log_topic

    events: list[Any] = [item for item in contract.abi if item.get("type") == "event"]
    by_topic = {event_abi_to_log_topic(item): item["name"] for item in events}
    decoded = []
    for log in logs:
        if log["address"] != contract.address or not log["topics"]:
            continue
        name = by_topic.get(bytes(log["topics"][0]))
        if name is not None:
            event = getattr(contract.events, name)().process_log(log)
            decoded.append((name, dict(event["args"])))
    return decoded


def funded_account(w3: Web3, wei: int) -> LocalAccount:
    """A new key holding ``wei`` from the node's first unlocked account: what a dev
    chain's signers, tests and benchmarks start from."""
    account = Account.create()
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction(
            {"from": w3.eth.accounts[0], "to": account.address, "value": Wei(wei)}
        )
    )
    if receipt["status"] != 1:
        raise Fatal(f"funding {account.address} failed")
    return account


def revert_selector(signature: str) -> str:
    """The 4-byte selector a custom error reverts with, as 0x-hex (for tests and logs)."""
    return "0x" + Web3.keccak(text=signature)[:4].hex()
