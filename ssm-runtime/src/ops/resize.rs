//! Resizing with PyTorch `F.interpolate` semantics: `nearest` (legacy), `nearest-exact`, and
//! linear interpolation along every spatial axis (linear / bilinear / trilinear), with
//! `align_corners` false or true, to an output size or by scale factors, and the exact
//! adjoint as backward. Source coordinates are computed on the host in the precision
//! PyTorch's CUDA kernels use, so the indices (and linear weights) agree with them bit for
//! bit, ties included: f32 for `nearest` / `nearest-exact` whatever the data type, and the
//! data's own precision (f32 or f64) for linear modes. (PyTorch's CPU `nearest` also
//! special-cases an output of the input's size or twice it; its CUDA kernels, followed
//! here, do not.)

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::resize::{self as k, RGeo};
use crate::ops::conv::{Layout, layout_strides, pad3};
use crate::ops::elementwise::require_float;
use crate::tensor::Tensor;

/// Interpolation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    /// PyTorch `nearest`: source `floor(o·scale)`.
    Nearest,
    /// PyTorch `nearest-exact`: source `floor((o + ½)·scale)`.
    NearestExact,
    /// Linear along each spatial axis (`linear`, `bilinear`, `trilinear`).
    Linear,
}

/// Target of a resize.
#[derive(Debug, Clone, PartialEq)]
pub enum ResizeTo {
    /// Output spatial size (one value broadcasts).
    Size(Vec<usize>),
    /// Scale factor per spatial axis (one value broadcasts); the output is
    /// `floor(input·scale)` and coordinates use `1/scale`, as PyTorch without
    /// `recompute_scale_factor`.
    Scale(Vec<f64>),
}

/// Per-axis gather table: for each output index two (source index, weight) pairs.
struct AxisTable {
    idx: Vec<[u32; 2]>,
    wt: Vec<[f64; 2]>,
}

/// The float type source coordinates are computed in (f32 or f64).
trait Coord:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(v: f64) -> Self;
    fn idx(i: usize) -> Self;
    fn wide(self) -> f64;
}

impl Coord for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn idx(i: usize) -> Self {
        i as f32
    }
    fn wide(self) -> f64 {
        f64::from(self)
    }
}

impl Coord for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn idx(i: usize) -> Self {
        i as f64
    }
    fn wide(self) -> f64 {
        self
    }
}

/// PyTorch's `compute_scales_value`: `1/scale` when a factor is given, else `in/out`, in `P`.
fn source_step<P: Coord>(inp: usize, out: usize, scale: Option<f64>) -> P {
    match scale.filter(|s| *s > 0.0) {
        Some(s) => P::of(1.0 / s),
        None => P::idx(inp) / P::idx(out),
    }
}

/// Nearest source index of every output index, in f32 as PyTorch's CUDA kernels:
/// `floorf(o·s)` (`nearest`), `floorf((o + ½)·s)` with the product taken in f64 and
/// rounded to f32 (`nearest-exact`), clamped to the last input index.
fn nearest_table(inp: usize, out: usize, scale: Option<f64>, exact: bool) -> AxisTable {
    let s: f32 = source_step(inp, out, scale);
    let (idx, wt) = (0..out)
        .map(|o| {
            let src = if exact {
                (((o as f64 + 0.5) * f64::from(s)) as f32).floor()
            } else {
                (o as f32 * s).floor()
            };
            let i = (src.max(0.0) as usize).min(inp - 1) as u32;
            ([i, i], [1.0, 0.0])
        })
        .unzip();
    AxisTable { idx, wt }
}

/// Linear source indices and weights in `P` (PyTorch's `area_pixel_compute_scale` and
/// `area_pixel_compute_source_index`): the lower index truncates the coordinate, its
/// weight is `1 − λ` with `λ` the remainder, and the upper index stays on the last input.
fn linear_table<P: Coord>(
    inp: usize,
    out: usize,
    scale: Option<f64>,
    align_corners: bool,
) -> AxisTable {
    let last = inp - 1;
    let (zero, half, one) = (P::of(0.0), P::of(0.5), P::of(1.0));
    let step: P = if !align_corners {
        source_step(inp, out, scale)
    } else if out > 1 {
        P::idx(last) / P::idx(out - 1)
    } else {
        zero
    };
    let (idx, wt) = (0..out)
        .map(|o| {
            let src = if align_corners {
                step * P::idx(o)
            } else {
                let c = step * (P::idx(o) + half) - half;
                if c < zero { zero } else { c }
            };
            let i0 = (src.wide() as usize).min(last);
            let lambda = src - P::idx(i0);
            let i1 = if i0 < last { i0 + 1 } else { i0 };
            (
                [i0 as u32, i1 as u32],
                [(one - lambda).wide(), lambda.wide()],
            )
        })
        .unzip();
    AxisTable { idx, wt }
}

