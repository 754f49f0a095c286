"""Semantic validation of an inline graph, and its translation into computation rows.

Pure: the caller supplies the tenant's chain id and backend. Every error is one line
naming the node and the reason, the message a person sees in ``kubectl get fheb``.
Handles are derived the way the wire contract says (op, operands, context, chain), so
admitting the same graph twice gives the same rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from coprocessor.api.batch import FheBatchSpec, Graph, GraphNode, Scalar
from coprocessor.costs import batch_cost, describe_heaviest
from coprocessor.db.rows import ComputationRow
from coprocessor.errors import Irrecoverable, UserError
from coprocessor.fhe.engine import Backend, operand_type, require_support, result_type_of
from coprocessor.toposort import topological_order
from coprocessor.types import FheType, Handle, Op, derive_handle, plaintext_operand

EXPLICIT_TYPE_OPS = frozenset({Op.TrivialEncrypt, Op.Cast, Op.Rand, Op.RandBounded})
MAX_SCALAR = (1 << 256) - 1


class InvalidSpec(UserError):
    """The resource asks for something that can never run; the message says what."""


@dataclass(frozen=True)
class PlannedGraph:
    """What admission writes (a ``source`` batch has rows only: its computations are
    already in the database)."""

    rows: tuple[ComputationRow, ...]
    outputs: dict[str, str]  # node name -> 0x handle, for nodes marked output
    handles: dict[str, str]  # every node name -> 0x handle
    inputs: tuple[bytes, ...]  # handles the graph reads and does not compute

    @property
    def cost(self) -> int:
        """Estimated PBS of its computations (coprocessor/costs.py)."""
        return batch_cost(self.rows)


def graph_context(namespace: str, name: str) -> bytes:
    """What an inline graph's handles hash where the host hashes its ACL address: 20
    bytes of the batch's identity, so its handles never meet a chain's or another
    batch's."""
    from eth_hash.auto import keccak

    return keccak(f"fhebatch:{namespace}/{name}".encode())[-20:]


def _where(node: GraphNode) -> str:
    return f"node {node.name!r} ({node.op})"


def _order(graph: Graph) -> list[GraphNode]:
    """Nodes in dependency order; a cycle or a dangling name is an InvalidSpec."""
    by_name: dict[str, GraphNode] = {}
    for node in graph.nodes:
        if node.name in by_name:
            raise InvalidSpec(f"node name {node.name!r} is used twice")
        if node.name in graph.inputs:
            raise InvalidSpec(f"node name {node.name!r} is also an input name")
        by_name[node.name] = node
    for node in graph.nodes:
        for ref in (a for a in node.args if isinstance(a, str)):
            if ref not in by_name and ref not in graph.inputs:
                raise InvalidSpec(f"{_where(node)}: argument {ref!r} names no input or node")
    ordered, stuck = topological_order(
        {n.name: [a for a in n.args if isinstance(a, str)] for n in graph.nodes}
    )
    if stuck:
        raise InvalidSpec(f"the graph has a cycle through nodes {', '.join(sorted(stuck)[:5])}")
    return [by_name[n] for n in ordered]


def plan_graph(
    graph: Graph, *, namespace: str, name: str, chain_id: int, backend: Backend
) -> PlannedGraph:
    context = graph_context(namespace, name)
    known: dict[str, tuple[bytes, FheType]] = {}
    for input_name, text in graph.inputs.items():
        try:
            handle = Handle.parse(text)
        except ValueError as error:
            raise InvalidSpec(f"input {input_name!r}: {error}") from None
        if handle.chain_id != chain_id:
            raise InvalidSpec(
                f"input {input_name!r} is a handle of chain {handle.chain_id}, "
                f"but the tenant is on chain {chain_id}"
            )
        known[input_name] = (handle.raw, handle.fhe_type)
    rows: list[ComputationRow] = []
    handles: dict[str, str] = {}
    outputs: dict[str, str] = {}
    planned: set[bytes] = set()
    for node in _order(graph):
        handle, result_type, row = _plan_node(node, known, context, chain_id, backend)
        known[node.name] = (handle, result_type)
        if handle not in planned:  # two identical nodes are one computation
            planned.add(handle)
            rows.append(row)
        handles[node.name] = "0x" + handle.hex()
        if node.output:
            outputs[node.name] = handles[node.name]
    inputs = tuple(dict.fromkeys(known[n][0] for n in graph.inputs))
    return PlannedGraph(tuple(rows), outputs, handles, inputs)


