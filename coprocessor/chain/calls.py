"""The gateway transactions a coprocessor owes, and what a revert of each one means.

Two gateway contracts hear from us (Zama's ABIs, ``contracts/gateway/``):

* ``CiphertextCommits.addCiphertextMaterial`` - one per published handle: the KMS key
  id and the keccak256 digests of the two S3 objects;
* ``MultichainACL`` - one call per host ACL event: ``allowAccount`` (``Allowed``),
  ``allowPublicDecrypt`` (``AllowedForDecryption``), ``delegateUserDecryption`` and
  ``revokeUserDecryptionDelegation`` (the host ACL's delegations). Without them the
  gateway's Decryption contract refuses every request and the KMS decrypts nothing.

Every call is sent once per coprocessor tx sender; the contracts revert a second one
with an "already" error, which means *done*. Reverts are classified here, from the
error's selector, once for the whole product:

* the call's "already" error (``CoprocessorAlreadyAdded``, ...) - done, not an error;
* ``NotCoprocessorTxSender(address)`` - the key is not registered in GatewayConfig: no
  retry helps; fatal for the batch, naming the address;
* ``HostChainNotRegistered(uint256)`` and any other revert - this call can never
  succeed (irrecoverable for it; the others go on).

and ``InputVerification`` takes our verdicts on input lists: ``verifyProofResponse``
(signed by the coprocessor's *signer* key, sent by its tx sender) or
``rejectProofResponse``; ``CoprocessorSignerDoesNotMatchTxSender`` stops the pass like a
missing registration does.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi import decode as abi_decode
from web3 import Web3

from ..errors import Irrecoverable
from .contracts import revert_selector

EMPTY_EXTRA_DATA = b""  # what Zama's transaction sender passes as extraData

NOT_TX_SENDER = revert_selector("NotCoprocessorTxSender(address)")
HOST_CHAIN_NOT_REGISTERED = revert_selector("HostChainNotRegistered(uint256)")
COUNTER_TOO_LOW = revert_selector("UserDecryptionDelegationCounterTooLow(uint64)")
_DELEGATION_ARGS = "uint256,address,address,address,uint64,uint64,address"


@dataclass(frozen=True)
class Commit:
    """``CiphertextCommits.addCiphertextMaterial`` for one published handle."""

    handle: bytes
    key_id: int  # the KMS key id of the tenant's keyset
    ciphertext_digest: bytes  # keccak256 of the ct64 object
    sns_ciphertext_digest: bytes  # keccak256 of the ct128 object

    contract = "CiphertextCommits"
    already = revert_selector("CoprocessorAlreadyAdded(bytes32,address)")

    def function(self) -> tuple[str, tuple[object, ...]]:
        return "addCiphertextMaterial", (
            self.handle,
            self.key_id,
            self.ciphertext_digest,
            self.sns_ciphertext_digest,
        )

    @property
    def label(self) -> str:
        return "0x" + self.handle.hex()


@dataclass(frozen=True)
class AllowAccount:
    """``MultichainACL.allowAccount``: the host ACL's ``Allowed`` (handle, account)."""

    handle: bytes
    account: bytes

    contract = "MultichainACL"
    already = revert_selector("CoprocessorAlreadyAllowedAccount(bytes32,address,address)")

    def function(self) -> tuple[str, tuple[object, ...]]:
        return "allowAccount", (self.handle, _address(self.account), EMPTY_EXTRA_DATA)

    @property
    def label(self) -> str:
        return f"allowAccount 0x{self.handle.hex()} 0x{self.account.hex()}"


@dataclass(frozen=True)
class AllowPublicDecrypt:
    """``MultichainACL.allowPublicDecrypt``: the host ACL's ``AllowedForDecryption``."""

    handle: bytes

    contract = "MultichainACL"
    already = revert_selector("CoprocessorAlreadyAllowedPublicDecrypt(bytes32,address)")

    def function(self) -> tuple[str, tuple[object, ...]]:
        return "allowPublicDecrypt", (self.handle, EMPTY_EXTRA_DATA)

    @property
    def label(self) -> str:
        return f"allowPublicDecrypt 0x{self.handle.hex()}"


@dataclass(frozen=True)
class Delegation:
    """``MultichainACL.delegateUserDecryption`` or, ``revoke``, its revocation."""

    chain_id: int
    delegator: bytes
    delegate: bytes
    contract_address: bytes
    delegation_counter: int
    expiration_date: int
    revoke: bool = False

    contract = "MultichainACL"

    @property
    def already(self) -> str:
        name = "Revoked" if self.revoke else "Delegated"
        return revert_selector(f"CoprocessorAlready{name}UserDecryption({_DELEGATION_ARGS})")

    def function(self) -> tuple[str, tuple[object, ...]]:
        name = "revokeUserDecryptionDelegation" if self.revoke else "delegateUserDecryption"
        return name, (
            self.chain_id,
            _address(self.delegator),
            _address(self.delegate),
            _address(self.contract_address),
            self.delegation_counter,
            self.expiration_date,
        )

    @property
    def label(self) -> str:
        verb = "revoke" if self.revoke else "delegate"
        return (
            f"{verb} 0x{self.delegator.hex()} -> 0x{self.delegate.hex()} "
            f"(contract 0x{self.contract_address.hex()}, counter {self.delegation_counter})"
        )


