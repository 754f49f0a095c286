"""Typing rules of the engine interface (pure; shared by every backend)."""

import pytest

from coprocessor.errors import UserError
from coprocessor.fhe.engine import (
    InvalidOperands,
    Keyset,
    get_backend,
    operand_type,
    result_type_of,
)
from coprocessor.types import FheType, Op

B, U8, U64 = FheType.Bool, FheType.Uint8, FheType.Uint64


@pytest.mark.parametrize(
    ("op", "types", "explicit", "working", "result"),
    [
        (Op.Add, [U8, U8], None, U8, U8),
        (Op.Add, [U8], None, U8, U8),
        (Op.Ge, [U64, U64], None, U64, B),
        (Op.IfThenElse, [B, U64, U64], None, U64, U64),
        (Op.Cast, [U8], U64, U8, U64),
        (Op.TrivialEncrypt, [], U8, U8, U8),
        (Op.Rand, [], U64, U64, U64),
        (Op.IsIn, [U8, U8, U8], None, U8, B),
        (Op.Sum, [U8, U8, U8], None, U8, U8),
    ],
)
def test_operand_and_result_types(op, types, explicit, working, result):
    assert operand_type(op, types, explicit) is working
    assert result_type_of(op, working, explicit) is result


@pytest.mark.parametrize(
    ("op", "types", "explicit", "message"),
    [
        (Op.Add, [U8, U64], None, "operands differ: Uint8 and Uint64"),
        (Op.IfThenElse, [U8, U8, U8], None, "condition is Uint8"),
        (Op.IfThenElse, [B, U8, U64], None, "branches differ"),
        (Op.IfThenElse, [B, U8], None, "Bool condition and two values"),
        (Op.Cast, [U8], None, "explicit result type"),
        (Op.TrivialEncrypt, [], None, "explicit result type"),
        (Op.Add, [], None, "needs an encrypted operand"),
        (Op.Neg, [U8, U8], None, "takes 1 operand"),
    ],
)
def test_bad_operand_types_are_named(op, types, explicit, message):
    with pytest.raises(InvalidOperands, match=message):
        operand_type(op, types, explicit)


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown FHE backend 'paillier'"):
        get_backend("paillier")


def test_keyset_id_is_the_server_key_digest():
    assert Keyset("tfhe-rs", b"c", b"s").key_id == Keyset("tfhe-rs", b"x", b"s").key_id
    assert Keyset("tfhe-rs", b"c", b"s").key_id != Keyset("tfhe-rs", b"c", b"t").key_id
