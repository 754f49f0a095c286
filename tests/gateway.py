"""Test helpers for our gateway contracts (contracts/gateway, Zama's ABIs): deploy a
GatewayConfig with given coprocessors and host chains, and the CiphertextCommits and
MultichainACL that read it."""

from __future__ import annotations

from dataclasses import dataclass

from web3 import Web3
from web3.contract import Contract

from coprocessor.chain.contracts import deploy

ZERO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class GatewayContracts:
    config: Contract
    commits: Contract
    acl: Contract


def coprocessor(tx_sender: str, signer: str, s3_bucket_url: str = "") -> tuple[str, str, str]:
    """A ``Coprocessor`` struct as web3 encodes it:
    (txSenderAddress, signerAddress, s3BucketUrl)."""
    return (tx_sender, signer, s3_bucket_url)


def host_chain(
    chain_id: int,
    executor: str = ZERO_ADDRESS,
    acl: str = ZERO_ADDRESS,
    name: str = "",
    website: str = "",
) -> tuple[int, str, str, str, str]:
    """A ``HostChain`` struct: (chainId, fhevmExecutorAddress, aclAddress, name, website)."""
    return (chain_id, executor, acl, name or f"host {chain_id}", website)


def deploy_gateway(
    w3: Web3,
    coprocessors: list[tuple[str, str, str]],
    host_chains: list[tuple[int, str, str, str, str]],
    *,
    owner: str | None = None,
) -> GatewayContracts:
    """A fresh gateway: GatewayConfig owned by ``owner`` (the node's first account by
    default), and the two contracts that check callers and handles against it."""
    config = deploy(w3, "GatewayConfig", coprocessors, host_chains, sender=owner)
    return GatewayContracts(
        config=config,
        commits=deploy(w3, "CiphertextCommits", config.address, sender=owner),
        acl=deploy(w3, "MultichainACL", config.address, sender=owner),
    )
