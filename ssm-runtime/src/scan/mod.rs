//! The scan engine: fused selective scans along any set of scan paths.
//!
//! For every batch `b`, channel `d` and path `k` (walking positions `p_k(0), p_k(1), …` of
//! the grid), with `Δ = softplus(Δ_raw + bias_k)`:
//!
//! ```text
//! h_t = exp(Δ_t·A_k) ⊙ h_{t−1} + Δ_t·B_{k,t}·u_t        (N states)
//! y_k(p_k(t)) = C_{k,t}·h_t + D_k·u_t
//! out = merge_k(y_k) [⊙ silu(z)]                         (merge: sum or mean)
//! ```
//!
//! Inputs stay in canonical layout (`(B, Di, L)` with `L` the grid size, B/C as
//! `(B, K, G, N, L)`); paths are index maps ([`path`]). The forward saves only the state
//! at every chunk start; the backward recomputes the rest. See [`kernels`] for the
//! decomposition and [`reference`] for the f64 host oracle.

pub mod kernels;
pub mod path;
pub mod reference;

use cubecl::prelude::*;

use crate::device::{Device, DeviceKind, record_launch};
use crate::dispatch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::launch::elemwise_grid;
use crate::tensor::Tensor;
use kernels::{LANES, ScanDimsLaunch};
pub use path::{PATH_WORDS, PathMeta, ScanPath, presets};

/// How the outputs of the paths are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Merge {
    /// Sum over paths.
    #[default]
    Sum,
    /// Mean over paths.
    Mean,
}

/// The grid and the paths a scan walks, and how their outputs merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSpec {
    /// Spatial shape (1 to 3 axes); its size is the `L` of the inputs.
    pub grid: Vec<usize>,
    /// One entry per path (K paths).
    pub paths: Vec<ScanPath>,
    /// Merge of the K outputs.
    pub merge: Merge,
}

impl ScanSpec {
    /// A spec with sum merge.
    pub fn new(grid: &[usize], paths: Vec<ScanPath>) -> ScanSpec {
        ScanSpec {
            grid: grid.to_vec(),
            paths,
            merge: Merge::Sum,
        }
    }

    /// Use mean merge.
    pub fn mean(mut self) -> ScanSpec {
        self.merge = Merge::Mean;
        self
    }
}

/// The tensors of a scan (see the module docs for shapes).
#[derive(Debug, Clone, Copy)]
pub struct ScanInputs<'a> {
    /// `(B, Di, L)`.
    pub u: &'a Tensor,
    /// `(B, Di, L)` shared by the paths, or `(B, K, Di, L)` per path (pre-softplus).
    pub delta: &'a Tensor,
    /// `(K, Di, N)` (negative for a decaying state).
    pub a: &'a Tensor,
    /// `(B, K, G, N, L)`.
    pub b: &'a Tensor,
    /// `(B, K, G, N, L)`.
    pub c: &'a Tensor,
    /// `(K, Di)` skip weights.
    pub d: &'a Tensor,
    /// `(K, Di)` added to Δ_raw before softplus.
    pub delta_bias: &'a Tensor,
    /// Optional gate `(B, Di, L)`: `out = merged ⊙ silu(z)`.
    pub z: Option<&'a Tensor>,
}

/// Tuning knobs; `None` picks a default for the device and dtype. Tests use them to force
/// small chunks, several segments, or the shared-memory path on a device with plane ops.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Steps per lane per chunk (chunk = 32·items).
    pub items: Option<usize>,
    /// Logical warps (channels) per cube.
    pub warps: Option<usize>,
    /// Steps per segment (rounded up to whole chunks).
    pub segment_len: Option<usize>,
    /// Use plane shuffles (`Some(true)` fails on devices without plane operations).
    pub plane: Option<bool>,
}

/// Largest supported state size N.
pub const MAX_STATE: usize = 64;

