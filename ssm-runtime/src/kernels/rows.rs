//! Row kernels: operations that reduce over some axes and then rewrite every element of the
//! reduced range — normalisation (LayerNorm, InstanceNorm, GroupNorm, BatchNorm), softmax,
//! log-softmax, and their backward passes.
//!
//! Every operand is a view of one common shape, permuted so that the kept ("item") axes
//! come first and the reduced axes last; broadcast operands (affine weights, per-group
//! statistics) have stride 0 where they do not vary. A work item (one group, or one chunk of
//! a group) is handled by a *segment* of `seg` threads: `seg = 1` when the reduced range is
//! strided (neighbouring threads then own neighbouring items, so loads coalesce across
//! items), up to the whole cube when it is contiguous (threads stride through the range).
//! When the reduced axes merge into one, offsets are `base + r·stride` with no index
//! decomposition per element.
//! A segment's lanes combine their partial results with plane shuffles on devices with
//! 32-wide planes (CUDA), through shared memory otherwise (lavapipe).
//!
//! Fused ops read the range twice (statistics, then the rewrite; the second read mostly
//! hits the cache) and write once. Groups too large for one cube are split into chunks:
//! a statistics launch writes per-chunk partials, a small launch combines them
//! (`finalize`, Chan's parallel variance), and an apply launch rewrites the chunks.
//!
//! Statistics use sums shifted by the first element of the chunk, combined across threads
//! and chunks with Chan's formula, so f32 variance keeps its accuracy when |mean| ≫ std.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::{ELEMWISE_CUBE, elemwise_grid};
use crate::kernels::math;
use crate::kernels::strided::{elem_offset, item_offset};
use crate::tensor::Tensor as SsmTensor;

/// What a row launch computes.
#[derive(CubeType, Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RowOp {
    /// Statistics and normalisation in one launch: `out = (x − μ)·rstd·w + b`; writes
    /// μ and rstd per item to `part_a`, `part_b`.
    NormFwd,
    /// Partial statistics of one chunk: (mean, M2) to `part_a`, `part_b`.
    NormStats,
    /// `out = (x − m)·r·w + b` with per-item `m`, `r` views.
    NormApply,
    /// Fused backward: `out = rstd·(g − mean(g) − x̂·mean(g·x̂))`, `g = dy·w`.
    NormBwd,
    /// Partial sums Σg and Σg·x̂ of one chunk to `part_a`, `part_b`.
    NormBwdStats,
    /// `out = r·(g − s1 − x̂·s2)` with per-item views `m`, `r`, `s1` (slot b), `s2` (slot s).
    NormBwdApply,
    /// Per-channel partials Σ dy·x̂ (`part_a`) and Σ dy (`part_b`); `m`, `r` vary per element.
    AffineGrad,
    /// `out = e^(x − max) / Σ e^(x − max)`.
    Softmax,
    /// `out = x − max − ln Σ e^(x − max)`.
    LogSoftmax,
    /// `out = y·(dy − Σ dy·y)` with x = y (softmax output).
    SoftmaxBwd,
    /// `out = dy − e^y·Σ dy` with x = y (log-softmax output).
    LogSoftmaxBwd,
}

