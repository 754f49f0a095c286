//! Thin PyO3 bindings of the `tfhe` crate (TFHE-rs 1.7) for the coprocessor's
//! `tfhe-rs` engine backend. Everything that is policy (envelopes, validation,
//! semantics at the edges such as scalar division by zero) lives in Python; this file
//! only maps type and op codes (DESIGN.md section 5) onto TFHE-rs calls.
//!
//! Values cross the boundary as 32-byte little-endian strings, ciphertexts and keys as
//! TFHE-rs safe-serialized (versioned, size-limited) bytes. Long calls release the GIL.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tfhe::conformance::ParameterSetConformant;
use tfhe::integer::ciphertext::IntegerCiphertext;
use tfhe::integer::U256;
use tfhe::prelude::*;
use tfhe::safe_serialization::{DeserializationConfig, SerializationConfig};
use tfhe::shortint::parameters::{
    NOISE_SQUASHING_COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    NOISE_SQUASHING_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
};
use tfhe::integer::ciphertext::IntegerProvenCompactCiphertextListConformanceParams;
use tfhe::zk::{CompactPkeCrs, ZkComputeLoad, ZkVerificationOutcome};
use tfhe::{
    set_server_key, ClientKey, CompressedSquashedNoiseCiphertextList, FheTypes, ProvenCompactCiphertextList, CompactPublicKey, CompressedServerKey, Config, ConfigBuilder,
    FheBool, FheUint128, FheUint16,
    FheUint160, FheUint256,
    FheUint32, FheUint4,
    FheUint64, FheUint8,
    Seed, ServerKey, SquashedNoiseFheBool, SquashedNoiseFheUint,
};

const KEY_LIMIT: u64 = 1 << 31;
const CT_LIMIT: u64 = 1 << 26;

