//! Element types of device tensors.

use cubecl::ir::{ElemType, FloatKind, StorageType, UIntKind};
pub use half::bf16;

/// The element type of a [`Tensor`](crate::Tensor).
///
/// Floating-point ops accept `F32` and `F64`; `U32` holds indices (`argmax`). `BF16` is a
/// storage type: convolutions read it as tensor-core operands with f32 accumulation, and
/// every other op refuses it (convert with [`Tensor::to_dtype`](crate::Tensor::to_dtype)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary64 (gradient checks and references).
    F64,
    /// Unsigned 32-bit integer (indices).
    U32,
    /// bfloat16 storage (8-bit exponent, 8 significant bits); computed on in f32.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F64 => 8,
            DType::BF16 => 2,
        }
    }

    /// Whether general floating-point ops (elementwise, reductions, norms, …) compute on
    /// this dtype. False for `BF16`, which only convolutions and casts accept.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Lower-case name, as in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U32 => "u32",
            DType::BF16 => "bf16",
        }
    }

    pub(crate) fn storage(self) -> StorageType {
        StorageType::Scalar(match self {
            DType::F32 => ElemType::Float(FloatKind::F32),
            DType::F64 => ElemType::Float(FloatKind::F64),
            DType::U32 => ElemType::UInt(UIntKind::U32),
            DType::BF16 => ElemType::Float(FloatKind::BF16),
        })
    }
}

/// The error every op except convolutions and casts gives a bf16 operand: bf16 is a
/// storage type here, so computing on it silently in f32 would hide a conversion.
pub(crate) fn refuse_bf16(op: &'static str, dtype: DType) -> crate::error::Result<()> {
    if dtype == DType::BF16 {
        return Err(crate::error::Error::dtype(
            op,
            format!("op {op} does not support bf16; cast with to_dtype(DType::F32) first"),
        ));
    }
    Ok(())
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Host element types that can be uploaded to and read from a device tensor.
pub trait Element: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The matching device dtype.
    const DTYPE: DType;
    /// Little-endian bytes of a slice.
    fn to_bytes(data: &[Self]) -> Vec<u8>;
    /// Decode little-endian bytes.
    fn from_bytes(bytes: &[u8]) -> Vec<Self>;
    /// Widen to f64 (exact for every supported type).
    fn to_f64(self) -> f64;
    /// Narrow from f64 (round to nearest even for f32 and bf16, truncation for u32).
    fn from_f64(v: f64) -> Self;
}

macro_rules! impl_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn to_bytes(data: &[Self]) -> Vec<u8> {
                data.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            fn from_bytes(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                    .collect()
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    };
}

impl_element!(f32, DType::F32);
impl_element!(f64, DType::F64);
impl_element!(u32, DType::U32);

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_bytes(data: &[Self]) -> Vec<u8> {
        data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
    fn from_bytes(bytes: &[u8]) -> Vec<Self> {
        bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
    fn to_f64(self) -> f64 {
        f64::from(self.to_f32())
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_bits(f64_to_bf16_bits(v))
    }
}

/// f64 → bf16 bits, rounded to nearest with ties to even in one step. (`half`'s
/// `bf16::from_f64` drops the low 32 mantissa bits before rounding, so values just above
/// a tie round down; going through f32 would round twice.)
pub(crate) fn f64_to_bf16_bits(v: f64) -> u16 {
    let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
    if v.is_nan() {
        return sign | 0x7FC0;
    }
    let a = v.abs();
    if a.is_infinite() {
        return sign | 0x7F80;
    }
    // Spacing of bf16 values around `a`: 2^(e − 7) for binade e, and the subnormal
    // spacing 2^−133 below the smallest normal 2^−126.
    let e = if a >= f64::powi(2.0, -126) {
        ((a.to_bits() >> 52) & 0x7FF) as i32 - 1023
    } else {
        -126
    };
    let ulp = f64::powi(2.0, e - 7);
    // Both scalings are by powers of two, so exact; the only rounding is this one.
    let r = (a / ulp).round_ties_even() * ulp;
    if r >= f64::powi(2.0, 128) {
        return sign | 0x7F80;
    }
    // r has at most 8 significant bits within f32's range: the f32 is exact and its low
    // 16 bits are zero.
    sign | ((r as f32).to_bits() >> 16) as u16
}

/// Encode f64 values as bytes of `dtype`.
pub(crate) fn encode_f64(values: &[f64], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => f32::to_bytes(&values.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        DType::F64 => f64::to_bytes(values),
        DType::U32 => u32::to_bytes(&values.iter().map(|&v| v as u32).collect::<Vec<_>>()),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| f64_to_bf16_bits(v).to_le_bytes())
            .collect(),
    }
}

/// Decode bytes of `dtype` into f64 values.
pub(crate) fn decode_f64(bytes: &[u8], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => f32::from_bytes(bytes).into_iter().map(f64::from).collect(),
        DType::F64 => f64::from_bytes(bytes),
        DType::U32 => u32::from_bytes(bytes).into_iter().map(f64::from).collect(),
        DType::BF16 => bf16::from_bytes(bytes)
            .into_iter()
            .map(Element::to_f64)
            .collect(),
    }
}
