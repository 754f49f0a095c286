"""Our gateway contracts (contracts/gateway: GatewayConfig, CiphertextCommits,
MultichainACL) on the dev stack's anvil: Zama's ABIs (v0.11) to the signature, and Zama's
semantics - votes counted per hash of the arguments, consensus at the coprocessor
threshold, one consensus event, late agreeing votes joining the list, per-coprocessor
"already" errors, delegation counters checked at consensus.

Every test deploys its own gateway; the coprocessors' transaction senders are the node's
unlocked accounts (anvil fills in their nonces, so tests sharing the node do not collide).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from eth_abi import decode
from eth_account import Account
from eth_utils import event_abi_to_log_topic, function_abi_to_4byte_selector
from web3 import Web3
from web3.exceptions import ContractCustomError

from coprocessor.chain.contracts import artifact, decode_logs, revert_selector
from coprocessor.types import FheType, Handle, make_handle
from tests.gateway import ZERO_ADDRESS, GatewayContracts, coprocessor, deploy_gateway, host_chain

HOST_CHAIN_ID = 4242
OTHER_CHAIN_ID = 999_001  # registered by no test's GatewayConfig unless it adds it
KEY_ID = int.from_bytes(bytes(range(32)), "big")
EXTRA_DATA = b"\x00"


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_GATEWAY_RPC_URL"]))
    assert web3.is_connected()
    return web3


@pytest.fixture(scope="module")
def accounts(w3) -> list[str]:
    """owner, three coprocessor tx senders, a stranger."""
    found = w3.eth.accounts
    assert len(found) >= 5, "anvil's unlocked accounts"
    return found[:5]


@pytest.fixture
def gateway(w3, accounts) -> GatewayContracts:
    """Three coprocessors (majority threshold 2), one host chain."""
    return deploy_gateway(
        w3,
        [
            coprocessor(a, Account.create().address, f"s3://bucket-{i}")
            for i, a in enumerate(accounts[1:4])
        ],
        [host_chain(HOST_CHAIN_ID)],
        owner=accounts[0],
    )


def handle(n: int, chain_id: int = HOST_CHAIN_ID) -> bytes:
    return make_handle(Web3.keccak(n.to_bytes(4, "big")), 0xFF, chain_id, FheType.Uint8).raw


def digests(n: int, salt: bytes = b"") -> tuple[bytes, bytes]:
    """Stand-ins for keccak256 of a handle's ct64 and ct128 objects."""
    return Web3.keccak(b"ct64" + salt + bytes([n])), Web3.keccak(b"ct128" + salt + bytes([n]))


def send(w3: Web3, contract, call, sender: str) -> list[tuple[str, dict[str, Any]]]:
    """Transact, require success, and return the contract's decoded events of the receipt."""
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt["status"] == 1, f"{call.fn_name} reverted"
    return decode_logs(contract, receipt["logs"])


def names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


def reverts(call, signature: str, sender: str | None = None) -> tuple[Any, ...]:
    """Require ``call`` (a transaction from ``sender``, or an eth_call) to revert with the
    custom error ``signature``; returns the error's decoded arguments."""
    with pytest.raises(ContractCustomError) as raised:
        if sender is None:
            call.call()
        else:
            call.transact({"from": sender})
    data = str(raised.value.data)
    selector = revert_selector(signature)
    assert data.startswith(selector), f"expected {signature}, got {data}"
    inner = re.fullmatch(r"\w+\((.*)\)", signature).group(1)
    types = inner.split(",") if inner else []
    values = decode(types, bytes.fromhex(data[len(selector) :]))
    return tuple(
        Web3.to_checksum_address(value) if kind == "address" else value
        for kind, value in zip(types, values, strict=True)
    )


def add(gateway: GatewayContracts, n: int, *, salt: bytes = b"", key_id: int = KEY_ID):
    ct, sns = digests(n, salt)
    return gateway.commits.functions.addCiphertextMaterial(handle(n), key_id, ct, sns)


# --- ABIs --------------------------------------------------------------------------------

