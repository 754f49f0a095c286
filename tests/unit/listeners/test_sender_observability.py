"""The sender's transaction series: ``MeteredGateway`` answers what the gateway client
answers and counts this process's transactions as they go out and settle."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from coprocessor.chain.calls import AllowPublicDecrypt, Commit
from coprocessor.chain.gateway import NonceTooLow, Receipt, SignedCall
from coprocessor.observability import Heartbeat
from listeners.sender import MeteredGateway

COMMIT = "addCiphertextMaterial"
PUBLIC = "allowPublicDecrypt"


def signed(call, n: int) -> SignedCall:
    return SignedCall(call, n, bytes([n]) * 32, b"raw")


def commit(n: int) -> SignedCall:
    return signed(Commit(bytes([n]) * 32, 7, bytes(32), bytes(32)), n)


class FakeGateway:
    """The chain as the Committer sees it: receipts and known hashes set by the test."""

    address = "0x" + "ab" * 20

    def __init__(self) -> None:
        self.receipts: dict[bytes, Receipt] = {}
        self.known: set[bytes] = set()
        self.refuse: Exception | None = None

    def broadcast(self, submission: SignedCall) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.known.add(submission.tx_hash)

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        return self.receipts.get(tx_hash)

    def is_known(self, tx_hash: bytes) -> bool:
        return tx_hash in self.known

    def next_nonce(self) -> int:
        return 5


class Series:
    """The sender's samples, as deltas since the test began (the registry is global)."""

    def __init__(self) -> None:
        self.start = self.read()

    @staticmethod
    def read() -> dict[str, float]:
        values = {"inflight": REGISTRY.get_sample_value("fhe_sender_inflight_transactions")}
        for kind in (COMMIT, PUBLIC):
            values[f"gas {kind}"] = REGISTRY.get_sample_value(
                "fhe_sender_gas_used_total", {"kind": kind}
            )
            for outcome in ("succeeded", "reverted", "dropped"):
                values[f"{kind} {outcome}"] = REGISTRY.get_sample_value(
                    "fhe_sender_transactions_total", {"kind": kind, "outcome": outcome}
                )
        return {k: v or 0.0 for k, v in values.items()}

    def moved(self) -> dict[str, float]:
        now = self.read()
        return {k: now[k] - self.start[k] for k in now if now[k] != self.start[k]}


def test_a_transaction_is_in_flight_from_broadcast_to_receipt():
    chain, clock = FakeGateway(), [0.0]
    beat = Heartbeat("sender", 60, lambda: clock[0])
    gateway = MeteredGateway(chain, beat)
    series = Series()
    first, second = commit(1), signed(AllowPublicDecrypt(bytes(32)), 2)
    clock[0] = 10.0
    gateway.broadcast(first)
    gateway.broadcast(second)
    assert beat.last == 10.0  # a pass at work is alive
    assert series.moved() == {"inflight": 2}
    assert gateway.receipt(first.tx_hash) is None  # not mined yet
    chain.receipts[first.tx_hash] = Receipt(first.tx_hash, True, 9, 21_000)
    chain.receipts[second.tx_hash] = Receipt(second.tx_hash, False, 9, 30_000)
    assert gateway.receipt(first.tx_hash) == chain.receipts[first.tx_hash]
    gateway.receipt(second.tx_hash)
    gateway.receipt(second.tx_hash)  # asked again (a row not marked yet): counted once
    assert series.moved() == {
        f"gas {COMMIT}": 21_000,
        f"{COMMIT} succeeded": 1,
        f"gas {PUBLIC}": 30_000,
        f"{PUBLIC} reverted": 1,
    }


def test_a_transaction_the_node_lost_is_dropped_and_one_it_never_took_is_not_counted():
    chain = FakeGateway()
    gateway = MeteredGateway(chain)
    series = Series()
    lost = commit(3)
    gateway.broadcast(lost)
    chain.known.clear()  # the node restarted and forgot its mempool
    assert gateway.is_known(lost.tx_hash) is False
    assert series.moved() == {f"{COMMIT} dropped": 1}

    chain.refuse = NonceTooLow("nonce too low")
    taken = commit(4)
    with pytest.raises(NonceTooLow):
        gateway.broadcast(taken)
    assert series.moved() == {f"{COMMIT} dropped": 1}  # not in flight
    assert gateway.is_known(taken.tx_hash) is False  # never out there: signed again
    assert series.moved() == {f"{COMMIT} dropped": 1}


def test_a_broadcast_that_raised_but_landed_is_in_flight():
    chain = FakeGateway()
    gateway = MeteredGateway(chain)
    series = Series()
    retried = commit(5)
    chain.refuse = NonceTooLow("a retried broadcast whose first try landed")
    with pytest.raises(NonceTooLow):
        gateway.broadcast(retried)
    chain.known.add(retried.tx_hash)
    assert gateway.is_known(retried.tx_hash) is True
    assert series.moved() == {"inflight": 1}
    chain.receipts[retried.tx_hash] = Receipt(retried.tx_hash, True, 3, 50_000)
    gateway.receipt(retried.tx_hash)
    assert series.moved() == {f"gas {COMMIT}": 50_000, f"{COMMIT} succeeded": 1}


def test_other_calls_and_attributes_pass_through():
    chain = FakeGateway()
    gateway = MeteredGateway(chain)
    assert gateway.address == chain.address
    assert gateway.next_nonce() == 5
    foreign = bytes([9]) * 32  # recorded by an earlier process: not ours to count
    chain.receipts[foreign] = Receipt(foreign, True, 1, 1)
    series = Series()
    assert gateway.receipt(foreign) is chain.receipts[foreign]
    assert series.moved() == {}
