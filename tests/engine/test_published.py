"""Published objects: what S3 holds and a KMS reads back, raw backend bytes without our
envelope. For tfhe-rs, as in Zama's protocol: ct64 a one-element CompressedCiphertextList,
ct128 the squashed form. They decrypt to the plaintext, are the same bytes however often
they are made (several coprocessors agree on their digest), and damaged ones are refused."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from coprocessor.fhe.engine import UnsupportedOperation
from coprocessor.fhe.envelope import BadCiphertext, Envelope
from coprocessor.types import FheType, Op

B, U4, U8, U64, U160, U256 = (
    FheType.Bool,
    FheType.Uint4,
    FheType.Uint8,
    FheType.Uint64,
    FheType.Uint160,
    FheType.Uint256,
)
LIST_NAME = b"CompressedCiphertextList"  # in TFHE-rs's safe-serialization header
SEED = bytes(range(16))


def published(engine, ciphertext: bytes) -> tuple[bytes, bytes]:
    """(ct64, ct128) as the SNS stage uploads them."""
    return (
        engine.evaluator.compress(ciphertext),
        Envelope.from_bytes(engine.evaluator.squash(ciphertext)).payload,
    )


def read(engine, ct64: bytes, ct128: bytes, fhe_type: FheType) -> tuple[int, int]:
    client = engine.client
    return (
        client.decrypt_published(ct64, fhe_type, squashed=False),
        client.decrypt_published(ct128, fhe_type, squashed=True),
    )


FRESH = [(B, 1), (B, 0), (U8, 201), (U64, 2**64 - 2), (U256, 2**256 - 3)]
_FRESH: dict[tuple[str, FheType, int], tuple[bytes, bytes, bytes]] = {}


def fresh(engine, fhe_type: FheType, value: int) -> tuple[bytes, bytes, bytes]:
    """(ciphertext, ct64, ct128) of a fresh encryption, made once per session: squashing
    a Uint256 takes half a minute on two cores."""
    key = (engine.name, fhe_type, value)
    if key not in _FRESH:
        ciphertext = engine.enc(value, fhe_type)
        _FRESH[key] = (ciphertext, *published(engine, ciphertext))
    return _FRESH[key]


@pytest.mark.parametrize(("fhe_type", "value"), FRESH)
def test_fresh_ciphertexts_publish_and_decrypt(engine, fhe_type, value):
    _, ct64, ct128 = fresh(engine, fhe_type, value)
    assert read(engine, ct64, ct128, fhe_type) == (value, value)


def test_computed_ciphertexts_publish_and_decrypt(engine):
    a, b = engine.enc(200, U8), engine.enc(100, U8)
    results = {
        "add": (engine.run(Op.Add, a, b), U8, (200 + 100) % 256),
        "lt": (engine.run(Op.Lt, b, a), B, 1),
        "scalar mul": (engine.run(Op.Mul, a, scalars=(3,)), U8, 600 % 256),
        "cast": (engine.run(Op.Cast, a, result_type=U64), U64, 200),
        "trivial": (engine.run(Op.TrivialEncrypt, scalars=(7,), result_type=U8), U8, 7),
    }
    for name, (ciphertext, fhe_type, expected) in results.items():
        ct64, ct128 = published(engine, ciphertext)
        assert read(engine, ct64, ct128, fhe_type) == (expected, expected), name


def test_publishing_is_deterministic(engine):
    ciphertext = engine.run(Op.Add, engine.enc(41, U64), scalars=(1,))
    first = engine.evaluator.compress(ciphertext)
    assert engine.evaluator.compress(ciphertext) == first
    with ThreadPoolExecutor(1) as pool:  # another thread: TFHE-rs keeps per-thread state
        assert pool.submit(engine.evaluator.compress, ciphertext).result() == first
    small = engine.enc(41, U8)  # ct128 too (a Uint64 takes seconds to squash)
    assert engine.evaluator.squash(small) == engine.evaluator.squash(small)


def test_damaged_objects_are_refused(engine):
    ciphertext, ct64, ct128 = fresh(engine, U64, 2**64 - 2)
    client = engine.client
    wrong = [ct64[:-100], ct64[: len(ct64) // 2], b"", b"\x00" * 64]
    if engine.name == "tfhe-rs":  # concrete publishes one format for both
        wrong.append(ct128)
    for bad in wrong:
        with pytest.raises(BadCiphertext):
            client.decrypt_published(bad, U64, squashed=False)
    for bad in (ct128[:-500], b"garbage" * 10):
        with pytest.raises(BadCiphertext):
            client.decrypt_published(bad, U64, squashed=True)
    with pytest.raises(BadCiphertext):  # an envelope is not a published object
        client.decrypt_published(ciphertext, U64, squashed=False)
    with pytest.raises(BadCiphertext):  # only computable ciphertexts are compressed
        engine.evaluator.compress(engine.evaluator.squash(ciphertext))


def test_an_object_of_another_type_is_refused(engine):
    ct64 = engine.evaluator.compress(engine.enc(5, U8))
    with pytest.raises(BadCiphertext, match=r"Uint8|type code 2"):
        engine.client.decrypt_published(ct64, U64, squashed=False)


def test_object_sizes(engine):
    """tfhe-rs: ct64 is a CompressedCiphertextList, far smaller than the ciphertext (one
    GLWE packs up to 256 blocks, so a Uint256 of 128 blocks is one GLWE like a Bool).
    concrete: no compression, ct64 is the ciphertext's payload as it is."""
    sizes = {}
    for fhe_type, value in FRESH:
        ciphertext, ct64, ct128 = fresh(engine, fhe_type, value)
        bare = Envelope.from_bytes(ciphertext).payload
        sizes[fhe_type.name] = (len(bare), len(ct64), len(ct128))
        if engine.name == "tfhe-rs":
            assert LIST_NAME in ct64[:256]
            assert len(ct64) < min(len(bare), 4096)
        else:
            assert ct64 == bare
    print(f"\n{engine.name} bytes (bare ciphertext, ct64, ct128): {sizes}")


