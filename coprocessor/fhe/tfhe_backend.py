"""The ``tfhe-rs`` backend: TFHE-rs 1.7 through our PyO3 extension (``native/``).

Parameters are the reference coprocessor's: message 2 carry 2, p-fail 2^-128
(``PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128``), a dedicated compact public key for
client inputs, and noise squashing for the 128-bit decryption form.

fhEVM semantics that TFHE-rs does not give by itself are settled here, before the
native call: a scalar divisor of zero (x / 0 = max, x % 0 = x), scalar shift and
rotate amounts (modulo the bit width), Cast to Bool (the lowest bit, like every other
truncation), and Sum / IsIn (folds of Add and Eq/Or).

On GPU nodes (``devices``: a ``coprocessor.gpu.DevicePool``, and an extension built with
``make setup-gpu``) the key is also expanded onto each GPU of the pod, and every op and
switch-and-squash runs on one of them: its memory is reserved first (round-robin over
the devices), and it runs on the CPU when no device has room. Trivial encryptions (no
FHE work), ct64 compression and decompression, input verification and ciphertext checks
stay on the CPU.
Ciphertexts go in and come out in the normal serialised form either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import gpu
from ..errors import ConfigError, Irrecoverable
from ..types import SEED_BYTES, FheType, Op
from . import reference
from .engine import (
    EvaluatorCache,
    InvalidInputProof,
    InvalidOperands,
    Keyset,
    OpRequest,
    SquashedFormat,
    UnsupportedOperation,
    mul_div_plan,
    one_scalar,
    operand_type,
    require_support,
)
from .envelope import BadCiphertext, Envelope, Kind, key_digest

log = logging.getLogger(__name__)

NAME = "tfhe-rs"
SUPPORTED_TYPES = frozenset(FheType(code) for code in range(9))  # Bool .. Uint256
EVALUATOR_CACHE_SIZE = 4
# One or two 128-bit blocks are smaller bare than packed into a GLWE (see squashed_format).
_BARE_SQUASHED_TYPES = frozenset({FheType.Bool, FheType.Uint4})


class NativePanic(Irrecoverable):
    """TFHE-rs panicked (an ``assert!`` on an input it does not check, or a bug): this
    call failed, the process goes on. Each caller treats it like any other irrecoverable
    error of the item in hand (one computation, one input list)."""


def _is_panic(error: BaseException) -> bool:
    # pyo3's PanicException (module pyo3_runtime) exists only once raised: known by name.
    return type(error).__name__ == "PanicException"


def _contain(call: Callable[..., Any], what: str) -> Callable[..., Any]:
    def contained(*args: Any, **kwargs: Any) -> Any:
        try:
            result = call(*args, **kwargs)
        except BaseException as error:
            if not _is_panic(error):
                raise
            raise NativePanic(f"TFHE-rs panicked in {what}: {error}") from None
        return _Contained(result, what) if _from_extension(result) else result

    return contained


def _from_extension(value: Any) -> bool:
    """An object of one of the extension's classes (pyo3 classes say module builtins)."""
    native = type(value)
    return native.__module__ == "builtins" and native.__name__ in _NATIVE_CLASSES


_NATIVE_CLASSES = frozenset({"Client", "Evaluator"})


class _Contained:
    """The extension module, one of its classes, or one of their objects, with every
    call and attribute read contained: pyo3 turns a Rust panic into PanicException, a
    BaseException that ``except Exception`` does not catch, so without this a panic
    anywhere in TFHE-rs would end a worker, a listener or the operator instead of
    failing one item. A class stays a proxy (its static methods, e.g.
    ``Evaluator.load_expanded``, are contained) and what it makes is wrapped again."""

    def __init__(self, target: Any, name: str) -> None:
        self._target = target
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        what = f"{self._name}.{attribute}"
        value = _contain(getattr, what)(self._target, attribute)
        if isinstance(value, type) and value.__name__ in _NATIVE_CLASSES:
            return _Contained(value, what)
        return _contain(value, what) if callable(value) else value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _contain(self._target, self._name)(*args, **kwargs)


