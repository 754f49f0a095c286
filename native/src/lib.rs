//! Thin PyO3 bindings of the `tfhe` crate (TFHE-rs 1.7) for the coprocessor's
//! `tfhe-rs` engine backend. Everything that is policy (envelopes, validation,
//! semantics at the edges such as scalar division by zero) lives in Python; this file
//! only maps type and op codes (docs/design.md section 5) onto TFHE-rs calls.
//!
//! Values cross the boundary as 32-byte little-endian strings, ciphertexts and keys as
//! TFHE-rs safe-serialized (versioned, size-limited) bytes. Long calls release the GIL.
//!
//! Cargo feature `test-prover` (off by default) adds `prove_inputs`, a client-side
//! prover that only the test suite needs; see its doc comment.
//!
//! Cargo feature `gpu` (off by default; `make setup-gpu`) builds TFHE-rs's CUDA backend
//! in: an `Evaluator` made with `gpus=[...]` also holds its key expanded on each of
//! those devices, and every op method takes `device=` (None: the CPU). The high-level
//! API dispatches on the key installed in the thread, and ciphertexts cross between
//! host and device inside TFHE-rs: what goes in and comes out is always the normal
//! serialised (CPU) form, so results are interchangeable with the CPU evaluator's.

#[cfg(target_os = "linux")]
mod large_blocks;

/// Large blocks are mappings that grow in place (see large_blocks.rs: why).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: large_blocks::LargeBlocks = large_blocks::LargeBlocks;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
#[cfg(not(feature = "test-prover"))]
use pyo3::types::{PyDict, PyTuple};
use std::sync::OnceLock;
use tfhe::conformance::ParameterSetConformant;
use tfhe::integer::ciphertext::IntegerCiphertext;
use tfhe::integer::ciphertext::IntegerProvenCompactCiphertextListConformanceParams;
use tfhe::integer::compression_keys::DecompressionKey;
use tfhe::integer::U256;
use tfhe::prelude::*;
use tfhe::safe_serialization::{DeserializationConfig, SerializationConfig};
use tfhe::shortint::ciphertext::NoiseLevel;
use tfhe::shortint::parameters::{
    COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    NOISE_SQUASHING_COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    NOISE_SQUASHING_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
};
#[cfg(feature = "test-prover")]
use tfhe::zk::ZkComputeLoad;
use tfhe::zk::{CompactPkeCrs, ZkVerificationOutcome};
use tfhe::{
    set_server_key, ClientKey, CompactPublicKey, CompressedCiphertextList,
    CompressedCiphertextListBuilder, CompressedServerKey, CompressedSquashedNoiseCiphertextList,
    Config, ConfigBuilder, FheBool, FheTypes, FheUint128, FheUint16, FheUint160, FheUint256,
    FheUint32, FheUint4, FheUint64, FheUint8, HlExpandable, ProvenCompactCiphertextList, Seed,
    ServerKey, SquashedNoiseFheBool, SquashedNoiseFheUint,
};

const KEY_LIMIT: u64 = 1 << 31;
const CT_LIMIT: u64 = 1 << 26;
/// An expanded server key (decompressed, bootstrapping keys in the Fourier domain) is
/// several times its compressed size: the noise squashing key alone is GBs.
const EXPANDED_LIMIT: u64 = 1 << 35;

/// Writes through to `inner`, hashing what was written.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn err<E: std::fmt::Display>(e: E) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A code from Python that names no variant of the enum it is decoded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UnknownCode {
    what: &'static str,
    code: u8,
}

impl std::fmt::Display for UnknownCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} code {} is not supported", self.what, self.code)
    }
}

impl std::error::Error for UnknownCode {}

/// An unknown code as the `unsupported: ...` ValueError that Python maps to
/// UnsupportedOperation.
fn unsupported_code(e: UnknownCode) -> PyErr {
    unsupported(&e.to_string())
}

/// Declares a `#[repr(u8)]` enum of wire codes and its `TryFrom<u8>` from one list, so
/// each code is written once.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        enum $name:ident($what:literal) { $($variant:ident = $code:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        enum $name {
            $($variant = $code,)+
        }

        impl TryFrom<u8> for $name {
            type Error = UnknownCode;

            fn try_from(code: u8) -> Result<Self, UnknownCode> {
                $(if code == $name::$variant as u8 {
                    return Ok($name::$variant);
                })+
                Err(UnknownCode { what: $what, code })
            }
        }
    };
}

code_enum! {
    /// Type codes: the values of `coprocessor.types.FheType` (docs/design.md section 5) that
    /// this extension supports.
    enum FheType("type") {
        Bool = 0,
        Uint4 = 1,
        Uint8 = 2,
        Uint16 = 3,
        Uint32 = 4,
        Uint64 = 5,
        Uint128 = 6,
        Uint160 = 7,
        Uint256 = 8,
    }
}

impl FheType {
    /// The plaintext width in bits (the same as `coprocessor.types.FheType.bits`).
    fn bits(self) -> u64 {
        match self {
            FheType::Bool => 1,
            FheType::Uint4 => 4,
            FheType::Uint8 => 8,
            FheType::Uint16 => 16,
            FheType::Uint32 => 32,
            FheType::Uint64 => 64,
            FheType::Uint128 => 128,
            FheType::Uint160 => 160,
            FheType::Uint256 => 256,
        }
    }

    /// Our type of an entry of an expanded input list, if it is one of ours.
    fn from_tfhe(kind: FheTypes) -> Option<Self> {
        Some(match kind {
            FheTypes::Bool => FheType::Bool,
            FheTypes::Uint4 => FheType::Uint4,
            FheTypes::Uint8 => FheType::Uint8,
            FheTypes::Uint16 => FheType::Uint16,
            FheTypes::Uint32 => FheType::Uint32,
            FheTypes::Uint64 => FheType::Uint64,
            FheTypes::Uint128 => FheType::Uint128,
            FheTypes::Uint160 => FheType::Uint160,
            FheTypes::Uint256 => FheType::Uint256,
            _ => return None,
        })
    }
}

/// A type code argument; an unknown one is a ValueError (a ciphertext of a type we do not
/// have, to Python: BadCiphertext).
fn type_arg(code: u8) -> PyResult<FheType> {
    FheType::try_from(code).map_err(err)
}

code_enum! {
    /// Op codes: the values of `coprocessor.types.Op` that are passed to the evaluator as
    /// codes (Cast, TrivialEncrypt, IfThenElse and Rand have methods of their own).
    enum OpCode("op") {
        Add = 0,
        Sub = 1,
        Mul = 2,
        Div = 3,
        Rem = 4,
        BitAnd = 5,
        BitOr = 6,
        BitXor = 7,
        Shl = 8,
        Shr = 9,
        Rotl = 10,
        Rotr = 11,
        Eq = 12,
        Ne = 13,
        Ge = 14,
        Gt = 15,
        Le = 16,
        Lt = 17,
        Min = 18,
        Max = 19,
        Neg = 20,
        Not = 21,
    }
}

impl OpCode {
    fn is_shift(self) -> bool {
        matches!(
            self,
            OpCode::Shl | OpCode::Shr | OpCode::Rotl | OpCode::Rotr
        )
    }
}

