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
//! decomposition and [`mod@reference`] for the f64 host oracle.

pub mod kernels;
pub mod path;
pub mod reference;
pub mod tile;

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
/// every code path: small chunks or tiles, several segments, the shared-memory lane scan on
/// a device with plane operations, partial sums instead of atomics, precise exponentials.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Steps per lane per chunk (chunk = 32·items) in the chunked kernels.
    pub items: Option<usize>,
    /// Logical warps (channels) per cube.
    pub warps: Option<usize>,
    /// Steps per segment (rounded up to whole chunks) in the chunked kernels.
    pub segment_len: Option<usize>,
    /// Use plane shuffles (`Some(true)` fails on devices without plane operations).
    pub plane: Option<bool>,
    /// Add dB/dC into place with float atomics (`Some(true)` fails on devices without
    /// float atomic add); otherwise per-cube partial sums are written and reduced.
    pub atomics: Option<bool>,
    /// f32 only (default on): the device's fast approximate exponential, reciprocal and a
    /// polynomial log1p in exp(ΔA), softplus and sigmoid (a few ulp each).
    pub fast_exp: Option<bool>,
    /// Use the tiled multi-path kernels for 2D/3D grids (`Some(true)` fails where they do
    /// not apply: 1D grids, strided paths, N above [`MAX_TILE_STATE`]).
    pub tiled: Option<bool>,
    /// Tile extents of the tiled kernels over the grid padded to 3 axes (leading axes of
    /// size 1), each a power of two.
    pub tile: Option<[usize; 3]>,
}

/// Largest supported state size N.
pub const MAX_STATE: usize = 64;

/// Largest state size N the tiled kernels take (larger N runs the chunked kernels).
pub const MAX_TILE_STATE: usize = 16;

/// Launch plan of the tiled multi-path kernels ([`tile`]).
#[derive(Debug, Clone)]
struct TilePlan {
    extents: [usize; 3],
    grid: [usize; 3],
    counts: [usize; 3],
    warps: usize,
    blocks: usize,
    seg_max: usize,
    words: Vec<u32>,
}

impl TilePlan {
    fn tiles(&self) -> usize {
        self.counts.iter().product()
    }

    /// Shared memory (bytes) of the largest tiled kernel (the backward's main pass).
    fn shared_bytes(
        extents: [usize; 3],
        warps: usize,
        state: usize,
        shared_delta: bool,
        elem: usize,
    ) -> usize {
        let pp = extents[0] * extents[1] * (extents[2] + 1);
        let per_warp = 4 + usize::from(shared_delta) + 2 * state;
        (warps * per_warp * pp + 2 * state * pp + warps * 32) * elem
    }

    /// Per-path words for the tiled kernels (see [`tile`]).
    fn path_words(spec: &ScanSpec, grid: [usize; 3], t: [usize; 3]) -> (Vec<u32>, usize) {
        let rank = spec.grid.len();
        let pad = 3 - rank;
        let sstride = [t[1] * (t[2] + 1), t[2] + 1, 1];
        let gstride = [grid[1] * grid[2], grid[2], 1];
        let lseg = (t.iter().product::<usize>() / LANES).max(1);
        let mut words = Vec::with_capacity(spec.paths.len() * tile::TILE_WORDS);
        let mut seg_max = 1;
        for p in &spec.paths {
            let meta = PathMeta::new(p, &spec.grid);
            let mut ax = [0usize, 1, 2];
            for (j, &o) in p.order().iter().enumerate() {
                ax[pad + j] = pad + o;
            }
            let s = ax.map(|a| grid[a]);
            let tp = ax.map(|a| t[a]);
            let seglen = tp[2].min(lseg);
            let nsub_tile = tp[2] / seglen;
            let nsub_grid = s[2].div_ceil(seglen);
            let nseg = s[0] * s[1] * nsub_grid;
            seg_max = seg_max.max(nseg);
            let flips: usize = (0..3).map(|j| usize::from(meta.flip[j]) << j).sum();
            let w = [
                ax[0],
                ax[1],
                ax[2],
                s[0],
                s[1],
                s[2],
                tp[0],
                tp[1],
                tp[2],
                sstride[ax[0]],
                sstride[ax[1]],
                sstride[ax[2]],
                gstride[ax[0]],
                gstride[ax[1]],
                gstride[ax[2]],
                flips,
                usize::from(meta.snake),
                usize::from(meta.reversed),
                seglen,
                nsub_tile,
                nsub_grid,
                nseg,
                tp[0] * tp[1] * nsub_tile,
                0,
            ];
            words.extend(w.iter().map(|&v| v as u32));
        }
        (words, seg_max)
    }

