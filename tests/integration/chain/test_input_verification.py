"""Our InputVerification (contracts/gateway) on the dev stack's anvil: Zama's ABI (v0.11) to
the signature, and Zama's semantics - request ids 1, 2, ...; responses only from a
coprocessor's tx sender, signed (EIP-712 CiphertextVerification, signed here with
coprocessor.chain.eip712, as the product signs) by that coprocessor's registered signer;
agreement counted per digest; one consensus event carrying the agreeing signatures in
order; late responses recorded; one response per coprocessor and request, verdict either
way; a request that reached one verdict never reaches the other.

Every test deploys its own gateway: three coprocessors (threshold 2) whose tx senders are
the node's unlocked accounts and whose signers are keys made here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import event_abi_to_log_topic, function_abi_to_4byte_selector
from web3 import Web3

from coprocessor.chain.contracts import artifact, decode_logs
from coprocessor.chain.eip712 import (
    InputVerificationDomain,
    ciphertext_verification,
    sign_ciphertext_verification,
)
from tests.gateway import GatewayContracts, coprocessor, deploy_gateway, host_chain

from . import test_gateway_contracts
from .test_gateway_contracts import (
    EXTRA_DATA,
    HOST_CHAIN_ID,
    OTHER_CHAIN_ID,
    handle,
    names,
    rendered,
    reverts,
)

INPUT = b"\xc1" * 100  # stands in for a ciphertext list with its ZK proof: nobody parses it

# Written out from Zama's gateway-contracts v0.11.0: IInputVerification (functions, events,
# errors), the errors its implementation raises through shared/GatewayConfigChecks (ours
# raises the same) and OpenZeppelin's ECDSA.recover, and ERC-5267's eip712Domain with its
# event (Zama's inherits them from EIP712Upgradeable).
EXPECTED_ABI: dict[str, set[str]] = {
    "function": {
        "verifyProofRequest(uint256,address,address,bytes,bytes)",
        "verifyProofResponse(uint256,bytes32[],bytes,bytes)",
        "rejectProofResponse(uint256,bytes)",
        "isProofVerified(uint256) view returns (bool)",
        "isProofRejected(uint256) view returns (bool)",
        "getVerifyProofConsensusTxSenders(uint256) view returns (address[])",
        "getRejectProofConsensusTxSenders(uint256) view returns (address[])",
        "getVersion() pure returns (string)",
        "eip712Domain() view returns (bytes1,string,string,uint256,address,bytes32,uint256[])",
    },
    "event": {
        "VerifyProofRequest(uint256 indexed,uint256 indexed,address,address,bytes,bytes)",
        "VerifyProofResponseCall(uint256 indexed,bytes32[],bytes,address,bytes)",
        "VerifyProofResponse(uint256 indexed,bytes32[],bytes[])",
        "RejectProofResponseCall(uint256 indexed,bytes)",
        "RejectProofResponse(uint256 indexed)",
        "EIP712DomainChanged()",
    },
    "error": {
        "CoprocessorAlreadyVerified(uint256,address,address)",
        "CoprocessorAlreadyRejected(uint256,address,address)",
        "VerifyProofNotRequested(uint256)",
        "NotCoprocessorTxSender(address)",
        "NotCoprocessorSigner(address)",
        "HostChainNotRegistered(uint256)",
        "CoprocessorSignerDoesNotMatchTxSender(address,address)",
        "ECDSAInvalidSignature()",
        "ECDSAInvalidSignatureLength(uint256)",
        "ECDSAInvalidSignatureS(bytes32)",
    },
}


# test_gateway_contracts' fixtures: the dev stack's gateway chain, and owner, three
# coprocessor tx senders and a stranger among its unlocked accounts.
w3 = test_gateway_contracts.w3
accounts = test_gateway_contracts.accounts


class Gateway(NamedTuple):
    contracts: GatewayContracts
    signers: list[LocalAccount]  # of accounts[1:4], in that order
    domain: InputVerificationDomain

    @property
    def iv(self):
        return self.contracts.input_verification


@pytest.fixture
def gateway(w3, accounts) -> Gateway:
    """Three coprocessors (majority threshold 2) with signer keys of their own, one host chain."""
    signers = [Account.create() for _ in range(3)]
    contracts = deploy_gateway(
        w3,
        [
            coprocessor(tx_sender, signer.address, f"s3://bucket-{i}")
            for i, (tx_sender, signer) in enumerate(zip(accounts[1:4], signers, strict=True))
        ],
        [host_chain(HOST_CHAIN_ID)],
        owner=accounts[0],
    )
    domain = InputVerificationDomain(w3.eth.chain_id, contracts.input_verification.address)
    return Gateway(contracts, signers, domain)


class Request(NamedTuple):
    zk_proof_id: int
    user: str
    contract: str
    chain_id: int


def send(w3: Web3, contract, call, sender: str) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Transact, require success; the contract's decoded events and the gas used."""
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt["status"] == 1, f"{call.fn_name} reverted"
    return decode_logs(contract, receipt["logs"]), receipt["gasUsed"]


