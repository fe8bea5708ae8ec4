//! In-place optimizer steps on device tensors.

use crate::error::{Error, Result};
use crate::kernels::optim::{OptimRule, OptimScalars, step};
use crate::ops::elementwise::require_float;
use crate::tensor::{Tensor, same_device};

/// Update `param` (and its state `s1`, `s2`) in place from `grad` with one fused launch.
/// `param`, `s1` and `s2` must be contiguous tensors that own their buffer from element 0
/// (as parameters and optimizer state are); `grad` must be contiguous.
pub fn optimizer_step(
    param: &Tensor,
    grad: &Tensor,
    s1: &Tensor,
    s2: &Tensor,
    rule: OptimRule,
    scalars: &OptimScalars,
) -> Result<()> {
    let op = "optimizer_step";
    require_float(op, param)?;
    for (name, t) in [("grad", grad), ("state 1", s1), ("state 2", s2)] {
        same_device(op, param, t)?;
        if t.dtype != param.dtype || t.shape != param.shape {
            return Err(Error::shape(
                op,
                format!(
                    "{name} is {} {:?} but the parameter is {} {:?}",
                    t.dtype, t.shape, param.dtype, param.shape
                ),
            ));
        }
    }
    for (name, t) in [("parameter", param), ("state 1", s1), ("state 2", s2)] {
        if !t.is_contiguous() || t.offset != 0 {
            return Err(Error::arg(
                op,
                format!("{name} must be a contiguous tensor at offset 0"),
            ));
        }
    }
    let grad = grad.contiguous()?;
    step(param, &grad, s1, s2, rule, scalars);
    Ok(())
}
