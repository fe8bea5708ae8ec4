//! Fused multi-head attention `softmax(Q·Kᵀ·scale)·V` (flash-attention style: the L × L
//! score matrix never exists in memory) and its backward.
//!
//! Forward: one cube per (batch·head, block of `rows` queries), one thread per query row
//! holding its query, running maximum, normaliser and output accumulator in registers; key
//! and value blocks of `cols` rows are staged in shared memory and every thread streams
//! through them with the online softmax update. The log-sum-exp of each row is saved for
//! the backward.
//!
//! Backward (FlashAttention-2 recomputation, no atomics): with `D_i = Σ dO_i·O_i`,
//! `P_ij = exp(s_ij − lse_i)`, `dS_ij = P_ij·(dO_i·V_j − D_i)`: one launch per query block
//! accumulates `dQ_i = scale·Σ_j dS_ij·K_j`; one launch per key block accumulates
//! `dK_j = scale·Σ_i dS_ij·Q_i` and `dV_j = Σ_i P_ij·dO_i`.
//!
//! The head dimension is a compile-time parameter (registers); shared memory holds
//! `cols × (dh + dv)` elements per stage. Batch·heads run along the grid's y axis, in
//! launches of at most `MAX_GRID_Y` (CUDA's and Vulkan's limit there), each told its
//! first batch·head.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// Most cubes along the grid's y axis (CUDA's `gridDim.y` and Vulkan's usual
/// `maxComputeWorkGroupCount[1]`).
const MAX_GRID_Y: usize = 65_535;

/// (first batch·head, count) of each launch over `bh` batch·heads.
fn bh_chunks(bh: usize) -> impl Iterator<Item = (usize, u32)> {
    (0..bh)
        .step_by(MAX_GRID_Y)
        .map(move |b0| (b0, (bh - b0).min(MAX_GRID_Y) as u32))
}

/// Offset of element (b·h flat, row, 0) in a rank-4 `[B, H, L, D]` view.
#[cube]
fn row_base<F: Float>(t: &Tensor<F>, off: usize, bh: usize, row: usize) -> usize {
    let h = t.shape(1);
    off + (bh / h) * t.stride(0) + (bh % h) * t.stride(1) + row * t.stride(2)
}

