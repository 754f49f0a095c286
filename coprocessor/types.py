"""The fhEVM wire contract (docs/design.md section 5): type codes, op codes, handles.

These codes travel in chain events, database rows and ciphertext bytes, so they never
change meaning. Everything that checks a code or a handle's shape lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

HANDLE_LENGTH = 32
HANDLE_VERSION = 0
COMPUTED_INDEX = 0xFF
SEED_BYTES = 16  # a Rand seed: the host's bytes16


class FheType(IntEnum):
    Bool = 0
    Uint4 = 1
    Uint8 = 2
    Uint16 = 3
    Uint32 = 4
    Uint64 = 5
    Uint128 = 6
    Uint160 = 7
    Uint256 = 8
    Bytes64 = 9
    Bytes128 = 10
    Bytes256 = 11

    @property
    def bits(self) -> int:
        return _BITS[self]

    @property
    def max_value(self) -> int:
        return (1 << self.bits) - 1

    @classmethod
    def parse(cls, value: str | int) -> FheType:
        """Accept a name (``Uint64``, ``euint64``) or a code; raise ValueError otherwise."""
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"type code {value} is out of range 0..{max(cls)}") from None
        text = str(value).strip()
        lowered = text.lower().removeprefix("e")
        for member in cls:
            if member.name.lower() == lowered or member.name.lower() == text.lower():
                return member
        raise ValueError(f"unknown FHE type {text!r}; known: {', '.join(m.name for m in cls)}")


_BITS = {
    FheType.Bool: 1,
    FheType.Uint4: 4,
    FheType.Uint8: 8,
    FheType.Uint16: 16,
    FheType.Uint32: 32,
    FheType.Uint64: 64,
    FheType.Uint128: 128,
    FheType.Uint160: 160,
    FheType.Uint256: 256,
    FheType.Bytes64: 512,
    FheType.Bytes128: 1024,
    FheType.Bytes256: 2048,
}


class Op(IntEnum):
    Add = 0
    Sub = 1
    Mul = 2
    Div = 3
    Rem = 4
    BitAnd = 5
    BitOr = 6
    BitXor = 7
    Shl = 8
    Shr = 9
    Rotl = 10
    Rotr = 11
    Eq = 12
    Ne = 13
    Ge = 14
    Gt = 15
    Le = 16
    Lt = 17
    Min = 18
    Max = 19
    Neg = 20
    Not = 21
    Cast = 23
    TrivialEncrypt = 24
    IfThenElse = 25
    Rand = 26
    RandBounded = 27
    Sum = 28
    IsIn = 29
    MulDiv = 30

    @property
    def event_name(self) -> str:
        """The graph/event spelling: ``FheAdd``."""
        return "Fhe" + self.name

    @property
    def signature(self) -> OpSignature:
        return SIGNATURES[self]

    @classmethod
    def parse(cls, value: str | int) -> Op:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"unknown op code {value}") from None
        text = str(value).strip()
        name = text.removeprefix("Fhe")
        try:
            return cls[name]
        except KeyError:
            raise ValueError(
                f"unknown op {text!r}; known: {', '.join(o.event_name for o in cls)}"
            ) from None


@dataclass(frozen=True)
class OpSignature:
    """Operand count (None = variadic, at least ``min_args``) and the result's kind."""

    arity: int | None
    scalar_rhs: bool  # fhEVM accepts a plaintext second operand
    result: str  # "same" | "bool" | "explicit" (needs `type`)
    min_args: int = 1


_BINARY = OpSignature(2, True, "same")
_COMPARE = OpSignature(2, True, "bool")
SIGNATURES: dict[Op, OpSignature] = {
    **{
        op: _BINARY
        for op in (
            Op.Add,
            Op.Sub,
            Op.Mul,
            Op.Div,
            Op.Rem,
            Op.BitAnd,
            Op.BitOr,
            Op.BitXor,
            Op.Shl,
            Op.Shr,
            Op.Rotl,
            Op.Rotr,
            Op.Min,
            Op.Max,
        )
    },
    **{op: _COMPARE for op in (Op.Eq, Op.Ne, Op.Ge, Op.Gt, Op.Le, Op.Lt)},
    Op.Neg: OpSignature(1, False, "same"),
    Op.Not: OpSignature(1, False, "same"),
    Op.Cast: OpSignature(1, False, "explicit"),
    Op.TrivialEncrypt: OpSignature(1, True, "explicit"),
    Op.IfThenElse: OpSignature(3, False, "same"),
    Op.Rand: OpSignature(1, True, "explicit"),
    Op.RandBounded: OpSignature(2, True, "explicit"),
    Op.Sum: OpSignature(None, False, "same", min_args=1),
    Op.IsIn: OpSignature(None, True, "bool", min_args=2),
    Op.MulDiv: OpSignature(3, True, "same"),
}


