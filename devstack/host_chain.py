"""Zama's fhEVM host contracts (``@fhevm/host-contracts``) on the dev stack's anvil.

The host contracts find each other through compile-time constants, so the addresses are
fixed before anything is deployed: ``scripts/install`` compiles them
(``contracts/compile-host.js``) against the addresses a fixed dev deployer's first
nonces give (``addresses.json`` beside the artifacts), and :func:`ensure_host_chain`
deploys them with that same deployer, in the order those nonces assume: the empty
UUPS proxies and PauserSet (nonces 0-7), then each proxy's real implementation through
``upgradeToAndCall(impl, initializeFromEmptyProxy(...))``.

Idempotent: on a chain where everything is in place it sends nothing (unless the signer
set asked for differs from the registered one, which it then replaces through
``defineNewContext``). The coprocessor and KMS signer keys live in the state directory
(0600 files, never printed), like the gateway signer of :mod:`devstack.gateway`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import Wei

from coprocessor.chain.contracts import BUILD_DIR, Artifact, artifact
from coprocessor.errors import Fatal, ServiceUnavailable

from .keys import key_at
from .versions import REPO_ROOT

# DEV ONLY. A key of our own (keccak256 of a sentence, not one of anvil's accounts), so
# that nothing else spends its nonces: the host contracts' addresses are the CREATE
# addresses of its nonces 1 and 3-7, known at install time. Never fund it on a real
# network; a real deployment generates its own addresses file for its own deployer.
DEV_HOST_DEPLOYER_KEY = "0xa7e391d6e0fd7c9ffcc5847890b1561b80512c0c4d67613e673403f629bef7eb"
# scripts/install reads this line (sed) to compile the host contracts for this deployer.
DEV_HOST_DEPLOYER_ADDRESS = "0x1A9eEB229faEDF09c9a854d18Ff1Cf0969ae2d12"

# What a coprocessor reads at run time (package data) and what only deploying needs.
HOST_COMPILED = BUILD_DIR / "host"
HOST_BUILD = REPO_ROOT / "contracts" / "build" / "host"
DAPPS_BUILD = REPO_ROOT / "contracts" / "build" / "dapps"

# Placeholders for the gateway contracts the host's EIP-712 domains name, used at first
# deployment unless real ones are given: 20 bytes of keccak256 of their role. The
# domains cannot change after initialisation (a fresh chain is needed to change them).
DEV_INPUT_VERIFICATION_ADDRESS = Web3.to_checksum_address(
    Web3.keccak(text="fhe-coprocessor dev gateway: InputVerification")[12:]
)
DEV_DECRYPTION_ADDRESS = Web3.to_checksum_address(
    Web3.keccak(text="fhe-coprocessor dev gateway: Decryption")[12:]
)

FUNDING_WEI = 10 * 10**18  # enough for many deployments; topped up below MIN_BALANCE_WEI
MIN_BALANCE_WEI = 10**18
# ERC-1967: bytes32(uint256(keccak256("eip1967.proxy.implementation")) - 1)
IMPLEMENTATION_SLOT = 0x360894A13BA1A3210667C828492DB98DCA3E2076CC3735A920A3CA505D382BBC
# The proxies in upgrade order (the ACL first: the others' upgrades ask the ACL's owner).
PROXIES = ("ACL", "FHEVMExecutor", "KMSVerifier", "InputVerifier", "HCULimit")


@dataclass(frozen=True)
class HostChain:
    chain_id: int
    deployer: str
    acl: str
    executor: str
    kms_verifier: str
    input_verifier: str
    hcu_limit: str
    pauser_set: str
    coprocessor_signers: tuple[str, ...]
    threshold: int
    kms_signers: tuple[str, ...]
    kms_threshold: int
    gateway_chain_id: int
    input_verification_address: str
    decryption_address: str
    key_dir: Path
    # What this call sent (contract names and calls); empty when all was in place.
    actions: tuple[str, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "deployer": self.deployer,
            "acl": self.acl,
            "executor": self.executor,
            "kms_verifier": self.kms_verifier,
            "input_verifier": self.input_verifier,
            "hcu_limit": self.hcu_limit,
            "pauser_set": self.pauser_set,
            "coprocessor_signers": list(self.coprocessor_signers),
            "threshold": self.threshold,
            "kms_signers": list(self.kms_signers),
            "kms_threshold": self.kms_threshold,
            "gateway_chain_id": self.gateway_chain_id,
            "input_verification_address": self.input_verification_address,
            "decryption_address": self.decryption_address,
            "key_dir": str(self.key_dir),
        }

    def env(self) -> dict[str, str]:
        return {
            "FHE_HOST_ACL_ADDRESS": self.acl,
            "FHE_HOST_EXECUTOR_ADDRESS": self.executor,
            "FHE_HOST_INPUT_VERIFIER_ADDRESS": self.input_verifier,
            "FHE_HOST_KMS_VERIFIER_ADDRESS": self.kms_verifier,
            "FHE_HOST_HCU_LIMIT_ADDRESS": self.hcu_limit,
            "FHE_HOST_PAUSER_SET_ADDRESS": self.pauser_set,
            "FHE_HOST_CHAIN_ID": str(self.chain_id),
        }


def host_artifact(name: str) -> Artifact:
    """A compiled host contract: the run-time ones from the package, the rest from the
    checkout's build."""
    build_dir = HOST_COMPILED if (HOST_COMPILED / f"{name}.json").is_file() else HOST_BUILD
    return artifact(name, build_dir)


