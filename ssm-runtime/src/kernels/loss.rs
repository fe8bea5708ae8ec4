//! Pointwise loss terms whose stable forms are not compositions of the elementwise ops:
//! binary cross-entropy on logits and its derivative, one fused kernel each.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// Which pointwise loss term a launch computes.
#[derive(CubeType, Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LossOp {
    /// `max(x, 0) − x·t + ln(1 + e^(−|x|))` (x logits, t targets).
    BceLogits,
    /// `g·(σ(x) − t)`.
    BceLogitsGrad,
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn loss_kernel<F: Float>(
    x: &Tensor<F>,
    t: &Tensor<F>,
    g: &Tensor<F>,
    out: &mut Array<F>,
    x_off: usize,
    t_off: usize,
    g_off: usize,
    len: usize,
    #[comptime] op: LossOp,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut rem = i;
        let mut xi = x_off;
        let mut ti = t_off;
        let mut gi = g_off;
        let rank = x.rank();
        for k in 0..rank {
            let d = rank - 1 - k;
            let size = x.shape(d);
            let c = rem % size;
            rem /= size;
            xi += c * x.stride(d);
            ti += c * t.stride(d);
            gi += c * g.stride(d);
        }
        let xv = x[xi];
        let tv = t[ti];
        out[i] = match op {
            LossOp::BceLogits => {
                F::max(xv, F::new(0.0)) - xv * tv + math::log1p::<F>(math::exp::<F>(-F::abs(xv)))
            }
            LossOp::BceLogitsGrad => g[gi] * (math::sigmoid::<F>(xv) - tv),
        };
    }
}

/// `out = op(x, t, g)` with `t`, `g` broadcast to `x`'s shape (checked by the caller);
/// `out` is fresh and contiguous with `x`'s shape.
pub(crate) fn pointwise(x: &SsmTensor, t: &SsmTensor, g: &SsmTensor, out: &SsmTensor, op: LossOp) {
    let n = out.numel();
    if n == 0 {
        return;
    }
    dispatch!(x.device, c => {
        let (count, dim) = elemwise_grid(c, n);
        record_launch();
        unsafe {
            loss_kernel::launch_unchecked(
                c, count, dim,
                x.arg(),
                t.arg_broadcast(&x.shape),
                g.arg_broadcast(&x.shape),
                out.array_arg(n),
                x.offset, t.offset, g.offset, n,
                op,
                x.dtype.storage(),
            )
        }
    })
}
