"""One coprocessor signer talking to the gateway chain's CiphertextCommits contract.

Synchronous on purpose (web3's HTTP provider; the async sender calls it from a worker
thread): every method is one or a few RPCs, each retried with capped backoff when the
node does not answer. What the contract says no to is classified once, here:

* ``CoprocessorAlreadyAdded``  - this signer's submission is already on chain: done;
* ``NotCoprocessorSigner``     - the key is not registered: no retry can help (exit 3);
* any other revert             - that submission is bad (exit 3 for its handles).

Transactions are built and signed locally with an explicit nonce, gas limit and fees,
so their hash is known before they are broadcast - the sender records it first
(write-ahead) and a re-run after a crash looks the transaction up instead of sending
a second one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams

from ..errors import ConfigError, Irrecoverable, Recoverable, ServiceUnavailable
from ..retry import backoff_delays
from ..settings import Settings
from .contracts import bound, revert_selector

log = logging.getLogger(__name__)

T = TypeVar("T")

ALREADY_ADDED = revert_selector("CoprocessorAlreadyAdded(bytes32,address)")
NOT_A_SIGNER = revert_selector("NotCoprocessorSigner(address)")


@dataclass(frozen=True)
class Material:
    """What one coprocessor published for a handle (a ``ciphertext_digest`` row)."""

    handle: bytes
    key_id: int
    ciphertext_digest: bytes  # keccak256 of the ct64 object
    sns_ciphertext_digest: bytes  # keccak256 of the ct128 object


class NotASigner(Irrecoverable):
    """The configured key is not one of the contract's coprocessor signers."""


class SubmissionRejected(Irrecoverable):
    """The contract reverted a submission for a reason no retry changes."""


class AlreadyAdded(Exception):
    """This signer already submitted the handle: its material is on chain (not an error)."""


class NonceTooLow(Exception):
    """Another transaction of this signer took the nonce; sign again with a fresh one."""


def revert_data(error: BaseException) -> str:
    """The 0x-hex revert data of a web3 error, '' when it carries none."""
    data = getattr(error, "data", None)
    if isinstance(data, bytes):
        return "0x" + data.hex()
    if isinstance(data, str) and data.startswith("0x"):
        return data
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        nested = data.get("data")
        return nested if isinstance(nested, str) and nested.startswith("0x") else ""
    return ""


def classify_revert(data: str, reason: str, signer: str) -> Exception:
    """The exception a revert of this signer's submission stands for."""
    if data.startswith(ALREADY_ADDED):
        return AlreadyAdded()
    if data.startswith(NOT_A_SIGNER):
        return NotASigner(
            f"signer {signer} is not a registered coprocessor signer of the "
            "CiphertextCommits contract; register it or set "
            "FHE_SENDER_PRIVATE_KEY to a registered key"
        )
    return SubmissionRejected(f"CiphertextCommits reverted: {reason or data or 'no reason'}")


def _transient(error: BaseException) -> bool:
    """The node did not answer, or answered that it is busy: worth another try."""
    if isinstance(error, (OSError, TimeoutError)):  # requests' errors are OSErrors
        return True
    if isinstance(error, Web3RPCError):
        text = str(error).lower()
        return any(
            word in text
            for word in (
                "timeout",
                "busy",
                "rate limit",
                "try again",
                "internal error",
                "503",
                "502",
            )
        )
    return False


def _is_nonce_too_low(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, Web3RPCError) and (
        "nonce too low" in text or "nonce is too low" in text
    )


def _is_already_known(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, Web3RPCError) and (
        "already known" in text or "already imported" in text
    )


def load_signer(settings: Settings) -> LocalAccount:
    if settings.sender_private_key is None:
        raise ConfigError(
            "setting FHE_SENDER_PRIVATE_KEY is not set: the send stage signs "
            "with this coprocessor's gateway key (give it through the Job "
            "Secret)"
        )
    return Account.from_key(settings.sender_private_key.get_secret_value())


def require_gateway(settings: Settings) -> str:
    if settings.gateway_commits_address is None:
        raise ConfigError(
            "setting FHE_GATEWAY_COMMITS_ADDRESS is not set: the send stage "
            "needs the CiphertextCommits contract's address"
        )
    return settings.gateway_commits_address


@dataclass(frozen=True)
class SignedSubmission:
    materials: tuple[Material, ...]
    nonce: int
    tx_hash: bytes
    raw: bytes


@dataclass(frozen=True)
class Receipt:
    tx_hash: bytes
    succeeded: bool
    block_number: int
    gas_used: int