def _native() -> Any:
    try:
        import fhe_native
    except ImportError as error:
        raise UnsupportedOperation(
            "the tfhe-rs extension is not built; run `make setup` (native/)"
        ) from error
    return _Contained(fhe_native, "fhe_native")


def _le(value: int) -> bytes:
    return int(value).to_bytes(32, "little")


def _from_le(data: bytes) -> int:
    return int.from_bytes(data, "little")


class TfheRsClient:
    backend = NAME

    def __init__(self, client_key: bytes, key_id: bytes) -> None:
        try:
            self._client = _native().Client(client_key)
        except ValueError as error:  # a corrupted or foreign key file
            raise BadCiphertext(f"not a {NAME} client key: {error}") from None
        self._digest = key_id[:8]  # == key_digest(server_key): key_id is its SHA-256

    def encrypt(self, value: int, fhe_type: FheType) -> bytes:
        if fhe_type not in SUPPORTED_TYPES:
            raise UnsupportedOperation(f"{fhe_type.name} is not supported by {NAME} yet")
        reference.check_value(value, fhe_type)
        payload = self._client.encrypt(int(fhe_type), _le(value))
        return Envelope(NAME, fhe_type, Kind.CIPHERTEXT, self._digest, payload).to_bytes()

    def decrypt(self, ciphertext: bytes) -> int:
        envelope = Envelope.from_bytes(ciphertext)
        envelope.expect(backend=NAME, digest=self._digest, kind=envelope.kind)
        try:
            if envelope.kind is Kind.SQUASHED:
                raw = self._client.decrypt_squashed(int(envelope.fhe_type), envelope.payload)
            else:
                raw = self._client.decrypt(int(envelope.fhe_type), envelope.payload)
        except ValueError as error:
            raise BadCiphertext(f"cannot decrypt: {error}") from None
        return _from_le(raw)

    def decrypt_published(self, data: bytes, fhe_type: FheType, *, squashed: bool) -> int:
        """A raw S3 object: ct128 (a compressed squashed list or a bare squashed
        ciphertext) or ct64 (a one-element CompressedCiphertextList). The first ct64 read
        derives a decompression key from the client key (about a second)."""
        if fhe_type not in SUPPORTED_TYPES:
            raise UnsupportedOperation(f"{fhe_type.name} is not supported by {NAME} yet")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadCiphertext(f"a published object must be bytes, got {type(data).__name__}")
        method = "decrypt_squashed" if squashed else "decrypt_compressed"
        try:
            raw = getattr(self._client, method)(int(fhe_type), bytes(data))
        except ValueError as error:
            raise BadCiphertext(f"cannot decrypt the published object: {error}") from None
        except RuntimeError as error:  # the key, not the object: a keyset from before ct64
            raise UnsupportedOperation(str(error)) from None
        return _from_le(raw)


