import pytest
from hypothesis import given
from hypothesis import strategies as st

from coprocessor.db.rows import ComputationRow, check_batch
from coprocessor.errors import InvalidRow
from coprocessor.types import FheType, Op


def handle(n: int, fhe_type: FheType = FheType.Uint64) -> bytes:
    return n.to_bytes(21, "big") + b"\xff" + (12345).to_bytes(8, "big") + bytes([fhe_type, 0])


def add(out: int, a: int, b: int) -> ComputationRow:
    return ComputationRow(handle(out), FheType.Uint64, Op.Add, (handle(a), handle(b)))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (ComputationRow(b"\x01" * 31, 5, 0, (handle(1), handle(2))), "not 32 bytes"),
        (ComputationRow(handle(3), 5, 22, (handle(1), handle(2))), "unknown op code 22"),
        (ComputationRow(handle(3), 5, 99, (handle(1), handle(2))), "unknown op code 99"),
        (ComputationRow(handle(3), 12, 0, (handle(1), handle(2))), "type code 12 is out of range"),
        (ComputationRow(handle(3), 5, 0, (handle(1),)), "FheAdd takes 2 operand"),
        (ComputationRow(handle(3), 5, 0, (handle(1), b"\x00" * 5)), "operand 1 is not a 32-byte"),
        (ComputationRow(handle(3), 5, int(Op.Neg), (b"\x07",), is_scalar=True), "no scalar"),
        (ComputationRow(handle(3), 0, int(Op.IsIn), (handle(1),)), "at least 2"),
    ],
)
def test_bad_rows_are_rejected_with_their_reason(row, message):
    with pytest.raises(InvalidRow, match=message):
        check_batch([row])


def test_scalar_last_operand_is_not_checked_as_a_handle():
    row = ComputationRow(handle(3), 5, 0, (handle(1), (42).to_bytes(8, "big")), is_scalar=True)
    assert check_batch([row]) == [row]


def test_duplicate_output_rejected():
    with pytest.raises(InvalidRow, match="appears twice"):
        check_batch([add(3, 1, 2), add(3, 1, 2)])


def test_cycle_rejected_naming_handles():
    rows = [add(10, 11, 1), add(11, 12, 1), add(12, 10, 1), add(13, 1, 2)]
    with pytest.raises(InvalidRow, match="cycle among 3") as caught:
        check_batch(rows)
    assert handle(10).hex() in str(caught.value)


@given(st.data())
def test_check_batch_returns_dependency_order(data):
    count = data.draw(st.integers(1, 30))
    rows = []
    for out in range(100, 100 + count):
        # Operands are inputs (< 100) or earlier outputs: always acyclic.
        a = data.draw(st.integers(0, out - 1))
        b = data.draw(st.integers(0, out - 1))
        rows.append(add(out, a, b))
    shuffled = data.draw(st.permutations(rows))
    ordered = check_batch(shuffled)
    position = {row.output_handle: i for i, row in enumerate(ordered)}
    assert sorted(position) == sorted(r.output_handle for r in rows)
    for row in ordered:
        for dependency in row.dependencies:
            if dependency in position:
                assert position[dependency] < position[row.output_handle]