/// Sizes, checked shapes and the launch plan of one scan.
#[derive(Debug, Clone)]
pub struct ScanPlan {
    batch: usize,
    paths: usize,
    channels: usize,
    state: usize,
    groups: usize,
    len: usize,
    delta_per_path: bool,
    items: usize,
    warps: usize,
    blocks: usize,
    segments: usize,
    seg_len: usize,
    seg_chunks: usize,
    plane: bool,
    strided: bool,
    dtype: DType,
    metas: Vec<u32>,
}

fn dims_err(what: &str, t: &Tensor, expected: String) -> Error {
    Error::shape(
        "selective_scan",
        format!("{what} has shape {:?}, expected {expected}", t.shape()),
    )
}

impl ScanPlan {
    /// Check the inputs against the spec and plan the launches.
    pub fn new(x: &ScanInputs, spec: &ScanSpec, opts: &ScanOptions) -> Result<ScanPlan> {
        let op = "selective_scan";
        let device = x.u.device();
        let dtype = x.u.dtype();
        if !dtype.is_float() {
            return Err(Error::dtype(
                op,
                format!("u is {dtype}; scans need f32 or f64"),
            ));
        }
        let mut all = vec![
            ("delta", x.delta),
            ("a", x.a),
            ("b", x.b),
            ("c", x.c),
            ("d", x.d),
            ("delta_bias", x.delta_bias),
        ];
        if let Some(z) = x.z {
            all.push(("z", z));
        }
        for (name, t) in &all {
            if t.dtype() != dtype {
                return Err(Error::dtype(
                    op,
                    format!("{name} is {} but u is {dtype}", t.dtype()),
                ));
            }
            if t.device() != device {
                return Err(Error::Device {
                    op,
                    msg: format!("{name} is on {} but u is on {device}", t.device()),
                });
            }
        }
        if spec.paths.is_empty() {
            return Err(Error::arg(op, "no scan paths given"));
        }
        if spec.grid.is_empty() || spec.grid.len() > 3 || spec.grid.contains(&0) {
            return Err(Error::arg(
                op,
                format!("grid {:?} must have 1 to 3 nonzero axes", spec.grid),
            ));
        }
        for (i, p) in spec.paths.iter().enumerate() {
            p.check(&spec.grid)
                .map_err(|e| Error::arg(op, format!("path {i}: {e}")))?;
        }
        let len: usize = spec.grid.iter().product();
        let k = spec.paths.len();
        let [batch, channels, l] = <[usize; 3]>::try_from(x.u.shape())
            .map_err(|_| dims_err("u", x.u, "(batch, channels, L)".into()))?;
        if l != len {
            return Err(dims_err(
                "u",
                x.u,
                format!("last axis = grid size {len} (grid {:?})", spec.grid),
            ));
        }
        let delta_per_path = match x.delta.shape() {
            s if s == [batch, channels, len] => false,
            s if s == [batch, k, channels, len] => true,
            _ => {
                return Err(dims_err(
                    "delta",
                    x.delta,
                    format!("[{batch}, {channels}, {len}] or [{batch}, {k}, {channels}, {len}]"),
                ));
            }
        };
        let [ka, da, state] = <[usize; 3]>::try_from(x.a.shape())
            .map_err(|_| dims_err("a", x.a, format!("[{k}, {channels}, N]")))?;
        if ka != k || da != channels || state == 0 || state > MAX_STATE {
            return Err(dims_err(
                "a",
                x.a,
                format!("[{k}, {channels}, N] with 1 <= N <= {MAX_STATE}"),
            ));
        }
        let groups = match x.b.shape() {
            [b0, k0, g, n0, l0]
                if *b0 == batch && *k0 == k && *n0 == state && *l0 == len && *g > 0 =>
            {
                *g
            }
            _ => {
                return Err(dims_err(
                    "b",
                    x.b,
                    format!("[{batch}, {k}, G, {state}, {len}]"),
                ));
            }
        };
        if channels % groups != 0 {
            return Err(dims_err(
                "b",
                x.b,
                format!("a group count G dividing the {channels} channels"),
            ));
        }
        if x.c.shape() != x.b.shape() {
            return Err(dims_err("c", x.c, format!("{:?} (same as b)", x.b.shape())));
        }
        for (name, t) in [("d", x.d), ("delta_bias", x.delta_bias)] {
            if t.shape() != [k, channels] {
                return Err(dims_err(name, t, format!("[{k}, {channels}]")));
            }
        }
        if let Some(z) = x.z
            && z.shape() != x.u.shape()
        {
            return Err(dims_err("z", z, format!("{:?} (same as u)", x.u.shape())));
        }
        if batch * k * channels * len >= u32::MAX as usize {
            return Err(Error::arg(op, "problem too large for 32-bit indexing"));
        }

        let gpu = device.kind() == DeviceKind::Cuda;
        let items = opts.items.unwrap_or(match (gpu, dtype) {
            (true, DType::F32) => 8,
            (true, _) => 4,
            (false, _) => 4,
        });
        if !items.is_power_of_two() || items > 32 {
            return Err(Error::arg(
                op,
                format!("items per lane {items} must be a power of two <= 32"),
            ));
        }
        // Warps of a cube must share a B/C group (their dB/dC are summed in the cube).
        let per_group = channels / groups;
        let max_warps = opts.warps.unwrap_or(if gpu { 4 } else { 2 });
        let warps = (1..=max_warps.max(1))
            .rev()
            .find(|w| per_group % w == 0)
            .unwrap_or(1);
        let plane = match opts.plane {
            Some(true) if !device.has_plane_ops() || device.plane_size() != LANES as u32 => {
                return Err(Error::arg(
                    op,
                    format!("{device} has no 32-wide plane operations"),
                ));
            }
            Some(p) => p,
            None => device.has_plane_ops() && device.plane_size() == LANES as u32,
        };
        let chunk = LANES * items;
        let rows = batch * k * channels;
        let max_len = spec
            .paths
            .iter()
            .map(|p| p.len(&spec.grid))
            .max()
            .unwrap_or(len);
        let seg_len = match opts.segment_len {
            Some(s) => s.max(1).div_ceil(chunk) * chunk,
            None => {
                // Split long sequences when there are too few rows to occupy the device.
                let target_warps = if gpu { 8192 } else { 1 };
                let want = target_warps.div_ceil(rows).max(1);
                let most = max_len.div_ceil(4 * chunk).max(1);
                max_len.div_ceil(want.min(most)).div_ceil(chunk) * chunk
            }
        };
        let segments = max_len.div_ceil(seg_len).max(1);
        let metas = spec
            .paths
            .iter()
            .flat_map(|p| PathMeta::new(p, &spec.grid).words())
            .collect();
        Ok(ScanPlan {
            batch,
            paths: k,
            channels,
            state,
            groups,
            len,
            delta_per_path,
            items,
            warps,
            blocks: channels.div_ceil(warps),
            segments,
            seg_len,
            seg_chunks: seg_len / chunk,
            plane,
            strided: spec.paths.iter().any(|p| p.scale() > 1),
            dtype,
            metas,
        })
    }