fn axis_table(
    inp: usize,
    out: usize,
    scale: Option<f64>,
    mode: ResizeMode,
    align_corners: bool,
    dtype: DType,
) -> AxisTable {
    match mode {
        ResizeMode::Nearest => nearest_table(inp, out, scale, false),
        ResizeMode::NearestExact => nearest_table(inp, out, scale, true),
        ResizeMode::Linear if dtype == DType::F64 => {
            linear_table::<f64>(inp, out, scale, align_corners)
        }
        ResizeMode::Linear => linear_table::<f32>(inp, out, scale, align_corners),
    }
}

/// The resolved problem: per-axis tables (d, h, w), padded to three axes.
struct Plan {
    input: Vec<usize>,
    output: Vec<usize>,
    tables: Vec<AxisTable>,
    taps: usize,
}

fn plan(
    op: &'static str,
    input_shape: &[usize],
    to: &ResizeTo,
    mode: ResizeMode,
    align_corners: bool,
    layout: Layout,
    dtype: DType,
) -> Result<Plan> {
    let r = input_shape.len();
    if !(3..=5).contains(&r) {
        return Err(Error::shape(
            op,
            format!(
                "input {input_shape:?} must have rank 3, 4 or 5 (batch, channels, 1-3 spatial axes)"
            ),
        ));
    }
    let nd = r - 2;
    if align_corners && mode != ResizeMode::Linear {
        return Err(Error::arg(op, "align_corners applies to linear modes only"));
    }
    let (_, _, sp) = layout.split(input_shape);
    if sp.contains(&0) {
        return Err(Error::shape(
            op,
            format!("input {input_shape:?} has an empty spatial axis"),
        ));
    }
    let (output, scales): (Vec<usize>, Vec<Option<f64>>) = match to {
        ResizeTo::Size(s) => {
            let s = match s.len() {
                1 => vec![s[0]; nd],
                n if n == nd => s.clone(),
                n => {
                    return Err(Error::arg(
                        op,
                        format!("size has {n} values for {nd} spatial axes"),
                    ));
                }
            };
            (s, vec![None; nd])
        }
        ResizeTo::Scale(f) => {
            let f = match f.len() {
                1 => vec![f[0]; nd],
                n if n == nd => f.clone(),
                n => {
                    return Err(Error::arg(
                        op,
                        format!("scale has {n} values for {nd} spatial axes"),
                    ));
                }
            };
            if f.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(Error::arg(
                    op,
                    format!("scale factors {f:?} must be positive"),
                ));
            }
            (
                sp.iter()
                    .zip(&f)
                    .map(|(&i, &s)| (i as f64 * s).floor() as usize)
                    .collect(),
                f.iter().map(|&s| Some(s)).collect(),
            )
        }
    };
    if output.contains(&0) {
        return Err(Error::shape(
            op,
            format!("output size {output:?} has an empty axis (input {input_shape:?})"),
        ));
    }
    let mut tables: Vec<AxisTable> = (0..3 - nd)
        .map(|_| AxisTable {
            idx: vec![[0, 0]],
            wt: vec![[1.0, 0.0]],
        })
        .collect();
    for a in 0..nd {
        tables.push(axis_table(
            sp[a],
            output[a],
            scales[a],
            mode,
            align_corners,
            dtype,
        ));
    }
    Ok(Plan {
        input: sp,
        output,
        tables,
        taps: if mode == ResizeMode::Linear { 2 } else { 1 },
    })
}

/// Sizes padded to three axes, as the kernel's `u32`s.
fn pad3u(v: &[usize]) -> [u32; 3] {
    pad3(v, 1).map(|x| x as u32)
}

/// (n, c, d, h, w) strides as the kernel's `u32`s.
fn strides5(strides: &[usize], layout: Layout) -> [u32; 5] {
    layout_strides(strides, layout).map(|x| x as u32)
}

/// The kernels address elements with `u32`s.
fn check_size(op: &'static str, t: &Tensor) -> Result<()> {
    if t.buffer_len() > u32::MAX as usize {
        return Err(Error::arg(
            op,
            format!("tensor {:?} exceeds 2^32 elements", t.shape),
        ));
    }
    Ok(())
}

