"""What the sender makes of the gateway's answers, without a chain: revert data to
outcome, which RPC failures are worth a retry, how rows are chunked, and the signer
key setting (checked at start, never echoed)."""

from __future__ import annotations

import pytest
import requests
from pydantic import ValidationError
from web3.exceptions import ContractCustomError, Web3RPCError

from coprocessor.chain.committer import chunks, material
from coprocessor.chain.gateway import (
    ALREADY_ADDED,
    NOT_A_SIGNER,
    AlreadyAdded,
    NotASigner,
    SubmissionRejected,
    _is_already_known,
    _is_nonce_too_low,
    _transient,
    classify_revert,
    revert_data,
)
from coprocessor.db.commits import DigestRow
from coprocessor.errors import EXIT_IRRECOVERABLE
from coprocessor.settings import Settings

SIGNER = "0x" + "ab" * 20


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (ALREADY_ADDED + "00" * 64, AlreadyAdded),
        (NOT_A_SIGNER + "00" * 32, NotASigner),
        ("0x08c379a0" + "00" * 96, SubmissionRejected),  # Error(string): a require message
        ("", SubmissionRejected),
    ],
)
def test_reverts_are_classified_by_their_selector(data, expected):
    assert isinstance(classify_revert(data, "reason", SIGNER), expected)


def test_a_non_signer_fails_the_batch_naming_the_key_and_the_fix():
    error = classify_revert(NOT_A_SIGNER, "", SIGNER)
    assert error.exit_code == EXIT_IRRECOVERABLE
    assert SIGNER in str(error) and "FHE_SENDER_PRIVATE_KEY" in str(error)


@pytest.mark.parametrize(
    ("error", "data"),
    [
        (ContractCustomError("0x1dd7250c", data="0x1dd7250c"), "0x1dd7250c"),
        (type("E", (Exception,), {"data": bytes.fromhex("1dd7250c")})(), "0x1dd7250c"),
        (type("E", (Exception,), {"data": {"data": "0x26cd75dc"}})(), "0x26cd75dc"),
        (type("E", (Exception,), {"data": "execution reverted"})(), ""),
        (ValueError("no data"), ""),
    ],
)
def test_revert_data_is_read_from_every_shape_web3_gives(error, data):
    assert revert_data(error) == data


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (TimeoutError(), True),
        (Web3RPCError("{'code': -32603, 'message': 'internal error'}"), True),
        (Web3RPCError("{'code': -32003, 'message': 'Insufficient funds for gas'}"), False),
        (ValueError("bad argument"), False),
    ],
)
def test_only_node_trouble_is_retried(error, transient):
    assert _transient(error) is transient


def test_nonce_and_duplicate_broadcast_answers_are_recognised():
    assert _is_nonce_too_low(Web3RPCError("{'message': 'nonce too low'}"))
    assert _is_already_known(Web3RPCError("{'message': 'already known'}"))
    assert not _is_nonce_too_low(ValueError("nonce too low"))


def row(n: int) -> DigestRow:
    return DigestRow(
        1, bytes([n]) * 32, bytes(range(32)), b"\x01" * 32, b"\x02" * 32, False, None, None
    )


@pytest.mark.parametrize(
    ("count", "size", "sizes"),
    [(0, 4, []), (1, 4, [1]), (4, 4, [4]), (10, 4, [4, 4, 2]), (3, 1, [1, 1, 1])],
)
def test_rows_are_chunked_in_order(count, size, sizes):
    rows = [row(i) for i in range(count)]
    split = chunks(rows, size)
    assert [len(c) for c in split] == sizes
    assert [r for c in split for r in c] == rows


def test_the_key_id_becomes_the_contracts_uint256():
    assert material(row(1)).key_id == int.from_bytes(bytes(range(32)), "big")


SECRET = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


@pytest.mark.parametrize("value", [SECRET, "0x" + SECRET, "0x" + SECRET.upper()])
def test_a_signer_key_is_accepted_with_or_without_0x(value):
    key = Settings(sender_private_key=value).sender_private_key
    assert key is not None and key.get_secret_value() == "0x" + SECRET


@pytest.mark.parametrize("value", [SECRET[:-2], SECRET + "00", "zz" + SECRET[2:], "0" * 64])
def test_a_malformed_signer_key_is_refused_without_echoing_it(value):
    with pytest.raises(ValidationError) as raised:
        Settings(sender_private_key=value)
    text = str(raised.value)
    assert "64 hex digits" in text or "must not be zero" in text
    assert value not in text


def test_the_key_never_appears_in_the_settings_repr():
    assert SECRET not in repr(Settings(sender_private_key=SECRET))
