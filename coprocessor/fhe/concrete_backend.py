"""The ``concrete`` backend: concrete-python, radix chunks, one keyset per tenant.

How it fits the engine interface (measured choices in docs/design.md section 7 and the
engine issue's notes):

* A tenant's keys come from one small *base* circuit whose lookups carry the worst
  noise any circuit of ``concrete_circuits`` produces. Every other circuit (one per op
  and chunk count, compiled on first use) is compiled under that keyset's *restriction*,
  so the tenant's single set of evaluation keys runs them all and any output feeds any
  input. A circuit that would need other keys fails to compile: loud, never wrong.
* Failure probability is a setting (``FHE_CONCRETE_P_ERROR``, default 2^-64 per
  bootstrap); it is part of every cache key and recorded in the keyset.
* Compiled circuits are cached on disk under ``<cache_dir>/concrete/`` keyed by concrete
  version, circuit version, failure probability, restriction and circuit name, and in
  memory per evaluator. Keygen draws its seeds from ``secrets`` explicitly.
* Ciphertext payload: format version, type code, a SHA-256 prefix over both and the
  concrete value, then the value. concrete itself accepts flipped ciphertext bytes
  (it cannot tell), so the digest is what turns corruption into an error instead of a
  wrong balance.
* Scalars are trivially encrypted and go through the encrypted circuit: one circuit
  per op instead of two, at the price of one bootstrap per chunk.
* Not offered, with the reason in the support matrix: byte arrays; Rand/RandBounded
  (concrete-python has no oblivious pseudo-random generation, and a value derived from
  the public seed would be public); ops whose estimated bootstrap count exceeds
  ``FHE_CONCRETE_MAX_PBS``; encrypted shift amounts on Uint160 (modulo 160 needs a
  division). There is no 128-bit switch-and-squash: ``squash`` refreshes the
  ciphertext by bootstrapping (minimum noise), which is what this backend's own
  decryption needs. Nor is there list compression: ``compress`` publishes the sealed
  payload as it is.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import math
import os
import secrets
import shutil
import struct
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import Irrecoverable
from ..settings import load_settings as get_settings
from ..types import FheType, Op
from . import concrete_circuits as cc
from . import reference
from .engine import (
    MUL_DIV_SHAPE,
    EvaluatorCache,
    InvalidOperands,
    Keyset,
    OpRequest,
    SquashedFormat,
    UnsupportedOperation,
    mul_div_plan,
    one_scalar,
    operand_type,
    require_support,
    result_type_of,
)
from .envelope import BadCiphertext, Envelope, Kind, key_digest

if importlib.util.find_spec("concrete") is None:  # get_backend makes this one line
    raise ImportError("concrete-python is not installed (pip install 'fhe-coprocessor[concrete]')")

NAME = "concrete"
FORMAT_VERSION = 1
KEY_MAGIC = b"CCK1"
SUPPORTED_TYPES = frozenset(FheType(code) for code in range(9))  # Bool .. Uint256
EVALUATOR_CACHE_SIZE = 2  # evaluation keys are ~120 MB each
CIRCUIT_CACHE_SIZE = 64


class CompilationFailed(Irrecoverable):
    """A circuit does not fit the tenant's keys (a bug in a builder, not bad input)."""


def _fhe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation from concrete's namespace
        from concrete import fhe
    return fhe


def _version() -> str:
    return _fhe().__version__


# --- keys and compilation ----------------------------------------------------------------


def _configuration(p_error: float, restriction: str | None):
    fhe = _fhe()
    from concrete.compiler import KeysetRestriction

    options = dict(
        p_error=p_error,
        global_p_error=None,
        composable=True,
        show_progress=False,
        dump_artifacts_on_unexpected_failures=False,
        use_insecure_key_cache=False,
    )
    if restriction is not None:
        options["keyset_restriction"] = KeysetRestriction.from_json(restriction)
    return fhe.Configuration(**options)