class TfheRsEvaluator:
    backend = NAME

    def __init__(
        self,
        server_key: bytes,
        key_id: bytes | None = None,
        *,
        native: Any = None,
        devices: gpu.DevicePool | None = None,
    ) -> None:
        """``server_key`` is the whole key or one stage's part (``key_parts``); a part
        labels ciphertexts with the keyset's id, ``key_id``, not with its own digest.
        ``native``: an already expanded key (``load_expanded``), then ``server_key`` is
        unused and ``key_id`` required. ``devices``: the GPUs to compute on as well
        (the key is expanded onto each; the memory it takes there is held in the pool);
        with ``native``, the GPUs that key was already expanded onto."""
        self._devices = devices if native is not None else None
        if native is None:
            devices = self._usable(devices)
            indexes = [d.index for d in devices.devices] if devices else []
            before = [devices.free_bytes(i) for i in indexes] if devices else []
            try:
                native = _native().Evaluator(server_key, indexes)
            except ValueError as error:  # a corrupted or foreign key object, e.g. from S3
                if str(error).startswith("unsupported"):  # a device, not the key
                    raise ConfigError(f"{NAME} cannot use these GPUs: {error}") from None
                raise BadCiphertext(f"not a {NAME} server key: {error}") from None
            if devices:
                for index, free in zip(indexes, before, strict=True):
                    devices.hold(index, max(0, free - devices.free_bytes(index)))
                self._devices = devices
                log.info(
                    "server key expanded on the GPUs",
                    extra={
                        "fields": {
                            "devices": indexes,
                            "on_cpu": "trivial encryption, ct64 compression and "
                            "decompression, input verification, ciphertext checks",
                        }
                    },
                )
        elif key_id is None:
            raise ValueError("an expanded key needs its keyset's key_id")
        self._evaluator = native
        self.key_digest = key_id[:8] if key_id else key_digest(server_key)
        self._can_compress_squashed = bool(self._evaluator.can_compress_squashed)
        self._can_compress = bool(self._evaluator.can_compress)

    @staticmethod
    def _usable(devices: gpu.DevicePool | None) -> gpu.DevicePool | None:
        """``devices`` if this build of the extension can use them. A GPU node running
        a CPU build computes on its CPU, loudly, rather than failing the batch."""
        if devices is None or not devices.devices:
            return None
        if not _native().HAS_GPU:
            log.warning(
                "GPUs allocated but the tfhe-rs extension is built without GPU support "
                "(make setup-gpu builds it): computing on CPU"
            )
            return None
        return devices

    @property
    def gpus(self) -> list[int]:
        """The CUDA devices this evaluator computes on (empty: the CPU only)."""
        return [d.index for d in self._devices.devices] if self._devices else []

    @classmethod
    def load_expanded(cls, path: Path, digest: str, key_id: bytes) -> TfheRsEvaluator:
        """An evaluator from a file ``save_expanded`` wrote (the node-local key cache):
        a read instead of a decompression. BadCiphertext unless the whole file hashes to
        ``digest``."""
        try:
            native = _native().Evaluator.load_expanded(str(path), digest)
        except ValueError as error:
            raise BadCiphertext(f"not a usable expanded {NAME} key: {error}") from None
        return cls(b"", key_id, native=native)

    def save_expanded(self, path: Path) -> str:
        """Write the expanded key to ``path`` (synced); its BLAKE3 digest (hex)."""
        return str(self._evaluator.save_expanded(str(path)))

    # --- helpers -------------------------------------------------------------------
    def _open(self, ciphertext: bytes) -> Envelope:
        return Envelope.from_bytes(ciphertext).expect(backend=NAME, digest=self.key_digest)

    def _wrap(self, type_code: int, payload: bytes, kind: Kind = Kind.CIPHERTEXT) -> bytes:
        return Envelope(NAME, FheType(type_code), kind, self.key_digest, payload).to_bytes()

    def _call(self, method: str, *args: object, gpu_op: tuple[Op | None, FheType] | None = None):
        """Call the native evaluator; its ValueErrors become our error classes. With
        ``gpu_op`` (the op, None for switch-and-squash, and its type), on a GPU that has
        room for it, else on the CPU; without one, on the CPU."""
        if gpu_op is None or self._devices is None:
            return self._native_call(method, *args)
        op, fhe_type = gpu_op
        need = (
            gpu.estimate_squash_bytes(fhe_type) if op is None else gpu.estimate_bytes(op, fhe_type)
        )
        with self._devices.reservation(need) as reserved:
            device = None if reserved is None else reserved.device
            return self._native_call(method, *args, device=device)

    def _native_call(self, method: str, *args: object, **kwargs: object):
        try:
            return getattr(self._evaluator, method)(*args, **kwargs)
        except RuntimeError as error:
            if str(error).startswith("TFHE-rs panicked"):  # caught in the extension
                raise NativePanic(str(error)) from None
            raise
        except ValueError as error:
            text = str(error)
            if text.startswith("unsupported"):
                raise UnsupportedOperation(text) from None
            raise BadCiphertext(f"rejected by TFHE-rs: {text}") from None

    def fhe_type_of(self, ciphertext: bytes) -> FheType:
        return self._open(ciphertext).fhe_type

    # --- the interface -------------------------------------------------------------
    def evaluate(self, request: OpRequest) -> bytes:
        op = request.op
        envelopes = [self._open(c) for c in request.operands]
        types = [e.fhe_type for e in envelopes]
        working = operand_type(op, types, request.result_type)
        require_support(TfheRsBackend(), op, working)
        if op is Op.Cast:
            target = request.result_type
            assert target is not None
            require_support(TfheRsBackend(), op, target)
            wider = max(working, target, key=lambda t: t.bits)
            return self._wrap(
                *self._call(
                    "cast",
                    int(working),
                    int(target),
                    envelopes[0].payload,
                    gpu_op=(Op.Cast, wider),
                )
            )
        if op is Op.TrivialEncrypt:
            value = reference.trivial_encrypt(one_scalar(request), working)
            return self._wrap(*self._call("trivial", int(working), _le(value)))
        if op in (Op.Rand, Op.RandBounded):
            return self._random(request, working)
        if op is Op.IfThenElse:
            condition, first, second = envelopes
            return self._wrap(
                *self._call(
                    "if_then_else",
                    int(working),
                    condition.payload,
                    first.payload,
                    second.payload,
                    gpu_op=(op, working),
                )
            )
        if op in (Op.Neg, Op.Not):
            if request.scalars:
                raise InvalidOperands(f"{op.event_name} takes no scalar")
            return self._wrap(
                *self._call(
                    "unary",
                    int(op),
                    int(working),
                    envelopes[0].payload,
                    gpu_op=(op, working),
                )
            )
        if op is Op.Sum:
            return self._fold(envelopes, Op.Add, working)
        if op is Op.IsIn:
            return self._is_in(envelopes, request.scalars, working)
        if op is Op.MulDiv:
            return self._mul_div(envelopes[0], request.scalars, working)
        # Binary ops: encrypted or scalar second operand.
        if len(envelopes) == 2 and not request.scalars:
            rhs = envelopes[1].payload
            if op in (Op.Shl, Op.Shr, Op.Rotl, Op.Rotr):
                rhs = self._amount_modulo_bits(op, rhs, working)
            return self._wrap(
                *self._call(
                    "binary",
                    int(op),
                    int(working),
                    envelopes[0].payload,
                    rhs,
                    gpu_op=(op, working),
                )
            )
        if len(envelopes) == 1 and len(request.scalars) == 1:
            return self._binary_scalar(op, envelopes[0], request.scalars[0], working)
        raise InvalidOperands(f"{op.event_name} takes two operands, the second may be a scalar")

    def _amount_modulo_bits(self, op: Op, amount: bytes, fhe_type: FheType) -> bytes:
        """fhEVM takes shift amounts modulo the bit width; TFHE-rs shifts by an amount
        >= bits give 0 (measured), and its rotations wrap only for power-of-two widths."""
        bits = fhe_type.bits
        if bits & (bits - 1) == 0:
            if op in (Op.Rotl, Op.Rotr):
                return amount
            return self._call(
                "binary_scalar",
                int(Op.BitAnd),
                int(fhe_type),
                amount,
                _le(bits - 1),
                gpu_op=(Op.BitAnd, fhe_type),
            )[1]
        return self._call(
            "binary_scalar",
            int(Op.Rem),
            int(fhe_type),
            amount,
            _le(bits),
            gpu_op=(Op.Rem, fhe_type),
        )[1]

    def _binary_scalar(self, op: Op, lhs: Envelope, scalar: int, fhe_type: FheType) -> bytes:
        if scalar < 0:
            raise InvalidOperands("a scalar operand must not be negative")
        value = reference.wrap(scalar, fhe_type)
        if op in (Op.Div, Op.Rem) and value == 0:
            if op is Op.Rem:  # x % 0 = x
                return self._wrap(int(fhe_type), lhs.payload)
            return self._wrap(*self._call("trivial", int(fhe_type), _le(fhe_type.max_value)))
        if op in (Op.Shl, Op.Shr, Op.Rotl, Op.Rotr):
            value = value % fhe_type.bits  # wrapped first, like fhEVM
        return self._wrap(
            *self._call(
                "binary_scalar",
                int(op),
                int(fhe_type),
                lhs.payload,
                _le(value),
                gpu_op=(op, fhe_type),
            )
        )

    def _mul_div(self, lhs: Envelope, scalars: tuple[int, ...], fhe_type: FheType) -> bytes:
        """(a * b) // c with the product at double width: widen, multiply, divide, cut."""
        wide, multiplier, divisor = mul_div_plan(scalars, fhe_type)
        if divisor == 0:
            return self._wrap(*self._call("trivial", int(fhe_type), _le(fhe_type.max_value)))
        cast = (Op.Cast, wide)
        _, widened = self._call("cast", int(fhe_type), int(wide), lhs.payload, gpu_op=cast)
        _, product = self._call(
            "binary_scalar",
            int(Op.Mul),
            int(wide),
            widened,
            _le(multiplier),
            gpu_op=(Op.Mul, wide),
        )
        _, quotient = self._call(
            "binary_scalar",
            int(Op.Div),
            int(wide),
            product,
            _le(divisor),
            gpu_op=(Op.Div, wide),
        )
        return self._wrap(*self._call("cast", int(wide), int(fhe_type), quotient, gpu_op=cast))

    def _fold(self, envelopes: list[Envelope], op: Op, fhe_type: FheType) -> bytes:
        accumulated = envelopes[0].payload
        for item in envelopes[1:]:
            _, accumulated = self._call(
                "binary",
                int(op),
                int(fhe_type),
                accumulated,
                item.payload,
                gpu_op=(op, fhe_type),
            )
        return self._wrap(int(fhe_type), accumulated)

    def _is_in(
        self, envelopes: list[Envelope], scalars: tuple[int, ...], fhe_type: FheType
    ) -> bytes:
        needle, candidates = envelopes[0], envelopes[1:]
        eq = (Op.Eq, fhe_type)
        hits = [
            self._call("binary", int(Op.Eq), int(fhe_type), needle.payload, c.payload, gpu_op=eq)[1]
            for c in candidates
        ]
        hits += [
            self._call(
                "binary_scalar",
                int(Op.Eq),
                int(fhe_type),
                needle.payload,
                _le(reference.wrap(s, fhe_type)),
                gpu_op=eq,
            )[1]
            for s in scalars
        ]
        if not hits:
            raise InvalidOperands("FheIsIn needs at least one candidate")
        found = hits[0]
        for hit in hits[1:]:
            _, found = self._call(
                "binary",
                int(Op.BitOr),
                int(FheType.Bool),
                found,
                hit,
                gpu_op=(Op.BitOr, FheType.Bool),
            )
        return self._wrap(int(FheType.Bool), found)

    def _random(self, request: OpRequest, fhe_type: FheType) -> bytes:
        if request.seed is None or len(request.seed) != SEED_BYTES:
            raise InvalidOperands(
                f"{request.op.event_name} needs a {SEED_BYTES}-byte seed (the host's bytes16)"
            )
        seed = request.seed  # as the host emits it; read big-endian by the extension
        bits = 0
        if request.op is Op.RandBounded:
            bound = one_scalar(request)
            if bound <= 0 or bound & (bound - 1) or bound > fhe_type.max_value + 1:
                raise InvalidOperands(
                    f"upper bound {bound} must be a power of two within {fhe_type.name}"
                )
            bits = bound.bit_length() - 1
            if bits == 0:  # the only value below 1 is 0
                return self._wrap(*self._call("trivial", int(fhe_type), _le(0)))
        if fhe_type is FheType.Bool and bits:
            raise InvalidOperands("RandBounded is not defined on Bool")
        return self._wrap(
            *self._call("random", int(fhe_type), seed, bits, gpu_op=(request.op, fhe_type))
        )

    def squashed_format(self, fhe_type: FheType) -> SquashedFormat:
        """Compressed (a CompressedSquashedNoiseCiphertextList packs the 128-bit blocks
        into GLWEs) wherever that is smaller: measured 99 KB against 1.05 MB for Uint64 and
        4.2 MB for Uint256, but against 66 KB for a bare Bool or Uint4. Keysets made before
        the noise squashing compression key was added squash to the bare form only."""
        if self._can_compress_squashed and fhe_type not in _BARE_SQUASHED_TYPES:
            return SquashedFormat.COMPRESSED_ON_CPU
        return SquashedFormat.UNCOMPRESSED_ON_CPU

    def squash(self, ciphertext: bytes) -> bytes:
        envelope = self._open(ciphertext)
        compress = self.squashed_format(envelope.fhe_type) is SquashedFormat.COMPRESSED_ON_CPU
        payload = self._call(
            "squash",
            int(envelope.fhe_type),
            envelope.payload,
            compress,
            gpu_op=(None, envelope.fhe_type),
        )
        return self._wrap(int(envelope.fhe_type), payload, Kind.SQUASHED)

    def compress(self, ciphertext: bytes) -> bytes:
        """The ct64 object: a one-element CompressedCiphertextList, raw TFHE-rs bytes, as
        the reference's sns-worker uploads it; deterministic (same bytes on every run and
        every coprocessor). About 2 KB whatever the type: one GLWE packs up to 256 blocks."""
        envelope = self._open(ciphertext)
        self._require_compression()
        return self._call("compress", int(envelope.fhe_type), envelope.payload)

    def decompress(self, data: bytes, fhe_type: FheType) -> bytes:
        """A ct64 object back to a computable (enveloped) ciphertext of this keyset: what
        the reference's workers do with the compressed ciphertexts they store. Not part of
        the engine interface. The object names no key: one made under another keyset
        decompresses to garbage, not to an error."""
        if fhe_type not in SUPPORTED_TYPES:
            raise UnsupportedOperation(f"{fhe_type.name} is not supported by {NAME} yet")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadCiphertext(f"a published object must be bytes, got {type(data).__name__}")
        self._require_compression()
        return self._wrap(*self._call("decompress", int(fhe_type), bytes(data)))

    def _require_compression(self) -> None:
        if not self._can_compress:
            raise UnsupportedOperation(
                f"this tenant's {NAME} keyset has no compression key (it was made before "
                "ct64 objects became compressed lists): regenerate the tenant keyset"
            )

    def verify_inputs(
        self,
        crs: bytes,
        public_key: bytes,
        proven_list: bytes,
        metadata: bytes,
        rerand: Sequence[bytes] = (),
    ) -> list[bytes]:
        """A client's proven input list -> one enveloped ciphertext per value, only if the
        proof holds for this CRS, this tenant's compact public key and ``metadata``;
        ``rerand[i]`` becomes value i's re-randomisation metadata."""
        if not isinstance(proven_list, bytes | bytearray) or not proven_list:
            raise InvalidInputProof("the input list is empty or not bytes")
        try:
            expanded = self._evaluator.verify_inputs(
                crs, public_key, bytes(proven_list), bytes(metadata), [bytes(r) for r in rerand]
            )
        except ValueError as error:
            raise InvalidInputProof(f"input list refused: {error}") from None
        except RuntimeError as error:  # our CRS or the tenant's key: not the list's fault
            raise ConfigError(f"{NAME} cannot verify input lists here: {error}") from None
        return [self._wrap(code, payload) for code, payload in expanded]

    def check(self, ciphertext: bytes) -> FheType:
        """Raise BadCiphertext unless the bytes deserialize under this key's parameters."""
        envelope = self._open(ciphertext)
        self._call("check", int(envelope.fhe_type), envelope.payload)
        return envelope.fhe_type

    def rerand_metadata(self, ciphertext: bytes) -> bytes:
        """The re-randomisation metadata the ciphertext carries (b"" when none)."""
        envelope = self._open(ciphertext)
        return bytes(self._call("rerand_metadata", int(envelope.fhe_type), envelope.payload))


