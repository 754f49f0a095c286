"""TFHE-rs squashed (ct128) objects: compressed where that is smaller, and clients
decrypt both forms (keysets made before the compression key squash to the bare one)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coprocessor.fhe.engine import SquashedFormat
from coprocessor.fhe.envelope import BadCiphertext, Envelope
from coprocessor.types import FheType

COMPRESSED, BARE = SquashedFormat.COMPRESSED_ON_CPU, SquashedFormat.UNCOMPRESSED_ON_CPU
LIST_NAME = b"CompressedSquashedNoiseCiphertextList"  # in TFHE-rs's safe-serialization header


@pytest.mark.parametrize(
    ("fhe_type", "expected"),
    [
        (FheType.Bool, BARE),
        (FheType.Uint4, BARE),
        (FheType.Uint8, COMPRESSED),
        (FheType.Uint64, COMPRESSED),
    ],
)  # Uint256: 99 KB against 4.2 MB (bench)
def test_squash_picks_the_smaller_form_and_both_decrypt(tfhe_engine, fhe_type, expected):
    evaluator = tfhe_engine.evaluator
    value = fhe_type.max_value - 1 if fhe_type is not FheType.Bool else 1
    ciphertext = tfhe_engine.enc(value, fhe_type)
    squashed = evaluator.squash(ciphertext)
    assert evaluator.squashed_format(fhe_type) is expected
    payload = Envelope.from_bytes(squashed).payload
    assert (LIST_NAME in payload[:256]) == (expected is COMPRESSED)
    assert tfhe_engine.dec(squashed) == value

    # The other form, made by the native call directly: the policy's pick is the smaller.
    other = evaluator._call(
        "squash", int(fhe_type), Envelope.from_bytes(ciphertext).payload, expected is BARE
    )
    assert len(payload) < len(other)
    assert (
        tfhe_engine.dec(replace(Envelope.from_bytes(squashed), payload=other).to_bytes()) == value
    )


def test_a_truncated_compressed_list_is_refused(tfhe_engine):
    squashed = tfhe_engine.evaluator.squash(tfhe_engine.enc(7, FheType.Uint64))
    with pytest.raises(BadCiphertext, match="cannot decrypt") as refused:
        tfhe_engine.dec(squashed[:-500])
    # The list's own complaint, not a type-name mismatch from trying the bare form.
    assert "expected type" not in str(refused.value)
