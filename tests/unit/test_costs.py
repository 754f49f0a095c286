"""The cost model (coprocessor/costs.py) and the bounds the operator enforces with it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coprocessor.api.batch import FheBatchSpec
from coprocessor.costs import batch_cost, blocks, describe_heaviest, op_cost, row_cost
from coprocessor.db.rows import ComputationRow
from coprocessor.types import FheType, Op, make_handle
from fhe_operator.reconcile import budget_decision
from fhe_operator.validation import Bounds, InvalidSpec, PlannedGraph, check_bounds

CHAIN = 12345
INTEGERS = [t for t in FheType if t.name.startswith("Uint")]
BOUNDS = Bounds(max_cost=2_000_000, max_outputs=256, max_priority=100,
                priority_namespaces=frozenset({"fhe"}))  # fmt: skip


def handle(fhe_type: FheType, seed: int = 0) -> bytes:
    return make_handle(seed.to_bytes(21, "big"), 0, CHAIN, fhe_type).raw


def row(op: Op, fhe_type: FheType, seed: int = 0, scalar: bool = False) -> ComputationRow:
    args = (handle(fhe_type, seed), b"\x05" if scalar else handle(fhe_type, seed + 1))
    return ComputationRow(handle(fhe_type, 1000 + seed), int(fhe_type), int(op), args, scalar)


@given(st.sampled_from(list(Op)), st.booleans())
def test_a_wider_type_never_costs_less(op, scalar):
    costs = [op_cost(op, t, scalar=scalar) for t in INTEGERS]
    assert costs == sorted(costs)
    assert all(c >= 0 for c in costs)


@given(st.sampled_from(INTEGERS))
def test_encrypted_operands_cost_at_least_scalar_ones_and_division_costs_most(fhe_type):
    for op in Op:
        assert op_cost(op, fhe_type) >= op_cost(op, fhe_type, scalar=True), op
    assert op_cost(Op.Div, fhe_type) > op_cost(Op.Mul, fhe_type) > op_cost(Op.Add, fhe_type)
    assert op_cost(Op.TrivialEncrypt, fhe_type) == 0


def test_a_stored_computation_is_costed_by_its_operand_type_not_its_bool_result():
    compare = ComputationRow(
        handle(FheType.Bool, 9), int(FheType.Bool), int(Op.Ge),
        (handle(FheType.Uint64), handle(FheType.Uint64, 1)),
    )  # fmt: skip
    assert row_cost(compare) == 2 * blocks(FheType.Uint64) == 64


def test_an_erc20_batch_is_far_below_the_default_limit():
    transfers = [
        r
        for i in range(40)
        for r in (
            row(Op.Ge, FheType.Uint64, 10 * i),
            row(Op.Sub, FheType.Uint64, 10 * i + 2),
            row(Op.Add, FheType.Uint64, 10 * i + 4),
            row(Op.IfThenElse, FheType.Uint64, 10 * i + 6),
            row(Op.IfThenElse, FheType.Uint64, 10 * i + 8),
        )
    ]
    assert 10_000 < batch_cost(transfers) < 20_000 < BOUNDS.max_cost


def test_500_divisions_on_uint256_are_refused_with_the_figure_and_the_limit():
    rows = tuple(row(Op.Div, FheType.Uint256, 2 * i) for i in range(500))
    planned = PlannedGraph(rows, {}, {}, ())
    with pytest.raises(InvalidSpec) as refused:
        check_bounds(spec(), planned, "team", BOUNDS)
    message = str(refused.value)
    assert f"{planned.cost:,} PBS" in message and "2,000,000 (FHE_BATCH_MAX_COST)" in message
    assert "FheDiv on Uint256 x 500" in message
    assert describe_heaviest(rows).startswith("FheDiv on Uint256 x 500")


def spec(**extra) -> FheBatchSpec:
    a = "0x" + handle(FheType.Uint8).hex()
    return FheBatchSpec.model_validate(
        {
            "tenant": "t",
            "graph": {"inputs": {"a": a}, "nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
            **extra,
        }
    )


def test_too_many_outputs_and_a_priority_above_the_cap_are_refused_outside_the_listeners_ns():
    many = PlannedGraph((), {f"o{i}": "0x" for i in range(257)}, {}, ())
    with pytest.raises(InvalidSpec, match="257 outputs, over the limit of 256"):
        check_bounds(spec(), many, "team", BOUNDS)
    few = PlannedGraph((), {}, {}, ())
    with pytest.raises(InvalidSpec, match="priority 500 is above 100, the highest allowed in"):
        check_bounds(spec(priority=500), few, "team", BOUNDS)
    check_bounds(spec(priority=500), few, "fhe", BOUNDS)  # the listener's namespace
    check_bounds(spec(priority=100), few, "team", BOUNDS)


@pytest.mark.parametrize(
    ("mine", "running", "fits"),
    [
        (10, [], True),
        (10, [40, 50], True),
        (11, [40, 50], False),
        (500, [], True),  # alone, even over the budget (it passed the per-batch limit)
        (1, [None], False),  # a running batch of unknown cost counts as the whole budget
    ],
)
def test_budget_decision(mine, running, fits):
    allowed, why = budget_decision(mine, running, 100, "team")
    assert allowed is fits
    assert (why is None) is fits
    if why:
        assert "of 100 PBS running in 'team'" in why and "FHE_NAMESPACE_MAX_RUNNING_COST" in why


def test_a_select_is_costed_by_its_result_and_a_cast_by_its_wider_side():
    select = ComputationRow(
        handle(FheType.Uint256, 7), int(FheType.Uint256), int(Op.IfThenElse),
        (handle(FheType.Bool), handle(FheType.Uint256, 1), handle(FheType.Uint256, 2)),
    )  # fmt: skip
    assert row_cost(select) == 3 * blocks(FheType.Uint256)
    narrowing = ComputationRow(
        handle(FheType.Uint8, 8), int(FheType.Uint8), int(Op.Cast), (handle(FheType.Uint256),)
    )
    assert row_cost(narrowing) == blocks(FheType.Uint256)
