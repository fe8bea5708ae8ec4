//! Element types of device tensors.

use cubecl::ir::{ElemType, FloatKind, StorageType, UIntKind};

/// The element type of a [`Tensor`](crate::Tensor).
///
/// Floating-point ops accept `F32` and `F64`; `U32` holds indices (`argmax`). Half
/// precision (`F16`, `BF16` storage with f32 compute) is planned and will be added here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary64 (gradient checks and references).
    F64,
    /// Unsigned 32-bit integer (indices).
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F64 => 8,
        }
    }

    /// Whether floating-point math is defined on this dtype.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Lower-case name, as in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U32 => "u32",
        }
    }

    pub(crate) fn storage(self) -> StorageType {
        StorageType::Scalar(match self {
            DType::F32 => ElemType::Float(FloatKind::F32),
            DType::F64 => ElemType::Float(FloatKind::F64),
            DType::U32 => ElemType::UInt(UIntKind::U32),
        })
    }
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
    /// Narrow from f64 (rounding for f32, truncation for u32).
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

/// Encode f64 values as bytes of `dtype`.
pub(crate) fn encode_f64(values: &[f64], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => f32::to_bytes(&values.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        DType::F64 => f64::to_bytes(values),
        DType::U32 => u32::to_bytes(&values.iter().map(|&v| v as u32).collect::<Vec<_>>()),
    }
}

/// Decode bytes of `dtype` into f64 values.
pub(crate) fn decode_f64(bytes: &[u8], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => f32::from_bytes(bytes).into_iter().map(f64::from).collect(),
        DType::F64 => f64::from_bytes(bytes),
        DType::U32 => u32::from_bytes(bytes).into_iter().map(f64::from).collect(),
    }
}
