"""The EIP-712 CiphertextVerification a coprocessor signs, without a chain: the digest is
the one InputVerification.sol computes (recomputed here the contract's way), every field
and the domain are covered, and the signature is 65 bytes r|s|v that recovers to the
signer. (tests/integration/chain/test_input_verification.py has the contract accept it.)"""

from __future__ import annotations

import dataclasses

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from coprocessor.chain.eip712 import (
    SIGNATURE_LENGTH,
    TYPE_STRING,
    CiphertextVerification,
    InputVerificationDomain,
    ciphertext_verification,
    digest,
    recover_signer,
    sign_ciphertext_verification,
    typed_data,
)

SIGNER = Account.from_key(b"\x11" * 32)
DOMAIN = InputVerificationDomain(31337, "0x" + "ab" * 20)
MESSAGE = ciphertext_verification(
    [bytes([1]) * 32, bytes([2]) * 32],
    user_address="0x" + "01" * 20,
    contract_address="0x" + "02" * 20,
    contract_chain_id=12345,
    extra_data=b"\x00",
)


def contract_digest(domain: InputVerificationDomain, message: CiphertextVerification) -> bytes:
    """What InputVerification._hashCiphertextVerification computes, written out."""
    domain_type = (
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    separator = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                keccak(domain_type),
                keccak(b"InputVerification"),
                keccak(b"1"),
                domain.chain_id,
                domain.verifying_contract,
            ],
        )
    )
    struct_hash = keccak(
        encode(
            ["bytes32", "bytes32", "address", "address", "uint256", "bytes32"],
            [
                keccak(TYPE_STRING.encode()),
                keccak(b"".join(message.ct_handles)),
                message.user_address,
                message.contract_address,
                message.contract_chain_id,
                keccak(message.extra_data),
            ],
        )
    )
    return keccak(b"\x19\x01" + separator + struct_hash)


def test_the_digest_is_the_contracts():
    assert digest(DOMAIN, MESSAGE) == contract_digest(DOMAIN, MESSAGE)
    empty = dataclasses.replace(MESSAGE, ct_handles=(), extra_data=b"")
    assert digest(DOMAIN, empty) == contract_digest(DOMAIN, empty)


def test_the_signature_is_65_bytes_and_recovers_to_the_signer():
    for signer in (SIGNER, SIGNER.key, SIGNER.key.hex()):
        signature = sign_ciphertext_verification(signer, DOMAIN, MESSAGE)
        assert len(signature) == SIGNATURE_LENGTH
        assert signature[64] in (27, 28)
        assert recover_signer(DOMAIN, MESSAGE, signature) == SIGNER.address
        assert Account._recover_hash(digest(DOMAIN, MESSAGE), signature=signature) == (
            SIGNER.address
        )


@pytest.mark.parametrize(
    "changed",
    [
        {"ct_handles": (bytes([2]) * 32, bytes([1]) * 32)},  # the order counts
        {"ct_handles": (bytes([1]) * 32,)},
        {"ct_handles": ()},
        {"user_address": "0x" + "03" * 20},
        {"contract_address": "0x" + "03" * 20},
        {"contract_chain_id": 12346},
        {"extra_data": b"\x01"},
        {"extra_data": b""},
    ],
)
def test_a_changed_field_changes_the_digest_and_the_recovered_signer(changed):
    other = dataclasses.replace(MESSAGE, **changed)
    assert digest(DOMAIN, other) != digest(DOMAIN, MESSAGE)
    assert digest(DOMAIN, other) == contract_digest(DOMAIN, other)
    signature = sign_ciphertext_verification(SIGNER, DOMAIN, MESSAGE)
    assert recover_signer(DOMAIN, other, signature) != SIGNER.address


@pytest.mark.parametrize(
    "domain",
    [
        InputVerificationDomain(31338, DOMAIN.verifying_contract),
        InputVerificationDomain(DOMAIN.chain_id, "0x" + "ac" * 20),
    ],
)
def test_the_domain_is_signed_too(domain):
    assert digest(domain, MESSAGE) != digest(DOMAIN, MESSAGE)
    assert digest(domain, MESSAGE) == contract_digest(domain, MESSAGE)


def test_the_typed_data_is_eth_sign_typed_data_v4s_shape():
    data = typed_data(DOMAIN, MESSAGE)
    assert data["primaryType"] == "CiphertextVerification"
    members = ",".join(f"{m['type']} {m['name']}" for m in data["types"]["CiphertextVerification"])
    assert f"CiphertextVerification({members})" == TYPE_STRING
    assert data["domain"] == {
        "name": "InputVerification",
        "version": "1",
        "chainId": 31337,
        "verifyingContract": Web3.to_checksum_address(DOMAIN.verifying_contract),
    }


def test_a_handle_is_32_bytes():
    with pytest.raises(ValueError, match="32 bytes"):
        ciphertext_verification(
            [b"\x01" * 31], MESSAGE.user_address, MESSAGE.contract_address, 1, b""
        )
    with pytest.raises(ValueError, match="uint256"):
        dataclasses.replace(MESSAGE, contract_chain_id=-1)
