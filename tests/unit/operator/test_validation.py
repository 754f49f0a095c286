"""Graph validation: each kind of bad graph gets a message naming the node."""

import pytest
from pydantic import ValidationError

from coprocessor.api.batch import FheBatchSpec, describe_error
from coprocessor.db.rows import check_batch
from coprocessor.fhe.engine import get_backend
from coprocessor.types import FheType, Handle, Op, make_handle
from fhe_operator.validation import InvalidSpec, check_stages, plan_graph

CHAIN = 12345


def handle(n: int, fhe_type: FheType = FheType.Uint8, chain: int = CHAIN) -> str:
    return make_handle(n.to_bytes(21, "big"), 0, chain, fhe_type).hex()


def spec(nodes, inputs=None, **extra) -> FheBatchSpec:
    inputs = (
        inputs
        if inputs is not None
        else {"a": handle(1), "b": handle(2), "w": handle(3, FheType.Uint16)}
    )
    return FheBatchSpec.model_validate(
        {"tenant": "acme", "graph": {"inputs": inputs, "nodes": nodes}, **extra}
    )


def planned(nodes, **kw):
    return plan_graph(
        spec(nodes, **kw).graph,
        namespace="fhe",
        name="b",
        chain_id=CHAIN,
        backend=get_backend("tfhe-rs"),
    )


def test_a_good_graph_becomes_rows_in_dependency_order_with_outputs():
    result = planned(
        [
            {"name": "new", "op": "FheIfThenElse", "args": ["ok", "dec", "a"], "output": True},
            {"name": "ok", "op": "FheGe", "args": ["a", "b"]},
            {"name": "dec", "op": "FheSub", "args": ["a", "b"]},
            {"name": "c", "op": "FheAdd", "args": ["b", {"scalar": "0x2a"}]},
            {"name": "k", "op": "FheTrivialEncrypt", "args": [{"scalar": "7"}], "type": "Uint8"},
            {"name": "x", "op": "FheCast", "args": ["k"], "type": "Uint64", "output": True},
            {"name": "r", "op": "FheRand", "type": "Uint16"},
        ]
    )
    check_batch(result.rows)  # what admission checks
    assert set(result.outputs) == {"new", "x"}
    types = {n: Handle.parse(h).fhe_type for n, h in result.handles.items()}
    assert types == {
        "new": FheType.Uint8,
        "ok": FheType.Bool,
        "dec": FheType.Uint8,
        "c": FheType.Uint8,
        "k": FheType.Uint8,
        "x": FheType.Uint64,
        "r": FheType.Uint16,
    }
    order = [r.output_handle for r in result.rows]
    assert order.index(bytes.fromhex(result.handles["ok"][2:])) < order.index(
        bytes.fromhex(result.handles["new"][2:])
    )
    scalar_row = next(r for r in result.rows if r.fhe_operation == Op.Add)
    assert scalar_row.is_scalar and scalar_row.dependencies[-1] == b"\x2a"


def test_handles_are_deterministic_and_depend_on_the_batch():
    nodes = [{"name": "s", "op": "FheAdd", "args": ["a", "b"]}]
    assert planned(nodes).handles == planned(nodes).handles
    other = plan_graph(
        spec(nodes).graph,
        namespace="fhe",
        name="other",
        chain_id=CHAIN,
        backend=get_backend("tfhe-rs"),
    )
    assert other.handles != planned(nodes).handles


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([{"name": "x", "op": "FheFoo", "args": ["a", "b"]}], "node 'x' (FheFoo): unknown op"),
        ([{"name": "x", "op": "FheAdd", "args": ["a"]}], "takes 2 argument(s), got 1"),
        ([{"name": "x", "op": "FheAdd", "args": ["a", "w"]}], "operands differ: Uint8 and Uint16"),
        (
            [
                {"name": "x", "op": "FheAdd", "args": ["a", "y"]},
                {"name": "y", "op": "FheAdd", "args": ["x", "a"]},
            ],
            "cycle through nodes x, y",
        ),
        ([{"name": "x", "op": "FheAdd", "args": ["a", "zz"]}], "'zz' names no input or node"),
        ([{"name": "x", "op": "FheCast", "args": ["a"]}], "needs `type`"),
        (
            [{"name": "x", "op": "FheAdd", "args": ["a", "b"], "type": "Uint16"}],
            "`type` says Uint16 but the node computes Uint8",
        ),
        ([{"name": "x", "op": "FheAdd", "args": [{"scalar": "1"}, "a"]}], "only be the last"),
        ([{"name": "x", "op": "FheNot", "args": ["a", {"scalar": "1"}]}], "takes no scalar"),
        ([{"name": "x", "op": "FheIfThenElse", "args": ["a", "a", "b"]}], "condition is Uint8"),
        ([{"name": "x", "op": "FheMulDiv", "args": ["a", "a", "a"]}], "not accepted in graphs yet"),
        (
            [{"name": "x", "op": "FheTrivialEncrypt", "args": ["a"], "type": "Uint8"}],
            "takes one {scalar: ...}",
        ),
        (
            [
                {"name": "x", "op": "FheNot", "args": ["a"]},
                {"name": "x", "op": "FheNot", "args": ["b"]},
            ],
            "used twice",
        ),
        ([{"name": "a", "op": "FheNot", "args": ["b"]}], "also an input name"),
        (
            [{"name": "x", "op": "FheAdd", "args": ["a", {"scalar": str(2**256)}]}],
            "does not fit 256 bits",
        ),
        ([{"name": "x", "op": "FheCast", "args": ["a"], "type": "Uint999"}], "unknown FHE type"),
    ],
)
def test_bad_graphs_are_rejected_naming_the_node(nodes, message):
    with pytest.raises(InvalidSpec) as rejected:
        planned(nodes)
    assert message in str(rejected.value)


