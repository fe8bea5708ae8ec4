//! Batched 2-D transpose through shared-memory tiles: a contiguous `[B, R, C]` source into a
//! contiguous `[B, C, R]` destination. [`super::copy::copy`] takes this path for views whose
//! axes fall into two swapped runs (NCDHW ↔ NDHWC, `[B, D, L]` ↔ `[B, L, D]`): the strided
//! copy would read or write such a view one scattered element at a time, while a tile is
//! read along C and written along R, both coalesced.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::tensor::Tensor as SsmTensor;

/// Units along a tile row (one warp).
const WARP: usize = 32;
/// Unit rows per cube.
const ROWS: usize = 8;

/// Tile edge (elements) for `elem`-byte elements; a cube of `WARP × ROWS` units moves one
/// tile. 64 (16 elements a unit each way) for elements up to 4 bytes: with 32-element
/// tiles (four a unit) too few bytes were in flight, and the 19 MB bf16 transpose of a
/// 96-channel activation ran at 1.8 TB/s on an H200 (21.3 µs; 64: 16.7–17.2 µs). A small
/// transpose pays a little (a 0.5 MB weight, 243 cubes → 82: 3.6 → 4.0 µs). 32 for 8-byte
/// elements, whose 64-element tile would pass 32 KiB of shared memory (Vulkan's
/// guaranteed size).
fn tile(elem: usize) -> usize {
    if elem >= 8 { WARP } else { 2 * WARP }
}

/// Padded tile row (elements): a whole number of 4-byte banks plus an odd one, so a
/// column read of the tile hits 32 different banks (for 8-byte elements, whose accesses
/// go by half-warps, an odd number of 8-byte words).
fn pitch(tile: usize, elem: usize) -> usize {
    tile + (4 / elem).max(1)
}

/// Smallest run on either side worth a tile: narrower ones leave most of each tile empty.
const MIN_SIDE: usize = 8;

#[cube(launch_unchecked)]
fn transpose_kernel<T: Numeric>(
    src: &Array<T>,
    dst: &mut Array<T>,
    src_off: usize,
    dst_off: usize,
    rows: usize,
    cols: usize,
    tiles_c: usize,
    tiles_per_batch: usize,
    tiles: usize,
    #[comptime] tile: usize,
    #[comptime] pitch: usize,
    #[define(T)] _d: StorageType,
) {
    let cube = CUBE_POS;
    // Uniform per cube, so every unit of a live cube reaches the barrier.
    if cube < tiles {
        let b = cube / tiles_per_batch;
        let t = cube % tiles_per_batch;
        let r0 = (t / tiles_c) * tile;
        let c0 = (t % tiles_c) * tile;
        let base = b * rows * cols;
        let tx = UNIT_POS_X as usize;
        let ty = UNIT_POS_Y as usize;
        let mut buf = SharedMemory::<T>::new(tile * pitch);
        #[unroll]
        for k in 0..tile / ROWS {
            #[unroll]
            for h in 0..tile / WARP {
                let (tr, tc) = (ty + k * ROWS, tx + h * WARP);
                let (r, c) = (r0 + tr, c0 + tc);
                if r < rows && c < cols {
                    buf[tr * pitch + tc] = src[src_off + base + r * cols + c];
                }
            }
        }
        sync_cube();
        #[unroll]
        for k in 0..tile / ROWS {
            #[unroll]
            for h in 0..tile / WARP {
                let (tc, tr) = (ty + k * ROWS, tx + h * WARP);
                let (c, r) = (c0 + tc, r0 + tr);
                if r < rows && c < cols {
                    dst[dst_off + base + c * rows + r] = buf[tr * pitch + tc];
                }
            }
        }
    }
}

