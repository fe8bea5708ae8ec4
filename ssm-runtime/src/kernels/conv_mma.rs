//! Tensor-core implicit-GEMM convolutions (CUDA `cmma`, i.e. warp-level `wmma` fragments).
//!
//! The same two GEMMs as the CUDA-core kernels in [`super::conv`], with operand tiles staged
//! in shared memory as the fragment type `M` (bf16 for bf16 operands, TF32 for f32
//! operands) and f32 accumulator fragments; results are always f32.
//!
//! - [`conv_mma`]: forward, or backward-data with `transposed` (same index maps as
//!   `conv_gemm`). A = gathered src patch (positions × reduced channels, row-major in shared
//!   memory), B = weight (reduced channels × dst channels, column-major: the host passes a
//!   weight copy whose reduced channel is contiguous, so B loads coalesce, and whose taps
//!   are packed, so a tap's weights start at `tap · sw_w`).
//! - [`conv_wgrad_mma`]: weight gradient. A = dyᵀ (dst channels × positions, column-major),
//!   B = gathered input (positions × (tap, channel), row-major), positions walked one dst row
//!   `(n, d, h)` at a time in chunks along w, split across cubes into partial sums.
//!
//! Each cube has `warps_m × warps_n` warps; each warp owns `frags_m × frags_n` 16 × 16
//! accumulator fragments. Shared-memory rows are padded by 8 elements: fragment pointers stay
//! 32-byte aligned (the `wmma` requirement) and rows fall on different banks.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::dtype::DType;
use crate::kernels::conv::{
    ConvGeo, Geo, position_grid, row_splits, split_pos, src_coord, sum_tap_splits, tap_splits,
};
use crate::tensor::Tensor as SsmTensor;

/// Fragment edge along m and n.
const FRAG: usize = 16;
/// Shared-memory row padding in elements.
const PAD: usize = 8;
/// Reduction depth of one shared-memory stage (channels, or positions for the weight
/// gradient). Deeper stages hold more loads in flight per thread but cost registers, and
/// registers bound residency here: on an H100, 48 TF32 channels per stage took 182
/// registers per thread (one 8-warp cube per SM, warps stalled on dependencies, tensor pipe
/// 8 % busy); at 16 an H200 shows 170 for TF32 (still one cube) and 113 for bf16 (two).
const BK: usize = 16;

/// Address of the src row read by dst position (`base`, `od`, `oh`, `ow`) at `tap`, or −1
/// where the tap falls outside the src (or the position outside the problem: `base < 0`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn tap_row_addr(
    g: &ConvGeo,
    base: i32,
    od: i32,
    oh: i32,
    ow: i32,
    tap: i32,
    #[comptime] transposed: bool,
) -> i32 {
    let tw = tap % g.k_w;
    let th = (tap / g.k_w) % g.k_h;
    let td = tap / (g.k_w * g.k_h);
    let sd = src_coord(od, td, g.st_d, g.pad_d, g.dil_d, g.src_d, transposed);
    let sh = src_coord(oh, th, g.st_h, g.pad_h, g.dil_h, g.src_h, transposed);
    let sw = src_coord(ow, tw, g.st_w, g.pad_w, g.dil_w, g.src_w, transposed);
    select(
        base >= 0 && sd >= 0 && sh >= 0 && sw >= 0,
        base + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w,
        -1i32,
    )
}

/// Slot `e` of a `rows × cols` tile as (row, col): consecutive slots run along the row
/// when `along_row` (the contiguous axis in memory), down the column otherwise.
#[cube]
fn tile_slot(
    e: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] along_row: bool,
) -> (usize, usize) {
    if along_row {
        (e / cols, e % cols)
    } else {
        (e % rows, e / rows)
    }
}

/// Fetch the stage of `tap`, reduced channels `c0 .. c0 + bk`, into registers: the src tile
/// through the row addresses of that tap in `rows[buf]`, and the weight tile (taps packed:
/// tap `t` starts at `t · sw_w`). Consecutive threads read consecutive channels
/// (channels-last) or positions, so loads coalesce in either layout.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_load<I: Float>(
    src: &Array<I>,
    w: &Array<I>,
    g: &ConvGeo,
    rows: &SharedMemory<i32>,
    buf: usize,
    tap: i32,
    c0: i32,
    w_grp: i32,
    n0: i32,
    tid: usize,
    a_reg: &mut Array<I>,
    b_reg: &mut Array<I>,
    #[comptime] threads: usize,
    #[comptime] bm: usize,
    #[comptime] bk: usize,
    #[comptime] bn: usize,
    #[comptime] ra: usize,
    #[comptime] rb: usize,
    #[comptime] channels_last: bool,
) {
    #[unroll]
    for r in 0..ra {
        let (ml, kl) = tile_slot(tid + r * threads, bm, bk, channels_last);
        let addr = rows[buf * bm + ml];
        let c = c0 + i32::cast_from(kl);
        a_reg[r] = if addr >= 0 && c < g.c_red {
            src[usize::cast_from(addr + c * g.ss_c)]
        } else {
            I::new(0.0)
        };
    }
    let w_tap = w_grp + tap * g.sw_w;
    #[unroll]
    for r in 0..rb {
        let e = i32::cast_from(tid + r * threads);
        let c = c0 + e % i32::cast_from(bk);
        let col = n0 + e / i32::cast_from(bk);
        b_reg[r] = if e < i32::cast_from(bn * bk) && col < g.c_out && c < g.c_red {
            w[usize::cast_from(w_tap + col * g.sw_o + c * g.sw_i)]
        } else {
            I::new(0.0)
        };
    }
}