def request(w3: Web3, gateway: Gateway, sender: str) -> Request:
    """A verification request for a fresh user and contract of HOST_CHAIN_ID."""
    user, contract = Account.create().address, Account.create().address
    call = gateway.iv.functions.verifyProofRequest(HOST_CHAIN_ID, contract, user, INPUT, EXTRA_DATA)
    events, _ = send(w3, gateway.iv, call, sender)
    assert names(events) == ["VerifyProofRequest"]
    return Request(events[0][1]["zkProofId"], user, contract, HOST_CHAIN_ID)


def handles(*ns: int) -> list[bytes]:
    return [handle(n) for n in ns]


def signature(
    gateway: Gateway,
    req: Request,
    ct_handles: list[bytes],
    signer: LocalAccount,
    extra_data: bytes = EXTRA_DATA,
) -> bytes:
    message = ciphertext_verification(ct_handles, req.user, req.contract, req.chain_id, extra_data)
    return sign_ciphertext_verification(signer, gateway.domain, message)


def respond(gateway: Gateway, req: Request, ct_handles: list[bytes], coprocessor_index: int):
    """coprocessor ``coprocessor_index``'s verifyProofResponse call (send it from its tx
    sender), signed by its own signer."""
    signed = signature(gateway, req, ct_handles, gateway.signers[coprocessor_index])
    return gateway.iv.functions.verifyProofResponse(req.zk_proof_id, ct_handles, signed, EXTRA_DATA)


# --- ABI ---------------------------------------------------------------------------------


def test_the_compiled_abi_is_zamas():
    abi = artifact("InputVerification").abi
    for kind, expected in EXPECTED_ABI.items():
        found = {rendered(item) for item in abi if item["type"] == kind}
        assert found == expected, f"{kind}s: extra {found - expected}, missing {expected - found}"
    (constructor,) = [item for item in abi if item["type"] == "constructor"]
    assert [arg["type"] for arg in constructor["inputs"]] == ["address"]
    for item in abi:
        if item["type"] == "event":
            canonical = rendered(item).replace(" indexed", "")
            assert event_abi_to_log_topic(item) == Web3.keccak(text=canonical), canonical
        elif item["type"] in ("function", "error"):
            canonical = rendered(item).split(" ")[0]
            assert function_abi_to_4byte_selector(item) == Web3.keccak(text=canonical)[:4]


def test_version_and_eip712_domain(w3, gateway):
    assert gateway.iv.functions.getVersion().call() == "InputVerification v0.3.0"
    assert gateway.iv.functions.eip712Domain().call() == [
        b"\x0f",
        "InputVerification",
        "1",
        w3.eth.chain_id,
        gateway.iv.address,
        bytes(32),
        [],
    ]


# --- requests ------------------------------------------------------------------------------


def test_anyone_requests_and_ids_count_from_one(w3, accounts, gateway):
    owner, a, _, _, stranger = accounts
    user, contract = Account.create().address, Account.create().address
    call = gateway.iv.functions.verifyProofRequest(
        HOST_CHAIN_ID, contract, user, INPUT, b"\x00\x01"
    )
    events, _ = send(w3, gateway.iv, call, stranger)
    assert events == [
        (
            "VerifyProofRequest",
            {
                "zkProofId": 1,
                "contractChainId": HOST_CHAIN_ID,
                "contractAddress": contract,
                "userAddress": user,
                "ciphertextWithZKProof": INPUT,
                "extraData": b"\x00\x01",
            },
        )
    ]
    assert [request(w3, gateway, sender).zk_proof_id for sender in (a, owner, stranger)] == [
        2,
        3,
        4,
    ]
    assert not gateway.iv.functions.isProofVerified(1).call()
    assert not gateway.iv.functions.isProofRejected(1).call()