@dataclass(frozen=True)
class Handle:
    """A 32-byte ciphertext handle (docs/design.md section 5 layout)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes | bytearray) or len(self.raw) != HANDLE_LENGTH:
            length = len(self.raw) if isinstance(self.raw, bytes | bytearray) else "?"
            raise ValueError(f"a handle is {HANDLE_LENGTH} bytes, got {length}")
        if self.raw[30] > max(FheType):
            raise ValueError(f"handle type byte {self.raw[30]} is out of range 0..{max(FheType)}")

    @classmethod
    def parse(cls, text: str) -> Handle:
        """From ``0x``-hex; the error says what is wrong with the string."""
        body = text.removeprefix("0x") if isinstance(text, str) else ""
        if not isinstance(text, str) or not text.startswith("0x"):
            raise ValueError(f"handle {text!r} must be 0x-prefixed hex")
        try:
            raw = bytes.fromhex(body)
        except ValueError:
            raise ValueError(f"handle {text!r} is not valid hex") from None
        return cls(raw)

    @property
    def fhe_type(self) -> FheType:
        return FheType(self.raw[30])

    @property
    def chain_id(self) -> int:
        return int.from_bytes(self.raw[22:30], "big")

    @property
    def index(self) -> int:
        return self.raw[21]

    @property
    def is_computed(self) -> bool:
        return self.raw[21] == COMPUTED_INDEX

    @property
    def version(self) -> int:
        return self.raw[31]

    def hex(self) -> str:
        return "0x" + self.raw.hex()

    def __str__(self) -> str:
        return self.hex()


def make_handle(
    prehandle: bytes, index: int, chain_id: int, fhe_type: FheType, version: int = HANDLE_VERSION
) -> Handle:
    """Assemble a handle from a (keccak-derived) prehandle and its metadata bytes."""
    if not 0 <= index <= 0xFF:
        raise ValueError(f"handle index {index} out of range 0..255")
    if not 0 <= chain_id < 1 << 64:
        raise ValueError(f"chain id {chain_id} does not fit 8 bytes")
    return Handle(
        prehandle[:21]
        + bytes([index])
        + chain_id.to_bytes(8, "big")
        + bytes([int(fhe_type), version])
    )


def plaintext_operand(value: int) -> bytes:
    """A plaintext operand (scalar, trivial value, bound) as ``derive_handle`` and the
    rows carry it: minimal big-endian bytes, at least one."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def derive_handle(
    op: Op,
    dependencies: tuple[bytes, ...],
    context: bytes,
    chain_id: int,
    result_type: FheType,
    *,
    scalar: bool,
) -> Handle:
    """The output handle of a computation, by the fhEVM host's rule (docs/design.md
    section 5): keccak256 over the ``abi.encodePacked`` preimage of ``host_preimage``,
    cut to 21 bytes, then index 0xff, the chain id, the result type and version 0.

    ``context`` is the host chain's ACL address for chain computations (20 bytes); an
    inline FheBatch graph hashes its batch context there instead (``graph_context``), so
    its handles never meet a chain's. No caller and no transaction enter the hash: the
    same op on the same operands gives the same handle in any contract and transaction.
    """
    from eth_hash.auto import keccak

    prehandle = keccak(
        host_preimage(op, dependencies, context, chain_id, result_type, scalar=scalar)
    )
    return make_handle(prehandle, COMPUTED_INDEX, chain_id, result_type)


def _word(value: bytes | int) -> bytes:
    """A uint256 / bytes32 slot of ``abi.encodePacked``."""
    number = int.from_bytes(value, "big") if isinstance(value, bytes) else value
    if not 0 <= number < 1 << 256:
        raise ValueError(f"plaintext {number} does not fit 256 bits")
    return number.to_bytes(32, "big")


def _handle_word(value: bytes) -> bytes:
    if len(value) != HANDLE_LENGTH:
        raise ValueError(f"an operand handle is {HANDLE_LENGTH} bytes, got {len(value)}")
    return value


def host_preimage(
    op: Op,
    dependencies: tuple[bytes, ...],
    context: bytes,
    chain_id: int,
    result_type: FheType,
    *,
    scalar: bool,
) -> bytes:
    """What the host hashes for one computation. ``dependencies`` are as the rows carry
    them: operand handles (32 bytes), plaintexts as big-endian bytes of any length
    (widened to a uint256 word here, as the event carries them), seeds as 16 bytes."""
    code = bytes([int(op)])
    tail = context + chain_id.to_bytes(32, "big")
    if op <= Op.Max:  # binary: lhs, rhs (a handle or a plaintext word), the scalar byte
        lhs, rhs = dependencies
        right = _word(rhs) if scalar else _handle_word(rhs)
        return code + _handle_word(lhs) + right + (b"\x01" if scalar else b"\x00") + tail
    if op in (Op.Neg, Op.Not):
        (operand,) = dependencies
        return code + _handle_word(operand) + tail
    if op is Op.Cast:
        (operand,) = dependencies
        return code + _handle_word(operand) + bytes([int(result_type)]) + tail
    if op is Op.TrivialEncrypt:
        (plaintext,) = dependencies
        return code + _word(plaintext) + bytes([int(result_type)]) + tail
    if op is Op.IfThenElse:
        return code + b"".join(_handle_word(d) for d in dependencies) + tail
    if op is Op.Rand:  # the host hashes neither the ACL nor the chain id here
        (seed,) = dependencies
        return code + bytes([int(result_type)]) + _seed(seed)
    if op is Op.RandBounded:
        bound, seed = dependencies
        return code + _word(bound) + bytes([int(result_type)]) + _seed(seed)
    # Sum, IsIn, MulDiv: newer hosts only; ours for inline graphs (documented as such):
    # every operand as a word, plaintexts flagged by the trailing scalar byte.
    return code + b"".join(_word(d) for d in dependencies) + (b"\x01" if scalar else b"\x00") + tail


def _seed(seed: bytes) -> bytes:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a random seed is {SEED_BYTES} bytes, got {len(seed)}")
    return seed


def address_bytes(text: object) -> bytes | None:
    """An EVM address written 0x + 40 hex digits, as its 20 bytes; None if it is not
    one (callers raise their own error class with the same words)."""
    body = text[2:] if isinstance(text, str) and text.startswith("0x") else ""
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        return None
    return raw if len(raw) == 20 else None
