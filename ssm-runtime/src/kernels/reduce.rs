//! Reductions over any set of axes in one launch (two for very long reductions).
//!
//! The input view is permuted so that kept axes come first and reduced axes last, and
//! adjacent axes that memory lets merge are merged (a sum over the leading axes of a
//! channels-last tensor becomes one strided axis). Each work item reduces one output over
//! one chunk of the reduced range, issuing up to `UNROLL` loads before it combines them (in
//! order: the same sums as a plain loop). Two layouts:
//! - *threads per item* when the reduced range is contiguous and at least a warp long, or
//!   when there are fewer than 8 outputs: a block of 32–256 threads strides over the range
//!   (about four elements a thread; a cube holds several blocks when the rows are short),
//!   then combines with plane shuffles (sums in one-plane blocks) or a shared-memory tree;
//! - *unit per item* otherwise: neighbouring threads own neighbouring outputs (of one chunk),
//!   so their loads coalesce along the kept axes.
//!
//! When there are too few outputs to fill the device, the reduced range is split into
//! chunks whose partial results a second launch combines. Reduced axes that do not merge
//! under a long innermost one are reduced in two passes (the innermost first), so no
//! element's offset takes a division.
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
use crate::kernels::strided::{elem_offset, item_offset};
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

/// Most loads a unit issues before it combines them: a unit waiting on one load at a time
/// moved ~1 TB/s on an H200 (see [`super::split_sum`], which does the same for split
/// partials). Fewer when a unit has fewer elements (a cube over a short row).
const UNROLL: usize = 8;

