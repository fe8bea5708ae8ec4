//! Autodiff tests: an f64 gradient check for every differentiable op, tape semantics
//! (accumulation, broadcasting, no_grad, freeing), and the optimizers.

mod gradchecks;
mod model_ops;
mod optim;
mod scan;
mod schedules;
mod tape;

use ssm_runtime::testing::{HostRng, device};
use ssm_runtime::{DType, Tensor};

/// Fresh f64 values in [lo, hi) with the given shape.
pub fn rand(r: &mut HostRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f64(&r.vec(n, lo, hi), shape, DType::F64, &device()).unwrap()
}

/// Fresh f64 values with |v| in [lo, hi) and random signs (away from kinks at 0).
pub fn rand_nonzero(r: &mut HostRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f64(&r.nonzero(n, lo, hi), shape, DType::F64, &device()).unwrap()
}