fn config() -> Config {
    ConfigBuilder::with_custom_parameters(PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
        .use_dedicated_compact_public_key_parameters((
            PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
        ))
        // Computable ciphertexts packed into GLWEs for S3 (the "ct64" object): what the
        // reference's sns-worker uploads, a one-element CompressedCiphertextList.
        .enable_compression(COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
        .enable_noise_squashing(NOISE_SQUASHING_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
        // Squashed (128-bit) ciphertexts packed into GLWEs for S3: the reference's
        // ciphertext128 format "compressed on CPU".
        .enable_noise_squashing_compression(
            NOISE_SQUASHING_COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
        )
        .build()
}

fn ser<T: serde::Serialize + tfhe::Versionize + tfhe::named::Named>(
    value: &T,
    limit: u64,
) -> PyResult<Vec<u8>> {
    let mut out = Vec::new();
    SerializationConfig::new(limit)
        .serialize_into(value, &mut out)
        .map_err(err)?;
    Ok(out)
}

fn de<T: serde::de::DeserializeOwned + tfhe::Unversionize + tfhe::named::Named>(
    bytes: &[u8],
    limit: u64,
) -> PyResult<T> {
    DeserializationConfig::new(limit)
        .disable_conformance()
        .deserialize_from(bytes)
        .map_err(err)
}

fn u256_from(bytes: &[u8]) -> PyResult<U256> {
    if bytes.len() != 32 {
        return Err(PyValueError::new_err("values are 32 little-endian bytes"));
    }
    let mut value = U256::ZERO;
    value.copy_from_le_byte_slice(bytes);
    Ok(value)
}

fn u256_bytes(value: U256) -> [u8; 32] {
    let mut out = [0u8; 32];
    value.copy_to_le_byte_slice(&mut out);
    out
}

fn low(value: U256) -> u128 {
    value.to_low_high_u128().0
}

/// One ciphertext of any supported type, tagged by its type code.
enum Ct {
    Bool(FheBool),
    U4(FheUint4),
    U8(FheUint8),
    U16(FheUint16),
    U32(FheUint32),
    U64(FheUint64),
    U128(FheUint128),
    U160(FheUint160),
    U256(FheUint256),
}

macro_rules! each_uint {
    // (Ct variant, TFHE-rs type, FheType variant, clear type)
    ($m:ident) => {
        $m!(U4, FheUint4, Uint4, u8);
        $m!(U8, FheUint8, Uint8, u8);
        $m!(U16, FheUint16, Uint16, u16);
        $m!(U32, FheUint32, Uint32, u32);
        $m!(U64, FheUint64, Uint64, u64);
        $m!(U128, FheUint128, Uint128, u128);
        $m!(U160, FheUint160, Uint160, U256);
        $m!(U256, FheUint256, Uint256, U256);
    };
}

trait FromU256 {
    fn from_u256(v: U256) -> Self;
    fn into_u256(self) -> U256;
}
macro_rules! prim_from_u256 {
    ($t:ty) => {
        impl FromU256 for $t {
            fn from_u256(v: U256) -> Self {
                low(v) as $t
            }
            fn into_u256(self) -> U256 {
                U256::from(self as u128)
            }
        }
    };
}
prim_from_u256!(u8);
prim_from_u256!(u16);
prim_from_u256!(u32);
prim_from_u256!(u64);
prim_from_u256!(u128);
impl FromU256 for U256 {
    fn from_u256(v: U256) -> Self {
        v
    }
    fn into_u256(self) -> U256 {
        self
    }
}

/// `on_any!(ct, c => expr)`: the same expression for every variant.
macro_rules! on_any {
    ($value:expr, $c:ident => $e:expr) => {
        match $value {
            Ct::Bool($c) => $e,
            Ct::U4($c) => $e,
            Ct::U8($c) => $e,
            Ct::U16($c) => $e,
            Ct::U32($c) => $e,
            Ct::U64($c) => $e,
            Ct::U128($c) => $e,
            Ct::U160($c) => $e,
            Ct::U256($c) => $e,
        }
    };
}

/// `on_uint!(ct, c => expr)`: the same expression for every unsigned variant (Bool is
/// the caller's own arm).
macro_rules! on_uint {
    ($value:expr, $c:ident => $e:expr) => {
        match $value {
            Ct::Bool(_) => unreachable!("on_uint! on a Bool"),
            Ct::U4($c) => $e,
            Ct::U8($c) => $e,
            Ct::U16($c) => $e,
            Ct::U32($c) => $e,
            Ct::U64($c) => $e,
            Ct::U128($c) => $e,
            Ct::U160($c) => $e,
            Ct::U256($c) => $e,
        }
    };
}

impl Ct {
    fn fhe_type(&self) -> FheType {
        match self {
            Ct::Bool(_) => FheType::Bool,
            Ct::U4(_) => FheType::Uint4,
            Ct::U8(_) => FheType::Uint8,
            Ct::U16(_) => FheType::Uint16,
            Ct::U32(_) => FheType::Uint32,
            Ct::U64(_) => FheType::Uint64,
            Ct::U128(_) => FheType::Uint128,
            Ct::U160(_) => FheType::Uint160,
            Ct::U256(_) => FheType::Uint256,
        }
    }

    fn to_bytes(&self) -> PyResult<Vec<u8>> {
        on_any!(self, c => ser(c, CT_LIMIT))
    }

    /// Deserialize (safe, versioned, size-limited) and, for the evaluator, check the
    /// structure against our parameters: the number of blocks of the type, and per block
    /// the LWE shape, moduli, atomic pattern, and degree and noise within bounds.
    ///
    /// TFHE-rs's own conformance check demands *fresh* ciphertexts (exact degree and
    /// nominal noise), which refuses valid results of trivial encryption, casts and
    /// scalar ops, so it is kept for client inputs (proofs) only.
    fn rerand_metadata(&self) -> Vec<u8> {
        match self {
            Ct::Bool(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U4(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U8(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U16(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U32(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U64(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U128(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U160(c) => c.re_randomization_metadata().data().to_vec(),
            Ct::U256(c) => c.re_randomization_metadata().data().to_vec(),
        }
    }

    fn from_bytes(kind: FheType, bytes: &[u8], check: bool) -> PyResult<Ct> {
        let cfg = DeserializationConfig::new(CT_LIMIT).disable_conformance();
        macro_rules! load {
            ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
                if kind == FheType::$code {
                    let value: $ty = cfg.deserialize_from(bytes).map_err(err)?;
                    return Ct::$variant(value).checked(check);
                }
            };
        }
        if kind == FheType::Bool {
            let value: FheBool = cfg.deserialize_from(bytes).map_err(err)?;
            return Ct::Bool(value).checked(check);
        }
        each_uint!(load);
        unreachable!("each_uint! covers every FheType but Bool")
    }

    /// The ciphertext's blocks (a copy: TFHE-rs hands them out by value only).
    fn blocks(&self) -> Vec<tfhe::shortint::Ciphertext> {
        match self {
            Ct::Bool(c) => vec![c.clone().into_raw_parts()],
            _ => on_uint!(self, c => c.clone().into_raw_parts().0.blocks().to_vec()),
        }
    }

    /// Itself, if `check` is off or its structure matches our parameters (see `from_bytes`).
    fn checked(self, check: bool) -> PyResult<Ct> {
        if check {
            let blocks = self.blocks();
            let expected = self.fhe_type().bits().div_ceil(2) as usize;
            if blocks.len() != expected || !blocks.iter().all(block_ok) {
                return Err(PyValueError::new_err(
                    "ciphertext does not match the keyset's parameters or its type",
                ));
            }
        }
        Ok(self)
    }

    /// Whether TFHE-rs's list compression takes it: every block with empty carries and at
    /// most nominal noise (its packing asserts both). Every result of the HL API is; a
    /// ciphertext that is not was not made by TFHE-rs's operations.
    fn compressible(&self) -> bool {
        self.blocks()
            .iter()
            .all(|b| b.carry_is_empty() && b.noise_level() <= NoiseLevel::NOMINAL)
    }

    /// The plaintext, decrypted with the client key.
    fn decrypt(&self, ck: &ClientKey) -> U256 {
        match self {
            Ct::Bool(c) => U256::from(c.decrypt(ck) as u128),
            Ct::U4(c) => FheDecrypt::<u8>::decrypt(c, ck).into_u256(),
            Ct::U8(c) => FheDecrypt::<u8>::decrypt(c, ck).into_u256(),
            Ct::U16(c) => FheDecrypt::<u16>::decrypt(c, ck).into_u256(),
            Ct::U32(c) => FheDecrypt::<u32>::decrypt(c, ck).into_u256(),
            Ct::U64(c) => FheDecrypt::<u64>::decrypt(c, ck).into_u256(),
            Ct::U128(c) => FheDecrypt::<u128>::decrypt(c, ck).into_u256(),
            Ct::U160(c) => FheDecrypt::<U256>::decrypt(c, ck),
            Ct::U256(c) => FheDecrypt::<U256>::decrypt(c, ck),
        }
    }

    /// A one-element CompressedCiphertextList of it, safe-serialized: the "ct64" object of
    /// the reference's S3 bucket. Needs the thread's server key (with a compression key).
    /// Deterministic: packing keyswitch and modulus switch draw no randomness.
    fn compress(self) -> PyResult<Vec<u8>> {
        if !self.compressible() {
            return Err(PyValueError::new_err(
                "ciphertext has carries or above-nominal noise in a block: not a TFHE-rs \
                 operation's result, cannot be compressed",
            ));
        }
        let mut builder = CompressedCiphertextListBuilder::new();
        on_any!(self, c => builder.push(c));
        ser(&builder.build().map_err(err)?, CT_LIMIT)
    }

    /// Element 0 of a published one-element list, as a ciphertext of `kind`.
    fn expand(kind: FheType, list: &impl ElementSource) -> PyResult<Ct> {
        macro_rules! take {
            ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
                if kind == FheType::$code {
                    return Ok(Ct::$variant(list.element::<$ty>()?));
                }
            };
        }
        if kind == FheType::Bool {
            return Ok(Ct::Bool(list.element::<FheBool>()?));
        }
        each_uint!(take);
        unreachable!("each_uint! covers every FheType but Bool")
    }
}

/// Where the element of a published list comes from: the HL list with the thread's server
/// key (its decompression key), or the integer list with a decompression key in hand.
trait ElementSource {
    fn element<T: HlExpandable + Tagged>(&self) -> PyResult<T>;
}

impl ElementSource for CompressedCiphertextList {
    fn element<T: HlExpandable + Tagged>(&self) -> PyResult<T> {
        self.get(0)
            .map_err(err)?
            .ok_or_else(|| err("the list is empty"))
    }
}

/// An integer-level list with the decompression key to read it (the client's way).
struct WithKey<'a>(
    &'a tfhe::integer::ciphertext::CompressedCiphertextList,
    &'a DecompressionKey,
);

impl ElementSource for WithKey<'_> {
    fn element<T: HlExpandable + Tagged>(&self) -> PyResult<T> {
        self.0
            .get(0, self.1)
            .map_err(err)?
            .ok_or_else(|| err("the list is empty"))
    }
}

/// A published ct64 object, deserialized and checked to be one element of `kind` before
/// any decompression work (a list of many or of another type is refused here).
fn published_list(kind: FheType, bytes: &[u8]) -> PyResult<CompressedCiphertextList> {
    let list: CompressedCiphertextList = de(bytes, CT_LIMIT)?;
    if list.len() != 1 {
        return Err(PyValueError::new_err(format!(
            "a published ciphertext is a one-element list, this one has {} elements",
            list.len()
        )));
    }
    match list.get_kind_of(0).and_then(FheType::from_tfhe) {
        Some(stored) if stored == kind => Ok(list),
        Some(stored) => Err(PyValueError::new_err(format!(
            "the list holds a {stored:?}, not a {kind:?}"
        ))),
        None => Err(PyValueError::new_err("the list holds no type of ours")),
    }
}

/// Run `f` with TFHE-rs panics (malformed lists reach `unwrap`s inside it) as ValueErrors.
fn no_panic<T>(what: &str, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| PyValueError::new_err(format!("{what}: TFHE-rs panicked on it")))?
}

fn block_ok(block: &tfhe::shortint::Ciphertext) -> bool {
    let params = PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128;
    let conformance = params.to_shortint_conformance_param();
    let max_degree = params.message_modulus.0 * params.carry_modulus.0 - 1;
    block.ct.is_conformant(&conformance.ct_params)
        && block.message_modulus == params.message_modulus
        && block.carry_modulus == params.carry_modulus
        && block.atomic_pattern == conformance.atomic_pattern
        && block.degree.get() <= max_degree
        && block.noise_level().get() <= params.max_noise_level.get()
}

/// Whether safe-serialized bytes name a CompressedSquashedNoiseCiphertextList in their
/// header (the name comes before any payload).
fn names_compressed_list(bytes: &[u8]) -> bool {
    const NAME: &[u8] = b"CompressedSquashedNoiseCiphertextList";
    bytes[..bytes.len().min(256)]
        .windows(NAME.len())
        .any(|w| w == NAME)
}

fn unsupported(what: &str) -> PyErr {
    PyValueError::new_err(format!("unsupported: {what}"))
}

// --- keys --------------------------------------------------------------------------------

/// Returns (client key, compressed server key, compact public key), serialized.
#[pyfunction]
fn generate_keys(py: Python<'_>) -> PyResult<(Py<PyBytes>, Py<PyBytes>, Py<PyBytes>)> {
    let (ck, csk, pk) = py.allow_threads(|| -> PyResult<_> {
        let ck = ClientKey::generate(config());
        let csk = CompressedServerKey::new(&ck);
        let pk = CompactPublicKey::new(&ck);
        Ok((
            ser(&ck, KEY_LIMIT)?,
            ser(&csk, KEY_LIMIT)?,
            ser(&pk, KEY_LIMIT)?,
        ))
    })?;
    Ok((
        PyBytes::new(py, &ck).into(),
        PyBytes::new(py, &csk).into(),
        PyBytes::new(py, &pk).into(),
    ))
}

/// The shares of a compressed server key that the compute and verify stages need, as
/// compressed server keys of their own: (compute, verify). Both hold the integer (PBS
/// and key-switching) key; compute adds only the OPRF key (Rand), verify the compact-list
/// key-switching key and the re-randomization key. The noise squashing material, most
/// of the keyset's size, is in neither: SNS loads the whole key.
#[pyfunction]
fn split_server_key(
    py: Python<'_>,
    compressed_server_key: Vec<u8>,
) -> PyResult<(Py<PyBytes>, Py<PyBytes>)> {
    let (compute, verify) = py.allow_threads(move || -> PyResult<_> {
        let csk: CompressedServerKey = de(&compressed_server_key, KEY_LIMIT)?;
        let (integer, ksk, _, _, _, _, rerand, oprf, tag) = csk.into_raw_parts();
        let compute = CompressedServerKey::from_raw_parts(
            integer.clone(),
            None,
            None,
            None,
            None,
            None,
            None,
            oprf.clone(),
            tag.clone(),
        );
        let verify = CompressedServerKey::from_raw_parts(
            integer, ksk, None, None, None, None, rerand, oprf, tag,
        );
        Ok((ser(&compute, KEY_LIMIT)?, ser(&verify, KEY_LIMIT)?))
    })?;
    Ok((
        PyBytes::new(py, &compute).into(),
        PyBytes::new(py, &verify).into(),
    ))
}

// --- input proofs (ZK proof of knowledge of compact-list plaintexts) ------------------------

/// Bits one proven list may carry at most; fhEVM's input limit.
const CRS_MAX_BITS: usize = 2048;

/// A CRS for proofs of up to `max_bits` packed input bits (made natively: the WASM client
/// takes minutes for the same).
#[pyfunction]
fn generate_crs(py: Python<'_>, max_bits: usize) -> PyResult<Py<PyBytes>> {
    if max_bits == 0 || max_bits > CRS_MAX_BITS {
        return Err(PyValueError::new_err(format!(
            "max_bits must be 1..={CRS_MAX_BITS}"
        )));
    }
    let bytes = py.allow_threads(|| -> PyResult<Vec<u8>> {
        let crs = CompactPkeCrs::from_config(config(), max_bits).map_err(err)?;
        ser(&crs, KEY_LIMIT)
    })?;
    Ok(PyBytes::new(py, &bytes).into())
}

/// What a client does (node-tfhe in production): encrypt values under the compact public
/// key into one list and prove it, bound to `metadata`. `values` are (type code, 32-byte LE).
///
/// Test-only (cargo feature `test-prover`, which the dev/test install turns on): the
/// coprocessor only *verifies* proofs (`Evaluator.verify_inputs`); clients prove with the
/// SDK (node-tfhe). The tests use this to check our verifier against a native prover.
#[cfg(feature = "test-prover")]
#[pyfunction]
fn prove_inputs(
    py: Python<'_>,
    public_key: Vec<u8>,
    crs: Vec<u8>,
    metadata: Vec<u8>,
    values: Vec<(u8, Vec<u8>)>,
) -> PyResult<Py<PyBytes>> {
    let bytes = py.allow_threads(move || -> PyResult<Vec<u8>> {
        let pk: CompactPublicKey = de(&public_key, KEY_LIMIT)?;
        let crs: CompactPkeCrs = de(&crs, KEY_LIMIT)?;
        let mut builder = ProvenCompactCiphertextList::builder(&pk);
        for (type_code, value) in &values {
            let v = u256_from(value)?;
            match FheType::try_from(*type_code).map_err(unsupported_code)? {
                FheType::Bool => {
                    builder.push(low(v) & 1 == 1);
                }
                FheType::Uint4 => {
                    builder.push_with_num_bits(low(v) as u8, 4).map_err(err)?;
                }
                FheType::Uint8 => {
                    builder.push(low(v) as u8);
                }
                FheType::Uint16 => {
                    builder.push(low(v) as u16);
                }
                FheType::Uint32 => {
                    builder.push(low(v) as u32);
                }
                FheType::Uint64 => {
                    builder.push(low(v) as u64);
                }
                FheType::Uint128 => {
                    builder.push(low(v));
                }
                FheType::Uint160 => {
                    builder.push_with_num_bits(v, 160).map_err(err)?;
                }
                FheType::Uint256 => {
                    builder.push(v);
                }
            };
        }
        let list = builder
            .build_with_proof_packed(&crs, &metadata, ZkComputeLoad::Verify)
            .map_err(err)?;
        ser(&list, CT_LIMIT)
    })?;
    Ok(PyBytes::new(py, &bytes).into())
}

/// The name `prove_inputs` in a build without the `test-prover` feature: callers get a
/// clear error instead of an AttributeError.
#[cfg(not(feature = "test-prover"))]
#[pyfunction]
#[pyo3(signature = (*_args, **_kwargs))]
fn prove_inputs(
    _args: &Bound<'_, PyTuple>,
    _kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyBytes>> {
    Err(PyRuntimeError::new_err(
        "this fhe_native build has no client prover; build with --features test-prover",
    ))
}

/// Panics with `message`, as a TFHE-rs `assert!` would: the test suite checks with it
/// that a panic in any native call reaches Python as the product's NativePanic error, not
/// as pyo3's PanicException (a BaseException that `except Exception` lets through and
/// that would crash the process). Test builds only (feature `test-prover`).
#[cfg(feature = "test-prover")]
#[pyfunction]
fn panic_for_tests(py: Python<'_>, message: String) -> PyResult<()> {
    py.allow_threads(move || -> PyResult<()> { panic!("{message}") })
}

// --- client side ---------------------------------------------------------------------------

#[pyclass(frozen)]
struct Client {
    key: ClientKey,
    /// Made from the client key on the first `decrypt_compressed` (None: the key has no
    /// compression private key). TFHE-rs decompresses a CompressedCiphertextList only
    /// with a DecompressionKey, which the server key carries; a holder of the secret key
    /// alone derives an equivalent one (about a second, once).
    decompression: OnceLock<Option<DecompressionKey>>,
}

#[pymethods]
impl Client {
    #[new]
    fn new(py: Python<'_>, client_key: Vec<u8>) -> PyResult<Self> {
        let key = py.allow_threads(|| de::<ClientKey>(&client_key, KEY_LIMIT))?;
        Ok(Client {
            key,
            decompression: OnceLock::new(),
        })
    }

    fn encrypt(&self, py: Python<'_>, type_code: u8, value: Vec<u8>) -> PyResult<Py<PyBytes>> {
        let v = u256_from(&value)?;
        let bytes = py.allow_threads(|| -> PyResult<Vec<u8>> {
            let kind = FheType::try_from(type_code).map_err(unsupported_code)?;
            let ck = &self.key;
            macro_rules! enc {
                ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
                    if kind == FheType::$code {
                        return Ct::$variant($ty::encrypt(<$clear>::from_u256(v), ck)).to_bytes();
                    }
                };
            }
            if kind == FheType::Bool {
                return Ct::Bool(FheBool::encrypt(low(v) & 1 == 1, ck)).to_bytes();
            }
            each_uint!(enc);
            unreachable!("each_uint! covers every FheType but Bool")
        })?;
        Ok(PyBytes::new(py, &bytes).into())
    }

    fn decrypt(&self, py: Python<'_>, type_code: u8, ciphertext: Vec<u8>) -> PyResult<Py<PyBytes>> {
        let out = py.allow_threads(|| -> PyResult<[u8; 32]> {
            let ct = Ct::from_bytes(type_arg(type_code)?, &ciphertext, false)?;
            Ok(u256_bytes(ct.decrypt(&self.key)))
        })?;
        Ok(PyBytes::new(py, &out).into())
    }

    /// A published ct64 object (a one-element CompressedCiphertextList, `Evaluator.compress`)
    /// -> its plaintext, 32 LE bytes. Needs only this client key (see `decompression`); a
    /// key made before compression was configured has none: RuntimeError.
    fn decrypt_compressed(
        &self,
        py: Python<'_>,
        type_code: u8,
        list: Vec<u8>,
    ) -> PyResult<Py<PyBytes>> {
        let out = py.allow_threads(|| -> PyResult<[u8; 32]> {
            let kind = type_arg(type_code)?;
            let list = published_list(kind, &list)?;
            let key = self
                .decompression
                .get_or_init(|| derive_decompression_key(&self.key))
                .as_ref()
                .ok_or_else(|| {
                    PyRuntimeError::new_err(
                        "this client key has no compression key (a keyset made before ct64 \
                         objects were compressed lists): regenerate the tenant keyset",
                    )
                })?;
            let (inner, _, _) = list.into_raw_parts();
            let ct = no_panic("malformed compressed list", || {
                Ct::expand(kind, &WithKey(&inner, key))
            })?;
            Ok(u256_bytes(ct.decrypt(&self.key)))
        })?;
        Ok(PyBytes::new(py, &out).into())
    }

    fn decrypt_squashed(
        &self,
        py: Python<'_>,
        type_code: u8,
        ciphertext: Vec<u8>,
    ) -> PyResult<Py<PyBytes>> {
        let out = py.allow_threads(|| -> PyResult<[u8; 32]> {
            let ck = &self.key;
            // Either format: a one-element compressed list (keysets with the noise
            // squashing compression key) or a bare squashed ciphertext (older keysets),
            // told apart by the type name in the safe-serialization header, so a damaged
            // list reports the list's own error.
            let list = if names_compressed_list(&ciphertext) {
                Some(de::<CompressedSquashedNoiseCiphertextList>(
                    &ciphertext,
                    CT_LIMIT,
                )?)
            } else {
                None
            };
            let value = if type_arg(type_code)? == FheType::Bool {
                let c: SquashedNoiseFheBool = match &list {
                    Some(l) => l.get(0).map_err(err)?.ok_or_else(|| err("empty list"))?,
                    None => de(&ciphertext, CT_LIMIT)?,
                };
                U256::from(c.decrypt(ck) as u128)
            } else {
                let c: SquashedNoiseFheUint = match &list {
                    Some(l) => l.get(0).map_err(err)?.ok_or_else(|| err("empty list"))?,
                    None => de(&ciphertext, CT_LIMIT)?,
                };
                FheDecrypt::<U256>::decrypt(&c, ck)
            };
            Ok(u256_bytes(value))
        })?;
        Ok(PyBytes::new(py, &out).into())
    }
}

/// A decompression key from the secret key alone: the same derivation as the server
/// key's (a fresh encryption of the same secret, so it decompresses the same lists).
fn derive_decompression_key(ck: &ClientKey) -> Option<DecompressionKey> {
    let (integer_key, _, compression_key, ..) = ck.clone().into_raw_parts();
    let compression_key = compression_key?;
    let (_, decompression_key) = integer_key.new_compression_decompression_keys(&compression_key);
    Some(decompression_key)
}

/// The list checked for shape against the CRS (TFHE-rs conformance), its proof verified
/// against the CRS, the key and the metadata, then expanded: [(type code, bytes)].
/// `rerand[i]`, when given, becomes entry i's re-randomisation metadata: fhEVM attaches
/// the full 32-byte hash its input handle is cut from, so every coprocessor later
/// re-randomises the input alike (an empty `rerand` attaches nothing).
fn verify_and_expand(
    crs: &CompactPkeCrs,
    pk: &CompactPublicKey,
    list: &[u8],
    metadata: &[u8],
    rerand: &[Vec<u8>],
) -> PyResult<Vec<(u8, Vec<u8>)>> {
    let params = IntegerProvenCompactCiphertextListConformanceParams::from_crs_and_parameters(
        PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
        crs,
    );
    let list: ProvenCompactCiphertextList = DeserializationConfig::new(CT_LIMIT)
        .deserialize_from(list, &params)
        .map_err(|e| PyValueError::new_err(format!("malformed input list: {e}")))?;
    if let ZkVerificationOutcome::Invalid = list.verify(crs, pk, metadata) {
        return Err(PyValueError::new_err(
            "input proof is invalid (tampered list, another key, or other metadata)",
        ));
    }
    // Verified just above on this very object: expanding without a second
    // verification halves the work a hostile list can cost us.
    let expander = list.expand_without_verification().map_err(err)?;
    if !rerand.is_empty() && rerand.len() < expander.len() {
        return Err(PyValueError::new_err(format!(
            "{} re-randomisation metadata for {} inputs",
            rerand.len(),
            expander.len()
        )));
    }
    let mut out = Vec::with_capacity(expander.len());
    for index in 0..expander.len() {
        let kind = expander
            .get_kind_of(index)
            .ok_or_else(|| PyValueError::new_err("input list entry has no type"))?;
        let code = FheType::from_tfhe(kind)
            .ok_or_else(|| unsupported("input type outside Bool..Uint256"))?;
        macro_rules! take {
            ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
                if code == FheType::$code {
                    let mut value: $ty = expander
                        .get(index)
                        .map_err(err)?
                        .ok_or_else(|| PyValueError::new_err("input list entry missing"))?;
                    if let Some(data) = rerand.get(index) {
                        value.re_randomization_metadata_mut().set_data(data);
                    }
                    out.push((code as u8, Ct::$variant(value).to_bytes()?));
                    continue;
                }
            };
        }
        if code == FheType::Bool {
            let mut value: FheBool = expander
                .get(index)
                .map_err(err)?
                .ok_or_else(|| PyValueError::new_err("input list entry missing"))?;
            if let Some(data) = rerand.get(index) {
                value.re_randomization_metadata_mut().set_data(data);
            }
            out.push((code as u8, Ct::Bool(value).to_bytes()?));
            continue;
        }
        each_uint!(take);
    }
    Ok(out)
}

// --- server side ---------------------------------------------------------------------------

#[pyclass(frozen)]
struct Evaluator {
    key: ServerKey,
    /// The same key expanded on each GPU this evaluator may use, by CUDA device index
    /// (as this process sees them, after CUDA_VISIBLE_DEVICES).
    #[cfg(feature = "gpu")]
    gpus: Vec<(u32, tfhe::CudaServerKey)>,
}

/// The key one call runs under: the CPU key, or its copy on one GPU. Cloning the CPU
/// key is an `Arc` clone; cloning a GPU key also creates its CUDA streams (TFHE-rs's
/// `CudaStreams::clone`), so each call has streams of its own and calls on several
/// threads never share one.
enum RunKey {
    Cpu(ServerKey),
    #[cfg(feature = "gpu")]
    Gpu(tfhe::CudaServerKey),
}

impl RunKey {
    /// Make this the thread's server key (TFHE-rs keeps it per thread) for as long as
    /// the returned guard lives.
    fn install(self) -> Installed {
        match self {
            RunKey::Cpu(key) => {
                set_server_key(key);
                Installed { on_gpu: false }
            }
            #[cfg(feature = "gpu")]
            RunKey::Gpu(key) => {
                set_server_key(key);
                Installed { on_gpu: true }
            }
        }
    }
}

/// A key installed for one call. A GPU key is taken off the thread when the call ends:
/// a later call that installs no key (`check`, `rerand_metadata`) then never moves a
/// ciphertext onto a device nobody reserved memory on, and the key's device memory does
/// not outlive its evaluator through a worker thread.
struct Installed {
    on_gpu: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.on_gpu {
            tfhe::unset_server_key();
        }
    }
}

#[cfg(feature = "gpu")]
extern "C" {
    /// The CUDA runtime's own count: an error (no driver, no device) is an error code
    /// here, where TFHE-rs's `get_number_of_gpus` aborts the process.
    fn cudaGetDeviceCount(count: *mut std::os::raw::c_int) -> std::os::raw::c_int;
}

/// CUDA devices visible to this process; 0 when the runtime reports an error.
#[cfg(feature = "gpu")]
fn visible_gpus() -> u32 {
    let mut count: std::os::raw::c_int = 0;
    // SAFETY: cudaGetDeviceCount writes one int through a pointer to a live local.
    let status = unsafe { cudaGetDeviceCount(&mut count) };
    if status == 0 && count > 0 {
        count as u32
    } else {
        0
    }
}

/// The number of CUDA devices this process sees (0 in a build without `gpu`).
#[pyfunction]
fn gpu_count() -> u32 {
    #[cfg(feature = "gpu")]
    {
        visible_gpus()
    }
    #[cfg(not(feature = "gpu"))]
    {
        0
    }
}

fn binary_uint<T>(op: OpCode, a: &T, b: &T) -> PyResult<Ct>
where
    T: Clone,
    for<'a> &'a T: std::ops::Add<&'a T, Output = T>
        + std::ops::Sub<&'a T, Output = T>
        + std::ops::Mul<&'a T, Output = T>
        + std::ops::Div<&'a T, Output = T>
        + std::ops::Rem<&'a T, Output = T>
        + std::ops::BitAnd<&'a T, Output = T>
        + std::ops::BitOr<&'a T, Output = T>
        + std::ops::BitXor<&'a T, Output = T>
        + std::ops::Shl<&'a T, Output = T>
        + std::ops::Shr<&'a T, Output = T>
        + RotateLeft<&'a T, Output = T>
        + RotateRight<&'a T, Output = T>,
    T: for<'a> FheEq<&'a T> + for<'a> FheOrd<&'a T>,
    T: for<'a> FheMin<&'a T, Output = T> + for<'a> FheMax<&'a T, Output = T>,
    T: IntoCt,
{
    Ok(match op {
        OpCode::Add => (a + b).into_ct(),
        OpCode::Sub => (a - b).into_ct(),
        OpCode::Mul => (a * b).into_ct(),
        OpCode::Div => (a / b).into_ct(),
        OpCode::Rem => (a % b).into_ct(),
        OpCode::BitAnd => (a & b).into_ct(),
        OpCode::BitOr => (a | b).into_ct(),
        OpCode::BitXor => (a ^ b).into_ct(),
        OpCode::Shl => (a << b).into_ct(),
        OpCode::Shr => (a >> b).into_ct(),
        OpCode::Rotl => a.rotate_left(b).into_ct(),
        OpCode::Rotr => a.rotate_right(b).into_ct(),
        OpCode::Eq => Ct::Bool(a.eq(b)),
        OpCode::Ne => Ct::Bool(a.ne(b)),
        OpCode::Ge => Ct::Bool(a.ge(b)),
        OpCode::Gt => Ct::Bool(a.gt(b)),
        OpCode::Le => Ct::Bool(a.le(b)),
        OpCode::Lt => Ct::Bool(a.lt(b)),
        OpCode::Min => a.min(b).into_ct(),
        OpCode::Max => a.max(b).into_ct(),
        OpCode::Neg | OpCode::Not => return Err(unsupported("binary op")),
    })
}

trait IntoCt {
    fn into_ct(self) -> Ct;
}
macro_rules! into_ct {
    ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
        impl IntoCt for $ty {
            fn into_ct(self) -> Ct {
                Ct::$variant(self)
            }
        }
    };
}
each_uint!(into_ct);

/// Scalar second operand. Division and remainder by zero and shift amounts are
/// normalised in Python (fhEVM semantics), so the scalar here is never zero for Div/Rem.
macro_rules! binary_scalar {
    ($a:expr, $s:expr, $op:expr) => {{
        let a = $a;
        let s = $s;
        Ok(match $op {
            OpCode::Add => (a + s).into_ct(),
            OpCode::Sub => (a - s).into_ct(),
            OpCode::Mul => (a * s).into_ct(),
            OpCode::Div => (a / s).into_ct(),
            OpCode::Rem => (a % s).into_ct(),
            OpCode::BitAnd => (a & s).into_ct(),
            OpCode::BitOr => (a | s).into_ct(),
            OpCode::BitXor => (a ^ s).into_ct(),
            OpCode::Eq => Ct::Bool(a.eq(s)),
            OpCode::Ne => Ct::Bool(a.ne(s)),
            OpCode::Ge => Ct::Bool(a.ge(s)),
            OpCode::Gt => Ct::Bool(a.gt(s)),
            OpCode::Le => Ct::Bool(a.le(s)),
            OpCode::Lt => Ct::Bool(a.lt(s)),
            OpCode::Min => a.min(s).into_ct(),
            OpCode::Max => a.max(s).into_ct(),
            _ => return Err(unsupported("scalar op")),
        })
    }};
}

macro_rules! shift_scalar {
    ($a:expr, $amount:expr, $op:expr) => {{
        let a = $a;
        let n: u32 = $amount;
        Ok(match $op {
            OpCode::Shl => (a << n).into_ct(),
            OpCode::Shr => (a >> n).into_ct(),
            OpCode::Rotl => a.rotate_left(n).into_ct(),
            OpCode::Rotr => a.rotate_right(n).into_ct(),
            _ => return Err(unsupported("shift op")),
        })
    }};
}

fn bool_binary(op: OpCode, a: &FheBool, b: &FheBool) -> PyResult<Ct> {
    Ok(Ct::Bool(match op {
        OpCode::BitAnd => a & b,
        OpCode::BitOr => a | b,
        OpCode::BitXor => a ^ b,
        OpCode::Eq => a.eq(b),
        OpCode::Ne => a.ne(b),
        _ => return Err(unsupported("op on Bool")),
    }))
}

fn bool_scalar(op: OpCode, a: &FheBool, s: bool) -> PyResult<Ct> {
    Ok(Ct::Bool(match op {
        OpCode::BitAnd => a & s,
        OpCode::BitOr => a | s,
        OpCode::BitXor => a ^ s,
        OpCode::Eq => a.eq(s),
        OpCode::Ne => a.ne(s),
        _ => return Err(unsupported("scalar op on Bool")),
    }))
}

fn cast_to(target: FheType, source: Ct) -> PyResult<Ct> {
    macro_rules! to_uint {
        ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
            if target == FheType::$code {
                return Ok(Ct::$variant(match source {
                    Ct::Bool(c) => $ty::cast_from(c),
                    Ct::U4(c) => $ty::cast_from(c),
                    Ct::U8(c) => $ty::cast_from(c),
                    Ct::U16(c) => $ty::cast_from(c),
                    Ct::U32(c) => $ty::cast_from(c),
                    Ct::U64(c) => $ty::cast_from(c),
                    Ct::U128(c) => $ty::cast_from(c),
                    Ct::U160(c) => $ty::cast_from(c),
                    Ct::U256(c) => $ty::cast_from(c),
                }));
            }
        };
    }
    if target == FheType::Bool {
        // fhEVM's cast to Bool is `x != 0` (coprocessor.fhe.reference.cast).
        return Ok(Ct::Bool(match source {
            Ct::Bool(c) => c,
            Ct::U4(c) => c.ne(0u8),
            Ct::U8(c) => c.ne(0u8),
            Ct::U16(c) => c.ne(0u16),
            Ct::U32(c) => c.ne(0u32),
            Ct::U64(c) => c.ne(0u64),
            Ct::U128(c) => c.ne(0u128),
            Ct::U160(c) => c.ne(U256::ZERO),
            Ct::U256(c) => c.ne(U256::ZERO),
        }));
    }
    each_uint!(to_uint);
    unreachable!("each_uint! covers every FheType but Bool")
}

/// Read an expanded key the node cache holds. The BLAKE3 digest is computed on another
/// thread (and rayon's pool) while this one deserializes the same mapped bytes: the two
/// passes overlap instead of following each other, and the key is handed out only once
/// the whole file matched `digest`. `populate` maps the file's pages in one call rather
/// than one fault per 4 KiB page.
fn load_expanded_key(path: &str, digest: &str) -> PyResult<ServerKey> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the cache's files are written once under a temporary name and renamed into
    // place, never modified in place; a file replaced or deleted meanwhile keeps its
    // mapped pages (POSIX unlink semantics).
    let mapped = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    let bytes: &[u8] = &mapped;
    let (found, key) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| {
            let mut hasher = blake3::Hasher::new();
            hasher.update_rayon(bytes);
            hasher.finalize()
        });
        let key: PyResult<ServerKey> = de(bytes, EXPANDED_LIMIT);
        (hashing.join(), key)
    });
    let found = found
        .map_err(|_| PyRuntimeError::new_err("hashing the expanded key panicked"))?
        .to_hex();
    if found.as_str() != digest {
        return Err(PyValueError::new_err(format!(
            "the expanded key at {path} hashes to {found}, not {digest}"
        )));
    }
    key
}