/// Combine (a1, a2, a3) with (b1, b2, b3) under the op's reduction.
#[cube]
fn combine<F: Float>(a1: F, a2: F, a3: F, b1: F, b2: F, b3: F, #[comptime] op: RowOp) -> (F, F, F) {
    match op {
        RowOp::NormFwd | RowOp::NormStats => {
            // (count, mean, M2) — Chan et al.
            let n = a1 + b1;
            let safe = select(n > F::new(0.0), n, F::new(1.0));
            let delta = b2 - a2;
            let mean = a2 + delta * b1 / safe;
            let m2 = a3 + b3 + delta * delta * a1 * b1 / safe;
            (n, mean, m2)
        }
        RowOp::Softmax | RowOp::LogSoftmax => {
            // (max, Σ e^(x − max), unused)
            let m = F::max(a1, b1);
            let ninf = math::neg_infinity_like::<F>(F::cast_from(UNIT_POS));
            let sa = select(a1 == ninf, F::new(0.0), a2 * math::exp::<F>(a1 - m));
            let sb = select(b1 == ninf, F::new(0.0), b2 * math::exp::<F>(b1 - m));
            (m, sa + sb, a3)
        }
        _ => (a1 + b1, a2 + b2, a3 + b3),
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn row_kernel<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    w: &Tensor<F>,
    b: &Tensor<F>,
    m: &Tensor<F>,
    r: &Tensor<F>,
    s: &Tensor<F>,
    out: &mut Tensor<F>,
    part_a: &mut Array<F>,
    part_b: &mut Array<F>,
    offs: Sequence<usize>,
    k_rank: usize,
    num_items: usize,
    reduce_len: usize,
    chunk_len: usize,
    n_chunks: usize,
    eps: InputScalar,
    #[comptime] op: RowOp,
    #[comptime] seg: usize,
    #[comptime] plane: bool,
    #[comptime] fast: bool,
    #[comptime] has_w: bool,
    #[comptime] has_b: bool,
    #[define(F)] _d: StorageType,
) {
    let zero = F::new(0.0);
    let one = F::new(1.0);
    let per_cube = comptime!(ELEMWISE_CUBE as usize / seg);
    let t = UNIT_POS as usize;
    let lane = t % seg;
    let item = if comptime!(seg == 1) {
        ABSOLUTE_POS
    } else {
        CUBE_POS * per_cube + t / seg
    };
    let items = num_items * n_chunks;
    let valid = item < items;
    let item_c = select(valid, item, 0usize);
    // Unit mode: neighbouring threads own neighbouring groups (coalesced across groups);
    // segment mode: a segment's chunks are consecutive.
    let (o, chunk) = if comptime!(seg == 1) {
        (item_c % num_items, item_c / num_items)
    } else {
        (item_c / n_chunks, item_c % n_chunks)
    };
    let part = o * n_chunks + chunk;
    let start = chunk * chunk_len;
    let end = select(
        start + chunk_len < reduce_len,
        start + chunk_len,
        reduce_len,
    );

    // Which operands each op reads.
    let uses_dy = comptime!(matches!(
        op,
        RowOp::NormBwd
            | RowOp::NormBwdStats
            | RowOp::NormBwdApply
            | RowOp::AffineGrad
            | RowOp::SoftmaxBwd
            | RowOp::LogSoftmaxBwd
    ));
    let uses_stats = comptime!(matches!(
        op,
        RowOp::NormApply
            | RowOp::NormBwd
            | RowOp::NormBwdStats
            | RowOp::NormBwdApply
            | RowOp::AffineGrad
    ));
    let writes_out = comptime!(!matches!(
        op,
        RowOp::NormStats | RowOp::NormBwdStats | RowOp::AffineGrad
    ));
    let has_pass1 = comptime!(!matches!(op, RowOp::NormApply | RowOp::NormBwdApply));
    let uses_w = comptime!(
        has_w
            && matches!(
                op,
                RowOp::NormFwd
                    | RowOp::NormApply
                    | RowOp::NormBwd
                    | RowOp::NormBwdStats
                    | RowOp::NormBwdApply
            )
    );
    let uses_b = comptime!(has_b && matches!(op, RowOp::NormFwd | RowOp::NormApply));
    let per_elem_stats = comptime!(matches!(op, RowOp::AffineGrad));

    let xb = item_offset::<F>(x, x, *offs.index(0usize), o, k_rank);
    let dyb = if uses_dy {
        item_offset::<F>(x, dy, *offs.index(1usize), o, k_rank)
    } else {
        xb
    };
    let wb = if uses_w {
        item_offset::<F>(x, w, *offs.index(2usize), o, k_rank)
    } else {
        xb
    };
    let bb = if comptime!(uses_b || matches!(op, RowOp::NormBwdApply)) {
        item_offset::<F>(x, b, *offs.index(3usize), o, k_rank)
    } else {
        xb
    };
    let mb = if uses_stats {
        item_offset::<F>(x, m, *offs.index(4usize), o, k_rank)
    } else {
        xb
    };
    let rb = if uses_stats {
        item_offset::<F>(x, r, *offs.index(5usize), o, k_rank)
    } else {
        xb
    };
    let sb = if comptime!(matches!(op, RowOp::NormBwdApply)) {
        item_offset::<F>(x, s, *offs.index(6usize), o, k_rank)
    } else {
        xb
    };
    let ob = if writes_out {
        item_offset::<F>(x, out, *offs.index(7usize), o, k_rank)
    } else {
        xb
    };

    // Per-item statistics read from views (constant over the reduced range).
    let mean_v = if comptime!(uses_stats && !per_elem_stats) {
        m[mb]
    } else {
        zero
    };
    let rstd_v = if comptime!(uses_stats && !per_elem_stats) {
        r[rb]
    } else {
        zero
    };

    // ---- pass 1: per-thread accumulation (four independent loads per step) -----------------
    let shift = if comptime!(matches!(op, RowOp::NormFwd | RowOp::NormStats)) {
        if valid && start < end {
            x[elem_offset::<F>(x, x, xb, start, k_rank, fast)]
        } else {
            zero
        }
    } else {
        zero
    };
    let mut a1 = if comptime!(matches!(op, RowOp::Softmax | RowOp::LogSoftmax)) {
        math::neg_infinity_like::<F>(F::cast_from(UNIT_POS))
    } else {
        F::new(0.0)
    };
    let mut a2 = F::new(0.0);
    let mut a3 = F::new(0.0);
    let seg4 = comptime!(4 * seg);
    if comptime!(has_pass1) {
        if valid {
            let mut ri = start + lane;
            while ri + comptime!(3 * seg) < end {
                // Issue the four elements' loads before folding any of them in.
                let mut xs = Array::<F>::new(4usize);
                let mut ds = Array::<F>::new(4usize);
                let mut ws = Array::<F>::new(4usize);
                let mut ms = Array::<F>::new(4usize);
                let mut rs = Array::<F>::new(4usize);
                #[unroll]
                for u in 0..4usize {
                    let (xv, dv, wv, mv, rv) = pass1_vals::<F>(
                        x,
                        dy,
                        w,
                        m,
                        r,
                        xb,
                        dyb,
                        wb,
                        mb,
                        rb,
                        ri + comptime!(u * seg),
                        k_rank,
                        fast,
                        op,
                        uses_w,
                    );
                    xs[u] = xv;
                    ds[u] = dv;
                    ws[u] = wv;
                    ms[u] = mv;
                    rs[u] = rv;
                }
                #[unroll]
                for u in 0..4usize {
                    let (c1, c2, c3) = pass1_acc::<F>(
                        xs[u], ds[u], ws[u], ms[u], rs[u], a1, a2, a3, shift, mean_v, rstd_v, op,
                    );
                    a1 = c1;
                    a2 = c2;
                    a3 = c3;
                }
                ri += seg4;
            }
            while ri < end {
                let (x0, d0, w0, m0, r0) = pass1_vals::<F>(
                    x, dy, w, m, r, xb, dyb, wb, mb, rb, ri, k_rank, fast, op, uses_w,
                );
                let (c1, c2, c3) =
                    pass1_acc::<F>(x0, d0, w0, m0, r0, a1, a2, a3, shift, mean_v, rstd_v, op);
                a1 = c1;
                a2 = c2;
                a3 = c3;
                ri += seg;
            }
            if comptime!(matches!(op, RowOp::NormFwd | RowOp::NormStats)) {
                // (count, Σd, Σd²) → (count, mean, M2)
                let safe = select(a1 > zero, a1, one);
                let mean = shift + a2 / safe;
                let m2 = a3 - a2 * a2 / safe;
                a2 = mean;
                a3 = F::max(m2, zero);
            }
        }
        // Combine the segment's lanes: plane shuffles where the device has 32-wide planes
        // (segments of ≤ 32 lanes never straddle a plane), shared memory otherwise.
        if comptime!(plane && seg > 1) {
            #[unroll]
            for i in 0..comptime!(seg.trailing_zeros() as usize) {
                let mask = comptime!((seg >> (i + 1)) as u32);
                let (c1, c2, c3) = combine::<F>(
                    a1,
                    a2,
                    a3,
                    plane_shuffle_xor(a1, mask),
                    plane_shuffle_xor(a2, mask),
                    plane_shuffle_xor(a3, mask),
                    op,
                );
                a1 = c1;
                a2 = c2;
                a3 = c3;
            }
            // The two orders of a pairwise combine may round differently: take the head's.
            let head = UNIT_POS_PLANE - lane as u32;
            a1 = plane_shuffle(a1, head);
            a2 = plane_shuffle(a2, head);
            a3 = plane_shuffle(a3, head);
        } else if comptime!(seg > 1) {
            let mut s1 = SharedMemory::<F>::new(ELEMWISE_CUBE as usize);
            let mut s2 = SharedMemory::<F>::new(ELEMWISE_CUBE as usize);
            let mut s3 = SharedMemory::<F>::new(ELEMWISE_CUBE as usize);
            s1[t] = a1;
            s2[t] = a2;
            s3[t] = a3;
            sync_cube();
            let mut half = comptime!(seg / 2).runtime();
            while half > 0usize {
                if lane < half {
                    let (c1, c2, c3) = combine::<F>(
                        s1[t],
                        s2[t],
                        s3[t],
                        s1[t + half],
                        s2[t + half],
                        s3[t + half],
                        op,
                    );
                    s1[t] = c1;
                    s2[t] = c2;
                    s3[t] = c3;
                }
                sync_cube();
                half /= 2usize;
            }
            let head = t - lane;
            a1 = s1[head];
            a2 = s2[head];
            a3 = s3[head];
            sync_cube();
        }
    }

    if valid {
        // ---- per-item results -----------------------------------------------------------
        let n = F::cast_from(end - start);
        let (mean, rstd) = match op {
            RowOp::NormFwd => {
                let var = a3 / n;
                (a2, F::new(1.0) / F::sqrt(var + eps.get::<F>()))
            }
            _ => (mean_v, rstd_v),
        };
        if lane == 0usize {
            match op {
                RowOp::NormFwd => {
                    part_a[part] = mean;
                    part_b[part] = rstd;
                }
                RowOp::NormStats => {
                    part_a[part] = a2;
                    part_b[part] = a3;
                }
                RowOp::NormBwdStats | RowOp::AffineGrad => {
                    part_a[part] = a1;
                    part_b[part] = a2;
                }
                _ => {}
            }
        }
        // ---- pass 2: rewrite (four elements per step) -------------------------------------
        if comptime!(writes_out) {
            let (k1, k2) = match op {
                RowOp::NormBwd => (a1 / n, a2 / n),
                RowOp::NormBwdApply => (b[bb], s[sb]),
                RowOp::Softmax => (a1, one / a2),
                RowOp::LogSoftmax => (a1, math::ln::<F>(a2)),
                _ => (a1, a2),
            };
            let mut ri = start + lane;
            while ri + comptime!(3 * seg) < end {
                let mut vs = Array::<F>::new(4usize);
                #[unroll]
                for u in 0..4usize {
                    vs[u] = pass2_val::<F>(
                        x,
                        dy,
                        w,
                        b,
                        xb,
                        dyb,
                        wb,
                        bb,
                        ri + comptime!(u * seg),
                        k_rank,
                        mean,
                        rstd,
                        k1,
                        k2,
                        fast,
                        op,
                        uses_w,
                        uses_b,
                    );
                }
                #[unroll]
                for u in 0..4usize {
                    out[elem_offset::<F>(x, out, ob, ri + comptime!(u * seg), k_rank, fast)] =
                        vs[u];
                }
                ri += seg4;
            }
            while ri < end {
                let v = pass2_val::<F>(
                    x, dy, w, b, xb, dyb, wb, bb, ri, k_rank, mean, rstd, k1, k2, fast, op, uses_w,
                    uses_b,
                );
                out[elem_offset::<F>(x, out, ob, ri, k_rank, fast)] = v;
                ri += seg;
            }
        }
    }
}

/// The operand values the first pass of `op` reads at reduced index `ri`:
/// (x, dy, w, m, r), unused ones 0 (w: 1).
#[cube]
#[allow(clippy::too_many_arguments)]
fn pass1_vals<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    w: &Tensor<F>,
    m: &Tensor<F>,
    r: &Tensor<F>,
    xb: usize,
    dyb: usize,
    wb: usize,
    mb: usize,
    rb: usize,
    ri: usize,
    k_rank: usize,
    #[comptime] fast: bool,
    #[comptime] op: RowOp,
    #[comptime] uses_w: bool,
) -> (F, F, F, F, F) {
    let xv = x[elem_offset::<F>(x, x, xb, ri, k_rank, fast)];
    let reads_dy = comptime!(matches!(
        op,
        RowOp::NormBwd
            | RowOp::NormBwdStats
            | RowOp::AffineGrad
            | RowOp::SoftmaxBwd
            | RowOp::LogSoftmaxBwd
    ));
    let dv = if reads_dy {
        dy[elem_offset::<F>(x, dy, dyb, ri, k_rank, fast)]
    } else {
        F::new(0.0)
    };
    let wv = if comptime!(uses_w && matches!(op, RowOp::NormBwd | RowOp::NormBwdStats)) {
        w[elem_offset::<F>(x, w, wb, ri, k_rank, fast)]
    } else {
        F::new(1.0)
    };
    let (mv, rv) = if comptime!(matches!(op, RowOp::AffineGrad)) {
        (
            m[elem_offset::<F>(x, m, mb, ri, k_rank, fast)],
            r[elem_offset::<F>(x, r, rb, ri, k_rank, fast)],
        )
    } else {
        (F::new(0.0), F::new(0.0))
    };
    (xv, dv, wv, mv, rv)
}