# Written out from Zama's gateway-contracts v0.11.0 interfaces (ICiphertextCommits,
# IMultichainACL, IGatewayConfig, shared/Structs.sol): functions with mutability and
# returns, events with their indexed arguments, errors. Structs are written as tuples.
COPROCESSOR = "(address,address,string)"
HOST_CHAIN = "(uint256,address,address,string,string)"
DELEGATION = "uint256,address,address,address,uint64,uint64"
# (chainId indexed, delegator, delegate, contractAddress) opening the delegation events
TRIPLE = "uint256 indexed,address,address,address"
MATERIALS = "(bytes32,uint256,bytes32,address[])[]"
SENDERS = "view returns (address[])"
# Zama's shared/GatewayConfigChecks errors that our checks raise (CiphertextCommits and
# MultichainACL inherit them, as Zama's do).
CHECKS_ERRORS = {
    "NotCoprocessorTxSender(address)",
    "NotCoprocessorSigner(address)",
    "HostChainNotRegistered(uint256)",
}
EXPECTED_ABIS: dict[str, dict[str, set[str]]] = {
    "CiphertextCommits": {
        "function": {
            "addCiphertextMaterial(bytes32,uint256,bytes32,bytes32)",
            f"getCiphertextMaterials(bytes32[]) view returns ({MATERIALS})",
            f"getSnsCiphertextMaterials(bytes32[]) view returns ({MATERIALS})",
            "isCiphertextMaterialAdded(bytes32) view returns (bool)",
            "getAddCiphertextMaterialConsensusTxSenders(bytes32) view returns (address[])",
            "getVersion() pure returns (string)",
        },
        "event": {
            "AddCiphertextMaterial(bytes32 indexed,uint256,bytes32,bytes32,address)",
            "AddCiphertextMaterialConsensus(bytes32 indexed,uint256,bytes32,bytes32,address[])",
        },
        "error": {
            "CoprocessorAlreadyAdded(bytes32,address)",
            "EmptyCtHandles()",
            "CiphertextMaterialNotFound(bytes32)",
        }
        | CHECKS_ERRORS,
    },
    "MultichainACL": {
        "function": {
            "allowPublicDecrypt(bytes32,bytes)",
            "allowAccount(bytes32,address,bytes)",
            f"delegateUserDecryption({DELEGATION})",
            f"revokeUserDecryptionDelegation({DELEGATION})",
            "isPublicDecryptAllowed(bytes32) view returns (bool)",
            "isAccountAllowed(bytes32,address) view returns (bool)",
            "isUserDecryptionDelegated(uint256,address,address,address) view returns (bool)",
            "getAllowPublicDecryptConsensusTxSenders(bytes32) view returns (address[])",
            "getAllowAccountConsensusTxSenders(bytes32,address) view returns (address[])",
            f"getDelegateUserDecryptionConsensusTxSenders({DELEGATION}) {SENDERS}",
            f"getRevokeUserDecryptionDelegationConsensusTxSenders({DELEGATION}) {SENDERS}",
            "getVersion() pure returns (string)",
        },
        "event": {
            "AllowPublicDecrypt(bytes32 indexed,address,bytes)",
            "AllowPublicDecryptConsensus(bytes32 indexed,bytes)",
            "AllowAccount(bytes32 indexed,address,address,bytes)",
            "AllowAccountConsensus(bytes32 indexed,address,bytes)",
            f"DelegateUserDecryption({TRIPLE},uint64,uint64)",
            f"DelegateUserDecryptionConsensus({TRIPLE},uint64,uint64,uint64)",
            f"RevokeUserDecryptionDelegation({TRIPLE},uint64)",
            f"RevokeUserDecryptionDelegationConsensusReached({TRIPLE},uint64,uint64)",
        },
        "error": {
            "CoprocessorAlreadyAllowedPublicDecrypt(bytes32,address)",
            "CoprocessorAlreadyAllowedAccount(bytes32,address,address)",
            f"CoprocessorAlreadyDelegatedUserDecryption({DELEGATION},address)",
            f"CoprocessorAlreadyRevokedUserDecryption({DELEGATION},address)",
            "EmptyContractAddresses()",
            "ContractsMaxLengthExceeded(uint256,uint256)",
            "UserDecryptionDelegationCounterTooLow(uint64)",
        }
        | CHECKS_ERRORS,
    },
    # The part of IGatewayConfig a coprocessor gateway uses, plus OpenZeppelin Ownable's
    # owner() and its error (Zama's GatewayConfig is Ownable2StepUpgradeable).
    "GatewayConfig": {
        "function": {
            f"addHostChain({HOST_CHAIN})",
            f"updateCoprocessors({COPROCESSOR}[],uint256)",
            "isCoprocessorTxSender(address) view returns (bool)",
            "isCoprocessorSigner(address) view returns (bool)",
            "isHostChainRegistered(uint256) view returns (bool)",
            "getCoprocessorMajorityThreshold() view returns (uint256)",
            f"getCoprocessor(address) view returns ({COPROCESSOR})",
            "getCoprocessorTxSenders() view returns (address[])",
            "getCoprocessorSigners() view returns (address[])",
            f"getHostChain(uint256) view returns ({HOST_CHAIN})",
            f"getHostChains() view returns ({HOST_CHAIN}[])",
            "getVersion() pure returns (string)",
            "owner() view returns (address)",
        },
        "event": {
            f"UpdateCoprocessors({COPROCESSOR}[],uint256)",
            f"AddHostChain({HOST_CHAIN})",
        },
        "error": {
            "EmptyCoprocessors()",
            "CoprocessorTxSenderAlreadyRegistered(address)",
            "CoprocessorSignerAlreadyRegistered(address)",
            "InvalidNullCoprocessorThreshold()",
            "InvalidHighCoprocessorThreshold(uint256,uint256)",
            "HostChainAlreadyRegistered(uint256)",
            "InvalidNullChainId()",
            "ChainIdNotUint64(uint256)",
            "OwnableUnauthorizedAccount(address)",
        },
    },
}


