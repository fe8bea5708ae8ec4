//! Batched matrix products.

use crate::error::{Error, Result};
use crate::kernels::matmul::{MatmulImpl, matmul};
use crate::ops::elementwise::require_float;
use crate::shape::broadcast_shapes;
use crate::tensor::{Tensor, same_device};

impl Tensor {
    /// `self @ other` for `[..., M, K] @ [..., K, N]` with broadcast batch axes. Transposed
    /// views (e.g. `b.transpose(-1, -2)?`) are read in place.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_with(other, MatmulImpl::Auto).map(|(t, _)| t)
    }

    /// [`matmul`](Self::matmul) with an explicit implementation; returns the one that ran.
    pub fn matmul_with(&self, other: &Tensor, which: MatmulImpl) -> Result<(Tensor, MatmulImpl)> {
        let op = "matmul";
        same_device(op, self, other)?;
        require_float(op, self)?;
        if self.dtype != other.dtype {
            return Err(Error::dtype(
                op,
                format!("operands are {} and {}", self.dtype, other.dtype),
            ));
        }
        if self.rank() < 2 || other.rank() < 2 {
            return Err(Error::shape(
                op,
                format!(
                    "operands need rank >= 2 (unsqueeze vectors), got {:?} and {:?}",
                    self.shape, other.shape
                ),
            ));
        }
        let (ra, rb) = (self.rank(), other.rank());
        let (m, k) = (self.shape[ra - 2], self.shape[ra - 1]);
        let (k2, n) = (other.shape[rb - 2], other.shape[rb - 1]);
        if k != k2 {
            return Err(Error::shape(
                op,
                format!(
                    "inner sizes differ: {:?} @ {:?} ({k} vs {k2})",
                    self.shape, other.shape
                ),
            ));
        }
        let batch = broadcast_shapes(op, &self.shape[..ra - 2], &other.shape[..rb - 2])?;
        let mut out_shape = batch.clone();
        out_shape.extend([m, n]);
        let a = self.expand(&[batch.as_slice(), &[m, k]].concat())?;
        let b = other.expand(&[batch.as_slice(), &[k, n]].concat())?;
        let out = Tensor::empty(&out_shape, self.dtype, &self.device);
        if k == 0 {
            return Ok((
                Tensor::zeros(&out_shape, self.dtype, &self.device)?,
                MatmulImpl::Tiled,
            ));
        }
        let ran = matmul(&a, &b, &out, which).map_err(|e| Error::kernel(op, e))?;
        Ok((out, ran))
    }
}