# --- tfhe-rs: the reference's formats ------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda e: e.run(Op.Neg, e.enc(3, U8)), id="neg"),
        pytest.param(lambda e: e.run(Op.Not, e.enc(3, U8)), id="not"),
        pytest.param(lambda e: e.run(Op.Shl, e.enc(3, U8), scalars=(9,)), id="shl"),
        pytest.param(lambda e: e.run(Op.Div, e.enc(3, U8), scalars=(0,)), id="div-by-0"),
        pytest.param(lambda e: e.run(Op.Rem, e.enc(3, U8), scalars=(0,)), id="rem-by-0"),
        pytest.param(
            lambda e: e.run(Op.IfThenElse, e.enc(1, B), e.enc(9, U4), e.enc(2, U4)), id="select"
        ),
        pytest.param(lambda e: e.run(Op.Rand, result_type=U160, seed=SEED), id="rand"),
        pytest.param(
            lambda e: e.run(Op.RandBounded, scalars=(16,), result_type=U64, seed=SEED),
            id="rand-bounded",
        ),
        pytest.param(lambda e: e.run(Op.Cast, e.enc(300, FheType.Uint16), result_type=B), id="b"),
    ],
)
def test_results_of_tfhe_rs_ops_all_compress(tfhe_engine, make):
    """TFHE-rs packs only blocks with empty carries and nominal noise: every result of
    ours is such (trivial blocks and oblivious randoms included)."""
    result = make(tfhe_engine)
    fhe_type = Envelope.from_bytes(result).fhe_type
    ct64 = tfhe_engine.evaluator.compress(result)
    expected = tfhe_engine.dec(result)
    assert tfhe_engine.client.decrypt_published(ct64, fhe_type, squashed=False) == expected


def test_ct64_decompresses_into_a_computable_ciphertext(tfhe_engine):
    evaluator = tfhe_engine.evaluator
    ct64 = evaluator.compress(tfhe_engine.enc(2**40, U64))
    restored = evaluator.decompress(ct64, U64)
    assert Envelope.from_bytes(restored).key_digest == evaluator.key_digest
    assert tfhe_engine.dec(tfhe_engine.run(Op.Add, restored, scalars=(5,))) == 2**40 + 5
    assert evaluator.compress(restored) != ct64  # re-encrypted by the decompression PBS
    with pytest.raises(BadCiphertext, match="Uint64"):
        evaluator.decompress(ct64, U8)
    with pytest.raises(BadCiphertext):
        evaluator.decompress(ct64[:-64], U64)


def test_flipped_bytes_in_a_list_never_crash(tfhe_engine):
    """TFHE-rs unwraps inside decompression; a list whose metadata was altered must give
    BadCiphertext (or, for a flip in the ciphertext body, some value), never a panic."""
    ct64 = tfhe_engine.evaluator.compress(tfhe_engine.enc(9, U8))
    header = ct64.index(LIST_NAME) + len(LIST_NAME)
    positions = sorted(
        {*range(header, min(header + 96, len(ct64))), *range(len(ct64) - 48, len(ct64))}
    )
    refused = 0
    for position in positions:
        damaged = bytearray(ct64)
        damaged[position] ^= 0xFF
        for read_back in (
            lambda d: tfhe_engine.client.decrypt_published(d, U8, squashed=False),
            lambda d: tfhe_engine.evaluator.decompress(d, U8),
        ):
            try:
                read_back(bytes(damaged))
            except BadCiphertext:
                refused += 1
    assert refused > 0


def test_a_keyset_without_compression_keys_names_the_fix(tfhe_engine, monkeypatch):
    evaluator = tfhe_engine.evaluator
    monkeypatch.setattr(evaluator, "_can_compress", False)
    with pytest.raises(UnsupportedOperation, match="regenerate the tenant keyset"):
        evaluator.compress(tfhe_engine.enc(1, B))


def test_verified_client_inputs_compress(tfhe_engine):
    """Most stored ciphertexts come from client inputs: expanded from a proven list."""
    import fhe_native

    from coprocessor.fhe.engine import input_metadata
    from coprocessor.fhe.tfhe_backend import TfheRsBackend

    if not fhe_native.HAS_TEST_PROVER:
        pytest.skip("fhe_native built without the test prover")
    crs = TfheRsBackend().generate_crs(64)
    metadata = input_metadata("0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, 12345)
    values = [(U64, 2**63 + 1), (B, 1), (U8, 42)]
    proven = fhe_native.prove_inputs(
        tfhe_engine.public_params,
        crs,
        metadata,
        [(int(t), v.to_bytes(32, "little")) for t, v in values],
    )
    inputs = tfhe_engine.evaluator.verify_inputs(crs, tfhe_engine.public_params, proven, metadata)
    for ciphertext, (fhe_type, value) in zip(inputs, values, strict=True):
        ct64 = tfhe_engine.evaluator.compress(ciphertext)
        assert tfhe_engine.client.decrypt_published(ct64, fhe_type, squashed=False) == value
