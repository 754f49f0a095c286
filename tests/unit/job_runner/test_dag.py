"""Graph building, chains and the Indexed-Job split, on plain rows."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coprocessor.db.queries import BatchComputation
from coprocessor.errors import InvalidRow
from coprocessor.types import FheType, Op
from job_runner.dag import (
    GraphCycle,
    Node,
    build_graph,
    chains,
    node_from_row,
    partition,
    restrict,
)


def h(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def node(name: str, *operands: str, chain: str | None = None, **state) -> Node:
    return Node(
        h(name),
        Op.Add,
        FheType.Uint8,
        tuple(h(o) for o in operands),
        (),
        chain.encode() if chain else None,
        **state,
    )


def names(handles) -> list[str]:
    lookup = {h(n): n for n in "abcdefghijklmnopqrstuvwxyz"}
    lookup.update({h(f"n{i}"): f"n{i}" for i in range(300)})
    return [lookup[x] for x in handles]


def test_diamond_orders_dependencies_first_and_names_external_inputs():
    graph = build_graph(
        [node("d", "b", "c"), node("b", "a", "x"), node("c", "a", "a"), node("a", "x", "y")]
    )
    order = names(graph.order)
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    assert graph.external == {h("x"), h("y")}
    assert set(names(graph.downstream(h("a")))) == {"b", "c", "d"}


def test_cycle_is_reported_with_the_nodes_on_it():
    with pytest.raises(GraphCycle, match="cycle among 2 computation") as caught:
        build_graph([node("a", "b"), node("b", "a"), node("c", "x")])
    assert "0x" + h("a").hex() in str(caught.value) or "0x" + h("b").hex() in str(caught.value)


def test_duplicate_node_is_rejected():
    with pytest.raises(InvalidRow, match="appears twice"):
        build_graph([node("a", "x"), node("a", "y")])


def test_chains_join_edges_and_chain_ids():
    graph = build_graph(
        [
            node("a", "x"),
            node("b", "a"),
            node("c", "y"),
            node("d", "z", chain="t1"),
            node("e", "w", chain="t1"),
            node("f", "v"),
        ]
    )
    groups = sorted(sorted(names(g)) for g in chains(graph))
    assert groups == [["a", "b"], ["c"], ["d", "e"], ["f"]]


@given(st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=80), st.integers(1, 6))
def test_partition_covers_every_node_once_and_never_splits_a_chain(edges, count):
    nodes = {i: set() for i in range(60)}
    for a, b in edges:
        if a > b:  # keep it acyclic: edges from higher to lower index
            nodes[a].add(b)
    graph = build_graph(
        [node(f"n{i}", *(f"n{j}" for j in sorted(deps))) for i, deps in nodes.items()]
    )
    shares = [partition(graph, i, count) for i in range(count)]
    assert sum(len(s) for s in shares) == 60
    assert set().union(*shares) == set(graph.nodes)
    for group in chains(graph):
        owners = [i for i, share in enumerate(shares) if group[0] in share]
        assert len(owners) == 1
        assert all(x in shares[owners[0]] for x in group)


def test_partition_balances_independent_chains_and_is_deterministic():
    graph = build_graph([node(f"n{i}", "x") for i in range(10)])
    shares = [partition(graph, i, 3) for i in range(3)]
    assert sorted(len(s) for s in shares) == [3, 3, 4]
    assert shares == [partition(graph, i, 3) for i in range(3)]


def test_partition_rejects_an_index_outside_the_job():
    graph = build_graph([node("a", "x")])
    with pytest.raises(ValueError, match="outside"):
        partition(graph, 2, 2)


def test_restrict_turns_other_pods_nodes_into_inputs():
    graph = build_graph([node("a", "x"), node("b", "a")])
    share = restrict(graph, {h("b")})
    assert list(share.nodes) == [h("b")] and share.external == {h("a")}


def row(op: Op, deps, is_scalar=False, out_type=FheType.Uint8, **kw) -> BatchComputation:
    return BatchComputation(
        output_handle=h("out"),
        output_type=int(out_type),
        fhe_operation=int(op),
        dependencies=tuple(deps),
        is_scalar=is_scalar,
        schedule_order=1,
        is_completed=kw.get("done", False),
        is_error=kw.get("error") is not None,
        error_message=kw.get("error"),
    )


def test_rows_become_engine_requests_with_scalars_and_seeds():
    scalar = node_from_row(row(Op.Add, [h("a"), (300).to_bytes(2, "big")], is_scalar=True))
    assert scalar.operands == (h("a"),)
    assert scalar.request([b"ct"]).scalars == (300,)
    trivial = node_from_row(row(Op.TrivialEncrypt, [(7).to_bytes(1, "big")], True))
    assert trivial.operands == () and trivial.request([]).scalars == (7,)
    bounded = node_from_row(row(Op.RandBounded, [(16).to_bytes(1, "big"), b"seed"], True))
    request = bounded.request([])
    assert request.scalars == (16,) and request.seed == b"seed"
    assert request.result_type is FheType.Uint8
    failed = node_from_row(row(Op.Add, [h("a"), h("b")], error="bad bytes"))
    assert failed.error == "bad bytes"


def test_rand_without_a_seed_is_a_clear_error():
    with pytest.raises(InvalidRow, match="has no seed"):
        node_from_row(row(Op.Rand, [], True)).request([])


def test_unknown_codes_in_a_row_name_the_row():
    with pytest.raises(InvalidRow, match="0x" + h("out").hex()):
        node_from_row(
            BatchComputation(
                output_handle=h("out"),
                output_type=99,
                fhe_operation=0,
                dependencies=(),
                schedule_order=1,
                is_completed=False,
                is_error=False,
                error_message=None,
            )
        )
