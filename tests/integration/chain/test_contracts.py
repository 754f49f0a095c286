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

from coprocessor.chain.contracts import decode_logs, deploy, executor_event_name
from coprocessor.db.rows import check_batch
from coprocessor.types import FheType, Op, derive_handle, make_handle
from listeners.host_events import allowed_rows, check_derivation, computation_row

U64, U8, BOOL = FheType.Uint64, FheType.Uint8, FheType.Bool


def minimal(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def input_handle(fhe_type: FheType, chain_id: int) -> bytes:
    return make_handle(os.urandom(32), 0, chain_id, fhe_type).raw


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_HOST_RPC_URL"]))
    assert web3.is_connected()
    return web3


@pytest.fixture(scope="module")
def executor(w3):
    return deploy(w3, "FheExecutor")


@pytest.fixture(scope="module")
def caller(w3) -> str:
    return w3.eth.accounts[0]


def emitted(w3, contract, call, sender):
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt["status"] == 1
    return decode_logs(contract, receipt["logs"])


def expected(op: Op, operands, caller: str, chain_id: int, fhe_type: FheType) -> bytes:
    return derive_handle(op, tuple(operands), bytes.fromhex(caller[2:]), chain_id,
                         fhe_type).raw


@pytest.mark.parametrize("op", [Op(code) for code in range(20)], ids=lambda o: o.name)
def test_binary_ops_derive_the_same_handle(w3, executor, caller, op):
    chain = w3.eth.chain_id
    lhs, rhs = input_handle(U64, chain), input_handle(U64, chain)
    ((name, args),) = emitted(w3, executor, executor.functions.fheBinaryOp(
        int(op), lhs, rhs, b"\x00"), caller)
    assert name == executor_event_name(op) == op.event_name
    result_type = BOOL if op.signature.result == "bool" else U64
    assert (args["lhs"], args["rhs"], args["caller"]) == (lhs, rhs, caller)
    assert args["result"] == expected(op, (lhs, rhs), caller, chain, result_type)
    check_derivation(computation_row(name, args, b"\x00" * 32), bytes.fromhex(caller[2:]),
                     chain)


@pytest.mark.parametrize("scalar", [0, 1, 255, 256, 2**64 - 1, 2**64, 2**256 - 1])
def test_scalar_operands_are_their_minimal_bytes(w3, executor, caller, scalar):
    chain = w3.eth.chain_id
    lhs = input_handle(U8, chain)
    ((_, args),) = emitted(w3, executor, executor.functions.fheBinaryOp(
        int(Op.Sub), lhs, scalar.to_bytes(32, "big"), b"\x01"), caller)
    assert args["scalarByte"] == b"\x01"
    assert args["result"] == expected(Op.Sub, (lhs, minimal(scalar)), caller, chain, U8)
    check_derivation(computation_row("FheSub", args, b"\x00" * 32),
                     bytes.fromhex(caller[2:]), chain)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=2**256 - 1))
def test_minimal_bytes_agree_with_python(executor, value):
    assert executor.functions.minimalBytes(value).call() == minimal(value)


def test_unary_cast_trivial_if_then_else_and_random(w3, executor, caller):
    chain = w3.eth.chain_id
    ct, flag = input_handle(U8, chain), input_handle(BOOL, chain)
    other = input_handle(U8, chain)
    f = executor.functions
    cases = [
        (f.fheNeg(ct), Op.Neg, (ct,), U8),
        (f.fheNot(ct), Op.Not, (ct,), U8),
        (f.cast(ct, int(U64)), Op.Cast, (ct,), U64),
        (f.trivialEncrypt(7, int(U64)), Op.TrivialEncrypt, (minimal(7),), U64),
        (f.trivialEncrypt(0, int(U8)), Op.TrivialEncrypt, (minimal(0),), U8),
        (f.fheIfThenElse(flag, ct, other), Op.IfThenElse, (flag, ct, other), U8),
    ]
    for call, op, operands, fhe_type in cases:
        ((name, args),) = emitted(w3, executor, call, caller)
        assert name == executor_event_name(op)
        assert args["result"] == expected(op, operands, caller, chain, fhe_type), op
        check_derivation(computation_row(name, args, b"\x00" * 32),
                         bytes.fromhex(caller[2:]), chain)
    ((_, rand),) = emitted(w3, executor, f.fheRand(int(U64)), caller)
    assert rand["result"] == expected(Op.Rand, (rand["seed"],), caller, chain, U64)
    ((_, bounded),) = emitted(w3, executor, f.fheRandBounded(16, int(U8)), caller)
    assert bounded["seed"] != rand["seed"]  # every call gets its own seed
    assert bounded["result"] == expected(Op.RandBounded, (minimal(16), bounded["seed"]),
                                         caller, chain, U8)
    for name, args in (("FheRand", rand), ("FheRandBounded", bounded)):
        check_derivation(computation_row(name, args, b"\x00" * 32),
                         bytes.fromhex(caller[2:]), chain)


