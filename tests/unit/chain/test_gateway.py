"""What the sender makes of the gateway, without a chain: each call's function against
the compiled ABIs (encoded with web3), revert data to outcome, rows to calls, which RPC
failures are worth a retry, and the settings the send stage needs (the signer key
checked at start and never echoed, the three contract addresses)."""

from __future__ import annotations

import re

import pytest
import requests
from eth_abi import encode as abi_encode
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from web3 import Web3
from web3.exceptions import ContractCustomError, Web3RPCError

from coprocessor.chain.calls import (
    COUNTER_TOO_LOW,
    EMPTY_EXTRA_DATA,
    HOST_CHAIN_NOT_REGISTERED,
    NOT_TX_SENDER,
    AllowAccount,
    AllowPublicDecrypt,
    AlreadyDone,
    CallRejected,
    Commit,
    Delegation,
    GatewayCall,
    NotATxSender,
    classify_revert,
)
from coprocessor.chain.committer import NotActivated, gateway_call, label
from coprocessor.chain.contracts import artifact, revert_selector
from coprocessor.chain.gateway import (
    _is_already_known,
    _is_nonce_too_low,
    _transient,
    require_gateway,
    revert_data,
)
from coprocessor.db.acl import AclCall, AclCallRow
from coprocessor.db.commits import DigestRow
from coprocessor.errors import EXIT_IRRECOVERABLE, ConfigError, Irrecoverable
from coprocessor.settings import Settings

SENDER = Web3.to_checksum_address("0x" + "ab" * 20)

# --- strategies -------------------------------------------------------------------------

handles = st.binary(min_size=32, max_size=32)
digests = st.binary(min_size=32, max_size=32)
addresses = st.binary(min_size=20, max_size=20)
uint64s = st.integers(0, 2**64 - 1)
uint256s = st.integers(0, 2**256 - 1)

commits = st.builds(Commit, handles, uint256s, digests, digests)
allow_accounts = st.builds(AllowAccount, handles, addresses)
allow_public_decrypts = st.builds(AllowPublicDecrypt, handles)
delegations = st.builds(
    Delegation, uint64s, addresses, addresses, addresses, uint64s, uint64s, st.booleans()
)
calls = st.one_of(commits, allow_accounts, allow_public_decrypts, delegations)


def contract(name: str):
    """The compiled contract, bound to no node: enough to encode and decode calldata."""
    return Web3().eth.contract(abi=artifact(name).abi)


def abi_items(name: str, kind: str) -> dict[str, list[str]]:
    """``name(types)`` -> types of each ``kind`` entry (function, error) of the ABI."""
    found = {}
    for item in artifact(name).abi:
        if item["type"] == kind:
            types = [i["type"] for i in item["inputs"]]
            found[f"{item['name']}({','.join(types)})"] = types
    return found


SAMPLES: list[GatewayCall] = [
    Commit(b"\x01" * 32, 7, b"\x02" * 32, b"\x03" * 32),
    AllowAccount(b"\x01" * 32, b"\x04" * 20),
    AllowPublicDecrypt(b"\x01" * 32),
    Delegation(1, b"\x05" * 20, b"\x06" * 20, b"\x07" * 20, 3, 9),
    Delegation(1, b"\x05" * 20, b"\x06" * 20, b"\x07" * 20, 3, 9, revoke=True),
]


def error_data(signature: str, *values: object) -> str:
    """Revert data of the custom error ``signature`` with ``values``."""
    types = re.fullmatch(r"\w+\((.*)\)", signature).group(1)
    encoded = abi_encode(types.split(","), list(values)) if types else b""
    return revert_selector(signature) + encoded.hex()


# --- each call is a function of the compiled ABI -------------------------------------------


@given(calls)
def test_each_call_encodes_against_its_contracts_abi_and_decodes_back(call):
    name, args = call.function()
    built = contract(call.contract)
    data = built.encode_abi(name, args=list(args))
    function, decoded = built.decode_function_input(data)
    assert function.fn_name == name
    assert tuple(decoded.values()) == tuple(
        Web3.to_checksum_address(a) if isinstance(a, str) else a for a in args
    )
    # The selector is that of the ABI entry with this name and these argument types.
    (signature,) = [s for s in abi_items(call.contract, "function") if s.startswith(name + "(")]
    assert data.startswith("0x" + Web3.keccak(text=signature)[:4].hex())


