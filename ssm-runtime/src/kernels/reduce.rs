//! Reductions over any set of axes in one launch (two for very long reductions).
//!
//! The input view is permuted so that kept axes come first and reduced axes last; each
//! work item reduces one output over one chunk of the reduced range. Two layouts:
//! - *cube per item* when the reduced range is contiguous in memory (the last axis is
//!   reduced): the cube's threads stride over it with coalesced loads, then combine in
//!   shared memory;
//! - *unit per item* otherwise: neighbouring threads own neighbouring outputs, so their
//!   loads are coalesced along the kept axes.
//!
//! When there are too few outputs to fill the device, the reduced range is split into
//! chunks whose partial results a second launch combines.
//!
//! `cubek-reduce` reduces one axis per launch and needs float atomics for its full-tensor
//! sum; this kernel covers any axis set, argmax/argmin with first-index tie-breaking and
//! NaN propagation, and the centred sum of squares behind `var`, on every backend.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::dtype::DType;
use crate::kernels::launch::ELEMWISE_CUBE;
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// What a reduction computes.
#[derive(CubeType, Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReduceOp {
    /// Σ x (times the launch's scale, which makes `mean`).
    Sum,
    /// max x (NaN propagates).
    Max,
    /// min x (NaN propagates).
    Min,
    /// Index of the first maximum (NaN counts as the maximum).
    ArgMax,
    /// Index of the first minimum (NaN counts as the minimum).
    ArgMin,
    /// Σ (x − c)² with a per-output centre c (times the scale, which makes `var`).
    SqDevSum,
}

/// Whether `cand` replaces `best` (values with their indices) under `op`.
#[cube]
fn better<F: Float>(cand: F, ci: u32, best: F, bi: u32, #[comptime] op: ReduceOp) -> bool {
    let cand_nan = math::is_nan::<F>(cand);
    let best_nan = math::is_nan::<F>(best);
    let wins = match op {
        ReduceOp::Max | ReduceOp::ArgMax => cand > best,
        _ => cand < best,
    };
    // NaN beats numbers; among equals (or two NaNs) the smaller index wins.
    (!best_nan && (cand_nan || wins)) || ((cand == best || (cand_nan && best_nan)) && ci < bi)
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn reduce_kernel<F: Float>(
    x: &Tensor<F>,
    center: &Array<F>,
    in_idx: &Array<u32>,
    out_val: &mut Array<F>,
    out_idx: &mut Array<u32>,
    x_off: usize,
    k_rank: usize,
    num_out: usize,
    reduce_len: usize,
    chunk_len: usize,
    n_chunks: usize,
    scale: InputScalar,
    identity: InputScalar,
    #[comptime] op: ReduceOp,
    #[comptime] cube_per_item: bool,
    #[comptime] block: usize,
    #[comptime] indexed_input: bool,
    #[define(F)] _d: StorageType,
) {
    let is_arg = comptime![matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin)];
    let is_sum = comptime![matches!(op, ReduceOp::Sum | ReduceOp::SqDevSum)];
    let item = if cube_per_item {
        CUBE_POS
    } else {
        ABSOLUTE_POS
    };
    let items = num_out * n_chunks;
    if item < items {
        let o = item / n_chunks;
        let chunk = item % n_chunks;
        let rank = x.rank();

        // Offset of output `o` from the kept axes 0..k_rank.
        let mut base = x_off;
        let mut rem = o;
        for k in 0..k_rank {
            let d = k_rank - 1 - k;
            let size = x.shape(d);
            base += (rem % size) * x.stride(d);
            rem /= size;
        }
        let c = if comptime![matches!(op, ReduceOp::SqDevSum)] {
            center[o]
        } else {
            F::new(0.0)
        };

        let start = chunk * chunk_len;
        let end = select(
            start + chunk_len < reduce_len,
            start + chunk_len,
            reduce_len,
        );
        let (first, step) = if cube_per_item {
            (start + UNIT_POS as usize, block)
        } else {
            (start, 1usize)
        };

        let mut acc = identity.get::<F>();
        let mut acc_i = u32::new(comptime!(u32::MAX as i64));
        let mut r = first;
        while r < end {
            let mut off = base;
            let mut rr = r;
            for k in 0..rank - k_rank {
                let d = rank - 1 - k;
                let size = x.shape(d);
                off += (rr % size) * x.stride(d);
                rr /= size;
            }
            let v = x[off];
            if is_sum {
                if comptime![matches!(op, ReduceOp::SqDevSum)] {
                    let dv = v - c;
                    acc += dv * dv;
                } else {
                    acc += v;
                }
            } else {
                let vi = if indexed_input {
                    in_idx[o * reduce_len + r]
                } else {
                    r as u32
                };
                if better::<F>(v, vi, acc, acc_i, op) {
                    acc = v;
                    acc_i = vi;
                }
            }
            r += step;
        }

        let out_pos = o * n_chunks + chunk;
        if cube_per_item {
            let mut sv = SharedMemory::<F>::new(block);
            let mut si = SharedMemory::<u32>::new(block);
            let t = UNIT_POS as usize;
            sv[t] = acc;
            si[t] = acc_i;
            sync_cube();
            // Runtime tree loop (CUBE_DIM == block, a power of two).
            let mut half = (CUBE_DIM / 2) as usize;
            while half > 0 {
                if t < half {
                    let ov = sv[t + half];
                    let oi = si[t + half];
                    if is_sum {
                        sv[t] = sv[t] + ov;
                    } else if better::<F>(ov, oi, sv[t], si[t], op) {
                        sv[t] = ov;
                        si[t] = oi;
                    }
                }
                sync_cube();
                half /= 2;
            }
            if t == 0 {
                out_val[out_pos] = if is_sum {
                    sv[0] * scale.get::<F>()
                } else {
                    sv[0]
                };
                if is_arg {
                    out_idx[out_pos] = si[0];
                }
            }
        } else {
            out_val[out_pos] = if is_sum { acc * scale.get::<F>() } else { acc };
            if is_arg {
                out_idx[out_pos] = acc_i;
            }
        }
    }
}