def abi_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        inner = ",".join(abi_type(component) for component in item["components"])
        return f"({inner}){item['type'][len('tuple') :]}"
    return item["type"]


def rendered(item: dict[str, Any]) -> str:
    """One ABI entry as the strings above write it."""
    inputs = ",".join(
        abi_type(arg) + (" indexed" if arg.get("indexed") else "") for arg in item["inputs"]
    )
    text = f"{item['name']}({inputs})"
    if item["type"] == "function":
        if item["stateMutability"] != "nonpayable":
            text += f" {item['stateMutability']}"
        if item["outputs"]:
            text += f" returns ({','.join(abi_type(arg) for arg in item['outputs'])})"
    return text


@pytest.mark.parametrize("name", sorted(EXPECTED_ABIS))
def test_the_compiled_abis_are_zamas(name):
    abi = artifact(name).abi
    for kind, expected in EXPECTED_ABIS[name].items():
        found = {rendered(item) for item in abi if item["type"] == kind}
        assert found == expected, (
            f"{name} {kind}s: extra {found - expected}, missing {expected - found}"
        )
    constructors = [item for item in abi if item["type"] == "constructor"]
    assert [abi_type(arg) for arg in constructors[0]["inputs"]] == (
        [f"{COPROCESSOR}[]", f"{HOST_CHAIN}[]"] if name == "GatewayConfig" else ["address"]
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_ABIS))
def test_the_selectors_are_those_of_the_signature_strings(name):
    """Stripped of mutability, returns and ``indexed``, the strings above are the canonical
    signatures: the function selectors and event topics of the compiled ABI are their
    keccak256, so calls and logs match Zama's byte for byte."""
    for item in artifact(name).abi:
        if item["type"] not in ("function", "event", "error"):
            continue
        canonical = rendered(item).split(" ")[0] if item["type"] != "event" else rendered(item)
        canonical = canonical.replace(" indexed", "")
        digest = Web3.keccak(text=canonical)
        if item["type"] == "event":
            assert event_abi_to_log_topic(item) == digest, canonical
        else:
            assert function_abi_to_4byte_selector(item) == digest[:4], canonical


# --- CiphertextCommits ---------------------------------------------------------------------


