"""Radix circuits for the concrete-python backend: fhEVM integers as 2-bit chunks.

Why this shape (docs/design.md section 7, and the probes recorded in the engine issue):
concrete-python compiles whole functions, and a lookup's cost grows steeply with its
input precision, so wide integers are split into small chunks and every operation is
one compiled function over arrays of chunks. An n-bit value is ``n / 2`` chunks of
2 bits, little-endian (Bool is one chunk holding 0 or 1). Each chunk is a 4-bit
concrete integer: two chunks pack into one lookup index (``hi * 4 + lo <= 15``) and a
sum of up to five chunks never overflows. Every circuit takes and returns arrays of such
chunks, so the output of any circuit is a valid input to any other, under one keyset
(the backend compiles every circuit under the tenant keyset's restriction).

Noise discipline, checked by construction: a lookup's input is a linear mix of lookup
outputs or fresh inputs whose squared weights sum to at most ``MAX_NORM2`` (a packed
``c * 4 + (x + y)`` is 16 + 2 = 18; a sum of five chunks is 5). The base circuit that
fixes a tenant's parameters contains exactly those worst cases, so every later circuit
fits the same keys. Circuit outputs are always plain lookup outputs ("clean").

Builders here are pure functions over traced values; ``concrete_backend`` compiles and
caches them. ``estimated_pbs`` is the cost model the support matrix uses without
compiling anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..types import FheType, Op
from . import reference

WIDTH = 4  # bits of every chunk ciphertext at a circuit boundary
CHUNK_BITS = 2
CHUNK_MAX = 3
MAX_NORM2 = 18
CIRCUITS_VERSION = 3  # bump when a builder changes: it is part of the disk cache key


def chunk_count(fhe_type: FheType) -> int:
    return 1 if fhe_type is FheType.Bool else fhe_type.bits // CHUNK_BITS


def to_chunks(value: int, count: int) -> np.ndarray:
    return np.array([(value >> (CHUNK_BITS * i)) & CHUNK_MAX for i in range(count)], dtype=np.int64)


def from_chunks(chunks: Sequence[int]) -> int:
    return sum(int(c) << (CHUNK_BITS * i) for i, c in enumerate(chunks))


# --- tables (index 0..15: one packed pair or a small sum) ---------------------------------


def _table(function: Callable[[int], int]):
    from concrete import fhe

    return fhe.LookupTable([function(i) for i in range(1 << WIDTH)])


def _packed(function: Callable[[int, int], int]):
    return _table(lambda i: function(i >> 2, i & 3))


class Tables:
    """Built lazily: ``concrete.fhe`` imports torch, and this module is imported by the
    support matrix, which must stay cheap."""

    def __init__(self) -> None:
        self.identity = _table(lambda i: i & CHUNK_MAX)
        # 0 for every chunk value; not constant on unused indexes because concrete treats
        # a constant table as infinitely noisy and refuses to compile it (measured).
        self.zero = _table(lambda i: 0 if i <= CHUNK_MAX else i & CHUNK_MAX)
        self.mod4 = _table(lambda i: i % 4)
        self.carry = _table(lambda i: i // 4)
        self.bit0 = _table(lambda i: i & 1)
        self.nonzero = _table(lambda i: int((i & CHUNK_MAX) != 0))
        self.either = _packed(lambda a, b: int(a != 0 or b != 0))
        self.bit1 = _table(lambda i: (i >> 1) & 1)
        self.not2 = _table(lambda i: (3 - i) & 3)
        self.not1 = _table(lambda i: (1 - i) & 1)
        self.bitwise = {
            Op.BitAnd: _packed(lambda a, b: a & b),
            Op.BitOr: _packed(lambda a, b: a | b),
            Op.BitXor: _packed(lambda a, b: a ^ b),
        }
        # 0 equal, 1 less, 2 greater; combine keeps the more significant verdict.
        self.compare = _packed(lambda a, b: 0 if a == b else (1 if a < b else 2))
        self.combine = _packed(lambda hi, lo: hi if hi else lo)
        self.verdict = {
            Op.Eq: _table(lambda c: int(c == 0)),
            Op.Ne: _table(lambda c: int(c != 0)),
            Op.Lt: _table(lambda c: int(c == 1)),
            Op.Le: _table(lambda c: int(c != 2)),
            Op.Gt: _table(lambda c: int(c == 2)),
            Op.Ge: _table(lambda c: int(c != 1)),
        }
        self.keep_if_true = _packed(lambda c, x: x if c == 1 else 0)
        self.keep_if_false = _packed(lambda c, x: x if c == 0 else 0)
        self.mul_low = _packed(lambda a, b: (a * b) % 4)
        self.mul_high = _packed(lambda a, b: (a * b) // 4)
        # One-bit shifts across a chunk boundary.
        self.shl1 = _packed(lambda hi, lo: ((hi << 1) | (lo >> 1)) & 3)
        self.shr1 = _packed(lambda hi, lo: (lo >> 1) | ((hi & 1) << 1))
        # Shift-left-and-insert the numerator's next bit (even / odd bit of a chunk).
        self.insert_bit = (
            _packed(lambda r, a: ((r << 1) & 3) | (a & 1)),
            _packed(lambda r, a: ((r << 1) & 3) | ((a >> 1) & 1)),
        )


_TABLES: Tables | None = None


def tables() -> Tables:
    global _TABLES
    if _TABLES is None:
        _TABLES = Tables()
    return _TABLES


# --- traced helpers ------------------------------------------------------------------


def _hint(value):
    from concrete import fhe

    return fhe.hint(value, bit_width=WIDTH)


def lut(table, values: list) -> list:
    """One vectorized lookup over a list of traced chunks (one tensor op: concrete runs
    its bootstraps in parallel)."""
    from concrete import fhe

    if not values:
        return []
    result = _hint(table[_hint(fhe.array(values))])
    return [result[i] for i in range(len(values))]


def lut1(table, value):
    return _hint(table[_hint(value)])


def chunks_of(array, count: int) -> list:
    return [array[i] for i in range(count)]


def output(values: list):
    from concrete import fhe

    return _hint(fhe.array(values))


def ripple(sums: list, carry_in: int | None = None, *, carry_out: bool = False):
    """Propagate carries through per-chunk sums (each <= 7 with the carry). Sequential:
    on two cores a ripple beats a parallel prefix, which needs ~3x the bootstraps."""
    t = tables()
    out, carry = [], carry_in
    for i, total in enumerate(sums):
        value = total if carry is None else total + carry
        out.append(lut1(t.mod4, value))
        if i + 1 < len(sums) or carry_out:
            carry = lut1(t.carry, value)
    return (out, carry) if carry_out else out


def add_chunks(a: list, b: list) -> list:
    return ripple([x + y for x, y in zip(a, b, strict=True)])


def sub_chunks(a: list, b: list, *, carry_out: bool = False):
    """a - b as a + ~b + 1; with ``carry_out`` also 1 when a >= b (no borrow)."""
    return ripple([x + (CHUNK_MAX - y) for x, y in zip(a, b, strict=True)], 1, carry_out=carry_out)


def compare_chunks(a: list, b: list):
    """0 equal, 1 a < b, 2 a > b: per-chunk verdicts folded from the top, as a tree."""
    t = tables()
    return fold_pairs(t.combine, lut(t.compare, [x * 4 + y for x, y in zip(a, b, strict=True)]))


def fold_pairs(table, values: list):
    """Reduce chunk-sized values to one with a packed table, pairwise as a tree (the
    higher of each pair in the packed high half); an odd one out moves up unchanged."""
    while len(values) > 1:
        pairs = [values[i + 1] * 4 + values[i] for i in range(0, len(values) - 1, 2)]
        folded = lut(table, pairs)
        if len(values) % 2:
            folded.append(values[-1])
        values = folded
    return values[0]


def select(condition, if_true: list, if_false: list, *, clean: bool = True) -> list:
    """condition ? if_true : if_false per chunk; ``None`` stands for a zero chunk. An
    unclean result (a sum of two lookups, norm 2) may only feed the low side of a pack."""
    t = tables()
    kept_true = lut(t.keep_if_true, [condition * 4 + x for x in if_true if x is not None])
    kept_false = lut(t.keep_if_false, [condition * 4 + y for y in if_false if y is not None])
    true_iter, false_iter = iter(kept_true), iter(kept_false)
    mixed = []
    for x, y in zip(if_true, if_false, strict=True):
        terms = ([next(true_iter)] if x is not None else []) + (
            [next(false_iter)] if y is not None else []
        )
        mixed.append(terms[0] if len(terms) == 1 else terms[0] + terms[1])
    return lut(t.identity, mixed) if clean else mixed


def multiply_chunks(a: list, b: list) -> list:
    """Schoolbook product modulo 2**bits: partial products as (low, high) lookups on a
    packed pair, then columns reduced five terms at a time (sum <= 15)."""
    t = tables()
    n = len(a)
    pairs = [(i, j) for i in range(n) for j in range(n) if i + j < n]
    lows = lut(t.mul_low, [a[i] * 4 + b[j] for i, j in pairs])
    high_pairs = [(i, j) for i, j in pairs if i + j + 1 < n]
    highs = lut(t.mul_high, [a[i] * 4 + b[j] for i, j in high_pairs])
    columns: list[list] = [[] for _ in range(n)]
    for (i, j), low in zip(pairs, lows, strict=True):
        columns[i + j].append(low)
    for (i, j), high in zip(high_pairs, highs, strict=True):
        columns[i + j + 1].append(high)
    while any(len(column) > 1 for column in columns):
        groups: list[tuple[int, object]] = []
        next_columns: list[list] = [[] for _ in range(n)]
        for k, column in enumerate(columns):
            if len(column) == 1:
                next_columns[k].append(column[0])
                continue
            for start in range(0, len(column), 5):
                group = column[start : start + 5]
                if len(group) == 1:
                    next_columns[k].append(group[0])
                    continue
                total = group[0]
                for term in group[1:]:
                    total = total + term
                groups.append((k, total))
        sums = [total for _, total in groups]
        digits = lut(t.mod4, sums)
        carried = [(k, total) for k, total in groups if k + 1 < n]
        carries = lut(t.carry, [total for _, total in carried])
        for (k, _), digit in zip(groups, digits, strict=True):
            next_columns[k].append(digit)
        for (k, _), carry in zip(carried, carries, strict=True):
            next_columns[k + 1].append(carry)
        columns = next_columns
    return [column[0] for column in columns]


def divide_chunks(a: list, d: list) -> tuple[list, list]:
    """Restoring long division, one numerator bit at a time: shift the remainder left
    inserting the bit, trial-subtract the divisor, keep the difference when it did not
    borrow. d = 0 never borrows, which gives fhEVM's x / 0 = max and x % 0 = x."""
    t = tables()
    n = len(a)
    remainder: list = [None] * (n + 1)  # one spare chunk: 2r + bit may exceed the width
    divisor = [*d, None]
    quotient_bits: list = []
    for bit in reversed(range(n * CHUNK_BITS)):
        source = a[bit // CHUNK_BITS]
        shifted = [
            lut1(
                t.insert_bit[bit % 2],
                (remainder[0] * 4 if remainder[0] is not None else 0) + source,
            )
        ]
        packs = []
        for i in range(1, n + 1):
            hi, lo = remainder[i], remainder[i - 1]
            packs.append(
                (hi * 4 if hi is not None else 0) + (lo if lo is not None else 0)
                if hi is not None or lo is not None
                else None
            )
        live = [p for p in packs if p is not None]
        looked = iter(lut(t.shl1, live))
        shifted += [next(looked) if p is not None else None for p in packs]
        sums = [
            (r if r is not None else 0) + (CHUNK_MAX - y if y is not None else CHUNK_MAX)
            for r, y in zip(shifted, divisor, strict=True)
        ]
        difference, no_borrow = ripple(sums, 1, carry_out=True)
        remainder = select(no_borrow, difference, shifted)
        quotient_bits.append(no_borrow)
    quotient_bits.reverse()  # little-endian bits
    packed = [quotient_bits[2 * k] + 2 * quotient_bits[2 * k + 1] for k in range(n)]
    return lut(t.identity, packed), remainder[:n]


def shift_chunks(op: Op, x: list, amount: list, stages: int) -> list:
    """Barrel shifter over the amount's low ``stages`` bits (modulo bits for power-of-two
    widths; the backend reduces scalar amounts first otherwise)."""
    t = tables()
    n = len(x)
    rotate = op in (Op.Rotl, Op.Rotr)
    left = op in (Op.Shl, Op.Rotl)
    bits = [lut1(t.bit0 if j % 2 == 0 else t.bit1, amount[j // 2]) for j in range(stages)]
    current = list(x)
    for j in range(stages):
        if j == 0:
            packs = []
            for i in range(n):
                if left:
                    hi = current[i]
                    lo = current[i - 1] if i > 0 else (current[-1] if rotate else None)
                    packs.append((hi * 4 + lo) if lo is not None else hi * 4)
                else:
                    hi = current[i + 1] if i + 1 < n else (current[0] if rotate else None)
                    packs.append((hi * 4 + current[i]) if hi is not None else current[i])
            moved = lut(t.shl1 if left else t.shr1, packs)
        else:
            step = 1 << (j - 1)  # chunks
            moved = []
            for i in range(n):
                source = i - step if left else i + step
                if rotate:
                    moved.append(current[source % n])
                else:
                    moved.append(current[source] if 0 <= source < n else None)
        current = select(bits[j], moved, current, clean=False)
    return lut(t.identity, current)


# --- circuit catalogue ----------------------------------------------------------------


@dataclass(frozen=True)
class CircuitSpec:
    """One compiled function: its name (the cache key), argument shapes, the builder and
    a cost estimate in bootstraps."""

    name: str
    shapes: tuple[int, ...]
    build: Callable = field(compare=False)
    clear: tuple[bool, ...] = ()
    largest: int = CHUNK_MAX  # inputset values; the base circuit needs small ones

    def arguments(self) -> dict[str, str]:
        clear = self.clear or (False,) * len(self.shapes)
        return {f"x{i}": ("clear" if is_clear else "encrypted") for i, is_clear in enumerate(clear)}

    def inputset(self, size: int = 24) -> list:
        rng = np.random.default_rng(7)
        samples = [
            tuple(np.full(s, self.largest) for s in self.shapes),
            tuple(np.zeros(s, dtype=np.int64) for s in self.shapes),
        ]
        samples += [
            tuple(rng.integers(0, self.largest + 1, size=s) for s in self.shapes)
            for _ in range(size)
        ]
        return [sample if len(sample) > 1 else sample[0] for sample in samples]


def base_spec() -> CircuitSpec:
    """The circuit a tenant's keys are generated from: it holds the noisiest patterns any
    builder here produces (a packed pair plus a sum of two, norm 18; five-term sums of
    lookup outputs; a whole 8-bit product, whose column sums concrete's optimizer
    treats as the hardest case), so the keys it gets fit every other circuit."""

    def build(x):
        t = tables()
        v = chunks_of(x, 8)
        w = lut(t.identity, v[:5])
        nothing = lut1(t.zero, v[5])  # same noise as a chunk, value 0: keeps the index <= 15
        return output(
            [
                lut1(t.identity, w[0] * 4 + nothing + w[2]),
                lut1(t.identity, w[0] + w[1] + w[2] + w[3] + w[4]),
                *multiply_chunks(v[:4], v[4:]),
            ]
        )

    return CircuitSpec("base", (8,), build)


def refresh_spec(n: int) -> CircuitSpec:
    """Identity by bootstrap: the client's encrypt/decrypt shape and the squash."""
    return CircuitSpec(
        f"refresh{n}", (n,), lambda x: output(lut(tables().identity, chunks_of(x, n)))
    )


def trivial_spec(n: int) -> CircuitSpec:
    def build(x):
        from concrete import fhe

        return output(lut(tables().identity, chunks_of(_hint(fhe.zeros((n,)) + x), n)))

    return CircuitSpec(f"trivial{n}", (n,), build, clear=(True,))


def binary_spec(op: Op, fhe_type: FheType) -> CircuitSpec:
    n = chunk_count(fhe_type)
    t = tables

    def build(x0, x1):
        a, b = chunks_of(x0, n), chunks_of(x1, n)
        if op in (Op.BitAnd, Op.BitOr, Op.BitXor):
            return output(lut(t().bitwise[op], [p * 4 + q for p, q in zip(a, b, strict=True)]))
        if op is Op.Add:
            return output(add_chunks(a, b))
        if op is Op.Sub:
            return output(sub_chunks(a, b))
        if op is Op.Mul:
            return output(multiply_chunks(a, b))
        if op in (Op.Div, Op.Rem):
            quotient, remainder = divide_chunks(a, b)
            return output(quotient if op is Op.Div else remainder)
        if op in (Op.Eq, Op.Ne, Op.Lt, Op.Le, Op.Gt, Op.Ge):
            return output([lut1(t().verdict[op], compare_chunks(a, b))])
        if op in (Op.Min, Op.Max):
            less = lut1(t().verdict[Op.Lt], compare_chunks(a, b))
            return output(select(less, a, b) if op is Op.Min else select(less, b, a))
        if op in (Op.Shl, Op.Shr, Op.Rotl, Op.Rotr):
            return output(shift_chunks(op, a, b, shift_stages(fhe_type)))
        raise ValueError(f"no binary circuit for {op.event_name}")

    return CircuitSpec(f"{op.name.lower()}{n}", (n, n), build)


def unary_spec(op: Op, fhe_type: FheType) -> CircuitSpec:
    n = chunk_count(fhe_type)

    def build(x0):
        a = chunks_of(x0, n)
        if op is Op.Not:
            return output(lut(tables().not1 if fhe_type is FheType.Bool else tables().not2, a))
        if op is Op.Neg:
            return output(ripple([CHUNK_MAX - x for x in a], 1))
        raise ValueError(f"no unary circuit for {op.event_name}")

    suffix = "b" if fhe_type is FheType.Bool else ""
    return CircuitSpec(f"{op.name.lower()}{suffix}{n}", (n,), build)


def select_spec(n: int) -> CircuitSpec:
    def build(x0, x1, x2):
        condition = x0[0]
        return output(select(condition, chunks_of(x1, n), chunks_of(x2, n)))

    return CircuitSpec(f"select{n}", (1, n, n), build)


def cast_spec(source: FheType, target: FheType) -> CircuitSpec:
    n, m = chunk_count(source), chunk_count(target)

    def build(x0):
        a = chunks_of(x0, n)
        t = tables()
        if target is FheType.Bool:  # x != 0: "any chunk set", folded as a tree
            return output([lut1(t.nonzero, fold_pairs(t.either, a))])
        kept = lut(t.identity, a[:m])
        zeros = lut(t.zero, [a[0]] * (m - len(kept)))
        return output(kept + zeros)

    return CircuitSpec(f"cast{n}{'b' if target is FheType.Bool else 'to'}{m}", (n,), build)


def shift_stages(fhe_type: FheType) -> int:
    """Barrel stages: log2(bits) takes the amount modulo bits for power-of-two widths;
    Uint160 uses 8 stages on an amount the backend already reduced below 160."""
    return (fhe_type.bits - 1).bit_length()


# --- cost model (bootstraps), for the support matrix and the benchmarks -----------------


def estimated_pbs(op: Op, fhe_type: FheType) -> int:
    n = chunk_count(fhe_type)
    if op in (Op.BitAnd, Op.BitOr, Op.BitXor, Op.Not, Op.TrivialEncrypt, Op.Cast):
        return n
    if op in (Op.Add, Op.Sub, Op.Neg):
        return 2 * n - 1
    if op in (Op.Eq, Op.Ne, Op.Lt, Op.Le, Op.Gt, Op.Ge):
        return 2 * n
    if op in (Op.Min, Op.Max):
        return 5 * n
    if op is Op.IfThenElse:
        return 3 * n
    if op is Op.Mul:
        return n * n + n * (n - 1) // 2 + n * n // 2
    if op in (Op.Div, Op.Rem):
        return 6 * (n + 1) * n * CHUNK_BITS
    if op in (Op.Shl, Op.Shr, Op.Rotl, Op.Rotr):
        stages = shift_stages(fhe_type)
        return stages + n + 2 * n * stages + n
    if op is Op.Sum:
        return 2 * n - 1  # per added operand
    if op is Op.IsIn:
        return 2 * n + 1  # per candidate
    if op is Op.MulDiv:
        wide = reference.double_width(fhe_type)
        if wide is None:
            return 1 << 62
        return 2 * n + estimated_pbs(Op.Mul, wide) + estimated_pbs(Op.Div, wide) + n
    return 0
