"""The plaintext reference: edge values by table, algebraic laws by property."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coprocessor.fhe import reference as ref
from coprocessor.types import FheType, Op

U8, U64, U4 = FheType.Uint8, FheType.Uint64, FheType.Uint4


@pytest.mark.parametrize(
    ("op", "a", "b", "t", "expected"),
    [
        (Op.Add, 255, 1, U8, 0),
        (Op.Sub, 0, 1, U8, 255),
        (Op.Mul, 16, 16, U8, 0),
        (Op.Div, 7, 0, U8, 255),
        (Op.Div, 7, 2, U8, 3),
        (Op.Rem, 7, 0, U8, 7),
        (Op.Rem, 7, 4, U8, 3),
        (Op.Shl, 1, 9, U8, 2),
        (Op.Shl, 0x81, 1, U8, 0x02),
        (Op.Shr, 0x80, 15, U8, 1),
        (Op.Rotl, 0x81, 1, U8, 0x03),
        (Op.Rotr, 0x81, 1, U8, 0xC0),
        (Op.Rotl, 0x81, 8, U8, 0x81),
        (Op.Rotr, 0b0001, 5, U4, 0b1000),
        (Op.Eq, 3, 3, U8, 1),
        (Op.Ne, 3, 3, U8, 0),
        (Op.Ge, 3, 3, U8, 1),
        (Op.Gt, 3, 3, U8, 0),
        (Op.Le, 2, 3, U8, 1),
        (Op.Lt, 3, 2, U8, 0),
        (Op.Min, 3, 2, U8, 2),
        (Op.Max, 3, 2, U8, 3),
        (Op.Add, 2**64 - 1, 2**64 - 1, U64, 2**64 - 2),
        (Op.Add, 1, 257, U8, 2),
    ],
)
def test_binary_edges(op, a, b, t, expected):
    assert ref.binary(op, a, b, t) == expected


def test_unary_cast_and_select():
    assert ref.neg(1, U8) == 255 and ref.neg(0, U8) == 0
    assert ref.bit_not(0x0F, U8) == 0xF0 and ref.bit_not(1, FheType.Bool) == 0
    assert ref.cast(0x1234, U8) == 0x34 and ref.cast(0x34, FheType.Uint16) == 0x34
    # fhEVM: Cast to Bool is x != 0, not the lowest bit.
    assert ref.cast(2, FheType.Bool) == 1 and ref.cast(0, FheType.Bool) == 0
    assert ref.cast(2**200, FheType.Bool) == 1
    assert ref.trivial_encrypt(300, U8) == 44
    assert ref.if_then_else(1, 5, 6) == 5 and ref.if_then_else(0, 5, 6) == 6
    assert ref.sum_values([200, 100], U8) == 44
    assert ref.is_in(3, [1, 259], U8) == 1 and ref.is_in(3, [1, 2], U8) == 0
    assert ref.mul_div(200, 200, 100, U8) == 144  # 40000 // 100 = 400 -> wraps to 144
    assert ref.mul_div(200, 200, 0, U8) == 255


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ref.binary(Op.Add, 256, 1, U8), "does not fit Uint8"),
        (lambda: ref.binary(Op.Add, -1, 1, U8), "does not fit"),
        (lambda: ref.if_then_else(2, 1, 1), "condition must be a Bool"),
        (lambda: ref.rand(b"", U8), "non-empty seed"),
        (lambda: ref.rand_bounded(b"s", 3, U8), "power of two"),
        (lambda: ref.rand_bounded(b"s", 512, U8), "exceeds Uint8"),
        (lambda: ref.trivial_encrypt(-1, U8), "negative"),
    ],
)
def test_bad_operands_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_defined_pairs_follow_fhevm():
    assert ref.defined(Op.Add, U64) is None
    assert ref.defined(Op.BitXor, FheType.Bool) is None
    assert "not defined on Bool" in ref.defined(Op.Add, FheType.Bool)
    assert "byte arrays" in ref.defined(Op.Mul, FheType.Bytes64)


types = st.sampled_from(ref.UINT_TYPES)


@st.composite
def typed_pair(draw):
    t = draw(types)
    return t, draw(st.integers(0, t.max_value)), draw(st.integers(0, t.max_value))


@given(typed_pair())
def test_add_sub_are_inverse(pair):
    t, a, b = pair
    assert ref.binary(Op.Sub, ref.binary(Op.Add, a, b, t), b, t) == a


@given(typed_pair())
def test_div_rem_reconstruct(pair):
    t, a, b = pair
    if b:
        q, r = ref.binary(Op.Div, a, b, t), ref.binary(Op.Rem, a, b, t)
        assert q * b + r == a and r < b


@given(typed_pair(), st.integers(0, 1000))
def test_rotations_are_inverse_and_shifts_take_amount_mod_bits(pair, amount):
    t, a, _ = pair
    assert ref.binary(Op.Rotr, ref.binary(Op.Rotl, a, amount, t), amount, t) == a
    assert ref.binary(Op.Shl, a, amount, t) == ref.binary(Op.Shl, a, amount % t.bits, t)
    assert ref.binary(Op.Shr, a, amount, t) == a >> (amount % t.bits)


@given(typed_pair())
def test_comparisons_are_consistent(pair):
    t, a, b = pair
    lt, ge = ref.binary(Op.Lt, a, b, t), ref.binary(Op.Ge, a, b, t)
    assert lt + ge == 1
    assert ref.binary(Op.Min, a, b, t) + ref.binary(Op.Max, a, b, t) == a + b
    assert ref.binary(Op.Eq, a, b, t) == 1 - ref.binary(Op.Ne, a, b, t)


@given(typed_pair())
def test_neg_is_additive_inverse_and_not_is_involution(pair):
    t, a, _ = pair
    assert ref.binary(Op.Add, a, ref.neg(a, t), t) == 0
    assert ref.bit_not(ref.bit_not(a, t), t) == a


@given(st.binary(min_size=1, max_size=32), types)
def test_rand_is_deterministic_and_in_range(seed, t):
    value = ref.rand(seed, t)
    assert value == ref.rand(seed, t) and 0 <= value <= t.max_value
    bound = 1 << (t.bits // 2)
    assert 0 <= ref.rand_bounded(seed, bound, t) < bound