def test_the_second_agreeing_coprocessor_reaches_consensus_and_a_late_one_joins(
    w3, accounts, gateway
):
    _, a, b, c, _ = accounts
    commits = gateway.commits
    h = handle(1)
    ct, sns = digests(1)

    first = send(w3, commits, add(gateway, 1), a)
    assert first == [
        (
            "AddCiphertextMaterial",
            {
                "ctHandle": h,
                "keyId": KEY_ID,
                "ciphertextDigest": ct,
                "snsCiphertextDigest": sns,
                "coprocessorTxSender": a,
            },
        )
    ]
    assert not commits.functions.isCiphertextMaterialAdded(h).call()
    assert commits.functions.getAddCiphertextMaterialConsensusTxSenders(h).call() == []
    assert reverts(
        commits.functions.getCiphertextMaterials([h]), "CiphertextMaterialNotFound(bytes32)"
    ) == (h,)

    second = send(w3, commits, add(gateway, 1), b)
    assert names(second) == ["AddCiphertextMaterial", "AddCiphertextMaterialConsensus"]
    assert second[1][1] == {
        "ctHandle": h,
        "keyId": KEY_ID,
        "ciphertextDigest": ct,
        "snsCiphertextDigest": sns,
        "coprocessorTxSenders": [a, b],
    }
    assert commits.functions.isCiphertextMaterialAdded(h).call()

    late = send(w3, commits, add(gateway, 1), c)
    assert names(late) == ["AddCiphertextMaterial"]
    assert commits.functions.getAddCiphertextMaterialConsensusTxSenders(h).call() == [a, b, c]
    assert commits.functions.getCiphertextMaterials([h]).call() == [(h, KEY_ID, ct, [a, b, c])]
    assert commits.functions.getSnsCiphertextMaterials([h]).call() == [(h, KEY_ID, sns, [a, b, c])]


def test_disagreeing_submissions_do_not_count_toward_the_same_consensus(w3, accounts, gateway):
    _, a, b, c, _ = accounts
    commits = gateway.commits
    h = handle(2)
    assert names(send(w3, commits, add(gateway, 2), a)) == ["AddCiphertextMaterial"]
    # another digest, then another key id: each a vote of its own
    assert names(send(w3, commits, add(gateway, 2, salt=b"x"), b)) == ["AddCiphertextMaterial"]
    assert not commits.functions.isCiphertextMaterialAdded(h).call()
    other = handle(3)
    send(w3, commits, add(gateway, 3), a)
    send(w3, commits, add(gateway, 3, key_id=KEY_ID + 1), b)
    assert not commits.functions.isCiphertextMaterialAdded(other).call()

    agreeing = send(w3, commits, add(gateway, 2), c)
    assert names(agreeing) == ["AddCiphertextMaterial", "AddCiphertextMaterialConsensus"]
    assert agreeing[1][1]["coprocessorTxSenders"] == [a, c]
    ct, sns = digests(2)
    assert commits.functions.getCiphertextMaterials([h]).call() == [(h, KEY_ID, ct, [a, c])]
    assert commits.functions.getSnsCiphertextMaterials([h]).call() == [(h, KEY_ID, sns, [a, c])]


def test_a_coprocessor_submits_a_handle_once(w3, accounts, gateway):
    _, a, b, _, _ = accounts
    h = handle(4)
    send(w3, gateway.commits, add(gateway, 4), a)
    error = "CoprocessorAlreadyAdded(bytes32,address)"
    assert reverts(add(gateway, 4), error, a) == (h, a)
    assert reverts(add(gateway, 4, salt=b"changed"), error, a) == (h, a)  # whatever it says now
    send(w3, gateway.commits, add(gateway, 4), b)
    assert reverts(add(gateway, 4), error, b) == (h, b)  # after consensus too


def test_material_lookups_need_handles_and_consensus_on_each(w3, accounts, gateway):
    _, a, b, _, _ = accounts
    commits = gateway.commits
    for sender in (a, b):
        send(w3, commits, add(gateway, 5), sender)
    agreed, missing = handle(5), handle(6)
    for lookup in (
        commits.functions.getCiphertextMaterials,
        commits.functions.getSnsCiphertextMaterials,
    ):
        assert reverts(lookup([]), "EmptyCtHandles()") == ()
        assert reverts(lookup([agreed, missing]), "CiphertextMaterialNotFound(bytes32)") == (
            missing,
        )
        assert len(lookup([agreed, agreed]).call()) == 2