# One answer per coprocessor and request, whichever it was: each call's "already" check
# looks at both verdicts (InputVerification's _checkCoprocessorAlreadyResponded).
ALREADY_VERIFIED = revert_selector("CoprocessorAlreadyVerified(uint256,address,address)")
ALREADY_REJECTED = revert_selector("CoprocessorAlreadyRejected(uint256,address,address)")
SIGNER_MISMATCH = revert_selector("CoprocessorSignerDoesNotMatchTxSender(address,address)")
NOT_SIGNER = revert_selector("NotCoprocessorSigner(address)")
NOT_REQUESTED = revert_selector("VerifyProofNotRequested(uint256)")


@dataclass(frozen=True)
class VerifyProofResponse:
    """``InputVerification.verifyProofResponse``: the list verified, here are its input
    handles, signed (EIP-712 ``CiphertextVerification``) by the coprocessor's signer."""

    zk_proof_id: int
    handles: tuple[bytes, ...]
    signature: bytes
    extra_data: bytes

    contract = "InputVerification"
    already = ALREADY_VERIFIED
    also_done = ALREADY_REJECTED

    def function(self) -> tuple[str, tuple[object, ...]]:
        return "verifyProofResponse", (
            self.zk_proof_id,
            list(self.handles),
            self.signature,
            self.extra_data,
        )

    @property
    def label(self) -> str:
        return f"verifyProofResponse {self.zk_proof_id}"


@dataclass(frozen=True)
class RejectProofResponse:
    """``InputVerification.rejectProofResponse``: the list is refused (the reason stays
    on our row: the gateway takes none)."""

    zk_proof_id: int
    extra_data: bytes

    contract = "InputVerification"
    already = ALREADY_REJECTED
    also_done = ALREADY_VERIFIED

    def function(self) -> tuple[str, tuple[object, ...]]:
        return "rejectProofResponse", (self.zk_proof_id, self.extra_data)

    @property
    def label(self) -> str:
        return f"rejectProofResponse {self.zk_proof_id}"


GatewayCall = (
    Commit
    | AllowAccount
    | AllowPublicDecrypt
    | Delegation
    | VerifyProofResponse
    | RejectProofResponse
)


def _address(raw: bytes) -> str:
    return Web3.to_checksum_address(raw)


# --- what a revert means -------------------------------------------------------------------


class NotATxSender(Irrecoverable):
    """The configured key is not a coprocessor tx sender of the gateway's GatewayConfig."""


class CallRejected(Irrecoverable):
    """The contract refused this call for a reason no retry changes."""


class SignerMismatch(CallRejected):
    """The signature is not by the signer GatewayConfig registers for this tx sender (the
    sender checks its keys at start, so here it is this row's: a stale verdict)."""


class AlreadyDone(Exception):
    """This tx sender's call is already on chain (not an error)."""


def not_a_tx_sender(address: str) -> NotATxSender:
    return NotATxSender(
        f"{address} is not a registered coprocessor tx sender of the gateway's "
        "GatewayConfig; register it (updateCoprocessors) or set FHE_SENDER_PRIVATE_KEY "
        "to a registered key"
    )


def classify_revert(call: GatewayCall, data: str, reason: str, sender: str) -> Exception:
    """The exception a revert of ``call`` sent by ``sender`` stands for."""
    if data.startswith(call.already) or data.startswith(getattr(call, "also_done", "-")):
        return AlreadyDone()
    if data.startswith(SIGNER_MISMATCH) or data.startswith(NOT_SIGNER):
        return SignerMismatch(
            f"{call.contract} refused {call.label}: the signature is not by the signer "
            f"GatewayConfig registers for tx sender {sender}; set FHE_SIGNER_PRIVATE_KEY to "
            "that key (or register this signer with updateCoprocessors)"
        )
    if data.startswith(NOT_REQUESTED):
        return CallRejected(
            f"{call.contract} refused {call.label}: the gateway has no such request "
            "(VerifyProofNotRequested): was it read from another gateway?"
        )
    if data.startswith(NOT_TX_SENDER):
        named = _decoded_address(data) or sender
        return not_a_tx_sender(named)
    if data.startswith(HOST_CHAIN_NOT_REGISTERED):
        chain = _decoded_uint(data)
        return CallRejected(
            f"{call.contract} refused {call.label}: host chain {chain} is not registered "
            "in the gateway's GatewayConfig (addHostChain)"
        )
    if data.startswith(COUNTER_TOO_LOW):
        return CallRejected(
            f"{call.contract} refused {call.label}: a later delegation of the same pair "
            "reached consensus first (UserDecryptionDelegationCounterTooLow)"
        )
    return CallRejected(f"{call.contract} refused {call.label}: {reason or data or 'no reason'}")


def _decoded_address(data: str) -> str | None:
    try:
        (value,) = abi_decode(["address"], bytes.fromhex(data[10:]))
    except Exception:
        return None
    return Web3.to_checksum_address(value)


def _decoded_uint(data: str) -> int | str:
    try:
        (value,) = abi_decode(["uint256"], bytes.fromhex(data[10:]))
    except Exception:
        return "?"
    return int(value)
