"""Which node may start now: the compute stage's bookkeeping, without any I/O.

The executor asks ``next_batch`` for work when a worker is free and reports back
with ``finished``, ``failed``, ``held_elsewhere`` and ``arrived``. Keeping this pure
makes the scheduling rules (dependencies, the two strategies, failure propagation)
testable as plain tables.
"""

from __future__ import annotations

from enum import StrEnum

from .dag import Graph, chains, label


class Strategy(StrEnum):
    """The reference scheduler's two policies.

    * ``max_parallelism``: any ready node may start, so independent work fills every
      worker (the default; best wall time on CPU).
    * ``max_locality``: at most one node of a dependence chain runs at a time, so a
      chain's intermediate ciphertexts stay with one worker, one after another (less
      memory and device traffic; chains still run side by side).
    """

    MAX_PARALLELISM = "max_parallelism"
    MAX_LOCALITY = "max_locality"


class Schedule:
    def __init__(self, graph: Graph, available: set[bytes] | None = None) -> None:
        self.graph = graph
        self.chain_of = {h: i for i, group in enumerate(chains(graph)) for h in group}
        self.position = {h: i for i, h in enumerate(graph.order)}
        self.available: set[bytes] = set(available or ())  # stored ciphertexts
        self.done: set[bytes] = set()
        self.failed: dict[bytes, str] = {}
        self.running: set[bytes] = set()
        self.elsewhere: set[bytes] = set()  # claimed by another worker; awaited
        self.pending: set[bytes] = set()
        for handle, node in graph.nodes.items():
            if node.completed:
                self.done.add(handle)
                self.available.add(handle)
            elif node.error is not None:
                self.failed[handle] = node.error
            else:
                self.pending.add(handle)
        for handle in list(self.failed):
            self._fail_downstream(handle)

    # --- questions -------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not (self.pending or self.running or self.elsewhere)

    def awaited(self) -> set[bytes]:
        """Handles this pod waits for and cannot make itself: inputs from outside the
        batch that are not stored yet, and nodes another worker is computing."""
        wanted = {
            o
            for h in self.pending
            for o in self.graph.nodes[h].operands
            if o not in self.graph.nodes and o not in self.available
        }
        return wanted | self.elsewhere

    def is_ready(self, handle: bytes) -> bool:
        return all(o in self.available for o in self.graph.nodes[handle].operands)

    def next_batch(self, free_workers: int, strategy: Strategy) -> list[bytes]:
        """Up to ``free_workers`` ready nodes, earliest in dependency order first."""
        busy_chains = {self.chain_of[h] for h in self.running | self.elsewhere}
        chosen: list[bytes] = []
        for handle in sorted(self.pending, key=self.position.__getitem__):
            if len(chosen) >= free_workers:
                break
            if not self.is_ready(handle):
                continue
            if strategy is Strategy.MAX_LOCALITY:
                chain = self.chain_of[handle]
                if chain in busy_chains:
                    continue
                busy_chains.add(chain)
            chosen.append(handle)
        return chosen

    # --- events ----------------------------------------------------------------------
    def started(self, handle: bytes) -> None:
        self.pending.remove(handle)
        self.running.add(handle)

    def finished_node(self, handle: bytes) -> None:
        """Computed here, or found already computed."""
        self.running.discard(handle)
        self.elsewhere.discard(handle)
        self.pending.discard(handle)
        self.done.add(handle)
        self.available.add(handle)

    def held_elsewhere(self, handle: bytes) -> None:
        self.running.discard(handle)
        self.elsewhere.add(handle)

    def failed_node(self, handle: bytes, reason: str) -> list[bytes]:
        """Record the failure; returns the nodes that can now never run (they are
        failed too, with a reason naming this input)."""
        self.running.discard(handle)
        self.elsewhere.discard(handle)
        self.pending.discard(handle)
        self.failed[handle] = reason
        return self._fail_downstream(handle)

    def arrived(self, handle: bytes) -> None:
        """An awaited handle is now stored."""
        if handle in self.elsewhere:
            self.finished_node(handle)
        else:
            self.available.add(handle)

    def input_failed(self, handle: bytes, reason: str) -> list[bytes]:
        """An input from outside the batch failed: its consumers here fail with it.
        Returns the direct consumers (the ones to mark in the database)."""
        direct = [h for h in self.pending if handle in self.graph.nodes[h].operands]
        for consumer in direct:
            self.failed_node(consumer, f"input {label(handle)} failed: {reason}")
        return direct

    def _fail_downstream(self, handle: bytes) -> list[bytes]:
        reason = f"input {label(handle)} failed: {self.failed[handle]}"
        lost = [
            h for h in self.graph.downstream(handle) if h in self.pending and h not in self.failed
        ]
        for dependent in lost:
            self.pending.discard(dependent)
            self.failed[dependent] = reason
        return lost