def _traceable(spec: cc.CircuitSpec):
    """concrete reads argument names from the signature; builders take positional ones."""
    build = spec.build
    if len(spec.shapes) == 1:

        def one(x0):
            return build(x0)

        return one
    if len(spec.shapes) == 2:

        def two(x0, x1):
            return build(x0, x1)

        return two

    def three(x0, x1, x2):
        return build(x0, x1, x2)

    return three


def _prepare_thread() -> None:
    """concrete 2.11 initializes its tracing thread-locals only in the thread that first
    imported it, so compiling in a worker thread (the compute stage's pool) fails with
    "'_thread._local' object has no attribute 'stack'" (measured). Give this thread the
    same initial state."""
    import importlib

    def module(name: str):  # the package re-exports functions under the modules' names
        return importlib.import_module(f"concrete.fhe.extensions.{name}")

    tag_context = module("tag").tag_context
    if not hasattr(tag_context, "stack"):
        tag_context.stack = []
    for name in ("round_bit_pattern", "truncate_bit_pattern"):
        local = module(name).local
        if not hasattr(local, "_is_adjusting"):
            local._is_adjusting = False


def compile_spec(spec: cc.CircuitSpec, p_error: float, restriction: str | None):
    fhe = _fhe()
    _prepare_thread()
    compiler = fhe.Compiler(_traceable(spec), spec.arguments())
    try:
        circuit = compiler.compile(spec.inputset(), _configuration(p_error, restriction))
    except Exception as error:  # concrete raises RuntimeError/ValueError with its reasons
        raise CompilationFailed(
            f"circuit {spec.name} does not compile under this keyset: {error}"
        ) from error
    _removed_at_exit(circuit.server)
    return circuit


_BASES: dict[str, object] = {}
_RESTRICTIONS: dict[float, str] = {}
_BASE_LOCK = threading.Lock()
# Lattice dimension added to the optimizer's choice for the base circuit. Measured with
# concrete 2.11: the optimizer's best dimension for a single circuit varies (805-829)
# with its shape, and a circuit needing one more than the keyset has will not compile;
# a larger dimension only adds security and ~3% bootstrap time.
DIMENSION_MARGINS = (32, 64, 128)


def _probe_specs() -> list[cc.CircuitSpec]:
    """Circuits whose every noise pattern must fit a tenant's keys (one of each builder)."""
    return [
        cc.binary_spec(Op.Mul, FheType.Uint8),
        cc.binary_spec(Op.Div, FheType.Uint4),
        cc.binary_spec(Op.Shl, FheType.Uint8),
        cc.select_spec(4),
        cc.binary_spec(Op.Add, FheType.Uint64),
        cc.binary_spec(Op.BitAnd, FheType.Uint8),
        cc.binary_spec(Op.Lt, FheType.Uint16),
        cc.unary_spec(Op.Neg, FheType.Uint8),
    ]


def _widen(restriction: str, margin: int) -> str:
    data = json.loads(restriction)
    info = data["info"]
    small = min(key["lwe_dimension"] for key in info["lwe_secret_keys"])
    for key in info["lwe_secret_keys"]:
        if key["lwe_dimension"] == small:
            key["lwe_dimension"] = small + margin
    for key in info["lwe_bootstrap_keys"]:
        if key["input_lwe_dimension"] == small:
            key["input_lwe_dimension"] = small + margin
    for key in info["lwe_keyswitch_keys"]:
        if key["output_lwe_dimension"] == small:
            key["output_lwe_dimension"] = small + margin
    return json.dumps(data, sort_keys=True)


def tenant_restriction(p_error: float) -> str:
    """The parameters every tenant key at this failure probability uses: the optimizer's
    choice for the base circuit, widened until every builder's circuits compile under it.
    Deterministic per concrete version; computed once per process (a few seconds)."""
    with _BASE_LOCK:
        if p_error in _RESTRICTIONS:
            return _RESTRICTIONS[p_error]
    unrestricted = compile_spec(cc.base_spec(), p_error, None)
    chosen = unrestricted.client.specs.program_info.get_keyset_info().get_restriction()
    for margin in DIMENSION_MARGINS:
        candidate = _widen(chosen.to_json(), margin)
        try:
            for spec in _probe_specs():
                compile_spec(spec, p_error, candidate)
        except CompilationFailed:
            continue
        with _BASE_LOCK:
            _RESTRICTIONS[p_error] = candidate
        return candidate
    raise CompilationFailed(
        f"no keyset within {DIMENSION_MARGINS[-1]} extra dimensions fits "
        f"every circuit at p_error={p_error}"
    )


