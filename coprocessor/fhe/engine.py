"""The engine interface: what the rest of the product may ask of an FHE backend.

Nothing outside ``coprocessor/fhe`` imports a backend. Code asks the registry for the
backend a tenant's keyset names (``get_backend(tenant.backend)``) and talks to it
through these protocols, with ciphertexts as enveloped bytes (see ``envelope``), so a
ciphertext of one backend is never fed to another.

Roles follow who holds which key:

* ``Backend.generate_keyset`` makes a tenant's keys (once, by ``fhectl tenant create``);
* a ``Client`` holds the secret key: encrypt and decrypt (CLI, tests, demo);
* an ``Evaluator`` holds only the server key: evaluate, trivially encrypt, draw
  randoms, squash for decryption and compress for publication (the Jobs' pods).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from ..errors import Irrecoverable, UserError
from ..types import FheType, Op, address_bytes
from . import reference


class UnsupportedOperation(Irrecoverable):
    """This backend does not implement ``op`` on this type; the message says why."""


class InvalidOperands(Irrecoverable):
    """Operands that do not fit the operation (arity, types, scalar position)."""


class InvalidInputProof(Irrecoverable):
    """A client's input list whose proof does not hold (tampered bytes, another key or
    CRS, other metadata) or that is not a well-formed list; nothing of it is used."""


def input_metadata(
    contract_address: str, user_address: str, acl_address: str, chain_id: int
) -> bytes:
    """What an input proof is bound to, as fhEVM's client SDK binds it (92 bytes):
    contract (20) | user (20) | the host chain's ACL (20) | chain id (32, BE). A proof
    made for one contract, user, ACL or chain does not verify for another."""
    parts = []
    for name, address in (
        ("contract", contract_address),
        ("user", user_address),
        ("ACL", acl_address),
    ):
        raw = address_bytes(address)
        if raw is None:
            raise InvalidInputProof(f"{name} address must be 0x and 20 bytes, got {address!r}")
        parts.append(raw)
    if not isinstance(chain_id, int) or not 0 < chain_id < 2**256:
        raise InvalidInputProof(f"chain id must be a positive 256-bit integer, got {chain_id!r}")
    return b"".join(parts) + chain_id.to_bytes(32, "big")


@dataclass(frozen=True)
class Keyset:
    backend: str
    client_key: bytes  # secret: stays with the tenant's owner, never in the database
    server_key: bytes  # evaluation keys: what the coprocessor stores and loads
    public_params: bytes = b""  # compact public key / CRS where the backend has them

    @property
    def key_id(self) -> bytes:
        """Stable identifier of the keyset: SHA-256 of the server key."""
        return hashlib.sha256(self.server_key).digest()


@dataclass(frozen=True)
class OpRequest:
    """One operation, as the job runner reads it from a computation row.

    ``operands`` are enveloped ciphertexts; ``scalars`` the plaintext operands (the
    second operand of a binary op, TrivialEncrypt's value, RandBounded's bound, IsIn's
    candidates, MulDiv's last two); ``seed`` for Rand/RandBounded.
    """

    op: Op
    operands: tuple[bytes, ...] = ()
    scalars: tuple[int, ...] = ()
    result_type: FheType | None = None
    seed: bytes = b""


class Client(Protocol):
    backend: str

    def encrypt(self, value: int, fhe_type: FheType) -> bytes: ...

    def decrypt(self, ciphertext: bytes) -> int: ...

    def decrypt_published(self, data: bytes, fhe_type: FheType, *, squashed: bool) -> int:
        """A raw published object (what a KMS or a test reads back from S3; no envelope, so
        the caller names the type): the ct64 object (``Evaluator.compress``) when
        ``squashed`` is false, the ct128 one (a squashed ciphertext's payload) when true.
        Bytes that are not such an object raise BadCiphertext."""
        ...


# The stages that load only their share of a tenant's server key (``Backend.key_parts``);
# SNS needs the noise squashing material, which is most of the key, and loads it whole.
KEY_PURPOSES = ("compute", "verify")


class SquashedFormat(IntEnum):
    """How a squashed (ct128) object is stored; the reference's ``ciphertext128_format``."""

    UNKNOWN = 0
    UNCOMPRESSED_ON_CPU = 10
    COMPRESSED_ON_CPU = 11
    UNCOMPRESSED_ON_GPU = 20
    COMPRESSED_ON_GPU = 21


class Evaluator(Protocol):
    backend: str
    key_digest: bytes

    def evaluate(self, request: OpRequest) -> bytes: ...

    def squashed_format(self, fhe_type: FheType) -> SquashedFormat:
        """How ``squash`` stores a value of this type (recorded as ciphertext128_format)."""
        ...

    def squash(self, ciphertext: bytes) -> bytes: ...

    def compress(self, ciphertext: bytes) -> bytes:
        """The ct64 object for S3: raw backend bytes, no envelope (the ct128 object is the
        squashed ciphertext's ``Envelope.payload``). Deterministic, so every coprocessor
        uploads the same bytes and agrees on their digest."""
        ...

    def verify_inputs(
        self,
        crs: bytes,
        public_key: bytes,
        proven_list: bytes,
        metadata: bytes,
        rerand: Sequence[bytes] = (),
    ) -> list[bytes]:
        """A client's proven input list -> ciphertexts, or InvalidInputProof; backends
        without input proofs raise UnsupportedOperation. ``rerand[i]``, when given, is
        attached to value i as its re-randomisation metadata."""

    def fhe_type_of(self, ciphertext: bytes) -> FheType: ...


class Backend(Protocol):
    name: str

    @property
    def failure_probability(self) -> str:
        """Per-bootstrap failure probability of new keysets, as people read it."""

    def support(self, op: Op, fhe_type: FheType) -> str | None:
        """None when supported, else the reason (shown by ``fhectl fhe ops``)."""

    def generate_keyset(self) -> Keyset: ...

    def client(self, client_key: bytes, key_id: bytes) -> Client:
        """A client needs only its secret key and the keyset's id (to label ciphertexts
        with the key digest), never the server key."""

    def key_parts(self, server_key: bytes) -> dict[str, bytes]:
        """The server key split into what each stage uses ({purpose: key}, purposes of
        KEY_PURPOSES), so a pod loads only its share; {} when the backend cannot split."""
        ...

    def evaluator(self, server_key: bytes, key_id: bytes | None = None) -> Evaluator:
        """An evaluator of the whole key or of one part; ``key_id`` (the keyset's) labels
        what a part computes, since a part's own digest names nothing."""
        ...


class EvaluatorCache:
    """Evaluators per keyset and process, least recently used first out: loading a
    server key takes seconds and hundreds of MB, so each backend keeps a few."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, Evaluator] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, server_key: bytes, factory: Callable[[bytes], Evaluator]) -> Evaluator:
        """The evaluator of these key bytes (kept under their SHA-256)."""
        digest = hashlib.sha256(server_key).digest()
        return self._get(digest, lambda: factory(server_key))

    def get_or_load(self, name: str, load: Callable[[], Evaluator]) -> Evaluator:
        """The evaluator kept under ``name`` (a node key cache name), else ``load()``'s."""
        return self._get(name.encode(), load)

    def _get(self, key: bytes, load: Callable[[], Evaluator]) -> Evaluator:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        evaluator = load()  # outside the lock: other keysets need not wait
        with self._lock:
            self._items[key] = evaluator
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return evaluator

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def one_scalar(request: OpRequest) -> int:
    if len(request.scalars) != 1:
        raise InvalidOperands(f"{request.op.event_name} takes exactly one plaintext value")
    return request.scalars[0]


MUL_DIV_SHAPE = "FheMulDiv takes one encrypted value and two plaintext values (multiplier, divisor)"


def mul_div_plan(scalars: Sequence[int], fhe_type: FheType) -> tuple[FheType, int, int]:
    """What every backend's MulDiv needs: the double-width type and the two plaintext
    operands wrapped to ``fhe_type`` (a divisor of 0 means the result is the type's max)."""
    if len(scalars) != 2 or min(scalars) < 0:
        raise InvalidOperands(MUL_DIV_SHAPE)
    wide = reference.double_width(fhe_type)
    assert wide is not None  # backends' support() refuses types without one
    multiplier, divisor = (reference.wrap(s, fhe_type) for s in scalars)
    return wide, multiplier, divisor


def support_matrix(backend: Backend) -> dict[str, dict[str, str]]:
    """``{op: {type: "supported" | reason}}`` for every op and type of the contract."""
    matrix: dict[str, dict[str, str]] = {}
    for op in Op:
        matrix[op.event_name] = {
            fhe_type.name: backend.support(op, fhe_type) or "supported" for fhe_type in FheType
        }
    return matrix


def require_support(backend: Backend, op: Op, fhe_type: FheType) -> None:
    reason = reference.defined(op, fhe_type) or backend.support(op, fhe_type)
    if reason:
        raise UnsupportedOperation(f"{op.event_name} on {fhe_type.name}: {reason}")


def operand_type(op: Op, types: Sequence[FheType], result_type: FheType | None) -> FheType:
    """The type an operation works on, after checking the operands agree (the same
    rules the operator uses to validate a graph, so a bad graph fails before it runs)."""
    signature = op.signature
    if op is Op.IfThenElse:
        if len(types) != 3:
            raise InvalidOperands("FheIfThenElse takes a Bool condition and two values")
        if types[0] is not FheType.Bool:
            raise InvalidOperands(f"FheIfThenElse condition is {types[0].name}, not Bool")
        if types[1] is not types[2]:
            raise InvalidOperands(
                f"FheIfThenElse branches differ: {types[1].name} and {types[2].name}"
            )
        return types[1]
    if op in (Op.TrivialEncrypt, Op.Rand, Op.RandBounded):
        if result_type is None:
            raise InvalidOperands(f"{op.event_name} needs an explicit result type")
        return result_type
    if not types:
        raise InvalidOperands(f"{op.event_name} needs an encrypted operand")
    if op is Op.Cast:
        if result_type is None:
            raise InvalidOperands("FheCast needs an explicit result type")
        return types[0]
    first = types[0]
    for other in types[1:]:
        if other is not first:
            raise InvalidOperands(f"{op.event_name} operands differ: {first.name} and {other.name}")
    if signature.arity is not None and signature.arity < len(types):
        raise InvalidOperands(f"{op.event_name} takes {signature.arity} operand(s)")
    return first


def result_type_of(op: Op, operand: FheType, explicit: FheType | None) -> FheType:
    kind = op.signature.result
    if kind == "bool":
        return FheType.Bool
    if kind == "explicit":
        assert explicit is not None
        return explicit
    return operand


# --- registry --------------------------------------------------------------------------

_FACTORIES = {
    "concrete": "coprocessor.fhe.concrete_backend:ConcreteBackend",
    "tfhe-rs": "coprocessor.fhe.tfhe_backend:TfheRsBackend",
}
_INSTANCES: dict[str, Backend] = {}


def backend_names() -> list[str]:
    return sorted(_FACTORIES)


def get_backend(name: str) -> Backend:
    """The backend recorded on a tenant; imported lazily (concrete pulls in torch)."""
    if name not in _FACTORIES:
        raise UserError(f"unknown FHE backend {name!r}; known: {', '.join(backend_names())}")
    if name not in _INSTANCES:
        import importlib

        module_name, class_name = _FACTORIES[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UserError(f"FHE backend {name!r} is not installed here: {error}") from None
        _INSTANCES[name] = getattr(module, class_name)()
    return _INSTANCES[name]