/// Fold one element's values into the first-pass accumulators (a1, a2, a3).
#[cube]
#[allow(clippy::too_many_arguments)]
fn pass1_acc<F: Float>(
    xv: F,
    dv: F,
    wv: F,
    mv: F,
    rv: F,
    a1: F,
    a2: F,
    a3: F,
    shift: F,
    mean_v: F,
    rstd_v: F,
    #[comptime] op: RowOp,
) -> (F, F, F) {
    let one = F::new(1.0);
    match op {
        RowOp::NormFwd | RowOp::NormStats => {
            let d = xv - shift;
            (a1 + one, a2 + d, a3 + d * d)
        }
        RowOp::Softmax | RowOp::LogSoftmax => {
            if xv > a1 {
                (xv, a2 * math::exp::<F>(a1 - xv) + one, a3)
            } else {
                (a1, a2 + math::exp::<F>(xv - a1), a3)
            }
        }
        RowOp::SoftmaxBwd => (a1 + dv * xv, a2, a3),
        RowOp::LogSoftmaxBwd => (a1 + dv, a2, a3),
        RowOp::AffineGrad => (a1 + dv * (xv - mv) * rv, a2 + dv, a3),
        _ => {
            // NormBwd, NormBwdStats: g = dy·w, x̂ = (x − μ)·rstd.
            let g = dv * wv;
            (a1 + g, a2 + g * (xv - mean_v) * rstd_v, a3)
        }
    }
}

