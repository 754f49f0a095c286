import pytest

from coprocessor.fhe.envelope import BadCiphertext, Envelope, Kind, key_digest
from coprocessor.types import FheType

DIGEST = key_digest(b"server key of acme")


def sample(**overrides) -> Envelope:
    fields = {
        "backend": "concrete",
        "fhe_type": FheType.Uint64,
        "kind": Kind.CIPHERTEXT,
        "key_digest": DIGEST,
        "payload": b"\x00payload\xff",
    }
    fields.update(overrides)
    return Envelope(**fields)


def test_round_trip():
    envelope = sample()
    assert Envelope.from_bytes(envelope.to_bytes()) == envelope


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "bad magic or too short"),
        (b"XXXX" + bytes(20), "bad magic"),
        (b"FHE1" + bytes([9, 5, 1]) + bytes(8), "unknown backend id 9"),
        (b"FHE1" + bytes([1, 12, 1]) + bytes(8), "bad type code 12"),
        (b"FHE1" + bytes([1, 5, 7]) + bytes(8), "kind 7"),
        ("text", "must be bytes"),
    ],
)
def test_garbage_is_refused(data, message):
    with pytest.raises(BadCiphertext, match=message):
        Envelope.from_bytes(data)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"backend": "tfhe-rs", "digest": DIGEST}, "from backend 'concrete'"),
        ({"backend": "concrete", "digest": key_digest(b"other")}, "another tenant's keys"),
        ({"backend": "concrete", "digest": DIGEST, "fhe_type": FheType.Uint8}, "expected Uint8"),
        ({"backend": "concrete", "digest": DIGEST, "kind": Kind.SQUASHED}, "expected squashed"),
    ],
)
def test_mismatches_are_named(expect, message):
    with pytest.raises(BadCiphertext, match=message):
        sample().expect(**expect)


def test_a_match_passes():
    assert sample().expect(backend="concrete", digest=DIGEST, fhe_type=FheType.Uint64)
