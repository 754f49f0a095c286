"""The dev stack's gateway: GatewayConfig, CiphertextCommits, MultichainACL,
InputVerification and KMSGeneration (a stand-in for the KMS's) on anvil.

Production has one gateway chain where every coprocessor is registered (its tx sender,
its signer and the URL of its ct128 bucket) with the host chains it serves; locally
``fhectl dev gateway`` deploys our ABI-compatible contracts (``contracts/gateway/``)
with this one coprocessor (majority 1) and the dev host chains, so the send stage has
somewhere to commit and relay ACL calls, input proof requests somewhere to arrive and
their verdicts somewhere to go, and the KMS's key and CRS activations somewhere to be
recorded (by the deployer, who owns GatewayConfig: the real KMS, an MPC network, cannot
run here). Idempotent: the addresses, the tx sender key and the signer key (two keys, as
in production: the signer's signatures are what the host trusts) live in the state
directory (0600 files, handed to Kubernetes as Secrets, never printed) and are reused
while the chain still has all the contracts (a state without one of them, such as one
written before InputVerification and KMSGeneration, deploys again); a host chain id not
registered yet is added (``addHostChain``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from eth_account import Account
from web3 import Web3
from web3.contract import Contract

from coprocessor.chain.contracts import bound, deploy, funded_account
from coprocessor.errors import ServiceUnavailable, UserError
from coprocessor.settings import Settings

from .keys import key_at, save_key

FUNDING_WEI = 100 * 10**18  # anvil's accounts hold 10,000 ether each
# `fhectl tenant create`'s default chain id: inline batches of such tenants make handles
# of that chain, so the dev gateway registers it besides the chain it runs on.
DEFAULT_TENANT_CHAIN_ID = 12345
NO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class DevGateway:
    config: str
    commits: str
    acl: str
    input_verification: str
    kms_generation: str
    tx_sender: str
    key_file: Path
    bucket_url: str
    majority: int
    host_chain_ids: tuple[int, ...] = field(default=())
    signer: str = ""  # signs the verdicts on input lists (EIP-712); its own key
    signer_key_file: Path | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "config": self.config,
            "commits": self.commits,
            "acl": self.acl,
            "input_verification": self.input_verification,
            "kms_generation": self.kms_generation,
            "tx_sender": self.tx_sender,
            "key_file": str(self.key_file),
            "signer": self.signer,
            "signer_key_file": str(self.signer_key_file) if self.signer_key_file else None,
            "bucket_url": self.bucket_url,
            "majority": self.majority,
            "host_chain_ids": list(self.host_chain_ids),
        }

    def env(self) -> dict[str, str]:
        return {
            "FHE_GATEWAY_CONFIG_ADDRESS": self.config,
            "FHE_GATEWAY_COMMITS_ADDRESS": self.commits,
            "FHE_GATEWAY_ACL_ADDRESS": self.acl,
            "FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS": self.input_verification,
            "FHE_GATEWAY_KMS_GENERATION_ADDRESS": self.kms_generation,
        }


def bucket_url(settings: Settings) -> str:
    """What the coprocessor registers: where a KMS fetches its ct128 objects by digest."""
    return f"{settings.s3_endpoint.rstrip('/')}/{settings.s3_bucket_ct128}"


def host_chain(
    chain_id: int,
    executor: str = NO_ADDRESS,
    acl: str = NO_ADDRESS,
    name: str = "",
    website: str = "",
) -> tuple[int, str, str, str, str]:
    """A GatewayConfig ``HostChain`` (chainId, fhevmExecutor, acl, name, website)."""
    return (chain_id, executor, acl, name or f"dev host chain {chain_id}", website)


class GatewayContracts(NamedTuple):
    config: Contract
    commits: Contract
    acl: Contract
    input_verification: Contract
    kms_generation: Contract

    def settings(self) -> dict[str, str]:
        """The Settings fields (FHE_GATEWAY_*_ADDRESS) that name these contracts."""
        return {
            "gateway_config_address": self.config.address,
            "gateway_commits_address": self.commits.address,
            "gateway_acl_address": self.acl.address,
            "gateway_input_verification_address": self.input_verification.address,
            "gateway_kms_generation_address": self.kms_generation.address,
        }


def deploy_gateway(
    w3: Web3,
    coprocessors: Sequence[tuple[str, str, str]],
    host_chains: Sequence[tuple[int, str, str, str, str]],
    *,
    owner: str | None = None,
) -> GatewayContracts:
    """GatewayConfig (coprocessors as (tx sender, signer, bucket URL)), then
    CiphertextCommits, MultichainACL, InputVerification and KMSGeneration gated by it;
    ``owner`` (default: the node's first account) owns the config, and so activates the
    KMSGeneration stand-in's keys."""
    config = deploy(w3, "GatewayConfig", list(coprocessors), list(host_chains), sender=owner)

    def gated(name: str) -> Contract:
        return deploy(w3, name, config.address, sender=owner)

    return GatewayContracts(
        config,
        gated("CiphertextCommits"),
        gated("MultichainACL"),
        gated("InputVerification"),
        gated("KMSGeneration"),
    )


# gateway.json's keys for the contracts' addresses.
_CONTRACT_KEYS = GatewayContracts._fields


def _load(directory: Path, w3: Web3) -> dict | None:
    record = directory / "gateway.json"
    keys = (directory / "tx-sender.key", directory / "signer.key")
    if not (record.is_file() and all(k.is_file() for k in keys)):
        return None
    data = json.loads(record.read_text())
    for name in _CONTRACT_KEYS:
        if name not in data or w3.eth.get_code(Web3.to_checksum_address(data[name])) == b"":
            return None  # the chain was reset (or an older layout): deploy again
    config = bound(w3, "GatewayConfig", data["config"])
    if not config.functions.isCoprocessorTxSender(data["tx_sender"]).call():
        return None
    registered = config.functions.getCoprocessor(data["tx_sender"]).call()[1]
    if registered != key_at(keys[1]).address:
        return None  # a state from before the signer had its own key
    return data


def ensure_dev_gateway(
    state_dir: Path,
    settings: Settings,
    host_chain_ids: Sequence[int] = (),
) -> DevGateway:
    """Deploy (or find) the dev gateway; register ``host_chain_ids`` (default: the
    chain's own id and DEFAULT_TENANT_CHAIN_ID). The coprocessor's tx sender and signer
    are two dev keys (``gateway/tx-sender.key``, ``gateway/signer.key``)."""
    w3 = Web3(Web3.HTTPProvider(settings.gateway_rpc_url, request_kwargs={"timeout": 10}))
    if not w3.is_connected():
        raise ServiceUnavailable(
            "chain", f"no JSON-RPC answer at {settings.gateway_rpc_url}; run `fhectl dev up`"
        )
    for chain_id in host_chain_ids:
        if not 0 < chain_id < 2**64:  # GatewayConfig's own rule (ChainIdNotUint64)
            raise UserError(f"host chain id {chain_id} must be a positive 64-bit integer")
    wanted = list(dict.fromkeys(host_chain_ids or (w3.eth.chain_id, DEFAULT_TENANT_CHAIN_ID)))
    directory = state_dir / "gateway"
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "tx-sender.key"
    signer_file = directory / "signer.key"
    url = bucket_url(settings)
    data = _load(directory, w3)
    if data is None:
        tx_sender = funded_account(w3, FUNDING_WEI)
        signer = Account.create()
        save_key(key_file, tx_sender, replace=True)
        save_key(signer_file, signer, replace=True)
        contracts = deploy_gateway(
            w3, [(tx_sender.address, signer.address, url)], [host_chain(c) for c in wanted]
        )
        data = {
            **{name: contract.address for name, contract in contracts._asdict().items()},
            "tx_sender": tx_sender.address,
        }
        (directory / "gateway.json").write_text(json.dumps(data))
    config = bound(w3, "GatewayConfig", data["config"])
    for chain_id in wanted:
        if not config.functions.isHostChainRegistered(chain_id).call():
            receipt = w3.eth.wait_for_transaction_receipt(
                config.functions.addHostChain(host_chain(chain_id)).transact(
                    {"from": w3.eth.accounts[0]}
                )
            )
            if receipt["status"] != 1:
                raise ServiceUnavailable("chain", f"addHostChain({chain_id}) reverted")
    registered = tuple(int(h[0]) for h in config.functions.getHostChains().call())
    assert key_at(key_file).address == data["tx_sender"]
    return DevGateway(
        config=data["config"],
        commits=data["commits"],
        acl=data["acl"],
        input_verification=data["input_verification"],
        kms_generation=data["kms_generation"],
        tx_sender=data["tx_sender"],
        key_file=key_file,
        signer=key_at(signer_file).address,
        signer_key_file=signer_file,
        bucket_url=url,
        majority=config.functions.getCoprocessorMajorityThreshold().call(),
        host_chain_ids=registered,
    )
