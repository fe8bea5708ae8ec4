//! Fused optimizer updates: one launch updates a parameter and its state in place.
//!
//! Hyper-parameters are runtime scalars, so schedules that change the learning rate every
//! step reuse the compiled kernel.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::tensor::Tensor as SsmTensor;

/// Update rule.
#[derive(CubeType, Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum OptimRule {
    /// SGD with momentum (PyTorch semantics); `s1` is the momentum buffer.
    Sgd,
    /// SGD with Nesterov momentum.
    SgdNesterov,
    /// Adam with L2 weight decay added to the gradient; `s1`, `s2` are the moments.
    Adam,
    /// AdamW: decoupled weight decay.
    AdamW,
}

/// Scalars of one step. Unused fields are ignored by a rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct OptimScalars {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// SGD momentum or Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// SGD dampening.
    pub dampening: f64,
    /// 1 / (1 − β₁ᵗ) for Adam; for SGD, 1 on the first step (buffer starts at the gradient).
    pub corr1: f64,
    /// 1 / √(1 − β₂ᵗ) for Adam.
    pub corr2: f64,
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn optim_kernel<F: Float>(
    p: &mut Array<F>,
    g: &Array<F>,
    s1: &mut Array<F>,
    s2: &mut Array<F>,
    n: usize,
    g_off: usize,
    lr: InputScalar,
    wd: InputScalar,
    beta1: InputScalar,
    beta2: InputScalar,
    eps: InputScalar,
    one_minus_b1: InputScalar,
    one_minus_b2: InputScalar,
    one_minus_damp: InputScalar,
    corr1: InputScalar,
    corr2: InputScalar,
    #[comptime] rule: OptimRule,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < n {
        let one = F::new(1.0);
        let lr = lr.get::<F>();
        let wd = wd.get::<F>();
        let b1 = beta1.get::<F>();
        let pv = p[i];
        let gv = g[g_off + i];
        match rule {
            OptimRule::Sgd | OptimRule::SgdNesterov => {
                let gd = gv + wd * pv;
                // corr1 == 1 marks the first step: the buffer starts at the gradient.
                let first = corr1.get::<F>() == one;
                let buf = select(first, gd, b1 * s1[i] + one_minus_damp.get::<F>() * gd);
                s1[i] = buf;
                let d = if comptime![rule == OptimRule::SgdNesterov] {
                    gd + b1 * buf
                } else {
                    buf
                };
                p[i] = pv - lr * d;
            }
            OptimRule::Adam | OptimRule::AdamW => {
                let b2 = beta2.get::<F>();
                let is_adamw = comptime![rule == OptimRule::AdamW];
                let gd = if is_adamw { gv } else { gv + wd * pv };
                let pd = if is_adamw { pv * (one - lr * wd) } else { pv };
                let m = b1 * s1[i] + one_minus_b1.get::<F>() * gd;
                let v = b2 * s2[i] + one_minus_b2.get::<F>() * gd * gd;
                s1[i] = m;
                s2[i] = v;
                let denom = F::sqrt(v) * corr2.get::<F>() + eps.get::<F>();
                p[i] = pd - lr * corr1.get::<F>() * m / denom;
            }
        }
    }
}

/// Apply one update in place. `p`, `s1`, `s2` are contiguous with offset 0; `g` is
/// contiguous with p's shape (the caller checked).
pub(crate) fn step(
    p: &SsmTensor,
    g: &SsmTensor,
    s1: &SsmTensor,
    s2: &SsmTensor,
    rule: OptimRule,
    s: &OptimScalars,
) {
    let n = p.numel();
    if n == 0 {
        return;
    }
    let dtype = p.dtype.storage();
    let sc = |v: f64| InputScalar::new(v, dtype);
    dispatch!(p.device, c => {
        let (count, dim) = elemwise_grid(c, n);
        record_launch();
        unsafe {
            optim_kernel::launch_unchecked(
                c, count, dim,
                p.array_arg(p.buffer_len()),
                g.array_arg(g.buffer_len()),
                s1.array_arg(s1.buffer_len()),
                s2.array_arg(s2.buffer_len()),
                n, g.offset,
                sc(s.lr), sc(s.weight_decay), sc(s.beta1), sc(s.beta2), sc(s.eps),
                // 1 − β in f64 first: in f32, 1 − 0.999f32 is off by 1.3e-5 relative.
                sc(1.0 - s.beta1), sc(1.0 - s.beta2), sc(1.0 - s.dampening),
                sc(s.corr1), sc(s.corr2),
                rule, dtype,
            )
        }
    })
}