def test_mismatched_types_revert_with_a_named_error(w3, executor, caller):
    chain = w3.eth.chain_id
    with pytest.raises(ContractCustomError):
        executor.functions.fheBinaryOp(int(Op.Add), input_handle(U8, chain),
                                       input_handle(U64, chain), b"\x00").transact(
                                           {"from": caller})
    with pytest.raises(ContractCustomError):
        executor.functions.fheIfThenElse(input_handle(U8, chain), input_handle(U8, chain),
                                         input_handle(U8, chain)).transact({"from": caller})


def test_erc20_transfer_emits_the_transfer_graph(w3, executor):
    owner, alice, bob = w3.eth.accounts[:3]
    acl = deploy(w3, "ACL")
    token = deploy(w3, "ConfidentialERC20", executor.address, acl.address, sender=owner)
    emitted(w3, executor, token.functions.mint(alice, 1000), owner)
    amount = input_handle(U64, w3.eth.chain_id)
    with pytest.raises(ContractCustomError):  # not allowed to use the amount yet
        token.functions.transfer(bob, amount).transact({"from": alice})
    emitted(w3, acl, acl.functions.allow(amount, alice), alice)
    with pytest.raises(ContractCustomError):  # a transfer to oneself would mint
        token.functions.transfer(alice, amount).transact({"from": alice})
    receipt = w3.eth.wait_for_transaction_receipt(
        token.functions.transfer(bob, amount).transact({"from": alice}))
    ops = decode_logs(executor, receipt["logs"])
    assert [name for name, _ in ops] == ["TrivialEncrypt", "FheGe", "FheSub", "FheAdd",
                                         "FheIfThenElse", "FheIfThenElse"]
    args = [a for _, a in ops]
    zero, ge, sub, add, new_alice, new_bob = args
    alice_before = ge["lhs"]
    assert ge["rhs"] == sub["rhs"] == add["rhs"] == amount
    assert add["lhs"] == zero["result"]  # bob had no balance yet
    assert (new_alice["control"], new_alice["ifTrue"], new_alice["ifFalse"]) == \
        (ge["result"], sub["result"], alice_before)
    assert (new_bob["control"], new_bob["ifTrue"], new_bob["ifFalse"]) == \
        (ge["result"], add["result"], zero["result"])
    # The host listener's translation: every event a row whose handle re-derives, and
    # the rows of one transaction form a valid batch.
    tx = bytes(receipt["transactionHash"])
    rows = [computation_row(name, a, tx) for name, a in ops]
    for row in rows:
        check_derivation(row, bytes.fromhex(token.address[2:]), w3.eth.chain_id)
    assert [r.output_handle for r in check_batch(rows)][-2:] == \
        [new_alice["result"], new_bob["result"]]
    assert token.functions.balanceOf(alice).call() == new_alice["result"]
    assert token.functions.balanceOf(bob).call() == new_bob["result"]
    acl_events = decode_logs(acl, receipt["logs"])
    decryptable = [h for name, a in acl_events if name == "AllowedForDecryption"
                   for h in a["handlesList"]]
    assert decryptable == [new_alice["result"], new_bob["result"]]
    assert acl.functions.isAllowed(new_bob["result"], bob).call()
    allowed = [r for name, a in acl_events for r in allowed_rows(name, a, tx)]
    assert {(r.handle, r.account_address) for r in allowed if r.event_type == 0} >= {
        (new_alice["result"], bytes.fromhex(alice[2:])),
        (new_bob["result"], bytes.fromhex(bob[2:]))}
