//! Average, max and global average pooling (1-D to 3-D, either [`Layout`]) with their
//! input gradients. Semantics follow PyTorch's `avg_poolNd` / `max_poolNd` with
//! `ceil_mode=False` and dilation 1: zero padding of at most half the window, the average
//! divided by the full window (`count_include_pad`, the default) or by the number of real
//! elements, the max over real elements with NaN propagating and the first maximum (or the
//! last NaN) reported (as a flat spatial index into the input, PyTorch's `return_indices`).

use crate::DType;
use crate::error::Result as R;
use crate::error::{Error, Result};
use crate::kernels::conv::Geo;
use crate::kernels::pool as k;
use crate::ops::conv::{Layout, layout_strides, pad3, per_axis};
use crate::ops::elementwise::require_float;
use crate::shape::contiguous_strides;
use crate::tensor::{Tensor, same_device};

/// Window of a pooling op (per spatial axis; one value broadcasts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Window size.
    pub kernel: Vec<usize>,
    /// Stride (empty: the window size).
    pub stride: Vec<usize>,
    /// Zero padding on both sides (at most half the window).
    pub padding: Vec<usize>,
    /// Average pooling divides by the whole window including padding (PyTorch default).
    pub count_include_pad: bool,
    /// Activation layout.
    pub layout: Layout,
}

impl PoolSpec {
    /// A window of `kernel` with stride = window, no padding, channels-first.
    pub fn new(kernel: &[usize]) -> Self {
        PoolSpec {
            kernel: kernel.to_vec(),
            stride: Vec::new(),
            padding: vec![0],
            count_include_pad: true,
            layout: Layout::ChannelsFirst,
        }
    }
    /// Set the stride.
    pub fn stride(mut self, s: &[usize]) -> Self {
        self.stride = s.to_vec();
        self
    }
    /// Set the padding.
    pub fn pad(mut self, p: &[usize]) -> Self {
        self.padding = p.to_vec();
        self
    }
    /// Divide averages by the number of real (unpadded) elements.
    pub fn exclude_pad(mut self) -> Self {
        self.count_include_pad = false;
        self
    }
    /// Set the layout.
    pub fn layout(mut self, l: Layout) -> Self {
        self.layout = l;
        self
    }
}

/// Resolved pooling: output shape and the kernel geometry.
fn resolve(op: &'static str, input: &[usize], spec: &PoolSpec) -> R<(Vec<usize>, Geo)> {
    let r = input.len();
    if !(3..=5).contains(&r) {
        return Err(Error::shape(
            op,
            format!("input {input:?} must have rank 3, 4 or 5 (batch, channels, 1-3 spatial axes)"),
        ));
    }
    let nd = r - 2;
    let (n, c, sp) = spec.layout.split(input);
    let kernel = per_axis(op, "kernel", &spec.kernel, nd)?;
    let stride = if spec.stride.is_empty() {
        kernel.clone()
    } else {
        per_axis(op, "stride", &spec.stride, nd)?
    };
    let pad = per_axis(op, "padding", &spec.padding, nd)?;
    let mut out = Vec::with_capacity(nd);
    for i in 0..nd {
        if kernel[i] == 0 || stride[i] == 0 {
            return Err(Error::arg(
                op,
                format!("kernel {kernel:?} and stride {stride:?} must be positive"),
            ));
        }
        if 2 * pad[i] > kernel[i] {
            return Err(Error::arg(
                op,
                format!("padding {pad:?} must be at most half the window {kernel:?}"),
            ));
        }
        if sp[i] + 2 * pad[i] < kernel[i] {
            return Err(Error::shape(
                op,
                format!(
                    "spatial axis {i}: input {} (padding {}) is smaller than the window {}",
                    sp[i], pad[i], kernel[i]
                ),
            ));
        }
        out.push((sp[i] + 2 * pad[i] - kernel[i]) / stride[i] + 1);
    }
    let out_shape = spec.layout.shape(n, c, &out);
    let geo = Geo {
        src: pad3(&sp, 1),
        ss: [0; 5],
        dst: pad3(&out, 1),
        sd: layout_strides(&contiguous_strides(&out_shape), spec.layout),
        k: pad3(&kernel, 1),
        sw: [0; 5],
        w_group: 0,
        stride: pad3(&stride, 1),
        pad: pad3(&pad, 0),
        dil: [1; 3],
        c_red: 1,
        c_out: 1,
        groups: c as i32,
        batch: n as i32,
    };
    Ok((out_shape, geo))
}

