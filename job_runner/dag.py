"""A batch's computations as a graph: what depends on what, and who runs which part.

Pure functions over database rows, so the shapes that matter (cycles, inputs from
outside the batch, the split between an Indexed Job's pods) are unit-tested without
a database or a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from coprocessor.db.queries import BatchComputation
from coprocessor.db.rows import split_dependencies
from coprocessor.errors import InvalidRow
from coprocessor.fhe.engine import OpRequest
from coprocessor.toposort import topological_order
from coprocessor.types import FheType, Op


def label(handle: bytes) -> str:
    return "0x" + handle.hex()


@dataclass(frozen=True)
class Node:
    """One computation: its operands by handle, its plaintext operands, its state."""

    handle: bytes
    op: Op
    result_type: FheType
    operands: tuple[bytes, ...]
    plaintexts: tuple[bytes, ...]
    chain: bytes | None = None
    completed: bool = False
    error: str | None = None

    def request(self, ciphertexts: Sequence[bytes]) -> OpRequest:
        """The engine request, given the operands' ciphertexts in order.

        Plaintexts are big-endian integers, except Rand's and RandBounded's last one,
        which is the seed (bytes, used as is).
        """
        numbers = tuple(int.from_bytes(p, "big") for p in self.plaintexts)
        seed = b""
        if self.op in (Op.Rand, Op.RandBounded):
            if not self.plaintexts:
                raise InvalidRow(
                    f"computation {label(self.handle)}: {self.op.event_name} has no seed"
                )
            seed, numbers = self.plaintexts[-1], numbers[:-1]
        return OpRequest(self.op, tuple(ciphertexts), numbers, self.result_type, seed)


def node_from_row(row: BatchComputation) -> Node:
    try:
        op = Op(row.fhe_operation)
        result_type = FheType(row.output_type)
    except ValueError as error:
        raise InvalidRow(f"computation {label(row.output_handle)}: {error}") from None
    operands, plaintexts = split_dependencies(op, row.dependencies, row.is_scalar)
    error = (row.error_message or "failed") if row.is_error else None
    return Node(
        row.output_handle,
        op,
        result_type,
        operands,
        plaintexts,
        row.dependence_chain_id,
        row.is_completed,
        error,
    )


class GraphCycle(InvalidRow):
    """The batch's computations depend on each other in a loop."""


@dataclass
class Graph:
    """Nodes in dependency order, who consumes each, and the inputs from outside."""

    nodes: dict[bytes, Node]
    order: list[bytes]
    dependents: dict[bytes, list[bytes]] = field(default_factory=dict)
    external: frozenset[bytes] = frozenset()

    def needs(self, handle: bytes) -> set[bytes]:
        """Distinct operand handles of a node (inside or outside the batch)."""
        return set(self.nodes[handle].operands)

    def downstream(self, handle: bytes) -> set[bytes]:
        """Every node that consumes ``handle``, directly or through others."""
        seen: set[bytes] = set()
        stack = list(self.dependents.get(handle, ()))
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.dependents.get(current, ()))
        return seen


def build_graph(nodes: Iterable[Node]) -> Graph:
    """Order the nodes (Kahn), or raise GraphCycle naming the nodes on the loop."""
    by_handle: dict[bytes, Node] = {}
    for node in nodes:
        if node.handle in by_handle:
            raise InvalidRow(f"computation {label(node.handle)} appears twice in the batch")
        by_handle[node.handle] = node
    dependents: dict[bytes, list[bytes]] = {h: [] for h in by_handle}
    external: set[bytes] = set()
    for handle, node in by_handle.items():
        external.update(o for o in node.operands if o not in by_handle)
        for operand in {o for o in node.operands if o in by_handle}:
            dependents[operand].append(handle)
    order, stuck = topological_order({h: n.operands for h, n in by_handle.items()})
    if stuck:
        shown = ", ".join(label(h) for h in stuck[:3])
        more = f" and {len(stuck) - 3} more" if len(stuck) > 3 else ""
        raise GraphCycle(f"dependency cycle among {len(stuck)} computation(s): {shown}{more}")
    return Graph(by_handle, order, dependents, frozenset(external))


def chains(graph: Graph) -> list[list[bytes]]:
    """Groups that must run in one pod: nodes linked by an edge inside the batch or
    sharing a dependence chain id. Each group is in dependency order; groups are
    ordered by their first node, so every pod computes the same list."""
    parent = {h: h for h in graph.nodes}

    def root(handle: bytes) -> bytes:
        while parent[handle] != handle:
            parent[handle] = parent[parent[handle]]
            handle = parent[handle]
        return handle

    def join(a: bytes, b: bytes) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of_chain: dict[bytes, bytes] = {}
    for handle, node in graph.nodes.items():
        for operand in node.operands:
            if operand in graph.nodes:
                join(handle, operand)
        if node.chain is not None:
            join(handle, first_of_chain.setdefault(node.chain, handle))
    groups: dict[bytes, list[bytes]] = {}
    for handle in graph.order:
        groups.setdefault(root(handle), []).append(handle)
    return list(groups.values())


def partition(graph: Graph, index: int, count: int) -> set[bytes]:
    """The nodes pod ``index`` of ``count`` computes: whole chains, balanced by size.

    Greedy: the largest chain goes to the least-loaded pod (ties: lower index). The
    result depends only on the graph, so the pods of an Indexed Job agree on it
    without talking to each other.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"pod index {index} is outside 0..{count - 1}")
    groups = sorted(chains(graph), key=lambda g: (-len(g), _stable_key(g)))
    load = [0] * count
    mine: set[bytes] = set()
    for group in groups:
        target = min(range(count), key=lambda i: (load[i], i))
        load[target] += len(group)
        if target == index:
            mine.update(group)
    return mine


def _stable_key(group: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(sorted(group))).digest()


def restrict(graph: Graph, keep: set[bytes]) -> Graph:
    """The subgraph of ``keep``; nodes outside it become external inputs."""
    return build_graph(graph.nodes[h] for h in graph.order if h in keep)