/// One shared-memory stage through the tensor cores: every warp multiplies its
/// `frags_m` A fragments by its `frags_n` B fragments, `bk / mk` steps deep.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_stage<M: Float>(
    a_s: &SharedMemory<M>,
    b_s: &SharedMemory<M>,
    acc: &mut Sequence<cmma::Matrix<f32>>,
    row0: usize,
    col0: usize,
    #[comptime] a_col_major: bool,
    #[comptime] b_col_major: bool,
    #[comptime] a_ld: usize,
    #[comptime] b_ld: usize,
    #[comptime] bk: usize,
    #[comptime] mk: usize,
    #[comptime] frags_m: usize,
    #[comptime] frags_n: usize,
) {
    #[unroll]
    for kk in 0..bk / mk {
        let k0 = kk * mk;
        let mut a_frags = Sequence::<cmma::Matrix<M>>::new();
        #[unroll]
        for i in 0..frags_m {
            let row = row0 + i * FRAG;
            // Row-major A: element (m, k) at m·ld + k; column-major: k·ld + m.
            let (start, len) = if a_col_major {
                (k0 * a_ld + row, (mk - 1) * a_ld + FRAG)
            } else {
                (row * a_ld + k0, (FRAG - 1) * a_ld + mk)
            };
            let layout = if a_col_major {
                cmma::MatrixLayout::ColMajor
            } else {
                cmma::MatrixLayout::RowMajor
            };
            a_frags.push(cmma::Matrix::<M>::from_slice(
                cmma::MatrixIdent::A,
                FRAG,
                FRAG,
                mk,
                layout,
                &a_s.slice(start, start + len),
                a_ld as u32,
            ));
        }
        #[unroll]
        for j in 0..frags_n {
            let col = col0 + j * FRAG;
            // Column-major B: element (k, n) at n·ld + k; row-major: k·ld + n.
            let (start, len) = if b_col_major {
                (col * b_ld + k0, (FRAG - 1) * b_ld + mk)
            } else {
                (k0 * b_ld + col, (mk - 1) * b_ld + FRAG)
            };
            let layout = if b_col_major {
                cmma::MatrixLayout::ColMajor
            } else {
                cmma::MatrixLayout::RowMajor
            };
            let b_frag = cmma::Matrix::<M>::from_slice(
                cmma::MatrixIdent::B,
                FRAG,
                FRAG,
                mk,
                layout,
                &b_s.slice(start, start + len),
                b_ld as u32,
            );
            #[unroll]
            for i in 0..frags_m {
                let c = acc.index(i * frags_n + j);
                cmma::execute::<M, M, f32, f32>(a_frags.index(i), &b_frag, c, c);
            }
        }
    }
}

/// Fresh zeroed accumulator fragments.
#[cube]
fn zero_accumulators(
    #[comptime] count: usize,
    #[comptime] mk: usize,
) -> Sequence<cmma::Matrix<f32>> {
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..count {
        acc.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            FRAG,
            FRAG,
            mk,
            cmma::MatrixLayout::Undefined,
            0.0f32,
        ));
    }
    acc
}