impl Tensor {
    /// Average pooling.
    pub fn avg_pool(&self, spec: &PoolSpec) -> Result<Tensor> {
        Ok(self.pool("avg_pool", spec, false)?.0)
    }

    /// Max pooling; returns the maxima and their flat spatial indices (u32) in the input.
    pub fn max_pool(&self, spec: &PoolSpec) -> Result<(Tensor, Tensor)> {
        self.pool("max_pool", spec, true)
    }

    fn pool(&self, op: &'static str, spec: &PoolSpec, is_max: bool) -> Result<(Tensor, Tensor)> {
        require_float(op, self)?;
        let (out_shape, mut geo) = resolve(op, &self.shape, spec)?;
        geo.ss = layout_strides(&self.strides, spec.layout);
        let y = Tensor::empty(&out_shape, self.dtype, &self.device);
        let idx = Tensor::empty(
            if is_max { &out_shape } else { &[1][..] },
            DType::U32,
            &self.device,
        );
        k::forward(
            self,
            &y,
            &idx,
            &geo,
            is_max,
            spec.count_include_pad,
            spec.layout == Layout::ChannelsLast,
        );
        Ok((y, idx))
    }

    /// Input gradient of [`avg_pool`](Self::avg_pool).
    pub fn avg_pool_backward(
        dy: &Tensor,
        input_shape: &[usize],
        spec: &PoolSpec,
    ) -> Result<Tensor> {
        let idx = Tensor::empty(&[1], DType::U32, &dy.device);
        Self::pool_backward("avg_pool_backward", dy, &idx, input_shape, spec, false)
    }

    /// Input gradient of [`max_pool`](Self::max_pool) from its saved indices.
    pub fn max_pool_backward(
        dy: &Tensor,
        indices: &Tensor,
        input_shape: &[usize],
        spec: &PoolSpec,
    ) -> Result<Tensor> {
        let op = "max_pool_backward";
        same_device(op, dy, indices)?;
        if indices.dtype != DType::U32 || indices.shape != dy.shape {
            return Err(Error::shape(
                op,
                format!(
                    "indices are {} {:?}; expected u32 {:?} like the gradient",
                    indices.dtype, indices.shape, dy.shape
                ),
            ));
        }
        Self::pool_backward(op, dy, &indices.contiguous()?, input_shape, spec, true)
    }

    fn pool_backward(
        op: &'static str,
        dy: &Tensor,
        idx: &Tensor,
        input_shape: &[usize],
        spec: &PoolSpec,
        is_max: bool,
    ) -> Result<Tensor> {
        require_float(op, dy)?;
        let (out_shape, geo) = resolve(op, input_shape, spec)?;
        if dy.shape != out_shape {
            return Err(Error::shape(
                op,
                format!(
                    "gradient {:?} does not match the pooled shape {out_shape:?} of input {input_shape:?}",
                    dy.shape
                ),
            ));
        }
        // dy must share the indices' (contiguous) strides.
        let dy = dy.contiguous()?;
        let dx = Tensor::empty(input_shape, dy.dtype, &dy.device);
        k::backward(
            &dy,
            idx,
            &dx,
            &geo,
            is_max,
            spec.count_include_pad,
            spec.layout == Layout::ChannelsLast,
        );
        Ok(dx)
    }

    /// Mean over the spatial axes: `[N, C]` (or `[N, C, 1, …]` / `[N, 1, …, C]` with
    /// `keepdim`).
    pub fn global_avg_pool(&self, layout: Layout, keepdim: bool) -> Result<Tensor> {
        let r = self.rank();
        if r < 3 {
            return Err(Error::shape(
                "global_avg_pool",
                format!("input {:?} has no spatial axis", self.shape),
            ));
        }
        let axes: Vec<isize> = layout.spatial_axes(r).iter().map(|&a| a as isize).collect();
        self.mean(&axes, keepdim)
    }
}
