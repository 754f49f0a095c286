"""Test helpers for Zama's host contracts on the dev stack's anvil: deploy our dapps,
send a call, and sign an input proof as the gateway's coprocessors would."""

from __future__ import annotations

from web3 import Web3

from coprocessor.chain.eip712 import (
    InputVerificationDomain,
    ciphertext_verification,
    sign_ciphertext_verification,
)
from devstack.host_chain import deploy_dapp, signer_key

__all__ = ["deploy_dapp", "send", "signed_input_proof"]


def send(w3: Web3, function, sender: str):
    receipt = w3.eth.wait_for_transaction_receipt(function.transact({"from": sender}))
    assert receipt["status"] == 1, f"{function.fn_name} reverted"
    return receipt


def signed_input_proof(host, handles: list[bytes], user: str, contract: str) -> bytes:
    """What the gateway's coprocessors hand a user for an input: numHandles | numSigners |
    handles | signatures | extraData, signed (EIP-712, InputVerification domain) by our dev
    coprocessor signer. The handles need no ciphertext for the host to accept them."""
    extra = b"\x00"
    signature = sign_ciphertext_verification(
        signer_key(host),
        InputVerificationDomain(host.gateway_chain_id, host.input_verification_address),
        ciphertext_verification(handles, user, contract, host.chain_id, extra),
    )
    return bytes([len(handles), 1]) + b"".join(handles) + signature + extra