class GatewayClient:
    """The sender's view of CiphertextCommits, as one signer."""

    def __init__(
        self,
        w3: Web3,
        settings: Settings,
        signer: LocalAccount | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.w3 = w3
        self.settings = settings
        self.signer = signer or load_signer(settings)
        self.contract: Contract = bound(w3, "CiphertextCommits", require_gateway(settings))
        self.sleep = sleep
        self.retries = 0  # RPC calls retried, for the summary
        self._chain_id: int | None = None

    @classmethod
    def connect(cls, settings: Settings, signer: LocalAccount | None = None) -> GatewayClient:
        w3 = Web3(Web3.HTTPProvider(settings.gateway_rpc_url, request_kwargs={"timeout": 10}))
        return cls(w3, settings, signer)

    @property
    def address(self) -> str:
        return self.signer.address

    # --- RPC with retries -----------------------------------------------------------

    def rpc(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried on transient errors; ServiceUnavailable when they last."""
        delays = backoff_delays(
            self.settings.sender_attempts,
            self.settings.sender_backoff_s,
            self.settings.sender_backoff_cap_s,
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except Exception as error:
                if not _transient(error):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise ServiceUnavailable(
                        "gateway chain",
                        f"{what}: {type(error).__name__}: {error} (after {attempt} tries)",
                    ) from None
                log.info(
                    "gateway rpc retry",
                    extra={
                        "fields": {
                            "call": what,
                            "attempt": attempt,
                            "delay_s": delay,
                            "error": f"{type(error).__name__}: {str(error)[:200]}",
                        }
                    },
                )
                self.retries += 1
                self.sleep(delay)

    # --- reads ----------------------------------------------------------------------

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.rpc("eth_chainId", lambda: self.w3.eth.chain_id)
        return self._chain_id

    def check_signer(self) -> None:
        """Fail before sending anything when the key cannot submit."""
        if self.rpc("eth_getCode", lambda: self.w3.eth.get_code(self.contract.address)) == b"":
            raise ConfigError(
                f"no contract at FHE_GATEWAY_COMMITS_ADDRESS "
                f"{self.contract.address} on the gateway chain"
            )
        registered = self.rpc(
            "isCoprocessorSigner",
            lambda: self.contract.functions.isCoprocessorSigner(self.address).call(),
        )
        if not registered:
            raise classify_revert(NOT_A_SIGNER, "", self.address)

    def threshold(self) -> int:
        return self.rpc("threshold", lambda: self.contract.functions.threshold().call())

    def is_accepted(self, handle: bytes) -> bool:
        return self.rpc("isAccepted", lambda: self.contract.functions.isAccepted(handle).call())

    def has_submitted(self, handle: bytes) -> bool:
        return self.rpc(
            "hasSubmitted",
            lambda: self.contract.functions.hasSubmitted(handle, self.address).call(),
        )

    def next_nonce(self) -> int:
        """The signer's next nonce, counting its transactions still in the mempool."""
        return self.rpc(
            "eth_getTransactionCount",
            lambda: self.w3.eth.get_transaction_count(
                Web3.to_checksum_address(self.address), "pending"
            ),
        )

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        def fetch() -> Any:
            try:
                return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

        found = self.rpc("eth_getTransactionReceipt", fetch)
        if found is None:
            return None
        return Receipt(tx_hash, found["status"] == 1, found["blockNumber"], found["gasUsed"])

    def is_known(self, tx_hash: bytes) -> bool:
        """Whether the node has the transaction (mined or in its mempool)."""

        def fetch() -> bool:
            try:
                self.w3.eth.get_transaction(HexBytes(tx_hash))
                return True
            except TransactionNotFound:
                return False

        return self.rpc("eth_getTransactionByHash", fetch)

    def why_reverted(self, tx_hash: bytes, block_number: int) -> Exception:
        """Replay a reverted transaction at its block to read the contract's error."""
        tx = self.rpc(
            "eth_getTransactionByHash", lambda: self.w3.eth.get_transaction(HexBytes(tx_hash))
        )
        call: TxParams = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
        try:
            self.rpc("eth_call", lambda: self.w3.eth.call(call, block_number - 1))
        except ContractLogicError as error:
            return classify_revert(revert_data(error), str(error), self.address)
        # Replayed before its block it passes: an earlier transaction of the same block
        # (ours or another pod's) submitted the handle first.
        return AlreadyAdded()

    # --- writes ---------------------------------------------------------------------

    def _call(self, materials: Sequence[Material]) -> Any:
        functions = self.contract.functions
        if len(materials) == 1:
            m = materials[0]
            return functions.addCiphertextMaterial(
                m.handle, m.key_id, m.ciphertext_digest, m.sns_ciphertext_digest
            )
        return functions.addCiphertextMaterials(
            [m.handle for m in materials],
            [m.key_id for m in materials],
            [m.ciphertext_digest for m in materials],
            [m.sns_ciphertext_digest for m in materials],
        )

    def fees(self) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas): room for the base fee to double."""
        block = self.rpc("eth_getBlockByNumber", lambda: self.w3.eth.get_block("latest"))
        tip = self.rpc("eth_maxPriorityFeePerGas", lambda: self.w3.eth.max_priority_fee)
        return 2 * int(block.get("baseFeePerGas", 0)) + tip, tip

    def sign(
        self, materials: Sequence[Material], nonce: int, fees: tuple[int, int]
    ) -> SignedSubmission:
        """Estimate (which surfaces a revert before paying for it) and sign.

        Raises AlreadyAdded, NotASigner or SubmissionRejected when the contract would
        revert the submission.
        """
        call = self._call(materials)
        try:
            estimate = self.rpc(
                "eth_estimateGas", lambda: call.estimate_gas({"from": self.address})
            )
        except ContractLogicError as error:
            raise classify_revert(revert_data(error), str(error), self.address) from None
        max_fee, tip = fees
        transaction = call.build_transaction(
            {
                "from": self.address,
                "nonce": nonce,
                "chainId": self.chain_id(),
                "gas": int(estimate * self.settings.sender_gas_margin),
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": tip,
                "value": 0,
            }
        )
        signed = self.signer.sign_transaction(transaction)
        return SignedSubmission(
            tuple(materials), nonce, bytes(signed.hash), bytes(signed.raw_transaction)
        )

    def broadcast(self, submission: SignedSubmission) -> None:
        """Send the signed bytes; a node that already has them is fine (a retry).

        Raises NonceTooLow when another transaction of this signer took the nonce.
        """

        def send() -> None:
            try:
                self.w3.eth.send_raw_transaction(submission.raw)
            except Web3RPCError as error:
                if _is_already_known(error):
                    return
                if _is_nonce_too_low(error):
                    raise NonceTooLow(str(error)) from None
                if "insufficient funds" in str(error).lower():
                    raise Recoverable(
                        f"signer {self.address} has too little balance for "
                        "gas on the gateway chain; fund it"
                    ) from None
                raise

        self.rpc("eth_sendRawTransaction", send)