def test_only_registered_coprocessors_may_submit(w3, accounts, gateway):
    stranger = accounts[4]
    h = handle(7)
    calls = [
        add(gateway, 7),
        gateway.acl.functions.allowPublicDecrypt(h, EXTRA_DATA),
        gateway.acl.functions.allowAccount(h, stranger, EXTRA_DATA),
        gateway.acl.functions.delegateUserDecryption(
            HOST_CHAIN_ID, stranger, stranger, stranger, 1, 1
        ),
        gateway.acl.functions.revokeUserDecryptionDelegation(
            HOST_CHAIN_ID, stranger, stranger, stranger, 1, 1
        ),
    ]
    for call in calls:
        assert reverts(call, "NotCoprocessorTxSender(address)", stranger) == (stranger,)


def test_handles_and_calls_of_an_unregistered_host_chain_are_refused(w3, accounts, gateway):
    owner, a, _, _, _ = accounts
    h = handle(8, chain_id=OTHER_CHAIN_ID)
    assert Handle(h).chain_id == OTHER_CHAIN_ID  # the contract reads the same bytes
    ct, sns = digests(8)
    error = "HostChainNotRegistered(uint256)"
    add_other = gateway.commits.functions.addCiphertextMaterial(h, KEY_ID, ct, sns)
    assert reverts(add_other, error, a) == (OTHER_CHAIN_ID,)
    assert reverts(gateway.acl.functions.allowPublicDecrypt(h, EXTRA_DATA), error, a) == (
        OTHER_CHAIN_ID,
    )
    assert reverts(gateway.acl.functions.allowAccount(h, owner, EXTRA_DATA), error, a) == (
        OTHER_CHAIN_ID,
    )
    delegate = gateway.acl.functions.delegateUserDecryption(
        OTHER_CHAIN_ID, owner, owner, owner, 1, 1
    )
    assert reverts(delegate, error, a) == (OTHER_CHAIN_ID,)

    send(
        w3, gateway.config, gateway.config.functions.addHostChain(host_chain(OTHER_CHAIN_ID)), owner
    )
    assert names(send(w3, gateway.commits, add_other, a)) == ["AddCiphertextMaterial"]


# --- MultichainACL ---------------------------------------------------------------------------


def test_public_decryption_is_allowed_at_consensus(w3, accounts, gateway):
    _, a, b, c, _ = accounts
    acl = gateway.acl
    h = handle(10)
    allow = acl.functions.allowPublicDecrypt(h, EXTRA_DATA)
    assert not acl.functions.isPublicDecryptAllowed(h).call()

    assert send(w3, acl, allow, a) == [
        ("AllowPublicDecrypt", {"ctHandle": h, "coprocessorTxSender": a, "extraData": EXTRA_DATA})
    ]
    assert not acl.functions.isPublicDecryptAllowed(h).call()
    assert acl.functions.getAllowPublicDecryptConsensusTxSenders(h).call() == [a]
    error = "CoprocessorAlreadyAllowedPublicDecrypt(bytes32,address)"
    assert reverts(allow, error, a) == (h, a)

    second = send(w3, acl, acl.functions.allowPublicDecrypt(h, b"\x01"), b)
    assert second[1] == ("AllowPublicDecryptConsensus", {"ctHandle": h, "extraData": b"\x01"})
    assert acl.functions.isPublicDecryptAllowed(h).call()
    assert names(send(w3, acl, allow, c)) == ["AllowPublicDecrypt"]
    assert acl.functions.getAllowPublicDecryptConsensusTxSenders(h).call() == [a, b, c]
    assert reverts(allow, error, c) == (h, c)
    assert not acl.functions.isAccountAllowed(h, a).call()  # a different grant


