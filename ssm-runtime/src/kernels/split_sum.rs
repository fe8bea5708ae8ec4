//! Sums of split partial results: the `[splits, n]` partials of a split-K or split-rows
//! GEMM summed into `[n]`, optionally written transposed (`[b, r, c]` partials into a
//! `[b, c, r]` result: the pipelined weight gradient's `[c_out, tap, c_in]` into the
//! weight's `[c_out, c_in, tap]`, a sum and a permute in one pass).
//!
//! The generic reduction ([`super::reduce`]) gives each output one unit that waits on its
//! loads one after another: on an H200 it summed 29 × 249k f32 partials in 26 µs (1.1 TB/s),
//! a ninth of the bf16 weight gradient it followed. Here a unit issues [`UNROLL`] loads
//! before adding them (past the last split it reloads the last one and adds zero, so no
//! branch holds a load back), still in split order: the same additions as a plain loop.
//! A transposed sum runs warps over 4 × 8 blocks of `[r, c]`: each read is four whole
//! 32-byte sectors as along the partials, and each write covers eight sectors instead of
//! one per unit.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::{ELEMWISE_CUBE, elemwise_grid};
use crate::tensor::Tensor as SsmTensor;

/// Loads a unit keeps in flight.
const UNROLL: usize = 16;
/// A warp's block of a transposed sum: `BLOCK_R` rows of `BLOCK_C` columns.
const BLOCK_R: usize = 4;
const BLOCK_C: usize = 8;
// Blocks are whole warps, and cubes whole blocks.
const _: () = assert!(BLOCK_R * BLOCK_C == 32 && (ELEMWISE_CUBE as usize).is_multiple_of(32));

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn split_sum_kernel<F: Float>(
    parts: &Array<F>,
    out: &mut Array<F>,
    parts_off: usize,
    n: usize,
    splits: usize,
    rows: usize,
    cols: usize,
    #[comptime] transposed: bool,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    // Output `dst` from the partials at `src` within each split.
    let mut src = i;
    let mut dst = i;
    let mut live = i < n;
    if transposed {
        let (block, lane) = (i / 32, i % 32);
        let r_blocks = rows.div_ceil(BLOCK_R);
        let c_blocks = cols.div_ceil(BLOCK_C);
        let per_b = r_blocks * c_blocks;
        let b = block / per_b;
        let r = (block % per_b / c_blocks) * BLOCK_R + lane / BLOCK_C;
        let c = (block % c_blocks) * BLOCK_C + lane % BLOCK_C;
        src = (b * rows + r) * cols + c;
        dst = (b * cols + c) * rows + r;
        live = b * rows * cols < n && r < rows && c < cols;
    }
    if live {
        let mut acc = F::new(0.0);
        let last = splits - 1;
        for q in 0..splits.div_ceil(UNROLL) {
            #[unroll]
            for k in 0..UNROLL {
                let s = q * UNROLL + k;
                let v = parts[parts_off + src + select(s < last, s, last) * n];
                acc += select(s <= last, v, F::new(0.0));
            }
        }
        out[dst] = acc;
    }
}

/// Units of a launch: one per output, or per slot of the 4 × 8 blocks when transposed.
fn units(n: usize, transpose: Option<(usize, usize, usize)>) -> usize {
    match transpose {
        Some((b, r, c)) => b * r.div_ceil(BLOCK_R) * c.div_ceil(BLOCK_C) * BLOCK_R * BLOCK_C,
        None => n,
    }
}

/// `[splits, ..]` partials (contiguous from their offset) summed over the first axis into
/// `out_shape`. With `transpose = Some((b, r, c))` the partials' trailing axes are
/// `[b, r, c]` and the result is laid out `[b, c, r]` (`out_shape` must hold `b·c·r`).
pub(crate) fn split_sum(
    parts: &SsmTensor,
    out_shape: &[usize],
    transpose: Option<(usize, usize, usize)>,
) -> SsmTensor {
    assert!(
        parts.is_contiguous() && !parts.shape.is_empty(),
        "split_sum takes contiguous [splits, ..] partials, got shape {:?} strides {:?}",
        parts.shape,
        parts.strides
    );
    let splits = parts.shape[0];
    let n: usize = parts.shape[1..].iter().product();
    assert_eq!(
        n,
        out_shape.iter().product::<usize>(),
        "split_sum: partials {:?} into {out_shape:?}",
        parts.shape
    );
    let (rows, cols) = match transpose {
        Some((b, r, c)) => {
            assert_eq!(
                b * r * c,
                n,
                "split_sum: transpose {b}×{r}×{c} of {n} outputs"
            );
            (r, c)
        }
        None => (1, 1),
    };
    let out = SsmTensor::empty(out_shape, parts.dtype, &parts.device);
    if n == 0 {
        return out;
    }
    dispatch!(parts.device, c => {
        let (count, dim) = elemwise_grid(c, units(n, transpose));
        record_launch();
        unsafe {
            split_sum_kernel::launch_unchecked(
                c,
                count,
                dim,
                parts.array_arg(parts.buffer_len()),
                out.array_arg(n),
                parts.offset,
                n,
                splits,
                rows,
                cols,
                transpose.is_some(),
                parts.dtype.storage(),
            )
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::testing::{HostRng, assert_close, device};

    /// Host sums of `[splits, b, r, c]` partials, laid out `[b, c, r]` when `transposed`.
    fn host_sum(
        p: &[f64],
        splits: usize,
        dims: (usize, usize, usize),
        transposed: bool,
    ) -> Vec<f64> {
        let (b, r, c) = dims;
        let n = b * r * c;
        let mut out = vec![f64::NAN; n];
        for i in 0..n {
            let (bi, ri, ci) = (i / (r * c), i / c % r, i % c);
            let o = if transposed {
                (bi * c + ci) * r + ri
            } else {
                i
            };
            out[o] = (0..splits).map(|s| p[s * n + i]).sum();
        }
        out
    }

    #[test]
    fn sums_match_the_host_for_split_counts_around_the_unroll() {
        let d = device();
        let mut rng = HostRng::new(0x5917);
        let dims = (3, 5, 7);
        let n = dims.0 * dims.1 * dims.2;
        for splits in [1, 3, UNROLL, UNROLL + 5, 3 * UNROLL - 1] {
            let host: Vec<f64> = (0..splits * n).map(|_| rng.normal()).collect();
            let parts = SsmTensor::from_f64(&host, &[splits, n], DType::F32, &d).unwrap();
            for transposed in [false, true] {
                let got = split_sum(&parts, &[n], transposed.then_some(dims));
                let what = format!("{splits} splits, transposed {transposed}");
                let want = host_sum(&host, splits, dims, transposed);
                assert_close(&what, &got.to_f64_vec().unwrap(), &want, 1e-5, 1e-5);
            }
        }
    }

    #[test]
    fn sums_partials_that_start_at_an_offset() {
        let d = device();
        let mut rng = HostRng::new(0x5918);
        let (splits, n) = (11, 40);
        let host: Vec<f64> = (0..(splits + 1) * n).map(|_| rng.normal()).collect();
        let all = SsmTensor::from_f64(&host, &[splits + 1, n], DType::F32, &d).unwrap();
        let got = split_sum(&all.narrow(0, 1, splits).unwrap(), &[n], None);
        let want = host_sum(&host[n..], splits, (1, 1, n), false);
        assert_close(
            "offset partials",
            &got.to_f64_vec().unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    }
}
