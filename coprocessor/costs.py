"""What a batch costs, before it runs: an estimate of its programmable bootstraps (PBS).

The host chain bounds each transaction with its HCU table; a coprocessor needs the same
kind of bound on what one FheBatch may ask for, because anyone who may create an
FheBatch could otherwise ask for hours of CPU (500 encrypted divisions on Uint256).
This is a model, not a measurement (``bench/ops.py`` measures): TFHE-rs evaluates an
n-bit integer as ``n / 2`` blocks of two message bits, and its costs grow per block as

* linear: bitwise ops, casts, negation, scalar add/sub/compare: ~1 PBS per block;
* linear with a carry or a comparison tree: add, sub, compare, min/max, select: ~2-3;
* shifts and rotations by an encrypted amount: blocks x log2(bits);
* multiplication: quadratic in blocks; division and remainder: blocks^2 x log2(bits).

Measured on this project's 2-core machine, one unit is ~24 ms (Uint64 add ~1.5 s at 64
units), so the default per-batch limit of 2,000,000 units is ~13 CPU-hours there and
minutes on a 192-core node; a 40-transfer ERC20 batch is ~12,000 units.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .db.rows import ComputationRow
from .types import FheType, Handle, Op

LINEAR = frozenset({Op.BitAnd, Op.BitOr, Op.BitXor, Op.Not, Op.Cast, Op.Rand, Op.RandBounded})
CARRY = frozenset({Op.Add, Op.Sub, Op.Neg, Op.Eq, Op.Ne, Op.Ge, Op.Gt, Op.Le, Op.Lt})
SELECT = frozenset({Op.Min, Op.Max, Op.IfThenElse})
SHIFTS = frozenset({Op.Shl, Op.Shr, Op.Rotl, Op.Rotr})
FREE = frozenset({Op.TrivialEncrypt})  # no bootstrap at all


def blocks(fhe_type: FheType) -> int:
    """Radix blocks of two message bits (a Bool is one block)."""
    return max(1, math.ceil(fhe_type.bits / 2))


def op_cost(op: Op, operand: FheType, *, scalar: bool = False, arity: int = 2) -> int:
    """Estimated PBS of one operation on operands of ``operand`` type."""
    n = blocks(operand)
    log_bits = max(1, math.ceil(math.log2(max(operand.bits, 2))))
    if op in FREE:
        return 0
    if op in LINEAR:
        return n
    if op in CARRY:
        return n if scalar else 2 * n
    if op in SELECT:
        return 3 * n
    if op in SHIFTS:
        return n if scalar else n * log_bits
    if op is Op.Mul:
        return n * log_bits if scalar else 2 * n * n
    if op in (Op.Div, Op.Rem):
        return n * n * log_bits if scalar else 4 * n * n * log_bits
    if op is Op.MulDiv:
        return 2 * n * n + 4 * n * n * log_bits
    if op is Op.Sum:
        return 2 * n * max(1, arity - 1)
    if op is Op.IsIn:
        return 3 * n * max(1, arity - 1)
    return 4 * n  # an op added later without a model: not free


def operand_type(row: ComputationRow) -> FheType:
    """The type the work is done on: the result's for a select (its first operand is
    the Bool condition) and the wider side of a cast; otherwise its first handle
    operand's type byte (every fhEVM handle carries its type), else the result's."""
    result = FheType(row.output_type)
    op = Op(row.fhe_operation)
    if op in (Op.IfThenElse, Op.Cast):
        widest = result
        for handle in row.handle_dependencies:
            try:
                source = Handle(handle).fhe_type
            except ValueError:
                continue
            if op is Op.Cast and source.bits > widest.bits:
                widest = source
        return widest
    for handle in row.handle_dependencies:
        try:
            return Handle(handle).fhe_type
        except ValueError:
            continue
    return FheType(row.output_type)


def row_cost(row: ComputationRow) -> int:
    """The cost of one stored computation."""
    operand = operand_type(row)
    return op_cost(
        Op(row.fhe_operation), operand, scalar=row.is_scalar, arity=len(row.dependencies)
    )


def batch_cost(rows: Iterable[ComputationRow]) -> int:
    return sum(row_cost(row) for row in rows)


def describe_heaviest(rows: Iterable[ComputationRow], limit: int = 3) -> str:
    """ "FheDiv on Uint256 x 500 (524,288,000)"-style summary of what costs most."""
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for row in rows:
        operand = operand_type(row)
        key = (f"Fhe{Op(row.fhe_operation).name}", operand.name)
        count, cost = totals.get(key, (0, 0))
        totals[key] = (count + 1, cost + row_cost(row))
    heaviest = sorted(totals.items(), key=lambda item: -item[1][1])[:limit]
    return ", ".join(f"{op} on {t} x {c} ({cost:,})" for (op, t), (c, cost) in heaviest)
