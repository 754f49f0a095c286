"""The dev stack's gateway: CiphertextCommits on the local anvil with one signer.

Production deploys the contract once per gateway chain and registers every
coprocessor's signer; locally ``fhectl dev gateway`` does the same for this one
coprocessor (threshold 1) so the send stage has something to commit to. Idempotent:
the address and the signer key live in the state directory (the key in a 0600 file,
handed to Kubernetes as a Secret, never printed) and are reused while the chain still
has the contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from web3 import Web3

from coprocessor.chain.contracts import bound, deploy, funded_account
from coprocessor.errors import ServiceUnavailable

from .keys import save_key

FUNDING_WEI = 100 * 10**18  # anvil's accounts hold 10,000 ether each


@dataclass(frozen=True)
class DevGateway:
    address: str
    signer: str
    key_file: Path
    threshold: int

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "signer": self.signer,
            "key_file": str(self.key_file),
            "threshold": self.threshold,
        }


def _load(directory: Path, w3: Web3) -> DevGateway | None:
    record = directory / "gateway.json"
    key_file = directory / "signer.key"
    if not (record.is_file() and key_file.is_file()):
        return None
    data = json.loads(record.read_text())
    if w3.eth.get_code(Web3.to_checksum_address(data["address"])) == b"":
        return None  # the chain was reset: deploy again
    contract = bound(w3, "CiphertextCommits", data["address"])
    if not contract.functions.isCoprocessorSigner(data["signer"]).call():
        return None
    return DevGateway(
        data["address"], data["signer"], key_file, contract.functions.threshold().call()
    )


def ensure_dev_gateway(state_dir: Path, rpc_url: str) -> DevGateway:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
    if not w3.is_connected():
        raise ServiceUnavailable("chain", f"no JSON-RPC answer at {rpc_url}; run `fhectl dev up`")
    directory = state_dir / "gateway"
    directory.mkdir(parents=True, exist_ok=True)
    existing = _load(directory, w3)
    if existing is not None:
        return existing
    signer = funded_account(w3, FUNDING_WEI)
    key_file = directory / "signer.key"
    save_key(key_file, signer, replace=True)
    contract = deploy(w3, "CiphertextCommits", [signer.address], 1)
    gateway = DevGateway(contract.address, signer.address, key_file, 1)
    (directory / "gateway.json").write_text(
        json.dumps({"address": gateway.address, "signer": gateway.signer})
    )
    return gateway