    fn rows(&self) -> usize {
        self.batch * self.paths * self.channels
    }

    fn dims<R: Runtime>(&self) -> ScanDimsLaunch<R> {
        ScanDimsLaunch::new(
            self.batch as u32,
            self.paths as u32,
            self.channels as u32,
            self.state as u32,
            self.groups as u32,
            self.len as u32,
            self.blocks as u32,
            self.segments as u32,
            self.seg_len as u32,
            self.seg_chunks as u32,
        )
    }

    fn cubes(&self) -> usize {
        self.batch * self.paths * self.blocks * self.segments
    }

    /// Number of segments each path sequence is split into.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Whether the plane-shuffle path is used.
    pub fn uses_plane(&self) -> bool {
        self.plane
    }
}

/// What the forward keeps for the backward.
#[derive(Debug, Clone)]
pub struct ScanSaved {
    plan: ScanPlan,
    states: Tensor,
    merged: Option<Tensor>,
}

/// Gradients of every scan input.
#[derive(Debug, Clone)]
pub struct ScanGrads {
    /// `(B, Di, L)`.
    pub u: Tensor,
    /// Same shape as the `delta` input.
    pub delta: Tensor,
    /// `(K, Di, N)`.
    pub a: Tensor,
    /// `(B, K, G, N, L)`.
    pub b: Tensor,
    /// `(B, K, G, N, L)`.
    pub c: Tensor,
    /// `(K, Di)`.
    pub d: Tensor,
    /// `(K, Di)`.
    pub delta_bias: Tensor,
    /// `(B, Di, L)` when a gate was given.
    pub z: Option<Tensor>,
}

