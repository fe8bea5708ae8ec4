//! Views and copies; their derivatives route gradients back without arithmetic.

use ssm_runtime::shape::normalize_axis;
use ssm_runtime::{Result, Tensor};

use crate::var::Var;

impl Var {
    /// New shape, same data.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let y = self.value().reshape(shape)?;
        let orig = self.shape().to_vec();
        Ok(Var::from_op("reshape", y, &[self], move |g| {
            Ok(vec![Some(g.reshape(&orig)?)])
        }))
    }

    /// Reorder axes.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let y = self.value().permute(perm)?;
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(Var::from_op("permute", y, &[self], move |g| {
            Ok(vec![Some(g.permute(&inv)?)])
        }))
    }

    /// Swap two axes.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Var> {
        let y = self.value().transpose(a, b)?;
        Ok(Var::from_op("transpose", y, &[self], move |g| {
            Ok(vec![Some(g.transpose(a, b)?)])
        }))
    }

    /// Sub-range of one axis.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Var> {
        let y = self.value().narrow(axis, start, len)?;
        let (shape, dtype, device) = (
            self.shape().to_vec(),
            self.value().dtype(),
            self.value().device().clone(),
        );
        Ok(Var::from_op("narrow", y, &[self], move |g| {
            let full = Tensor::zeros(&shape, dtype, &device)?;
            full.narrow(axis, start, len)?.assign(g)?;
            Ok(vec![Some(full)])
        }))
    }

    /// One position of an axis, removing the axis.
    pub fn select(&self, axis: isize, index: usize) -> Result<Var> {
        let ax = normalize_axis("select", axis, self.shape().len())? as isize;
        self.narrow(ax, index, 1)?.squeeze(ax)
    }

    /// Broadcast to `shape`.
    pub fn expand(&self, shape: &[usize]) -> Result<Var> {
        let y = self.value().expand(shape)?;
        let orig = self.shape().to_vec();
        Ok(Var::from_op("expand", y, &[self], move |g| {
            Ok(vec![Some(g.sum_to_shape(&orig)?)])
        }))
    }

    /// Insert a size-1 axis.
    pub fn unsqueeze(&self, axis: isize) -> Result<Var> {
        let y = self.value().unsqueeze(axis)?;
        let orig = self.shape().to_vec();
        Ok(Var::from_op("unsqueeze", y, &[self], move |g| {
            Ok(vec![Some(g.reshape(&orig)?)])
        }))
    }

    /// Remove a size-1 axis.
    pub fn squeeze(&self, axis: isize) -> Result<Var> {
        let y = self.value().squeeze(axis)?;
        let orig = self.shape().to_vec();
        Ok(Var::from_op("squeeze", y, &[self], move |g| {
            Ok(vec![Some(g.reshape(&orig)?)])
        }))
    }

    /// Row-major copy (identity for gradients).
    pub fn contiguous(&self) -> Result<Var> {
        let y = self.value().contiguous()?;
        Ok(Var::from_op("contiguous", y, &[self], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }

    /// Join along `axis`.
    pub fn concat(vars: &[&Var], axis: isize) -> Result<Var> {
        let values: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
        let y = Tensor::concat(&values, axis)?;
        let ax = normalize_axis("concat", axis, y.rank())?;
        let sizes: Vec<usize> = vars.iter().map(|v| v.shape()[ax]).collect();
        let need = Var::needs(vars);
        Ok(Var::from_op("concat", y, vars, move |g| {
            let mut start = 0;
            let mut out = Vec::with_capacity(sizes.len());
            for (i, &len) in sizes.iter().enumerate() {
                out.push(
                    need[i]
                        .then(|| g.narrow(ax as isize, start, len))
                        .transpose()?,
                );
                start += len;
            }
            Ok(out)
        }))
    }
}