/// The second-pass output of `op` at reduced index `ri`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn pass2_val<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    w: &Tensor<F>,
    b: &Tensor<F>,
    xb: usize,
    dyb: usize,
    wb: usize,
    bb: usize,
    ri: usize,
    k_rank: usize,
    mean: F,
    rstd: F,
    k1: F,
    k2: F,
    #[comptime] fast: bool,
    #[comptime] op: RowOp,
    #[comptime] uses_w: bool,
    #[comptime] uses_b: bool,
) -> F {
    let xv = x[elem_offset::<F>(x, x, xb, ri, k_rank, fast)];
    match op {
        RowOp::NormFwd | RowOp::NormApply => {
            let y = (xv - mean) * rstd;
            let yw = if uses_w {
                y * w[elem_offset::<F>(x, w, wb, ri, k_rank, fast)]
            } else {
                y
            };
            if uses_b {
                yw + b[elem_offset::<F>(x, b, bb, ri, k_rank, fast)]
            } else {
                yw
            }
        }
        RowOp::NormBwd | RowOp::NormBwdApply => {
            let dv = dy[elem_offset::<F>(x, dy, dyb, ri, k_rank, fast)];
            let g = if uses_w {
                dv * w[elem_offset::<F>(x, w, wb, ri, k_rank, fast)]
            } else {
                dv
            };
            let xh = (xv - mean) * rstd;
            rstd * (g - k1 - xh * k2)
        }
        RowOp::Softmax => math::exp::<F>(xv - k1) * k2,
        RowOp::LogSoftmax => xv - k1 - k2,
        RowOp::SoftmaxBwd => {
            let g = dy[elem_offset::<F>(x, dy, dyb, ri, k_rank, fast)];
            xv * (g - k1)
        }
        _ => {
            // LogSoftmaxBwd
            let g = dy[elem_offset::<F>(x, dy, dyb, ri, k_rank, fast)];
            g - math::exp::<F>(xv) * k1
        }
    }
}

