"""Our KMSGeneration stand-in (contracts/gateway) on the dev stack's anvil: Zama's
IKMSGeneration (v0.11) events, KeyDigest struct, views and errors; the stand-in's own
activateKey / activateCrs (the GatewayConfig owner's, in place of the KMS's keygen and
crsgen consensus) record the materials and emit what that consensus would."""

from __future__ import annotations

import pytest
from eth_utils import event_abi_to_log_topic, function_abi_to_4byte_selector
from web3 import Web3

from coprocessor.chain.contracts import artifact, deploy
from tests.gateway import GatewayContracts

from . import test_gateway_contracts
from .test_gateway_contracts import rendered, reverts, send

# test_gateway_contracts' fixtures: the dev stack's gateway chain; owner, three coprocessor
# tx senders and a stranger among its accounts; a fresh gateway (three coprocessors).
w3 = test_gateway_contracts.w3
accounts = test_gateway_contracts.accounts
gateway = test_gateway_contracts.gateway

KEY_ID = (4 << 248) | 1  # Zama's first key id: request type Keygen (4) | counter
CRS_ID = (5 << 248) | 1  # Zama's first CRS id: Crsgen (5) | counter
SERVER, PUBLIC = 0, 1  # KeyType
URLS = ["http://kms-0.local/keys", "http://kms-1.local/keys"]
DIGESTS = [(SERVER, Web3.keccak(b"server key")), (PUBLIC, Web3.keccak(b"public key"))]
CRS_DIGEST = Web3.keccak(b"crs")

KEY_DIGEST = "(uint8,bytes)"
# Written out from Zama's gateway-contracts v0.11.0 IKMSGeneration: the events, views and
# errors this stand-in implements, the NotGatewayOwner of its owner check (Zama's
# shared/GatewayOwnable) and the errors of shared/GatewayConfigChecks it inherits (as
# Zama's does); activateKey and activateCrs are the stand-in's own.
EXPECTED_ABI: dict[str, set[str]] = {
    "function": {
        f"activateKey(uint256,string[],{KEY_DIGEST}[])",
        "activateCrs(uint256,string[],bytes)",
        "getActiveKeyId() view returns (uint256)",
        "getActiveCrsId() view returns (uint256)",
        f"getKeyMaterials(uint256) view returns (string[],{KEY_DIGEST}[])",
        "getCrsMaterials(uint256) view returns (string[],bytes)",
        "getVersion() pure returns (string)",
    },
    "event": {
        f"ActivateKey(uint256,string[],{KEY_DIGEST}[])",
        "ActivateCrs(uint256,string[],bytes)",
    },
    "error": {
        "NotGatewayOwner(address)",
        "KeygenNotRequested(uint256)",
        "EmptyKeyDigests(uint256)",
        "CrsgenNotRequested(uint256)",
        "KeyNotGenerated(uint256)",
        "CrsNotGenerated(uint256)",
        "NotCoprocessorTxSender(address)",
        "NotCoprocessorSigner(address)",
        "HostChainNotRegistered(uint256)",
    },
}


@pytest.fixture
def kms(gateway: GatewayContracts):
    return gateway.kms_generation


def digests_as_event(digests: list[tuple[int, bytes]]) -> list[dict[str, object]]:
    return [{"keyType": kind, "digest": digest} for kind, digest in digests]


def test_the_compiled_abi_is_zamas():
    abi = artifact("KMSGeneration").abi
    for kind, expected in EXPECTED_ABI.items():
        found = {rendered(item) for item in abi if item["type"] == kind}
        assert found == expected, f"{kind}s: extra {found - expected}, missing {expected - found}"
    (constructor,) = [item for item in abi if item["type"] == "constructor"]
    assert [arg["type"] for arg in constructor["inputs"]] == ["address"]
    key_digest = next(i for i in abi if i.get("name") == "ActivateKey")["inputs"][2]
    assert [c["name"] for c in key_digest["components"]] == ["keyType", "digest"]
    for item in abi:
        if item["type"] == "event":
            assert event_abi_to_log_topic(item) == Web3.keccak(text=rendered(item)), item["name"]
        elif item["type"] in ("function", "error"):
            canonical = rendered(item).split(" ")[0]
            assert function_abi_to_4byte_selector(item) == Web3.keccak(text=canonical)[:4]