def dapp_artifact(name: str) -> Artifact:
    return artifact(name, DAPPS_BUILD)


def host_addresses() -> dict[str, Any]:
    """addresses.json as the compiler wrote it, checked against our deployer."""
    path = HOST_BUILD / "addresses.json"
    if not path.is_file():
        raise Fatal(f"the host contracts are not compiled ({path} missing); run `make setup`")
    record = json.loads(path.read_text())
    if record["deployer"] != DEV_HOST_DEPLOYER_ADDRESS:
        raise Fatal(
            f"the host contracts were compiled for deployer {record['deployer']}, not "
            f"{DEV_HOST_DEPLOYER_ADDRESS}; run `scripts/install` to recompile them"
        )
    return record


def _signers(directory: Path, stem: str, wanted: int | Sequence[str]) -> list[str]:
    if isinstance(wanted, int):
        if wanted < 1:
            raise Fatal(f"at least one {stem} is needed")
        return [key_at(directory / f"{stem}-{i}.key").address for i in range(wanted)]
    if not wanted:
        raise Fatal(f"at least one {stem} is needed")
    return [Web3.to_checksum_address(address) for address in wanted]


class _Deployer:
    """Sends the deployer's transactions, signed here (anvil does not hold its key)."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(DEV_HOST_DEPLOYER_KEY)
        if self.account.address != DEV_HOST_DEPLOYER_ADDRESS:
            raise Fatal("DEV_HOST_DEPLOYER_KEY does not belong to DEV_HOST_DEPLOYER_ADDRESS")
        self.chain_id = w3.eth.chain_id
        self.actions: list[str] = []

    @property
    def nonce(self) -> int:
        return self.w3.eth.get_transaction_count(self.account.address)

    def fund(self) -> None:
        if self.w3.eth.get_balance(self.account.address) >= MIN_BALANCE_WEI:
            return
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_transaction(
                {
                    "from": self.w3.eth.accounts[0],
                    "to": self.account.address,
                    "value": Wei(FUNDING_WEI),
                }
            )
        )
        if receipt["status"] != 1:
            raise Fatal(f"funding the host deployer {self.account.address} failed")
        self.actions.append("fund deployer")

    def _send(self, tx: dict[str, Any], what: str) -> Any:
        signed = self.account.sign_transaction(tx)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(signed.raw_transaction), timeout=60
        )
        if receipt["status"] != 1:
            raise Fatal(f"{what} reverted (tx {receipt['transactionHash'].hex()})")
        self.actions.append(what)
        return receipt

    def _params(self) -> dict[str, Any]:
        return {"from": self.account.address, "nonce": self.nonce, "chainId": self.chain_id}

    def create(self, built: Artifact, *args: Any, expect: str | None = None) -> str:
        factory = self.w3.eth.contract(abi=built.abi, bytecode=built.bytecode)
        tx = factory.constructor(*args).build_transaction(self._params())
        address = self._send(tx, f"deploy {built.name}")["contractAddress"]
        if expect is not None and address != expect:
            raise Fatal(f"{built.name} landed at {address}, not at {expect}")
        return address

    def call(self, function: Any, what: str) -> None:
        self._send(function.build_transaction(self._params()), what)


def _bound(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=host_artifact(name).abi)


def _implementation(w3: Web3, proxy: str) -> str:
    word = w3.eth.get_storage_at(Web3.to_checksum_address(proxy), IMPLEMENTATION_SLOT)
    return Web3.to_checksum_address(bytes(word)[-20:])


def _deploy_proxies(deployer: _Deployer, record: dict[str, Any]) -> None:
    """Nonces 0-7: the empty implementations, the six proxies on them, PauserSet. Resumes
    after an interrupted run; refuses a deployer whose nonces went elsewhere."""
    w3 = deployer.w3
    addresses, empty = record["addresses"], record["empty_implementations"]
    me = deployer.account.address
    empty_acl = w3.eth.contract(abi=host_artifact("EmptyUUPSProxyACL").abi)
    empty_proxy = w3.eth.contract(abi=host_artifact("EmptyUUPSProxy").abi)
    proxy = host_artifact("ERC1967Proxy")
    steps: list[tuple[str, Any]] = [
        (empty["EmptyUUPSProxyACL"], lambda: (host_artifact("EmptyUUPSProxyACL"),)),
        (
            addresses["ACL"],
            lambda: (
                proxy,
                empty["EmptyUUPSProxyACL"],
                empty_acl.encode_abi("initialize", args=[me]),
            ),
        ),
        (empty["EmptyUUPSProxy"], lambda: (host_artifact("EmptyUUPSProxy"),)),
        *[
            (
                addresses[name],
                lambda: (proxy, empty["EmptyUUPSProxy"], empty_proxy.encode_abi("initialize")),
            )
            for name in ("FHEVMExecutor", "KMSVerifier", "InputVerifier", "HCULimit")
        ],
        (addresses["PauserSet"], lambda: (host_artifact("PauserSet"),)),
    ]
    start = deployer.nonce
    for nonce, (address, _) in enumerate(steps[:start]):
        if w3.eth.get_code(Web3.to_checksum_address(address)) == b"":
            raise Fatal(
                f"the host deployer {me} is at nonce {start} but {address} (its nonce "
                f"{nonce}) holds no contract: this chain used the deployer for something "
                "else; start from a fresh chain (`fhectl dev down`, remove the chain state)"
            )
    for address, arguments in steps[start:]:
        built, *args = arguments()
        deployer.create(built, *args, expect=address)


def _upgrade(deployer: _Deployer, record: dict[str, Any], init: dict[str, list[Any]]) -> None:
    """Each proxy still on its empty implementation gets its real one, initialised."""
    w3 = deployer.w3
    empties = set(record["empty_implementations"].values())
    for name in PROXIES:
        address = record["addresses"][name]
        if _implementation(w3, address) not in empties:
            continue
        implementation = deployer.create(host_artifact(name))
        real = w3.eth.contract(abi=host_artifact(name).abi)
        data = real.encode_abi("initializeFromEmptyProxy", args=init[name])
        proxy = _bound(w3, "EmptyUUPSProxy", address)  # both empty ones have upgradeToAndCall
        deployer.call(proxy.functions.upgradeToAndCall(implementation, data), f"upgrade {name}")


def _domain(contract: Contract) -> tuple[int, str]:
    _, _, _, chain_id, verifying_contract, _, _ = contract.functions.eip712Domain().call()
    return chain_id, Web3.to_checksum_address(verifying_contract)


def ensure_host_chain(
    w3: Web3,
    state_dir: Path,
    coprocessor_signers: int | Sequence[str] = 1,
    threshold: int = 1,
    *,
    kms_signers: int | Sequence[str] = 1,
    kms_threshold: int = 1,
    gateway_chain_id: int | None = None,
    input_verification_address: str | None = None,
    decryption_address: str | None = None,
) -> HostChain:
    """Deploy (or find) the host contracts and register the signers.

    ``coprocessor_signers`` / ``kms_signers``: a count of dev keys kept in
    ``state_dir/host/`` (created on first use, reused after), or the addresses to
    register (their keys held elsewhere). The gateway values (``gateway_chain_id``:
    default the host chain's own id, since the dev stack's one anvil is both;
    the two gateway contract addresses: default dev placeholders) name the EIP-712
    domains InputVerifier and KMSVerifier check signatures under; given for a chain
    already initialised with other values, they are refused.
    """
    if not w3.is_connected():
        raise ServiceUnavailable(
            "chain", "no JSON-RPC answer from the host chain; run `fhectl dev up`"
        )
    record = host_addresses()
    addresses = record["addresses"]
    key_dir = state_dir / "host"
    key_dir.mkdir(parents=True, exist_ok=True)
    coprocessors = _signers(key_dir, "coprocessor-signer", coprocessor_signers)
    kms = _signers(key_dir, "kms-signer", kms_signers)
    for signers, needed, who in (
        (coprocessors, threshold, "coprocessor"),
        (kms, kms_threshold, "KMS"),
    ):
        if not 1 <= needed <= len(signers):
            raise Fatal(f"{who} threshold {needed} is not within 1..{len(signers)} signers")

    deployer = _Deployer(w3)
    gateway_id = gateway_chain_id if gateway_chain_id is not None else deployer.chain_id
    verification = Web3.to_checksum_address(
        input_verification_address or DEV_INPUT_VERIFICATION_ADDRESS
    )
    decryption = Web3.to_checksum_address(decryption_address or DEV_DECRYPTION_ADDRESS)

    empties = set(record["empty_implementations"].values())
    done = (
        all(
            w3.eth.get_code(addresses[name]) != b""
            and _implementation(w3, addresses[name]) not in empties
            for name in PROXIES
        )
        and w3.eth.get_code(addresses["PauserSet"]) != b""
    )
    if not done:
        deployer.fund()
        _deploy_proxies(deployer, record)
        _upgrade(
            deployer,
            record,
            {
                "ACL": [],
                "FHEVMExecutor": [],
                "HCULimit": [],
                "KMSVerifier": [decryption, gateway_id, kms, kms_threshold],
                "InputVerifier": [verification, gateway_id, coprocessors, threshold],
            },
        )

    input_verifier = _bound(w3, "InputVerifier", addresses["InputVerifier"])
    kms_verifier = _bound(w3, "KMSVerifier", addresses["KMSVerifier"])
    # Only what the caller gave is checked: without it, the chain's values are kept.
    for contract, given in (
        (input_verifier, input_verification_address),
        (kms_verifier, decryption_address),
    ):
        actual_chain, actual_contract = _domain(contract)
        wrong_chain = gateway_chain_id is not None and actual_chain != gateway_chain_id
        wrong_contract = given is not None and actual_contract != Web3.to_checksum_address(given)
        if wrong_chain or wrong_contract:
            raise Fatal(
                f"{contract.address} is initialised for gateway chain {actual_chain}, "
                f"contract {actual_contract}, not the ones asked for; its EIP-712 domain "
                "cannot change: start from a fresh chain"
            )
    for contract, signers, needed, getter, who in (
        (input_verifier, coprocessors, threshold, "getCoprocessorSigners", "InputVerifier"),
        (kms_verifier, kms, kms_threshold, "getKmsSigners", "KMSVerifier"),
    ):
        registered = [
            Web3.to_checksum_address(a) for a in getattr(contract.functions, getter)().call()
        ]
        if registered != signers or contract.functions.getThreshold().call() != needed:
            deployer.fund()
            deployer.call(
                contract.functions.defineNewContext(signers, needed), f"{who}.defineNewContext"
            )

    (input_chain, input_contract), (kms_chain, kms_contract) = (
        _domain(input_verifier),
        _domain(kms_verifier),
    )
    if input_chain != kms_chain:
        raise Fatal(f"InputVerifier names gateway chain {input_chain}, KMSVerifier {kms_chain}")
    return HostChain(
        chain_id=deployer.chain_id,
        deployer=deployer.account.address,
        acl=addresses["ACL"],
        executor=addresses["FHEVMExecutor"],
        kms_verifier=addresses["KMSVerifier"],
        input_verifier=addresses["InputVerifier"],
        hcu_limit=addresses["HCULimit"],
        pauser_set=addresses["PauserSet"],
        coprocessor_signers=tuple(input_verifier.functions.getCoprocessorSigners().call()),
        threshold=input_verifier.functions.getThreshold().call(),
        kms_signers=tuple(kms_verifier.functions.getKmsSigners().call()),
        kms_threshold=kms_verifier.functions.getThreshold().call(),
        gateway_chain_id=input_chain,
        input_verification_address=input_contract,
        decryption_address=kms_contract,
        key_dir=key_dir,
        actions=tuple(deployer.actions),
    )


def signer_key(host: HostChain, index: int = 0, kind: str = "coprocessor-signer") -> LocalAccount:
    """A dev signer key ``ensure_host_chain`` keeps (tests and the dev stack only)."""
    return Account.from_key((host.key_dir / f"{kind}-{index}.key").read_text().strip())


def deploy_dapp(w3: Web3, host: HostChain, name: str, sender: str | None = None) -> Contract:
    """Deploy one of our dapps (contracts/dapps) against this host's ACL, executor and
    KMS verifier, as their constructors take them."""
    built = dapp_artifact(name)
    factory = w3.eth.contract(abi=built.abi, bytecode=built.bytecode)
    tx = factory.constructor(host.acl, host.executor, host.kms_verifier)
    receipt = w3.eth.wait_for_transaction_receipt(
        tx.transact({"from": sender or w3.eth.accounts[0]})
    )
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise Fatal(f"deploying {name} reverted (tx {receipt['transactionHash'].hex()})")
    return w3.eth.contract(address=receipt["contractAddress"], abi=built.abi)
