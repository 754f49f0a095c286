"""Host events -> rows: malformed events give one clear error; good ones re-derive."""

import json
import os
from pathlib import Path

import pytest

from coprocessor.types import FheType, Op, derive_handle, host_preimage, make_handle
from listeners.host_events import (
    ALLOWED_FOR_DECRYPTION,
    DELEGATED,
    IGNORED_EVENTS,
    REVOKED,
    UndecodableEvent,
    allowed_rows,
    batch_parts,
    check_derivation,
    computation_row,
    delegation_row,
    verified_input,
)

TX = bytes.fromhex("ab" * 32)
VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "host_handles.json").read_text())
CHAIN = VECTORS["chain_id"]
ACL = bytes.fromhex(VECTORS["acl"][2:])
BYTES_FIELDS = {"lhs", "rhs", "scalarByte", "result", "ct", "control", "ifTrue", "ifFalse", "seed"}


def handle(fhe_type=FheType.Uint8) -> bytes:
    return make_handle(os.urandom(32), 0, CHAIN, fhe_type).raw


def as_decoded(args: dict) -> dict:
    """The vector's JSON args as web3 decodes a log: bytes for bytesN, ints, addresses."""
    return {k: bytes.fromhex(v[2:]) if k in BYTES_FIELDS else v for k, v in args.items()}


@pytest.mark.parametrize(
    "vector",
    VECTORS["vectors"],
    ids=lambda v: f"{v['event']}-{v['kind']}-{v['args']['result'][-4:]}",
)
def test_every_handle_the_real_host_emitted_re_derives(vector):
    """Known answers from a real anvil run of Zama's FHEVMExecutor: the row re-derives
    to the emitted handle, and our preimage is byte for byte the host's."""
    row = computation_row(vector["event"], as_decoded(vector["args"]), TX)
    assert "0x" + row.output_handle.hex() == vector["handle"]
    check_derivation(row, ACL, CHAIN)
    preimage = host_preimage(
        Op(row.fhe_operation),
        row.dependencies,
        ACL,
        CHAIN,
        FheType(row.output_type),
        scalar=row.is_scalar,
    )
    assert "0x" + preimage.hex() == vector["preimage"]


def test_the_vectors_cover_every_op_kind_the_host_emits():
    kinds = {v["kind"] for v in VECTORS["vectors"]}
    assert kinds >= {
        "binary",
        "binary_scalar",
        "unary",
        "cast",
        "trivial_encrypt",
        "if_then_else",
        "rand",
        "rand_bounded",
    }


def test_a_scalar_and_an_encrypted_operand_never_share_a_handle():
    lhs = handle()
    word = handle()  # the same 32 bytes, once as a handle and once as a plaintext
    encrypted = derive_handle(Op.Add, (lhs, word), ACL, CHAIN, FheType.Uint8, scalar=False)
    plaintext = derive_handle(Op.Add, (lhs, word), ACL, CHAIN, FheType.Uint8, scalar=True)
    assert encrypted != plaintext


def test_a_forged_result_or_another_acl_is_refused():
    vector = next(v for v in VECTORS["vectors"] if v["kind"] == "binary")
    args = as_decoded(vector["args"])
    args["result"] = handle()
    with pytest.raises(UndecodableEvent, match="is not the derived handle"):
        check_derivation(computation_row(vector["event"], args, TX), ACL, CHAIN)
    row = computation_row(vector["event"], as_decoded(vector["args"]), TX)
    with pytest.raises(UndecodableEvent, match="is not the derived handle"):
        check_derivation(row, b"\x01" * 20, CHAIN)
    with pytest.raises(UndecodableEvent, match="is not the derived handle"):
        check_derivation(row, ACL, CHAIN + 1)


def test_verify_input_names_the_handle_the_verify_stage_must_provide():
    h = handle(FheType.Uint64)
    args = {
        "caller": "0x" + "22" * 20,
        "inputHandle": h,
        "userAddress": "0x" + "33" * 20,
        "inputProof": b"proof",
        "inputType": 5,
        "result": h,
    }
    found = verified_input("VerifyInput", args, TX)
    assert (found.handle, found.contract_address, found.user_address, found.input_type) == (
        h,
        b"\x22" * 20,
        b"\x33" * 20,
        5,
    )
    with pytest.raises(UndecodableEvent, match="is not a Uint8 handle"):
        verified_input("VerifyInput", {**args, "inputType": 2}, TX)
    with pytest.raises(UndecodableEvent, match="missing or malformed"):
        verified_input("VerifyInput", {**args, "userAddress": "0x12"}, TX)


