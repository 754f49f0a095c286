"""Test helpers for our gateway contracts (contracts/gateway, Zama's ABIs): the dev
stack's deployment helpers, and a ``Coprocessor`` struct builder."""

from __future__ import annotations

from devstack.gateway import NO_ADDRESS as ZERO_ADDRESS
from devstack.gateway import GatewayContracts, deploy_gateway, host_chain

__all__ = ["ZERO_ADDRESS", "GatewayContracts", "coprocessor", "deploy_gateway", "host_chain"]


def coprocessor(tx_sender: str, signer: str, s3_bucket_url: str = "") -> tuple[str, str, str]:
    """A ``Coprocessor`` struct as web3 encodes it:
    (txSenderAddress, signerAddress, s3BucketUrl)."""
    return (tx_sender, signer, s3_bucket_url)