    /// Tile extents of `positions` (a power of two) positions: doubles, one at a time, the
    /// axis along which the most paths run fastest relative to its current extent.
    fn default_extents(spec: &ScanSpec, grid: [usize; 3], positions: usize) -> [usize; 3] {
        let pad = 3 - spec.grid.len();
        let mut fastest = [0usize; 3];
        for p in &spec.paths {
            fastest[pad + p.order()[p.rank() - 1]] += 1;
        }
        let mut t = [1usize; 3];
        while t.iter().product::<usize>() < positions {
            let best = (0..3)
                .filter(|&a| t[a] < grid[a].next_power_of_two())
                .max_by(|&a, &b| {
                    ((fastest[a] + 1) * t[b])
                        .cmp(&((fastest[b] + 1) * t[a]))
                        .then(a.cmp(&b))
                });
            match best {
                Some(a) => t[a] *= 2,
                None => break,
            }
        }
        t
    }
}

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
    gate: bool,
    atomics: bool,
    fast_exp: bool,
    dtype: DType,
    metas: Vec<u32>,
    tile: Option<TilePlan>,
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
        crate::dtype::refuse_bf16(op, dtype)?;
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
        // 4 steps per lane: on the H100, 8 was 9 % slower (1D fwd+bwd) and 16 was 28 %.
        let items = opts.items.unwrap_or(4);
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
            Some(true) if !device.has_planes_of(LANES as u32) => {
                return Err(Error::arg(
                    op,
                    format!("{device} has no 32-wide plane operations"),
                ));
            }
            Some(p) => p,
            None => device.has_planes_of(LANES as u32),
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
            // Never longer than the (chunk-rounded) path: the kernels walk whole segments.
            Some(s) => s.max(1).min(max_len).div_ceil(chunk) * chunk,
            None => {
                // Split long sequences when there are too few rows to occupy the device. An
                // H100 keeps ~1600 backward warps resident; with 4096 rows a split only adds
                // the aggregate pass (15 % slower on the long 1D benchmark).
                let target_warps = if gpu { 2048 } else { 1 };
                let want = target_warps.div_ceil(rows).max(1);
                let most = max_len.div_ceil(4 * chunk).max(1);
                max_len.div_ceil(want.min(most)).div_ceil(chunk) * chunk
            }
        };
        let segments = max_len.div_ceil(seg_len).max(1);
        let atomics = match opts.atomics {
            Some(true) if !device.has_float_atomic_add(dtype) => {
                return Err(Error::arg(
                    op,
                    format!("{device} has no {dtype} atomic add"),
                ));
            }
            Some(a) => a,
            None => device.has_float_atomic_add(dtype),
        };
        let fast_exp = opts.fast_exp.unwrap_or(true) && dtype == DType::F32;
        let tile = Self::plan_tiles(x, spec, opts, state, per_group, delta_per_path)?;
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
            gate: x.z.is_some(),
            atomics,
            fast_exp,
            dtype,
            metas,
            tile,
        })
    }

    /// The tiled kernels' plan when they apply (2D/3D grid, full-scale paths, small N, the
    /// shared memory fits) and are wanted.
    fn plan_tiles(
        x: &ScanInputs,
        spec: &ScanSpec,
        opts: &ScanOptions,
        state: usize,
        per_group: usize,
        delta_per_path: bool,
    ) -> Result<Option<TilePlan>> {
        let op = "selective_scan";
        let device = x.u.device();
        let gpu = device.kind() == DeviceKind::Cuda;
        let why_not = if spec.grid.len() < 2 {
            Some("the grid is 1D")
        } else if spec.paths.iter().any(|p| p.scale() > 1) {
            Some("a path is strided")
        } else if state > MAX_TILE_STATE {
            Some("the state is larger than MAX_TILE_STATE")
        } else {
            None
        };
        match (opts.tiled, why_not) {
            (Some(false), _) => return Ok(None),
            (Some(true), Some(why)) => {
                return Err(Error::arg(op, format!("tiled kernels do not apply: {why}")));
            }
            (None, Some(_)) => return Ok(None),
            _ => {}
        }
        let mut grid = [1usize; 3];
        grid[3 - spec.grid.len()..].copy_from_slice(&spec.grid);
        let elem = x.u.dtype().size();
        let budget = device.max_shared_memory();
        let max_warps = opts.warps.unwrap_or(if gpu { 4 } else { 2 }).max(1);
        let warp_choices: Vec<usize> = (1..=max_warps)
            .rev()
            .filter(|w| per_group.is_multiple_of(*w))
            .collect();
        let mut choice = None;
        'search: for positions in [512usize, 256, 128, 64, 32, 16, 8, 4, 2, 1] {
            let t = match opts.tile {
                Some(t) => t,
                None => TilePlan::default_extents(spec, grid, positions),
            };
            for &w in &warp_choices {
                if TilePlan::shared_bytes(t, w, state, !delta_per_path, elem) <= budget {
                    choice = Some((t, w));
                    break 'search;
                }
            }
            if opts.tile.is_some() {
                break;
            }
        }
        let Some((t, warps)) = choice else {
            if opts.tiled == Some(true) {
                return Err(Error::arg(
                    op,
                    format!("the tiled kernels' shared memory exceeds {budget} bytes on {device}"),
                ));
            }
            return Ok(None);
        };
        if t.iter().any(|e| !e.is_power_of_two()) {
            return Err(Error::arg(
                op,
                format!("tile extents {t:?} must be powers of two"),
            ));
        }
        let (words, seg_max) = TilePlan::path_words(spec, grid, t);
        let channels = x.u.shape()[1];
        Ok(Some(TilePlan {
            extents: t,
            grid,
            counts: [0, 1, 2].map(|a| grid[a].div_ceil(t[a])),
            warps,
            blocks: channels.div_ceil(warps),
            seg_max,
            words,
        }))
    }

    /// Whether the tiled multi-path kernels run.
    pub fn uses_tiles(&self) -> bool {
        self.tile.is_some()
    }

    /// Whether one path's kernel writes the final outputs and gradients itself (no per-path
    /// buffers, no merge kernels).
    fn direct(&self) -> bool {
        self.paths == 1
    }

    /// Whether dB/dC are added in place with float atomics.
    pub fn uses_atomics(&self) -> bool {
        self.atomics
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

impl ScanSaved {
    /// The plan the forward ran (which kernels, how many segments, ...).
    pub fn plan(&self) -> &ScanPlan {
        &self.plan
    }
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
    if plan.tile.is_some() {
        return tiled_fwd(x, spec, plan);
    }
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
    let [u, delta, a, b, c, d, bias] = contiguous_inputs(x)?;
    let z = x.z.map(|z| z.compact()).transpose()?;
    let one = Tensor::empty(&[1], dt, &device);
    let ins = [&u, &delta, &a, &b, &c, &d, &bias];
    let zt = z.as_ref().unwrap_or(&one);
    let total = bsz * di * l;
    let states = Tensor::empty(&[rows * s * plan.seg_chunks * n], dt, &device);
    let seg_start = if s > 1 {
        let agg = Tensor::empty(&[rows * s * n * 2], dt, &device);
        launch_fwd(&plan, ins, &paths, &one, zt, [&one, &one, &one, &agg], true);
        let starts = Tensor::empty(&[rows * s * n], dt, &device);
        launch_segment_starts(&plan, &agg, &starts, false);
        starts
    } else {
        one.clone()
    };

    if plan.direct() {
        // One path: the scan kernel writes the output (and the pre-gate value) itself.
        let out = zeros_or_empty(&[bsz, di, l], dt, &device, plan.strided)?;
        let merged = match &z {
            Some(_) => Some(zeros_or_empty(&[bsz, di, l], dt, &device, plan.strided)?),
            None => None,
        };
        let outs = match &merged {
            Some(m) => [m, &out, &states, &one],
            None => [&out, &one, &states, &one],
        };
        launch_fwd(&plan, ins, &paths, &seg_start, zt, outs, false);
        return Ok((
            out,
            ScanSaved {
                plan,
                states,
                merged,
            },
        ));
    }

    let y = zeros_or_empty(&[bsz, k, di, l], dt, &device, plan.strided)?;
    launch_fwd(
        &plan,
        ins,
        &paths,
        &seg_start,
        zt,
        [&y, &one, &states, &one],
        false,
    );
    let out = Tensor::empty(&[bsz, di, l], dt, &device);
    let merged = z
        .as_ref()
        .map(|_| Tensor::empty(&[bsz, di, l], dt, &device));
    dispatch!(device, cl => {
        let (count, dim) = elemwise_grid(cl, total);
        record_launch();
        unsafe {
            kernels::merge_fwd::launch_unchecked(
                cl, count, dim,
                y.array_arg(y.buffer_len()),
                zt.array_arg(zt.buffer_len()),
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
    if plan.tile.is_some() {
        return tiled_bwd(x, spec, saved, dout);
    }
    let rows = plan.rows();
    let paths = Tensor::from_slice(&plan.metas, &[plan.metas.len()], &device)?;
    let [u, delta, a, b, c, d, bias] = contiguous_inputs(x)?;
    let dout = dout.compact()?;
    let one = Tensor::empty(&[1], dt, &device);
    let z = x.z.map(|z| z.compact()).transpose()?;
    let merged = saved.merged.as_ref().unwrap_or(&one);
    let strided = plan.strided;

    // The gradient every path's output receives: `dout·scale` without a gate; with a gate,
    // one path computes `dout·silu(z)` (and dz) in the scan kernels, several paths get it
    // from the merge backward.
    let fused_gate = plan.direct() && z.is_some();
    let mut dz = None;
    let (dy, dy_scale) = match &z {
        Some(zt) if !plan.direct() => {
            let (dy, dzt) = gate_backward(&dout, zt, merged, spec);
            dz = Some(dzt);
            (dy, 1.0)
        }
        Some(_) => {
            dz = Some(zeros_or_empty(&[bsz, di, l], dt, &device, strided)?);
            (dout.clone(), 1.0)
        }
        None => (dout.clone(), merge_scale(spec)),
    };
    let zt = z.as_ref().unwrap_or(&one);
    let gate_ins = [&dy, zt, merged];
    let dzt = dz.as_ref().unwrap_or(&one);

    let ins = [&u, &delta, &a, &b, &c, &d, &bias];
    let seg_suffix = if s > 1 {
        let agg = Tensor::empty(&[rows * s * n * 2], dt, &device);
        let outs = [
            &one, &one, &one, &one, &one, &one, &one, &one, &one, &agg, &one,
        ];
        let bw = Bwd {
            states: &saved.states,
            seg_suffix: &one,
            dy_scale,
            fused_gate,
        };
        launch_bwd(plan, ins, &paths, &bw, gate_ins, outs, true);
        let suffix = Tensor::empty(&[rows * s * n], dt, &device);
        launch_segment_starts(plan, &agg, &suffix, true);
        suffix
    } else {
        one.clone()
    };
    let (du, dd) = if plan.direct() {
        (
            zeros_or_empty(&[bsz, di, l], dt, &device, strided)?,
            zeros_or_empty(x.delta.shape(), dt, &device, strided)?,
        )
    } else {
        (
            zeros_or_empty(&[bsz, k, di, l], dt, &device, strided)?,
            zeros_or_empty(&[bsz, k, di, l], dt, &device, strided)?,
        )
    };
    let (db_sum, dc_sum, db_part, dc_part) = if plan.atomics {
        (
            Tensor::zeros(&[bsz, k, g, n, l], dt, &device)?,
            Tensor::zeros(&[bsz, k, g, n, l], dt, &device)?,
            one.clone(),
            one.clone(),
        )
    } else {
        (
            one.clone(),
            one.clone(),
            zeros_or_empty(&[bsz, k, plan.blocks, n, l], dt, &device, strided)?,
            zeros_or_empty(&[bsz, k, plan.blocks, n, l], dt, &device, strided)?,
        )
    };
    let da_part = Tensor::empty(&[bsz, k, di, s, n], dt, &device);
    let dd_part = Tensor::empty(&[bsz, k, di, s], dt, &device);
    let dbias_part = Tensor::empty(&[bsz, k, di, s], dt, &device);
    let outs = [
        &du,
        &dd,
        &db_part,
        &dc_part,
        &db_sum,
        &dc_sum,
        &da_part,
        &dd_part,
        &dbias_part,
        &one,
        dzt,
    ];
    let bw = Bwd {
        states: &saved.states,
        seg_suffix: &seg_suffix,
        dy_scale,
        fused_gate,
    };
    launch_bwd(plan, ins, &paths, &bw, gate_ins, outs, false);

    let per_group = plan.blocks / g;
    let (gb, gc) = if plan.atomics {
        (db_sum, dc_sum)
    } else {
        (
            db_part
                .reshape(&[bsz, k, g, per_group, n, l])?
                .sum(&[3], false)?,
            dc_part
                .reshape(&[bsz, k, g, per_group, n, l])?
                .sum(&[3], false)?,
        )
    };
    Ok(ScanGrads {
        u: if plan.direct() {
            du
        } else {
            du.sum(&[1], false)?
        },
        delta: if plan.direct() || plan.delta_per_path {
            dd
        } else {
            dd.sum(&[1], false)?
        },
        a: da_part.sum(&[0, 3], false)?,
        b: gb,
        c: gc,
        d: dd_part.sum(&[0, 3], false)?,
        delta_bias: dbias_part.sum(&[0, 3], false)?,
        z: dz,
    })
}

/// What the backward launches share besides the inputs.
struct Bwd<'a> {
    states: &'a Tensor,
    seg_suffix: &'a Tensor,
    dy_scale: f64,
    fused_gate: bool,
}

#[allow(clippy::too_many_arguments)]
fn launch_fwd(
    plan: &ScanPlan,
    ins: [&Tensor; 7],
    paths: &Tensor,
    seg_start: &Tensor,
    z: &Tensor,
    outs: [&Tensor; 4],
    aggregate: bool,
) {
    let [u, delta, a, b, c, d, bias] = ins;
    let [y, gated, states, agg] = outs;
    let direct_gate = plan.direct() && plan.gate;
    let (count, dim) = launch_dims(plan.cubes(), plan.warps);
    dispatch!(u.device(), cl => {
        let arg = |t: &Tensor| unsafe { t.array_arg(t.buffer_len()) };
        record_launch();
        unsafe {
            kernels::scan_fwd::launch_unchecked(
                cl, count, dim,
                arg(u), arg(delta), arg(a), arg(b), arg(c), arg(d), arg(bias),
                paths.array_arg(paths.buffer_len()),
                arg(seg_start), arg(z), arg(y), arg(gated), arg(states), arg(agg),
                plan.dims(),
                plan.items as u32, plan.warps as u32, plan.plane, plan.delta_per_path, aggregate,
                direct_gate, plan.fast_exp,
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
    bw: &Bwd,
    gate_ins: [&Tensor; 3],
    outs: [&Tensor; 11],
    aggregate: bool,
) {
    let [u, delta, a, b, c, d, bias] = ins;
    let [dout, z, merged] = gate_ins;
    let [du, dd, db, dc, dbs, dcs, da, dds, dbias, agg, dz] = outs;
    let (count, dim) = launch_dims(plan.cubes(), plan.warps);
    dispatch!(u.device(), cl => {
        let arg = |t: &Tensor| unsafe { t.array_arg(t.buffer_len()) };
        record_launch();
        unsafe {
            kernels::scan_bwd::launch_unchecked(
                cl, count, dim,
                arg(u), arg(delta), arg(a), arg(b), arg(c), arg(d), arg(bias),
                paths.array_arg(paths.buffer_len()),
                arg(bw.states), arg(bw.seg_suffix), arg(dout), arg(z), arg(merged),
                arg(du), arg(dd), arg(db), arg(dc), arg(dbs), arg(dcs),
                arg(da), arg(dds), arg(dbias), arg(agg), arg(dz),
                plan.dims(),
                InputScalar::new(bw.dy_scale, plan.dtype.storage()),
                plan.items as u32, plan.warps as u32, plan.plane, plan.delta_per_path, aggregate,
                bw.fused_gate, plan.atomics, plan.fast_exp,
                plan.dtype.storage(),
            )
        }
    })
}

/// The seven scan inputs, contiguous.
/// Backward of the merge and gate `out = merged·scale ⊙ silu(z)`: the gradient every
/// path's output receives, and dz. All operands are compact `(B, Di, L)` tensors.
fn gate_backward(dout: &Tensor, z: &Tensor, merged: &Tensor, spec: &ScanSpec) -> (Tensor, Tensor) {
    let (device, dt) = (dout.device().clone(), dout.dtype());
    let total = dout.numel();
    let dy = Tensor::empty(dout.shape(), dt, &device);
    let dz = Tensor::empty(dout.shape(), dt, &device);
    dispatch!(device, cl => {
        let (count, dim) = elemwise_grid(cl, total);
        record_launch();
        unsafe {
            kernels::merge_bwd::launch_unchecked(
                cl, count, dim,
                dout.array_arg(total),
                z.array_arg(z.buffer_len()),
                merged.array_arg(merged.buffer_len()),
                dy.array_arg(total),
                dz.array_arg(total),
                total as u32,
                InputScalar::new(merge_scale(spec), dt.storage()),
                true, dt.storage(),
            )
        }
    });
    (dy, dz)
}

fn contiguous_inputs(x: &ScanInputs) -> Result<[Tensor; 7]> {
    Ok([
        x.u.compact()?,
        x.delta.compact()?,
        x.a.compact()?,
        x.b.compact()?,
        x.c.compact()?,
        x.d.compact()?,
        x.delta_bias.compact()?,
    ])
}

impl ScanPlan {
    fn tile_dims<R: Runtime>(&self, tp: &TilePlan) -> tile::TileDimsLaunch<R> {
        tile::TileDimsLaunch::new(
            self.batch as u32,
            self.paths as u32,
            self.channels as u32,
            self.groups as u32,
            self.len as u32,
            tp.grid[0] as u32,
            tp.grid[1] as u32,
            tp.grid[2] as u32,
            tp.counts[1] as u32,
            tp.counts[2] as u32,
            tp.tiles() as u32,
            tp.blocks as u32,
            tp.seg_max as u32,
        )
    }
}

/// Compose the segments' maps of `agg` into every segment's start (see [`tile::tile_chain`]).
fn launch_tile_chain(plan: &ScanPlan, words: &Tensor, agg: &Tensor, starts: &Tensor) {
    let tp = plan.tile.as_ref().expect("tiled plan");
    let cubes = plan.rows() * plan.state;
    let (count, dim) = launch_dims(cubes, 1);
    dispatch!(agg.device(), cl => {
        record_launch();
        unsafe {
            tile::tile_chain::launch_unchecked(
                cl, count, dim,
                agg.array_arg(agg.buffer_len()),
                starts.array_arg(starts.buffer_len()),
                words.array_arg(words.buffer_len()),
                plan.channels as u32, plan.paths as u32, tp.seg_max as u32, plan.state as u32,
                4, plan.plane, plan.dtype.storage(),
            )
        }
    })
}

/// Forward through the tiled kernels: aggregate pass, chain, main pass.
fn tiled_fwd(x: &ScanInputs, spec: &ScanSpec, plan: ScanPlan) -> Result<(Tensor, ScanSaved)> {
    let tp = plan.tile.as_ref().expect("tiled plan");
    let device = x.u.device().clone();
    let dt = plan.dtype;
    let (bsz, di, n, l) = (plan.batch, plan.channels, plan.state, plan.len);
    let words = Tensor::from_slice(&tp.words, &[tp.words.len()], &device)?;
    let [u, delta, a, b, c, d, bias] = contiguous_inputs(x)?;
    let z = x.z.map(|z| z.compact()).transpose()?;
    let one = Tensor::empty(&[1], dt, &device);
    let zt = z.as_ref().unwrap_or(&one);
    let slots = plan.rows() * tp.seg_max * n;
    let agg = Tensor::empty(&[slots * 2], dt, &device);
    let starts = Tensor::empty(&[slots], dt, &device);
    let out = Tensor::empty(&[bsz, di, l], dt, &device);
    let merged = z
        .as_ref()
        .map(|_| Tensor::empty(&[bsz, di, l], dt, &device));
    let mt = merged.as_ref().unwrap_or(&one);
    let [e0, e1, e2] = tp.extents.map(|e| e as u32);
    let (count, dim) = launch_dims(bsz * tp.tiles() * tp.blocks, tp.warps);
    for aggregate in [true, false] {
        dispatch!(device, cl => {
            let arg = |t: &Tensor| unsafe { t.array_arg(t.buffer_len()) };
            record_launch();
            unsafe {
                tile::tile_fwd::launch_unchecked(
                    cl, count.clone(), dim,
                    arg(&u), arg(&delta), arg(&a), arg(&b), arg(&c), arg(&d), arg(&bias),
                    arg(&words), arg(&starts), arg(zt),
                    arg(if aggregate { &one } else { &out }), arg(if aggregate { &one } else { mt }),
                    arg(if aggregate { &agg } else { &one }),
                    plan.tile_dims(tp),
                    InputScalar::new(merge_scale(spec), dt.storage()),
                    e0, e1, e2, n as u32, tp.warps as u32,
                    plan.delta_per_path, aggregate, z.is_some(), plan.fast_exp,
                    dt.storage(),
                )
            }
        });
        if aggregate {
            launch_tile_chain(&plan, &words, &agg, &starts);
        }
    }
    Ok((
        out,
        ScanSaved {
            plan,
            states: starts,
            merged,
        },
    ))
}

/// Backward through the tiled kernels: adjoint aggregate pass, chain, main pass.
fn tiled_bwd(
    x: &ScanInputs,
    spec: &ScanSpec,
    saved: &ScanSaved,
    dout: &Tensor,
) -> Result<ScanGrads> {
    let plan = &saved.plan;
    let tp = plan.tile.as_ref().expect("tiled plan");
    let device = x.u.device().clone();
    let dt = plan.dtype;
    let (bsz, k, di, n, l, g) = (
        plan.batch,
        plan.paths,
        plan.channels,
        plan.state,
        plan.len,
        plan.groups,
    );
    let words = Tensor::from_slice(&tp.words, &[tp.words.len()], &device)?;
    let [u, delta, a, b, c, d, bias] = contiguous_inputs(x)?;
    let dout = dout.compact()?;
    let one = Tensor::empty(&[1], dt, &device);
    let z = x.z.map(|z| z.compact()).transpose()?;
    let (dy, dy_scale, dz) = match &z {
        Some(zt) => {
            let merged = saved.merged.as_ref().unwrap_or(&one);
            let (dy, dzt) = gate_backward(&dout, zt, merged, spec);
            (dy, 1.0, Some(dzt))
        }
        None => (dout.clone(), merge_scale(spec), None),
    };
    let slots = plan.rows() * tp.seg_max * n;
    let agg = Tensor::empty(&[slots * 2], dt, &device);
    let bstarts = Tensor::empty(&[slots], dt, &device);
    let du = Tensor::empty(&[bsz, di, l], dt, &device);
    let dd = Tensor::empty(x.delta.shape(), dt, &device);
    let (db_sum, dc_sum, db_part, dc_part) = if plan.atomics {
        (
            Tensor::zeros(&[bsz, k, g, n, l], dt, &device)?,
            Tensor::zeros(&[bsz, k, g, n, l], dt, &device)?,
            one.clone(),
            one.clone(),
        )
    } else {
        (
            one.clone(),
            one.clone(),
            Tensor::empty(&[bsz, k, tp.blocks, n, l], dt, &device),
            Tensor::empty(&[bsz, k, tp.blocks, n, l], dt, &device),
        )
    };
    let tiles = tp.tiles();
    let da_part = Tensor::empty(&[bsz, k, di, tiles, n], dt, &device);
    let dd_part = Tensor::empty(&[bsz, di, tiles], dt, &device);
    let dbias_part = Tensor::empty(&[bsz, k, di, tiles], dt, &device);
    let [e0, e1, e2] = tp.extents.map(|e| e as u32);
    let (count, dim) = launch_dims(bsz * tiles * tp.blocks, tp.warps);
    for aggregate in [true, false] {
        let m = |t: &Tensor| if aggregate { one.clone() } else { t.clone() };
        let outs = [
            m(&du),
            m(&dd),
            m(&db_part),
            m(&dc_part),
            m(&db_sum),
            m(&dc_sum),
            m(&da_part),
            m(&dd_part),
            m(&dbias_part),
            if aggregate { agg.clone() } else { one.clone() },
        ];
        dispatch!(device, cl => {
            let arg = |t: &Tensor| unsafe { t.array_arg(t.buffer_len()) };
            record_launch();
            unsafe {
                tile::tile_bwd::launch_unchecked(
                    cl, count.clone(), dim,
                    arg(&u), arg(&delta), arg(&a), arg(&b), arg(&c), arg(&d), arg(&bias),
                    arg(&words), arg(&saved.states), arg(&bstarts), arg(&dy),
                    arg(&outs[0]), arg(&outs[1]), arg(&outs[2]), arg(&outs[3]), arg(&outs[4]),
                    arg(&outs[5]), arg(&outs[6]), arg(&outs[7]), arg(&outs[8]), arg(&outs[9]),
                    plan.tile_dims(tp),
                    InputScalar::new(dy_scale, dt.storage()),
                    e0, e1, e2, n as u32, tp.warps as u32, plan.plane,
                    plan.delta_per_path, aggregate, plan.atomics, plan.fast_exp,
                    dt.storage(),
                )
            }
        });
        if aggregate {
            launch_tile_chain(plan, &words, &agg, &bstarts);
        }
    }
    let per_group = tp.blocks / g;
    let (gb, gc) = if plan.atomics {
        (db_sum, dc_sum)
    } else {
        (
            db_part
                .reshape(&[bsz, k, g, per_group, n, l])?
                .sum(&[3], false)?,
            dc_part
                .reshape(&[bsz, k, g, per_group, n, l])?
                .sum(&[3], false)?,
        )
    };
    Ok(ScanGrads {
        u: du,
        delta: dd,
        a: da_part.sum(&[0, 3], false)?,
        b: gb,
        c: gc,
        // Every full-scale path sees every position once: dD is the same for all paths.
        d: dd_part
            .sum(&[0, 2], false)?
            .reshape(&[1, di])?
            .expand(&[k, di])?
            .compact()?,
        delta_bias: dbias_part.sum(&[0, 3], false)?,
        z: dz,
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