/// Tensor-core implicit GEMM (forward, or backward-data with `transposed`):
/// `dst[m, col] = Σ_{tap, c} src[gather(m, tap), c] · w[col, c, tap]`, tiles of
/// `bm = warps_m·frags_m·16` positions × `bn = warps_n·frags_n·16` dst channels, `bk`
/// reduced channels of one tap per stage. Positions are decoded once per tile and their
/// src address once per tap (a shared table), so a gathered element costs one table read
/// and one coalesced load. Grid as `conv_gemm`: x·y = position tiles, z = groups ×
/// channel tiles × tap splits.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_mma<I: Float, M: Float>(
    src: &Array<I>,
    w: &Array<I>,
    bias: &Array<f32>,
    dst: &mut Array<f32>,
    src_off: i32,
    w_off: i32,
    g: ConvGeo,
    n_tiles: u32,
    k_splits: u32,
    dst_split: i32,
    #[comptime] warps_m: usize,
    #[comptime] warps_n: usize,
    #[comptime] frags_m: usize,
    #[comptime] frags_n: usize,
    #[comptime] bk: usize,
    #[comptime] mk: usize,
    #[comptime] has_bias: bool,
    #[comptime] channels_last: bool,
    #[comptime] transposed: bool,
    #[define(I, M)] _d: [StorageType; 2],
) {
    let warps = comptime!(warps_m * warps_n);
    let threads = comptime!(warps * 32);
    let bm = comptime!(warps_m * frags_m * FRAG);
    let bn = comptime!(warps_n * frags_n * FRAG);
    let ld = comptime!(bk + PAD);
    // Every thread loads `ra` src slots; the host keeps bm ≤ threads and bm·bk a multiple
    // of threads.
    let ra = comptime!(bm * bk / threads);
    let rb = comptime!((bn * bk).div_ceil(threads));

    let tid = UNIT_POS as usize;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let wm = warp % warps_m;
    let wn = warp / warps_m;
    let m_tile = CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X;
    let split = CUBE_POS_Z % k_splits;
    let zr = CUBE_POS_Z / k_splits;
    let grp = i32::cast_from(zr / n_tiles);
    let n_tile = zr % n_tiles;
    let m_total = g.batch * g.dst_d * g.dst_h * g.dst_w;
    let m0 = i32::cast_from(m_tile) * i32::cast_from(bm);
    let n0 = i32::cast_from(n_tile) * i32::cast_from(bn);

    let mut a_s = SharedMemory::<M>::new_aligned(bm * ld, 32usize);
    let mut b_s = SharedMemory::<M>::new_aligned(bn * ld, 32usize);
    let mut acc = zero_accumulators(frags_m * frags_n, mk);

    // Threads 0..bm own one tile row (position) each, decoded once; per tap they publish
    // its src address in `rows` (double-buffered by tap parity: the buffer written before
    // the first barrier of a tap's last stage was last read by the loads of the tap before).
    let own = tid < bm;
    let m_own = m0 + i32::cast_from(tid);
    let (on, od, oh, ow) = split_pos(m_own, g.dst_d, g.dst_h, g.dst_w);
    let own_base = select(
        own && m_own < m_total,
        src_off + on * g.ss_n + grp * g.c_red * g.ss_c,
        -1i32,
    );
    let mut rows = SharedMemory::<i32>::new(2 * bm);
    let w_grp = w_off + grp * g.w_group;
    let bki = i32::cast_from(bk);
    let n_c = (g.c_red + bki - 1) / bki;
    let taps = g.k_d * g.k_h * g.k_w;
    let ks = i32::cast_from(k_splits);
    let taps_per = (taps + ks - 1) / ks;
    let si = i32::cast_from(split);
    let t0 = si * taps_per;
    let t1 = select(t0 + taps_per < taps, t0 + taps_per, taps);
    let s_begin = t0 * n_c;
    let n_stages = t1 * n_c;
    let mut a_reg = Array::<I>::new(ra);
    let mut b_reg = Array::<I>::new(rb);

    if own {
        rows[tid] = tap_row_addr(&g, own_base, od, oh, ow, t0, transposed);
    }
    sync_cube();
    mma_load::<I>(
        src,
        w,
        &g,
        &rows,
        0usize,
        t0,
        0i32,
        w_grp,
        n0,
        tid,
        &mut a_reg,
        &mut b_reg,
        threads,
        bm,
        bk,
        bn,
        ra,
        rb,
        channels_last,
    );
    // The stage's tap and first channel, stepped without divisions.
    let mut tap = t0;
    let mut c0 = i32::new(0);
    let mut s = s_begin;
    while s < n_stages {
        #[unroll]
        for r in 0..ra {
            let (ml, kl) = tile_slot(tid + r * threads, bm, bk, channels_last);
            a_s[ml * ld + kl] = M::cast_from(a_reg[r]);
        }
        #[unroll]
        for r in 0..rb {
            let e = tid + r * threads;
            if e < bn * bk {
                b_s[(e / bk) * ld + e % bk] = M::cast_from(b_reg[r]);
            }
        }
        let next = s + 1;
        let new_tap = c0 + bki >= g.c_red;
        let next_tap = select(new_tap, tap + 1, tap);
        let next_c0 = select(new_tap, 0i32, c0 + bki);
        let nb = usize::cast_from((next_tap - t0) % 2i32);
        if own && new_tap && next < n_stages {
            rows[nb * bm + tid] = tap_row_addr(&g, own_base, od, oh, ow, next_tap, transposed);
        }
        sync_cube();
        if next < n_stages {
            mma_load::<I>(
                src,
                w,
                &g,
                &rows,
                nb,
                next_tap,
                next_c0,
                w_grp,
                n0,
                tid,
                &mut a_reg,
                &mut b_reg,
                threads,
                bm,
                bk,
                bn,
                ra,
                rb,
                channels_last,
            );
        }
        mma_stage::<M>(
            &a_s,
            &b_s,
            &mut acc,
            wm * frags_m * FRAG,
            wn * frags_n * FRAG,
            false,
            true,
            ld,
            ld,
            bk,
            mk,
            frags_m,
            frags_n,
        );
        sync_cube();
        tap = next_tap;
        c0 = next_c0;
        s = next;
    }

    // Epilogue: the row owners publish their position's dst address (−1 past the problem)
    // in `rows`, so a result element costs a table read instead of a position decode. Each
    // warp spills one fragment at a time to its scratch tile, then its lanes write it out
    // (16 consecutive channels per position when channels-last, 16 consecutive positions
    // per channel otherwise).
    sync_cube();
    if own {
        rows[tid] = select(
            own_base >= 0,
            si * dst_split + on * g.sd_n + od * g.sd_d + oh * g.sd_h + ow * g.sd_w,
            -1i32,
        );
    }
    sync_cube();
    let mut scratch = SharedMemory::<f32>::new_aligned(warps * FRAG * FRAG, 32usize);
    let sbase = warp * FRAG * FRAG;
    #[unroll]
    for i in 0..frags_m {
        #[unroll]
        for j in 0..frags_n {
            let mut tile = scratch.slice_mut(sbase, sbase + FRAG * FRAG);
            if channels_last {
                cmma::store(
                    &mut tile,
                    acc.index(i * frags_n + j),
                    FRAG as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            } else {
                cmma::store(
                    &mut tile,
                    acc.index(i * frags_n + j),
                    FRAG as u32,
                    cmma::MatrixLayout::ColMajor,
                );
            }
            sync_plane();
            #[unroll]
            for q in 0..FRAG * FRAG / 32 {
                let idx = lane + q * 32;
                let (r, c) = if channels_last {
                    (idx / FRAG, idx % FRAG)
                } else {
                    (idx % FRAG, idx / FRAG)
                };
                let at = rows[(wm * frags_m + i) * FRAG + r];
                let col = n0 + i32::cast_from((wn * frags_n + j) * FRAG + c);
                if at >= 0 && col < g.c_out {
                    let ch = grp * g.c_out + col;
                    let b = if has_bias {
                        select(si == 0i32, bias[usize::cast_from(ch)], 0.0f32)
                    } else {
                        f32::new(0.0)
                    };
                    dst[usize::cast_from(at + ch * g.sd_c)] = scratch[sbase + idx] + b;
                }
            }
            sync_plane();
        }
    }
}

/// Fill `tbl[buf]` with the x address (channel 0 of the group) that position `ow0 + kl` of
/// dst row `row` reads at tap `tap_lo + lt`, for every (kl, lt) of the stage; −1 outside x
/// or past the row's end.
#[cube]
#[allow(clippy::too_many_arguments)]
fn wgrad_table(
    g: &ConvGeo,
    tbl: &mut SharedMemory<i32>,
    buf: usize,
    row: i32,
    ow0: i32,
    tap_lo: i32,
    base: i32,
    tid: usize,
    #[comptime] threads: usize,
    #[comptime] bk: usize,
    #[comptime] tt: usize,
) {
    let oh = row % g.dst_h;
    let od = (row / g.dst_h) % g.dst_d;
    let n = row / (g.dst_h * g.dst_d);
    let row_base = base + n * g.ss_n;
    let taps = g.k_d * g.k_h * g.k_w;
    #[unroll]
    for q in 0..(bk * tt).div_ceil(threads) {
        let idx = tid + q * threads;
        if idx < bk * tt {
            let kl = idx / tt;
            let tap = tap_lo + i32::cast_from(idx % tt);
            let ow = ow0 + i32::cast_from(kl);
            let td = tap / (g.k_h * g.k_w);
            let th = (tap / g.k_w) % g.k_h;
            let tw = tap % g.k_w;
            let sd = od * g.st_d + td * g.dil_d - g.pad_d;
            let sh = oh * g.st_h + th * g.dil_h - g.pad_h;
            let sw = ow * g.st_w + tw * g.dil_w - g.pad_w;
            let ok = tap < taps
                && ow < g.dst_w
                && sd >= 0
                && sd < g.src_d
                && sh >= 0
                && sh < g.src_h
                && sw >= 0
                && sw < g.src_w;
            tbl[buf * bk * tt + idx] = select(
                ok,
                row_base + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w,
                -1i32,
            );
        }
    }
}

/// Fetch one weight-gradient stage (dst row `row`, positions `ow0 .. ow0 + bk` along w):
/// dy directly, x through the address table `tbl[buf]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn wgrad_mma_load<I: Float>(
    src: &Array<I>,
    dy: &Array<I>,
    g: &ConvGeo,
    tbl: &SharedMemory<i32>,
    buf: usize,
    row: i32,
    ow0: i32,
    dy_grp: i32,
    m0: i32,
    tid: usize,
    b_lt: &Array<i32>,
    b_coff: &Array<i32>,
    a_reg: &mut Array<I>,
    b_reg: &mut Array<I>,
    #[comptime] threads: usize,
    #[comptime] bm: usize,
    #[comptime] bn: usize,
    #[comptime] bk: usize,
    #[comptime] tt: usize,
    #[comptime] ra: usize,
    #[comptime] rb: usize,
    #[comptime] channels_last: bool,
) {
    let oh = row % g.dst_h;
    let od = (row / g.dst_h) % g.dst_d;
    let n = row / (g.dst_h * g.dst_d);
    let dy_row = dy_grp + n * g.sd_n + od * g.sd_d + oh * g.sd_h;
    #[unroll]
    for r in 0..ra {
        let e = tid + r * threads;
        let (kl, ml) = tile_slot(e, bk, bm, channels_last);
        let ow = ow0 + i32::cast_from(kl);
        let co = i32::cast_from(ml);
        a_reg[r] = if e < bm * bk && ow < g.dst_w && m0 + co < g.c_out {
            dy[usize::cast_from(dy_row + co * g.sd_c + ow * g.sd_w)]
        } else {
            I::new(0.0)
        };
    }
    #[unroll]
    for r in 0..rb {
        let (kl, _) = tile_slot(tid + r * threads, bk, bn, channels_last);
        let lt = b_lt[r];
        let addr = if lt >= 0 {
            tbl[buf * bk * tt + kl * tt + usize::cast_from(lt)]
        } else {
            i32::new(-1)
        };
        b_reg[r] = if addr >= 0 {
            src[usize::cast_from(addr + b_coff[r])]
        } else {
            I::new(0.0)
        };
    }
}

