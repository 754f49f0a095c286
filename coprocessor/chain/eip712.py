"""EIP-712 ``CiphertextVerification``: what a coprocessor's signer key signs for an input
list it verified.

The gateway's InputVerification counts a ``verifyProofResponse`` only when its signature
recovers to the signer GatewayConfig registered for the sending coprocessor, and the host
chain's InputVerifier checks the same signatures again (the input proof carries them), so
the typed data here must hash to exactly what both contracts hash: domain {name
"InputVerification", version "1", the gateway chain's id, the gateway InputVerification's
address}, and the handles the coprocessor derived together with the request's user,
contract, contract chain id and the response's ``extraData``. The product's proof-response
sender signs its verdicts with ``sign_ciphertext_verification``; tests sign theirs with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

DOMAIN_NAME = "InputVerification"
DOMAIN_VERSION = "1"
PRIMARY_TYPE = "CiphertextVerification"
# The type string InputVerification hashes (its typehash), member by member as below.
TYPE_STRING = (
    "CiphertextVerification(bytes32[] ctHandles,address userAddress,address contractAddress,"
    "uint256 contractChainId,bytes extraData)"
)
SIGNATURE_LENGTH = 65  # r (32) | s (32) | v (1, 27 or 28): what OpenZeppelin's ECDSA accepts

_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    PRIMARY_TYPE: [
        {"name": "ctHandles", "type": "bytes32[]"},
        {"name": "userAddress", "type": "address"},
        {"name": "contractAddress", "type": "address"},
        {"name": "contractChainId", "type": "uint256"},
        {"name": "extraData", "type": "bytes"},
    ],
}


@dataclass(frozen=True)
class InputVerificationDomain:
    """The gateway InputVerification a signature is for: one signed for another chain or
    another deployment does not count there."""

    chain_id: int
    verifying_contract: str


@dataclass(frozen=True)
class CiphertextVerification:
    """The verdict signed: the handles derived from a request's input list (in list order;
    none for an empty list), with the request's parties and the response's extraData."""

    ct_handles: tuple[bytes, ...]
    user_address: str
    contract_address: str
    contract_chain_id: int
    extra_data: bytes

    def __post_init__(self) -> None:
        for handle in self.ct_handles:
            if len(handle) != 32:
                raise ValueError(f"a handle has 32 bytes, not {len(handle)}: 0x{handle.hex()}")
        if not 0 <= self.contract_chain_id < 2**256:
            raise ValueError(f"chain id {self.contract_chain_id} is not a uint256")


def ciphertext_verification(
    ct_handles: Sequence[bytes],
    user_address: str,
    contract_address: str,
    contract_chain_id: int,
    extra_data: bytes,
) -> CiphertextVerification:
    """A ``CiphertextVerification`` from the request's fields, handles as any sequence."""
    return CiphertextVerification(
        tuple(bytes(h) for h in ct_handles),
        user_address,
        contract_address,
        contract_chain_id,
        bytes(extra_data),
    )


def typed_data(domain: InputVerificationDomain, message: CiphertextVerification) -> dict[str, Any]:
    """The full EIP-712 message (eth_account's / eth_signTypedData_v4's JSON shape)."""
    return {
        "types": _TYPES,
        "primaryType": PRIMARY_TYPE,
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": domain.chain_id,
            "verifyingContract": Web3.to_checksum_address(domain.verifying_contract),
        },
        "message": {
            "ctHandles": list(message.ct_handles),
            "userAddress": Web3.to_checksum_address(message.user_address),
            "contractAddress": Web3.to_checksum_address(message.contract_address),
            "contractChainId": message.contract_chain_id,
            "extraData": message.extra_data,
        },
    }


def signable(domain: InputVerificationDomain, message: CiphertextVerification) -> SignableMessage:
    return encode_typed_data(full_message=typed_data(domain, message))


def digest(domain: InputVerificationDomain, message: CiphertextVerification) -> bytes:
    """keccak256("\\x19\\x01" | domain separator | struct hash): the 32 bytes signed, and
    what InputVerification counts agreeing responses by."""
    encoded = signable(domain, message)
    return keccak(b"\x19" + encoded.version + encoded.header + encoded.body)


def sign_ciphertext_verification(
    signer: LocalAccount | bytes | str,
    domain: InputVerificationDomain,
    message: CiphertextVerification,
) -> bytes:
    """The 65-byte signature r | s | v (v = 27 or 28) of ``signer`` (an account or its
    private key): the ``signature`` argument of ``verifyProofResponse``."""
    key = signer.key if isinstance(signer, LocalAccount) else signer
    signature = bytes(Account.sign_message(signable(domain, message), key).signature)
    assert len(signature) == SIGNATURE_LENGTH
    return signature


def recover_signer(
    domain: InputVerificationDomain, message: CiphertextVerification, signature: bytes
) -> str:
    """The address that signed ``message`` (checksummed), as InputVerification recovers it."""
    return str(Account.recover_message(signable(domain, message), signature=signature))
