"""Plaintext semantics of every fhEVM operation: the single source of truth.

Every backend is tested against these functions after decryption, and benchmarks
check their results with them. Values are Python ints in ``0 .. 2**bits - 1``;
Bool is 0 or 1. Semantics are those of fhEVM / TFHE-rs unsigned integers
(docs/design.md section 5):

* arithmetic wraps modulo ``2**bits``;
* ``x / 0 == 2**bits - 1`` and ``x % 0 == x``;
* shift and rotate amounts are taken modulo ``bits``;
* comparisons return Bool;
* Cast truncates or zero-extends, and Cast to Bool is ``x != 0`` (fhEVM's rule, not
  the lowest bit);
* ``MulDiv(a, b, c) == (a * b) // c`` with the product kept at double width, then
  wrapped to ``bits``; ``c == 0`` gives ``2**bits - 1`` like Div;
* Rand/RandBounded are a deterministic function of their 16-byte seed. The value a
  backend draws is its own generator's (TFHE-rs: the oblivious pseudo-random bounded
  generator, seed read big-endian, full type width when unbounded), so ``rand`` here
  only fixes the range and determinism the conformance suite checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from ..types import FheType, Op

UINT_TYPES = (
    FheType.Uint4,
    FheType.Uint8,
    FheType.Uint16,
    FheType.Uint32,
    FheType.Uint64,
    FheType.Uint128,
    FheType.Uint160,
    FheType.Uint256,
)
BYTES_TYPES = (FheType.Bytes64, FheType.Bytes128, FheType.Bytes256)

# Which (op, operand type) pairs fhEVM defines at all; a backend may support fewer.
_ARITHMETIC = {
    Op.Add,
    Op.Sub,
    Op.Mul,
    Op.Div,
    Op.Rem,
    Op.Shl,
    Op.Shr,
    Op.Rotl,
    Op.Rotr,
    Op.Ge,
    Op.Gt,
    Op.Le,
    Op.Lt,
    Op.Min,
    Op.Max,
    Op.Neg,
    Op.Sum,
    Op.MulDiv,
    Op.RandBounded,
}
_BITWISE = {
    Op.BitAnd,
    Op.BitOr,
    Op.BitXor,
    Op.Not,
    Op.Eq,
    Op.Ne,
    Op.IfThenElse,
    Op.Cast,
    Op.TrivialEncrypt,
    Op.Rand,
    Op.IsIn,
}


def defined(op: Op, fhe_type: FheType) -> str | None:
    """None if fhEVM defines ``op`` on ``fhe_type``, else the reason it does not."""
    if fhe_type in UINT_TYPES:
        return None
    if op in _BITWISE:
        return None
    kind = "Bool" if fhe_type is FheType.Bool else "byte arrays"
    return f"{op.event_name} is not defined on {kind} in fhEVM"


def wrap(value: int, fhe_type: FheType) -> int:
    return value & fhe_type.max_value


def check_value(value: int, fhe_type: FheType) -> int:
    if not isinstance(value, int) or (isinstance(value, bool) and fhe_type is not FheType.Bool):
        raise TypeError(f"{fhe_type.name} value must be an int, got {type(value).__name__}")
    if not 0 <= int(value) <= fhe_type.max_value:
        raise ValueError(f"{value} does not fit {fhe_type.name} (0..{fhe_type.max_value})")
    return int(value)


def _div(a: int, b: int, t: FheType) -> int:
    return t.max_value if b == 0 else a // b


def _rem(a: int, b: int, _t: FheType) -> int:
    return a if b == 0 else a % b


def _shl(a: int, b: int, t: FheType) -> int:
    return wrap(a << (b % t.bits), t)


def _shr(a: int, b: int, t: FheType) -> int:
    return a >> (b % t.bits)


def _rotl(a: int, b: int, t: FheType) -> int:
    shift = b % t.bits
    return wrap((a << shift) | (a >> (t.bits - shift)), t) if shift else a


def _rotr(a: int, b: int, t: FheType) -> int:
    shift = b % t.bits
    return wrap((a >> shift) | (a << (t.bits - shift)), t) if shift else a


BINARY: dict[Op, Callable[[int, int, FheType], int]] = {
    Op.Add: lambda a, b, t: wrap(a + b, t),
    Op.Sub: lambda a, b, t: wrap(a - b, t),
    Op.Mul: lambda a, b, t: wrap(a * b, t),
    Op.Div: _div,
    Op.Rem: _rem,
    Op.BitAnd: lambda a, b, _t: a & b,
    Op.BitOr: lambda a, b, _t: a | b,
    Op.BitXor: lambda a, b, _t: a ^ b,
    Op.Shl: _shl,
    Op.Shr: _shr,
    Op.Rotl: _rotl,
    Op.Rotr: _rotr,
    Op.Min: lambda a, b, _t: min(a, b),
    Op.Max: lambda a, b, _t: max(a, b),
    Op.Eq: lambda a, b, _t: int(a == b),
    Op.Ne: lambda a, b, _t: int(a != b),
    Op.Ge: lambda a, b, _t: int(a >= b),
    Op.Gt: lambda a, b, _t: int(a > b),
    Op.Le: lambda a, b, _t: int(a <= b),
    Op.Lt: lambda a, b, _t: int(a < b),
}


def binary(op: Op, a: int, b: int, fhe_type: FheType) -> int:
    """``op(a, b)`` on ``fhe_type`` operands. A scalar ``b`` is first wrapped to the type,
    as fhEVM does when it encodes the plaintext operand."""
    check_value(a, fhe_type)
    return BINARY[op](a, wrap(b, fhe_type), fhe_type)


def neg(a: int, fhe_type: FheType) -> int:
    return wrap(-check_value(a, fhe_type), fhe_type)


def bit_not(a: int, fhe_type: FheType) -> int:
    return check_value(a, fhe_type) ^ fhe_type.max_value


def cast(a: int, to: FheType) -> int:
    return int(a != 0) if to is FheType.Bool else wrap(a, to)


def trivial_encrypt(value: int, to: FheType) -> int:
    if value < 0:
        raise ValueError("a trivially encrypted value must not be negative")
    return wrap(value, to)


def if_then_else(condition: int, a: int, b: int) -> int:
    if condition not in (0, 1):
        raise ValueError(f"condition must be a Bool (0 or 1), got {condition}")
    return a if condition else b


def sum_values(values: Sequence[int], fhe_type: FheType) -> int:
    return wrap(sum(check_value(v, fhe_type) for v in values), fhe_type)


def is_in(value: int, candidates: Sequence[int], fhe_type: FheType) -> int:
    check_value(value, fhe_type)
    return int(any(wrap(c, fhe_type) == value for c in candidates))


def mul_div(a: int, b: int, c: int, fhe_type: FheType) -> int:
    check_value(a, fhe_type)
    b, c = wrap(b, fhe_type), wrap(c, fhe_type)
    return fhe_type.max_value if c == 0 else wrap((a * b) // c, fhe_type)


def double_width(fhe_type: FheType) -> FheType | None:
    """The type MulDiv keeps its product in (None where fhEVM has no such type)."""
    wider = [t for t in UINT_TYPES if t.bits == 2 * fhe_type.bits]
    return wider[0] if wider and fhe_type in UINT_TYPES else None


def rand(seed: bytes, fhe_type: FheType) -> int:
    """A uniformly distributed value derived only from ``seed`` (and the type)."""
    if not seed:
        raise ValueError("a random value needs a non-empty seed")
    stream = hashlib.shake_256(b"fhe-rand" + bytes([int(fhe_type)]) + seed)
    return wrap(int.from_bytes(stream.digest((fhe_type.bits + 7) // 8), "big"), fhe_type)


def rand_bounded(seed: bytes, upper_bound: int, fhe_type: FheType) -> int:
    """Uniform in ``0 .. upper_bound - 1``; fhEVM requires a power-of-two bound."""
    if upper_bound <= 0 or upper_bound & (upper_bound - 1):
        raise ValueError(f"upper bound {upper_bound} must be a power of two")
    if upper_bound > fhe_type.max_value + 1:
        raise ValueError(f"upper bound {upper_bound} exceeds {fhe_type.name}")
    return rand(seed, fhe_type) % upper_bound
