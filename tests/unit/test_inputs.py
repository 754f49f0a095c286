"""Handles of a proven input list: deterministic, one per value, refusing what cannot
be named."""

from __future__ import annotations

import pytest

from coprocessor.fhe.engine import InvalidInputProof
from coprocessor.inputs import MAX_INPUTS, input_handles
from coprocessor.types import FheType, Handle

ACL = bytes.fromhex("11" * 20)


def test_handles_are_a_function_of_the_list_the_acl_and_the_chain():
    types = [FheType.Uint8, FheType.Bool]
    first = input_handles(b"list", ACL, 5, types)
    assert first == input_handles(b"list", ACL, 5, types)
    assert len(set(first)) == 2
    for other in (
        input_handles(b"list2", ACL, 5, types),
        input_handles(b"list", bytes(20), 5, types),
        input_handles(b"list", ACL, 6, types),
    ):
        assert not set(other) & set(first)
    parsed = [Handle(h) for h in first]
    assert [(h.index, h.chain_id, h.fhe_type, h.version) for h in parsed] == [
        (0, 5, FheType.Uint8, 0),
        (1, 5, FheType.Bool, 0),
    ]


def test_too_many_values_or_a_bad_acl_are_refused():
    with pytest.raises(InvalidInputProof, match=f"at most {MAX_INPUTS}"):
        input_handles(b"list", ACL, 5, [FheType.Bool] * (MAX_INPUTS + 1))
    with pytest.raises(InvalidInputProof, match="20 bytes"):
        input_handles(b"list", b"short", 5, [FheType.Bool])


def test_a_known_answer_the_layout_spells_out():
    """Rebuilt byte by byte from the layout in coprocessor/inputs.py, so a change of
    the derivation (a field dropped from the hash, another order) cannot pass unseen."""
    from eth_hash.auto import keccak

    blob = keccak(b"ZK-w_rct" + b"list")
    prehandle = keccak(b"ZK-w_hdl" + blob + bytes([1]) + ACL + (5).to_bytes(32, "big"))
    expected = prehandle[:21] + bytes([1]) + (5).to_bytes(8, "big") + bytes([2, 0])
    assert input_handles(b"list", ACL, 5, [FheType.Bool, FheType.Uint8])[1] == expected