/// Tensor-core weight gradient: `dw[co, c, tap] = Σ_pos dy[pos, co] · x[gather(pos, tap), c]`,
/// rows = dst channels of one group (`bm`), columns = (tap, channel) pairs (`bn`, channel
/// fastest; needs ≥ 16 input channels per group), the reduction over positions walked one
/// dst row at a time in chunks of `bk` along w. Split `z % splits` sums its range of rows into its own slice of `out` =
/// `[splits, c_out·groups, c_red, taps]`. src = x (strides `ss`), dst = dy (strides `sd`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_wgrad_mma<I: Float, M: Float>(
    src: &Array<I>,
    dy: &Array<I>,
    out: &mut Array<f32>,
    src_off: i32,
    dy_off: i32,
    g: ConvGeo,
    splits: i32,
    rows_per_split: i32,
    #[comptime] warps_m: usize,
    #[comptime] warps_n: usize,
    #[comptime] frags_m: usize,
    #[comptime] frags_n: usize,
    #[comptime] bk: usize,
    #[comptime] mk: usize,
    #[comptime] channels_last: bool,
    #[define(I, M)] _d: [StorageType; 2],
) {
    let warps = comptime!(warps_m * warps_n);
    let threads = comptime!(warps * 32);
    let bm = comptime!(warps_m * frags_m * FRAG);
    let bn = comptime!(warps_n * frags_n * FRAG);
    let a_ld = comptime!(bm + PAD);
    let b_ld = comptime!(bn + PAD);
    let ra = comptime!((bm * bk).div_ceil(threads));
    let rb = comptime!((bn * bk).div_ceil(threads));
    // Taps one tile of bn columns can span with ≥ 16 channels per tap.
    let tt = comptime!(bn / FRAG + 1);
    let bki = i32::cast_from(bk);

    let tid = UNIT_POS as usize;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let wm = warp % warps_m;
    let wn = warp / warps_m;
    let n0 = i32::cast_from(CUBE_POS_X) * i32::cast_from(bn);
    let m0 = i32::cast_from(CUBE_POS_Y) * i32::cast_from(bm);
    let zi = i32::cast_from(CUBE_POS_Z);
    let split = zi % splits;
    let grp = zi / splits;
    let taps = g.k_d * g.k_h * g.k_w;
    let n_cols = taps * g.c_red;
    let rows = g.batch * g.dst_d * g.dst_h;
    let row_start = split * rows_per_split;
    let row_end = select(
        row_start + rows_per_split < rows,
        row_start + rows_per_split,
        rows,
    );

    let mut a_s = SharedMemory::<M>::new_aligned(bk * a_ld, 32usize);
    let mut b_s = SharedMemory::<M>::new_aligned(bk * b_ld, 32usize);
    let mut acc = zero_accumulators(frags_m * frags_n, mk);

    // x tile (bk positions × bn (tap, channel) columns, channel fastest): each slot's
    // column is fixed, so its tap (relative to the tile's first, `tap_lo`) and channel
    // offset are decoded once; the positions' addresses per tap come from a table filled
    // each stage (double-buffered by stage parity, like the forward's row table).
    let tap_lo = n0 / g.c_red;
    let mut b_lt = Array::<i32>::new(rb);
    let mut b_coff = Array::<i32>::new(rb);
    #[unroll]
    for r in 0..rb {
        let e = tid + r * threads;
        let (_, nl) = tile_slot(e, bk, bn, channels_last);
        let col = n0 + i32::cast_from(nl);
        let ok = e < bn * bk && col < n_cols;
        b_lt[r] = select(ok, col / g.c_red - tap_lo, -1i32);
        b_coff[r] = (grp * g.c_red + col % g.c_red) * g.ss_c;
    }
    let mut tbl = SharedMemory::<i32>::new(2 * bk * tt);
    let dy_grp = dy_off + (grp * g.c_out + m0) * g.sd_c;
    let n_w = (g.dst_w + bki - 1) / bki;
    let n_stages = (row_end - row_start) * n_w;
    let mut a_reg = Array::<I>::new(ra);
    let mut b_reg = Array::<I>::new(rb);
    if n_stages > 0 {
        wgrad_table(
            &g, &mut tbl, 0usize, row_start, 0i32, tap_lo, src_off, tid, threads, bk, tt,
        );
    }
    sync_cube();
    if n_stages > 0 {
        wgrad_mma_load::<I>(
            src,
            dy,
            &g,
            &tbl,
            0usize,
            row_start,
            0i32,
            dy_grp,
            m0,
            tid,
            &b_lt,
            &b_coff,
            &mut a_reg,
            &mut b_reg,
            threads,
            bm,
            bn,
            bk,
            tt,
            ra,
            rb,
            channels_last,
        );
    }
    let mut s = i32::new(0);
    while s < n_stages {
        // Every slot is written each stage (zeros outside the problem), so no stale values
        // reach the fragments.
        #[unroll]
        for r in 0..ra {
            let e = tid + r * threads;
            if e < bm * bk {
                let (kl, ml) = tile_slot(e, bk, bm, channels_last);
                a_s[kl * a_ld + ml] = M::cast_from(a_reg[r]);
            }
        }
        #[unroll]
        for r in 0..rb {
            let e = tid + r * threads;
            if e < bn * bk {
                let (kl, nl) = tile_slot(e, bk, bn, channels_last);
                b_s[kl * b_ld + nl] = M::cast_from(b_reg[r]);
            }
        }
        let next = s + 1;
        let nb = usize::cast_from(next % 2i32);
        let next_row = row_start + next / n_w;
        let next_ow0 = (next % n_w) * bki;
        if next < n_stages {
            wgrad_table(
                &g, &mut tbl, nb, next_row, next_ow0, tap_lo, src_off, tid, threads, bk, tt,
            );
        }
        sync_cube();
        if next < n_stages {
            wgrad_mma_load::<I>(
                src,
                dy,
                &g,
                &tbl,
                nb,
                next_row,
                next_ow0,
                dy_grp,
                m0,
                tid,
                &b_lt,
                &b_coff,
                &mut a_reg,
                &mut b_reg,
                threads,
                bm,
                bn,
                bk,
                tt,
                ra,
                rb,
                channels_last,
            );
        }
        mma_stage::<M>(
            &a_s,
            &b_s,
            &mut acc,
            wm * frags_m * FRAG,
            wn * frags_n * FRAG,
            true,
            false,
            a_ld,
            b_ld,
            bk,
            mk,
            frags_m,
            frags_n,
        );
        sync_cube();
        s = next;
    }

    // out[split, co, c, tap] (row-major [splits, c_out·groups, c_red, taps]). Each tile
    // column's offset within a dst-channel row (c·taps + tap, −1 past the columns) is
    // decoded once into a table rather than per element.
    let co_total = g.c_out * g.groups;
    let mut col_off = SharedMemory::<i32>::new(bn);
    #[unroll]
    for q in 0..bn.div_ceil(threads) {
        let nl = tid + q * threads;
        if nl < bn {
            let col = n0 + i32::cast_from(nl);
            col_off[nl] = select(col < n_cols, (col % g.c_red) * taps + col / g.c_red, -1i32);
        }
    }
    sync_cube();
    let mut scratch = SharedMemory::<f32>::new_aligned(warps * FRAG * FRAG, 32usize);
    let sbase = warp * FRAG * FRAG;
    #[unroll]
    for i in 0..frags_m {
        #[unroll]
        for j in 0..frags_n {
            let mut tile = scratch.slice_mut(sbase, sbase + FRAG * FRAG);
            cmma::store(
                &mut tile,
                acc.index(i * frags_n + j),
                FRAG as u32,
                cmma::MatrixLayout::RowMajor,
            );
            sync_plane();
            #[unroll]
            for q in 0..FRAG * FRAG / 32 {
                let idx = lane + q * 32;
                let co = m0 + i32::cast_from((wm * frags_m + i) * FRAG + idx / FRAG);
                let off = col_off[(wn * frags_n + j) * FRAG + idx % FRAG];
                if co < g.c_out && off >= 0 {
                    let row_base = ((split * co_total) + grp * g.c_out + co) * n_cols;
                    out[usize::cast_from(row_base + off)] = scratch[sbase + idx];
                }
            }
            sync_plane();
        }
    }
}