/// Combine per-chunk (mean, M2) partials `[items, chunks]` of a range of `len` elements
/// split into chunks of `chunk_len` into mean, 1/√(var + eps) and the unbiased variance.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn finalize_kernel<F: Float>(
    pm: &Array<F>,
    pm2: &Array<F>,
    mean: &mut Array<F>,
    rstd: &mut Array<F>,
    var_unbiased: &mut Array<F>,
    items: usize,
    n_chunks: usize,
    chunk_len: usize,
    len: usize,
    eps: InputScalar,
    #[define(F)] _d: StorageType,
) {
    let o = ABSOLUTE_POS;
    if o < items {
        let mut n = F::new(0.0);
        let mut mu = F::new(0.0);
        let mut m2 = F::new(0.0);
        for c in 0..n_chunks {
            let start = c * chunk_len;
            let cnt = select(start + chunk_len < len, chunk_len, len - start);
            let nb = F::cast_from(cnt);
            let (a, bm, cm) = combine::<F>(
                n,
                mu,
                m2,
                nb,
                pm[o * n_chunks + c],
                pm2[o * n_chunks + c],
                RowOp::NormStats,
            );
            n = a;
            mu = bm;
            m2 = cm;
        }
        let var = m2 / n;
        mean[o] = mu;
        rstd[o] = F::new(1.0) / F::sqrt(var + eps.get::<F>());
        var_unbiased[o] = m2 / F::max(n - F::new(1.0), F::new(1.0));
    }
}