def test_an_account_is_allowed_at_consensus_and_only_that_account(w3, accounts, gateway):
    owner, a, b, c, stranger = accounts
    acl = gateway.acl
    h = handle(11)
    allow = acl.functions.allowAccount(h, owner, EXTRA_DATA)
    assert send(w3, acl, allow, a) == [
        (
            "AllowAccount",
            {
                "ctHandle": h,
                "accountAddress": owner,
                "coprocessorTxSender": a,
                "extraData": EXTRA_DATA,
            },
        )
    ]
    assert not acl.functions.isAccountAllowed(h, owner).call()
    # the same handle for another account is another vote
    send(w3, acl, acl.functions.allowAccount(h, stranger, EXTRA_DATA), b)
    assert not acl.functions.isAccountAllowed(h, stranger).call()

    second = send(w3, acl, allow, b)
    assert second[1] == (
        "AllowAccountConsensus",
        {"ctHandle": h, "accountAddress": owner, "extraData": EXTRA_DATA},
    )
    assert acl.functions.isAccountAllowed(h, owner).call()
    assert not acl.functions.isAccountAllowed(h, stranger).call()
    assert not acl.functions.isPublicDecryptAllowed(h).call()
    assert names(send(w3, acl, allow, c)) == ["AllowAccount"]
    assert acl.functions.getAllowAccountConsensusTxSenders(h, owner).call() == [a, b, c]
    assert acl.functions.getAllowAccountConsensusTxSenders(h, stranger).call() == [b]
    error = "CoprocessorAlreadyAllowedAccount(bytes32,address,address)"
    assert reverts(allow, error, a) == (h, owner, a)


def test_delegations_and_revocations_apply_at_consensus_in_counter_order(w3, accounts, gateway):
    _, a, b, c, _ = accounts
    acl = gateway.acl
    delegator, delegate, contract = (Account.create().address for _ in range(3))
    triple = (HOST_CHAIN_ID, delegator, delegate, contract)
    now = w3.eth.get_block("latest")["timestamp"]
    expires = now + 3600

    def delegated() -> bool:
        return acl.functions.isUserDecryptionDelegated(*triple).call()

    def delegation(counter: int, expiration: int):
        return acl.functions.delegateUserDecryption(*triple, counter, expiration)

    def revocation(counter: int, expiration: int):
        return acl.functions.revokeUserDecryptionDelegation(*triple, counter, expiration)

    assert not delegated()
    assert send(w3, acl, delegation(1, expires), a) == [
        (
            "DelegateUserDecryption",
            {
                "chainId": HOST_CHAIN_ID,
                "delegator": delegator,
                "delegate": delegate,
                "contractAddress": contract,
                "delegationCounter": 1,
                "expirationDate": expires,
            },
        )
    ]
    assert not delegated()
    consensus = send(w3, acl, delegation(1, expires), b)
    assert consensus[1] == (
        "DelegateUserDecryptionConsensus",
        {
            "chainId": HOST_CHAIN_ID,
            "delegator": delegator,
            "delegate": delegate,
            "contractAddress": contract,
            "delegationCounter": 1,
            "oldExpirationDate": 0,
            "newExpirationDate": expires,
        },
    )
    assert delegated()
    assert names(send(w3, acl, delegation(1, expires), c)) == ["DelegateUserDecryption"]
    assert acl.functions.getDelegateUserDecryptionConsensusTxSenders(
        *triple, 1, expires
    ).call() == [a, b, c]
    delegated_error = f"CoprocessorAlreadyDelegatedUserDecryption({DELEGATION},address)"
    assert reverts(delegation(1, expires), delegated_error, a) == (*triple, 1, expires, a)
    # the same arguments as a revocation: still "already delegated" (one relay per arguments)
    assert reverts(revocation(1, expires), delegated_error, a) == (*triple, 1, expires, a)

    assert names(send(w3, acl, revocation(2, expires), a)) == ["RevokeUserDecryptionDelegation"]
    assert delegated()
    revoked = send(w3, acl, revocation(2, expires), b)
    assert revoked[1] == (
        "RevokeUserDecryptionDelegationConsensusReached",
        {
            "chainId": HOST_CHAIN_ID,
            "delegator": delegator,
            "delegate": delegate,
            "contractAddress": contract,
            "delegationCounter": 2,
            "oldExpirationDate": expires,
        },
    )
    assert not delegated()
    assert acl.functions.getRevokeUserDecryptionDelegationConsensusTxSenders(
        *triple, 2, expires
    ).call() == [a, b]
    revoked_error = f"CoprocessorAlreadyRevokedUserDecryption({DELEGATION},address)"
    assert reverts(revocation(2, expires), revoked_error, b) == (*triple, 2, expires, b)

    # A stale delegation (counter not above the applied 2) is accepted as a vote and refused
    # only when it would apply: the vote that would reach consensus reverts.
    send(w3, acl, delegation(2, expires + 1), a)
    stale = "UserDecryptionDelegationCounterTooLow(uint64)"
    assert reverts(delegation(2, expires + 1), stale, b) == (2,)
    assert not delegated()

    # An expiration date in the past applies (consensus) but delegates nothing.
    for sender in (a, b):
        events = send(w3, acl, delegation(3, now - 1), sender)
    assert events[1][1]["oldExpirationDate"] == 0
    assert not delegated()
    for sender in (b, c):
        events = send(w3, acl, delegation(4, expires), sender)
    assert events[1][1]["oldExpirationDate"] == now - 1
    assert delegated()
    # another contract, delegate or chain is another delegation
    assert not acl.functions.isUserDecryptionDelegated(HOST_CHAIN_ID, delegator, delegate, a).call()
    assert not acl.functions.isUserDecryptionDelegated(
        OTHER_CHAIN_ID, delegator, delegate, contract
    ).call()