// ---- launch helpers ------------------------------------------------------------------------

/// Warp grid and fragments per warp of one tensor-core launch; `bk` is the reduction depth
/// of one shared-memory stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MmaTile {
    pub warps_m: usize,
    pub warps_n: usize,
    pub frags_m: usize,
    pub frags_n: usize,
    pub bk: usize,
}

impl MmaTile {
    fn bm(&self) -> usize {
        self.warps_m * self.frags_m * FRAG
    }
    fn bn(&self) -> usize {
        self.warps_n * self.frags_n * FRAG
    }
}

/// Fragment element type and `k` depth of one `mma` for operands of `dtype`.
pub(crate) fn fragment(dtype: DType) -> (StorageType, usize) {
    use cubecl::ir::{ElemType, FloatKind};
    match dtype {
        DType::BF16 => (dtype.storage(), 16),
        _ => (StorageType::Scalar(ElemType::Float(FloatKind::TF32)), 8),
    }
}

/// Fragments along one GEMM side of `extent`, in tiles of at most `max_frags`: the fewest
/// tiles, then the least padding.
fn frags_for(extent: usize, max_frags: usize) -> usize {
    let frags = extent.div_ceil(FRAG);
    let tiles = frags.div_ceil(max_frags);
    frags.div_ceil(tiles)
}

