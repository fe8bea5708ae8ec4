//! Resizing with PyTorch `F.interpolate` semantics: `nearest` (legacy), `nearest-exact`, and
//! linear interpolation along every spatial axis (linear / bilinear / trilinear), with
//! `align_corners` false or true, to an output size or by scale factors, and the exact
//! adjoint as backward. Coordinates are computed on the host in f64.

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

fn axis_table(
    inp: usize,
    out: usize,
    scale: Option<f64>,
    mode: ResizeMode,
    align_corners: bool,
) -> AxisTable {
    let given = scale.filter(|s| *s > 0.0).map(|s| 1.0 / s);
    let mut idx = Vec::with_capacity(out);
    let mut wt = Vec::with_capacity(out);
    let last = inp - 1;
    for o in 0..out {
        let of = o as f64;
        match mode {
            ResizeMode::Nearest | ResizeMode::NearestExact => {
                let s = given.unwrap_or(inp as f64 / out as f64);
                let src = if mode == ResizeMode::Nearest {
                    (of * s).floor()
                } else {
                    ((of + 0.5) * s).floor()
                };
                let i = (src.max(0.0) as usize).min(last) as u32;
                idx.push([i, i]);
                wt.push([1.0, 0.0]);
            }
            ResizeMode::Linear => {
                let src = if align_corners {
                    let s = if out > 1 {
                        last as f64 / (out - 1) as f64
                    } else {
                        0.0
                    };
                    s * of
                } else {
                    let s = given.unwrap_or(inp as f64 / out as f64);
                    (s * (of + 0.5) - 0.5).max(0.0)
                };
                let i0 = (src as usize).min(last);
                let lambda = (src - i0 as f64).clamp(0.0, 1.0);
                let i1 = if i0 < last { i0 + 1 } else { i0 };
                idx.push([i0 as u32, i1 as u32]);
                wt.push([1.0 - lambda, lambda]);
            }
        }
    }
    AxisTable { idx, wt }
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
        tables.push(axis_table(sp[a], output[a], scales[a], mode, align_corners));
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

fn check_size(op: &'static str, t: &Tensor) -> Result<()> {
    if t.buffer_len() > u32::MAX as usize {
        return Err(Error::arg(
            op,
            format!("tensor {:?} exceeds 2^32 elements", t.shape),
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
        let p = plan(op, &self.shape, to, mode, align_corners, layout)?;
        let (n, c, _) = layout.split(&self.shape);
        let out_shape = layout.shape(n, c, &p.output);
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
        let p = plan(op, input_shape, to, mode, align_corners, layout)?;
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