def keyed_base(restriction: str, p_error: float):
    """The base circuit under a tenant's restriction: its client specs are what keys are
    generated from and rebuilt with."""
    key = f"{p_error!r}|{restriction}"
    with _BASE_LOCK:
        if key not in _BASES:
            _BASES[key] = compile_spec(cc.base_spec(), p_error, restriction)
        return _BASES[key]


class CircuitCache:
    """Compiled servers for one keyset restriction: memory LRU over a disk cache."""

    def __init__(self, restriction: str, p_error: float, directory: Path) -> None:
        self.restriction, self.p_error, self.directory = restriction, p_error, directory
        self._servers: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._compiling: dict[str, threading.Lock] = {}  # one compile per circuit at a time
        self.compiled = 0  # circuits this process compiled (not loaded): for the benchmarks

    def _path(self, spec: cc.CircuitSpec) -> Path:
        key = hashlib.sha256(
            "|".join(
                [
                    _version(),
                    str(cc.CIRCUITS_VERSION),
                    repr(self.p_error),
                    self.restriction,
                    spec.name,
                ]
            ).encode()
        ).hexdigest()[:24]
        return self.directory / f"{spec.name}-{key}.zip"

    def server(self, spec: cc.CircuitSpec):
        with self._lock:
            if spec.name in self._servers:
                self._servers.move_to_end(spec.name)
                return self._servers[spec.name]
            compiling = self._compiling.setdefault(spec.name, threading.Lock())
        with compiling:  # pool threads needing the same circuit wait for one compile
            with self._lock:
                if spec.name in self._servers:
                    return self._servers[spec.name]
            server = self._load_or_compile(spec)
            with self._lock:
                self._servers[spec.name] = server
                while len(self._servers) > CIRCUIT_CACHE_SIZE:
                    self._servers.popitem(last=False)
        return server

    def _load_or_compile(self, spec: cc.CircuitSpec):
        fhe = _fhe()
        path = self._path(spec)
        if path.exists():
            try:
                return _removed_at_exit(fhe.Server.load(path))
            except Exception:  # a truncated or foreign file: rebuild it
                path.unlink(missing_ok=True)
        server = compile_spec(spec, self.p_error, self.restriction).server
        self.compiled += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            staged = Path(scratch) / path.name
            server.save(staged)
            os.replace(staged, path)  # atomic: a concurrent pod sees all or nothing
        return server


_SCRATCH_DIRS: set[str] = set()


def _removed_at_exit(server):
    """concrete-python unpacks every circuit it loads or compiles into a mkdtemp()
    directory (its shared library, specs) and its ``cleanup()`` no longer removes it
    (2.11): left alone, each process leaves one directory per circuit in /tmp. The
    library stays in use while the process runs, so ours go when it exits."""
    try:
        directory = server._library.get_output_dir_path()
    except Exception:  # another concrete version: nothing we know to remove
        directory = None
    if directory and Path(directory).resolve().is_relative_to(Path(tempfile.gettempdir())):
        if not _SCRATCH_DIRS:
            atexit.register(_remove_scratch_dirs)
        _SCRATCH_DIRS.add(str(directory))
    return server


def _remove_scratch_dirs() -> None:
    for directory in list(_SCRATCH_DIRS):
        shutil.rmtree(directory, ignore_errors=True)
    _SCRATCH_DIRS.clear()


def _cache_dir() -> Path:
    return get_settings().cache_dir / "concrete"


def _pack_header(header: dict, body: bytes) -> bytes:
    encoded = json.dumps(header, sort_keys=True).encode()
    return KEY_MAGIC + struct.pack(">I", len(encoded)) + encoded + body