fn err<E: std::fmt::Display>(e: E) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn config() -> Config {
    ConfigBuilder::with_custom_parameters(PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
        .use_dedicated_compact_public_key_parameters((
            PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
        ))
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
    ($m:ident) => {
        $m!(U4, FheUint4, 1, u8);
        $m!(U8, FheUint8, 2, u8);
        $m!(U16, FheUint16, 3, u16);
        $m!(U32, FheUint32, 4, u32);
        $m!(U64, FheUint64, 5, u64);
        $m!(U128, FheUint128, 6, u128);
        $m!(U160, FheUint160, 7, U256);
        $m!(U256, FheUint256, 8, U256);
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

impl Ct {
    fn type_code(&self) -> u8 {
        match self {
            Ct::Bool(_) => 0,
            Ct::U4(_) => 1,
            Ct::U8(_) => 2,
            Ct::U16(_) => 3,
            Ct::U32(_) => 4,
            Ct::U64(_) => 5,
            Ct::U128(_) => 6,
            Ct::U160(_) => 7,
            Ct::U256(_) => 8,
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
    fn from_bytes(type_code: u8, bytes: &[u8], check: bool) -> PyResult<Ct> {
        let cfg = DeserializationConfig::new(CT_LIMIT).disable_conformance();
        let bad = || PyValueError::new_err("ciphertext does not match the keyset's parameters or its type");
        macro_rules! load {
            ($variant:ident, $ty:ident, $code:expr, $clear:ty) => {
                if type_code == $code {
                    let value: $ty = cfg.deserialize_from(bytes).map_err(err)?;
                    if check {
                        let (radix, _, _, _) = value.clone().into_raw_parts();
                        let expected = ($ty::num_bits() + 1) / 2;
                        if radix.blocks().len() != expected || !radix.blocks().iter().all(block_ok) {
                            return Err(bad());
                        }
                    }
                    return Ok(Ct::$variant(value));
                }
            };
        }
        if type_code == 0 {
            let value: FheBool = cfg.deserialize_from(bytes).map_err(err)?;
            if check && !block_ok(&value.clone().into_raw_parts()) {
                return Err(bad());
            }
            return Ok(Ct::Bool(value));
        }
        each_uint!(load);
        Err(PyValueError::new_err(format!("type code {type_code} is not supported")))
    }
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
    bytes[..bytes.len().min(256)].windows(NAME.len()).any(|w| w == NAME)
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
        Ok((ser(&ck, KEY_LIMIT)?, ser(&csk, KEY_LIMIT)?, ser(&pk, KEY_LIMIT)?))
    })?;
    Ok((
        PyBytes::new(py, &ck).into(),
        PyBytes::new(py, &csk).into(),
        PyBytes::new(py, &pk).into(),
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
        return Err(PyValueError::new_err(format!("max_bits must be 1..={CRS_MAX_BITS}")));
    }
    let bytes = py.allow_threads(|| -> PyResult<Vec<u8>> {
        let crs = CompactPkeCrs::from_config(config(), max_bits).map_err(err)?;
        ser(&crs, KEY_LIMIT)
    })?;
    Ok(PyBytes::new(py, &bytes).into())
}

/// What a client does (node-tfhe in production): encrypt values under the compact public
/// key into one list and prove it, bound to `metadata`. `values` are (type code, 32-byte LE).
#[pyfunction]
fn prove_inputs(py: Python<'_>, public_key: Vec<u8>, crs: Vec<u8>, metadata: Vec<u8>,
                values: Vec<(u8, Vec<u8>)>) -> PyResult<Py<PyBytes>> {
    let bytes = py.allow_threads(move || -> PyResult<Vec<u8>> {
        let pk: CompactPublicKey = de(&public_key, KEY_LIMIT)?;
        let crs: CompactPkeCrs = de(&crs, KEY_LIMIT)?;
        let mut builder = ProvenCompactCiphertextList::builder(&pk);
        for (type_code, value) in &values {
            let v = u256_from(value)?;
            match type_code {
                0 => { builder.push(low(v) & 1 == 1); }
                1 => { builder.push_with_num_bits(low(v) as u8, 4).map_err(err)?; }
                2 => { builder.push(low(v) as u8); }
                3 => { builder.push(low(v) as u16); }
                4 => { builder.push(low(v) as u32); }
                5 => { builder.push(low(v) as u64); }
                6 => { builder.push(low(v)); }
                7 => { builder.push_with_num_bits(v, 160).map_err(err)?; }
                8 => { builder.push(v); }
                _ => return Err(unsupported("type")),
            };
        }
        let list = builder.build_with_proof_packed(&crs, &metadata, ZkComputeLoad::Verify)
            .map_err(err)?;
        ser(&list, CT_LIMIT)
    })?;
    Ok(PyBytes::new(py, &bytes).into())
}

fn type_code_of(kind: FheTypes) -> Option<u8> {
    Some(match kind {
        FheTypes::Bool => 0,
        FheTypes::Uint4 => 1,
        FheTypes::Uint8 => 2,
        FheTypes::Uint16 => 3,
        FheTypes::Uint32 => 4,
        FheTypes::Uint64 => 5,
        FheTypes::Uint128 => 6,
        FheTypes::Uint160 => 7,
        FheTypes::Uint256 => 8,
        _ => return None,
    })
}

// --- client side ---------------------------------------------------------------------------

#[pyclass(frozen)]
struct Client {
    key: ClientKey,
}

#[pymethods]
impl Client {
    #[new]
    fn new(py: Python<'_>, client_key: Vec<u8>) -> PyResult<Self> {
        let key = py.allow_threads(|| de::<ClientKey>(&client_key, KEY_LIMIT))?;
        Ok(Client { key })
    }

    fn encrypt(&self, py: Python<'_>, type_code: u8, value: Vec<u8>) -> PyResult<Py<PyBytes>> {
        let v = u256_from(&value)?;
        let bytes = py.allow_threads(|| -> PyResult<Vec<u8>> {
            let ck = &self.key;
            macro_rules! enc {
                ($variant:ident, $ty:ident, $code:expr, $clear:ty) => {
                    if type_code == $code {
                        return Ct::$variant($ty::encrypt(<$clear>::from_u256(v), ck)).to_bytes();
                    }
                };
            }
            if type_code == 0 {
                return Ct::Bool(FheBool::encrypt(low(v) & 1 == 1, ck)).to_bytes();
            }
            each_uint!(enc);
            Err(unsupported("type"))
        })?;
        Ok(PyBytes::new(py, &bytes).into())
    }

    fn decrypt(&self, py: Python<'_>, type_code: u8, ciphertext: Vec<u8>) -> PyResult<Py<PyBytes>> {
        let out = py.allow_threads(|| -> PyResult<[u8; 32]> {
            let ck = &self.key;
            let value = match Ct::from_bytes(type_code, &ciphertext, false)? {
                Ct::Bool(c) => U256::from(c.decrypt(ck) as u128),
                Ct::U4(c) => FheDecrypt::<u8>::decrypt(&c, ck).into_u256(),
                Ct::U8(c) => FheDecrypt::<u8>::decrypt(&c, ck).into_u256(),
                Ct::U16(c) => FheDecrypt::<u16>::decrypt(&c, ck).into_u256(),
                Ct::U32(c) => FheDecrypt::<u32>::decrypt(&c, ck).into_u256(),
                Ct::U64(c) => FheDecrypt::<u64>::decrypt(&c, ck).into_u256(),
                Ct::U128(c) => FheDecrypt::<u128>::decrypt(&c, ck).into_u256(),
                Ct::U160(c) => FheDecrypt::<U256>::decrypt(&c, ck),
                Ct::U256(c) => FheDecrypt::<U256>::decrypt(&c, ck),
            };
            Ok(u256_bytes(value))
        })?;
        Ok(PyBytes::new(py, &out).into())
    }

    fn decrypt_squashed(&self, py: Python<'_>, type_code: u8, ciphertext: Vec<u8>) -> PyResult<Py<PyBytes>> {
        let out = py.allow_threads(|| -> PyResult<[u8; 32]> {
            let ck = &self.key;
            // Either format: a one-element compressed list (keysets with the noise
            // squashing compression key) or a bare squashed ciphertext (older keysets),
            // told apart by the type name in the safe-serialization header, so a damaged
            // list reports the list's own error.
            let list = if names_compressed_list(&ciphertext) {
                Some(de::<CompressedSquashedNoiseCiphertextList>(&ciphertext, CT_LIMIT)?)
            } else {
                None
            };
            let value = if type_code == 0 {
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

/// The list checked for shape against the CRS (TFHE-rs conformance), its proof verified
/// against the CRS, the key and the metadata, then expanded: [(type code, bytes)].
fn verify_and_expand(crs: &CompactPkeCrs, pk: &CompactPublicKey, list: &[u8],
                     metadata: &[u8]) -> PyResult<Vec<(u8, Vec<u8>)>> {
    let params = IntegerProvenCompactCiphertextListConformanceParams::from_crs_and_parameters(
        PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128, crs);
    let list: ProvenCompactCiphertextList = DeserializationConfig::new(CT_LIMIT)
        .deserialize_from(list, &params)
        .map_err(|e| PyValueError::new_err(format!("malformed input list: {e}")))?;
    if let ZkVerificationOutcome::Invalid = list.verify(crs, pk, metadata) {
        return Err(PyValueError::new_err(
            "input proof is invalid (tampered list, another key, or other metadata)"));
    }
    // Verified just above on this very object: expanding without a second
    // verification halves the work a hostile list can cost us.
    let expander = list.expand_without_verification().map_err(err)?;
    let mut out = Vec::with_capacity(expander.len());
    for index in 0..expander.len() {
        let kind = expander.get_kind_of(index)
            .ok_or_else(|| PyValueError::new_err("input list entry has no type"))?;
        let code = type_code_of(kind)
            .ok_or_else(|| unsupported("input type outside Bool..Uint256"))?;
        macro_rules! take {
            ($variant:ident, $ty:ident, $code:expr, $clear:ty) => {
                if code == $code {
                    let value: $ty = expander.get(index).map_err(err)?
                        .ok_or_else(|| PyValueError::new_err("input list entry missing"))?;
                    out.push((code, Ct::$variant(value).to_bytes()?));
                    continue;
                }
            };
        }
        if code == 0 {
            let value: FheBool = expander.get(index).map_err(err)?
                .ok_or_else(|| PyValueError::new_err("input list entry missing"))?;
            out.push((0, Ct::Bool(value).to_bytes()?));
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
}

fn binary_uint<T>(op: u8, a: &T, b: &T) -> PyResult<Ct>
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
        0 => (a + b).into_ct(),
        1 => (a - b).into_ct(),
        2 => (a * b).into_ct(),
        3 => (a / b).into_ct(),
        4 => (a % b).into_ct(),
        5 => (a & b).into_ct(),
        6 => (a | b).into_ct(),
        7 => (a ^ b).into_ct(),
        8 => (a << b).into_ct(),
        9 => (a >> b).into_ct(),
        10 => a.rotate_left(b).into_ct(),
        11 => a.rotate_right(b).into_ct(),
        12 => Ct::Bool(a.eq(b)),
        13 => Ct::Bool(a.ne(b)),
        14 => Ct::Bool(a.ge(b)),
        15 => Ct::Bool(a.gt(b)),
        16 => Ct::Bool(a.le(b)),
        17 => Ct::Bool(a.lt(b)),
        18 => a.min(b).into_ct(),
        19 => a.max(b).into_ct(),
        _ => return Err(unsupported("binary op")),
    })
}

trait IntoCt {
    fn into_ct(self) -> Ct;
}
macro_rules! into_ct {
    ($variant:ident, $ty:ident, $code:expr, $clear:ty) => {
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
    ($a:expr, $s:expr, $op:expr, $bits:expr) => {{
        let a = $a;
        let s = $s;
        Ok(match $op {
            0 => (a + s).into_ct(),
            1 => (a - s).into_ct(),
            2 => (a * s).into_ct(),
            3 => (a / s).into_ct(),
            4 => (a % s).into_ct(),
            5 => (a & s).into_ct(),
            6 => (a | s).into_ct(),
            7 => (a ^ s).into_ct(),
            12 => Ct::Bool(a.eq(s)),
            13 => Ct::Bool(a.ne(s)),
            14 => Ct::Bool(a.ge(s)),
            15 => Ct::Bool(a.gt(s)),
            16 => Ct::Bool(a.le(s)),
            17 => Ct::Bool(a.lt(s)),
            18 => a.min(s).into_ct(),
            19 => a.max(s).into_ct(),
            _ => return Err(unsupported("scalar op")),
        })
    }};
}

macro_rules! shift_scalar {
    ($a:expr, $amount:expr, $op:expr) => {{
        let a = $a;
        let n: u32 = $amount;
        Ok(match $op {
            8 => (a << n).into_ct(),
            9 => (a >> n).into_ct(),
            10 => a.rotate_left(n).into_ct(),
            11 => a.rotate_right(n).into_ct(),
            _ => return Err(unsupported("shift op")),
        })
    }};
}

fn bool_binary(op: u8, a: &FheBool, b: &FheBool) -> PyResult<Ct> {
    Ok(Ct::Bool(match op {
        5 => a & b,
        6 => a | b,
        7 => a ^ b,
        12 => a.eq(b),
        13 => a.ne(b),
        _ => return Err(unsupported("op on Bool")),
    }))
}

fn bool_scalar(op: u8, a: &FheBool, s: bool) -> PyResult<Ct> {
    Ok(Ct::Bool(match op {
        5 => a & s,
        6 => a | s,
        7 => a ^ s,
        12 => a.eq(s),
        13 => a.ne(s),
        _ => return Err(unsupported("scalar op on Bool")),
    }))
}

fn cast_to(target: u8, source: Ct) -> PyResult<Ct> {
    macro_rules! to_uint {
        ($variant:ident, $ty:ident, $code:expr, $clear:ty) => {
            if target == $code {
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
    if target == 0 {
        // Truncation to one bit: the lowest bit (coprocessor.fhe.reference.cast).
        macro_rules! low_bit {
            ($c:expr) => {
                (&$c & 1u8).eq(1u8)
            };
        }
        return Ok(Ct::Bool(match source {
            Ct::Bool(c) => c,
            Ct::U4(c) => low_bit!(c),
            Ct::U8(c) => low_bit!(c),
            Ct::U16(c) => (&c & 1u16).eq(1u16),
            Ct::U32(c) => (&c & 1u32).eq(1u32),
            Ct::U64(c) => (&c & 1u64).eq(1u64),
            Ct::U128(c) => (&c & 1u128).eq(1u128),
            Ct::U160(c) => (&c & U256::ONE).eq(U256::ONE),
            Ct::U256(c) => (&c & U256::ONE).eq(U256::ONE),
        }));
    }
    each_uint!(to_uint);
    Err(unsupported("cast target"))
}

#[pymethods]
impl Evaluator {
    #[new]
    fn new(py: Python<'_>, compressed_server_key: Vec<u8>) -> PyResult<Self> {
        let key = py.allow_threads(|| -> PyResult<ServerKey> {
            let csk: CompressedServerKey = de(&compressed_server_key, KEY_LIMIT)?;
            Ok(csk.decompress())
        })?;
        Ok(Evaluator { key })
    }

    /// Encrypted (op, a, b) -> (result type code, bytes).
    fn binary(&self, py: Python<'_>, op: u8, type_code: u8, a: Vec<u8>, b: Vec<u8>) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, || {
            let sk = true;
            let (x, y) = (Ct::from_bytes(type_code, &a, sk)?, Ct::from_bytes(type_code, &b, sk)?);
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
    fn binary_scalar(&self, py: Python<'_>, op: u8, type_code: u8, a: Vec<u8>, scalar: Vec<u8>) -> PyResult<(u8, Py<PyBytes>)> {
        let s = u256_from(&scalar)?;
        self.run(py, || {
            let x = Ct::from_bytes(type_code, &a, true)?;
            let amount = low(s) as u32;
            macro_rules! go {
                ($c:expr, $clear:ty) => {
                    if (8..=11).contains(&op) {
                        shift_scalar!($c, amount, op)
                    } else {
                        binary_scalar!($c, <$clear>::from_u256(s), op, 0)
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
    fn unary(&self, py: Python<'_>, op: u8, type_code: u8, a: Vec<u8>) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, || {
            let x = Ct::from_bytes(type_code, &a, true)?;
            macro_rules! go {
                ($c:expr) => {
                    match op {
                        20 => (-$c).into_ct(),
                        21 => (!$c).into_ct(),
                        _ => return Err(unsupported("unary op")),
                    }
                };
            }
            Ok(match &x {
                Ct::Bool(c) if op == 21 => Ct::Bool(!c),
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

    fn cast(&self, py: Python<'_>, from_type: u8, to_type: u8, a: Vec<u8>) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, || cast_to(to_type, Ct::from_bytes(from_type, &a, true)?))
    }

    fn if_then_else(&self, py: Python<'_>, type_code: u8, condition: Vec<u8>, a: Vec<u8>, b: Vec<u8>) -> PyResult<(u8, Py<PyBytes>)> {
        self.run(py, || {
            let sk = true;
            let c = match Ct::from_bytes(0, &condition, sk)? {
                Ct::Bool(c) => c,
                _ => return Err(unsupported("condition")),
            };
            let (x, y) = (Ct::from_bytes(type_code, &a, sk)?, Ct::from_bytes(type_code, &b, sk)?);
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

    fn trivial(&self, py: Python<'_>, type_code: u8, value: Vec<u8>) -> PyResult<(u8, Py<PyBytes>)> {
        let v = u256_from(&value)?;
        self.run(py, || {
            macro_rules! go {
                ($variant:ident, $ty:ident, $code:expr, $clear:ty) => {
                    if type_code == $code {
                        return Ok(Ct::$variant($ty::encrypt_trivial(<$clear>::from_u256(v))));
                    }
                };
            }
            if type_code == 0 {
                return Ok(Ct::Bool(FheBool::encrypt_trivial(low(v) & 1 == 1)));
            }
            each_uint!(go);
            Err(unsupported("type"))
        })
    }

    /// Oblivious pseudo-random value from a 16-byte seed; `bits` > 0 bounds it to
    /// [0, 2^bits).
    fn random(&self, py: Python<'_>, type_code: u8, seed: Vec<u8>, bits: u64) -> PyResult<(u8, Py<PyBytes>)> {
        let seed: [u8; 16] = seed.try_into().map_err(|_| PyValueError::new_err("seed is 16 bytes"))?;
        let seed = Seed(u128::from_le_bytes(seed));
        self.run(py, || {
            macro_rules! go {
                ($variant:ident, $ty:ident, $code:expr, $clear:ty) => {
                    if type_code == $code {
                        return Ok(Ct::$variant(if bits == 0 {
                            $ty::generate_oblivious_pseudo_random(seed)
                        } else {
                            $ty::generate_oblivious_pseudo_random_bounded(seed, bits)
                        }));
                    }
                };
            }
            if type_code == 0 {
                return Ok(Ct::Bool(FheBool::generate_oblivious_pseudo_random(seed)));
            }
            each_uint!(go);
            Err(unsupported("type"))
        })
    }

    /// Switch-and-squash: the 128-bit, decryption-ready form; with `compress`, as a
    /// one-element CompressedSquashedNoiseCiphertextList (needs `can_compress_squashed`).
    fn squash(&self, py: Python<'_>, type_code: u8, a: Vec<u8>, compress: bool) -> PyResult<Py<PyBytes>> {
        let key = self.key.clone();
        let bytes = py.allow_threads(move || -> PyResult<Vec<u8>> {
            set_server_key(key.clone());
            let x = Ct::from_bytes(type_code, &a, true)?;
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
        })?;
        Ok(PyBytes::new(py, &bytes).into())
    }

    /// Whether the keyset has the noise squashing compression key (keysets made since it
    /// was added to `config()`).
    #[getter]
    fn can_compress_squashed(&self) -> bool {
        self.key.supports_noise_squashing_compression()
    }

    /// Verify a client's proven input list against the CRS, the compact public key and the
    /// metadata it was bound to (the caller takes the CRS and the key from the tenant and
    /// the deployment, never from the request: a list proven under a key the caller was
    /// handed verifies against that key), then expand it into one ciphertext per value:
    /// [(type code, bytes)]. The list is deserialized with TFHE-rs's conformance check
    /// (shape, sizes, proof kind) before the proof is looked at.
    fn verify_inputs(&self, py: Python<'_>, crs: Vec<u8>, public_key: Vec<u8>, list: Vec<u8>,
                     metadata: Vec<u8>) -> PyResult<Vec<(u8, Py<PyBytes>)>> {
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
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify_and_expand(&crs, &pk, &list, &metadata)))
                .map_err(|_| PyValueError::new_err("malformed input list: TFHE-rs panicked on it"))?
        })?;
        Ok(out.into_iter().map(|(code, bytes)| (code, PyBytes::new(py, &bytes).into())).collect())
    }

    /// Check that bytes are a ciphertext of this key's parameters and the given type.
    fn check(&self, py: Python<'_>, type_code: u8, a: Vec<u8>) -> PyResult<()> {
        py.allow_threads(|| Ct::from_bytes(type_code, &a, true).map(|_| ()))
    }
}

impl Evaluator {
    /// Run `f` without the GIL, with this evaluator's key as the thread's server key
    /// (TFHE-rs keeps it per thread), and serialize the result.
    fn run<F>(&self, py: Python<'_>, f: F) -> PyResult<(u8, Py<PyBytes>)>
    where
        F: FnOnce() -> PyResult<Ct> + Send,
    {
        let key = self.key.clone();
        let (code, bytes) = py.allow_threads(move || -> PyResult<(u8, Vec<u8>)> {
            set_server_key(key);
            let ct = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .map_err(|_| PyRuntimeError::new_err("TFHE-rs panicked during the operation"))??;
            Ok((ct.type_code(), ct.to_bytes()?))
        })?;
        Ok((code, PyBytes::new(py, &bytes).into()))
    }
}

#[pymodule]
fn fhe_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TFHE_VERSION", "1.7.0")?;
    m.add_function(wrap_pyfunction!(generate_keys, m)?)?;
    m.add_function(wrap_pyfunction!(generate_crs, m)?)?;
    m.add_function(wrap_pyfunction!(prove_inputs, m)?)?;
    m.add_class::<Client>()?;
    m.add_class::<Evaluator>()?;
    Ok(())
}
