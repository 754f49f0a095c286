"""Rows offered to the database, and the checks that keep bad ones out.

The schema's CHECK constraints are the last line of defence; these checks come first
so the error names the row and the reason, and a batch is rejected before any of it
is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidRow
from ..toposort import topological_order
from ..types import HANDLE_LENGTH, FheType, Op


@dataclass(frozen=True)
class ComputationRow:
    """One FHE operation: ``output_handle = fhe_operation(dependencies...)``.

    ``dependencies`` holds operand handles and, where the op takes them, plaintext
    operands as big-endian bytes; ``split_dependencies`` says which is which.
    """

    output_handle: bytes
    output_type: int
    fhe_operation: int
    dependencies: tuple[bytes, ...]
    is_scalar: bool = False
    transaction_id: bytes | None = None
    dependence_chain_id: bytes | None = None

    @property
    def handle_dependencies(self) -> tuple[bytes, ...]:
        return split_dependencies(self.fhe_operation, self.dependencies, self.is_scalar)[0]


# Ops whose every operand is plaintext: TrivialEncrypt(value), Rand(seed),
# RandBounded(upper bound, seed).
PLAINTEXT_ONLY = frozenset({Op.TrivialEncrypt, Op.Rand, Op.RandBounded})


def split_dependencies(
    op: int, dependencies: tuple[bytes, ...], is_scalar: bool
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(operand handles, plaintext operands) of a row, the reference's encoding: with
    ``is_scalar`` the last element is plaintext; for the ops of PLAINTEXT_ONLY all are."""
    if op in PLAINTEXT_ONLY:
        return (), tuple(dependencies)
    if is_scalar:
        return tuple(dependencies[:-1]), tuple(dependencies[-1:])
    return tuple(dependencies), ()


@dataclass(frozen=True)
class BatchAdmission:
    batch_id: str
    tenant_id: int
    namespace: str
    name: str
    spec_hash: str
    uid: str | None = None
    rows: tuple[ComputationRow, ...] = field(default_factory=tuple)
    outputs: frozenset[bytes] = frozenset()  # handles the SNS stage publishes


def _label(row: ComputationRow) -> str:
    handle = row.output_handle
    return "0x" + handle.hex() if isinstance(handle, bytes) else repr(handle)


def check_row(row: ComputationRow) -> None:
    """Raise InvalidRow naming the row and what is wrong with it."""
    if not isinstance(row.output_handle, bytes) or len(row.output_handle) != HANDLE_LENGTH:
        size = len(row.output_handle) if isinstance(row.output_handle, bytes) else "non-bytes"
        raise InvalidRow(f"output handle {_label(row)} is {size} long, not {HANDLE_LENGTH} bytes")
    try:
        op = Op(row.fhe_operation)
    except ValueError:
        raise InvalidRow(f"row {_label(row)}: unknown op code {row.fhe_operation}") from None
    try:
        FheType(row.output_type)
    except ValueError:
        raise InvalidRow(
            f"row {_label(row)}: type code {row.output_type} is out of range 0..{max(FheType)}"
        ) from None
    signature = op.signature
    count = len(row.dependencies)
    if signature.arity is not None and count != signature.arity:
        raise InvalidRow(
            f"row {_label(row)}: {op.event_name} takes {signature.arity} operand(s), got {count}"
        )
    if signature.arity is None and count < signature.min_args:
        raise InvalidRow(
            f"row {_label(row)}: {op.event_name} takes at least "
            f"{signature.min_args} operand(s), got {count}"
        )
    if row.is_scalar and not signature.scalar_rhs:
        raise InvalidRow(f"row {_label(row)}: {op.event_name} takes no scalar operand")
    for position, dependency in enumerate(row.handle_dependencies):
        if not isinstance(dependency, bytes) or len(dependency) != HANDLE_LENGTH:
            raise InvalidRow(
                f"row {_label(row)}: operand {position} is not a {HANDLE_LENGTH}-byte handle"
            )


def check_batch(rows: tuple[ComputationRow, ...] | list[ComputationRow]) -> list[ComputationRow]:
    """Check every row, reject duplicates and cycles; return rows in dependency order."""
    by_handle: dict[bytes, ComputationRow] = {}
    for row in rows:
        check_row(row)
        if row.output_handle in by_handle:
            raise InvalidRow(f"row {_label(row)} appears twice in one batch")
        by_handle[row.output_handle] = row
    return _topological(by_handle)


def _topological(by_handle: dict[bytes, ComputationRow]) -> list[ComputationRow]:
    ordered, stuck = topological_order(
        {handle: row.handle_dependencies for handle, row in by_handle.items()}
    )
    if stuck:
        shown = ", ".join("0x" + h.hex() for h in sorted(stuck)[:3])
        raise InvalidRow(f"dependency cycle among {len(stuck)} computation(s): {shown}")
    return [by_handle[h] for h in ordered]