def _unpack_header(data: bytes, what: str) -> tuple[dict, bytes]:
    if not isinstance(data, bytes | bytearray) or not bytes(data[:4]) == KEY_MAGIC or len(data) < 8:
        raise BadCiphertext(f"not a {NAME} {what}")
    (length,) = struct.unpack(">I", data[4:8])
    try:
        header = json.loads(bytes(data[8 : 8 + length]))
    except ValueError:
        raise BadCiphertext(f"corrupted {NAME} {what} header") from None
    if not isinstance(header, dict):
        raise BadCiphertext(f"corrupted {NAME} {what} header")
    if header.get("format") != FORMAT_VERSION:
        raise BadCiphertext(f"{NAME} {what} format {header.get('format')} is not {FORMAT_VERSION}")
    return header, bytes(data[8 + length :])


# --- ciphertext payloads -------------------------------------------------------------------


def _seal(fhe_type: FheType, value_bytes: bytes) -> bytes:
    head = bytes([FORMAT_VERSION, int(fhe_type)])
    return head + hashlib.sha256(head + value_bytes).digest()[:16] + value_bytes


def _unseal(envelope: Envelope):
    payload = envelope.payload
    if len(payload) < 18 or payload[0] != FORMAT_VERSION:
        raise BadCiphertext(f"not a {NAME} ciphertext payload (version or length)")
    head, digest, body = payload[:2], payload[2:18], payload[18:]
    if head[1] != int(envelope.fhe_type):
        raise BadCiphertext(
            f"payload holds type code {head[1]}, envelope says {envelope.fhe_type.name}"
        )
    if hashlib.sha256(head + body).digest()[:16] != digest:
        raise BadCiphertext("ciphertext bytes are corrupted (digest mismatch)")
    try:
        return _fhe().Value.deserialize(body)
    except Exception as error:
        raise BadCiphertext(f"cannot read {NAME} ciphertext: {error}") from None


# --- roles ------------------------------------------------------------------------------