def test_a_request_for_an_unregistered_host_chain_is_refused(w3, accounts, gateway):
    owner, stranger = accounts[0], accounts[4]
    call = gateway.iv.functions.verifyProofRequest(OTHER_CHAIN_ID, owner, owner, INPUT, EXTRA_DATA)
    assert reverts(call, "HostChainNotRegistered(uint256)", stranger) == (OTHER_CHAIN_ID,)
    config = gateway.contracts.config
    send(w3, config, config.functions.addHostChain(host_chain(OTHER_CHAIN_ID)), owner)
    events, _ = send(w3, gateway.iv, call, stranger)
    assert events[0][1]["zkProofId"] == 1  # the refused request took no id


def test_responses_to_unknown_ids_are_refused(w3, accounts, gateway):
    a = accounts[1]
    req = request(w3, gateway, accounts[4])
    for unknown in (0, req.zk_proof_id + 1):
        other = req._replace(zk_proof_id=unknown)
        assert reverts(
            respond(gateway, other, handles(1), 0), "VerifyProofNotRequested(uint256)", a
        ) == (unknown,)
        reject = gateway.iv.functions.rejectProofResponse(unknown, EXTRA_DATA)
        assert reverts(reject, "VerifyProofNotRequested(uint256)", a) == (unknown,)


# --- who may respond -------------------------------------------------------------------------


def test_only_coprocessor_tx_senders_respond(w3, accounts, gateway):
    owner, _, _, _, stranger = accounts
    req = request(w3, gateway, stranger)
    # a valid signature of a coprocessor's signer does not make its sender a coprocessor
    for sender in (owner, stranger, gateway.signers[0].address):
        assert reverts(
            respond(gateway, req, handles(1), 0), "NotCoprocessorTxSender(address)", sender
        ) == (sender,)
        reject = gateway.iv.functions.rejectProofResponse(req.zk_proof_id, EXTRA_DATA)
        assert reverts(reject, "NotCoprocessorTxSender(address)", sender) == (sender,)


def test_the_signature_must_be_the_senders_registered_signer(w3, accounts, gateway):
    _, a, b, _, stranger = accounts
    req = request(w3, gateway, stranger)
    hs = handles(1, 2)

    def response(signed: bytes):
        return gateway.iv.functions.verifyProofResponse(req.zk_proof_id, hs, signed, EXTRA_DATA)

    outsider = Account.create()
    assert reverts(
        response(signature(gateway, req, hs, outsider)), "NotCoprocessorSigner(address)", a
    ) == (outsider.address,)
    # another coprocessor's signer, sent by a
    assert reverts(
        response(signature(gateway, req, hs, gateway.signers[1])),
        "CoprocessorSignerDoesNotMatchTxSender(address,address)",
        a,
    ) == (gateway.signers[1].address, a)
    # a's signer, but over other data (another user; another domain): recovers to nobody known
    wrong_user = req._replace(user=stranger)
    for signed in (
        signature(gateway, wrong_user, hs, gateway.signers[0]),
        sign_ciphertext_verification(
            gateway.signers[0],
            dataclasses.replace(gateway.domain, chain_id=gateway.domain.chain_id + 1),
            ciphertext_verification(hs, req.user, req.contract, req.chain_id, EXTRA_DATA),
        ),
    ):
        (recovered,) = reverts(response(signed), "NotCoprocessorSigner(address)", a)
        assert recovered not in {s.address for s in gateway.signers}
    good = signature(gateway, req, hs, gateway.signers[0])
    assert reverts(response(good[:64]), "ECDSAInvalidSignatureLength(uint256)", a) == (64,)
    # the high-s twin of a valid signature (OpenZeppelin refuses malleable signatures)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (n - s).to_bytes(32, "big") + bytes([55 - good[64]])
    assert reverts(response(twin), "ECDSAInvalidSignatureS(bytes32)", a) == (
        (n - s).to_bytes(32, "big"),
    )
    assert reverts(response(good[:64] + b"\x05"), "ECDSAInvalidSignature()", a) == ()
    events, _ = send(w3, gateway.iv, response(good), a)
    assert names(events) == ["VerifyProofResponseCall"]
    # a's signature sent by b (a replay) recovers to a's signer, not b's: refused
    assert reverts(response(good), "CoprocessorSignerDoesNotMatchTxSender(address,address)", b) == (
        gateway.signers[0].address,
        b,
    )


# --- consensus -------------------------------------------------------------------------------


