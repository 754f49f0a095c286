"""Zama's fhEVM host contracts (@fhevm/host-contracts, compiled unmodified) on the dev
stack's anvil, deployed by ``devstack.host_chain.ensure_host_chain``, and our dapps on
Zama's FHE library (@fhevm/solidity) driving them.

Every result handle the real FHEVMExecutor emits is recomputed here from the host's
rule (keccak256 of the packed operands, then the metadata bytes), written out below from
the protocol notes rather than imported, so the product's own derivation can be checked
against what this test records: ``FHE_RECORD_HOST_VECTORS=1`` rewrites
tests/unit/vectors/host_handles.json from this run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import event_abi_to_log_topic
from web3 import Web3

from coprocessor.chain.contracts import artifact, decode_logs
from coprocessor.errors import Fatal
from devstack.chain import Anvil
from devstack.host_chain import (
    DEV_HOST_DEPLOYER_ADDRESS,
    DEV_HOST_DEPLOYER_KEY,
    HOST_BUILD,
    HOST_COMPILED,
    ensure_host_chain,
    host_addresses,
    signer_key,
)
from tests.hostchain import deploy_dapp, send, signed_input_proof
from tests.paths import REPO_ROOT, TESTING_CONTRACTS

VECTORS = REPO_ROOT / "tests" / "unit" / "vectors" / "host_handles.json"

# --- the host's handle rule (FHEVMExecutor v0.10), written out for this test -------------

BINARY_NAMES = (
    "FheAdd", "FheSub", "FheMul", "FheDiv", "FheRem", "FheBitAnd", "FheBitOr", "FheBitXor",
    "FheShl", "FheShr", "FheRotl", "FheRotr", "FheEq", "FheNe", "FheGe", "FheGt", "FheLe",
    "FheLt", "FheMin", "FheMax",
)  # fmt: skip
BINARY = {name: code for code, name in enumerate(BINARY_NAMES)}  # op codes 0..19
COMPARISONS = {"FheEq", "FheNe", "FheGe", "FheGt", "FheLe", "FheLt"}
UNARY = {"FheNeg": 20, "FheNot": 21}
CAST, TRIVIAL, IF_THEN_ELSE, RAND, RAND_BOUNDED = 23, 24, 25, 26, 27
BOOL, UINT8, UINT32, UINT64 = 0, 2, 4, 5
EXECUTOR_EVENTS = {
    *BINARY, *UNARY, "Cast", "TrivialEncrypt", "FheIfThenElse", "FheRand", "FheRandBounded",
}  # fmt: skip


def preimage(name: str, args: dict[str, Any], acl: str, chain_id: int) -> tuple[bytes, int]:
    """(abi.encodePacked input of the keccak, result type) of one executor event."""
    tail = bytes.fromhex(acl[2:]) + chain_id.to_bytes(32, "big")
    if name in BINARY:
        lhs, rhs = bytes(args["lhs"]), bytes(args["rhs"])
        packed = bytes([BINARY[name]]) + lhs + rhs + bytes(args["scalarByte"]) + tail
        return packed, BOOL if name in COMPARISONS else lhs[30]
    if name in UNARY:
        ct = bytes(args["ct"])
        return bytes([UNARY[name]]) + ct + tail, ct[30]
    if name == "Cast":
        return bytes([CAST]) + bytes(args["ct"]) + bytes([args["toType"]]) + tail, args["toType"]
    if name == "TrivialEncrypt":
        packed = bytes([TRIVIAL]) + args["pt"].to_bytes(32, "big") + bytes([args["toType"]])
        return packed + tail, args["toType"]
    if name == "FheIfThenElse":
        operands = bytes(args["control"]) + bytes(args["ifTrue"]) + bytes(args["ifFalse"])
        return bytes([IF_THEN_ELSE]) + operands + tail, bytes(args["ifTrue"])[30]
    if name == "FheRand":  # no ACL, no chain id
        return bytes([RAND, args["randType"]]) + bytes(args["seed"]), args["randType"]
    if name == "FheRandBounded":
        bound = args["upperBound"].to_bytes(32, "big")
        packed = bytes([RAND_BOUNDED]) + bound + bytes([args["randType"]]) + bytes(args["seed"])
        return packed, args["randType"]
    raise AssertionError(f"no handle rule for {name}")


def expected_handle(name: str, args: dict[str, Any], acl: str, chain_id: int) -> bytes:
    packed, result_type = preimage(name, args, acl, chain_id)
    digest = Web3.keccak(packed)
    return digest[:21] + b"\xff" + chain_id.to_bytes(8, "big") + bytes([result_type, 0])


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w3(dev_stack) -> Web3:
    web3 = Web3(Web3.HTTPProvider(dev_stack["FHE_HOST_RPC_URL"]))
    assert web3.is_connected()
    return web3


@pytest.fixture(scope="module")
def state_dir(dev_stack) -> Path:
    # The stack's own: its signer keys are the ones `fhectl dev host-chain` registered,
    # so this test leaves a user's host chain as it found it.
    return Path(dev_stack["FHE_STATE_DIR"])


@pytest.fixture(scope="module")
def host(w3, state_dir):
    return ensure_host_chain(w3, state_dir)


@pytest.fixture(scope="module")
def executor(w3, host):
    return w3.eth.contract(address=host.executor, abi=artifact("FHEVMExecutor", HOST_COMPILED).abi)


@pytest.fixture(scope="module")
def acl(w3, host):
    return w3.eth.contract(address=host.acl, abi=artifact("ACL", HOST_COMPILED).abi)


def check_handles(events, host) -> None:
    for name, args in events:
        if name in EXECUTOR_EVENTS:
            want = expected_handle(name, args, host.acl, host.chain_id)
            assert bytes(args["result"]) == want, (name, args)


# --- deployment ----------------------------------------------------------------------------


def test_the_host_contracts_land_at_the_compiled_addresses(w3, host, executor, acl):
    record = host_addresses()
    assert record["deployer"] == DEV_HOST_DEPLOYER_ADDRESS == host.deployer
    assert Account.from_key(DEV_HOST_DEPLOYER_KEY).address == DEV_HOST_DEPLOYER_ADDRESS
    assert DEV_HOST_DEPLOYER_ADDRESS not in w3.eth.accounts  # not one of anvil's
    # the product's copy of the addresses and the dev build's are one record
    assert json.loads((HOST_COMPILED / "addresses.json").read_text()) == record
    addresses = record["addresses"]
    assert (host.acl, host.executor, host.kms_verifier, host.input_verifier) == (
        addresses["ACL"], addresses["FHEVMExecutor"], addresses["KMSVerifier"],
        addresses["InputVerifier"],
    )  # fmt: skip
    assert (host.hcu_limit, host.pauser_set) == (addresses["HCULimit"], addresses["PauserSet"])
    for address in addresses.values():
        assert w3.eth.get_code(address) != b""
    # the contracts found each other through the generated constants
    assert executor.functions.getACLAddress().call() == host.acl
    assert executor.functions.getInputVerifierAddress().call() == host.input_verifier
    assert executor.functions.getHCULimitAddress().call() == host.hcu_limit
    assert acl.functions.getFHEVMExecutorAddress().call() == host.executor
    assert acl.functions.getPauserSetAddress().call() == host.pauser_set
    assert acl.functions.owner().call() == DEV_HOST_DEPLOYER_ADDRESS
    versions = {
        name: w3.eth.contract(address=addresses[name], abi=artifact(name, build).abi)
        .functions.getVersion()
        .call()
        for name, build in (
            ("ACL", HOST_COMPILED), ("FHEVMExecutor", HOST_COMPILED),
            ("KMSVerifier", HOST_COMPILED), ("InputVerifier", HOST_COMPILED),
            ("HCULimit", HOST_BUILD), ("PauserSet", HOST_BUILD),
        )
    }  # fmt: skip
    print("host contract versions:", versions)
    assert versions["FHEVMExecutor"].startswith("FHEVMExecutor v")


def test_a_second_call_sends_nothing(w3, host, state_dir):
    nonce = w3.eth.get_transaction_count(DEV_HOST_DEPLOYER_ADDRESS)
    again = ensure_host_chain(w3, state_dir)
    assert again.actions == ()
    assert again == host
    assert w3.eth.get_transaction_count(DEV_HOST_DEPLOYER_ADDRESS) == nonce


def test_the_registered_signers_are_ours(w3, host, state_dir):
    input_verifier = w3.eth.contract(
        address=host.input_verifier, abi=artifact("InputVerifier", HOST_COMPILED).abi
    )
    kms_verifier = w3.eth.contract(
        address=host.kms_verifier, abi=artifact("KMSVerifier", HOST_COMPILED).abi
    )
    ours = signer_key(host).address
    assert input_verifier.functions.getCoprocessorSigners().call() == [ours]
    assert list(host.coprocessor_signers) == [ours] and host.threshold == 1
    assert input_verifier.functions.getThreshold().call() == 1
    assert kms_verifier.functions.getKmsSigners().call() == [
        signer_key(host, kind="kms-signer").address
    ]
    key_file = state_dir / "host" / "coprocessor-signer-0.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    _, name, version, chain_id, verifying, _, _ = input_verifier.functions.eip712Domain().call()
    assert (name, version) == ("InputVerification", "1")
    assert (chain_id, verifying) == (host.gateway_chain_id, host.input_verification_address)


def test_a_deployer_used_for_something_else_is_refused(tmp_path):
    """On a fresh anvil (started with the dev stack's flags) where the deployer's nonce 0
    went to a plain transfer, the addresses cannot be reached: a clear error, nothing
    deployed."""
    chain = Anvil()
    info = chain.up(tmp_path, None)
    try:
        w3 = Web3(Web3.HTTPProvider(chain.env(info)["FHE_HOST_RPC_URL"]))
        deployer = Account.from_key(DEV_HOST_DEPLOYER_KEY)
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction(
            {"from": w3.eth.accounts[0], "to": deployer.address, "value": 10**18}))  # fmt: skip
        signed = deployer.sign_transaction({
            "to": w3.eth.accounts[0], "value": 1, "gas": 21000, "nonce": 0,
            "chainId": w3.eth.chain_id, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1,
        })  # fmt: skip
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
        with pytest.raises(Fatal, match="used the deployer for something else"):
            ensure_host_chain(w3, tmp_path)
        assert w3.eth.get_transaction_count(deployer.address) == 1
    finally:
        chain.down(info)


# --- dapps on @fhevm/solidity ------------------------------------------------------------


def test_confidential_token_on_the_real_host(w3, host, executor, acl):
    owner, alice, bob = w3.eth.accounts[0], w3.eth.accounts[1], w3.eth.accounts[2]
    token = deploy_dapp(w3, host, "ConfidentialToken")

    minted = send(w3, token.functions.mint(alice, 100), owner)
    events = decode_logs(executor, minted["logs"])
    assert [name for name, _ in events] == ["TrivialEncrypt", "FheAdd"]  # 0 + 100, scalar
    assert events[1][1]["scalarByte"] == b"\x01"
    balance = token.functions.balanceOf(alice).call()
    assert balance == bytes(events[1][1]["result"])
    assert {(a["account"], bytes(a["handle"])) for _, a in decode_logs(acl, minted["logs"])} == {
        (token.address, balance), (alice, balance)
    }  # fmt: skip
    check_handles(events, host)

    moved = send(w3, token.functions.transferTrivial(bob, 30), alice)
    events = decode_logs(executor, moved["logs"])
    names = [name for name, _ in events]
    assert names == [
        "TrivialEncrypt", "FheLe", "TrivialEncrypt", "FheIfThenElse", "FheSub",
        "TrivialEncrypt", "FheAdd",
    ]  # fmt: skip
    assert all(args["caller"] == token.address for _, args in events)
    check_handles(events, host)
    sub = dict(events)["FheSub"]
    assert token.functions.balanceOf(alice).call() == bytes(sub["result"])
    allowed = {(a["account"], bytes(a["handle"])) for _, a in decode_logs(acl, moved["logs"])}
    assert (alice, token.functions.balanceOf(alice).call()) in allowed
    assert (bob, token.functions.balanceOf(bob).call()) in allowed
    print("transferTrivial gas:", moved["gasUsed"])

    # An input the dev coprocessor signer signed: FHE.fromExternal -> VerifyInput.
    digest = Web3.keccak(b"test input " + os.urandom(8))
    handle = digest[:21] + b"\x00" + host.chain_id.to_bytes(8, "big") + bytes([UINT64, 0])
    proof = signed_input_proof(host, [handle], alice, token.address)
    sent = send(w3, token.functions.transfer(bob, handle, proof), alice)
    events = decode_logs(executor, sent["logs"])
    assert events[0][0] == "VerifyInput"
    verify = events[0][1]
    assert (bytes(verify["inputHandle"]), bytes(verify["result"])) == (handle, handle)
    assert (verify["userAddress"], verify["inputType"]) == (alice, UINT64)
    assert bytes(verify["inputProof"]) == proof
    assert dict(events)["FheLe"]["lhs"] == handle
    check_handles(events, host)


ALL_OPS = [
    ("add", (7, 5)), ("sub", (7, 5)), ("mul", (7, 5)), ("div", (7, 2)), ("rem", (7, 2)),
    ("bitAnd", (12, 10)), ("bitOr", (12, 10)), ("bitXor", (12, 10)),
    ("shl", (3, 2)), ("shr", (12, 2)), ("rotl", (3, 2)), ("rotr", (3, 2)),
    ("eq", (7, 5)), ("ne", (7, 5)), ("ge", (7, 5)), ("gt", (7, 5)), ("le", (7, 5)),
    ("lt", (7, 5)), ("min", (7, 5)), ("max", (7, 5)), ("neg", (7,)), ("not", (7,)),
    ("cast", (300, 9)), ("trivialEncrypt", (42,)), ("trivialEncryptBool", (True,)),
    ("select", (True, 1, 2)), ("rand", ()), ("randBounded", (16,)),
]  # fmt: skip


def test_every_op_kind_on_the_real_host(w3, host, executor, acl):
    ops = deploy_dapp(w3, host, "AllOps")
    sender = w3.eth.accounts[0]
    seen: list[tuple[str, dict[str, Any], int]] = []
    total_kept = 0
    for function, args in ALL_OPS:
        receipt = send(w3, getattr(ops.functions, function)(*args), sender)
        events = decode_logs(executor, receipt["logs"])
        check_handles(events, host)
        kept = [bytes(a["handle"]) for _, a in decode_logs(ops, receipt["logs"])]
        assert kept and kept[-1] == bytes(events[-1][1]["result"])
        total_kept += len(kept)
        grants = decode_logs(acl, receipt["logs"])
        assert [(n, a["account"], bytes(a["handle"])) for n, a in grants if n == "Allowed"] == [
            ("Allowed", ops.address, h) for h in kept
        ]
        assert [[bytes(h) for h in a["handlesList"]] for n, a in grants if n != "Allowed"] == [
            [h] for h in kept
        ]
        seen += [(name, args_, receipt["blockNumber"]) for name, args_ in events]
    names = {name for name, _, _ in seen}
    assert names == EXECUTOR_EVENTS
    name, args, _ = next(event for event in seen if event[0] == "TrivialEncrypt")
    packed, _ = preimage(name, args, host.acl, host.chain_id)
    handle = bytes(args["result"]).hex()
    print(f"{name} {dict(args)}\n  preimage 0x{packed.hex()}\n  handle   0x{handle}")
    scalar = {(n, bytes(a["scalarByte"])) for n, a, _ in seen if n in BINARY}
    for name in BINARY:
        forms = {b"\x01"} if name in ("FheDiv", "FheRem") else {b"\x00", b"\x01"}
        assert {s for n, s in scalar if n == name} == forms, name
    assert ops.functions.resultCount().call() == total_kept
    if os.environ.get("FHE_RECORD_HOST_VECTORS") == "1":
        record_vectors(seen, host)


def test_the_rogue_executor_speaks_the_real_event_signatures():
    rogue = artifact("RogueExecutor", TESTING_CONTRACTS).abi
    real = artifact("FHEVMExecutor", HOST_COMPILED).abi + artifact("ACL", HOST_COMPILED).abi
    topics = {e["name"]: event_abi_to_log_topic(e) for e in real if e["type"] == "event"}
    shared = [e for e in rogue if e["type"] == "event" and e["name"] != "FheTeleport"]
    assert {e["name"] for e in shared} >= {"FheAdd", "TrivialEncrypt", "Allowed"}
    for event in shared:
        assert event_abi_to_log_topic(event) == topics[event["name"]], event["name"]


def test_the_recorded_vectors_follow_the_rule():
    data = json.loads(VECTORS.read_text())
    kinds = {v["kind"] for v in data["vectors"]}
    assert kinds >= {"binary", "binary_scalar", "unary", "cast", "trivial_encrypt",
                     "if_then_else", "rand", "rand_bounded"}  # fmt: skip
    for vector in data["vectors"]:
        args = {k: _from_json(v) for k, v in vector["args"].items()}
        packed, _ = preimage(vector["event"], args, data["acl"], data["chain_id"])
        assert "0x" + packed.hex() == vector["preimage"]
        assert (
            "0x" + expected_handle(vector["event"], args, data["acl"], data["chain_id"]).hex()
            == (vector["handle"])
        )
        assert vector["handle"] == vector["args"]["result"]


# --- the vectors file ------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    return "0x" + bytes(value).hex() if isinstance(value, bytes) else value


def _from_json(value: Any) -> Any:
    return (
        bytes.fromhex(value[2:])
        if isinstance(value, str) and value.startswith("0x") and (len(value) != 42)
        else value
    )


def _kind(name: str, args: dict[str, Any]) -> str:
    if name in BINARY:
        return "binary_scalar" if bytes(args["scalarByte"]) == b"\x01" else "binary"
    return {
        "FheNeg": "unary", "FheNot": "unary", "Cast": "cast", "TrivialEncrypt": "trivial_encrypt",
        "FheIfThenElse": "if_then_else", "FheRand": "rand", "FheRandBounded": "rand_bounded",
    }[name]  # fmt: skip


def record_vectors(seen, host) -> None:
    """One vector per (event, scalar form, result type) from this run, as emitted."""
    vectors, keys = [], set()
    for name, args, block in seen:
        packed, result_type = preimage(name, args, host.acl, host.chain_id)
        key = (name, _kind(name, args), result_type)
        if key in keys:
            continue
        keys.add(key)
        vectors.append({
            "event": name,
            "kind": _kind(name, args),
            "block": block,
            "args": {k: _to_json(v) for k, v in args.items()},
            "preimage": "0x" + packed.hex(),
            "handle": "0x" + expected_handle(name, args, host.acl, host.chain_id).hex(),
        })  # fmt: skip
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps({
        "about": "Result handles Zama's FHEVMExecutor (@fhevm/host-contracts 0.10.0, compiled "
        "unmodified, on anvil) emitted, recorded by tests/integration/chain/test_host_chain.py "
        "(FHE_RECORD_HOST_VECTORS=1). args: the event's arguments as decoded (bytes as 0x-hex, "
        "integers as numbers, addresses checksummed); preimage: the abi.encodePacked bytes the "
        "host hashes; handle = keccak256(preimage)[0:21] | 0xff | uint64 chain_id BE | result "
        "type | 0x00, equal to args.result.",
        "host_contracts": host_addresses()["host_contracts"],
        "acl": host.acl,
        "chain_id": host.chain_id,
        "executor": host.executor,
        "vectors": vectors,
    }, indent=1) + "\n")  # fmt: skip
