"""Host events -> rows: malformed events give one clear error; good ones re-derive."""

import os

import pytest

from coprocessor.types import FheType, Op, derive_handle, make_handle
from listeners.host_events import (
    ALLOWED_FOR_DECRYPTION,
    UndecodableEvent,
    allowed_rows,
    batch_parts,
    check_derivation,
    computation_row,
)

TX = bytes.fromhex("ab" * 32)
CHAIN = 12345
CALLER = bytes.fromhex("11" * 20)


def handle(fhe_type=FheType.Uint8) -> bytes:
    return make_handle(os.urandom(32), 0, CHAIN, fhe_type).raw


def binary(op: Op, lhs: bytes, rhs: bytes, scalar: bool) -> dict:
    operand = rhs if not scalar else rhs[-1:] if rhs[-1] else b"\x00"
    result = derive_handle(op, (lhs, operand), CALLER, CHAIN, FheType(lhs[30])).raw
    return {
        "caller": "0x" + CALLER.hex(),
        "lhs": lhs,
        "rhs": rhs,
        "scalarByte": b"\x01" if scalar else b"\x00",
        "result": result,
    }


def test_binary_and_scalar_events_become_rows_that_re_derive():
    lhs, rhs = handle(), handle()
    row = computation_row("FheAdd", binary(Op.Add, lhs, rhs, False), TX)
    assert (row.fhe_operation, row.dependencies, row.is_scalar) == (int(Op.Add), (lhs, rhs), False)
    check_derivation(row, CALLER, CHAIN)
    scalar = (5).to_bytes(32, "big")
    row = computation_row("FheAdd", binary(Op.Add, lhs, scalar, True), TX)
    assert row.dependencies == (lhs, b"\x05") and row.is_scalar
    assert row.transaction_id == TX
    check_derivation(row, CALLER, CHAIN)


def test_a_handle_the_contract_derived_differently_is_refused():
    event = binary(Op.Add, handle(), handle(), False)
    event["result"] = handle()
    with pytest.raises(UndecodableEvent, match="is not the derived handle"):
        check_derivation(computation_row("FheAdd", event, TX), CALLER, CHAIN)


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