@pytest.mark.parametrize(
    ("call", "signature"),
    [
        (SAMPLES[0], "addCiphertextMaterial(bytes32,uint256,bytes32,bytes32)"),
        (SAMPLES[1], "allowAccount(bytes32,address,bytes)"),
        (SAMPLES[2], "allowPublicDecrypt(bytes32,bytes)"),
        (
            SAMPLES[3],
            "delegateUserDecryption(uint256,address,address,address,uint64,uint64)",
        ),
        (
            SAMPLES[4],
            "revokeUserDecryptionDelegation(uint256,address,address,address,uint64,uint64)",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_each_call_is_the_zama_function_it_names(call, signature):
    assert signature in abi_items(call.contract, "function")
    name, args = call.function()
    assert signature.startswith(name + "(")
    assert len(args) == len(abi_items(call.contract, "function")[signature])


@given(allow_accounts, allow_public_decrypts)
def test_acl_grants_pass_the_empty_extra_data_zamas_sender_passes(account, public):
    assert account.function()[1][-1] == EMPTY_EXTRA_DATA == b""
    assert public.function()[1][-1] == EMPTY_EXTRA_DATA


@given(commits)
def test_a_commit_passes_the_kms_key_id_and_both_digests_in_order(commit):
    assert commit.function()[1] == (
        commit.handle,
        commit.key_id,
        commit.ciphertext_digest,
        commit.sns_ciphertext_digest,
    )


# --- reverts ------------------------------------------------------------------------------


@pytest.mark.parametrize("call", SAMPLES, ids=lambda c: c.function()[0])
def test_each_calls_already_error_is_an_error_of_its_contract(call):
    errors = abi_items(call.contract, "error")
    (signature,) = [s for s in errors if revert_selector(s) == call.already]
    assert signature.startswith("CoprocessorAlready")


@pytest.mark.parametrize("call", SAMPLES, ids=lambda c: c.function()[0])
def test_each_calls_already_error_means_done(call):
    (signature,) = [
        s for s in abi_items(call.contract, "error") if revert_selector(s) == call.already
    ]
    types = abi_items(call.contract, "error")[signature]
    values = [b"\x01" * 32 if t == "bytes32" else SENDER if t == "address" else 1 for t in types]
    data = error_data(signature, *values)
    assert isinstance(classify_revert(call, data, "reverted", SENDER), AlreadyDone)


@given(calls, calls)
def test_another_calls_already_error_is_not_done(call, other):
    if other.already == call.already:  # the same kind (a delegation and a delegation)
        return
    outcome = classify_revert(call, other.already + "00" * 64, "reverted", SENDER)
    assert isinstance(outcome, CallRejected)


def test_delegating_and_revoking_have_different_already_errors():
    delegate, revoke = SAMPLES[3], SAMPLES[4]
    assert delegate.already != revoke.already
    assert isinstance(classify_revert(revoke, delegate.already, "", SENDER), CallRejected)


@given(calls, addresses)
def test_not_a_tx_sender_names_the_address_the_contract_decoded(call, raw):
    address = Web3.to_checksum_address(raw)
    data = error_data("NotCoprocessorTxSender(address)", address)
    assert data.startswith(NOT_TX_SENDER)
    error = classify_revert(call, data, "reverted", SENDER)
    assert isinstance(error, NotATxSender)
    assert error.exit_code == EXIT_IRRECOVERABLE
    assert address in str(error) and "FHE_SENDER_PRIVATE_KEY" in str(error)


def test_not_a_tx_sender_without_arguments_names_the_configured_sender():
    error = classify_revert(SAMPLES[0], NOT_TX_SENDER, "reverted", SENDER)
    assert isinstance(error, NotATxSender) and SENDER in str(error)


@given(calls, uint256s)
def test_an_unregistered_host_chain_rejects_the_call_naming_the_chain_id(call, chain_id):
    data = error_data("HostChainNotRegistered(uint256)", chain_id)
    assert data.startswith(HOST_CHAIN_NOT_REGISTERED)
    error = classify_revert(call, data, "reverted", SENDER)
    assert type(error) is CallRejected and error.exit_code == EXIT_IRRECOVERABLE
    assert f"host chain {chain_id} is not registered" in str(error)
    assert call.label in str(error) and call.contract in str(error)


def test_a_stale_delegation_counter_is_rejected_with_its_reason():
    data = error_data("UserDecryptionDelegationCounterTooLow(uint64)", 3)
    assert data.startswith(COUNTER_TOO_LOW)
    error = classify_revert(SAMPLES[3], data, "reverted", SENDER)
    assert type(error) is CallRejected and "UserDecryptionDelegationCounterTooLow" in str(error)


@given(calls, st.binary(min_size=0, max_size=68), st.text(max_size=40))
def test_unknown_revert_data_rejects_the_call(call, raw, reason):
    data = "0x" + raw.hex() if raw else ""
    known = (call.already, NOT_TX_SENDER, HOST_CHAIN_NOT_REGISTERED, COUNTER_TOO_LOW)
    if any(data.startswith(selector) for selector in known):
        return
    error = classify_revert(call, data, reason, SENDER)
    assert type(error) is CallRejected
    assert str(error).startswith(f"{call.contract} refused {call.label}: ")
    assert (reason or data or "no reason") in str(error)


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


# --- rows to calls --------------------------------------------------------------------------


def digest_row(handle: bytes, kms_key_id: int | None, ct64: bytes, ct128: bytes) -> DigestRow:
    return DigestRow(1, handle, bytes(range(32)), ct64, ct128, False, None, None, kms_key_id)


def acl_row(call: AclCall, call_id: int = 1) -> AclCallRow:
    return AclCallRow(call_id, call, False, None, None)


@given(handles, uint256s, digests, digests)
def test_a_digest_row_is_committed_under_its_tenants_kms_key_id(handle, kms, ct64, ct128):
    call = gateway_call(digest_row(handle, kms, ct64, ct128))
    # The KMS's key id, never our own digest of the server key (DigestRow.key_id).
    assert call == Commit(handle, kms, ct64, ct128)
    assert label(digest_row(handle, kms, ct64, ct128)) == "0x" + handle.hex()


def test_a_digest_of_a_tenant_without_kms_key_id_is_not_activated():
    row = digest_row(b"\x09" * 32, None, b"\x01" * 32, b"\x02" * 32)
    with pytest.raises(NotActivated) as raised:
        gateway_call(row)
    assert isinstance(raised.value, CallRejected) and isinstance(raised.value, Irrecoverable)
    assert "0x" + "09" * 32 in str(raised.value)
    assert "fhectl tenant activate" in str(raised.value)
    assert label(row) == "0x" + "09" * 32  # still labelled by its handle


@given(handles, addresses)
def test_acl_rows_become_their_grants(handle, account):
    allowed = gateway_call(acl_row(AclCall(1, "allow_account", None, handle, account)))
    assert allowed == AllowAccount(handle, account)
    public = gateway_call(acl_row(AclCall(1, "allow_public_decrypt", None, handle)))
    assert public == AllowPublicDecrypt(handle)


@given(uint64s, addresses, addresses, addresses, uint64s, uint64s, st.booleans())
def test_delegation_rows_become_delegations_or_revocations(
    chain_id, delegator, delegate, contract_address, counter, expiration, revoke
):
    row = acl_row(
        AclCall(
            1,
            "revoke" if revoke else "delegate",
            None,
            chain_id=chain_id,
            delegator=delegator,
            delegate=delegate,
            contract_address=contract_address,
            delegation_counter=counter,
            expiration_date=expiration,
        )
    )
    call = gateway_call(row)
    assert call == Delegation(
        chain_id, delegator, delegate, contract_address, counter, expiration, revoke=revoke
    )
    assert call.function()[0] == (
        "revokeUserDecryptionDelegation" if revoke else "delegateUserDecryption"
    )
    assert label(row) == call.label


# --- RPC answers ----------------------------------------------------------------------------


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


# --- settings -------------------------------------------------------------------------------

ADDRESS = "0x" + "12" * 20


def test_the_send_stage_needs_all_three_gateway_contracts():
    with pytest.raises(ConfigError) as raised:
        require_gateway(Settings(gateway_commits_address=ADDRESS))
    text = str(raised.value)
    for missing in ("FHE_GATEWAY_CONFIG_ADDRESS", "GatewayConfig", "FHE_GATEWAY_ACL_ADDRESS"):
        assert missing in text
    assert "MultichainACL" in text and "FHE_GATEWAY_COMMITS_ADDRESS" not in text
    given_all = Settings(
        gateway_config_address=ADDRESS,
        gateway_commits_address=ADDRESS,
        gateway_acl_address=ADDRESS,
    )
    assert require_gateway(given_all) == dict.fromkeys(
        ("GatewayConfig", "CiphertextCommits", "MultichainACL"), ADDRESS
    )


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
