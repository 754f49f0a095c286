"""Outside bytes through the tfhe-rs engine: garbage and damaged ciphertexts, published
objects, input lists and keys are refused with the engine's own errors.

A stored ciphertext, a ct64 object read back from S3, a client's input list and a
tenant's key all reach TFHE-rs's deserialiser. Whatever the bytes, the call returns
or raises BadCiphertext / InvalidInputProof / InvalidOperands (Irrecoverable, one
item's failure): never another exception, never a crash of the process. The damage is
Hypothesis's: random bytes, and flips, cuts and growths of real objects.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coprocessor.errors import Irrecoverable
from coprocessor.fhe.engine import InvalidInputProof, OpRequest, input_metadata
from coprocessor.fhe.envelope import BadCiphertext, Envelope
from coprocessor.fhe.tfhe_backend import TfheRsBackend, TfheRsClient
from coprocessor.types import FheType, Op

FUZZ = settings(
    max_examples=40,
    deadline=None,  # one TFHE-rs op takes tens of milliseconds, a PBS chain more
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def damaged(draw, original: bytes) -> bytes:
    """``original`` with a few bytes changed, cut short, or grown."""
    data = bytearray(original)
    how = draw(st.sampled_from(["flip", "cut", "grow", "splice"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
    elif how == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "grow":
        data += draw(st.binary(min_size=1, max_size=64))
    else:
        at = draw(st.integers(0, len(data) - 1))
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


class _Quiet:
    """The engine harness under a short repr: Hypothesis prints every argument of a
    failing example, and the harness holds a 500 MB server key."""

    def __init__(self, harness) -> None:
        self.harness = harness

    def __getattr__(self, name: str):
        return getattr(self.harness, name)

    def __repr__(self) -> str:
        return "<tfhe-rs engine harness>"


@pytest.fixture(scope="module")
def harness(tfhe_engine) -> _Quiet:
    return _Quiet(tfhe_engine)


@pytest.fixture(scope="module")
def ciphertext(tfhe_engine) -> bytes:
    return tfhe_engine.enc(200, FheType.Uint8)


def _refused_or_fine(call, *errors: type[BaseException]):
    try:
        return call()
    except errors:
        return None
    except Irrecoverable as error:  # any other refusal must still be an item's failure
        raise AssertionError(f"unexpected {type(error).__name__}: {error}") from error


@FUZZ
@given(data=st.data())
def test_a_damaged_stored_ciphertext_is_refused_by_check_and_by_an_operation(
    harness, ciphertext, data
):
    bad = data.draw(damaged(ciphertext))
    evaluator = harness.evaluator
    _refused_or_fine(lambda: evaluator.check(bad), BadCiphertext)
    result = _refused_or_fine(
        lambda: evaluator.evaluate(OpRequest(Op.Add, (bad, ciphertext), (), None, b"")),
        BadCiphertext,
    )
    if result is not None:  # damage the envelope tolerated: still a ciphertext of ours
        assert Envelope.from_bytes(result).fhe_type is FheType.Uint8


@FUZZ
@given(payload=st.binary(max_size=4096), fhe_type=st.sampled_from(list(FheType)[:9]))
def test_random_bytes_in_a_valid_envelope_are_refused(harness, ciphertext, payload, fhe_type):
    """Past the envelope's checks (right backend, right key digest), TFHE-rs itself must
    refuse the payload."""
    envelope = Envelope.from_bytes(ciphertext)
    forged = Envelope(envelope.backend, fhe_type, envelope.kind, envelope.key_digest, payload)
    with pytest.raises(BadCiphertext):
        harness.evaluator.check(forged.to_bytes())


@FUZZ
@given(data=st.data())
def test_a_damaged_ct64_object_is_refused_or_decompresses_to_its_type(harness, data):
    published = harness.evaluator.compress(harness.enc(9, FheType.Uint16))
    bad = data.draw(damaged(published))
    result = _refused_or_fine(
        lambda: harness.evaluator.decompress(bad, FheType.Uint16), BadCiphertext
    )
    if result is not None:
        assert Envelope.from_bytes(result).fhe_type is FheType.Uint16


@FUZZ
@given(garbage=st.binary(max_size=2048))
def test_garbage_input_lists_are_invalid_proofs(harness, garbage):
    crs = _crs()
    metadata = input_metadata("0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, 12345)
    with pytest.raises(InvalidInputProof):
        harness.evaluator.verify_inputs(
            crs, harness.public_params, garbage, metadata, [b"\0" * 32] * 256
        )


_CRS: list[bytes] = []


def _crs() -> bytes:
    if not _CRS:
        _CRS.append(TfheRsBackend().generate_crs(64))
    return _CRS[0]


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_a_damaged_client_key_is_refused(harness, data):
    """A key object read from disk or S3 (the client key: 220 KB; the server key is the
    same deserialiser on 500 MB)."""
    from ..keysets import session_keyset

    keyset = session_keyset("tfhe-rs")
    bad = data.draw(damaged(keyset.client_key))
    try:
        client = TfheRsClient(bad, keyset.key_id)
    except BadCiphertext as error:
        assert "not a tfhe-rs client key" in str(error)
        return
    # Tolerated damage (unused bytes): it still decrypts what the real key encrypted.
    value = _refused_or_fine(lambda: client.decrypt(harness.enc(5, FheType.Uint8)), BadCiphertext)
    assert value is None or isinstance(value, int)


@FUZZ
@given(garbage=st.binary(max_size=4096))
def test_a_garbage_server_key_is_refused_with_bad_ciphertext(garbage):
    with pytest.raises(BadCiphertext, match="not a tfhe-rs server key"):
        TfheRsBackend().evaluator(garbage)