def test_an_input_of_another_chain_is_rejected():
    with pytest.raises(InvalidSpec, match="handle of chain 1, but the tenant is on chain"):
        planned([{"name": "x", "op": "FheNot", "args": ["a"]}], inputs={"a": handle(1, chain=1)})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tenant": "acme"}, "exactly one of spec.graph and spec.source"),
        (
            {"tenant": "Acme!", "graph": {"nodes": [{"name": "x", "op": "FheNot"}]}},
            "spec.tenant: String should match",
        ),
        (
            {
                "tenant": "acme",
                "stages": ["sns", "compute"],
                "graph": {"nodes": [{"name": "x", "op": "FheNot"}]},
            },
            "must be distinct and in the order",
        ),
        (
            {
                "tenant": "acme",
                "colour": "red",
                "graph": {"nodes": [{"name": "x", "op": "FheNot"}]},
            },
            "spec.colour: Extra inputs are not permitted",
        ),
        (
            {
                "tenant": "acme",
                "graph": {"nodes": [{"name": "x", "op": "FheNot", "args": [{"scalar": "-1"}]}]},
            },
            "should match",
        ),
    ],
)
def test_structural_errors_are_one_line_naming_the_field(body, message):
    with pytest.raises(ValidationError) as rejected:
        FheBatchSpec.model_validate(body)
    assert message in describe_error(rejected.value)


def test_spec_hash_ignores_how_a_batch_runs_but_not_what_it_computes():
    nodes = [{"name": "x", "op": "FheNot", "args": ["a"]}]
    base = spec(nodes)
    assert base.spec_hash() == spec(nodes, priority=5, suspend=True).spec_hash()
    assert base.spec_hash() != spec([{"name": "y", "op": "FheNot", "args": ["a"]}]).spec_hash()


@pytest.mark.parametrize(
    ("stages", "outputs", "message"),
    [
        (["compute", "verify"], True, "stage(s) verify are not batch stages"),
        (["compute", "sns"], False, "no node is marked output: true"),
        (["compute", "sns", "send"], False, "no node is marked output: true"),
        (["compute", "send"], True, "list sns before send"),
        (["compute", "sns"], True, None),
        (["compute", "sns", "send"], True, None),
        (["compute"], False, None),
    ],
)
def test_stages_must_exist_sns_needs_outputs_and_send_needs_sns(stages, outputs, message):
    graph = spec(
        [{"name": "x", "op": "FheNot", "args": ["a"], "output": outputs}], inputs={"a": handle(1)}
    ).graph
    if message is None:
        check_stages(stages, ("compute", "sns", "send"), graph)
    else:
        with pytest.raises(InvalidSpec) as rejected:
            check_stages(stages, ("compute", "sns", "send"), graph)
        assert message in str(rejected.value)


def test_identical_nodes_are_one_computation_admitted_once():
    """Handles follow the host's rule, so two equal nodes are equal computations: the
    graph is admitted with one row for them (admission used to refuse it forever)."""
    result = planned(
        [
            {"name": "five", "op": "FheTrivialEncrypt", "args": [{"scalar": "5"}], "type": "Uint8"},
            {"name": "cinq", "op": "FheTrivialEncrypt", "args": [{"scalar": "5"}], "type": "Uint8"},
            {"name": "s1", "op": "FheAdd", "args": ["a", "b"], "output": True},
            {"name": "s2", "op": "FheAdd", "args": ["a", "b"], "output": True},
            {"name": "t", "op": "FheAdd", "args": ["five", "cinq"]},
        ]
    )
    check_batch(result.rows)
    assert result.handles["five"] == result.handles["cinq"]
    assert result.handles["s1"] == result.handles["s2"]
    assert len(result.rows) == 3 and len(result.outputs) == 2


def test_a_scalar_never_takes_the_handle_of_an_encrypted_operand():
    as_handle = {"b": handle(2)}
    encrypted = planned(
        [{"name": "x", "op": "FheAdd", "args": ["a", "b"]}], inputs={"a": handle(1), **as_handle}
    )
    word = str(int(as_handle["b"], 16))  # the same 32 bytes as a plaintext
    scalar = planned(
        [{"name": "x", "op": "FheAdd", "args": ["a", {"scalar": word}]}],
        inputs={"a": handle(1), **as_handle},
    )
    assert encrypted.handles["x"] != scalar.handles["x"]


def test_inline_handles_depend_on_the_batch():
    nodes = [{"name": "x", "op": "FheAdd", "args": ["a", "b"]}]
    here = plan_graph(
        spec(nodes).graph, namespace="fhe", name="b", chain_id=CHAIN, backend=get_backend("tfhe-rs")
    )
    there = plan_graph(
        spec(nodes).graph,
        namespace="fhe",
        name="other",
        chain_id=CHAIN,
        backend=get_backend("tfhe-rs"),
    )
    assert here.handles["x"] != there.handles["x"]