/// `(batch, rows, cols)` when copying a view of `shape` with `src_strides` into contiguous
/// memory is a batched transpose of a contiguous `[batch, rows, cols]` source: the view's
/// axes split into runs `[0, i)`, `[i, j)`, `[j, rank)` that the source stores in the order
/// `[0, i)`, `[j, rank)`, `[i, j)`. `None` otherwise, or when either swapped run is shorter
/// than [`MIN_SIDE`].
pub(crate) fn batched_transpose(
    shape: &[usize],
    src_strides: &[usize],
) -> Option<(usize, usize, usize)> {
    let rank = shape.len();
    let prod = |r: std::ops::Range<usize>| shape[r].iter().product::<usize>();
    // Whether the axes of `run` are contiguous among themselves, scaled by `scale`.
    let packed = |run: std::ops::Range<usize>, scale: usize| {
        let mut expected = scale;
        run.rev().all(|a| {
            let ok = shape[a] == 1 || src_strides[a] == expected;
            expected *= shape[a];
            ok
        })
    };
    for i in 0..rank {
        for j in i + 1..rank {
            let (cols, rows, batch) = (prod(i..j), prod(j..rank), prod(0..i));
            if cols >= MIN_SIDE
                && rows >= MIN_SIDE
                && packed(i..j, 1)
                && packed(j..rank, cols)
                && packed(0..i, rows * cols)
            {
                return Some((batch, rows, cols));
            }
        }
    }
    None
}

/// `dst` (contiguous `[batch, cols, rows]` from `dst.offset`) = the transpose of `src`
/// (contiguous `[batch, rows, cols]` from `src.offset`); the caller checked both layouts
/// with [`batched_transpose`].
pub(crate) fn transpose(src: &SsmTensor, dst: &SsmTensor, batch: usize, rows: usize, cols: usize) {
    let elem = src.dtype.size();
    let edge = tile(elem);
    let tiles_c = cols.div_ceil(edge);
    let tiles_per_batch = rows.div_ceil(edge) * tiles_c;
    let tiles = batch * tiles_per_batch;
    if tiles == 0 {
        return;
    }
    dispatch!(src.device, c => {
        let dim = CubeDim::new_2d(WARP as u32, ROWS as u32);
        let count = cubecl::calculate_cube_count_elemwise(c, tiles * WARP * ROWS, dim);
        record_launch();
        unsafe {
            transpose_kernel::launch_unchecked(
                c,
                count,
                dim,
                src.array_arg(src.buffer_len()),
                dst.array_arg(dst.buffer_len()),
                src.offset,
                dst.offset,
                rows,
                cols,
                tiles_c,
                tiles_per_batch,
                tiles,
                edge,
                pitch(edge, elem),
                src.dtype.storage(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strides_of(shape: &[usize], order: &[usize]) -> Vec<usize> {
        // `order` lists the axes from slowest to fastest in memory.
        let mut strides = vec![0; shape.len()];
        let mut s = 1;
        for &a in order.iter().rev() {
            strides[a] = s;
            s *= shape[a];
        }
        strides
    }

    #[test]
    fn channels_first_to_last_is_one_transpose() {
        // NDHWC memory viewed as NCDHW: source runs (n), (d, h, w), (c).
        let shape = [2, 48, 5, 6, 7];
        let strides = strides_of(&shape, &[0, 2, 3, 4, 1]);
        assert_eq!(batched_transpose(&shape, &strides), Some((2, 210, 48)));
        // The reverse: NCDHW memory viewed as NDHWC.
        let shape = [2, 5, 6, 7, 48];
        let strides = strides_of(&shape, &[0, 4, 1, 2, 3]);
        assert_eq!(batched_transpose(&shape, &strides), Some((2, 48, 210)));
    }

    #[test]
    fn other_views_are_not_transposes() {
        let shape = [4, 16, 16, 32];
        // Contiguous already.
        assert_eq!(
            batched_transpose(&shape, &strides_of(&shape, &[0, 1, 2, 3])),
            None
        );
        // A head split ([B, L, H, D] memory as [B, H, L, D]): the fastest axis stays put.
        assert_eq!(
            batched_transpose(&shape, &strides_of(&shape, &[0, 2, 1, 3])),
            None
        );
        // Broadcast (stride 0) is no transpose.
        assert_eq!(batched_transpose(&[16, 16], &[0, 1]), None);
        // A short side leaves tiles mostly empty.
        assert_eq!(batched_transpose(&[4, 64], &[1, 4]), None);
    }

    #[test]
    fn unit_axes_do_not_matter() {
        // [1, 9, 1, 12] with the 9 and 12 swapped in memory; unit axes carry odd strides.
        let shape = [1, 9, 1, 12];
        let strides = [777, 1, 5, 9];
        assert_eq!(batched_transpose(&shape, &strides), Some((1, 12, 9)));
    }
}