fn zeros_or_empty(shape: &[usize], dtype: DType, device: &Device, zero: bool) -> Result<Tensor> {
    if zero {
        Tensor::zeros(shape, dtype, device)
    } else {
        Ok(Tensor::empty(shape, dtype, device))
    }
}

fn launch_dims(cubes: usize, warps: usize) -> (CubeCount, CubeDim) {
    // Cube counts above 65 535 spill into the y axis; kernels use the linear CUBE_POS.
    let x = cubes.min(65_535);
    let y = cubes.div_ceil(x);
    (
        CubeCount::Static(x as u32, y as u32, 1),
        CubeDim::new_1d((warps * LANES) as u32),
    )
}

fn merge_scale(spec: &ScanSpec) -> f64 {
    match spec.merge {
        Merge::Sum => 1.0,
        Merge::Mean => 1.0 / spec.paths.len() as f64,
    }
}

/// Forward scan: returns the merged (and gated) output and what the backward needs.
pub fn selective_scan_fwd(
    x: &ScanInputs,
    spec: &ScanSpec,
    opts: &ScanOptions,
) -> Result<(Tensor, ScanSaved)> {
    let plan = ScanPlan::new(x, spec, opts)?;
    let device = x.u.device().clone();
    let dt = plan.dtype;
    let (bsz, k, di, n, l, s) = (
        plan.batch,
        plan.paths,
        plan.channels,
        plan.state,
        plan.len,
        plan.segments,
    );
    let rows = plan.rows();
    let paths = Tensor::from_slice(&plan.metas, &[plan.metas.len()], &device)?;
    let u = x.u.compact()?;
    let delta = x.delta.compact()?;
    let a = x.a.compact()?;
    let b = x.b.compact()?;
    let c = x.c.compact()?;
    let d = x.d.compact()?;
    let bias = x.delta_bias.compact()?;
    let y = zeros_or_empty(&[bsz, k, di, l], dt, &device, plan.strided)?;
    let states = Tensor::empty(&[rows * s * plan.seg_chunks * n], dt, &device);
    let one = Tensor::empty(&[1], dt, &device);
    let seg_start = if s > 1 {
        let agg = Tensor::empty(&[rows * s * n * 2], dt, &device);
        launch_fwd(
            &plan,
            [&u, &delta, &a, &b, &c, &d, &bias],
            &paths,
            &one,
            &one,
            &one,
            &agg,
            true,
        );
        let starts = Tensor::empty(&[rows * s * n], dt, &device);
        launch_segment_starts(&plan, &agg, &starts, false);
        starts
    } else {
        one.clone()
    };
    launch_fwd(
        &plan,
        [&u, &delta, &a, &b, &c, &d, &bias],
        &paths,
        &seg_start,
        &y,
        &states,
        &one,
        false,
    );

    let out = Tensor::empty(&[bsz, di, l], dt, &device);
    let z = x.z.map(|z| z.compact()).transpose()?;
    let merged = z
        .as_ref()
        .map(|_| Tensor::empty(&[bsz, di, l], dt, &device));
    let total = bsz * di * l;
    dispatch!(device, cl => {
        let (count, dim) = elemwise_grid(cl, total);
        record_launch();
        unsafe {
            kernels::merge_fwd::launch_unchecked(
                cl, count, dim,
                y.array_arg(y.buffer_len()),
                z.as_ref().unwrap_or(&one).array_arg(z.as_ref().unwrap_or(&one).buffer_len()),
                merged.as_ref().unwrap_or(&one).array_arg(merged.as_ref().unwrap_or(&one).buffer_len()),
                out.array_arg(total),
                k as u32, (di * l) as u32, total as u32,
                InputScalar::new(merge_scale(spec), dt.storage()),
                z.is_some(), dt.storage(),
            )
        }
    });
    Ok((
        out,
        ScanSaved {
            plan,
            states,
            merged,
        },
    ))
}