def test_nothing_is_active_at_first(kms):
    assert kms.functions.getActiveKeyId().call() == 0
    assert kms.functions.getActiveCrsId().call() == 0
    assert reverts(kms.functions.getKeyMaterials(KEY_ID), "KeyNotGenerated(uint256)") == (KEY_ID,)
    assert reverts(kms.functions.getCrsMaterials(CRS_ID), "CrsNotGenerated(uint256)") == (CRS_ID,)
    assert kms.functions.getVersion().call() == "KMSGeneration v0.4.0"


def test_the_owner_activates_a_key(w3, accounts, kms):
    owner = accounts[0]
    events = send(w3, kms, kms.functions.activateKey(KEY_ID, URLS, DIGESTS), owner)
    assert events == [
        (
            "ActivateKey",
            {"keyId": KEY_ID, "kmsNodeStorageUrls": URLS, "keyDigests": digests_as_event(DIGESTS)},
        )
    ]
    assert kms.functions.getActiveKeyId().call() == KEY_ID
    assert kms.functions.getKeyMaterials(KEY_ID).call() == [URLS, DIGESTS]
    assert kms.functions.getActiveCrsId().call() == 0

    # a later key becomes the active one; the earlier one's materials stay readable
    later = [(SERVER, b"\x01" * 40)]
    events = send(w3, kms, kms.functions.activateKey(KEY_ID + 1, [], later), owner)
    assert events[0][1]["keyDigests"] == digests_as_event(later)
    assert kms.functions.getActiveKeyId().call() == KEY_ID + 1
    assert kms.functions.getKeyMaterials(KEY_ID + 1).call() == [[], later]
    assert kms.functions.getKeyMaterials(KEY_ID).call()[0] == URLS

    # activating an id again replaces its materials (shorter lists leave nothing behind)
    send(w3, kms, kms.functions.activateKey(KEY_ID, URLS[:1], DIGESTS[1:]), owner)
    assert kms.functions.getActiveKeyId().call() == KEY_ID
    assert kms.functions.getKeyMaterials(KEY_ID).call() == [URLS[:1], DIGESTS[1:]]


def test_the_owner_activates_a_crs(w3, accounts, kms):
    owner = accounts[0]
    events = send(w3, kms, kms.functions.activateCrs(CRS_ID, URLS, CRS_DIGEST), owner)
    assert events == [
        ("ActivateCrs", {"crsId": CRS_ID, "kmsNodeStorageUrls": URLS, "crsDigest": CRS_DIGEST})
    ]
    assert kms.functions.getActiveCrsId().call() == CRS_ID
    assert kms.functions.getCrsMaterials(CRS_ID).call() == [URLS, CRS_DIGEST]
    assert kms.functions.getActiveKeyId().call() == 0
    send(w3, kms, kms.functions.activateCrs(CRS_ID, URLS[1:], b"\x02"), owner)
    assert kms.functions.getCrsMaterials(CRS_ID).call() == [URLS[1:], b"\x02"]


def test_only_the_gateway_owner_activates(w3, accounts, gateway: GatewayContracts, kms):
    owner, a, _, _, stranger = accounts
    for sender in (a, stranger):
        assert reverts(
            kms.functions.activateKey(KEY_ID, URLS, DIGESTS), "NotGatewayOwner(address)", sender
        ) == (sender,)
        assert reverts(
            kms.functions.activateCrs(CRS_ID, URLS, CRS_DIGEST), "NotGatewayOwner(address)", sender
        ) == (sender,)
    # GatewayConfig's owner, not whoever deployed KMSGeneration
    config = gateway.config
    other = deploy(w3, "KMSGeneration", config.address, sender=stranger)
    assert reverts(
        other.functions.activateCrs(CRS_ID, URLS, CRS_DIGEST), "NotGatewayOwner(address)", stranger
    ) == (stranger,)
    assert send(w3, other, other.functions.activateCrs(CRS_ID, URLS, CRS_DIGEST), owner)


def test_empty_digests_and_id_zero_are_refused(accounts, kms):
    owner = accounts[0]
    assert reverts(
        kms.functions.activateKey(KEY_ID, URLS, []), "EmptyKeyDigests(uint256)", owner
    ) == (KEY_ID,)
    assert reverts(
        kms.functions.activateKey(0, URLS, DIGESTS), "KeygenNotRequested(uint256)", owner
    ) == (0,)
    assert reverts(
        kms.functions.activateCrs(0, URLS, CRS_DIGEST), "CrsgenNotRequested(uint256)", owner
    ) == (0,)
    assert kms.functions.getActiveKeyId().call() == 0