# --- GatewayConfig -------------------------------------------------------------------------


def test_the_config_reports_its_coprocessors_and_host_chains(accounts, gateway):
    owner, a, b, c, stranger = accounts
    config = gateway.config
    assert config.functions.owner().call() == owner
    assert config.functions.getCoprocessorTxSenders().call() == [a, b, c]
    signers = config.functions.getCoprocessorSigners().call()
    assert len(signers) == 3
    assert config.functions.getCoprocessor(b).call() == (b, signers[1], "s3://bucket-1")
    assert config.functions.getCoprocessor(stranger).call() == (ZERO_ADDRESS, ZERO_ADDRESS, "")
    assert config.functions.isCoprocessorTxSender(a).call()
    assert not config.functions.isCoprocessorTxSender(signers[0]).call()
    assert config.functions.isCoprocessorSigner(signers[0]).call()
    assert not config.functions.isCoprocessorSigner(a).call()
    assert config.functions.getCoprocessorMajorityThreshold().call() == 2
    assert config.functions.isHostChainRegistered(HOST_CHAIN_ID).call()
    assert not config.functions.isHostChainRegistered(OTHER_CHAIN_ID).call()
    assert config.functions.getHostChains().call() == [host_chain(HOST_CHAIN_ID)]
    assert config.functions.getHostChain(0).call() == host_chain(HOST_CHAIN_ID)
    assert config.functions.getVersion().call() == "GatewayConfig v0.4.0"
    assert gateway.commits.functions.getVersion().call() == "CiphertextCommits v0.3.0"
    assert gateway.acl.functions.getVersion().call() == "MultichainACL v0.3.0"


