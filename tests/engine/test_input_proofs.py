"""Client inputs with zero-knowledge proofs: lists made by the real fhEVM client library
(node-tfhe from npm, WASM) are verified against the CRS, the tenant's compact public key
and the metadata they were bound to, expanded and computed on; tampered lists and other
metadata are refused with a clear error."""

from __future__ import annotations

import pytest

from coprocessor.fhe import reference as ref
from coprocessor.fhe.engine import InvalidInputProof, UnsupportedOperation, input_metadata
from coprocessor.fhe.envelope import Envelope
from coprocessor.types import FheType, Op

from ..prover import node_prove

CONTRACT = "0x" + "11" * 20
USER = "0x" + "22" * 20
ACL = "0x" + "33" * 20
CHAIN = 12345
CRS_BITS = 128  # enough for the lists below; production uses 2048


@pytest.fixture(scope="module")
def crs() -> bytes:
    from coprocessor.fhe.tfhe_backend import TfheRsBackend

    return TfheRsBackend().generate_crs(CRS_BITS)


@pytest.fixture(scope="module")
def engine(tfhe_engine):
    return tfhe_engine


@pytest.fixture(scope="module")
def proven(engine, crs, tmp_path_factory) -> bytes:
    """One list from node-tfhe: (Uint64 1000, Bool true, Uint8 7), bound to CONTRACT/USER."""
    return node_prove(
        tmp_path_factory.mktemp("prove"),
        engine.public_params,
        crs,
        input_metadata(CONTRACT, USER, ACL, CHAIN),
        "Uint64:1000",
        "Bool:1",
        "Uint8:7",
    )


def verify(engine, crs: bytes, proven_list: bytes, metadata: bytes) -> list[bytes]:
    return engine.evaluator.verify_inputs(crs, engine.public_params, proven_list, metadata)


def test_backends_without_input_proofs_say_so(crs):
    from .conftest import harness_for

    concrete = harness_for("concrete")
    with pytest.raises(UnsupportedOperation, match="input proofs"):
        verify(concrete, crs, b"list", input_metadata(CONTRACT, USER, ACL, CHAIN))


def test_a_node_tfhe_list_is_verified_expanded_and_computed_on(engine, crs, proven):
    inputs = verify(engine, crs, proven, input_metadata(CONTRACT, USER, ACL, CHAIN))
    types = [Envelope.from_bytes(c).fhe_type for c in inputs]
    assert types == [FheType.Uint64, FheType.Bool, FheType.Uint8]
    assert [engine.dec(c) for c in inputs] == [1000, 1, 7]
    total = engine.run(Op.Add, inputs[0], scalars=(2**64 - 1,))
    assert engine.dec(total) == ref.binary(Op.Add, 1000, 2**64 - 1, FheType.Uint64)
    chosen = engine.run(Op.IfThenElse, inputs[1], inputs[2], engine.enc(9, FheType.Uint8))
    assert engine.dec(chosen) == 7


@pytest.mark.parametrize(
    ("contract", "user", "acl", "chain"),
    [
        ("0x" + "55" * 20, USER, ACL, CHAIN),
        (CONTRACT, "0x" + "44" * 20, ACL, CHAIN),
        (CONTRACT, USER, "0x" + "66" * 20, CHAIN),
        (CONTRACT, USER, ACL, 1),
    ],
    ids=["other-contract", "other-user", "other-acl", "other-chain"],
)
def test_a_proof_bound_to_other_metadata_is_refused(
    engine, crs, proven, contract, user, acl, chain
):
    with pytest.raises(InvalidInputProof, match="proof is invalid"):
        verify(engine, crs, proven, input_metadata(contract, user, acl, chain))


def test_each_input_carries_the_hash_its_handle_is_cut_from(engine, crs, proven):
    """fhEVM attaches the full 32-byte pre-handle as re-randomisation metadata, so every
    coprocessor re-randomises the input alike; without it given, nothing is attached."""
    from coprocessor.inputs import input_handles, prehandles

    metadata = input_metadata(CONTRACT, USER, ACL, CHAIN)
    acl = bytes.fromhex(ACL[2:])
    hashes = prehandles(proven, acl, CHAIN, 255)
    inputs = engine.evaluator.verify_inputs(crs, engine.public_params, proven, metadata, hashes)
    carried = [engine.evaluator.rerand_metadata(c) for c in inputs]
    assert carried == hashes[: len(inputs)]
    types = [Envelope.from_bytes(c).fhe_type for c in inputs]
    assert [h[:21] for h in input_handles(proven, acl, CHAIN, types)] == [h[:21] for h in carried]
    assert [engine.dec(c) for c in inputs] == [1000, 1, 7]  # the values are untouched
    bare = verify(engine, crs, proven, metadata)
    assert [engine.evaluator.rerand_metadata(c) for c in bare] == [b""] * len(bare)
    with pytest.raises(InvalidInputProof, match="re-randomisation metadata for 3 inputs"):
        engine.evaluator.verify_inputs(crs, engine.public_params, proven, metadata, hashes[:2])


def test_tampered_and_truncated_lists_are_refused(engine, crs, proven):
    metadata = input_metadata(CONTRACT, USER, ACL, CHAIN)
    flipped = bytearray(proven)
    flipped[len(flipped) // 2] ^= 0x40
    for bad in (bytes(flipped), proven[:-100], proven[: len(proven) // 3], b"", b"\x00" * 64):
        with pytest.raises(InvalidInputProof):
            verify(engine, crs, bad, metadata)


def test_a_list_proven_under_another_crs_is_refused(engine, crs, proven):
    from coprocessor.fhe.tfhe_backend import TfheRsBackend

    other = TfheRsBackend().generate_crs(CRS_BITS)
    with pytest.raises(InvalidInputProof):
        verify(engine, other, proven, input_metadata(CONTRACT, USER, ACL, CHAIN))


def test_the_native_prover_agrees_with_the_verifier(engine, crs):
    import fhe_native

    metadata = input_metadata(CONTRACT, USER, ACL, CHAIN)
    proven_list = fhe_native.prove_inputs(
        engine.public_params,
        crs,
        metadata,
        [
            (int(FheType.Uint16), (54321).to_bytes(32, "little")),
            (int(FheType.Uint4), (9).to_bytes(32, "little")),
        ],
    )
    inputs = verify(engine, crs, proven_list, metadata)
    assert [engine.dec(c) for c in inputs] == [54321, 9]


@pytest.mark.parametrize(
    ("contract", "user", "chain", "message"),
    [
        ("0x1234", USER, CHAIN, "contract address"),
        (CONTRACT, "22" * 20, CHAIN, "user address"),
        (CONTRACT, "0x" + "zz" * 20, CHAIN, "user address"),
        (CONTRACT, USER, 0, "chain id"),
        (CONTRACT, USER, 2**256, "chain id"),
    ],
)
def test_malformed_metadata_is_refused_before_any_proof_work(contract, user, chain, message):
    with pytest.raises(InvalidInputProof, match=message):
        input_metadata(contract, user, ACL, chain)
    with pytest.raises(InvalidInputProof, match="ACL address"):
        input_metadata(CONTRACT, USER, "0x" + "33" * 19, CHAIN)


def test_the_bound_metadata_is_the_92_bytes_of_the_client_sdk():
    metadata = input_metadata(CONTRACT, USER, ACL, CHAIN)
    assert len(metadata) == 92
    assert metadata == (
        bytes.fromhex("11" * 20 + "22" * 20 + "33" * 20) + CHAIN.to_bytes(32, "big")
    )