def test_the_second_agreeing_response_reaches_consensus_and_a_late_one_is_recorded(
    w3, accounts, gateway, capsys
):
    _, a, b, c, stranger = accounts
    iv = gateway.iv
    req = request(w3, gateway, stranger)
    hs = handles(1, 2, 3)
    sig_a, sig_b, sig_c = (signature(gateway, req, hs, s) for s in gateway.signers)

    first, first_gas = send(w3, iv, respond(gateway, req, hs, 0), a)
    assert first == [
        (
            "VerifyProofResponseCall",
            {
                "zkProofId": req.zk_proof_id,
                "ctHandles": hs,
                "signature": sig_a,
                "coprocessorTxSender": a,
                "extraData": EXTRA_DATA,
            },
        )
    ]
    assert not iv.functions.isProofVerified(req.zk_proof_id).call()
    assert iv.functions.getVerifyProofConsensusTxSenders(req.zk_proof_id).call() == []

    second, consensus_gas = send(w3, iv, respond(gateway, req, hs, 1), b)
    assert names(second) == ["VerifyProofResponseCall", "VerifyProofResponse"]
    assert second[1][1] == {
        "zkProofId": req.zk_proof_id,
        "ctHandles": hs,
        "signatures": [sig_a, sig_b],
    }
    assert iv.functions.isProofVerified(req.zk_proof_id).call()
    assert not iv.functions.isProofRejected(req.zk_proof_id).call()
    assert iv.functions.getVerifyProofConsensusTxSenders(req.zk_proof_id).call() == [a, b]

    late, _ = send(w3, iv, respond(gateway, req, hs, 2), c)
    assert late == [
        (
            "VerifyProofResponseCall",
            {
                "zkProofId": req.zk_proof_id,
                "ctHandles": hs,
                "signature": sig_c,
                "coprocessorTxSender": c,
                "extraData": EXTRA_DATA,
            },
        )
    ]
    assert iv.functions.getVerifyProofConsensusTxSenders(req.zk_proof_id).call() == [a, b, c]
    with capsys.disabled():
        print(
            f"\nverifyProofResponse gas (3 handles): first {first_gas}, consensus {consensus_gas}"
        )


def test_disagreeing_responses_do_not_agree(w3, accounts, gateway):
    _, a, b, c, stranger = accounts
    iv = gateway.iv
    req = request(w3, gateway, stranger)
    send(w3, iv, respond(gateway, req, handles(1, 2), 0), a)
    # other handles, the same handles in another order, or another extraData: other digests
    events, _ = send(w3, iv, respond(gateway, req, handles(1, 3), 1), b)
    assert names(events) == ["VerifyProofResponseCall"]
    assert not iv.functions.isProofVerified(req.zk_proof_id).call()
    other = request(w3, gateway, stranger)
    send(w3, iv, respond(gateway, other, handles(1, 2), 0), a)
    events, _ = send(w3, iv, respond(gateway, other, handles(2, 1), 1), b)
    assert names(events) == ["VerifyProofResponseCall"]
    third = request(w3, gateway, stranger)
    send(w3, iv, respond(gateway, third, handles(1), 0), a)
    signed = signature(gateway, third, handles(1), gateway.signers[1], extra_data=b"\x01")
    call = iv.functions.verifyProofResponse(third.zk_proof_id, handles(1), signed, b"\x01")
    assert names(send(w3, iv, call, b)[0]) == ["VerifyProofResponseCall"]
    assert not iv.functions.isProofVerified(third.zk_proof_id).call()

    # c agrees with a on the first request: consensus with a's and c's signatures only
    events, _ = send(w3, iv, respond(gateway, req, handles(1, 2), 2), c)
    assert names(events) == ["VerifyProofResponseCall", "VerifyProofResponse"]
    assert events[1][1]["ctHandles"] == handles(1, 2)
    assert events[1][1]["signatures"] == [
        signature(gateway, req, handles(1, 2), gateway.signers[0]),
        signature(gateway, req, handles(1, 2), gateway.signers[2]),
    ]
    assert iv.functions.getVerifyProofConsensusTxSenders(req.zk_proof_id).call() == [a, c]


def test_an_empty_handle_list_reaches_consensus_too(w3, accounts, gateway):
    _, a, b, _, stranger = accounts
    req = request(w3, gateway, stranger)
    send(w3, gateway.iv, respond(gateway, req, [], 0), a)
    events, _ = send(w3, gateway.iv, respond(gateway, req, [], 1), b)
    assert names(events) == ["VerifyProofResponseCall", "VerifyProofResponse"]
    assert events[1][1]["ctHandles"] == []


