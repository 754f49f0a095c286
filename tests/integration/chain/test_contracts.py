"""The contracts on a real anvil: the executor derives every result handle exactly as
``coprocessor.types.derive_handle`` does, and the confidential ERC20's transfer emits the
Ge / Sub / Add / IfThenElse graph the coprocessor computes."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import ContractCustomError

from coprocessor.chain.contracts import (
    decode_logs,
    deploy_host,
    deploy_token,
    executor_event_name,
    revert_selector,
)
from coprocessor.db.rows import check_batch
from coprocessor.types import FheType, Op, derive_handle, make_handle, plaintext_operand
from listeners.host_events import allowed_rows, check_derivation, computation_row

U64, U8, BOOL = FheType.Uint64, FheType.Uint8, FheType.Bool


def input_handle(fhe_type: FheType, chain_id: int) -> bytes:
    return make_handle(os.urandom(32), 0, chain_id, fhe_type).raw


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_HOST_RPC_URL"]))
    assert web3.is_connected()
    return web3


@pytest.fixture(scope="module")
def host(w3):
    return deploy_host(w3)


@pytest.fixture(scope="module")
def executor(host):
    return host.executor


def claimed(w3, host, caller: str, *handles: bytes) -> None:
    """What a wallet does with its inputs before using them (ACL.claimInput)."""
    for handle in handles:
        receipt = w3.eth.wait_for_transaction_receipt(
            host.acl.functions.claimInput(handle).transact({"from": caller})
        )
        assert receipt["status"] == 1


def reverts_with(call, sender: str, signature: str) -> None:
    with pytest.raises(ContractCustomError) as raised:
        call.transact({"from": sender})
    assert str(raised.value.data).startswith(revert_selector(signature)), raised.value.data


@pytest.fixture(scope="module")
def caller(w3) -> str:
    return w3.eth.accounts[0]


def emitted(w3, contract, call, sender):
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt["status"] == 1
    return decode_logs(contract, receipt["logs"])


def expected(op: Op, operands, caller: str, chain_id: int, fhe_type: FheType) -> bytes:
    return derive_handle(op, tuple(operands), bytes.fromhex(caller[2:]), chain_id, fhe_type).raw


@pytest.mark.parametrize("op", [Op(code) for code in range(20)], ids=lambda o: o.name)
def test_binary_ops_derive_the_same_handle(w3, host, executor, caller, op):
    chain = w3.eth.chain_id
    lhs, rhs = input_handle(U64, chain), input_handle(U64, chain)
    claimed(w3, host, caller, lhs, rhs)
    ((name, args),) = emitted(
        w3, executor, executor.functions.fheBinaryOp(int(op), lhs, rhs, b"\x00"), caller
    )
    assert name == executor_event_name(op) == op.event_name
    result_type = BOOL if op.signature.result == "bool" else U64
    assert (args["lhs"], args["rhs"], args["caller"]) == (lhs, rhs, caller)
    assert args["result"] == expected(op, (lhs, rhs), caller, chain, result_type)
    check_derivation(computation_row(name, args, b"\x00" * 32), bytes.fromhex(caller[2:]), chain)


@pytest.mark.parametrize("scalar", [0, 1, 255, 256, 2**64 - 1, 2**64, 2**256 - 1])
def test_scalar_operands_are_their_minimal_bytes(w3, host, executor, caller, scalar):
    chain = w3.eth.chain_id
    lhs = input_handle(U8, chain)
    claimed(w3, host, caller, lhs)
    ((_, args),) = emitted(
        w3,
        executor,
        executor.functions.fheBinaryOp(int(Op.Sub), lhs, scalar.to_bytes(32, "big"), b"\x01"),
        caller,
    )
    assert args["scalarByte"] == b"\x01"
    assert args["result"] == expected(Op.Sub, (lhs, plaintext_operand(scalar)), caller, chain, U8)
    check_derivation(
        computation_row("FheSub", args, b"\x00" * 32), bytes.fromhex(caller[2:]), chain
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=2**256 - 1))
def test_minimal_bytes_agree_with_python(executor, value):
    assert executor.functions.minimalBytes(value).call() == plaintext_operand(value)


def test_unary_cast_trivial_if_then_else_and_random(w3, host, executor, caller):
    chain = w3.eth.chain_id
    ct, flag = input_handle(U8, chain), input_handle(BOOL, chain)
    other = input_handle(U8, chain)
    claimed(w3, host, caller, ct, flag, other)
    f = executor.functions
    cases = [
        (f.fheNeg(ct), Op.Neg, (ct,), U8),
        (f.fheNot(ct), Op.Not, (ct,), U8),
        (f.cast(ct, int(U64)), Op.Cast, (ct,), U64),
        (f.trivialEncrypt(7, int(U64)), Op.TrivialEncrypt, (plaintext_operand(7),), U64),
        (f.trivialEncrypt(0, int(U8)), Op.TrivialEncrypt, (plaintext_operand(0),), U8),
        (f.fheIfThenElse(flag, ct, other), Op.IfThenElse, (flag, ct, other), U8),
    ]
    for call, op, operands, fhe_type in cases:
        ((name, args),) = emitted(w3, executor, call, caller)
        assert name == executor_event_name(op)
        assert args["result"] == expected(op, operands, caller, chain, fhe_type), op
        check_derivation(
            computation_row(name, args, b"\x00" * 32), bytes.fromhex(caller[2:]), chain
        )
    ((_, rand),) = emitted(w3, executor, f.fheRand(int(U64)), caller)
    assert rand["result"] == expected(Op.Rand, (rand["seed"],), caller, chain, U64)
    ((_, bounded),) = emitted(w3, executor, f.fheRandBounded(16, int(U8)), caller)
    assert bounded["seed"] != rand["seed"]  # every call gets its own seed
    assert bounded["result"] == expected(
        Op.RandBounded, (plaintext_operand(16), bounded["seed"]), caller, chain, U8
    )
    for name, args in (("FheRand", rand), ("FheRandBounded", bounded)):
        check_derivation(
            computation_row(name, args, b"\x00" * 32), bytes.fromhex(caller[2:]), chain
        )


def test_bad_operands_revert_with_a_named_error(w3, host, executor, caller):
    chain = w3.eth.chain_id
    small, wide = input_handle(U8, chain), input_handle(U64, chain)
    f = executor.functions
    reverts_with(
        f.fheBinaryOp(int(Op.Add), small, small, b"\x00"), caller, "NotAllowed(bytes32,address)"
    )  # not claimed: the caller may not use it
    claimed(w3, host, caller, small, wide)
    reverts_with(
        f.fheBinaryOp(int(Op.Add), small, wide, b"\x00"), caller, "TypeMismatch(uint8,uint8)"
    )
    reverts_with(f.fheIfThenElse(small, small, small), caller, "TypeMismatch(uint8,uint8)")
    reverts_with(f.cast(small, 42), caller, "UnknownType(uint8)")
    reverts_with(f.trivialEncrypt(1, 12), caller, "UnknownType(uint8)")
    reverts_with(
        host.acl.functions.claimInput(small), w3.eth.accounts[3], "AlreadyClaimed(bytes32)"
    )


def test_erc20_transfer_emits_the_transfer_graph(w3, host, executor):
    owner, alice, bob = w3.eth.accounts[:3]
    acl = host.acl
    token = deploy_token(w3, host, sender=owner)
    emitted(w3, executor, token.functions.mint(alice, 1000), owner)
    amount = input_handle(U64, w3.eth.chain_id)
    reverts_with(token.functions.transfer(bob, amount), alice, "NotAllowed(bytes32)")
    claimed(w3, host, alice, amount)
    # Alice holds the amount but has not shared it with the token: the executor refuses.
    reverts_with(token.functions.transfer(bob, amount), alice, "NotAllowed(bytes32,address)")
    emitted(w3, acl, acl.functions.allow(amount, token.address), alice)
    reverts_with(token.functions.transfer(alice, amount), alice, "SelfTransfer()")
    receipt = w3.eth.wait_for_transaction_receipt(
        token.functions.transfer(bob, amount).transact({"from": alice})
    )
    ops = decode_logs(executor, receipt["logs"])
    assert [name for name, _ in ops] == [
        "TrivialEncrypt",
        "FheGe",
        "FheSub",
        "FheAdd",
        "FheIfThenElse",
        "FheIfThenElse",
    ]
    args = [a for _, a in ops]
    zero, ge, sub, add, new_alice, new_bob = args
    alice_before = ge["lhs"]
    assert ge["rhs"] == sub["rhs"] == add["rhs"] == amount
    assert add["lhs"] == zero["result"]  # bob had no balance yet
    assert (new_alice["control"], new_alice["ifTrue"], new_alice["ifFalse"]) == (
        ge["result"],
        sub["result"],
        alice_before,
    )
    assert (new_bob["control"], new_bob["ifTrue"], new_bob["ifFalse"]) == (
        ge["result"],
        add["result"],
        zero["result"],
    )
    # The host listener's translation: every event a row whose handle re-derives, and
    # the rows of one transaction form a valid batch.
    tx = bytes(receipt["transactionHash"])
    rows = [computation_row(name, a, tx) for name, a in ops]
    for row in rows:
        check_derivation(row, bytes.fromhex(token.address[2:]), w3.eth.chain_id)
    assert [r.output_handle for r in check_batch(rows)][-2:] == [
        new_alice["result"],
        new_bob["result"],
    ]
    assert token.functions.balanceOf(alice).call() == new_alice["result"]
    assert token.functions.balanceOf(bob).call() == new_bob["result"]
    acl_events = decode_logs(acl, receipt["logs"])
    decryptable = [
        h for name, a in acl_events if name == "AllowedForDecryption" for h in a["handlesList"]
    ]
    assert decryptable == [new_alice["result"], new_bob["result"]]
    assert acl.functions.isAllowed(new_bob["result"], bob).call()
    allowed = [r for name, a in acl_events for r in allowed_rows(name, a, tx)]
    assert {(r.handle, r.account_address) for r in allowed if r.event_type == 0} >= {
        (new_alice["result"], bytes.fromhex(alice[2:])),
        (new_bob["result"], bytes.fromhex(bob[2:])),
    }


def test_nobody_else_can_compute_on_or_reveal_a_balance(w3, host, executor):
    owner, alice, mallory = w3.eth.accounts[0], w3.eth.accounts[1], w3.eth.accounts[4]
    token = deploy_token(w3, host, sender=owner)
    emitted(w3, executor, token.functions.mint(alice, 10), owner)
    balance = token.functions.balanceOf(alice).call()
    reverts_with(
        executor.functions.fheBinaryOp(int(Op.Add), balance, (0).to_bytes(32, "big"), b"\x01"),
        mallory,
        "NotAllowed(bytes32,address)",
    )
    reverts_with(host.acl.functions.allow(balance, mallory), mallory, "NotAllowed(address,bytes32)")
    reverts_with(
        host.acl.functions.allowForDecryption([balance]), mallory, "NotAllowed(address,bytes32)"
    )
    reverts_with(host.acl.functions.claimInput(balance), mallory, "NotAnInput(bytes32)")
    assert host.acl.functions.isAllowed(balance, alice).call()