/// Stage rows `r0 .. r0 + count` (each `dim` long, times `scale`) of the `[B, H, L, D]`
/// view `t` into shared memory, zeros past row `len`; `step` threads cooperate.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_rows<F: Float>(
    t: &Tensor<F>,
    off: usize,
    bh: usize,
    r0: usize,
    len: usize,
    sm: &mut SharedMemory<F>,
    scale: F,
    #[comptime] count: usize,
    #[comptime] dim: usize,
    #[comptime] step: usize,
) {
    let mut e = UNIT_POS as usize;
    while e < count * dim {
        let j = r0 + e / dim;
        sm[e] = if j < len {
            t[row_base::<F>(t, off, bh, j) + (e % dim) * t.stride(3)] * scale
        } else {
            F::new(0.0)
        };
        e += step;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attn_fwd<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Array<F>,
    lse: &mut Array<F>,
    q_off: usize,
    k_off: usize,
    v_off: usize,
    lq: usize,
    lk: usize,
    bh0: usize,
    scale: InputScalar,
    #[comptime] dh: usize,
    #[comptime] dv: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[define(F)] _d: StorageType,
) {
    let t = UNIT_POS as usize;
    let bh = bh0 + CUBE_POS_Y as usize;
    let row = CUBE_POS_X as usize * rows + t;
    let active = row < lq;
    let sc = scale.get::<F>();
    let mut qr = Array::<F>::new(dh);
    let qb = row_base::<F>(q, q_off, bh, select(active, row, 0usize));
    #[unroll]
    for d in 0..dh {
        qr[d] = q[qb + d * q.stride(3)] * sc;
    }
    let mut acc = Array::<F>::new(dv);
    #[unroll]
    for d in 0..dv {
        acc[d] = F::new(0.0);
    }
    let mut m = math::neg_infinity_like::<F>(F::cast_from(UNIT_POS));
    let mut l = F::new(0.0);
    let mut ks = SharedMemory::<F>::new(cols * dh);
    let mut vs = SharedMemory::<F>::new(cols * dv);
    let mut j0 = 0usize;
    while j0 < lk {
        // Stage keys and values j0..j0+cols.
        stage_rows::<F>(k, k_off, bh, j0, lk, &mut ks, F::new(1.0), cols, dh, rows);
        stage_rows::<F>(v, v_off, bh, j0, lk, &mut vs, F::new(1.0), cols, dv, rows);
        sync_cube();
        let n = select(lk - j0 < cols, lk - j0, cols);
        for j in 0..n {
            let mut s = F::new(0.0);
            #[unroll]
            for d in 0..dh {
                s += qr[d] * ks[j * dh + d];
            }
            if s > m {
                let corr = math::exp::<F>(m - s);
                l = l * corr + F::new(1.0);
                #[unroll]
                for d in 0..dv {
                    acc[d] = acc[d] * corr + vs[j * dv + d];
                }
                m = s;
            } else {
                let p = math::exp::<F>(s - m);
                l += p;
                #[unroll]
                for d in 0..dv {
                    acc[d] += p * vs[j * dv + d];
                }
            }
        }
        sync_cube();
        j0 += cols;
    }
    if active {
        let ob = (bh * lq + row) * dv;
        let inv = F::new(1.0) / l;
        #[unroll]
        for d in 0..dv {
            out[ob + d] = acc[d] * inv;
        }
        lse[bh * lq + row] = m + math::ln::<F>(l);
    }
}

/// dQ: one thread per query row, streaming key/value blocks.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attn_bwd_dq<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dout: &Tensor<F>,
    lse: &Array<F>,
    delta: &Array<F>,
    dq: &mut Array<F>,
    q_off: usize,
    k_off: usize,
    v_off: usize,
    do_off: usize,
    lq: usize,
    lk: usize,
    bh0: usize,
    scale: InputScalar,
    #[comptime] dh: usize,
    #[comptime] dv: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[define(F)] _d: StorageType,
) {
    let t = UNIT_POS as usize;
    let bh = bh0 + CUBE_POS_Y as usize;
    let row = CUBE_POS_X as usize * rows + t;
    let active = row < lq;
    let rr = select(active, row, 0usize);
    let sc = scale.get::<F>();
    let mut qr = Array::<F>::new(dh);
    let mut gr = Array::<F>::new(dv);
    let mut acc = Array::<F>::new(dh);
    let qb = row_base::<F>(q, q_off, bh, rr);
    let gb = row_base::<F>(dout, do_off, bh, rr);
    #[unroll]
    for d in 0..dh {
        qr[d] = q[qb + d * q.stride(3)] * sc;
        acc[d] = F::new(0.0);
    }
    #[unroll]
    for d in 0..dv {
        gr[d] = dout[gb + d * dout.stride(3)];
    }
    let li = lse[bh * lq + rr];
    let di = delta[bh * lq + rr];
    let mut ks = SharedMemory::<F>::new(cols * dh);
    let mut vs = SharedMemory::<F>::new(cols * dv);
    let mut j0 = 0usize;
    while j0 < lk {
        stage_rows::<F>(k, k_off, bh, j0, lk, &mut ks, F::new(1.0), cols, dh, rows);
        stage_rows::<F>(v, v_off, bh, j0, lk, &mut vs, F::new(1.0), cols, dv, rows);
        sync_cube();
        let n = select(lk - j0 < cols, lk - j0, cols);
        for j in 0..n {
            let mut s = F::new(0.0);
            #[unroll]
            for d in 0..dh {
                s += qr[d] * ks[j * dh + d];
            }
            let p = math::exp::<F>(s - li);
            let mut dp = F::new(0.0);
            #[unroll]
            for d in 0..dv {
                dp += gr[d] * vs[j * dv + d];
            }
            let ds = p * (dp - di);
            #[unroll]
            for d in 0..dh {
                acc[d] += ds * ks[j * dh + d];
            }
        }
        sync_cube();
        j0 += cols;
    }
    if active {
        let ob = (bh * lq + row) * dh;
        #[unroll]
        for d in 0..dh {
            dq[ob + d] = acc[d] * sc;
        }
    }
}