/// Backward scan from the output gradient `dout` (shape of the output).
pub fn selective_scan_bwd(
    x: &ScanInputs,
    spec: &ScanSpec,
    saved: &ScanSaved,
    dout: &Tensor,
) -> Result<ScanGrads> {
    let plan = &saved.plan;
    let device = x.u.device().clone();
    let dt = plan.dtype;
    let (bsz, k, di, n, l, s, g) = (
        plan.batch,
        plan.paths,
        plan.channels,
        plan.state,
        plan.len,
        plan.segments,
        plan.groups,
    );
    if dout.shape() != [bsz, di, l] || dout.dtype() != dt {
        return Err(Error::shape(
            "selective_scan backward",
            format!(
                "output gradient is {} {:?}, expected {dt} [{bsz}, {di}, {l}]",
                dout.dtype(),
                dout.shape()
            ),
        ));
    }
    let rows = plan.rows();
    let paths = Tensor::from_slice(&plan.metas, &[plan.metas.len()], &device)?;
    let u = x.u.compact()?;
    let delta = x.delta.compact()?;
    let a = x.a.compact()?;
    let b = x.b.compact()?;
    let c = x.c.compact()?;
    let d = x.d.compact()?;
    let bias = x.delta_bias.compact()?;
    let dout = dout.compact()?;
    let one = Tensor::empty(&[1], dt, &device);
    let total = bsz * di * l;

    // Merge and gate backward: the gradient every path's output receives.
    let z = x.z.map(|z| z.compact()).transpose()?;
    let dy = Tensor::empty(&[bsz, di, l], dt, &device);
    let dz = z
        .as_ref()
        .map(|_| Tensor::empty(&[bsz, di, l], dt, &device));
    let merged = saved.merged.as_ref().unwrap_or(&one);
    dispatch!(device, cl => {
        let (count, dim) = elemwise_grid(cl, total);
        record_launch();
        unsafe {
            kernels::merge_bwd::launch_unchecked(
                cl, count, dim,
                dout.array_arg(total),
                z.as_ref().unwrap_or(&one).array_arg(z.as_ref().unwrap_or(&one).buffer_len()),
                merged.array_arg(merged.buffer_len()),
                dy.array_arg(total),
                dz.as_ref().unwrap_or(&one).array_arg(dz.as_ref().unwrap_or(&one).buffer_len()),
                total as u32,
                InputScalar::new(merge_scale(spec), dt.storage()),
                z.is_some(), dt.storage(),
            )
        }
    });

    let ins = [&u, &delta, &a, &b, &c, &d, &bias];
    let seg_suffix = if s > 1 {
        let agg = Tensor::empty(&[rows * s * n * 2], dt, &device);
        let outs = [&one, &one, &one, &one, &one, &one, &one, &agg];
        launch_bwd(plan, ins, &paths, &saved.states, &one, &dy, outs, true);
        let suffix = Tensor::empty(&[rows * s * n], dt, &device);
        launch_segment_starts(plan, &agg, &suffix, true);
        suffix
    } else {
        one.clone()
    };
    let du_k = zeros_or_empty(&[bsz, k, di, l], dt, &device, plan.strided)?;
    let dd_k = zeros_or_empty(&[bsz, k, di, l], dt, &device, plan.strided)?;
    let db_part = zeros_or_empty(&[bsz, k, plan.blocks, n, l], dt, &device, plan.strided)?;
    let dc_part = zeros_or_empty(&[bsz, k, plan.blocks, n, l], dt, &device, plan.strided)?;
    let da_part = Tensor::empty(&[bsz, k, di, s, n], dt, &device);
    let dd_part = Tensor::empty(&[bsz, k, di, s], dt, &device);
    let dbias_part = Tensor::empty(&[bsz, k, di, s], dt, &device);
    let outs = [
        &du_k,
        &dd_k,
        &db_part,
        &dc_part,
        &da_part,
        &dd_part,
        &dbias_part,
        &one,
    ];
    launch_bwd(
        plan,
        ins,
        &paths,
        &saved.states,
        &seg_suffix,
        &dy,
        outs,
        false,
    );

    let per_group = plan.blocks / g;
    Ok(ScanGrads {
        u: du_k.sum(&[1], false)?,
        delta: if plan.delta_per_path {
            dd_k
        } else {
            dd_k.sum(&[1], false)?
        },
        a: da_part.sum(&[0, 3], false)?,
        b: db_part
            .reshape(&[bsz, k, g, per_group, n, l])?
            .sum(&[3], false)?,
        c: dc_part
            .reshape(&[bsz, k, g, per_group, n, l])?
            .sum(&[3], false)?,
        d: dd_part.sum(&[0, 3], false)?,
        delta_bias: dbias_part.sum(&[0, 3], false)?,
        z: dz,
    })
}

