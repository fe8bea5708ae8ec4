//! Batched 2-D transpose through shared-memory tiles: a contiguous `[B, R, C]` source into a
//! contiguous `[B, C, R]` destination. [`super::copy::copy`] takes this path for views whose
//! axes fall into two swapped runs (NCDHW ↔ NDHWC, `[B, D, L]` ↔ `[B, L, D]`): the strided
//! copy would read or write such a view one scattered element at a time, while a tile is
//! read along C and written along R, both coalesced. [`transpose_pair`] runs two such
//! copies of one dtype in one launch ([`super::copy::copy_pair`]: a convolution's operand
//! and weight copies).

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

/// Tile `t` of one batched transpose (`[batch, rows, cols]` from `src_off` into `[batch,
/// cols, rows]` from `dst_off`), through `buf`. Uniform per cube: every unit of the cube
/// reaches its barrier.
#[cube]
fn transpose_tile<T: Numeric>(
    src: &Array<T>,
    dst: &mut Array<T>,
    buf: &mut SharedMemory<T>,
    t: usize,
    src_off: usize,
    dst_off: usize,
    rows: usize,
    cols: usize,
    #[comptime] tile: usize,
    #[comptime] pitch: usize,
) {
    let tiles_c = cols.div_ceil(tile);
    let tiles_per_batch = rows.div_ceil(tile) * tiles_c;
    let b = t / tiles_per_batch;
    let t = t % tiles_per_batch;
    let r0 = (t / tiles_c) * tile;
    let c0 = (t % tiles_c) * tile;
    let base = b * rows * cols;
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
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

#[cube(launch_unchecked)]
fn transpose_kernel<T: Numeric>(
    src: &Array<T>,
    dst: &mut Array<T>,
    src_off: usize,
    dst_off: usize,
    rows: usize,
    cols: usize,
    tiles: usize,
    #[comptime] tile: usize,
    #[comptime] pitch: usize,
    #[define(T)] _d: StorageType,
) {
    let mut buf = SharedMemory::<T>::new(tile * pitch);
    let cube = CUBE_POS;
    if cube < tiles {
        transpose_tile(
            src, dst, &mut buf, cube, src_off, dst_off, rows, cols, tile, pitch,
        );
    }
}

/// Two batched transposes in one launch (one shared tile buffer): cubes `[0, tiles_a)`
/// move the first one's tiles, the next `tiles_b` the second's.
#[cube(launch_unchecked)]
fn transpose_pair_kernel<T: Numeric>(
    src_a: &Array<T>,
    dst_a: &mut Array<T>,
    src_b: &Array<T>,
    dst_b: &mut Array<T>,
    src_off_a: usize,
    dst_off_a: usize,
    rows_a: usize,
    cols_a: usize,
    tiles_a: usize,
    src_off_b: usize,
    dst_off_b: usize,
    rows_b: usize,
    cols_b: usize,
    tiles_b: usize,
    #[comptime] tile: usize,
    #[comptime] pitch: usize,
    #[define(T)] _d: StorageType,
) {
    let mut buf = SharedMemory::<T>::new(tile * pitch);
    let cube = CUBE_POS;
    if cube < tiles_a {
        let (s, d) = (src_off_a, dst_off_a);
        transpose_tile(
            src_a, dst_a, &mut buf, cube, s, d, rows_a, cols_a, tile, pitch,
        );
    } else if cube < tiles_a + tiles_b {
        let (t, s, d) = (cube - tiles_a, src_off_b, dst_off_b);
        transpose_tile(src_b, dst_b, &mut buf, t, s, d, rows_b, cols_b, tile, pitch);
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

/// One batched transpose: `dst` (contiguous `[batch, cols, rows]` from `dst.offset`) = the
/// transpose of `src` (contiguous `[batch, rows, cols]` from `src.offset`), with `dims` =
/// `(batch, rows, cols)` as [`batched_transpose`] found them.
pub(crate) struct Job<'a> {
    pub src: &'a SsmTensor,
    pub dst: &'a SsmTensor,
    pub dims: (usize, usize, usize),
}

impl Job<'_> {
    /// Tiles (one cube each) of `edge` elements a side.
    fn tiles(&self, edge: usize) -> usize {
        let (batch, rows, cols) = self.dims;
        batch * rows.div_ceil(edge) * cols.div_ceil(edge)
    }
}

/// A cube: one tile, `WARP × ROWS` units.
const DIM: CubeDim = CubeDim::new_2d(WARP as u32, ROWS as u32);

/// Runs `job`.
pub(crate) fn transpose(job: &Job) {
    let elem = job.src.dtype.size();
    let edge = tile(elem);
    let tiles = job.tiles(edge);
    if tiles == 0 {
        return;
    }
    let (_, rows, cols) = job.dims;
    let (src, dst) = (job.src, job.dst);
    dispatch!(src.device, c => {
        let count = cubecl::calculate_cube_count_elemwise(c, tiles * WARP * ROWS, DIM);
        record_launch();
        unsafe {
            transpose_kernel::launch_unchecked(
                c,
                count,
                DIM,
                src.array_arg(src.buffer_len()),
                dst.array_arg(dst.buffer_len()),
                src.offset,
                dst.offset,
                rows,
                cols,
                tiles,
                edge,
                pitch(edge, elem),
                src.dtype.storage(),
            )
        }
    })
}

/// Runs both jobs in one launch: two small transposes (a convolution's operand and its
/// weights, or both operands of a weight gradient) share one launch and its ramp. The
/// caller checked that both have one dtype and one device.
pub(crate) fn transpose_pair(a: &Job, b: &Job) {
    debug_assert!(a.src.dtype == b.src.dtype && a.src.device == b.src.device);
    let elem = a.src.dtype.size();
    let edge = tile(elem);
    let (tiles_a, tiles_b) = (a.tiles(edge), b.tiles(edge));
    if tiles_a + tiles_b == 0 {
        return;
    }
    let ((_, rows_a, cols_a), (_, rows_b, cols_b)) = (a.dims, b.dims);
    dispatch!(a.src.device, c => {
        let count = cubecl::calculate_cube_count_elemwise(c, (tiles_a + tiles_b) * WARP * ROWS, DIM);
        record_launch();
        unsafe {
            transpose_pair_kernel::launch_unchecked(
                c,
                count,
                DIM,
                a.src.array_arg(a.src.buffer_len()),
                a.dst.array_arg(a.dst.buffer_len()),
                b.src.array_arg(b.src.buffer_len()),
                b.dst.array_arg(b.dst.buffer_len()),
                a.src.offset,
                a.dst.offset,
                rows_a,
                cols_a,
                tiles_a,
                b.src.offset,
                b.dst.offset,
                rows_b,
                cols_b,
                tiles_b,
                edge,
                pitch(edge, elem),
                a.src.dtype.storage(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::testing::{HostRng, device};

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

    /// `data` (contiguous `shape`) as the contiguous copy of its view permuted by `perm`.
    fn host_permuted(data: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
        let strides = strides_of(shape, &(0..shape.len()).collect::<Vec<_>>());
        let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        (0..data.len())
            .map(|i| {
                let (mut rem, mut at) = (i, 0);
                for k in (0..perm.len()).rev() {
                    at += rem % out_shape[k] * strides[perm[k]];
                    rem /= out_shape[k];
                }
                data[at]
            })
            .collect()
    }

    #[test]
    fn a_pair_of_transposes_is_one_launch() {
        let d = device();
        let mut rng = HostRng::new(0x7a11);
        // A channels-first activation to channels-last, from an offset view, and a weight
        // with its output channels made fastest (backward-data's order).
        let (x_shape, x_perm) = ([3, 48, 5, 6, 7], [0, 2, 3, 4, 1]);
        let (w_shape, w_perm) = ([24, 16, 3, 3, 3], [1, 2, 3, 4, 0]);
        let mut dtypes = vec![(DType::F32, DType::F32), (DType::F64, DType::F64)];
        if d.has_bf16() {
            dtypes.push((DType::BF16, DType::BF16));
        }
        // Mixed dtypes take two launches, with the same results.
        dtypes.push((DType::F32, DType::F64));
        for (tx, tw) in dtypes {
            let what = format!("{tx} / {tw}");
            let upload = |shape: &[usize], t: DType, rng: &mut HostRng| {
                let host: Vec<f64> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
                SsmTensor::from_f64(&host, shape, t, &d).unwrap()
            };
            let x = upload(&x_shape, tx, &mut rng).narrow(0, 1, 2).unwrap();
            let w = upload(&w_shape, tw, &mut rng);
            let (xv, wv) = (x.permute(&x_perm).unwrap(), w.permute(&w_perm).unwrap());

            let before = crate::launch_count();
            let (xc, wc) = xv.contiguous_pair(&wv).unwrap();
            let paired = crate::launch_count() - before;
            let before = crate::launch_count();
            drop((xv.contiguous().unwrap(), wv.contiguous().unwrap()));
            let apart = crate::launch_count() - before;
            assert_eq!(apart - paired, u64::from(tx == tw), "{what}: launches");

            for (got, src, perm) in [(&xc, &x, &x_perm[..]), (&wc, &w, &w_perm[..])] {
                assert!(got.is_contiguous() && got.offset == 0, "{what}");
                assert_eq!(got.shape(), src.permute(perm).unwrap().shape(), "{what}");
                let want = host_permuted(&src.to_f64_vec().unwrap(), src.shape(), perm);
                assert_eq!(got.to_f64_vec().unwrap(), want, "{what}");
            }
        }
    }

    #[test]
    fn unit_axes_do_not_matter() {
        // [1, 9, 1, 12] with the 9 and 12 swapped in memory; unit axes carry odd strides.
        let shape = [1, 9, 1, 12];
        let strides = [777, 1, 5, 9];
        assert_eq!(batched_transpose(&shape, &strides), Some((1, 12, 9)));
    }
}