/// Split `frags` fragments over `warps` warps along one side: (warps, frags per warp).
fn spread(frags: usize, warps: usize) -> (usize, usize) {
    (1..=warps)
        .rev()
        .find(|w| frags.is_multiple_of(*w) && warps.is_multiple_of(*w))
        .map(|w| (w, frags / w))
        .expect("1 always divides")
}

/// Tile of the forward/backward-data kernel: 128 positions × up to 128 dst channels, 8
/// warps, [`BK`] reduced channels per stage.
pub(crate) fn gemm_tile(c_out: usize) -> MmaTile {
    let nf = frags_for(c_out, 8);
    let (warps_n, frags_n) = spread(nf, 2);
    let warps_m = 8 / warps_n;
    let frags_m = 128 / FRAG / warps_m;
    MmaTile {
        warps_m,
        warps_n,
        frags_m,
        frags_n,
        bk: BK,
    }
}

/// Tensor-core forward or backward-data into a fresh f32 tensor of `dst_shape` (strides
/// `geo.sd`). `w` must have its reduced-channel stride 1 (`geo.sw[1]`) and its taps packed
/// (`[.., kd, kh, kw, c]` memory, as `ops::conv` copies it); taps split across cubes when
/// the tiles alone cannot fill the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    src: &SsmTensor,
    w: &SsmTensor,
    bias: Option<&SsmTensor>,
    dst_shape: &[usize],
    geo: &Geo,
    channels_last: bool,
    transposed: bool,
    tile: MmaTile,
) -> SsmTensor {
    let [_, _, sw_d, sw_h, sw_w] = geo.sw;
    let [k_d, k_h, k_w] = geo.k;
    assert!(
        (k_h == 1 || sw_h == k_w * sw_w) && (k_d == 1 || sw_d == k_h * k_w * sw_w),
        "tensor-core conv: the kernel steps the weight by tap · sw_w, but its taps are not packed (strides {:?})",
        geo.sw
    );
    if super::conv_pipe::fits(src, w, geo, channels_last) {
        return super::conv_pipe::gemm(src, w, bias, dst_shape, geo, transposed);
    }
    assert_eq!(
        geo.sw[1], 1,
        "tensor-core conv: weights with their dst channels fastest reach only the pipelined kernel (conv_pipe::reads_dst_fastest)"
    );
    let m_total = geo.dst_positions();
    let numel: usize = dst_shape.iter().product();
    if m_total == 0 || numel == 0 {
        return SsmTensor::empty(dst_shape, DType::F32, &src.device);
    }
    let m_tiles = m_total.div_ceil(tile.bm());
    let n_tiles = (geo.c_out as usize).div_ceil(tile.bn());
    let cubes = m_tiles * n_tiles * geo.groups as usize;
    let taps = (geo.k[0] * geo.k[1] * geo.k[2]) as usize;
    // About two waves of resident cubes on a large GPU.
    let k_splits = tap_splits(cubes, taps, 512);
    let out = SsmTensor::empty(&[k_splits * numel], DType::F32, &src.device);
    let (frag_ty, mk) = fragment(src.dtype);
    let bias_t = bias.unwrap_or(&out);
    dispatch!(src.device, c => {
        let (gx, gy) = position_grid(m_tiles, c.properties().hardware.max_cube_count.0);
        let count = CubeCount::Static(gx, gy, (n_tiles * geo.groups as usize * k_splits) as u32);
        let dim = CubeDim::new_2d(32, (tile.warps_m * tile.warps_n) as u32);
        record_launch();
        unsafe {
            conv_mma::launch_unchecked(
                c, count, dim,
                src.array_arg(src.buffer_len()),
                w.array_arg(w.buffer_len()),
                bias_t.array_arg(bias_t.buffer_len()),
                out.array_arg(out.numel()),
                src.offset as i32,
                w.offset as i32,
                geo.launch(),
                n_tiles as u32,
                k_splits as u32,
                numel as i32,
                tile.warps_m, tile.warps_n, tile.frags_m, tile.frags_n, tile.bk, mk,
                bias.is_some(),
                channels_last,
                transposed,
                [src.dtype.storage(), frag_ty],
            )
        }
    });
    sum_tap_splits(out, k_splits, dst_shape)
}

