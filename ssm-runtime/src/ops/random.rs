//! Seeded random tensors (see [`crate::kernels::random`] for the generator).

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::random::{Distribution, random};
use crate::tensor::Tensor;

fn check(op: &'static str, shape: &[usize], dtype: DType) -> Result<()> {
    crate::dtype::refuse_bf16(op, dtype)?;
    if !dtype.is_float() {
        return Err(Error::dtype(
            op,
            format!("random draws need a float dtype, got {dtype}"),
        ));
    }
    if shape.iter().product::<usize>() > u32::MAX as usize {
        return Err(Error::arg(
            op,
            format!("shape {shape:?} exceeds 2^32 elements"),
        ));
    }
    Ok(())
}

impl Tensor {
    /// Uniform on [low, high), element `i` a function of `(seed, i)` only.
    pub fn rand_uniform(
        shape: &[usize],
        low: f64,
        high: f64,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        check("rand_uniform", shape, dtype)?;
        let out = Tensor::empty(shape, dtype, device);
        random(&out, Distribution::Uniform, low, high, seed);
        Ok(out)
    }

    /// Normal with the given mean and standard deviation (Box–Muller).
    pub fn rand_normal(
        shape: &[usize],
        mean: f64,
        std: f64,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        check("rand_normal", shape, dtype)?;
        let out = Tensor::empty(shape, dtype, device);
        random(&out, Distribution::Normal, mean, std, seed);
        Ok(out)
    }

    /// 1 with probability `p`, else 0 (dropout masks).
    pub fn bernoulli(
        shape: &[usize],
        p: f64,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        check("bernoulli", shape, dtype)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::arg(
                "bernoulli",
                format!("probability {p} is outside [0, 1]"),
            ));
        }
        let out = Tensor::empty(shape, dtype, device);
        random(&out, Distribution::Bernoulli, p, 0.0, seed);
        Ok(out)
    }
}
