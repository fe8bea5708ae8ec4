//! Fused scaled dot-product attention (see [`crate::kernels::attention`]).

use crate::error::{Error, Result};
use crate::kernels::attention as k;
use crate::ops::elementwise::require_float;
use crate::tensor::{Tensor, same_device};

/// Largest head dimension of the fused kernel (held in registers per thread).
pub const MAX_HEAD_DIM: usize = 256;

fn check(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    require_float(op, q)?;
    for (name, t) in [("key", k), ("value", v)] {
        same_device(op, q, t)?;
        if t.dtype != q.dtype {
            return Err(Error::dtype(
                op,
                format!("{name} is {} but query is {}", t.dtype, q.dtype),
            ));
        }
    }
    let ok = q.rank() == 4
        && k.rank() == 4
        && v.rank() == 4
        && q.shape[..2] == k.shape[..2]
        && k.shape[..3] == v.shape[..3]
        && q.shape[3] == k.shape[3];
    if !ok {
        return Err(Error::shape(
            op,
            format!(
                "expected query [B, H, Lq, D], key [B, H, Lk, D], value [B, H, Lk, Dv]; got {:?}, {:?}, {:?}",
                q.shape, k.shape, v.shape
            ),
        ));
    }
    if q.shape[3] == 0 || q.shape[3] > MAX_HEAD_DIM || v.shape[3] == 0 || v.shape[3] > MAX_HEAD_DIM
    {
        return Err(Error::shape(
            op,
            format!(
                "head dimensions {} and {} must be in 1..={MAX_HEAD_DIM}",
                q.shape[3], v.shape[3]
            ),
        ));
    }
    Ok(())
}

impl Tensor {
    /// `softmax(Q·Kᵀ·scale)·V` for `[B, H, L, D]` tensors (scale defaults to 1/√D), fused:
    /// no `L × L` matrix is stored. Returns the output `[B, H, Lq, Dv]` and the row
    /// log-sum-exp `[B, H, Lq]` that [`attention_backward`](Self::attention_backward) needs.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: Option<f64>,
    ) -> Result<(Tensor, Tensor)> {
        check("attention", q, k, v)?;
        if k.shape[2] == 0 {
            return Err(Error::shape("attention", "keys are empty"));
        }
        let s = scale.unwrap_or(1.0 / (q.shape[3] as f64).sqrt());
        Ok(k::forward(q, k, v, s))
    }

    /// Gradients (dQ, dK, dV) of [`attention`](Self::attention) from the output gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        scale: Option<f64>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "attention_backward";
        check(op, q, k, v)?;
        let out_shape = [q.shape[0], q.shape[1], q.shape[2], v.shape[3]];
        if out.shape != out_shape || dout.shape != out_shape || lse.shape != out_shape[..3] {
            return Err(Error::shape(
                op,
                format!(
                    "output {:?}, its gradient {:?} and lse {:?} must be {out_shape:?} and {:?}",
                    out.shape,
                    dout.shape,
                    lse.shape,
                    &out_shape[..3]
                ),
            ));
        }
        if q.shape[2] == 0 {
            // No query reads the keys: their gradients are zero (the kernels would leave
            // them unwritten).
            return Ok((q.zeros_like()?, k.zeros_like()?, v.zeros_like()?));
        }
        let s = scale.unwrap_or(1.0 / (q.shape[3] as f64).sqrt());
        let delta = dout.mul(out)?.sum(&[-1], false)?.contiguous()?;
        Ok(k::backward(q, k, v, dout, &lse.contiguous()?, &delta, s))
    }
}