/// Tile of the weight-gradient kernel: up to 96 dst channels × 128 (tap, channel) columns,
/// 8 warps, [`BK`] positions per stage.
pub(crate) fn wgrad_tile(c_out: usize) -> MmaTile {
    let mf = frags_for(c_out, 6);
    let (warps_m, frags_m) = spread(mf, 2);
    // 128 columns per tile.
    let warps_n = 8 / warps_m;
    let frags_n = 8 / warps_n;
    MmaTile {
        warps_m,
        warps_n,
        frags_m,
        frags_n,
        bk: BK,
    }
}

/// Tensor-core weight gradient: per-split f32 partial sums `[splits, c_out·groups,
/// c_red·taps]` (PyTorch weight order within each split).
pub(crate) fn wgrad(
    x: &SsmTensor,
    dy: &SsmTensor,
    geo: &Geo,
    channels_last: bool,
    tile: MmaTile,
) -> SsmTensor {
    if super::conv_pipe_wgrad::fits(x, dy, geo, channels_last) {
        return super::conv_pipe_wgrad::wgrad(x, dy, geo);
    }
    let taps = (geo.k[0] * geo.k[1] * geo.k[2]) as usize;
    let n_cols = taps * geo.c_red as usize;
    let co_total = (geo.c_out * geo.groups) as usize;
    let n_tiles = n_cols.div_ceil(tile.bn());
    let m_tiles = (geo.c_out as usize).div_ceil(tile.bm());
    let tiles = n_tiles * m_tiles * geo.groups as usize;
    // Enough cubes to fill a large GPU, but at least 64 stages per split.
    let (splits, rows_per_split) = row_splits(geo, tile.bk, tiles, 1024);
    let out = SsmTensor::empty(&[splits, co_total, n_cols], DType::F32, &x.device);
    let (frag_ty, mk) = fragment(x.dtype);
    dispatch!(x.device, c => {
        let count = CubeCount::Static(
            n_tiles as u32,
            m_tiles as u32,
            (splits * geo.groups as usize) as u32,
        );
        let dim = CubeDim::new_2d(32, (tile.warps_m * tile.warps_n) as u32);
        record_launch();
        unsafe {
            conv_wgrad_mma::launch_unchecked(
                c, count, dim,
                x.array_arg(x.buffer_len()),
                dy.array_arg(dy.buffer_len()),
                out.array_arg(out.numel()),
                x.offset as i32,
                dy.offset as i32,
                geo.launch(),
                splits as i32,
                rows_per_split as i32,
                tile.warps_m, tile.warps_n, tile.frags_m, tile.frags_n, tile.bk, mk,
                channels_last,
                [x.dtype.storage(), frag_ty],
            )
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_channels_with_eight_warps() {
        for c_out in [48, 96, 192, 16, 200] {
            let t = gemm_tile(c_out);
            assert_eq!(t.warps_m * t.warps_n, 8, "{t:?}");
            assert_eq!(t.bm(), 128, "{t:?}");
            assert!(t.bn() <= 128, "{t:?}");
            let tiles = c_out.div_ceil(t.bn());
            assert!(tiles * t.bn() - c_out < 16 * tiles, "{c_out}: {t:?}");
        }
        for (c_out, bm) in [(48, 48), (96, 96), (192, 96), (16, 16)] {
            let t = wgrad_tile(c_out);
            assert_eq!(
                (t.warps_m * t.warps_n, t.bm(), t.bn()),
                (8, bm, 128),
                "{t:?}"
            );
        }
    }
}