#[pymethods]
impl Evaluator {
    /// `gpus`: CUDA device indexes to expand the key onto as well (a `gpu` build only;
    /// each copy is made from the compressed key, once, here).
    #[new]
    #[pyo3(signature = (compressed_server_key, gpus = Vec::new()))]
    fn new(py: Python<'_>, compressed_server_key: Vec<u8>, gpus: Vec<u32>) -> PyResult<Self> {
        #[cfg(not(feature = "gpu"))]
        if !gpus.is_empty() {
            return Err(no_gpu_support());
        }
        py.allow_threads(move || -> PyResult<Evaluator> {
            let csk: CompressedServerKey = de(&compressed_server_key, KEY_LIMIT)?;
            let key = csk.decompress();
            #[cfg(feature = "gpu")]
            {
                let count = visible_gpus();
                let mut copies = Vec::with_capacity(gpus.len());
                for index in gpus {
                    if index >= count {
                        return Err(PyValueError::new_err(format!(
                            "unsupported: GPU {index} does not exist here ({count} visible)"
                        )));
                    }
                    let on_device = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        csk.decompress_to_specific_gpu(tfhe::GpuIndex::new(index))
                    }))
                    .map_err(|_| {
                        PyRuntimeError::new_err(format!(
                            "TFHE-rs panicked expanding the key on GPU {index}"
                        ))
                    })?;
                    copies.push((index, on_device));
                }
                Ok(Evaluator { key, gpus: copies })
            }
            #[cfg(not(feature = "gpu"))]
            Ok(Evaluator::on_cpu(key))
        })
    }

    /// The CUDA devices holding a copy of the key (empty on the CPU).
    #[getter]
    fn gpus(&self) -> Vec<u32> {
        #[cfg(feature = "gpu")]
        {
            self.gpus.iter().map(|(index, _)| *index).collect()
        }
        #[cfg(not(feature = "gpu"))]
        {
            Vec::new()
        }
    }

    /// Write the expanded key (what decompression produced) to `path`, synced, and
    /// return the file's BLAKE3 digest (hex): the node-local key cache, where loading
    /// is a read instead of a decompression. The caller renames the file into place.
    /// Streamed through a hashing buffer: no second copy of the key in memory.
    fn save_expanded(&self, py: Python<'_>, path: String) -> PyResult<String> {
        let key = &self.key;
        py.allow_threads(move || -> PyResult<String> {
            let file = std::fs::File::create(&path)?;
            let mut writer = HashingWriter {
                inner: std::io::BufWriter::with_capacity(16 << 20, file),
                hasher: blake3::Hasher::new(),
            };
            // Unversioned: no conversion pass on load (a versioned ABox is rebuilt element
            // by element from a Vec), and TFHE-rs refuses such a file from any other crate
            // version, so a cache written by another build is a miss, never a wrong key.
            SerializationConfig::new(EXPANDED_LIMIT)
                .disable_versioning()
                .serialize_into(key, &mut writer)
                .map_err(err)?;
            let file = writer.inner.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(writer.hasher.finalize().to_hex().to_string())
        })
    }

    /// An evaluator from a key `save_expanded` wrote, refused (ValueError) unless the
    /// whole file hashes to `digest`: a torn or altered file never becomes a key. The
    /// file is mapped, not read into a buffer (the key is GBs); I/O errors are OSErrors.
    #[staticmethod]
    fn load_expanded(py: Python<'_>, path: String, digest: String) -> PyResult<Self> {
        let key = py.allow_threads(move || load_expanded_key(&path, &digest))?;
        Ok(Evaluator::on_cpu(key))
    }

    /// Encrypted (op, a, b) -> (result type code, bytes).
    #[pyo3(signature = (op, type_code, a, b, device = None))]
    fn binary(
        &self,
        py: Python<'_>,
        op: u8,
        type_code: u8,
        a: Vec<u8>,
        b: Vec<u8>,
        device: Option<u32>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, device, || {
            let sk = true;
            let kind = type_arg(type_code)?;
            let (x, y) = (Ct::from_bytes(kind, &a, sk)?, Ct::from_bytes(kind, &b, sk)?);
            let op = OpCode::try_from(op).map_err(unsupported_code)?;
            match (&x, &y) {
                (Ct::Bool(x), Ct::Bool(y)) => bool_binary(op, x, y),
                (Ct::U4(x), Ct::U4(y)) => binary_uint(op, x, y),
                (Ct::U8(x), Ct::U8(y)) => binary_uint(op, x, y),
                (Ct::U16(x), Ct::U16(y)) => binary_uint(op, x, y),
                (Ct::U32(x), Ct::U32(y)) => binary_uint(op, x, y),
                (Ct::U64(x), Ct::U64(y)) => binary_uint(op, x, y),
                (Ct::U128(x), Ct::U128(y)) => binary_uint(op, x, y),
                (Ct::U160(x), Ct::U160(y)) => binary_uint(op, x, y),
                (Ct::U256(x), Ct::U256(y)) => binary_uint(op, x, y),
                _ => Err(unsupported("operand types differ")),
            }
        })
    }

    /// (op, encrypted a, plaintext scalar as 32 LE bytes).
    #[pyo3(signature = (op, type_code, a, scalar, device = None))]
    fn binary_scalar(
        &self,
        py: Python<'_>,
        op: u8,
        type_code: u8,
        a: Vec<u8>,
        scalar: Vec<u8>,
        device: Option<u32>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        let s = u256_from(&scalar)?;
        self.run(py, device, || {
            let x = Ct::from_bytes(type_arg(type_code)?, &a, true)?;
            let op = OpCode::try_from(op).map_err(unsupported_code)?;
            let amount = low(s) as u32;
            macro_rules! go {
                ($c:expr, $clear:ty) => {
                    if op.is_shift() {
                        shift_scalar!($c, amount, op)
                    } else {
                        binary_scalar!($c, <$clear>::from_u256(s), op)
                    }
                };
            }
            match &x {
                Ct::Bool(c) => bool_scalar(op, c, low(s) & 1 == 1),
                Ct::U4(c) => go!(c, u8),
                Ct::U8(c) => go!(c, u8),
                Ct::U16(c) => go!(c, u16),
                Ct::U32(c) => go!(c, u32),
                Ct::U64(c) => go!(c, u64),
                Ct::U128(c) => go!(c, u128),
                Ct::U160(c) => go!(c, U256),
                Ct::U256(c) => go!(c, U256),
            }
        })
    }

    /// Neg (20) and Not (21).
    #[pyo3(signature = (op, type_code, a, device = None))]
    fn unary(
        &self,
        py: Python<'_>,
        op: u8,
        type_code: u8,
        a: Vec<u8>,
        device: Option<u32>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, device, || {
            let x = Ct::from_bytes(type_arg(type_code)?, &a, true)?;
            let op = OpCode::try_from(op).map_err(unsupported_code)?;
            macro_rules! go {
                ($c:expr) => {
                    match op {
                        OpCode::Neg => (-$c).into_ct(),
                        OpCode::Not => (!$c).into_ct(),
                        _ => return Err(unsupported("unary op")),
                    }
                };
            }
            Ok(match &x {
                Ct::Bool(c) if op == OpCode::Not => Ct::Bool(!c),
                Ct::Bool(_) => return Err(unsupported("Neg on Bool")),
                Ct::U4(c) => go!(c),
                Ct::U8(c) => go!(c),
                Ct::U16(c) => go!(c),
                Ct::U32(c) => go!(c),
                Ct::U64(c) => go!(c),
                Ct::U128(c) => go!(c),
                Ct::U160(c) => go!(c),
                Ct::U256(c) => go!(c),
            })
        })
    }

    #[pyo3(signature = (from_type, to_type, a, device = None))]
    fn cast(
        &self,
        py: Python<'_>,
        from_type: u8,
        to_type: u8,
        a: Vec<u8>,
        device: Option<u32>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, device, || {
            let x = Ct::from_bytes(type_arg(from_type)?, &a, true)?;
            let target = FheType::try_from(to_type)
                .map_err(|e| unsupported(&format!("cast target: {e}")))?;
            cast_to(target, x)
        })
    }

    #[pyo3(signature = (type_code, condition, a, b, device = None))]
    fn if_then_else(
        &self,
        py: Python<'_>,
        type_code: u8,
        condition: Vec<u8>,
        a: Vec<u8>,
        b: Vec<u8>,
        device: Option<u32>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, device, || {
            let sk = true;
            let c = match Ct::from_bytes(FheType::Bool, &condition, sk)? {
                Ct::Bool(c) => c,
                _ => return Err(unsupported("condition")),
            };
            let kind = type_arg(type_code)?;
            let (x, y) = (Ct::from_bytes(kind, &a, sk)?, Ct::from_bytes(kind, &b, sk)?);
            Ok(match (&x, &y) {
                (Ct::Bool(x), Ct::Bool(y)) => Ct::Bool(c.if_then_else(x, y)),
                (Ct::U4(x), Ct::U4(y)) => Ct::U4(c.if_then_else(x, y)),
                (Ct::U8(x), Ct::U8(y)) => Ct::U8(c.if_then_else(x, y)),
                (Ct::U16(x), Ct::U16(y)) => Ct::U16(c.if_then_else(x, y)),
                (Ct::U32(x), Ct::U32(y)) => Ct::U32(c.if_then_else(x, y)),
                (Ct::U64(x), Ct::U64(y)) => Ct::U64(c.if_then_else(x, y)),
                (Ct::U128(x), Ct::U128(y)) => Ct::U128(c.if_then_else(x, y)),
                (Ct::U160(x), Ct::U160(y)) => Ct::U160(c.if_then_else(x, y)),
                (Ct::U256(x), Ct::U256(y)) => Ct::U256(c.if_then_else(x, y)),
                _ => return Err(unsupported("branch types differ")),
            })
        })
    }

    fn trivial(
        &self,
        py: Python<'_>,
        type_code: u8,
        value: Vec<u8>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        let v = u256_from(&value)?;
        self.run(py, None, || {
            let kind = FheType::try_from(type_code).map_err(unsupported_code)?;
            macro_rules! go {
                ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
                    if kind == FheType::$code {
                        return Ok(Ct::$variant($ty::encrypt_trivial(<$clear>::from_u256(v))));
                    }
                };
            }
            if kind == FheType::Bool {
                return Ok(Ct::Bool(FheBool::encrypt_trivial(low(v) & 1 == 1)));
            }
            each_uint!(go);
            unreachable!("each_uint! covers every FheType but Bool")
        })
    }

    /// Oblivious pseudo-random value from a 16-byte seed read big-endian, as the fhEVM
    /// host emits it; always TFHE-rs's bounded generator, over [0, 2^bits) with `bits`
    /// > 0 and over the type's full width with `bits` = 0 (what fhEVM's coprocessor does,
    /// so the same seed gives the same ciphertext plaintext everywhere).
    #[pyo3(signature = (type_code, seed, bits, device = None))]
    fn random(
        &self,
        py: Python<'_>,
        type_code: u8,
        seed: Vec<u8>,
        bits: u64,
        device: Option<u32>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        let seed: [u8; 16] = seed
            .try_into()
            .map_err(|_| PyValueError::new_err("seed is 16 bytes"))?;
        let seed = Seed(u128::from_be_bytes(seed));
        self.run(py, device, || {
            let kind = FheType::try_from(type_code).map_err(unsupported_code)?;
            macro_rules! go {
                ($variant:ident, $ty:ident, $code:ident, $clear:ty) => {
                    if kind == FheType::$code {
                        let width = if bits == 0 { kind.bits() } else { bits };
                        return Ok(Ct::$variant($ty::generate_oblivious_pseudo_random_bounded(
                            seed, width,
                        )));
                    }
                };
            }
            if kind == FheType::Bool {
                return Ok(Ct::Bool(FheBool::generate_oblivious_pseudo_random(seed)));
            }
            each_uint!(go);
            unreachable!("each_uint! covers every FheType but Bool")
        })
    }

    /// Switch-and-squash: the 128-bit, decryption-ready form; with `compress`, as a
    /// one-element CompressedSquashedNoiseCiphertextList (needs `can_compress_squashed`).
    #[pyo3(signature = (type_code, a, compress, device = None))]
    fn squash(
        &self,
        py: Python<'_>,
        type_code: u8,
        a: Vec<u8>,
        compress: bool,
        device: Option<u32>,
    ) -> PyResult<Py<PyBytes>> {
        let key = self.key_for(device)?;
        let bytes = py.allow_threads(move || -> PyResult<Vec<u8>> {
            let _installed = key.install();
            let squash = || -> PyResult<Vec<u8>> {
                let x = Ct::from_bytes(type_arg(type_code)?, &a, true)?;
                on_any!(x, c => {
                    let squashed = c.squash_noise().map_err(err)?;
                    if compress {
                        let list = CompressedSquashedNoiseCiphertextList::builder()
                            .push(squashed)
                            .build()
                            .map_err(err)?;
                        ser(&list, CT_LIMIT)
                    } else {
                        ser(&squashed, CT_LIMIT)
                    }
                })
            };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(squash))
                .map_err(|_| PyRuntimeError::new_err("TFHE-rs panicked during switch-and-squash"))?
        })?;
        Ok(PyBytes::new(py, &bytes).into())
    }

    /// Whether the keyset has the noise squashing compression key (keysets made since it
    /// was added to `config()`).
    #[getter]
    fn can_compress_squashed(&self) -> bool {
        self.key.supports_noise_squashing_compression()
    }

    /// The published ("ct64") form of a ciphertext: a one-element CompressedCiphertextList,
    /// safe-serialized, as the reference's sns-worker uploads it. Needs `can_compress`.
    fn compress(&self, py: Python<'_>, type_code: u8, a: Vec<u8>) -> PyResult<Py<PyBytes>> {
        let key = self.key.clone();
        let bytes = py.allow_threads(move || -> PyResult<Vec<u8>> {
            set_server_key(key);
            let x = Ct::from_bytes(type_arg(type_code)?, &a, true)?;
            no_panic("ciphertext", || x.compress())
        })?;
        Ok(PyBytes::new(py, &bytes).into())
    }

    /// A published ct64 object back to a computable ciphertext (one PBS per block):
    /// (type code, bytes), checked like every other ciphertext this evaluator takes.
    fn decompress(
        &self,
        py: Python<'_>,
        type_code: u8,
        list: Vec<u8>,
    ) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, None, || {
            let kind = type_arg(type_code)?;
            let list = published_list(kind, &list)?;
            no_panic("malformed compressed list", || Ct::expand(kind, &list))?.checked(true)
        })
    }

    /// Whether the keyset has the compression and decompression keys (keysets made since
    /// they were added to `config()`).
    #[getter]
    fn can_compress(&self) -> bool {
        self.key.has_compression_key() && self.key.has_decompression_key()
    }

    /// Verify a client's proven input list against the CRS, the compact public key and the
    /// metadata it was bound to (the caller takes the CRS and the key from the tenant and
    /// the deployment, never from the request: a list proven under a key the caller was
    /// handed verifies against that key), then expand it into one ciphertext per value:
    /// [(type code, bytes)]. The list is deserialized with TFHE-rs's conformance check
    /// (shape, sizes, proof kind) before the proof is looked at.
    fn verify_inputs(
        &self,
        py: Python<'_>,
        crs: Vec<u8>,
        public_key: Vec<u8>,
        list: Vec<u8>,
        metadata: Vec<u8>,
        rerand: Vec<Vec<u8>>,
    ) -> PyResult<Vec<(u8, Py<PyBytes>)>> {
        let key = self.key.clone();
        let out = py.allow_threads(move || -> PyResult<Vec<(u8, Vec<u8>)>> {
            set_server_key(key);
            // The CRS and the key are ours, not the requester's: if they do not load, the
            // fault is the deployment's (RuntimeError), never a verdict on the list.
            let crs: CompactPkeCrs = de(&crs, KEY_LIMIT)
                .map_err(|e| PyRuntimeError::new_err(format!("the CRS does not load: {e}")))?;
            let pk: CompactPublicKey = de(&public_key, KEY_LIMIT).map_err(|e| {
                PyRuntimeError::new_err(format!("the compact public key does not load: {e}"))
            })?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                verify_and_expand(&crs, &pk, &list, &metadata, &rerand)
            }))
            .map_err(|_| PyValueError::new_err("malformed input list: TFHE-rs panicked on it"))?
        })?;
        Ok(out
            .into_iter()
            .map(|(code, bytes)| (code, PyBytes::new(py, &bytes).into()))
            .collect())
    }

    /// Check that bytes are a ciphertext of this key's parameters and the given type.
    fn check(&self, py: Python<'_>, type_code: u8, a: Vec<u8>) -> PyResult<()> {
        py.allow_threads(|| Ct::from_bytes(type_arg(type_code)?, &a, true).map(|_| ()))
    }

    /// The re-randomisation metadata a ciphertext carries (empty when none).
    fn rerand_metadata(&self, py: Python<'_>, type_code: u8, a: Vec<u8>) -> PyResult<Py<PyBytes>> {
        let data = py.allow_threads(|| -> PyResult<Vec<u8>> {
            Ok(Ct::from_bytes(type_arg(type_code)?, &a, false)?.rerand_metadata())
        })?;
        Ok(PyBytes::new(py, &data).into())
    }
}

