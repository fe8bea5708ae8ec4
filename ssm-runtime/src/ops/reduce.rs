//! Reductions over any set of axes.

use crate::error::{Error, Result};
use crate::kernels::reduce::{ReduceOp, reduce};
use crate::ops::elementwise::require_float;
use crate::shape::{normalize_axes, normalize_axis, reduced_shape};
use crate::tensor::Tensor;

impl Tensor {
    /// Permute `axes` last and reduce them; returns (values, indices, output shape).
    fn reduce_axes(
        &self,
        op_name: &'static str,
        axes: &[isize],
        keepdim: bool,
        op: ReduceOp,
        scale: impl Fn(usize) -> Result<f64>,
        center: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        require_float(op_name, self)?;
        let axes = if axes.is_empty() {
            (0..self.rank()).collect()
        } else {
            normalize_axes(op_name, axes, self.rank())?
        };
        let count: usize = axes.iter().map(|&a| self.shape[a]).product();
        if count == 0 && !matches!(op, ReduceOp::Sum) {
            return Err(Error::arg(
                op_name,
                format!(
                    "cannot reduce an empty range (shape {:?}, axes {axes:?})",
                    self.shape
                ),
            ));
        }
        let kept: Vec<usize> = (0..self.rank()).filter(|d| !axes.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
        let view = self.permute(&perm)?;
        let (vals, idx) = reduce(&view, kept.len(), op, scale(count)?, center);
        let shape = reduced_shape(&self.shape, &axes, keepdim);
        Ok((
            vals.reshape(&shape)?,
            idx.map(|i| i.reshape(&shape)).transpose()?,
        ))
    }

    /// Sum over `axes` (all axes when empty).
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        Ok(self
            .reduce_axes("sum", axes, keepdim, ReduceOp::Sum, |_| Ok(1.0), None)?
            .0)
    }

    /// Sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }

    /// Mean over `axes` (all axes when empty).
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let scale = |n: usize| {
            if n == 0 {
                Err(Error::arg("mean", "mean of an empty range"))
            } else {
                Ok(1.0 / n as f64)
            }
        };
        Ok(self
            .reduce_axes("mean", axes, keepdim, ReduceOp::Sum, scale, None)?
            .0)
    }

    /// Maximum over `axes` (NaN propagates).
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        Ok(self
            .reduce_axes("max", axes, keepdim, ReduceOp::Max, |_| Ok(1.0), None)?
            .0)
    }

    /// Minimum over `axes` (NaN propagates).
    pub fn min(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        Ok(self
            .reduce_axes("min", axes, keepdim, ReduceOp::Min, |_| Ok(1.0), None)?
            .0)
    }

    /// Index (u32) of the first maximum along `axis`.
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        let ax = normalize_axis("argmax", axis, self.rank())? as isize;
        let (_, idx) = self.reduce_axes(
            "argmax",
            &[ax],
            keepdim,
            ReduceOp::ArgMax,
            |_| Ok(1.0),
            None,
        )?;
        Ok(idx.expect("arg reductions return indices"))
    }

    /// Index (u32) of the first minimum along `axis`.
    pub fn argmin(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        let ax = normalize_axis("argmin", axis, self.rank())? as isize;
        let (_, idx) = self.reduce_axes(
            "argmin",
            &[ax],
            keepdim,
            ReduceOp::ArgMin,
            |_| Ok(1.0),
            None,
        )?;
        Ok(idx.expect("arg reductions return indices"))
    }

    /// Variance over `axes` with Bessel-style `correction` (1 = unbiased, 0 = population),
    /// computed in two passes (mean, then centred sum of squares) for accuracy.
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        let mean = self.mean(axes, false)?.flatten()?;
        let scale = |n: usize| {
            if n <= correction {
                Err(Error::arg(
                    "var",
                    format!(
                        "{n} elements with correction {correction} leave no degrees of freedom"
                    ),
                ))
            } else {
                Ok(1.0 / (n - correction) as f64)
            }
        };
        Ok(self
            .reduce_axes("var", axes, keepdim, ReduceOp::SqDevSum, scale, Some(&mean))?
            .0)
    }

    /// Sum over the axes along which `shape` was broadcast to this tensor's shape, giving
    /// a tensor of `shape` (the gradient of a broadcast).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape.as_slice() {
            return Ok(self.clone());
        }
        let lead = self.rank().checked_sub(shape.len()).ok_or_else(|| {
            Error::shape(
                "sum_to_shape",
                format!(
                    "cannot reduce {:?} to the higher rank shape {shape:?}",
                    self.shape
                ),
            )
        })?;
        let mut axes = Vec::new();
        for d in 0..self.rank() {
            if d < lead || (shape[d - lead] == 1 && self.shape[d] != 1) {
                axes.push(d as isize);
            } else if shape[d - lead] != self.shape[d] {
                return Err(Error::shape(
                    "sum_to_shape",
                    format!("{shape:?} does not broadcast to {:?}", self.shape),
                ));
            }
        }
        if axes.is_empty() {
            return self.reshape(shape);
        }
        self.sum(&axes, false)?.reshape(shape)
    }
}