/// dK, dV: one thread per key row, streaming query blocks (Q, dO, lse, D).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attn_bwd_dkv<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dout: &Tensor<F>,
    lse: &Array<F>,
    delta: &Array<F>,
    dk: &mut Array<F>,
    dvo: &mut Array<F>,
    q_off: usize,
    k_off: usize,
    v_off: usize,
    do_off: usize,
    lq: usize,
    lk: usize,
    bh0: usize,
    scale: InputScalar,
    #[comptime] dh: usize,
    #[comptime] dv: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[define(F)] _d: StorageType,
) {
    let t = UNIT_POS as usize;
    let bh = bh0 + CUBE_POS_Y as usize;
    let col = CUBE_POS_X as usize * cols + t;
    let active = col < lk;
    let cc = select(active, col, 0usize);
    let sc = scale.get::<F>();
    let mut kr = Array::<F>::new(dh);
    let mut vr = Array::<F>::new(dv);
    let mut gk = Array::<F>::new(dh);
    let mut gv = Array::<F>::new(dv);
    let kb = row_base::<F>(k, k_off, bh, cc);
    let vb = row_base::<F>(v, v_off, bh, cc);
    #[unroll]
    for d in 0..dh {
        kr[d] = k[kb + d * k.stride(3)];
        gk[d] = F::new(0.0);
    }
    #[unroll]
    for d in 0..dv {
        vr[d] = v[vb + d * v.stride(3)];
        gv[d] = F::new(0.0);
    }
    let mut qs = SharedMemory::<F>::new(rows * dh);
    let mut gs = SharedMemory::<F>::new(rows * dv);
    let mut ls = SharedMemory::<F>::new(rows);
    let mut ds_ = SharedMemory::<F>::new(rows);
    let mut i0 = 0usize;
    while i0 < lq {
        stage_rows::<F>(q, q_off, bh, i0, lq, &mut qs, sc, rows, dh, cols);
        stage_rows::<F>(
            dout,
            do_off,
            bh,
            i0,
            lq,
            &mut gs,
            F::new(1.0),
            rows,
            dv,
            cols,
        );
        let mut e3 = t;
        while e3 < rows {
            let i = i0 + e3;
            ls[e3] = if i < lq {
                lse[bh * lq + i]
            } else {
                F::new(0.0)
            };
            ds_[e3] = if i < lq {
                delta[bh * lq + i]
            } else {
                F::new(0.0)
            };
            e3 += cols;
        }
        sync_cube();
        let n = select(lq - i0 < rows, lq - i0, rows);
        for i in 0..n {
            let mut s = F::new(0.0);
            #[unroll]
            for d in 0..dh {
                s += qs[i * dh + d] * kr[d];
            }
            let p = math::exp::<F>(s - ls[i]);
            let mut dp = F::new(0.0);
            #[unroll]
            for d in 0..dv {
                let g = gs[i * dv + d];
                gv[d] += p * g;
                dp += g * vr[d];
            }
            let dsv = p * (dp - ds_[i]);
            // qs already holds q·scale, so dK = Σ dS·(q·scale).
            #[unroll]
            for d in 0..dh {
                gk[d] += dsv * qs[i * dh + d];
            }
        }
        sync_cube();
        i0 += rows;
    }
    if active {
        let kbo = (bh * lk + col) * dh;
        #[unroll]
        for d in 0..dh {
            dk[kbo + d] = gk[d];
        }
        let vbo = (bh * lk + col) * dv;
        #[unroll]
        for d in 0..dv {
            dvo[vbo + d] = gv[d];
        }
    }
}

/// Block sizes: threads per cube and staged rows, bounded by shared memory.
pub(crate) fn blocks(dh: usize, dv: usize, elem: usize, max_smem: usize) -> usize {
    // Stay within the 48 KiB every backend grants without an opt-in, with room to spare.
    let budget = max_smem.min(48 * 1024) / 2;
    let mut b = 64usize;
    while b > 8 && b * (dh + dv + 2) * elem > budget {
        b /= 2;
    }
    b
}

