"""One coprocessor tx sender talking to the gateway chain's contracts.

Synchronous on purpose (web3's HTTP provider; the async sender calls it from a worker
thread): every method is one or a few RPCs, each retried with capped backoff when the
node does not answer. ``GatewayConfig`` says who may send; ``CiphertextCommits`` and
``MultichainACL`` take the calls (``calls`` says what each one is and what its reverts
mean).

Transactions are built and signed locally with an explicit nonce, gas limit and fees,
so their hash is known before they are broadcast - the sender records it first
(write-ahead) and a re-run after a crash looks the transaction up instead of sending
a second one.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from ..errors import ConfigError, Recoverable, ServiceUnavailable
from ..retry import backoff_delays
from ..settings import Settings
from .calls import GatewayCall, classify_revert, not_a_tx_sender
from .contracts import bound
from .rpc import gateway_web3

log = logging.getLogger(__name__)

T = TypeVar("T")

# Gas added to every estimate: the estimate sees the chain before our call, where our
# vote may not reach consensus; if other coprocessors' votes land first, ours becomes
# the consensus vote, which writes the accepted material (about five more slots).
CONSENSUS_GAS = 200_000


class NonceTooLow(Exception):
    """Another transaction of this key took the nonce; sign again with a fresh one."""


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


GATEWAY_SETTINGS = {
    "GatewayConfig": "gateway_config_address",
    "CiphertextCommits": "gateway_commits_address",
    "MultichainACL": "gateway_acl_address",
}


# Bound when set: only the verdict sender talks to InputVerification.
OPTIONAL_GATEWAY_SETTINGS = {"InputVerification": "gateway_input_verification_address"}


def require_gateway(settings: Settings) -> dict[str, str]:
    """The gateway contracts' addresses by name; ConfigError naming what is missing."""
    missing = {
        name: f"FHE_{field.upper()}"
        for name, field in GATEWAY_SETTINGS.items()
        if getattr(settings, field) is None
    }
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(
            f"setting {', '.join(missing.values())} {verb} not set: the send stage needs "
            f"the address of the gateway's {', '.join(missing)} "
            "(`fhectl dev gateway --env` prints them locally)"
        )
    return {name: getattr(settings, field) for name, field in GATEWAY_SETTINGS.items()}


@dataclass(frozen=True)
class SignedCall:
    call: GatewayCall
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
    """The sender's view of the gateway, as one coprocessor tx sender."""

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
        self.contracts: dict[str, Contract] = {
            name: bound(w3, name, address) for name, address in require_gateway(settings).items()
        }
        for name, setting in OPTIONAL_GATEWAY_SETTINGS.items():
            if getattr(settings, setting) is not None:
                self.contracts[name] = bound(w3, name, getattr(settings, setting))
        self.sleep = sleep
        self.retries = 0  # RPC calls retried, for the summary
        self._chain_id: int | None = None

    @classmethod
    def connect(cls, settings: Settings, signer: LocalAccount | None = None) -> GatewayClient:
        w3 = gateway_web3(settings)
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

    def check_signer(self, verdict_signer: str | None = None) -> None:
        """Fail before sending anything when the key cannot send (or a contract is
        missing), or when ``verdict_signer`` is not the signer GatewayConfig registers for
        this tx sender (its verdicts would all be refused)."""
        for name, contract in self.contracts.items():
            code = self.rpc(
                "eth_getCode", functools.partial(self.w3.eth.get_code, contract.address)
            )
            if code == b"":
                setting = GATEWAY_SETTINGS.get(name) or OPTIONAL_GATEWAY_SETTINGS[name]
                raise ConfigError(
                    f"no contract at FHE_{setting.upper()} "
                    f"{contract.address} ({name}) on the gateway chain"
                )
        config = self.contracts["GatewayConfig"].functions
        if not self.rpc(
            "isCoprocessorTxSender", lambda: config.isCoprocessorTxSender(self.address).call()
        ):
            raise not_a_tx_sender(self.address)
        if verdict_signer is not None:
            registered = self.rpc(
                "getCoprocessor", lambda: config.getCoprocessor(self.address).call()
            )[1]
            if Web3.to_checksum_address(registered) != Web3.to_checksum_address(verdict_signer):
                raise ConfigError(
                    f"setting FHE_SIGNER_PRIVATE_KEY is the key of {verdict_signer}, but "
                    f"GatewayConfig registers signer {registered} for tx sender "
                    f"{self.address}: set the registered signer's key (or register this "
                    "signer with updateCoprocessors)"
                )

    def is_accepted(self, handle: bytes) -> bool:
        """Whether the coprocessors reached consensus on the handle's material."""
        commits = self.contracts["CiphertextCommits"].functions
        return self.rpc(
            "isCiphertextMaterialAdded",
            lambda: commits.isCiphertextMaterialAdded(handle).call(),
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

    def why_reverted(self, call: GatewayCall) -> Exception | None:
        """What a mined-but-reverted call means, asked of the chain as it is now: the
        contract's error if it would revert again (its "already" error: done), None if
        it would pass (it ran out of gas, e.g. because another coprocessor's vote made
        ours the consensus vote after we estimated): send it again.

        Not a replay at the block before: a replay there passes whenever an earlier
        transaction of the same block changed what ours would do, which says nothing
        about whether ours landed."""
        function = self.function(call)
        try:
            self.rpc("eth_estimateGas", lambda: function.estimate_gas({"from": self.address}))
        except ContractLogicError as error:
            return classify_revert(call, revert_data(error), str(error), self.address)
        return None

    # --- writes ---------------------------------------------------------------------

    def function(self, call: GatewayCall) -> Any:
        name, args = call.function()
        contract = self.contracts.get(call.contract)
        if contract is None:
            setting = OPTIONAL_GATEWAY_SETTINGS.get(call.contract, "?")
            raise ConfigError(
                f"setting FHE_{setting.upper()} is not set: {call.label} goes to the "
                f"gateway's {call.contract}"
            )
        return getattr(contract.functions, name)(*args)

    def fees(self) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas): room for the base fee to double."""
        block = self.rpc("eth_getBlockByNumber", lambda: self.w3.eth.get_block("latest"))
        tip = self.rpc("eth_maxPriorityFeePerGas", lambda: self.w3.eth.max_priority_fee)
        return 2 * int(block.get("baseFeePerGas", 0)) + tip, tip

    def sign(self, call: GatewayCall, nonce: int, fees: tuple[int, int]) -> SignedCall:
        """Estimate (which surfaces a revert before paying for it) and sign.

        Raises AlreadyDone, NotATxSender or CallRejected when the contract would revert.
        """
        function = self.function(call)
        try:
            estimate = self.rpc(
                "eth_estimateGas", lambda: function.estimate_gas({"from": self.address})
            )
        except ContractLogicError as error:
            raise classify_revert(call, revert_data(error), str(error), self.address) from None
        max_fee, tip = fees
        transaction = function.build_transaction(
            {
                "from": self.address,
                "nonce": nonce,
                "chainId": self.chain_id(),
                "gas": int(estimate * self.settings.sender_gas_margin) + CONSENSUS_GAS,
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": tip,
                "value": 0,
            }
        )
        signed = self.signer.sign_transaction(transaction)
        return SignedCall(call, nonce, bytes(signed.hash), bytes(signed.raw_transaction))

    def broadcast(self, submission: SignedCall) -> None:
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