@pytest.mark.parametrize(("count", "threshold"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_the_initial_threshold_is_a_majority(w3, count, threshold):
    coprocessors = [
        coprocessor(Account.create().address, Account.create().address) for _ in range(count)
    ]
    gateway = deploy_gateway(w3, coprocessors, [])
    assert gateway.config.functions.getCoprocessorMajorityThreshold().call() == threshold
    assert gateway.config.functions.getHostChains().call() == []


def _config_reverts(w3, coprocessors, host_chains, signature: str) -> tuple[Any, ...]:
    built = artifact("GatewayConfig")
    factory = w3.eth.contract(abi=built.abi, bytecode=built.bytecode)
    return reverts(factory.constructor(coprocessors, host_chains), signature, w3.eth.accounts[0])


def test_the_constructor_refuses_what_zamas_refuses(w3):
    one, two, three = (Account.create().address for _ in range(3))
    chain = [host_chain(HOST_CHAIN_ID)]
    assert _config_reverts(w3, [], chain, "EmptyCoprocessors()") == ()
    same_sender = [coprocessor(one, two), coprocessor(one, three)]
    assert _config_reverts(
        w3, same_sender, chain, "CoprocessorTxSenderAlreadyRegistered(address)"
    ) == (one,)
    same_signer = [coprocessor(one, three), coprocessor(two, three)]
    assert _config_reverts(
        w3, same_signer, chain, "CoprocessorSignerAlreadyRegistered(address)"
    ) == (three,)
    good = [coprocessor(one, two)]
    assert _config_reverts(w3, good, [host_chain(0)], "InvalidNullChainId()") == ()
    assert _config_reverts(w3, good, [host_chain(2**64)], "ChainIdNotUint64(uint256)") == (2**64,)
    twice = [host_chain(HOST_CHAIN_ID), host_chain(HOST_CHAIN_ID)]
    assert _config_reverts(w3, good, twice, "HostChainAlreadyRegistered(uint256)") == (
        HOST_CHAIN_ID,
    )


def test_the_owner_adds_host_chains(w3, accounts, gateway):
    owner, a, _, _, _ = accounts
    config = gateway.config
    added = host_chain(2**64 - 1, a, owner, "the last one", "https://example.org")
    events = send(w3, config, config.functions.addHostChain(added), owner)
    assert events == [
        (
            "AddHostChain",
            {
                "hostChain": {
                    "chainId": 2**64 - 1,
                    "fhevmExecutorAddress": a,
                    "aclAddress": owner,
                    "name": "the last one",
                    "website": "https://example.org",
                }
            },
        )
    ]
    assert config.functions.isHostChainRegistered(2**64 - 1).call()
    assert config.functions.getHostChains().call() == [host_chain(HOST_CHAIN_ID), added]
    assert config.functions.getHostChain(1).call() == added

    add_chain = config.functions.addHostChain
    assert reverts(
        add_chain(host_chain(OTHER_CHAIN_ID)), "OwnableUnauthorizedAccount(address)", a
    ) == (a,)
    assert reverts(add_chain(added), "HostChainAlreadyRegistered(uint256)", owner) == (2**64 - 1,)
    assert reverts(add_chain(host_chain(0)), "InvalidNullChainId()", owner) == ()
    assert reverts(add_chain(host_chain(2**64)), "ChainIdNotUint64(uint256)", owner) == (2**64,)


def test_the_owner_replaces_the_coprocessors_and_their_threshold(w3, accounts, gateway):
    owner, a, b, c, stranger = accounts
    config = gateway.config
    update = config.functions.updateCoprocessors
    signers = [Account.create().address for _ in range(3)]
    everyone = [
        coprocessor(sender, signer) for sender, signer in zip((a, b, c), signers, strict=True)
    ]

    assert reverts(update(everyone, 3), "OwnableUnauthorizedAccount(address)", a) == (a,)
    assert reverts(update([], 1), "EmptyCoprocessors()", owner) == ()
    assert reverts(update(everyone, 0), "InvalidNullCoprocessorThreshold()", owner) == ()
    assert reverts(
        update(everyone, 4), "InvalidHighCoprocessorThreshold(uint256,uint256)", owner
    ) == (4, 3)

    # unanimity: two agreeing submissions are no longer enough
    events = send(w3, config, update(everyone, 3), owner)
    assert events == [
        (
            "UpdateCoprocessors",
            {
                "newCoprocessors": [
                    {"txSenderAddress": s, "signerAddress": k, "s3BucketUrl": ""}
                    for s, k in zip((a, b, c), signers, strict=True)
                ],
                "newCoprocessorThreshold": 3,
            },
        )
    ]
    assert config.functions.getCoprocessorMajorityThreshold().call() == 3
    assert config.functions.getCoprocessorSigners().call() == signers
    for sender in (a, b):
        assert names(send(w3, gateway.commits, add(gateway, 20), sender)) == [
            "AddCiphertextMaterial"
        ]
    assert (
        names(send(w3, gateway.commits, add(gateway, 20), c))[-1]
        == "AddCiphertextMaterialConsensus"
    )

    # a new set: the old members are out, the new one is in with threshold 1
    send(w3, config, update([coprocessor(stranger, signers[0])], 1), owner)
    assert config.functions.getCoprocessorTxSenders().call() == [stranger]
    assert not config.functions.isCoprocessorTxSender(a).call()
    assert not config.functions.isCoprocessorSigner(signers[1]).call()
    assert config.functions.getCoprocessor(a).call() == (ZERO_ADDRESS, ZERO_ADDRESS, "")
    assert reverts(add(gateway, 21), "NotCoprocessorTxSender(address)", a) == (a,)
    assert (
        names(send(w3, gateway.commits, add(gateway, 21), stranger))[-1]
        == "AddCiphertextMaterialConsensus"
    )
