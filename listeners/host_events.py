"""Host-chain events -> database rows: the pure half of the host listener.

The events are those of Zama's fhEVM host contracts (``FHEVMExecutor`` and ``ACL`` of
``@fhevm/host-contracts``). Each executor event carries the result handle the host
derived; the row repeats its operands (handles as 32 bytes, seeds as 16, plaintexts as
big-endian bytes) so the coprocessor re-derives the handle by the host's rule
(``types.derive_handle`` with the ACL address) and refuses one that does not match.
``VerifyInput`` names an input handle the verify stage must provide; ACL events become
``allowed_handles`` rows (both ``Allowed`` and ``AllowedForDecryption`` queue SNS) and
delegation rows; the contracts' administrative events (OpenZeppelin's Initialized,
Upgraded, Ownership*, Paused/Unpaused, and account blocking) are ignored quietly.

Anything that does not fit - an unknown event, a wrong field, a handle whose type byte
is out of range - is an ``UndecodableEvent`` naming the transaction and the reason;
the listener counts it, logs it and goes on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from coprocessor.api.batch import MAX_INLINE_NODES
from coprocessor.db.host import Delegation, VerifiedInputRow
from coprocessor.db.rows import ComputationRow
from coprocessor.errors import Irrecoverable
from coprocessor.types import (
    FheType,
    Handle,
    Op,
    address_bytes,
    derive_handle,
    plaintext_operand,
)

from .abi_fields import raw_bytes, uint

BINARY_OPS = {Op(code).event_name: Op(code) for code in range(20)}
UNARY_OPS = {"FheNeg": Op.Neg, "FheNot": Op.Not}
ALLOWED, ALLOWED_FOR_DECRYPTION = 0, 1
VERIFY_INPUT = "VerifyInput"
# Administrative events of the host contracts that carry no FHE work.
IGNORED_EVENTS = frozenset(
    {
        "Initialized",
        "Upgraded",
        "OwnershipTransferStarted",
        "OwnershipTransferred",
        "Paused",
        "Unpaused",
        "BlockedAccount",
        "UnblockedAccount",
        "EIP712DomainChanged",
        "NewContextSet",
    }
)
DELEGATED, REVOKED = "DelegatedForUserDecryption", "RevokedDelegationForUserDecryption"


class UndecodableEvent(Irrecoverable):
    """A log the listener cannot turn into rows; skipped with a warning."""


@contextmanager
def _malformed(name: str, transaction: bytes) -> Iterator[None]:
    """A missing or mistyped field anywhere in an event is one UndecodableEvent."""
    try:
        yield
    except (KeyError, TypeError, ValueError, OverflowError, IndexError) as error:
        raise UndecodableEvent(
            f"tx 0x{transaction.hex()}: {name}: missing or malformed "
            f"field ({type(error).__name__}: {error})"
        ) from None


@dataclass(frozen=True)
class AllowedRow:
    handle: bytes
    account_address: bytes
    event_type: int  # ALLOWED or ALLOWED_FOR_DECRYPTION
    transaction_id: bytes


def _address(value: Any) -> bytes:
    raw = address_bytes(value)
    if raw is None:
        raise ValueError(f"{value!r} is not a 20-byte address")
    return raw


def _handle(args: Mapping[str, Any], key: str, transaction: bytes) -> bytes:
    value = args.get(key)
    if value is None:
        raise UndecodableEvent(f"tx 0x{transaction.hex()}: field {key!r} is missing")
    try:
        return Handle(raw_bytes(value)).raw
    except (TypeError, ValueError) as error:
        raise UndecodableEvent(f"tx 0x{transaction.hex()}: field {key!r}: {error}") from None


def _type(value: Any, transaction: bytes) -> FheType:
    try:
        return FheType(uint(value, 8))
    except (TypeError, ValueError):
        raise UndecodableEvent(
            f"tx 0x{transaction.hex()}: type code {value!r} is not a ciphertext type"
        ) from None


def verified_input(name: str, args: Mapping[str, Any], transaction: bytes) -> VerifiedInputRow:
    """``VerifyInput(caller, inputHandle, userAddress, inputProof, inputType, result)``."""
    with _malformed(name, transaction):
        result = _handle(args, "result", transaction)
        fhe_type = _type(args["inputType"], transaction)
        if result[30] != int(fhe_type):
            raise UndecodableEvent(
                f"tx 0x{transaction.hex()}: VerifyInput result 0x{result.hex()} is not a "
                f"{fhe_type.name} handle"
            )
        return VerifiedInputRow(
            handle=result,
            transaction_id=transaction,
            contract_address=_address(args["caller"]),  # the dapp that called fromExternal
            user_address=_address(args["userAddress"]),
            input_type=int(fhe_type),
        )


def computation_row(name: str, args: Mapping[str, Any], transaction: bytes) -> ComputationRow:
    """The computation an executor event records."""
    with _malformed(name, transaction):
        return _computation_row(name, args, transaction)


def _computation_row(name: str, args: Mapping[str, Any], transaction: bytes) -> ComputationRow:
    result = _handle(args, "result", transaction)
    result_type = int(result[30])
    h = lambda key: _handle(args, key, transaction)  # noqa: E731
    if name in BINARY_OPS:
        op = BINARY_OPS[name]
        scalar = raw_bytes(args.get("scalarByte", b"")) == b"\x01"
        rhs = (
            plaintext_operand(int.from_bytes(raw_bytes(args["rhs"]), "big")) if scalar else h("rhs")
        )
        return ComputationRow(
            result,
            result_type,
            int(op),
            (h("lhs"), rhs),
            is_scalar=scalar,
            transaction_id=transaction,
        )
    if name in UNARY_OPS:
        return ComputationRow(
            result, result_type, int(UNARY_OPS[name]), (h("ct"),), transaction_id=transaction
        )
    if name == "Cast":
        _type(args.get("toType"), transaction)
        return ComputationRow(
            result, result_type, int(Op.Cast), (h("ct"),), transaction_id=transaction
        )
    if name == "TrivialEncrypt":
        _type(args.get("toType"), transaction)
        return ComputationRow(
            result,
            result_type,
            int(Op.TrivialEncrypt),
            (plaintext_operand(uint(args["pt"], 256)),),
            is_scalar=True,
            transaction_id=transaction,
        )
    if name == "FheIfThenElse":
        return ComputationRow(
            result,
            result_type,
            int(Op.IfThenElse),
            (h("control"), h("ifTrue"), h("ifFalse")),
            transaction_id=transaction,
        )
    if name == "FheRand":
        return ComputationRow(
            result,
            result_type,
            int(Op.Rand),
            (raw_bytes(args["seed"]),),
            is_scalar=True,
            transaction_id=transaction,
        )
    if name == "FheRandBounded":
        return ComputationRow(
            result,
            result_type,
            int(Op.RandBounded),
            (plaintext_operand(uint(args["upperBound"], 256)), raw_bytes(args["seed"])),
            is_scalar=True,
            transaction_id=transaction,
        )
    raise UndecodableEvent(f"tx 0x{transaction.hex()}: {name!r} is not an executor event")


def check_derivation(row: ComputationRow, acl: bytes, chain_id: int) -> None:
    """The host's handle must be the one its rule gives (keccak over the op, operands,
    the ACL address and the chain id): a forged or foreign result would make every
    coprocessor disagree later, so refuse it now."""
    try:
        derived = derive_handle(
            Op(row.fhe_operation),
            row.dependencies,
            acl,
            chain_id,
            FheType(row.output_type),
            scalar=row.is_scalar,
        ).raw
    except ValueError as error:
        raise UndecodableEvent(
            f"tx 0x{(row.transaction_id or b'').hex()}: cannot re-derive "
            f"0x{row.output_handle.hex()}: {error}"
        ) from None
    if derived != row.output_handle:
        raise UndecodableEvent(
            f"tx 0x{(row.transaction_id or b'').hex()}: result 0x{row.output_handle.hex()} "
            f"is not the derived handle 0x{derived.hex()}"
        )


def allowed_rows(name: str, args: Mapping[str, Any], transaction: bytes) -> list[AllowedRow]:
    """ACL events: who may use a handle, and which handles may be decrypted. Delegation
    and administrative events give no rows here (see ``acl_event``)."""
    with _malformed(name, transaction):
        return _allowed_rows(name, args, transaction)


def delegation_row(name: str, args: Mapping[str, Any], transaction: bytes) -> Delegation:
    with _malformed(name, transaction):
        revoked = name == REVOKED
        return Delegation(
            _address(args["delegator"]),
            _address(args["delegate"]),
            _address(args["contractAddress"]),
            uint(args["delegationCounter"], 64),
            uint(args["oldExpirationDate"], 64),
            None if revoked else uint(args["newExpirationDate"], 64),
            transaction,
        )


def _allowed_rows(name: str, args: Mapping[str, Any], transaction: bytes) -> list[AllowedRow]:
    if name in IGNORED_EVENTS or name in (DELEGATED, REVOKED):
        return []
    if name == "Allowed":
        return [
            AllowedRow(
                _handle(args, "handle", transaction),
                _address(args["account"]),
                ALLOWED,
                transaction,
            )
        ]
    if name == "AllowedForDecryption":
        caller = _address(args["caller"])
        return [
            AllowedRow(Handle(raw_bytes(h)).raw, caller, ALLOWED_FOR_DECRYPTION, transaction)
            for h in args["handlesList"]
        ]
    raise UndecodableEvent(f"tx 0x{transaction.hex()}: {name!r} is not an ACL event")


def batch_parts(
    computations_per_transaction: list[int],
    max_computations: int,
    max_transactions: int = MAX_INLINE_NODES,
    cost_per_transaction: list[int] | None = None,
    max_cost: int = 0,
) -> list[int]:
    """The part (FheBatch) of each transaction when a block's work is split into batches
    of at most ``max_computations`` computations (0: no such limit), at most
    ``max_transactions`` transactions (the CRD's limit on ``source.transactions``, so a
    busy block never earns a 422 that would stall the listener) and at most ``max_cost``
    estimated PBS (0: no limit; the operator's FHE_BATCH_MAX_COST, so no part is refused
    for its cost). Transactions stay whole and in order: one larger than a limit gets a
    part of its own."""
    costs = cost_per_transaction or [0] * len(computations_per_transaction)
    parts: list[int] = []
    part, filled, held, spent = 0, 0, 0, 0
    for count, cost in zip(computations_per_transaction, costs, strict=True):
        over = max_computations and filled and filled + count > max_computations
        too_costly = max_cost and held and spent + cost > max_cost
        if over or too_costly or held >= max_transactions:
            part, filled, held, spent = part + 1, 0, 0, 0
        parts.append(part)
        filled += count
        held += 1
        spent += cost
    return parts