/// [`check_size`] for a tensor about to be created.
fn check_elems(op: &'static str, shape: &[usize]) -> Result<()> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n.is_none_or(|n| n > u32::MAX as usize) {
        return Err(Error::arg(
            op,
            format!("result {shape:?} would exceed 2^32 elements"),
        ));
    }
    Ok(())
}

impl Tensor {
    /// Resize the spatial axes (PyTorch `F.interpolate`).
    pub fn resize(
        &self,
        to: &ResizeTo,
        mode: ResizeMode,
        align_corners: bool,
        layout: Layout,
    ) -> Result<Tensor> {
        let op = "resize";
        require_float(op, self)?;
        check_size(op, self)?;
        let p = plan(op, &self.shape, to, mode, align_corners, layout, self.dtype)?;
        let (n, c, _) = layout.split(&self.shape);
        let out_shape = layout.shape(n, c, &p.output);
        check_elems(op, &out_shape)?;
        let y = Tensor::empty(&out_shape, self.dtype, &self.device);
        let mut idx = Vec::new();
        let mut wt = Vec::new();
        let mut tab = [0u32; 3];
        for (a, t) in p.tables.iter().enumerate() {
            tab[a] = (idx.len() / 2) as u32;
            for (i, w) in t.idx.iter().zip(&t.wt) {
                idx.extend_from_slice(i);
                wt.extend_from_slice(w);
            }
        }
        let idx_t = Tensor::from_slice(&idx, &[idx.len()], &self.device)?;
        let wt_t = Tensor::from_f64(&wt, &[wt.len()], self.dtype, &self.device)?;
        let geo = RGeo {
            channels: c as u32,
            src: pad3u(&p.input),
            ss: strides5(&self.strides, layout),
            dst: pad3u(&p.output),
            tab,
        };
        k::forward(
            self,
            &idx_t,
            &wt_t,
            &y,
            &geo,
            p.taps,
            layout == Layout::ChannelsLast,
        );
        Ok(y)
    }

    /// Input gradient of [`resize`](Self::resize) (the adjoint of the interpolation).
    pub fn resize_backward(
        dy: &Tensor,
        input_shape: &[usize],
        to: &ResizeTo,
        mode: ResizeMode,
        align_corners: bool,
        layout: Layout,
    ) -> Result<Tensor> {
        let op = "resize_backward";
        require_float(op, dy)?;
        check_size(op, dy)?;
        let p = plan(op, input_shape, to, mode, align_corners, layout, dy.dtype)?;
        check_elems(op, input_shape)?;
        let (n, c, _) = layout.split(input_shape);
        let out_shape = layout.shape(n, c, &p.output);
        if dy.shape != out_shape {
            return Err(Error::shape(
                op,
                format!(
                    "gradient {:?} does not match the resized shape {out_shape:?}",
                    dy.shape
                ),
            ));
        }
        // Transposed tables: for each input index, the (output index, weight) entries.
        let in3 = pad3u(&p.input);
        let mut ptr = Vec::new();
        let mut ent = Vec::new();
        let mut ewt = Vec::new();
        let mut tab = [0u32; 3];
        for (a, t) in p.tables.iter().enumerate() {
            let len = in3[a] as usize;
            let mut lists: Vec<Vec<(u32, f64)>> = vec![Vec::new(); len];
            for (o, (ii, ww)) in t.idx.iter().zip(&t.wt).enumerate() {
                for j in 0..p.taps {
                    if ww[j] != 0.0 {
                        lists[ii[j] as usize].push((o as u32, ww[j]));
                    }
                }
            }
            tab[a] = ptr.len() as u32;
            for l in &lists {
                ptr.push(ent.len() as u32);
                for &(o, w) in l {
                    ent.push(o);
                    ewt.push(w);
                }
            }
            ptr.push(ent.len() as u32);
        }
        if ent.is_empty() {
            ent.push(0);
            ewt.push(0.0);
        }
        let ptr_t = Tensor::from_slice(&ptr, &[ptr.len()], &dy.device)?;
        let ent_t = Tensor::from_slice(&ent, &[ent.len()], &dy.device)?;
        let ewt_t = Tensor::from_f64(&ewt, &[ewt.len()], dy.dtype, &dy.device)?;
        let dx = Tensor::empty(input_shape, dy.dtype, &dy.device);
        let geo = RGeo {
            channels: c as u32,
            src: pad3u(&p.output),
            ss: strides5(&dy.strides, layout),
            dst: in3,
            tab,
        };
        k::backward(
            dy,
            &ptr_t,
            &ent_t,
            &ewt_t,
            &dx,
            &geo,
            layout == Layout::ChannelsLast,
        );
        Ok(dx)
    }
}
