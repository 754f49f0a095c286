"""Handles for the ciphertexts of a client's proven input list.

Every coprocessor that verifies the same list must name its values alike, so the
handle is a pure function of the list's bytes and what the proof is bound to:

    blob hash  = keccak256("ZK-w_rct" | list bytes)
    prehandle  = keccak256("ZK-w_hdl" | blob hash | index (1) | ACL (20) | chain id (32))
    handle     = prehandle[0:21] | index | chain id (8, BE) | type code | version 0

exactly fhEVM's rule (FHEVM_WIRE.md, Inputs): the ACL is the host chain's ACL contract,
so the handles the client SDK computes, the host's InputVerifier accepts and every
coprocessor stores are the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_hash.auto import keccak

from .fhe.engine import InvalidInputProof
from .types import FheType, make_handle

MAX_INPUTS = 255  # the index is one byte of the handle


def blob_hash(proven_list: bytes) -> bytes:
    return keccak(b"ZK-w_rct" + proven_list)


def prehandles(proven_list: bytes, acl_address: bytes, chain_id: int, count: int) -> list[bytes]:
    """The full 32-byte hashes the first ``count`` handles are cut from: what fhEVM attaches
    to each input ciphertext as its re-randomisation metadata."""
    if len(acl_address) != 20:
        raise InvalidInputProof(f"ACL address must be 20 bytes, got {len(acl_address)}")
    blob = blob_hash(proven_list)
    chain_bytes = chain_id.to_bytes(32, "big")
    return [
        keccak(b"ZK-w_hdl" + blob + bytes([index]) + acl_address + chain_bytes)
        for index in range(count)
    ]


def input_handles(
    proven_list: bytes, acl_address: bytes, chain_id: int, types: Sequence[FheType]
) -> list[bytes]:
    if len(types) > MAX_INPUTS:
        raise InvalidInputProof(f"{len(types)} values in one input list; at most {MAX_INPUTS}")
    hashes = prehandles(proven_list, acl_address, chain_id, len(types))
    return [
        make_handle(hashes[index], index, chain_id, fhe_type).raw
        for index, fhe_type in enumerate(types)
    ]