class ConcreteClient:
    backend = NAME

    def __init__(self, client_key: bytes, key_id: bytes) -> None:
        header, body = _unpack_header(client_key, "client key")
        self._digest = key_id[:8]
        self._p_error = float(header["p_error"])
        self._circuits = CircuitCache(header["restriction"], self._p_error, _cache_dir())
        self._keys = _keys_from_secrets(header, body, self._p_error)
        self._clients: dict[int, object] = {}

    def _client(self, chunks: int):
        if chunks not in self._clients:
            client = _fhe().Client(self._circuits.server(cc.refresh_spec(chunks)).client_specs)
            client.keys = self._keys
            self._clients[chunks] = client
        return self._clients[chunks]

    def encrypt(self, value: int, fhe_type: FheType) -> bytes:
        if fhe_type not in SUPPORTED_TYPES:
            raise UnsupportedOperation(f"{fhe_type.name} is not supported by {NAME} yet")
        reference.check_value(value, fhe_type)
        n = cc.chunk_count(fhe_type)
        encrypted = self._client(n).encrypt(cc.to_chunks(value, n))
        payload = _seal(fhe_type, encrypted.serialize())
        return Envelope(NAME, fhe_type, Kind.CIPHERTEXT, self._digest, payload).to_bytes()

    def decrypt(self, ciphertext: bytes) -> int:
        envelope = Envelope.from_bytes(ciphertext)
        envelope.expect(backend=NAME, digest=self._digest, kind=envelope.kind)
        value = _unseal(envelope)
        try:
            chunks = np.atleast_1d(self._client(cc.chunk_count(envelope.fhe_type)).decrypt(value))
        except Exception as error:
            raise BadCiphertext(f"cannot decrypt: {error}") from None
        if chunks.min(initial=0) < 0 or chunks.max(initial=0) > cc.CHUNK_MAX:
            raise BadCiphertext("decrypted chunk out of range: not a ciphertext of this backend")
        return reference.check_value(cc.from_chunks(chunks), envelope.fhe_type)

    def decrypt_published(self, data: bytes, fhe_type: FheType, *, squashed: bool) -> int:
        """A raw published object (``ConcreteEvaluator.compress``, or a squashed
        ciphertext's payload): the same sealed payload either way, so both decrypt alike;
        its own type code and digest refuse another type or damaged bytes."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadCiphertext(f"a published object must be bytes, got {type(data).__name__}")
        kind = Kind.SQUASHED if squashed else Kind.CIPHERTEXT
        return self.decrypt(Envelope(NAME, fhe_type, kind, self._digest, bytes(data)).to_bytes())


def _keys_from_secrets(header: dict, body: bytes, p_error: float):
    """Rebuild a full keyset from the stored secret keys: concrete has no client-only
    keyset, so the evaluation keys are regenerated (about as long as keygen) with fresh
    seeds; encryption randomness never repeats across processes."""
    fhe = _fhe()
    from concrete.compiler import LweSecretKey

    base = keyed_base(header["restriction"], p_error)
    params = base.client.specs.program_info.get_keyset_info().secret_keys()
    offsets, initial = header["secret_key_sizes"], {}
    start = 0
    for key_id, size in enumerate(offsets):
        initial[key_id] = LweSecretKey.deserialize(body[start : start + size], params[key_id])
        start += size
    keys = fhe.Keys(base.client.specs, None)
    keys.generate(
        secret_seed=secrets.randbits(128),
        encryption_seed=secrets.randbits(128),
        initial_keys=initial,
    )
    return keys


class ConcreteEvaluator:
    backend = NAME

    def __init__(self, server_key: bytes) -> None:
        header, body = _unpack_header(server_key, "server key")
        try:
            self._keys = _fhe().EvaluationKeys.deserialize(body)
        except Exception as error:
            raise BadCiphertext(f"not {NAME} evaluation keys: {error}") from None
        self.key_digest = key_digest(server_key)
        self.p_error = float(header["p_error"])
        self.circuits = CircuitCache(header["restriction"], self.p_error, _cache_dir())

    # --- helpers -------------------------------------------------------------------
    def _open(self, ciphertext: bytes) -> Envelope:
        return Envelope.from_bytes(ciphertext).expect(backend=NAME, digest=self.key_digest)

    def _run(self, spec: cc.CircuitSpec, *arguments):
        server = self.circuits.server(spec)
        try:
            return server.run(*arguments, evaluation_keys=self._keys)
        except (RuntimeError, ValueError, TypeError) as error:
            raise BadCiphertext(f"{spec.name} refused its inputs: {error}") from None

    def _wrap(self, fhe_type: FheType, value, kind: Kind = Kind.CIPHERTEXT) -> bytes:
        return Envelope(
            NAME, fhe_type, kind, self.key_digest, _seal(fhe_type, value.serialize())
        ).to_bytes()

    def _trivial(self, value: int, fhe_type: FheType):
        n = cc.chunk_count(fhe_type)
        return self._run(cc.trivial_spec(n), cc.to_chunks(value, n).tolist())

    def fhe_type_of(self, ciphertext: bytes) -> FheType:
        return self._open(ciphertext).fhe_type

    # --- the interface -------------------------------------------------------------
    def evaluate(self, request: OpRequest) -> bytes:
        op = request.op
        envelopes = [self._open(c) for c in request.operands]
        working = operand_type(op, [e.fhe_type for e in envelopes], request.result_type)
        backend = ConcreteBackend()
        require_support(backend, op, working)
        values = [_unseal(e) for e in envelopes]
        if op is Op.Cast:
            target = request.result_type
            assert target is not None
            require_support(backend, op, target)
            return self._wrap(target, self._run(cc.cast_spec(working, target), values[0]))
        if op is Op.TrivialEncrypt:
            value = reference.trivial_encrypt(one_scalar(request), working)
            return self._wrap(working, self._trivial(value, working))
        if op is Op.IfThenElse:
            n = cc.chunk_count(working)
            return self._wrap(working, self._run(cc.select_spec(n), *values))
        if op in (Op.Neg, Op.Not):
            if request.scalars:
                raise InvalidOperands(f"{op.event_name} takes no scalar")
            return self._wrap(working, self._run(cc.unary_spec(op, working), values[0]))
        if op is Op.Sum:
            return self._wrap(working, self._fold(values, Op.Add, working))
        if op is Op.IsIn:
            return self._wrap(FheType.Bool, self._is_in(values, request.scalars, working))
        if op is Op.MulDiv:
            return self._wrap(working, self._mul_div(values, request.scalars, working))
        if len(values) == 2 and not request.scalars:
            return self._wrap(
                result_type_of(op, working, None), self._run(cc.binary_spec(op, working), *values)
            )
        if len(values) == 1 and len(request.scalars) == 1:
            return self._wrap(
                result_type_of(op, working, None),
                self._binary_scalar(op, values[0], request.scalars[0], working),
            )
        raise InvalidOperands(f"{op.event_name} takes two operands, the second may be a scalar")

    def _binary_scalar(self, op: Op, lhs, scalar: int, fhe_type: FheType):
        if scalar < 0:
            raise InvalidOperands("a scalar operand must not be negative")
        value = reference.wrap(scalar, fhe_type)
        if op in (Op.Shl, Op.Shr, Op.Rotl, Op.Rotr):
            value = value % fhe_type.bits  # wrapped first, like fhEVM
        if op is Op.Rem and value == 0:  # x % 0 = x: a fresh copy, no division
            return self._run(cc.refresh_spec(cc.chunk_count(fhe_type)), lhs)
        if op is Op.Div and value == 0:
            return self._trivial(fhe_type.max_value, fhe_type)
        return self._run(cc.binary_spec(op, fhe_type), lhs, self._trivial(value, fhe_type))

    def _fold(self, values: list, op: Op, fhe_type: FheType):
        if not values:
            raise InvalidOperands(f"{op.event_name} needs operands")
        accumulated = values[0]
        if len(values) == 1:
            return self._run(cc.refresh_spec(cc.chunk_count(fhe_type)), accumulated)
        for item in values[1:]:
            accumulated = self._run(cc.binary_spec(op, fhe_type), accumulated, item)
        return accumulated

    def _is_in(self, values: list, scalars: tuple[int, ...], fhe_type: FheType):
        if any(s < 0 for s in scalars):
            raise InvalidOperands("a scalar operand must not be negative")
        needle, candidates = values[0], list(values[1:])
        candidates += [self._trivial(reference.wrap(s, fhe_type), fhe_type) for s in scalars]
        if not candidates:
            raise InvalidOperands("FheIsIn needs at least one candidate")
        hits = [self._run(cc.binary_spec(Op.Eq, fhe_type), needle, c) for c in candidates]
        return self._fold(hits, Op.BitOr, FheType.Bool)

    def _mul_div(self, values: list, scalars: tuple[int, ...], fhe_type: FheType):
        """(a * b) // c at double width: widen, multiply, divide, truncate."""
        if len(values) != 1:
            raise InvalidOperands(MUL_DIV_SHAPE)
        wide, multiplier, divisor = mul_div_plan(scalars, fhe_type)
        if divisor == 0:
            return self._trivial(fhe_type.max_value, fhe_type)
        widened = self._run(cc.cast_spec(fhe_type, wide), values[0])
        product = self._run(cc.binary_spec(Op.Mul, wide), widened, self._trivial(multiplier, wide))
        quotient = self._run(cc.binary_spec(Op.Div, wide), product, self._trivial(divisor, wide))
        return self._run(cc.cast_spec(wide, fhe_type), quotient)

    def squashed_format(self, fhe_type: FheType) -> SquashedFormat:
        return SquashedFormat.UNCOMPRESSED_ON_CPU  # a bootstrapped copy, see module doc

    def squash(self, ciphertext: bytes) -> bytes:
        envelope = self._open(ciphertext)
        value = _unseal(envelope)
        refreshed = self._run(cc.refresh_spec(cc.chunk_count(envelope.fhe_type)), value)
        return self._wrap(envelope.fhe_type, refreshed, Kind.SQUASHED)

    def compress(self, ciphertext: bytes) -> bytes:
        """concrete has no ciphertext compression: the ct64 object is the sealed payload
        itself (checked first), deterministic like the ciphertext it comes from."""
        envelope = self._open(ciphertext)
        _unseal(envelope)
        return envelope.payload

    def verify_inputs(
        self,
        crs: bytes,
        public_key: bytes,
        proven_list: bytes,
        metadata: bytes,
        rerand: Sequence[bytes] = (),
    ) -> list[bytes]:
        raise UnsupportedOperation(
            "the concrete backend has no public-key encryption or "
            "input proofs; fhEVM client inputs need a tfhe-rs tenant"
        )

    def check(self, ciphertext: bytes) -> FheType:
        envelope = self._open(ciphertext)
        _unseal(envelope)
        return envelope.fhe_type