/// The value a reduction starts from.
fn identity_of(op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Max | ReduceOp::ArgMax => f64::NEG_INFINITY,
        ReduceOp::Min | ReduceOp::ArgMin => f64::INFINITY,
        ReduceOp::Sum | ReduceOp::SqDevSum => 0.0,
    }
}

/// Plan and launch a reduction of `x` (already permuted to `[kept..., reduced...]`, with
/// `k_rank` kept axes) into `num_out` outputs. Returns (values, indices): values has dtype
/// of `x` (for arg ops it holds the extreme values), indices is u32 for arg ops.
pub(crate) fn reduce(
    x: &SsmTensor,
    k_rank: usize,
    op: ReduceOp,
    scale: f64,
    center: Option<&SsmTensor>,
) -> (SsmTensor, Option<SsmTensor>) {
    let num_out: usize = x.shape[..k_rank].iter().product();
    let reduce_len: usize = x.shape[k_rank..].iter().product();
    let is_arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
    let is_sum = matches!(op, ReduceOp::Sum | ReduceOp::SqDevSum);
    let device = x.device.clone();

    // The reduced range is contiguous when the innermost axis is reduced with stride 1.
    let inner_contiguous = x.rank() > k_rank && x.strides[x.rank() - 1] == 1;
    let cube_per_item = inner_contiguous || num_out < 256;
    let block = if cube_per_item {
        (reduce_len.next_power_of_two()).clamp(32, ELEMWISE_CUBE as usize)
    } else {
        1
    };
    // Split long reductions when there are too few outputs to occupy the device.
    let (target_items, min_chunk) = if cube_per_item {
        (1024, block * 8)
    } else {
        (16_384, 256)
    };
    let n_chunks = if num_out < target_items && reduce_len > 2 * min_chunk {
        (target_items / num_out).clamp(1, reduce_len.div_ceil(min_chunk))
    } else {
        1
    };
    let chunk_len = reduce_len.div_ceil(n_chunks);
    let stage_scale = if n_chunks > 1 { 1.0 } else { scale };

    let vals = SsmTensor::empty(&[num_out, n_chunks], x.dtype, &device);
    let idxs = SsmTensor::empty(
        &[if is_arg { num_out * n_chunks } else { 1 }],
        DType::U32,
        &device,
    );
    let dummy_idx = SsmTensor::empty(&[1], DType::U32, &device);
    let center_t = center
        .cloned()
        .unwrap_or_else(|| SsmTensor::empty(&[1], x.dtype, &device));
    launch(
        x,
        &center_t,
        &dummy_idx,
        &vals,
        &idxs,
        k_rank,
        num_out,
        reduce_len,
        chunk_len,
        n_chunks,
        stage_scale,
        op,
        cube_per_item,
        block,
        false,
    );
    if n_chunks == 1 {
        return (
            vals.reshape(&[num_out]).expect("same numel"),
            is_arg.then_some(idxs),
        );
    }
    // Second stage: reduce the partials along their (contiguous) chunk axis.
    let op2 = if op == ReduceOp::SqDevSum {
        ReduceOp::Sum
    } else {
        op
    };
    let block2 = n_chunks
        .next_power_of_two()
        .clamp(32, ELEMWISE_CUBE as usize);
    let vals2 = SsmTensor::empty(&[num_out], x.dtype, &device);
    let idxs2 = SsmTensor::empty(&[if is_arg { num_out } else { 1 }], DType::U32, &device);
    let scale2 = if is_sum { scale } else { 1.0 };
    launch(
        &vals, &center_t, &idxs, &vals2, &idxs2, 1, num_out, n_chunks, n_chunks, 1, scale2, op2,
        true, block2, is_arg,
    );
    (vals2, is_arg.then_some(idxs2))
}

#[allow(clippy::too_many_arguments)]
fn launch(
    x: &SsmTensor,
    center: &SsmTensor,
    in_idx: &SsmTensor,
    out_val: &SsmTensor,
    out_idx: &SsmTensor,
    k_rank: usize,
    num_out: usize,
    reduce_len: usize,
    chunk_len: usize,
    n_chunks: usize,
    scale: f64,
    op: ReduceOp,
    cube_per_item: bool,
    block: usize,
    indexed_input: bool,
) {
    let items = num_out * n_chunks;
    let dtype = x.dtype.storage();
    dispatch!(x.device, c => {
        let (count, dim) = if cube_per_item {
            let dim = CubeDim::new_1d(block as u32);
            (cubecl::calculate_cube_count_elemwise(c, items * block, dim), dim)
        } else {
            crate::kernels::launch::elemwise_grid(c, items)
        };
        record_launch();
        unsafe {
            reduce_kernel::launch_unchecked(
                c,
                count,
                dim,
                x.arg(),
                center.array_arg(center.buffer_len()),
                in_idx.array_arg(in_idx.buffer_len()),
                out_val.array_arg(out_val.buffer_len()),
                out_idx.array_arg(out_idx.buffer_len()),
                x.offset,
                k_rank,
                num_out,
                reduce_len,
                chunk_len,
                n_chunks,
                InputScalar::new(scale, dtype),
                // ±∞ travel as runtime scalars: CUDA kernels cannot hold such literals.
                InputScalar::new(identity_of(op), dtype),
                op,
                cube_per_item,
                block,
                indexed_input,
                dtype,
            )
        }
    })
}
