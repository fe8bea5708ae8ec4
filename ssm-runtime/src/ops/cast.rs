//! Conversion between element types ([`Tensor::to_dtype`]).

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels;
use crate::tensor::Tensor;

/// Refuse a bf16 kernel on a device that cannot load or store bf16: CubeCL would fail
/// inside its device thread and leave the output unwritten.
pub(crate) fn require_bf16_device(op: &'static str, dtype: DType, device: &Device) -> Result<()> {
    if dtype == DType::BF16 && !device.has_bf16() {
        return Err(Error::dtype(
            op,
            format!(
                "{device} has no bf16 support (needs CUDA, or Vulkan with VK_KHR_shader_bfloat16)"
            ),
        ));
    }
    Ok(())
}

impl Tensor {
    /// This tensor converted to `dtype` (f32, f64 and bf16 in any direction), as a new
    /// contiguous tensor; narrowing rounds to nearest with ties to even. Converting to the
    /// tensor's own dtype returns `self` (sharing its buffer).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let op = "to_dtype";
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        for d in [self.dtype, dtype] {
            if !matches!(d, DType::F32 | DType::F64 | DType::BF16) {
                return Err(Error::dtype(
                    op,
                    format!(
                        "cannot convert {} to {dtype}: only f32, f64 and bf16 convert",
                        self.dtype
                    ),
                ));
            }
            require_bf16_device(op, d, &self.device)?;
        }
        let out = Tensor::empty(&self.shape, dtype, &self.device);
        kernels::cast::cast(self, &out);
        Ok(out)
    }
}