fn max_smem(t: &SsmTensor) -> usize {
    dispatch!(t.device, c => c.properties().hardware.max_shared_memory_size)
}

/// Forward: returns (out `[B, H, Lq, Dv]`, lse `[B, H, Lq]`).
pub(crate) fn forward(
    q: &SsmTensor,
    k: &SsmTensor,
    v: &SsmTensor,
    scale: f64,
) -> (SsmTensor, SsmTensor) {
    let (b, h, lq, dh) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (lk, dv) = (k.shape[2], v.shape[3]);
    let out = SsmTensor::empty(&[b, h, lq, dv], q.dtype, &q.device);
    let lse = SsmTensor::empty(&[b, h, lq], q.dtype, &q.device);
    if b * h * lq == 0 {
        return (out, lse);
    }
    let bs = blocks(dh, dv, q.dtype.size(), max_smem(q));
    let dtype = q.dtype.storage();
    dispatch!(q.device, c => {
        for (bh0, n) in bh_chunks(b * h) {
            let count = CubeCount::Static(lq.div_ceil(bs) as u32, n, 1);
            record_launch();
            unsafe {
                attn_fwd::launch_unchecked(
                    c, count, CubeDim::new_1d(bs as u32),
                    q.arg(), k.arg(), v.arg(),
                    out.array_arg(out.numel()), lse.array_arg(lse.numel()),
                    q.offset, k.offset, v.offset, lq, lk, bh0,
                    InputScalar::new(scale, dtype),
                    dh, dv, bs, bs,
                    dtype,
                )
            }
        }
    });
    (out, lse)
}

/// Backward: returns (dq, dk, dv), contiguous.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: &SsmTensor,
    k: &SsmTensor,
    v: &SsmTensor,
    dout: &SsmTensor,
    lse: &SsmTensor,
    delta: &SsmTensor,
    scale: f64,
) -> (SsmTensor, SsmTensor, SsmTensor) {
    let (b, h, lq, dh) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (lk, dvs) = (k.shape[2], v.shape[3]);
    let dq = SsmTensor::empty(&[b, h, lq, dh], q.dtype, &q.device);
    let dk = SsmTensor::empty(&[b, h, lk, dh], q.dtype, &q.device);
    let dvt = SsmTensor::empty(&[b, h, lk, dvs], q.dtype, &q.device);
    if b * h == 0 || lq == 0 || lk == 0 {
        return (dq, dk, dvt);
    }
    let bs = blocks(dh, dvs, q.dtype.size(), max_smem(q));
    let dtype = q.dtype.storage();
    dispatch!(q.device, c => {
        for (bh0, n) in bh_chunks(b * h) {
            record_launch();
            unsafe {
                attn_bwd_dq::launch_unchecked(
                    c,
                    CubeCount::Static(lq.div_ceil(bs) as u32, n, 1),
                    CubeDim::new_1d(bs as u32),
                    q.arg(), k.arg(), v.arg(), dout.arg(),
                    lse.array_arg(lse.numel()), delta.array_arg(delta.numel()),
                    dq.array_arg(dq.numel()),
                    q.offset, k.offset, v.offset, dout.offset, lq, lk, bh0,
                    InputScalar::new(scale, dtype),
                    dh, dvs, bs, bs,
                    dtype,
                );
            }
            record_launch();
            unsafe {
                attn_bwd_dkv::launch_unchecked(
                    c,
                    CubeCount::Static(lk.div_ceil(bs) as u32, n, 1),
                    CubeDim::new_1d(bs as u32),
                    q.arg(), k.arg(), v.arg(), dout.arg(),
                    lse.array_arg(lse.numel()), delta.array_arg(delta.numel()),
                    dk.array_arg(dk.numel()), dvt.array_arg(dvt.numel()),
                    q.offset, k.offset, v.offset, dout.offset, lq, lk, bh0,
                    InputScalar::new(scale, dtype),
                    dh, dvs, bs, bs,
                    dtype,
                );
            }
        }
    });
    (dq, dk, dvt)
}