#[allow(clippy::too_many_arguments)]
fn launch_fwd(
    plan: &ScanPlan,
    ins: [&Tensor; 7],
    paths: &Tensor,
    seg_start: &Tensor,
    y: &Tensor,
    states: &Tensor,
    agg: &Tensor,
    aggregate: bool,
) {
    let [u, delta, a, b, c, d, bias] = ins;
    let (count, dim) = launch_dims(plan.cubes(), plan.warps);
    dispatch!(u.device(), cl => {
        let arg = |t: &Tensor| unsafe { t.array_arg(t.buffer_len()) };
        record_launch();
        unsafe {
            kernels::scan_fwd::launch_unchecked(
                cl, count, dim,
                arg(u), arg(delta), arg(a), arg(b), arg(c), arg(d), arg(bias),
                paths.array_arg(paths.buffer_len()),
                arg(seg_start), arg(y), arg(states), arg(agg),
                plan.dims(),
                plan.items as u32, plan.warps as u32, plan.plane, plan.delta_per_path, aggregate,
                plan.dtype.storage(),
            )
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn launch_bwd(
    plan: &ScanPlan,
    ins: [&Tensor; 7],
    paths: &Tensor,
    states: &Tensor,
    seg_suffix: &Tensor,
    dy: &Tensor,
    outs: [&Tensor; 8],
    aggregate: bool,
) {
    let [u, delta, a, b, c, d, bias] = ins;
    let [du, dd, db, dc, da, dds, dbias, agg] = outs;
    let (count, dim) = launch_dims(plan.cubes(), plan.warps);
    dispatch!(u.device(), cl => {
        let arg = |t: &Tensor| unsafe { t.array_arg(t.buffer_len()) };
        record_launch();
        unsafe {
            kernels::scan_bwd::launch_unchecked(
                cl, count, dim,
                arg(u), arg(delta), arg(a), arg(b), arg(c), arg(d), arg(bias),
                paths.array_arg(paths.buffer_len()),
                arg(states), arg(seg_suffix), arg(dy),
                arg(du), arg(dd), arg(db), arg(dc), arg(da), arg(dds), arg(dbias), arg(agg),
                plan.dims(),
                plan.items as u32, plan.warps as u32, plan.plane, plan.delta_per_path, aggregate,
                plan.dtype.storage(),
            )
        }
    })
}

fn launch_segment_starts(plan: &ScanPlan, agg: &Tensor, starts: &Tensor, reverse: bool) {
    let threads = plan.rows() * plan.state;
    dispatch!(agg.device(), cl => {
        let (count, dim) = elemwise_grid(cl, threads);
        record_launch();
        unsafe {
            kernels::segment_starts::launch_unchecked(
                cl, count, dim,
                agg.array_arg(agg.buffer_len()),
                starts.array_arg(starts.buffer_len()),
                plan.rows() as u32, plan.segments as u32, plan.state as u32,
                reverse, plan.dtype.storage(),
            )
        }
    })
}