def _plan_node(
    node: GraphNode,
    known: dict[str, tuple[bytes, FheType]],
    context: bytes,
    chain_id: int,
    backend: Backend,
) -> tuple[bytes, FheType, ComputationRow]:
    where = _where(node)
    try:
        op = Op.parse(node.op)
    except ValueError as error:
        raise InvalidSpec(f"{where}: {error}") from None
    if op is Op.MulDiv:
        raise InvalidSpec(
            f"{where}: FheMulDiv is not accepted in graphs yet: its two "
            "plaintext operands do not fit a computation row's one scalar"
        )
    signature = op.signature
    scalars = [a for a in node.args if isinstance(a, Scalar)]
    operands = [a for a in node.args if isinstance(a, str)]
    if (scalars and not isinstance(node.args[-1], Scalar)) or len(scalars) > 1:
        raise InvalidSpec(f"{where}: a scalar may only be the last argument, and only one")
    if scalars and not signature.scalar_rhs:
        raise InvalidSpec(f"{where}: takes no scalar argument")
    for scalar in scalars:
        if scalar.value > MAX_SCALAR:
            raise InvalidSpec(f"{where}: scalar {scalar.scalar} does not fit 256 bits")
    explicit: FheType | None = None
    if node.type is not None:
        try:
            explicit = FheType.parse(node.type)
        except ValueError as error:
            raise InvalidSpec(f"{where}: {error}") from None
    if op in EXPLICIT_TYPE_OPS and explicit is None:
        raise InvalidSpec(f"{where}: needs `type` (the result type)")
    expected_args = {
        Op.TrivialEncrypt: (0, 1, "one {scalar: ...}"),
        Op.Rand: (0, 0, "no arguments"),
        Op.RandBounded: (0, 1, "one {scalar: ...}"),
    }
    if op in expected_args:
        want_operands, want_scalars, shape = expected_args[op]
        if len(operands) != want_operands or len(scalars) != want_scalars:
            raise InvalidSpec(f"{where}: takes {shape}")
    else:
        count = len(node.args)
        if signature.arity is not None and count != signature.arity:
            raise InvalidSpec(f"{where}: takes {signature.arity} argument(s), got {count}")
        if signature.arity is None and count < signature.min_args:
            raise InvalidSpec(
                f"{where}: takes at least {signature.min_args} argument(s), got {count}"
            )
    types = [known[ref][1] for ref in operands]
    try:
        working = operand_type(op, types, explicit)
        result_type = result_type_of(op, working, explicit)
        require_support(backend, op, working)
        if op is Op.Cast:
            require_support(backend, op, result_type)
    except Irrecoverable as error:
        raise InvalidSpec(f"{where}: {error}") from None
    if explicit is not None and op not in EXPLICIT_TYPE_OPS and explicit is not result_type:
        raise InvalidSpec(
            f"{where}: `type` says {explicit.name} but the node computes {result_type.name}"
        )
    dependencies = tuple(known[ref][0] for ref in operands)
    dependencies += tuple(plaintext_operand(s.value) for s in scalars)
    if op in (Op.Rand, Op.RandBounded):  # a seed per node and batch: reproducible
        dependencies += (hashlib.sha3_256(context + b"/" + node.name.encode()).digest()[:16],)
    is_scalar = bool(scalars) or op in (Op.Rand, Op.RandBounded)
    handle = derive_handle(
        op, dependencies, context, chain_id, result_type, scalar=bool(scalars)
    ).raw
    row = ComputationRow(handle, int(result_type), int(op), dependencies, is_scalar=is_scalar)
    return handle, result_type, row


def check_stages(stages: list[str], available: tuple[str, ...], graph: Graph | None) -> None:
    """Stages the batch asks for must exist, the SNS stage needs something to publish
    (in an inline graph, at least one node marked ``output: true``), and the send
    stage commits what SNS published, so it comes with SNS."""
    unavailable = [s for s in stages if s not in available]
    if unavailable:
        raise InvalidSpec(
            f"stage(s) {', '.join(unavailable)} are not batch stages "
            f"(available: {', '.join(available)}; input proofs are verified by "
            "`fhe-job verify`, which takes no batch)"
        )
    if "sns" in stages and graph is not None and not any(n.output for n in graph.nodes):
        raise InvalidSpec(
            "stage sns publishes the graph's outputs, but no node is marked output: true"
        )
    if "send" in stages and "sns" not in stages:
        raise InvalidSpec(
            "stage send commits the digests stage sns publishes; list sns before send"
        )


@dataclass(frozen=True)
class Bounds:
    """What one batch may ask for (the operator's settings)."""

    max_cost: int
    max_outputs: int
    max_priority: int
    priority_namespaces: frozenset[str]


def check_bounds(spec: FheBatchSpec, planned: PlannedGraph, namespace: str, bounds: Bounds) -> None:
    """Refuse, with the figure and the limit, a batch that asks for too much: anyone who
    may create an FheBatch must not be able to buy hours of CPU, a GB of S3 or
    hundreds of gateway transactions, nor jump every queue."""
    cost = planned.cost
    if cost > bounds.max_cost:
        raise InvalidSpec(
            f"the batch costs an estimated {cost:,} PBS, over the limit of "
            f"{bounds.max_cost:,} (FHE_BATCH_MAX_COST); heaviest: "
            f"{describe_heaviest(planned.rows)}; split it into smaller batches"
        )
    if len(planned.outputs) > bounds.max_outputs:
        raise InvalidSpec(
            f"the batch marks {len(planned.outputs)} outputs, over the limit of "
            f"{bounds.max_outputs} (FHE_BATCH_MAX_OUTPUTS)"
        )
    if spec.priority > bounds.max_priority and namespace not in bounds.priority_namespaces:
        raise InvalidSpec(
            f"priority {spec.priority} is above {bounds.max_priority}, the highest allowed "
            f"in namespace {namespace!r} (FHE_MAX_PRIORITY; FHE_PRIORITY_NAMESPACES may "
            f"use any)"
        )