#[cfg(not(feature = "gpu"))]
fn no_gpu_support() -> PyErr {
    PyValueError::new_err(
        "unsupported: this build of the extension has no GPU support (build it with make setup-gpu)",
    )
}

impl Evaluator {
    fn on_cpu(key: ServerKey) -> Self {
        Evaluator {
            key,
            #[cfg(feature = "gpu")]
            gpus: Vec::new(),
        }
    }

    /// The key for `device`: None is the CPU; a GPU index must be one the key was
    /// expanded onto when this evaluator was made.
    fn key_for(&self, device: Option<u32>) -> PyResult<RunKey> {
        match device {
            None => Ok(RunKey::Cpu(self.key.clone())),
            #[cfg(feature = "gpu")]
            Some(index) => self
                .gpus
                .iter()
                .find(|(held, _)| *held == index)
                .map(|(_, key)| RunKey::Gpu(key.clone()))
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "unsupported: GPU {index} holds no copy of this key"
                    ))
                }),
            #[cfg(not(feature = "gpu"))]
            Some(_) => Err(no_gpu_support()),
        }
    }

    /// Run `f` without the GIL, with this evaluator's key for `device` as the thread's
    /// server key (TFHE-rs keeps it per thread), and serialize the result (on a GPU,
    /// TFHE-rs copies it back to the host for that).
    fn run<F>(&self, py: Python<'_>, device: Option<u32>, f: F) -> PyResult<(u8, Py<PyBytes>)>
    where
        F: FnOnce() -> PyResult<Ct> + Send,
    {
        let key = self.key_for(device)?;
        let (code, bytes) = py.allow_threads(move || -> PyResult<(u8, Vec<u8>)> {
            let _installed = key.install();
            let ct = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .map_err(|_| PyRuntimeError::new_err("TFHE-rs panicked during the operation"))??;
            Ok((ct.fhe_type() as u8, ct.to_bytes()?))
        })?;
        Ok((code, PyBytes::new(py, &bytes).into()))
    }
}

#[pymodule]
fn fhe_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TFHE_VERSION", "1.7.0")?;
    m.add("HAS_TEST_PROVER", cfg!(feature = "test-prover"))?;
    m.add("HAS_GPU", cfg!(feature = "gpu"))?;
    m.add_function(wrap_pyfunction!(gpu_count, m)?)?;
    m.add_function(wrap_pyfunction!(generate_keys, m)?)?;
    m.add_function(wrap_pyfunction!(split_server_key, m)?)?;
    m.add_function(wrap_pyfunction!(generate_crs, m)?)?;
    m.add_function(wrap_pyfunction!(prove_inputs, m)?)?;
    #[cfg(feature = "test-prover")]
    m.add_function(wrap_pyfunction!(panic_for_tests, m)?)?;
    m.add_class::<Client>()?;
    m.add_class::<Evaluator>()?;
    Ok(())
}