/// Operands of one row launch: views of the common permuted shape (broadcast with stride 0).
pub(crate) struct RowArgs<'a> {
    pub x: &'a SsmTensor,
    pub dy: Option<&'a SsmTensor>,
    pub w: Option<&'a SsmTensor>,
    pub b: Option<&'a SsmTensor>,
    pub m: Option<&'a SsmTensor>,
    pub r: Option<&'a SsmTensor>,
    pub s: Option<&'a SsmTensor>,
    pub out: Option<&'a SsmTensor>,
}

/// Launch geometry chosen on the host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowPlan {
    pub k_rank: usize,
    pub num_items: usize,
    pub reduce_len: usize,
    pub seg: usize,
    pub fast: bool,
    pub n_chunks: usize,
    pub chunk_len: usize,
}

/// Launch a row op; returns the two per-item (or per-chunk) partial arrays.
pub(crate) fn launch(
    a: &RowArgs<'_>,
    plan: &RowPlan,
    op: RowOp,
    eps: f64,
) -> (SsmTensor, SsmTensor) {
    let x = a.x;
    let device = &x.device;
    let items = plan.num_items * plan.n_chunks;
    let pa = SsmTensor::empty(&[plan.num_items, plan.n_chunks], x.dtype, device);
    let pb = SsmTensor::empty(&[plan.num_items, plan.n_chunks], x.dtype, device);
    if items == 0 {
        return (pa, pb);
    }
    let dummy = x;
    let pick = |t: Option<&SsmTensor>| t.unwrap_or(dummy).clone();
    let ops = [
        x.clone(),
        pick(a.dy),
        pick(a.w),
        pick(a.b),
        pick(a.m),
        pick(a.r),
        pick(a.s),
    ];
    let out = a.out.unwrap_or(dummy).clone();
    let dtype = x.dtype.storage();
    let plane = plan.seg <= 32 && device.has_planes_of(32);
    dispatch!(x.device, c => {
        let (count, dim) = if plan.seg == 1 {
            elemwise_grid(c, items)
        } else {
            let per_cube = ELEMWISE_CUBE as usize / plan.seg;
            let cubes = items.div_ceil(per_cube);
            elemwise_grid(c, cubes * ELEMWISE_CUBE as usize)
        };
        record_launch();
        unsafe {
            row_kernel::launch_unchecked(
                c, count, dim,
                ops[0].arg(), ops[1].arg(), ops[2].arg(), ops[3].arg(),
                ops[4].arg(), ops[5].arg(), ops[6].arg(), out.arg(),
                pa.array_arg(items), pb.array_arg(items),
                ops.iter().chain([&out]).map(|t| t.offset).collect(),
                plan.k_rank, plan.num_items, plan.reduce_len, plan.chunk_len, plan.n_chunks,
                InputScalar::new(eps, dtype),
                op, plan.seg, plane, plan.fast, a.w.is_some(), a.b.is_some(),
                dtype,
            )
        }
    });
    (pa, pb)
}

/// Combine NormStats partials into (mean, rstd, unbiased var) per item.
pub(crate) fn finalize(
    pm: &SsmTensor,
    pm2: &SsmTensor,
    plan: &RowPlan,
    eps: f64,
) -> (SsmTensor, SsmTensor, SsmTensor) {
    let items = plan.num_items;
    let d = &pm.device;
    let mean = SsmTensor::empty(&[items], pm.dtype, d);
    let rstd = SsmTensor::empty(&[items], pm.dtype, d);
    let var = SsmTensor::empty(&[items], pm.dtype, d);
    if items == 0 {
        return (mean, rstd, var);
    }
    let dtype = pm.dtype.storage();
    dispatch!(pm.device, c => {
        let (count, dim) = elemwise_grid(c, items);
        record_launch();
        unsafe {
            finalize_kernel::launch_unchecked(
                c, count, dim,
                pm.array_arg(pm.numel()), pm2.array_arg(pm2.numel()),
                mean.array_arg(items), rstd.array_arg(items), var.array_arg(items),
                items, plan.n_chunks, plan.chunk_len, plan.reduce_len,
                InputScalar::new(eps, dtype),
                dtype,
            )
        }
    });
    (mean, rstd, var)
}