class TfheRsBackend:
    name = NAME
    failure_probability = "2^-128 per bootstrap (PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)"
    _evaluators = EvaluatorCache(EVALUATOR_CACHE_SIZE)

    def support(self, op: Op, fhe_type: FheType) -> str | None:
        if fhe_type not in SUPPORTED_TYPES:
            return f"{fhe_type.name} is not supported by {NAME} yet (byte arrays)"
        if (
            op is Op.MulDiv
            and fhe_type in reference.UINT_TYPES
            and reference.double_width(fhe_type) is None
        ):
            return f"no double-width type for the product of {fhe_type.name}"
        if fhe_type is FheType.Bool and op is Op.RandBounded:
            return "RandBounded is not defined on Bool"
        return reference.defined(op, fhe_type)

    def generate_crs(self, max_bits: int) -> bytes:
        """A CRS for input proofs of up to ``max_bits`` bits (independent of any key)."""
        return _native().generate_crs(max_bits)

    def generate_keyset(self) -> Keyset:
        client_key, server_key, public_key = _native().generate_keys()
        return Keyset(NAME, client_key, server_key, public_key)

    def client(self, client_key: bytes, key_id: bytes) -> TfheRsClient:
        try:
            return TfheRsClient(client_key, key_id)
        except ValueError as error:
            raise BadCiphertext(f"not a {NAME} client key: {error}") from None

    def key_parts(self, server_key: bytes) -> dict[str, bytes]:
        """The shares of the compute and verify stages (``engine.KEY_PURPOSES``): 60 MB
        each and about 1 s to load, against 511 MB and 16 s for the whole key, which is
        mostly the noise squashing material only SNS uses (SNS loads the whole key)."""
        try:
            compute, verify = _native().split_server_key(server_key)
        except ValueError as error:
            raise BadCiphertext(f"not a {NAME} server key: {error}") from None
        return {"compute": compute, "verify": verify}

    @property
    def runs_on_gpu(self) -> bool:
        """Whether evaluator(devices=...) can compute on a pod's GPUs: only an extension
        built with them (make setup-gpu). Asked before any GPU is looked for."""
        try:
            return bool(_native().HAS_GPU)
        except UnsupportedOperation:  # the extension is not built: no GPU either
            return False

    def evaluator(
        self,
        server_key: bytes,
        key_id: bytes | None = None,
        devices: gpu.DevicePool | None = None,
    ) -> TfheRsEvaluator:
        if devices is not None:
            # Not cached: its key copies hold memory in this pool for as long as it
            # lives, and each stage pod makes one (the stage keeps it).
            return TfheRsEvaluator(server_key, key_id, devices=devices)
        return self._evaluators.get(  # type: ignore[return-value]
            server_key, lambda key: TfheRsEvaluator(key, key_id)
        )

    # --- the node-local key cache (coprocessor/keycache.py) --------------------------
    named_evaluators = EvaluatorCache(EVALUATOR_CACHE_SIZE)  # by cache name

    @property
    def version(self) -> str:
        """TFHE-rs's version: part of a cached key's name."""
        return str(_native().TFHE_VERSION)

    @staticmethod
    def load_expanded(path: Path, digest: str, key_id: bytes) -> TfheRsEvaluator:
        return TfheRsEvaluator.load_expanded(path, digest, key_id)