def test_delegations_and_administrative_events():
    args = {
        "delegator": "0x" + "44" * 20,
        "delegate": "0x" + "55" * 20,
        "contractAddress": "0x" + "66" * 20,
        "delegationCounter": 3,
        "oldExpirationDate": 0,
        "newExpirationDate": 2**40,
    }
    granted = delegation_row(DELEGATED, args, TX)
    assert (granted.delegation_counter, granted.new_expiration) == (3, 2**40)
    revoked = delegation_row(
        REVOKED, {k: v for k, v in args.items() if k != "newExpirationDate"}, TX
    )
    assert revoked.new_expiration is None
    for name in IGNORED_EVENTS:
        assert allowed_rows(name, {}, TX) == []
    with pytest.raises(UndecodableEvent, match="missing or malformed"):
        delegation_row(DELEGATED, {**args, "delegate": None}, TX)


def bad_type_handle() -> bytes:
    raw = bytearray(handle())
    raw[30] = 99
    return bytes(raw)


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("FheTeleport", {"result": handle()}, "'FheTeleport' is not an executor event"),
        ("FheAdd", {"result": handle(), "lhs": handle()}, "field 'rhs' is missing"),
        (
            "FheAdd",
            {"result": b"\x01" * 31, "lhs": handle(), "rhs": handle()},
            "field 'result': a handle is 32 bytes, got 31",
        ),
        ("FheNot", {"result": bad_type_handle(), "ct": handle()}, "type byte 99 is out of range"),
        ("FheNot", {"result": handle(), "ct": "0x12"}, "field 'ct'"),
        ("Cast", {"result": handle(), "ct": handle(), "toType": 42}, "type code 42"),
        (
            "TrivialEncrypt",
            {"result": handle(), "pt": "seven", "toType": 2},
            "missing or malformed field",
        ),
    ],
)
def test_malformed_executor_events_are_one_clear_error(name, args, message):
    with pytest.raises(UndecodableEvent) as rejected:
        computation_row(name, args, TX)
    assert message in str(rejected.value)
    assert "0x" + TX.hex() in str(rejected.value)


def test_acl_events():
    h = handle()
    (row,) = allowed_rows(
        "Allowed", {"caller": "0x" + "22" * 20, "account": "0x" + "33" * 20, "handle": h}, TX
    )
    assert (row.handle, row.account_address, row.event_type) == (h, b"\x33" * 20, 0)
    rows = allowed_rows(
        "AllowedForDecryption", {"caller": "0x" + "22" * 20, "handlesList": [h, h]}, TX
    )
    assert [r.event_type for r in rows] == [ALLOWED_FOR_DECRYPTION] * 2
    with pytest.raises(UndecodableEvent, match="missing or malformed"):
        allowed_rows("Allowed", {"caller": "0x22", "handle": h}, TX)
    with pytest.raises(UndecodableEvent, match="not an ACL event"):
        allowed_rows("Denied", {}, TX)


@pytest.mark.parametrize(
    ("counts", "limit", "parts"),
    [
        ([5, 5, 5], 0, [0, 0, 0]),  # no limit: one batch per block
        ([5, 5, 5], 5, [0, 1, 2]),
        ([5, 5, 5], 10, [0, 0, 1]),
        ([2, 9, 1, 1], 4, [0, 1, 2, 2]),  # a transaction over the limit stays whole, alone
        ([], 4, []),
    ],
)
def test_a_block_splits_into_batches_of_whole_transactions(counts, limit, parts):
    assert batch_parts(counts, limit) == parts


def test_a_block_of_600_transactions_fits_the_crd_in_two_batches():
    from coprocessor.api.batch import MAX_INLINE_NODES

    parts = batch_parts([5] * 600, 0)
    assert parts == [0] * MAX_INLINE_NODES + [1] * (600 - MAX_INLINE_NODES)
    assert batch_parts([1, 1, 1, 1, 1], 0, max_transactions=2) == [0, 0, 1, 1, 2]
    assert batch_parts([3, 3, 3], 5, max_transactions=2) == [0, 1, 2]


@pytest.mark.parametrize(
    ("costs", "max_cost", "parts"),
    [
        ([40, 40, 40], 100, [0, 0, 1]),  # no part over the operator's FHE_BATCH_MAX_COST
        ([150, 10, 10], 100, [0, 1, 1]),  # one costlier than the limit goes alone
        ([40, 40, 40], 0, [0, 0, 0]),  # 0: no cost limit
    ],
)
def test_a_costly_block_splits_so_no_batch_is_refused_for_its_cost(costs, max_cost, parts):
    assert batch_parts([1] * len(costs), 0, cost_per_transaction=costs, max_cost=max_cost) == parts
