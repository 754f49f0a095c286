"""Each stage's share of a TFHE-rs server key (``Backend.key_parts``): what it can do,
what it cannot, and that what it computes is the whole key's result, labelled with the
keyset's id so the other stages and the client take it."""

from __future__ import annotations

import time

import pytest

from coprocessor.fhe.engine import KEY_PURPOSES, OpRequest, UnsupportedOperation, get_backend
from coprocessor.fhe.envelope import BadCiphertext, Envelope
from coprocessor.types import FheType, Op

from ..keysets import session_keyset

U64 = FheType.Uint64


@pytest.fixture(scope="module")
def parts(tfhe_engine):
    backend = get_backend("tfhe-rs")
    keyset = session_keyset("tfhe-rs")
    split = backend.key_parts(keyset.server_key)
    return (
        keyset,
        {purpose: backend.evaluator(part, key_id=keyset.key_id) for purpose, part in split.items()},
        split,
    )


def test_the_key_splits_into_one_part_per_stage_and_compute_is_a_fraction(parts):
    keyset, _, split = parts
    assert set(split) == set(KEY_PURPOSES)
    sizes = {purpose: len(part) for purpose, part in split.items()}
    print(
        f"whole {len(keyset.server_key) / 1e6:.0f} MB, parts (MB):",
        {p: round(s / 1e6, 1) for p, s in sizes.items()},
    )
    assert sizes["compute"] * 5 < len(keyset.server_key)
    assert sizes["verify"] * 5 < len(keyset.server_key)


def test_the_compute_part_computes_what_the_whole_key_does(parts, tfhe_engine):
    keyset, evaluators, _ = parts
    compute = evaluators["compute"]
    a, b = tfhe_engine.enc(1000, U64), tfhe_engine.enc(300, U64)
    for op in (Op.Sub, Op.Ge):
        request = OpRequest(op, (a, b))
        by_part = compute.evaluate(request)
        assert by_part == tfhe_engine.evaluator.evaluate(request)  # deterministic PBS
        # Labelled with the keyset's id: the client and the other stages accept it.
        assert Envelope.from_bytes(by_part).key_digest == keyset.key_id[:8]
    assert tfhe_engine.dec(compute.evaluate(OpRequest(Op.Sub, (a, b)))) == 700
    rand = compute.evaluate(OpRequest(Op.Rand, (), (), U64, seed=bytes(16)))
    assert rand == tfhe_engine.evaluator.evaluate(OpRequest(Op.Rand, (), (), U64, seed=bytes(16)))


def test_the_parts_cannot_squash_or_compress_only_the_whole_key_can(parts, tfhe_engine):
    _, evaluators, _ = parts
    value = tfhe_engine.enc(42, U64)
    assert tfhe_engine.client.decrypt(tfhe_engine.evaluator.squash(value)) == 42
    for purpose in KEY_PURPOSES:
        with pytest.raises((UnsupportedOperation, BadCiphertext)):
            evaluators[purpose].compress(value)
        with pytest.raises((UnsupportedOperation, BadCiphertext)):
            evaluators[purpose].squash(value)


def test_loading_the_compute_part_is_much_faster_than_the_whole_key(parts):
    """A measurement, printed; the assertion is only the order of magnitude (bench/
    orchestration.py has the figures)."""
    keyset, _, split = parts
    native = __import__("fhe_native")
    started = time.perf_counter()
    native.Evaluator(split["compute"])
    compute_s = time.perf_counter() - started
    started = time.perf_counter()
    native.Evaluator(keyset.server_key)
    whole_s = time.perf_counter() - started
    print(f"compute part {compute_s:.2f} s, whole key {whole_s:.2f} s")
    assert compute_s * 3 < whole_s


def test_a_damaged_key_is_refused_with_a_clear_error():
    with pytest.raises(BadCiphertext, match="not a tfhe-rs server key"):
        get_backend("tfhe-rs").key_parts(b"not a key at all")


def test_concrete_does_not_split():
    assert get_backend("concrete").key_parts(b"anything") == {}
