"""Handles for the ciphertexts of a client's proven input list.

Every coprocessor that verifies the same list must name its values alike, so the
handle is a pure function of the list's bytes and what the proof is bound to:

    blob hash  = keccak256("ZK-w_rct" | list bytes)
    prehandle  = keccak256("ZK-w_hdl" | blob hash | index (1) | contract (20) | chain id (32))
    handle     = prehandle[0:21] | index | chain id (8, BE) | type code | version

(the layout of docs/design.md section 5; fhEVM also hashes its ACL contract's address in,
which our verify_proofs rows do not carry, so these are not byte-equal to Zama's).
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_hash.auto import keccak

from .fhe.engine import InvalidInputProof
from .types import FheType, make_handle

MAX_INPUTS = 255  # the index is one byte of the handle


def blob_hash(proven_list: bytes) -> bytes:
    return keccak(b"ZK-w_rct" + proven_list)


def input_handles(
    proven_list: bytes, contract: bytes, chain_id: int, types: Sequence[FheType]
) -> list[bytes]:
    if len(types) > MAX_INPUTS:
        raise InvalidInputProof(f"{len(types)} values in one input list; at most {MAX_INPUTS}")
    if len(contract) != 20:
        raise InvalidInputProof(f"contract address must be 20 bytes, got {len(contract)}")
    blob = blob_hash(proven_list)
    return [
        make_handle(
            keccak(b"ZK-w_hdl" + blob + bytes([index]) + contract + chain_id.to_bytes(32, "big")),
            index,
            chain_id,
            fhe_type,
        ).raw
        for index, fhe_type in enumerate(types)
    ]
