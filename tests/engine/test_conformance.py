"""The conformance suite: every backend, checked against the plaintext reference after
decryption. The default run samples (few examples, wide types for cheap ops only);
``-m slow`` runs the full sweep."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coprocessor.fhe import reference as ref
from coprocessor.fhe.engine import (
    InvalidOperands,
    UnsupportedOperation,
    get_backend,
    support_matrix,
)
from coprocessor.fhe.envelope import BadCiphertext, Envelope
from coprocessor.types import FheType, Op

BINARY_OPS = [op for op in ref.BINARY]
# Every example costs real FHE work (up to seconds), so no shrinking: a failing example
# is reported as drawn.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
FEW = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
ONE = settings(
    max_examples=1,
    deadline=None,
    derandomize=True,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
U4, U8, U64 = FheType.Uint4, FheType.Uint8, FheType.Uint64


def values(fhe_type: FheType):
    edges = [0, 1, fhe_type.max_value, fhe_type.max_value // 2]
    return st.one_of(st.sampled_from(edges), st.integers(0, fhe_type.max_value))


def unsupported(engine, op: Op, t: FheType) -> str | None:
    return get_backend(engine.name).support(op, t)


def check_binary(engine, op: Op, t: FheType, a: int, b: int, scalar: bool) -> None:
    """Compare with the reference; a pair the backend declares unsupported must raise."""
    lhs = engine.enc(a, t)
    if unsupported(engine, op, t):
        with pytest.raises(UnsupportedOperation):
            engine.run(op, lhs, scalars=(b,)) if scalar else engine.run(op, lhs, engine.enc(b, t))
        return
    result = engine.run(op, lhs, scalars=(b,)) if scalar else engine.run(op, lhs, engine.enc(b, t))
    assert engine.dec(result) == ref.binary(op, a, b, t), (op.name, t.name, a, b, scalar)


@pytest.mark.parametrize("op", BINARY_OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("scalar", [False, True], ids=["encrypted", "scalar"])
@FEW
@given(data=st.data())
def test_binary_ops_on_uint4(engine, op, scalar, data):
    check_binary(engine, op, U4, data.draw(values(U4)), data.draw(values(U4)), scalar)


@pytest.mark.parametrize("op", BINARY_OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("scalar", [False, True], ids=["encrypted", "scalar"])
@ONE
@given(data=st.data())
def test_binary_ops_on_uint8(engine, op, scalar, data):
    check_binary(engine, op, U8, data.draw(values(U8)), data.draw(values(U8)), scalar)


@pytest.mark.parametrize(
    ("op", "t"),
    [
        (Op.Add, FheType.Uint16),
        (Op.Lt, FheType.Uint32),
        (Op.Sub, U64),
        (Op.Eq, U64),
        (Op.BitXor, FheType.Uint128),
        (Op.Eq, FheType.Uint160),
        (Op.BitAnd, FheType.Uint256),
    ],
    ids=lambda x: getattr(x, "name", x),
)
@ONE
@given(data=st.data())
def test_wide_types_sampled(engine, op, t, data):
    check_binary(engine, op, t, data.draw(values(t)), data.draw(values(t)), scalar=False)


@pytest.mark.slow
@pytest.mark.parametrize("op", BINARY_OPS, ids=lambda o: o.name)
@pytest.mark.parametrize(
    "t",
    [FheType.Uint16, FheType.Uint32, U64, FheType.Uint128, FheType.Uint160, FheType.Uint256],
    ids=lambda t: t.name,
)
@pytest.mark.parametrize("scalar", [False, True], ids=["encrypted", "scalar"])
@FEW
@given(data=st.data())
def test_full_sweep(engine, op, t, scalar, data):
    check_binary(engine, op, t, data.draw(values(t)), data.draw(values(t)), scalar)


@pytest.mark.parametrize(
    ("op", "a", "b", "scalar"),
    [
        (Op.Div, 13, 0, False),
        (Op.Div, 13, 0, True),
        (Op.Rem, 13, 0, False),
        (Op.Rem, 13, 0, True),
        (Op.Shl, 3, 9, False),
        (Op.Shl, 3, 9, True),
        (Op.Shr, 12, 6, False),
        (Op.Shr, 12, 70, True),
        (Op.Rotl, 9, 5, False),
        (Op.Rotr, 9, 13, True),
        (Op.Add, 15, 1, False),
        (Op.Sub, 0, 1, True),
        (Op.Mul, 15, 15, False),
        (Op.Add, 3, 18, True),
    ],
)
def test_edge_values(engine, op, a, b, scalar):
    if scalar:
        assert engine.dec(engine.run(op, engine.enc(a, U4), scalars=(b,))) == ref.binary(
            op, a, b, U4
        )
    else:
        assert engine.dec(engine.run(op, engine.enc(a, U4), engine.enc(b, U4))) == ref.binary(
            op, a, b, U4
        )


@pytest.mark.parametrize("op", [Op.Shl, Op.Rotr], ids=lambda o: o.name)
def test_plaintext_shift_amounts_are_wrapped_before_the_modulo(engine, op):
    """fhEVM wraps a plaintext operand to the type first: on Uint160, 2**160 + 3 shifts by
    3, not by (2**160 + 3) % 160 = 99. Power-of-two widths cannot show the difference."""
    t = FheType.Uint160
    a, amount = 2**159 + 2**100 + 5, 2**160 + 3
    if unsupported(engine, op, t):
        with pytest.raises(UnsupportedOperation):
            engine.run(op, engine.enc(a, t), scalars=(amount,))
        return
    assert engine.dec(engine.run(op, engine.enc(a, t), scalars=(amount,))) == ref.binary(
        op, a, amount, t
    )


@pytest.mark.parametrize(("t", "a"), [(U4, 0), (U4, 5), (U8, 200), (U64, 2**64 - 1)])
def test_neg_and_not(engine, t, a):
    ct = engine.enc(a, t)
    assert engine.dec(engine.run(Op.Neg, ct)) == ref.neg(a, t)
    assert engine.dec(engine.run(Op.Not, ct)) == ref.bit_not(a, t)


@pytest.mark.parametrize(("a", "b"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_bool_logic(engine, a, b):
    t = FheType.Bool
    x, y = engine.enc(a, t), engine.enc(b, t)
    for op in (Op.BitAnd, Op.BitOr, Op.BitXor, Op.Eq, Op.Ne):
        assert engine.dec(engine.run(op, x, y)) == ref.binary(op, a, b, t), op.name
    assert engine.dec(engine.run(Op.BitXor, x, scalars=(1,))) == a ^ 1
    assert engine.dec(engine.run(Op.Not, x)) == 1 - a


@pytest.mark.parametrize(
    ("value", "source", "target"),
    [
        (0xAB, U8, U64),
        (2**64 - 3, U64, U8),
        (0xAB, U8, FheType.Bool),
        (0xAA, U8, FheType.Bool),  # lowest bit 0, yet != 0: True
        (0, U64, FheType.Bool),
        (2**63, U64, FheType.Bool),
        (2**200, FheType.Uint256, FheType.Bool),
        (1, FheType.Bool, U8),
        (9, U4, FheType.Uint256),
        (2**255 + 7, FheType.Uint256, U4),
        (2**159 + 1, FheType.Uint160, FheType.Uint128),
    ],
)
def test_cast_truncates_or_zero_extends(engine, value, source, target):
    result = engine.run(Op.Cast, engine.enc(value, source), result_type=target)
    assert engine.dec(result) == ref.cast(value, target)


@pytest.mark.parametrize("t", [FheType.Uint128, FheType.Uint160, FheType.Uint256])
def test_wide_values_round_trip(engine, t):
    for value in (0, t.max_value, 2 ** (t.bits - 1) + 12345):
        assert engine.dec(engine.enc(value, t)) == value


def test_transfer_chain_ge_sub_if_then_else(engine):
    """The confidential ERC20 transfer: new = balance >= amount ? balance - amount : balance."""
    for balance, amount in ((100, 30), (20, 30)):
        b, a = engine.enc(balance, U64), engine.enc(amount, U64)
        ok = engine.run(Op.Ge, b, a)
        new = engine.run(Op.IfThenElse, ok, engine.run(Op.Sub, b, a), b)
        assert engine.dec(new) == (balance - amount if balance >= amount else balance)


def test_chains_across_ops_and_types(engine):
    x, y = engine.enc(7, U8), engine.enc(9, U8)
    assert engine.dec(engine.run(Op.Mul, engine.run(Op.Add, x, y), y)) == (16 * 9) % 256
    wide = engine.run(Op.Cast, x, result_type=U64)
    assert engine.dec(engine.run(Op.Add, wide, scalars=(2**40,))) == 2**40 + 7


def test_trivial_encrypt(engine):
    assert engine.dec(engine.run(Op.TrivialEncrypt, scalars=(300,), result_type=U8)) == 44
    assert engine.dec(engine.run(Op.TrivialEncrypt, scalars=(1,), result_type=FheType.Bool)) == 1


SEED = bytes.fromhex("00112233445566778899aabbccddeeff")  # a host bytes16


def test_rand_is_deterministic_per_seed_and_in_range(engine):
    if unsupported(engine, Op.Rand, U8):
        with pytest.raises(UnsupportedOperation, match="pseudo-random"):
            engine.run(Op.Rand, result_type=U8, seed=SEED)
        return
    first = engine.dec(engine.run(Op.Rand, result_type=U8, seed=SEED))
    again = engine.dec(engine.run(Op.Rand, result_type=U8, seed=SEED))
    assert first == again and 0 <= first <= 255
    draws = {
        engine.dec(engine.run(Op.Rand, result_type=U8, seed=bytes([i]) * 16)) for i in range(6)
    }
    assert len(draws) > 1, "six seeds gave one value"
    bounded = engine.dec(engine.run(Op.RandBounded, scalars=(16,), result_type=U8, seed=SEED))
    assert 0 <= bounded < 16
    wide = {
        engine.dec(engine.run(Op.Rand, result_type=U64, seed=bytes([i]) * 16)) for i in range(4)
    }
    assert any(v >= 2**32 for v in wide), "an unbounded Uint64 draw uses the full width"


def test_a_seed_is_the_hosts_16_bytes(engine):
    if unsupported(engine, Op.Rand, U8):
        return
    with pytest.raises(InvalidOperands, match="16-byte seed"):
        engine.run(Op.Rand, result_type=U8, seed=b"block-17/tx-3")


def test_sum_and_is_in(engine):
    cts = [engine.enc(v, U8) for v in (200, 100, 7)]
    assert engine.dec(engine.run(Op.Sum, *cts)) == ref.sum_values([200, 100, 7], U8)
    assert engine.dec(engine.run(Op.IsIn, cts[2], cts[0], cts[1])) == 0
    assert engine.dec(engine.run(Op.IsIn, cts[2], cts[0], scalars=(7,))) == 1


@pytest.mark.parametrize(("a", "b", "c"), [(200, 3, 7), (255, 255, 1), (17, 9, 0), (9, 0, 5)])
def test_mul_div_keeps_the_double_width_product(engine, a, b, c):
    if unsupported(engine, Op.MulDiv, U8):
        with pytest.raises(UnsupportedOperation):
            engine.run(Op.MulDiv, engine.enc(a, U8), scalars=(b, c))
        return
    result = engine.run(Op.MulDiv, engine.enc(a, U8), scalars=(b, c))
    assert engine.dec(result) == ref.mul_div(a, b, c, U8)


def test_every_unsupported_pair_names_its_reason(engine):
    """Every pair a backend refuses says why (the text `fhectl fhe ops -o json` shows)."""
    backend = get_backend(engine.name)
    for op in Op:
        for t in FheType:
            reason = backend.support(op, t)
            assert reason is None or len(reason) > 10, (op.name, t.name, reason)


@pytest.mark.parametrize(("value", "t"), [(1, FheType.Bool), (173, U8), (2**63 + 5, U64)])
def test_squashed_ciphertexts_decrypt_to_the_same_value(engine, value, t):
    squashed = engine.evaluator.squash(engine.enc(value, t))
    assert Envelope.from_bytes(squashed).kind.name == "SQUASHED"
    assert engine.dec(squashed) == value
    with pytest.raises(BadCiphertext, match="squashed"):
        engine.run(Op.Add, squashed, scalars=(1,))


# --- bad input ---------------------------------------------------------------------------


def test_corrupted_ciphertext_is_rejected(engine):
    ct = bytearray(engine.enc(5, U8))
    ct[40:60] = bytes(20)
    with pytest.raises(BadCiphertext):
        engine.run(Op.Add, bytes(ct), scalars=(1,))
    with pytest.raises(BadCiphertext):
        engine.run(Op.Add, bytes(ct[:-1000]), scalars=(1,))


def test_wrong_tenant_wrong_backend_and_garbage_are_rejected(engine):
    envelope = Envelope.from_bytes(engine.enc(5, U8))
    other_tenant = Envelope(
        envelope.backend, envelope.fhe_type, envelope.kind, b"\x00" * 8, envelope.payload
    ).to_bytes()
    with pytest.raises(BadCiphertext, match="another tenant"):
        engine.run(Op.Add, other_tenant, scalars=(1,))
    other_name = next(name for name in ("concrete", "tfhe-rs") if name != engine.name)
    other_backend = Envelope(
        other_name, envelope.fhe_type, envelope.kind, envelope.key_digest, envelope.payload
    ).to_bytes()
    with pytest.raises(BadCiphertext, match=f"from backend '{other_name}'"):
        engine.run(Op.Add, other_backend, scalars=(1,))
    with pytest.raises(BadCiphertext, match="bad magic"):
        engine.run(Op.Add, b"not a ciphertext", scalars=(1,))


@pytest.mark.parametrize(
    "key", [b"", b"garbage-bytes" * 4, b"CCK1" + bytes(40)], ids=["empty", "garbage", "magic-only"]
)
def test_garbage_keys_are_refused_naming_the_backend(engine, key):
    backend = get_backend(engine.name)
    with pytest.raises(BadCiphertext, match=f"{engine.name} client key"):
        backend.client(key, bytes(32))
    with pytest.raises(BadCiphertext, match=f"{engine.name} server key"):
        backend.evaluator(key)


def test_type_mismatches_are_refused(engine):
    a8, a64 = engine.enc(1, U8), engine.enc(1, U64)
    with pytest.raises(InvalidOperands, match="operands differ"):
        engine.run(Op.Add, a8, a64)
    with pytest.raises(InvalidOperands, match="condition is Uint8"):
        engine.run(Op.IfThenElse, a8, a8, a8)
    with pytest.raises(InvalidOperands, match="explicit result type"):
        engine.run(Op.Cast, a8)
    relabelled = Envelope.from_bytes(a8)
    lying = Envelope(
        relabelled.backend, U64, relabelled.kind, relabelled.key_digest, relabelled.payload
    ).to_bytes()
    with pytest.raises(BadCiphertext):
        engine.run(Op.Add, lying, scalars=(1,))


def test_unsupported_pairs_raise_instead_of_computing(engine):
    with pytest.raises(UnsupportedOperation, match="not defined on Bool"):
        engine.run(Op.Add, engine.enc(1, FheType.Bool), engine.enc(1, FheType.Bool))
    with pytest.raises(UnsupportedOperation):
        engine.enc(1, FheType.Bytes64)
    matrix = support_matrix(get_backend(engine.name))
    assert matrix["FheAdd"]["Uint64"] == "supported"
    assert matrix["FheAdd"]["Bool"] != "supported"
    assert set(matrix) == {op.event_name for op in Op}


def test_values_out_of_range_are_refused(engine):
    with pytest.raises(ValueError, match="does not fit Uint8"):
        engine.enc(256, U8)
    with pytest.raises(InvalidOperands, match="must not be negative"):
        engine.run(Op.Add, engine.enc(1, U8), scalars=(-1,))