/// Shortest innermost reduced axis that [`reduce`] reduces on its own first when other
/// reduced axes do not merge with it: its partials are then at most 1/256 of the input.
const SPLIT_INNER: usize = 256;

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
    #[comptime] per_cube: usize,
    #[comptime] indexed_input: bool,
    #[comptime] single_axis: bool,
    #[comptime] unroll: usize,
    #[comptime] plane_sums: bool,
    #[define(F)] _d: StorageType,
) {
    let is_arg = comptime![matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin)];
    let is_sum = comptime![matches!(op, ReduceOp::Sum | ReduceOp::SqDevSum)];
    // Threads per item (`cube_per_item`): `per_cube` blocks of `block` threads a cube, one
    // item a block. A unit per item otherwise.
    let t = UNIT_POS as usize % block;
    let item = if cube_per_item {
        CUBE_POS * per_cube + UNIT_POS as usize / block
    } else {
        ABSOLUTE_POS
    };
    let live_item = item < num_out * n_chunks;
    // Items in output order with threads per item; a unit per item: neighbouring units own
    // neighbouring outputs of one chunk, so their loads coalesce along the kept axes.
    let (o, chunk) = if cube_per_item {
        (item / n_chunks, item % n_chunks)
    } else {
        (item % num_out, item / num_out)
    };
    let mut acc = identity.get::<F>();
    let mut acc_i = u32::new(comptime!(u32::MAX as i64));
    if live_item {
        let base = item_offset::<F>(x, x, x_off, o, k_rank);
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
            (start + t, block)
        } else {
            (start, 1usize)
        };
        // This unit's elements: first, first + step, … below end.
        let count = select(first < end, (end - first).div_ceil(step), 0usize);

        for q in 0..count.div_ceil(unroll) {
            // Past the last element a unit reloads it (sums add zero in its place): every
            // load is issued unconditionally, and elements still combine in order.
            #[unroll]
            for k in 0..unroll {
                let i = q * unroll + k;
                let live = i < count;
                let r = first + select(live, i, count - 1) * step;
                let v = x[elem_offset::<F>(x, x, base, r, k_rank, single_axis)];
                if is_sum {
                    let term = if comptime![matches!(op, ReduceOp::SqDevSum)] {
                        (v - c) * (v - c)
                    } else {
                        v
                    };
                    acc += select(live, term, F::new(0.0));
                } else {
                    let vi = if indexed_input {
                        in_idx[o * reduce_len + r]
                    } else {
                        r as u32
                    };
                    // A reloaded last element ties with itself at its own index: no
                    // change, so extremes need no mask.
                    if better::<F>(v, vi, acc, acc_i, op) {
                        acc = v;
                        acc_i = vi;
                    }
                }
            }
        }
    }

    let out_pos = o * n_chunks + chunk;
    if comptime!(cube_per_item && plane_sums) {
        // A block is one plane: its sum with shuffles, no shared memory or barriers.
        let total = plane_sum(acc);
        if t == 0 && live_item {
            out_val[out_pos] = total * scale.get::<F>();
        }
    } else if cube_per_item {
        // Every unit of the cube takes part in the tree (a block past the last item
        // combines identities), so the barriers are uniform.
        let mut sv = SharedMemory::<F>::new(comptime!(block * per_cube));
        let mut si = SharedMemory::<u32>::new(comptime!(block * per_cube));
        let u = UNIT_POS as usize;
        sv[u] = acc;
        si[u] = acc_i;
        sync_cube();
        // Runtime (a comptime start could not be stepped): CUBE_DIM / per_cube == block.
        let mut half = CUBE_DIM as usize / per_cube / 2;
        while half > 0 {
            if t < half {
                let ov = sv[u + half];
                let oi = si[u + half];
                if is_sum {
                    sv[u] = sv[u] + ov;
                } else if better::<F>(ov, oi, sv[u], si[u], op) {
                    sv[u] = ov;
                    si[u] = oi;
                }
            }
            sync_cube();
            half /= 2;
        }
        if t == 0 && live_item {
            out_val[out_pos] = if is_sum {
                sv[u] * scale.get::<F>()
            } else {
                sv[u]
            };
            if is_arg {
                out_idx[out_pos] = si[u];
            }
        }
    } else if live_item {
        out_val[out_pos] = if is_sum { acc * scale.get::<F>() } else { acc };
        if is_arg {
            out_idx[out_pos] = acc_i;
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

/// `x` with adjacent axes merged where memory allows, within the kept axes `..k_rank` and
/// within the reduced ones, and axes of size 1 dropped; returns the view and its kept rank.
/// The reduced group keeps at least one axis. Merging turns the common cases (a sum over
/// the leading axes of a channels-last tensor, over the trailing axes of a contiguous one)
/// into one reduced axis that the kernel steps through without index decoding.
fn merged_axes(x: &SsmTensor, k_rank: usize) -> (SsmTensor, usize) {
    let group = |axes: std::ops::Range<usize>| {
        let mut dims: Vec<(usize, usize)> = Vec::new();
        for d in axes.filter(|&d| x.shape[d] != 1) {
            let (size, stride) = (x.shape[d], x.strides[d]);
            match dims.last_mut() {
                // The outer axis steps over exactly one run of this one.
                Some(outer) if outer.1 == stride * size => *outer = (outer.0 * size, stride),
                _ => dims.push((size, stride)),
            }
        }
        dims
    };
    let kept = group(0..k_rank);
    let mut reduced = group(k_rank..x.rank());
    if reduced.is_empty() {
        reduced.push((1, 1));
    }
    let (shape, strides) = kept.iter().chain(&reduced).copied().unzip();
    (x.view(shape, strides, x.offset), kept.len())
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
    let idx_len = |n: usize| if is_arg { n } else { 1 };
    if num_out == 0 {
        let vals = SsmTensor::empty(&[0], x.dtype, &device);
        return (
            vals,
            is_arg.then(|| SsmTensor::empty(&[0], DType::U32, &device)),
        );
    }
    let (x, k_rank) = &merged_axes(x, k_rank);
    let (rank, k_rank) = (x.rank(), *k_rank);
    // Reduced axes that do not merge (a channels-first bias gradient: batch and space) cost
    // a division and a remainder per axis per element, several times the time of the read
    // on a GPU. With a long innermost axis, reduce it first (stepped by a multiply), then
    // its partials over the rest. (Arg-extremes reduce one axis: never here.)
    if rank - k_rank >= 2 && x.shape[rank - 1] >= SPLIT_INNER && !is_arg {
        let outer: usize = x.shape[k_rank..rank - 1].iter().product();
        let row_center = center.map(|c| {
            c.reshape(&[num_out, 1])
                .and_then(|c| c.expand(&[num_out, outer]))
                .and_then(|c| c.contiguous())
                .expect("a [num_out] centre repeated per row")
        });
        let (rows, _) = reduce(x, rank - 1, op, 1.0, row_center.as_ref());
        let rows = rows.reshape(&[num_out, outer]).expect("same numel");
        let op2 = if op == ReduceOp::SqDevSum {
            ReduceOp::Sum
        } else {
            op
        };
        return reduce(&rows, 1, op2, scale, None);
    }

    // Threads per output when the reduced range is contiguous and long enough to occupy a
    // warp with coalesced loads, or when there are too few outputs for units to coalesce
    // along the kept axes (fewer than the eight f32 values of a 32-byte sector); otherwise
    // a unit per output (chunked when few: a warp then spans several chunks).
    let inner_contiguous = x.strides[rank - 1] == 1;
    let cube_per_item = (inner_contiguous && reduce_len >= 32) || num_out < 8;
    let block = if cube_per_item {
        item_block(reduce_len)
    } else {
        1
    };
    // Split long reductions when there are too few outputs to occupy the device: enough
    // units (each with `UNROLL` loads in flight) to cover the latency of device memory.
    // Chunks hold whole rounds of `UNROLL` loads a unit; only the last one runs short.
    let (target_items, min_chunk, round) = if cube_per_item {
        (1024, block * UNROLL, block * UNROLL)
    } else {
        (65_536, 64, UNROLL)
    };
    let chunk_len = if num_out < target_items && reduce_len > 2 * min_chunk {
        let n = (target_items / num_out).clamp(1, reduce_len.div_ceil(min_chunk));
        reduce_len.div_ceil(n).next_multiple_of(round)
    } else {
        reduce_len
    };
    let n_chunks = reduce_len.div_ceil(chunk_len.max(1)).max(1);
    let first = Pass {
        k_rank,
        num_out,
        reduce_len,
        chunk_len,
        n_chunks,
        cube_per_item,
        block,
        single_axis: rank - k_rank == 1,
    };
    let stage_scale = if n_chunks > 1 { 1.0 } else { scale };

    let vals = SsmTensor::empty(&[num_out, n_chunks], x.dtype, &device);
    let idxs = SsmTensor::empty(&[idx_len(num_out * n_chunks)], DType::U32, &device);
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
        &first,
        stage_scale,
        op,
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
    let second = Pass {
        k_rank: 1,
        num_out,
        reduce_len: n_chunks,
        chunk_len: n_chunks,
        n_chunks: 1,
        cube_per_item: true,
        block: item_block(n_chunks),
        single_axis: true,
    };
    let vals2 = SsmTensor::empty(&[num_out], x.dtype, &device);
    let idxs2 = SsmTensor::empty(&[idx_len(num_out)], DType::U32, &device);
    let scale2 = if is_sum { scale } else { 1.0 };
    launch(
        &vals, &center_t, &idxs, &vals2, &idxs2, &second, scale2, op2, is_arg,
    );
    (vals2, is_arg.then_some(idxs2))
}

/// Threads that reduce one item of `len` elements: about four elements a thread, a warp to
/// a cube. A cube per item whatever its length left a short row's threads mostly idle and
/// paid a cube-wide tree per row: the 96-channel rows of the (2, 96, 56, 56, 16) activation
/// summed at 0.37 TB/s on an H100 (103 µs, PyTorch 26 µs), 128 threads for 96 elements.
fn item_block(len: usize) -> usize {
    len.div_ceil(4)
        .next_power_of_two()
        .clamp(32, ELEMWISE_CUBE as usize)
}

/// One launch's plan: the view's kept rank, outputs, reduced length and its chunks, the
/// layout (threads or a unit per item, threads per item) and whether the reduced axes are
/// one.
struct Pass {
    k_rank: usize,
    num_out: usize,
    reduce_len: usize,
    chunk_len: usize,
    n_chunks: usize,
    cube_per_item: bool,
    block: usize,
    single_axis: bool,
}

impl Pass {
    /// Items a cube: cubes of [`ELEMWISE_CUBE`] threads in blocks of `block` (one item a
    /// unit: 1, unused).
    fn per_cube(&self) -> usize {
        if self.cube_per_item {
            ELEMWISE_CUBE as usize / self.block
        } else {
            1
        }
    }

    /// Loads in flight a unit: its element count (per chunk) rounded up to a power of two,
    /// at most [`UNROLL`].
    fn unroll(&self) -> usize {
        let step = if self.cube_per_item { self.block } else { 1 };
        self.chunk_len
            .div_ceil(step)
            .next_power_of_two()
            .min(UNROLL)
    }
}

#[allow(clippy::too_many_arguments)]
fn launch(
    x: &SsmTensor,
    center: &SsmTensor,
    in_idx: &SsmTensor,
    out_val: &SsmTensor,
    out_idx: &SsmTensor,
    pass: &Pass,
    scale: f64,
    op: ReduceOp,
    indexed_input: bool,
) {
    let items = pass.num_out * pass.n_chunks;
    let dtype = x.dtype.storage();
    // Sums in one-plane blocks (items of at most 128 elements) add with shuffles instead of
    // a five-step tree of cube barriers: on an H100 the 96-element rows of `row_each`
    // went 33.9 → 29.6 µs (different machines, PyTorch's 26.6 / 26.4 on each). Wider blocks
    // keep the tree: summing their planes' shuffled sums through shared memory measured
    // 26.4 → 30.0 (`rows`) and 33.8 → 40.2 µs (`cf_bias`) on the same pair of machines. The
    // tree also serves extremes (ties and NaNs need the index) and devices without plane
    // operations (lavapipe).
    let plane_sums = pass.cube_per_item
        && pass.block == 32
        && matches!(op, ReduceOp::Sum | ReduceOp::SqDevSum)
        && x.device.has_planes_of(32);
    dispatch!(x.device, c => {
        let (count, dim) = if pass.cube_per_item {
            let dim = CubeDim::new_1d((pass.block * pass.per_cube()) as u32);
            (cubecl::calculate_cube_count_elemwise(c, items * pass.block, dim), dim)
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
                pass.k_rank,
                pass.num_out,
                pass.reduce_len,
                pass.chunk_len,
                pass.n_chunks,
                InputScalar::new(scale, dtype),
                // ±∞ travel as runtime scalars: CUDA kernels cannot hold such literals.
                InputScalar::new(identity_of(op), dtype),
                op,
                pass.cube_per_item,
                pass.block,
                pass.per_cube(),
                indexed_input,
                pass.single_axis,
                pass.unroll(),
                plane_sums,
                dtype,
            )
        }
    })
}