def test_a_coprocessor_responds_once(w3, accounts, gateway):
    _, a, b, _, stranger = accounts
    iv = gateway.iv
    req = request(w3, gateway, stranger)
    signer_a = gateway.signers[0].address
    send(w3, iv, respond(gateway, req, handles(1), 0), a)
    verified = "CoprocessorAlreadyVerified(uint256,address,address)"
    assert reverts(respond(gateway, req, handles(1), 0), verified, a) == (
        req.zk_proof_id,
        a,
        signer_a,
    )
    assert reverts(respond(gateway, req, handles(2), 0), verified, a) == (
        req.zk_proof_id,
        a,
        signer_a,
    )
    reject = iv.functions.rejectProofResponse(req.zk_proof_id, EXTRA_DATA)
    assert reverts(reject, verified, a) == (req.zk_proof_id, a, signer_a)
    # after consensus too
    send(w3, iv, respond(gateway, req, handles(1), 1), b)
    assert reverts(respond(gateway, req, handles(1), 1), verified, b) == (
        req.zk_proof_id,
        b,
        gateway.signers[1].address,
    )
    # another request is another response
    other = request(w3, gateway, stranger)
    assert names(send(w3, iv, respond(gateway, other, handles(1), 0), a)[0]) == [
        "VerifyProofResponseCall"
    ]


# --- rejections ------------------------------------------------------------------------------


def test_rejections_reach_consensus_once(w3, accounts, gateway):
    owner, a, b, c, stranger = accounts
    iv = gateway.iv
    req = request(w3, gateway, stranger)
    zk_id = req.zk_proof_id

    def reject(extra: bytes = EXTRA_DATA):
        return iv.functions.rejectProofResponse(zk_id, extra)

    events, _ = send(w3, iv, reject(), a)
    assert events == [("RejectProofResponseCall", {"zkProofId": zk_id, "extraData": EXTRA_DATA})]
    assert not iv.functions.isProofRejected(zk_id).call()
    assert iv.functions.getRejectProofConsensusTxSenders(zk_id).call() == [a]
    rejected = "CoprocessorAlreadyRejected(uint256,address,address)"
    signer_a = gateway.signers[0].address
    assert reverts(reject(), rejected, a) == (zk_id, a, signer_a)
    assert reverts(respond(gateway, req, handles(1), 0), rejected, a) == (zk_id, a, signer_a)

    events, _ = send(w3, iv, reject(b"\x01"), b)  # extraData is not voted on
    assert events == [
        ("RejectProofResponseCall", {"zkProofId": zk_id, "extraData": b"\x01"}),
        ("RejectProofResponse", {"zkProofId": zk_id}),
    ]
    assert iv.functions.isProofRejected(zk_id).call()
    assert not iv.functions.isProofVerified(zk_id).call()
    assert iv.functions.getVerifyProofConsensusTxSenders(zk_id).call() == []

    # With the threshold lowered to 1, c's "valid" would be a consensus on its own; the
    # request was rejected, so it is recorded and nothing more.
    config = gateway.contracts.config
    everyone = [
        coprocessor(sender, signer.address)
        for sender, signer in zip((a, b, c), gateway.signers, strict=True)
    ]
    send(w3, config, config.functions.updateCoprocessors(everyone, 1), owner)
    events, _ = send(w3, iv, respond(gateway, req, handles(1), 2), c)
    assert names(events) == ["VerifyProofResponseCall"]
    assert not iv.functions.isProofVerified(zk_id).call()


def test_an_earlier_rejection_does_not_keep_a_majority_from_verifying(w3, accounts, gateway):
    _, a, b, c, stranger = accounts
    iv = gateway.iv
    req = request(w3, gateway, stranger)
    zk_id = req.zk_proof_id
    send(w3, iv, iv.functions.rejectProofResponse(zk_id, EXTRA_DATA), a)
    send(w3, iv, respond(gateway, req, handles(1), 1), b)
    events, _ = send(w3, iv, respond(gateway, req, handles(1), 2), c)
    assert names(events) == ["VerifyProofResponseCall", "VerifyProofResponse"]
    assert events[1][1]["signatures"] == [
        signature(gateway, req, handles(1), gateway.signers[1]),
        signature(gateway, req, handles(1), gateway.signers[2]),
    ]
    assert iv.functions.isProofVerified(zk_id).call()
    assert not iv.functions.isProofRejected(zk_id).call()
    assert iv.functions.getRejectProofConsensusTxSenders(zk_id).call() == [a]
    assert iv.functions.getVerifyProofConsensusTxSenders(zk_id).call() == [b, c]
