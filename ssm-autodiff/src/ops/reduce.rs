//! Reductions and their derivatives.

use ssm_runtime::shape::{normalize_axes, reduced_shape};
use ssm_runtime::{Result, Tensor};

use crate::var::Var;

impl Var {
    /// Axes actually reduced (all when `axes` is empty), sorted.
    fn reduced(&self, op: &'static str, axes: &[isize]) -> Result<Vec<usize>> {
        if axes.is_empty() {
            Ok((0..self.shape().len()).collect())
        } else {
            normalize_axes(op, axes, self.shape().len())
        }
    }

    /// Sum over `axes` (all when empty).
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Var> {
        let y = self.value().sum(axes, keepdim)?;
        let shape = self.shape().to_vec();
        let kept = reduced_shape(&shape, &self.reduced("sum", axes)?, true);
        Ok(Var::from_op("sum", y, &[self], move |g| {
            Ok(vec![Some(g.reshape(&kept)?.expand(&shape)?)])
        }))
    }

    /// Sum of all elements (rank 0).
    pub fn sum_all(&self) -> Result<Var> {
        self.sum(&[], false)
    }

    /// Mean over `axes` (all when empty).
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Var> {
        let y = self.value().mean(axes, keepdim)?;
        let shape = self.shape().to_vec();
        let red = self.reduced("mean", axes)?;
        let n: usize = red.iter().map(|&a| shape[a]).product();
        let kept = reduced_shape(&shape, &red, true);
        Ok(Var::from_op("mean", y, &[self], move |g| {
            Ok(vec![Some(
                g.mul_scalar(1.0 / n as f64)?
                    .reshape(&kept)?
                    .expand(&shape)?,
            )])
        }))
    }

    /// Maximum over `axes`; the gradient is shared evenly among tied maxima.
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Result<Var> {
        self.extreme("max", axes, keepdim, true)
    }

    /// Minimum over `axes`; the gradient is shared evenly among tied minima.
    pub fn min(&self, axes: &[isize], keepdim: bool) -> Result<Var> {
        self.extreme("min", axes, keepdim, false)
    }

    fn extreme(
        &self,
        name: &'static str,
        axes: &[isize],
        keepdim: bool,
        is_max: bool,
    ) -> Result<Var> {
        let y = if is_max {
            self.value().max(axes, keepdim)?
        } else {
            self.value().min(axes, keepdim)?
        };
        let x = self.value().clone();
        let red = self.reduced(name, axes)?;
        let kept = reduced_shape(x.shape(), &red, true);
        let yk = y.reshape(&kept)?;
        let ax: Vec<isize> = red.iter().map(|&a| a as isize).collect();
        Ok(Var::from_op(name, y, &[self], move |g| {
            let mask = x.eq(&yk)?;
            let count = mask.sum(&ax, true)?;
            let share = g.reshape(&kept)?.div(&count)?;
            Ok(vec![Some(mask.mul(&share)?)])
        }))
    }

    /// Variance over `axes` with `correction` (1 = unbiased).
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Result<Var> {
        let y = self.value().var(axes, correction, keepdim)?;
        let x = self.value().clone();
        let red = self.reduced("var", axes)?;
        let n: usize = red.iter().map(|&a| x.shape()[a]).product();
        let kept = reduced_shape(x.shape(), &red, true);
        let ax: Vec<isize> = red.iter().map(|&a| a as isize).collect();
        Ok(Var::from_op("var", y, &[self], move |g| {
            // d var / dx = 2 (x − mean) / (n − correction)
            let centred = x.sub(&x.mean(&ax, true)?)?;
            let scale = 2.0 / (n - correction) as f64;
            Ok(vec![Some(
                centred.mul(&g.reshape(&kept)?)?.mul_scalar(scale)?,
            )])
        }))
    }

    /// Index of the maximum along `axis` (not differentiable: a plain u32 tensor).
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.value().argmax(axis, keepdim)
    }
}