class ConcreteBackend:
    name = NAME
    _evaluators = EvaluatorCache(EVALUATOR_CACHE_SIZE)

    @property
    def failure_probability(self) -> str:
        p_error = get_settings().concrete_p_error
        return f"2^{math.log2(p_error):.1f} per bootstrap (FHE_CONCRETE_P_ERROR={p_error:.3g})"

    def support(self, op: Op, fhe_type: FheType) -> str | None:
        if fhe_type not in SUPPORTED_TYPES:
            return f"{fhe_type.name} is not supported by {NAME} yet (byte arrays)"
        if op in (Op.Rand, Op.RandBounded):
            return (
                "concrete-python has no oblivious pseudo-random generation; a value "
                "derived from the public seed would be public"
            )
        undefined = reference.defined(op, fhe_type)
        if undefined:
            return undefined
        if op in (Op.Shl, Op.Shr, Op.Rotl, Op.Rotr) and fhe_type.bits & (fhe_type.bits - 1):
            return (
                f"amounts modulo {fhe_type.bits} need a division on an encrypted amount "
                "(the barrel shifter takes them modulo a power of two)"
            )
        if op is Op.MulDiv and reference.double_width(fhe_type) is None:
            return f"no double-width type for the product of {fhe_type.name}"
        cost, limit = cc.estimated_pbs(op, fhe_type), get_settings().concrete_max_pbs
        if cost > limit:
            return (
                f"needs ~{cost} bootstraps per op, over FHE_CONCRETE_MAX_PBS={limit} (use tfhe-rs)"
            )
        return None

    def generate_keyset(self) -> Keyset:
        p_error = get_settings().concrete_p_error
        restriction = tenant_restriction(p_error)
        base = keyed_base(restriction, p_error)
        keys = _fhe().Keys(base.client.specs, None)
        keys.generate(secret_seed=secrets.randbits(128), encryption_seed=secrets.randbits(128))
        secret_keys = [key.serialize() for key in keys._keyset.get_client_keys().get_secret_keys()]
        common = {
            "format": FORMAT_VERSION,
            "concrete": _version(),
            "p_error": p_error,
            "restriction": restriction,
        }
        client_key = _pack_header(
            {**common, "secret_key_sizes": [len(k) for k in secret_keys]}, b"".join(secret_keys)
        )
        server_key = _pack_header(common, keys.evaluation.serialize())
        public = json.dumps(
            {**common, "restriction_sha256": hashlib.sha256(restriction.encode()).hexdigest()}
        ).encode()
        return Keyset(NAME, client_key, server_key, public)

    def client(self, client_key: bytes, key_id: bytes) -> ConcreteClient:
        try:
            return ConcreteClient(client_key, key_id)
        except (KeyError, ValueError, RuntimeError) as error:
            raise BadCiphertext(f"not a {NAME} client key: {error}") from None

    def key_parts(self, server_key: bytes) -> dict[str, bytes]:
        """One key for every stage: concrete's evaluation keys do not split by use."""
        return {}

    def evaluator(self, server_key: bytes, key_id: bytes | None = None) -> ConcreteEvaluator:
        return self._evaluators.get(server_key, ConcreteEvaluator)  # type: ignore[return-value]
