//! Pipelined tensor-core implicit GEMM for channels-last convolutions (CUDA, sm_80+).
//!
//! The forward / backward-data GEMM of [`super::conv_mma`] (`dst[m, col] = Σ_{tap, c}
//! src[gather(m, tap), c] · w[col, c, tap]`), built the way fast Ampere/Hopper GEMMs are:
//!
//! - operand tiles go global → shared with `cp.async` (16 bytes per copy, zero-filled outside
//!   the problem), `stages` deep: the copies of the next `stages − 1` stages are in flight
//!   while the tensor cores work on the current one, and no operand passes through
//!   registers on its way to shared memory;
//! - one `mbarrier` per stage slot: every thread commits its copies to the slot's barrier and
//!   waits there before reading the slot, which also proves that every warp is done with the
//!   slot refilled next (it was read one stage earlier);
//! - fragments come from shared memory with `ldmatrix`, and multiply with warp-level
//!   `mma.sync` (16×8×16 bf16, 16×8×8 TF32) into f32 registers. TF32 goes through a b16
//!   view ([`ldmatrix_tf32`]): a 16-byte row of an 8 × 8 b16 matrix is four f32 values, and
//!   lane `(g, t)` receives word `t` of row `g`, which is where the TF32 fragments want
//!   them (one `ldmatrix.x4` per A fragment and per two B fragments, against two and one
//!   64-bit loads before);
//! - results leave straight from the accumulator registers (two adjacent channels per lane).
//!
//! Tiles are 8, 12 or 16 segments of 16 consecutive positions along w, each within one dst
//! row (or several short rows), and a stage reduces 16 or 32 channels of them. With a w
//! stride of 1 the taps along w read the same src row shifted by whole positions, so a
//! stage copies each segment's *halo* (16 + (k_w − 1)·dil_w src rows) once and every tap
//! along w reads it at its shift: a 3-wide kernel moves about a third of the src bytes of
//! a per-tap gather (the L2 → SM traffic that bounds a per-tap version; ncu showed L2 at
//! ~90 % of its throughput with the SMs ~25 % busy). Shared rows are padded by 16 bytes
//! ([`row_pad`]), so the 8 rows one `ldmatrix` touches fall on distinct banks.
//!
//! A tile's dst rows run along h, so the taps along h read the same src rows shifted by
//! one row. Where [`rows_halo_taps`] and [`with_rows_halo`] say so (a stride-1 kernel at
//! 192 channels, TF32 generally), a stage takes all `k_h × k_w` taps of one `td` and a
//! *rows halo* ([`RowsHalo`]): each src row the tile's rows read at any tap along h, once
//! per plane run (24 dst rows of the 192-channel tile read 28 halo rows instead of 3 × 24),
//! with nine taps of weights a slot; each lane addresses its fragment rows through the
//! halo row of its dst row plus the tap's shift.
//!
//! Needs channels-last operands whose rows are 16-byte aligned (channels per group and all
//! strides multiples of 8 bf16 or 4 f32 elements); [`fits`] says when, and
//! [`super::conv_mma::gemm`] takes this path whenever it does.

use cubecl::prelude::barrier::{Barrier, copy_async, copy_async_checked};
use cubecl::prelude::*;

use crate::device::{Device, record_launch};
use crate::dispatch;
use crate::dtype::DType;
use crate::kernels::conv::{ConvGeo, Geo, position_grid, src_coord, sum_tap_splits, tap_splits};
use crate::kernels::conv_mma::fragment;
use crate::kernels::conv_tune::{
    PROBE_NO_COPIES, PROBE_NO_MMA, check_fits, check_warps, conv_probe, conv_tune,
};
use crate::tensor::Tensor as SsmTensor;

/// Positions per segment: a run along w within one dst row, one 16-row MMA block (one
/// 16-deep reduction block in the weight gradient, whose segments follow [`segment_rows`]).
pub(crate) const SEG: usize = 16;
/// Padding of a shared row of `elem`-byte operands, in elements: 16 bytes, which with rows
/// of a multiple of 32 bytes (`bk` a multiple of 16) makes the pitch an odd number of
/// 16-byte units, so the 8 rows one `ldmatrix` matrix reads fall on distinct banks. In the
/// kernels it is `vec` (the elements of one 16-byte copy).
fn row_pad(elem: usize) -> usize {
    16 / elem
}

/// The producer's place in the reduction: the first tap (`td`, `th`, `tw`) of the next
/// stage's tap group and the stage's first reduced channel, stepped without divisions.
#[derive(CubeType)]
struct TapCursor {
    td: i32,
    th: i32,
    tw: i32,
    c0: i32,
}

#[cube]
impl TapCursor {
    /// At the first channel of tap `tap`.
    fn at(g: &ConvGeo, tap: i32) -> TapCursor {
        TapCursor {
            td: tap / (g.k_w * g.k_h),
            th: (tap / g.k_w) % g.k_h,
            tw: tap % g.k_w,
            c0: 0i32,
        }
    }

    /// The flat tap index (the weights' tap order).
    fn tap(&self, g: &ConvGeo) -> i32 {
        (self.td * g.k_h + self.th) * g.k_w + self.tw
    }

    /// Step past one stage of `bk` channels; true when that ended the tap group (the
    /// cursor then stands at the next group of `kw` taps along w and `kh` along h).
    fn advance(&mut self, g: &ConvGeo, bk: i32, kw: i32, kh: i32) -> bool {
        let wrap = self.c0 + bk >= g.c_red;
        self.c0 = select(wrap, 0i32, self.c0 + bk);
        if wrap {
            self.tw += kw;
            if self.tw >= g.k_w {
                self.tw = 0i32;
                self.th += kh;
                if self.th >= g.k_h {
                    self.th = 0i32;
                    self.td += 1i32;
                }
            }
        }
        wrap
    }
}

/// One `mbarrier` per stage slot (up to four): a slot's copies commit to it, and every
/// thread waits on it before reading the slot.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct SlotBarriers {
    b0: Shared<Barrier>,
    b1: Shared<Barrier>,
    b2: Shared<Barrier>,
    b3: Shared<Barrier>,
}

#[cube]
impl SlotBarriers {
    /// Barriers every thread of the cube arrives at, for all four slots.
    pub(crate) fn new() -> SlotBarriers {
        SlotBarriers::counted(CUBE_DIM, 4usize)
    }

    /// Barriers for `slots` slots that complete a phase after `count` arrivals (the rest
    /// declared only): the full and empty barriers of a warp-specialized cube.
    pub(crate) fn counted(count: u32, #[comptime] slots: usize) -> SlotBarriers {
        SlotBarriers {
            b0: counted_barrier(count, comptime!(slots > 0)),
            b1: counted_barrier(count, comptime!(slots > 1)),
            b2: counted_barrier(count, comptime!(slots > 2)),
            b3: counted_barrier(count, comptime!(slots > 3)),
        }
    }

    /// Slot `slot`'s barrier.
    fn at(&self, #[comptime] slot: usize) -> Shared<Barrier> {
        if comptime!(slot == 0) {
            self.b0
        } else if comptime!(slot == 1) {
            self.b1
        } else if comptime!(slot == 2) {
            self.b2
        } else {
            self.b3
        }
    }

    /// Tie this thread's pending copies to slot `slot`'s barrier.
    pub(crate) fn commit(&self, #[comptime] slot: usize) {
        self.at(slot).commit_copy_async();
    }

    /// Arrive at slot `slot`'s barrier without waiting.
    pub(crate) fn arrive(&self, #[comptime] slot: usize) {
        let _ = self.at(slot).arrive();
    }

    /// Wait until slot `slot`'s barrier completes its phase of parity `phase`.
    pub(crate) fn wait_parity(&self, #[comptime] slot: usize, phase: u32) {
        self.at(slot).wait_parity(phase);
    }

    /// Wait until every thread's copies into slot `slot` have landed.
    pub(crate) fn wait(&self, #[comptime] slot: usize) {
        self.at(slot).arrive_and_wait();
    }
}

/// A cube barrier completing after `count` arrivals, or (`used` false) one declared only.
#[cube]
fn counted_barrier(count: u32, #[comptime] used: bool) -> Shared<Barrier> {
    if comptime!(used) {
        Barrier::shared(count, UNIT_POS == 0)
    } else {
        Barrier::shared_uninit()
    }
}

/// The halo rows this thread copies: src base `base` (batch and group; −1: no row) and dst
/// coordinates `o_d`, `o_h`, `o_w` (times the stride in the forward pass), decoded once,
/// and `addrs`, their src addresses for the current tap group.
#[derive(CubeType)]
struct HaloRows {
    base: Array<i32>,
    o_d: Array<i32>,
    o_h: Array<i32>,
    o_w: Array<i32>,
    addrs: Array<i32>,
}

/// The comptime shape of a stage as the producer sees it: `threads` per cube, `qh` halo
/// rows per thread (one copy of each), `a_rows` halo rows in all, `kh_inner` × `kw_inner`
/// taps per group (along h, along w), `bn` dst channels, `bk` reduced channels in
/// `vec`-element copies; `transposed` (backward-data) and `unit_stride` as [`conv_pipe`]
/// has them.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct StageShape {
    threads: usize,
    qh: usize,
    a_rows: usize,
    kh_inner: usize,
    kw_inner: usize,
    bn: usize,
    bk: usize,
    vec: usize,
    transposed: bool,
    unit_stride: bool,
    probe: u32,
    /// Producer warps of their own ([`conv_pipe`]'s `producers`): the copies then commit
    /// and arrive at the slot's full barrier.
    specialized: bool,
    /// How the copies are issued ([`conv_pipe`]'s `copies`): [`COPIES_DECODED`],
    /// [`COPIES_STEPPED`], [`COPIES_DENSE`] or [`COPIES_PLACED`].
    copies: u32,
    /// The weights' dst channels are fastest in memory ([`conv_pipe`]'s `w_dst_fastest`):
    /// a slot holds each tap's `bk` reduced channels as rows of `bn` dst channels.
    w_dst_fastest: bool,
}

impl StageShape {
    /// Elements of one slot's weights ([`weight_slot`]).
    fn b_stage(&self) -> usize {
        weight_slot(
            self.kh_inner * self.kw_inner,
            self.bn,
            self.bk,
            self.vec,
            self.w_dst_fastest,
        )
    }
}

/// Elements of one slot's weights for `taps` taps, `bn` dst and `bk` reduced channels, rows
/// padded by `pad`: a row of `bk` reduced channels per dst channel and tap, or with
/// `dst_fastest` a row of `bn` dst channels per reduced channel and tap (the weights'
/// memory order either way, so that the copies move 16-byte runs).
pub(crate) fn weight_slot(
    taps: usize,
    bn: usize,
    bk: usize,
    pad: usize,
    dst_fastest: bool,
) -> usize {
    if dst_fastest {
        taps * bk * (bn + pad)
    } else {
        taps * bn * (bk + pad)
    }
}

/// Each copy of a stage decodes its place from its index and is guarded.
pub(crate) const COPIES_DECODED: u32 = 0;
/// The weight rows are stepped from copy to copy in one unrolled sequence, and only a
/// partial last round of copies (halo or weights) is guarded: the others lie inside the
/// stage for every thread.
pub(crate) const COPIES_STEPPED: u32 = 1;
/// As [`COPIES_STEPPED`], for a tile that covers its weights whole (dst channels a multiple
/// of the tile's, reduced channels of the stage depth): the weight copies need no bounds,
/// so they take the plain `cp.async` form instead of the zero-filling one.
pub(crate) const COPIES_DENSE: u32 = 2;
/// As [`COPIES_DENSE`], and where the tile's dst channels are a multiple of a thread's
/// step between weight rows, each copy's row placed at compile time instead of stepped:
/// a thread's first row lies below the step, so no step straddles a tap's last channel,
/// and round `r`'s tap and channel offset follow from `r` alone (independent copies, no
/// chain of wraps).
pub(crate) const COPIES_PLACED: u32 = 3;

/// One thread's producer: its halo rows, the cursor at the next stage to issue, and what
/// stays fixed for the cube (thread index `tid`, its first halo row `row0` and the copy
/// `chunk` it moves of each, the group's weight base `w_grp`, the tile's first dst channel
/// `n0`).
#[derive(CubeType)]
struct Producer {
    rows: HaloRows,
    cur: TapCursor,
    tid: usize,
    row0: usize,
    chunk: usize,
    w_grp: i32,
    n0: i32,
}

/// The dst row and w coordinate of place `off` in sub-run `sub` of segment `gs`: a
/// segment is `rows_per_seg` whole dst rows when those are short, else a run of up to
/// [`SEG`] positions of one row (`segs_per_row` per row).
#[cube]
pub(crate) fn seg_place(
    gs: i32,
    sub: i32,
    off: i32,
    segs_per_row: i32,
    #[comptime] rows_per_seg: usize,
) -> (i32, i32) {
    let mut row = gs * i32::cast_from(rows_per_seg) + sub;
    let mut w = off;
    if comptime!(rows_per_seg == 1) {
        row = gs / segs_per_row;
        w = (gs % segs_per_row) * i32::cast_from(SEG) + off;
    }
    (row, w)
}

/// The halo row that holds row `r` (0..16) of a segment at tap shift 0: sub-run `r / run`
/// starts at `sub_halo · (r / run)`. Rows past the segment's positions read row 0 (their
/// results are dropped).
#[cube]
pub(crate) fn seg_row(
    r: usize,
    #[comptime] run: usize,
    #[comptime] rows_per_seg: usize,
    #[comptime] sub_halo: usize,
) -> usize {
    select(
        r < rows_per_seg * run,
        (r / run) * sub_halo + r % run,
        0usize,
    )
}

/// A *rows halo* (comptime): a stage holds the src rows of all `kh_inner` taps along h at
/// once. A tile's `tile_rows` dst rows run along h (within one (batch, d) plane, or
/// across up to `planes` of them), so tap `th` of dst row `h` reads src row `h + th − pad`
/// (stride and dilation 1 along h): the rows of a plane's run of dst rows `h0 .. h1` and
/// all its taps are the `h1 − h0 + kh_inner − 1` src rows from `h0 − pad`, which the halo
/// holds once ([`RowsHalo::ext_rows`] rows of `row_halo` src positions in all) instead of
/// once per tap. `kh_inner == 1`: per-segment halos (the rest unused). `tap_loop`: the
/// consumer walks the taps along h in a run-time loop instead of unrolling them (a third
/// of the stage body live at once: ptxas gives the 192-channel tiles 255 registers and
/// spills unrolled).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct RowsHalo {
    pub kh_inner: usize,
    pub tile_rows: usize,
    pub planes: usize,
    pub row_halo: usize,
    pub tap_loop: bool,
}

impl RowsHalo {
    /// For `kh` taps along h over a tile of `tile_rows` dst rows, planes of `dst_h` rows,
    /// `row_halo` src positions a row: a window of `tile_rows` rows crosses at most
    /// ⌈(tile_rows − 1) / dst_h⌉ plane boundaries.
    pub(crate) fn new(kh: usize, tile_rows: usize, dst_h: usize, row_halo: usize) -> RowsHalo {
        let planes = ((tile_rows - 1).div_ceil(dst_h) + 1).min(tile_rows);
        RowsHalo {
            kh_inner: kh,
            tile_rows,
            planes,
            row_halo,
            tap_loop: false,
        }
    }

    /// Halo rows: the tile's rows and, per plane they cross, `kh_inner − 1` more.
    pub(crate) fn ext_rows(&self) -> usize {
        self.tile_rows + (self.kh_inner - 1) * self.planes
    }

    /// Halo rows of a stage (`row_halo` src positions each with a rows halo), else `segs`
    /// per-segment halos of `halo` rows.
    pub(crate) fn stage_rows(&self, segs: usize, halo: usize) -> usize {
        if self.kh_inner > 1 {
            self.ext_rows() * self.row_halo
        } else {
            segs * halo
        }
    }

    /// No rows halo: a halo per segment.
    pub(crate) const NONE: RowsHalo = RowsHalo {
        kh_inner: 1,
        tile_rows: 0,
        planes: 0,
        row_halo: 0,
        tap_loop: false,
    };
}

/// Halo row of dst row `rho` of the tile (tap shift 0), the tile's first dst row at
/// `h_first` of its plane: each plane the rows cross before `rho` adds `kh_inner − 1`
/// rows.
#[cube]
fn rows_halo_row(rho: i32, h_first: i32, dst_h: i32, #[comptime] rh: RowsHalo) -> i32 {
    let kh1 = comptime!(rh.kh_inner - 1);
    rho + ((h_first + rho) / dst_h) * i32::cast_from(kh1)
}

/// The place in a rows halo (in src positions, at tap shift 0) of row `r` (0..16) of
/// segment `s` of the tile; rows past the segment's positions take row 0.
#[cube]
#[allow(clippy::too_many_arguments)]
fn rows_halo_at(
    s: i32,
    r: usize,
    h_first: i32,
    dst_h: i32,
    segs_per_row: i32,
    #[comptime] run: usize,
    #[comptime] rows_per_seg: usize,
    #[comptime] rh: RowsHalo,
) -> usize {
    let r = select(r < rows_per_seg * run, r, 0usize);
    let mut rho = s * i32::cast_from(rows_per_seg) + i32::cast_from(r / run);
    let mut w = r % run;
    if comptime!(rows_per_seg == 1) {
        rho = s / segs_per_row;
        w = usize::cast_from(s % segs_per_row) * SEG + r;
    }
    let row_halo = comptime!(rh.row_halo);
    usize::cast_from(rows_halo_row(rho, h_first, dst_h, rh)) * row_halo + w
}

/// Which src row halo row `e` holds: (the tile-relative dst row that starts its plane's
/// run, the offset of `e` from that run's first halo row; −1 for a row of no run).
#[cube]
fn rows_halo_place(e: i32, h_first: i32, dst_h: i32, #[comptime] rh: RowsHalo) -> (i32, i32) {
    let (kh1, nr, planes) = comptime!((rh.kh_inner - 1, rh.tile_rows, rh.planes));
    let kh1 = i32::cast_from(kh1);
    let nr = i32::cast_from(nr);
    let mut plane = 0i32;
    let mut start = 0i32;
    let mut e_start = 0i32;
    #[unroll]
    for p in 1..planes {
        let rho_p = dst_h - h_first + i32::cast_from(p - 1) * dst_h;
        let e_p = rho_p + i32::cast_from(p) * kh1;
        if rho_p < nr && e >= e_p {
            plane = i32::cast_from(p);
            start = rho_p;
            e_start = e_p;
        }
    }
    let next = dst_h - h_first + plane * dst_h;
    let len = select(next < nr, next, nr) - start + kh1;
    let off = e - e_start;
    (start, select(off < len, off, -1i32))
}

/// A per-segment halo's comptime shape: `halo` rows a segment, holding `rows_per_seg`
/// dst rows of `run` positions each (see [`PipeTile`]).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct SegRows {
    halo: usize,
    run: usize,
    rows_per_seg: usize,
}

/// The place in a stage's halo (in src positions, at tap shift 0) of row `r` (0..16) of the
/// tile's segment `s`: in the segment's own halo, or with a rows halo where the tile's dst
/// rows run in it. Rows past the segment's positions take its row 0 (their results are
/// dropped).
#[cube]
#[allow(clippy::too_many_arguments)]
fn halo_row(
    s: i32,
    r: usize,
    h_first: i32,
    dst_h: i32,
    segs_per_row: i32,
    #[comptime] seg: SegRows,
    #[comptime] rh: RowsHalo,
) -> usize {
    let (halo, run, rows_per_seg) = comptime!((seg.halo, seg.run, seg.rows_per_seg));
    if comptime!(rh.kh_inner > 1) {
        rows_halo_at(s, r, h_first, dst_h, segs_per_row, run, rows_per_seg, rh)
    } else {
        let sub_halo = comptime!(halo / rows_per_seg);
        usize::cast_from(s) * halo + seg_row(r, run, rows_per_seg, sub_halo)
    }
}

/// The src address (channel 0 of the group) of every halo row this thread copies (rows
/// `row0 + q·threads / chunks` of the tile's halo, `chunks` copies per row) for the tap
/// group at `cur` into `rows.addrs`, −1 where the row falls outside the src. With
/// `kw_inner` taps per group, the halo holds the src rows of the first tap along w that a
/// position reads; the others read it shifted by whole rows.
#[cube]
fn halo_addrs(g: &ConvGeo, rows: &mut HaloRows, cur: &TapCursor, #[comptime] sh: StageShape) {
    let qh = comptime!(sh.qh);
    let kw_inner = comptime!(sh.kw_inner);
    let transposed = comptime!(sh.transposed);
    let unit_stride = comptime!(sh.unit_stride);
    let tw = if transposed {
        cur.tw + i32::cast_from(kw_inner - 1)
    } else {
        cur.tw
    };
    if comptime!(transposed && !unit_stride) {
        #[unroll]
        for q in 0..qh {
            let sd = src_coord(rows.o_d[q], cur.td, g.st_d, g.pad_d, g.dil_d, g.src_d, true);
            let sh = src_coord(rows.o_h[q], cur.th, g.st_h, g.pad_h, g.dil_h, g.src_h, true);
            let sw = src_coord(rows.o_w[q], tw, g.st_w, g.pad_w, g.dil_w, g.src_w, true);
            rows.addrs[q] = select(
                rows.base[q] >= 0 && sd >= 0 && sh >= 0 && sw >= 0,
                rows.base[q] + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w,
                -1i32,
            );
        }
    } else {
        // src = dst·stride − pad + tap·dil (forward) or dst + pad − tap·dil (transposed,
        // stride 1): one add per coordinate.
        let mut off_d = cur.td * g.dil_d - g.pad_d;
        let mut off_h = cur.th * g.dil_h - g.pad_h;
        let mut off_w = tw * g.dil_w - g.pad_w;
        if transposed {
            off_d = -off_d;
            off_h = -off_h;
            off_w = -off_w;
        }
        #[unroll]
        for q in 0..qh {
            let sd = rows.o_d[q] + off_d;
            let sh = rows.o_h[q] + off_h;
            let sw = rows.o_w[q] + off_w;
            let inside =
                sd >= 0 && sd < g.src_d && sh >= 0 && sh < g.src_h && sw >= 0 && sw < g.src_w;
            rows.addrs[q] = select(
                rows.base[q] >= 0 && inside,
                rows.base[q] + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w,
                -1i32,
            );
        }
    }
}

/// One `cp.async` copy of `vec` elements from `from[addr ..]` to `to[at ..]`, zero-filling
/// `to` instead when `ok` is false (`addr` is then ignored).
#[cube]
pub(crate) fn copy_chunk<I: Float>(
    from: &Array<I>,
    addr: i32,
    ok: bool,
    to: &mut SharedMemory<I>,
    at: usize,
    #[comptime] vec: usize,
) {
    let start = usize::cast_from(select(ok, addr, 0i32));
    let len = select(ok, usize::cast_from(vec), 0usize);
    let src = from.slice(start, start + len);
    let mut dst = to.slice_mut(at, at + vec);
    copy_async_checked(&src, &mut dst, comptime!(vec as u32));
}

/// Issue the `cp.async` copies of one stage into slot `slot`: this thread's halo rows
/// (addresses `addrs`, reduced channels `c0 .. c0 + bk`) and its share of the weight tile
/// (`kh_inner` × `kw_inner` taps from `tap0` × dst channels `n0 .. n0 + bn`, tap-major).
/// Chunks outside the problem are zero-filled.
#[cube]
#[allow(clippy::too_many_arguments)]
fn issue_stage<I: Float>(
    src: &Array<I>,
    w: &Array<I>,
    a_s: &mut SharedMemory<I>,
    b_s: &mut SharedMemory<I>,
    g: &ConvGeo,
    p: &Producer,
    #[comptime] slot: usize,
    #[comptime] sh: StageShape,
) {
    let (threads, qh, a_rows, kh_inner) = comptime!((sh.threads, sh.qh, sh.a_rows, sh.kh_inner));
    let (kw_inner, bn, bk, vec) = comptime!((sh.kw_inner, sh.bn, sh.bk, sh.vec));
    let (tid, addrs, c0, w_grp, n0) = (p.tid, &p.rows.addrs, p.cur.c0, p.w_grp, p.n0);
    let tap0 = p.cur.tap(g);
    let pitch = comptime!(bk + vec);
    let chunks = comptime!(bk / vec);
    let a_slot = slot * (a_rows * pitch);
    let col = p.chunk * vec;
    let c = c0 + i32::cast_from(col);
    let rows_per_pass = comptime!(threads / chunks);
    #[unroll]
    for q in 0..qh {
        let rho = p.row0 + q * rows_per_pass;
        // (row0 < rows_per_pass: a whole round lies inside the halo for every thread.)
        let whole = comptime!(sh.copies != COPIES_DECODED && (q + 1) * rows_per_pass <= a_rows);
        if whole || rho < a_rows {
            let ok = addrs[q] >= 0 && c < g.c_red;
            copy_chunk::<I>(src, addrs[q] + c, ok, a_s, a_slot + rho * pitch + col, vec);
        }
    }
    let b_slot = slot * comptime!(sh.b_stage());
    if comptime!(sh.w_dst_fastest) {
        weight_copies_dst_fastest::<I>(w, b_s, g, p, tap0, b_slot, sh);
    } else if comptime!(sh.copies != COPIES_DECODED) {
        weight_copies_unrolled::<I>(w, b_s, g, p, tap0, b_slot, sh);
    } else {
        let b_chunks = comptime!(kh_inner * kw_inner * bn * chunks);
        #[unroll]
        for r in 0..b_chunks.div_ceil(threads) {
            let e = tid + r * threads;
            if e < b_chunks {
                let row = e / chunks;
                let ch = e % chunks;
                let u = row / bn;
                let col = n0 + i32::cast_from(row % bn);
                let c = c0 + i32::cast_from(ch * vec);
                let ok = col < g.c_out && c < g.c_red;
                let tap = if comptime!(kh_inner > 1) {
                    tap0 + i32::cast_from(u / kw_inner) * g.k_w + i32::cast_from(u % kw_inner)
                } else {
                    tap0 + i32::cast_from(u)
                };
                let addr = w_grp + tap * g.sw_w + col * g.sw_o + c;
                copy_chunk::<I>(w, addr, ok, b_s, b_slot + row * pitch + ch * vec, vec);
            }
        }
    }
}

/// The weight copies of a stage as one unrolled sequence over this thread's weight rows
/// (`threads / chunks` apart, the same chunk of each): the row's source address is stepped
/// from copy to copy (where rows lie closer than a tile's dst channels: at most one wrap
/// into the next tap a step), and only a partial last round is guarded (`row0` lies below
/// the step). Decoded and guarded per copy, a copy took ~46 instructions.
#[cube]
fn weight_copies_unrolled<I: Float>(
    w: &Array<I>,
    b_s: &mut SharedMemory<I>,
    g: &ConvGeo,
    p: &Producer,
    tap0: i32,
    b_slot: usize,
    #[comptime] sh: StageShape,
) {
    let (threads, kh_inner, kw_inner) = comptime!((sh.threads, sh.kh_inner, sh.kw_inner));
    let (bn, bk, vec) = comptime!((sh.bn, sh.bk, sh.vec));
    let pitch = comptime!(bk + vec);
    let step = comptime!(threads / (bk / vec));
    let b_rows = comptime!(kh_inner * kw_inner * bn);
    let rounds = comptime!(b_rows.div_ceil(step));
    let dense = comptime!(sh.copies == COPIES_DENSE || sh.copies == COPIES_PLACED);
    let placed = comptime!(sh.copies == COPIES_PLACED && bn.is_multiple_of(step));
    let c = p.cur.c0 + i32::cast_from(p.chunk * vec);
    let c_ok = c < g.c_red;
    let (bni, kwi) = (i32::cast_from(bn), i32::cast_from(kw_inner));
    // Row `row0` of the stage's weights: tap (uh, uw) of the group, dst channel n0 + cl.
    let mut cl = i32::cast_from(p.row0 % bn);
    let u = i32::cast_from(p.row0 / bn);
    let mut uw = u % kwi;
    let uh = u / kwi;
    let mut addr = p.w_grp + (tap0 + uh * g.k_w + uw) * g.sw_w + (p.n0 + cl) * g.sw_o + c;
    // What a wrap into the next tap along w, and one past the group's last along w, add.
    let next_w = g.sw_w - bni * g.sw_o;
    let next_h = (g.k_w - kwi) * g.sw_w;
    let at = b_slot + p.row0 * pitch + p.chunk * vec;
    // (Placed: row0 < step ≤ bn puts the first row at tap 0, channel row0.)
    let kw_sw = g.k_w * g.sw_w;
    #[unroll]
    for r in 0..rounds {
        let whole = comptime!((r + 1) * step <= b_rows);
        if whole || p.row0 + comptime!(r * step) < b_rows {
            let to = at + comptime!(r * step * pitch);
            if comptime!(placed) {
                let (u, co) = comptime!(((r * step) / bn, (r * step) % bn));
                let (uh, uw) = comptime!((u / kw_inner, u % kw_inner));
                let placed_addr = addr
                    + i32::cast_from(uh) * kw_sw
                    + i32::cast_from(uw) * g.sw_w
                    + i32::cast_from(co) * g.sw_o;
                copy_chunk_dense::<I>(w, placed_addr, b_s, to, vec);
            } else if comptime!(dense) {
                copy_chunk_dense::<I>(w, addr, b_s, to, vec);
            } else {
                copy_chunk::<I>(w, addr, c_ok && p.n0 + cl < g.c_out, b_s, to, vec);
            }
        }
        if comptime!(!placed && r + 1 < rounds) {
            if comptime!(step <= bn) {
                cl += i32::cast_from(step);
                addr += i32::cast_from(step) * g.sw_o;
                let wrap = cl >= bni;
                cl = select(wrap, cl - bni, cl);
                addr = select(wrap, addr + next_w, addr);
                if comptime!(kh_inner > 1) {
                    uw = select(wrap, uw + 1i32, uw);
                    let wrap_h = uw == kwi;
                    uw = select(wrap_h, 0i32, uw);
                    addr = select(wrap_h, addr + next_h, addr);
                }
            } else {
                // Several wraps a step: decode the next row outright.
                let row = p.row0 + comptime!((r + 1) * step);
                cl = i32::cast_from(row % bn);
                let u = i32::cast_from(row / bn);
                let tap = tap0 + (u / kwi) * g.k_w + u % kwi;
                addr = p.w_grp + tap * g.sw_w + (p.n0 + cl) * g.sw_o + c;
            }
        }
    }
}

/// The weight copies of a stage whose weights have their dst channels fastest
/// ([`StageShape::w_dst_fastest`]; the tile covers them whole, so no copy is guarded): a
/// thread takes one 16-byte chunk of the `bn` dst channels (`chunk` of `bn / vec`) and, for
/// each tap of the group, the reduced channels `row0, row0 + step, ..` of the stage, so
/// each copy's address is the thread's first plus offsets known at compile time times the
/// strides. Threads past `step · chunks` copy nothing.
#[cube]
fn weight_copies_dst_fastest<I: Float>(
    w: &Array<I>,
    b_s: &mut SharedMemory<I>,
    g: &ConvGeo,
    p: &Producer,
    tap0: i32,
    b_slot: usize,
    #[comptime] sh: StageShape,
) {
    let (threads, kh_inner, kw_inner) = comptime!((sh.threads, sh.kh_inner, sh.kw_inner));
    let (bn, bk, vec) = comptime!((sh.bn, sh.bk, sh.vec));
    let chunks = comptime!(bn / vec);
    let step = comptime!(threads / chunks);
    let pitch = comptime!(bn + vec);
    let (row0, chunk) = (p.tid / chunks, p.tid % chunks);
    if row0 < step {
        let col = chunk * vec;
        let first = p.w_grp
            + tap0 * g.sw_w
            + (p.cur.c0 + i32::cast_from(row0)) * g.sw_i
            + p.n0
            + i32::cast_from(col);
        let at = b_slot + row0 * pitch + col;
        #[unroll]
        for u in 0..kh_inner * kw_inner {
            let (uh, uw) = comptime!((u / kw_inner, u % kw_inner));
            let tap_addr =
                first + i32::cast_from(uh) * g.k_w * g.sw_w + i32::cast_from(uw) * g.sw_w;
            #[unroll]
            for r in 0..bk.div_ceil(step) {
                if comptime!((r + 1) * step <= bk) || row0 + comptime!(r * step) < bk {
                    copy_chunk_dense::<I>(
                        w,
                        tap_addr + i32::cast_from(comptime!(r * step)) * g.sw_i,
                        b_s,
                        at + comptime!((u * bk + r * step) * pitch),
                        vec,
                    );
                }
            }
        }
    }
}

/// Copy `vec` elements of `from` at `addr` to `to` at `at` with the plain `cp.async` form:
/// the caller knows them inside `from`.
#[cube]
fn copy_chunk_dense<I: Float>(
    from: &Array<I>,
    addr: i32,
    to: &mut SharedMemory<I>,
    at: usize,
    #[comptime] vec: usize,
) {
    let start = usize::cast_from(addr);
    let src = from.slice(start, start + vec);
    let mut dst = to.slice_mut(at, at + vec);
    copy_async(&src, &mut dst, comptime!(vec as u32));
}

#[cube]
impl Producer {
    /// Issue the copies of the next stage into slot `slot`, commit them to the slot's
    /// barrier and step the cursor past the stage (re-gathering the halo addresses when
    /// that enters the next tap group).
    #[allow(clippy::too_many_arguments)]
    fn produce<I: Float>(
        &mut self,
        src: &Array<I>,
        w: &Array<I>,
        a_s: &mut SharedMemory<I>,
        b_s: &mut SharedMemory<I>,
        g: &ConvGeo,
        bars: &SlotBarriers,
        #[comptime] slot: usize,
        #[comptime] sh: StageShape,
    ) {
        if comptime!(sh.probe != PROBE_NO_COPIES) {
            issue_stage::<I>(src, w, a_s, b_s, g, self, slot, sh);
        }
        bars.commit(slot);
        if comptime!(sh.specialized) {
            bars.arrive(slot);
        }
        let (bk, kw_inner, kh_inner) = comptime!((sh.bk, sh.kw_inner, sh.kh_inner));
        if self.cur.advance(
            g,
            i32::cast_from(bk),
            i32::cast_from(kw_inner),
            i32::cast_from(kh_inner),
        ) {
            halo_addrs(g, &mut self.rows, &self.cur, sh);
        }
    }
}

/// Two adjacent f32 values of shared memory at `at` (even) in one 64-bit load, as TF32
/// fragment elements. The bits pass unconverted: the tensor cores read the top 19 bits of
/// each, which truncates the mantissa (a `cvt.rna` per element would cost as many
/// instructions as the loads themselves).
#[cube]
pub(crate) fn tf32_pair<I: Float, M: Float>(s: &SharedMemory<I>, at: usize) -> Vector<M, Const<2>> {
    let v = s
        .slice(at, at + 2)
        .into_vectorized()
        .with_vector_size::<Const<2>>()[0];
    Vector::<M, Const<2>>::reinterpret(v)
}

/// Four adjacent f32 values at `at` (a multiple of 4) in one 128-bit load, as TF32
/// fragment elements (see [`tf32_pair`]).
#[cube]
pub(crate) fn tf32_quad<I: Float, M: Float>(s: &SharedMemory<I>, at: usize) -> Vector<M, Const<4>> {
    let v = s
        .slice(at, at + 4)
        .into_vectorized()
        .with_vector_size::<Const<4>>()[0];
    Vector::<M, Const<4>>::reinterpret(v)
}

/// Registers `first .. first + len` of an `ldmatrix` result as MMA operands of type `M` (a
/// four-matrix B load holds two fragments).
#[cube]
pub(crate) fn regs_as<I: Float, M: Float, N: Size>(
    regs: &Array<Vector<I, N>>,
    #[comptime] first: usize,
    #[comptime] len: usize,
) -> Array<Vector<M, N>> {
    let mut f = Array::<Vector<M, N>>::new(len);
    #[unroll]
    for e in 0..len {
        f[e] = Vector::cast_from(regs[first + e]);
    }
    f
}

/// One `ldmatrix` of `matrices` 8 × 8 bf16 matrices (each lane points at one 16-byte row
/// from `at`; transposed with `transpose`), as `M` MMA operand registers, one a matrix: a
/// four-matrix A load is one fragment, a two-matrix B load one, a four-matrix B load two.
#[cube]
pub(crate) fn ldmatrix_regs<I: Float, M: Float, N: Size>(
    s: &SharedMemory<I>,
    at: usize,
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] matrices: usize,
    #[comptime] transpose: bool,
) -> Array<Vector<M, N>> {
    let def = cmma::MmaDefinition::<M, M, f32>::new(16usize, 8usize, 16usize);
    let regs = def.load_matrix::<I, N>(&s.slice(at, at + 8), ident, matrices, transpose);
    regs_as::<I, M, N>(&regs, 0usize, matrices)
}

/// The two B fragments (two 8-column blocks, 16 deep, bf16) of one four-matrix `ldmatrix`
/// at `at` (transposed with `transpose`), pushed onto `frags` in block order.
#[cube]
pub(crate) fn push_b_pair<I: Float, M: Float, NB: Size>(
    b_s: &SharedMemory<I>,
    at: usize,
    #[comptime] transpose: bool,
    frags: &mut Sequence<Array<Vector<M, NB>>>,
) {
    let regs = ldmatrix_regs::<I, M, NB>(b_s, at, cmma::MatrixIdent::B, 4usize, transpose);
    frags.push(regs_as::<M, M, NB>(&regs, 0usize, 2usize));
    frags.push(regs_as::<M, M, NB>(&regs, 2usize, 2usize));
}

/// One `ldmatrix` of `matrices` 8 × 8 matrices of f32 rows as TF32 MMA operand registers,
/// one a matrix: each lane points at one 16-byte row (four f32) from `at`, which a b16
/// view moves as eight halves, and lane `(g = lane / 4, t = lane % 4)` receives word `t` of
/// matrix row `g` whole. That is the TF32 16×8×8 layout: A registers (g, t), (g + 8, t),
/// (g, t + 4), (g + 8, t + 4) are four matrices at rows 0 / 8 and words 0 / 4 of a block;
/// B's (t, g), (t + 4, g) of an n-major block are two. (`ldmatrix` itself takes no 4-byte
/// elements; the bits pass unconverted, as with the TF32 loads everywhere here: the
/// tensor cores read the top 19 bits.)
#[cube]
fn ldmatrix_tf32<I: Float, M: Float, N: Size>(
    s: &SharedMemory<I>,
    at: usize,
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] matrices: usize,
) -> Array<Vector<M, N>> {
    // Safety: a view of the same shared memory for `ldmatrix`, which takes the address
    // (offset in f32 elements) and moves bits.
    let halves = unsafe { s.slice(at, at + 4).downcast_unchecked::<half::bf16>() };
    let def = cmma::MmaDefinition::<M, M, f32>::new(16usize, 8usize, 8usize);
    let regs = def.load_matrix::<half::bf16, Const<2>>(&halves, ident, matrices, false);
    let mut f = Array::<Vector<M, N>>::new(matrices);
    #[unroll]
    for e in 0..matrices {
        f[e] = Vector::<M, N>::reinterpret(regs[e]);
    }
    f
}

/// One `ldmatrix` of `matrices` matrices at `at` as operand registers of the `mk`-deep MMA
/// (16: bf16 as it is, transposed with `transpose`; 8: TF32 through [`ldmatrix_tf32`],
/// never transposed).
#[cube]
fn ldmatrix_frags<I: Float, M: Float, N: Size>(
    s: &SharedMemory<I>,
    at: usize,
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] matrices: usize,
    #[comptime] mk: usize,
    #[comptime] transpose: bool,
) -> Array<Vector<M, N>> {
    if comptime!(mk == 16) {
        ldmatrix_regs::<I, M, N>(s, at, ident, matrices, transpose)
    } else {
        comptime!(assert!(
            !transpose,
            "TF32 fragments come from untransposed rows"
        ));
        ldmatrix_tf32::<I, M, N>(s, at, ident, matrices)
    }
}

/// The products of one reduction step of a warp's tile: A fragment `i` times B fragment
/// `jn` into accumulator block `i · frags_n + jn`.
#[cube]
pub(crate) fn mma_tile<M: Float, NA: Size, NB: Size, NC: Size>(
    def: &cmma::MmaDefinition<M, M, f32>,
    a_frags: &Sequence<Array<Vector<M, NA>>>,
    b_frags: &Sequence<Array<Vector<M, NB>>>,
    acc: &mut Sequence<Array<Vector<f32, NC>>>,
    #[comptime] frags_m: usize,
    #[comptime] frags_n: usize,
) {
    #[unroll]
    for i in 0..frags_m {
        #[unroll]
        for jn in 0..frags_n {
            def.execute_inplace(
                a_frags.index(i),
                b_frags.index(jn),
                acc.index_mut(i * frags_n + jn),
            );
        }
    }
}

/// Pipelined tensor-core implicit GEMM (forward, or backward-data with `transposed`) for
/// channels-last operands.
///
/// A tile is `warps_m·frags_m` segments of [`SEG`] dst positions × `bn =
/// warps_n·frags_n·8` dst channels. A segment is a run of `run` = 16 consecutive positions
/// along w of one dst row (`segs_per_row` per row, the last one partial), or, for rows of
/// at most 8 positions, `rows_per_seg` whole rows (`run` = the row length). The reduction
/// runs over tap groups of `kw_inner` taps along w (all of them when the w stride is 1,
/// else one) and `bk` reduced channels per stage. A stage holds the src *halo* of each
/// segment, `run + (kw_inner − 1)·dil_w` rows per row it covers (`halo` in all), once for
/// all taps of its group (tap `u` reads it shifted by `u·dil_w` rows), and the weights of
/// those taps. Warp `(wm, wn)` owns segments `wm·frags_m ..` and `frags_n` 8-channel
/// blocks. Grid: x·y = tiles, z = groups × channel tiles × tap-group splits (split `s`
/// writes its partial sums at `s · dst_split`). `unit_stride` (all strides 1) spares the
/// backward-data gather its divisions.
///
/// `producers` > 0 specializes the warps: the tile's warps only load fragments and
/// multiply, `producers` more warps only copy, and each slot has a *full* barrier (the
/// producers' arrivals and copies) and an *empty* one (the consumers' arrivals after their
/// last read), so the copies' address work no longer stops the products of the warps that
/// issue them (the probes put the 192-channel TF32 forward at 114 µs without copies, 92
/// without products, and 155 with both in the same warps).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_pipe<I: Float, M: Float>(
    src: &Array<I>,
    w: &Array<I>,
    bias: &Array<f32>,
    dst: &mut Array<f32>,
    src_off: i32,
    w_off: i32,
    g: ConvGeo,
    segs_per_row: i32,
    n_tiles: u32,
    k_splits: u32,
    dst_split: i32,
    #[comptime] warps_m: usize,
    #[comptime] warps_n: usize,
    #[comptime] frags_m: usize,
    #[comptime] frags_n: usize,
    #[comptime] bk: usize,
    #[comptime] mk: usize,
    #[comptime] vec: usize,
    #[comptime] stages: usize,
    #[comptime] producers: usize,
    #[comptime] copies: u32,
    #[comptime] w_dst_fastest: bool,
    #[comptime] kw_inner: usize,
    #[comptime] dil_w: usize,
    #[comptime] halo: usize,
    #[comptime] run: usize,
    #[comptime] rows_per_seg: usize,
    #[comptime] rows_halo: RowsHalo,
    #[comptime] has_bias: bool,
    #[comptime] transposed: bool,
    #[comptime] unit_stride: bool,
    #[comptime] probe: u32,
    #[define(I, M)] _d: [StorageType; 2],
) {
    // Consumer warps first, then any producer warps; `threads` are the ones that copy.
    let consumers = comptime!(warps_m * warps_n * 32);
    let specialized = comptime!(producers > 0);
    let cube_threads = comptime!(consumers + producers * 32);
    let threads = comptime!(if specialized {
        producers * 32
    } else {
        consumers
    });
    let segs = comptime!(warps_m * frags_m);
    let bm = comptime!(segs * SEG);
    let bn = comptime!(warps_n * frags_n * 8);
    let pitch = comptime!(bk + vec);
    let (kh_inner, tile_rows, row_halo) =
        comptime!((rows_halo.kh_inner, rows_halo.tile_rows, rows_halo.row_halo,));
    let a_rows = comptime!(rows_halo.stage_rows(segs, halo));
    let a_stage = comptime!(a_rows * pitch);
    let b_stage = comptime!(weight_slot(kh_inner * kw_inner, bn, bk, vec, w_dst_fastest));
    // Halo copies: a row is `chunks` copies long, and adjacent threads take adjacent chunks
    // of one row, so a warp reads whole 32-byte sectors (with a thread per row, each copy
    // instruction fetched half-used sectors: ncu counted 46 % of the L2 sectors as excess
    // in the bf16 48-channel forward, whose L2 throughput at 80 % was the limit).
    let chunks = comptime!(bk / vec);
    let rows_per_pass = comptime!(threads / chunks);
    let qh = comptime!(a_rows.div_ceil(rows_per_pass));
    let sub_halo = comptime!(halo / rows_per_seg);

    let unit = UNIT_POS as usize;
    // The copying thread's index (for a consumer of a specialized cube: unused).
    let tid = if comptime!(specialized) {
        (unit + comptime!(producers * 32)) % cube_threads
    } else {
        unit
    };
    let (row0, chunk) = (tid / chunks, tid % chunks);
    let lane = UNIT_POS_X;
    let warp = UNIT_POS_Y as usize;
    let wm = warp % warps_m;
    let wn = warp / warps_m;
    let m_tile = CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X;
    let split = CUBE_POS_Z % k_splits;
    let zr = CUBE_POS_Z / k_splits;
    let grp = i32::cast_from(zr / n_tiles);
    let n0 = i32::cast_from(zr % n_tiles) * i32::cast_from(bn);
    let total_rows = g.batch * g.dst_d * g.dst_h;
    let seg0 = i32::cast_from(m_tile) * i32::cast_from(segs);
    let grp_base = src_off + grp * g.c_red * g.ss_c;

    let mut a_s = SharedMemory::<I>::new_aligned(stages * a_stage, 16usize);
    let mut b_s = SharedMemory::<I>::new_aligned(stages * b_stage, 16usize);
    let bars = if comptime!(specialized) {
        SlotBarriers::counted(comptime!(threads as u32), stages)
    } else {
        SlotBarriers::new()
    };
    // (Without producer warps `empty` is never used: a copy of `bars`, declaring nothing.)
    let empty = if comptime!(specialized) {
        SlotBarriers::counted(comptime!(consumers as u32), stages)
    } else {
        bars
    };

    // The halo rows this thread copies, decoded once.
    let mut hrows = HaloRows {
        base: Array::<i32>::new(qh),
        o_d: Array::<i32>::new(qh),
        o_h: Array::<i32>::new(qh),
        o_w: Array::<i32>::new(qh),
        addrs: Array::<i32>::new(qh),
    };
    // The tile's first dst row and its h (its rows run along h: the taps along h of a
    // rows-halo stage read them shifted by whole rows).
    let row_first = i32::cast_from(m_tile) * i32::cast_from(tile_rows);
    let h_first = row_first % g.dst_h;
    #[unroll]
    for q in 0..qh {
        let v = row0 + q * rows_per_pass;
        // (dst row, offset along h, w) of halo row v; `ok` false for a rows-halo row of no
        // run. A rows halo stacks whole src rows (`row_halo` positions each) along h; a
        // per-segment halo holds each segment's rows for the taps along w.
        let (row, h_off, ow, ok) = if comptime!(kh_inner > 1) {
            let (run_row, off) =
                rows_halo_place(i32::cast_from(v / row_halo), h_first, g.dst_h, rows_halo);
            let h_off = if transposed {
                off - i32::cast_from(kh_inner - 1)
            } else {
                off
            };
            (
                row_first + run_row,
                h_off,
                i32::cast_from(v % row_halo),
                off >= 0,
            )
        } else {
            let hr = v % halo;
            let (row, ow) = seg_place(
                seg0 + i32::cast_from(v / halo),
                i32::cast_from(hr / sub_halo),
                i32::cast_from(hr % sub_halo),
                segs_per_row,
                rows_per_seg,
            );
            (row, 0i32, ow, true)
        };
        hrows.base[q] = select(
            v < a_rows && ok && row < total_rows,
            grp_base + (row / (g.dst_h * g.dst_d)) * g.ss_n,
            -1i32,
        );
        let od = (row / g.dst_h) % g.dst_d;
        let oh = row % g.dst_h;
        // (Rows halos come only with stride 1: the strides leave their h_off and ow as
        // they are.)
        if transposed {
            hrows.o_d[q] = od;
            hrows.o_h[q] = oh + h_off;
            hrows.o_w[q] = ow;
        } else {
            hrows.o_d[q] = od * g.st_d;
            hrows.o_h[q] = oh * g.st_h + h_off;
            hrows.o_w[q] = ow * g.st_w;
        }
    }

    let w_grp = w_off + grp * g.w_group;
    let bki = i32::cast_from(bk);
    let n_c = (g.c_red + bki - 1) / bki;
    let kwi = i32::cast_from(kw_inner);
    let khi = i32::cast_from(kh_inner);
    let groups = g.k_d * g.k_h * g.k_w / (kwi * khi);
    let ks = i32::cast_from(k_splits);
    let per_split = (groups + ks - 1) / ks;
    let si = i32::cast_from(split);
    let q0 = si * per_split;
    let q1 = select(q0 + per_split < groups, q0 + per_split, groups);
    let n_stages = select(q1 > q0, (q1 - q0) * n_c, 0i32);

    let mut rows = SharedMemory::<i32>::new(bm);
    let seg = comptime!(SegRows {
        halo,
        run,
        rows_per_seg,
    });
    if comptime!(specialized) {
        // Now, so that the consumers need not wait for the producers at the end.
        dst_rows(
            &mut rows,
            &g,
            unit,
            seg0,
            segs_per_row,
            si * dst_split,
            cube_threads,
            bm,
            seg,
        );
        sync_cube();
    }

    // Fragment register layout of this lane.
    let def = cmma::MmaDefinition::<M, M, f32>::new(16usize, 8usize, mk);
    let size!(NA) = def.vector_size(cmma::MatrixIdent::A);
    let size!(NB) = def.vector_size(cmma::MatrixIdent::B);
    let size!(NC) = def.vector_size(cmma::MatrixIdent::Accumulator);
    let vc = def.vectors_per_lane(cmma::MatrixIdent::Accumulator);
    let sc = def.vector_size(cmma::MatrixIdent::Accumulator);
    // The rows this lane points `ldmatrix` at (16-byte rows, `vec` elements): A row
    // `lane % 16` of each of its segments (in a stage's halo at tap shift 0) at the block's
    // first or second 16 bytes; B channel `lane % 8` of the first or second block of a
    // pair at its first or second 16 bytes (`lane_b_odd`: an odd last block's x2).
    let mut lane_a = Array::<usize>::new(frags_m);
    #[unroll]
    for i in 0..frags_m {
        let s = i32::cast_from(wm * frags_m + i);
        let a = halo_row(
            s,
            (lane % 16) as usize,
            h_first,
            g.dst_h,
            segs_per_row,
            comptime!(SegRows {
                halo,
                run,
                rows_per_seg
            }),
            rows_halo,
        );
        lane_a[i] = a * pitch + (lane / 16) as usize * vec;
    }
    // With w_dst_fastest (bf16) the slot's rows are reduced channels: `ldmatrix.trans`,
    // lanes 0-7 / 8-15 give rows k0 / k0 + 8 of the first block, lanes 16-31 the same of the
    // second (an x2 reads lanes 0-15 only). `b_col` and `b_red` step a dst and a reduced
    // channel in the slot (one of them is the padded row pitch).
    let (b_col, b_red) = comptime!(if w_dst_fastest {
        (1, bn + vec)
    } else {
        (pitch, 1)
    });
    // A tap's slot in `b_col` steps (`bn` when `b_col` is the pitch). The slot offsets below
    // keep the shape they had before dst-fastest weights, `(tap · cols + warp_col) · b_col`
    // then `+ jp · 16 · b_col + lane_b + k0`, the constant last: NVRTC 13 compiled the TF32
    // 192-channel loops of another order (`b_slot + k0` first) to ~10 % more address
    // arithmetic, and they ran 137 µs instead of 123 (H100, 2026-12-07 evening,
    // `scripts/sweeps/tf32-192-regression.txt`).
    let tap_cols = comptime!(b_stage / (kh_inner * kw_inner) / b_col);
    let (lane_b, lane_b_odd) = if comptime!(w_dst_fastest) {
        let at = (lane % 8 + ((lane / 8) % 2) * 8) as usize * b_red + (lane / 16) as usize * 8;
        (at, at)
    } else {
        let b_k = ((lane / 8) % 2) as usize * vec;
        (
            (lane % 8 + (lane / 16) * 8) as usize * pitch + b_k,
            (lane % 8) as usize * pitch + b_k,
        )
    };
    let mut acc = Sequence::<Array<Vector<f32, NC>>>::new();
    #[unroll]
    for _ in 0..frags_m * frags_n {
        let mut a = Array::<Vector<f32, NC>>::new(vc);
        #[unroll]
        for h in 0..vc {
            a[h] = Vector::new(0.0f32);
        }
        acc.push(a);
    }

    // Producer state: the next stage to issue.
    let sh = comptime!(StageShape {
        threads,
        qh,
        a_rows,
        kh_inner,
        kw_inner,
        bn,
        bk,
        vec,
        transposed,
        unit_stride,
        probe,
        specialized,
        copies,
        w_dst_fastest,
    });
    let mut prod = Producer {
        rows: hrows,
        cur: TapCursor::at(&g, q0 * kwi * khi),
        tid,
        row0,
        chunk,
        w_grp,
        n0,
    };
    halo_addrs(&g, &mut prod.rows, &prod.cur, sh);
    let mut producer_warp = false;
    if comptime!(specialized) {
        producer_warp = unit >= consumers;
    }

    if producer_warp {
        if comptime!(specialized) {
            // Stage s goes to slot s % stages once the consumers are done with the slot's
            // previous stage (the empty barrier's phase of the use before).
            let mut k = i32::new(0);
            let mut phase = 0u32;
            while k < n_stages {
                #[unroll]
                for j in 0..stages {
                    if k + i32::cast_from(j) < n_stages {
                        if k > 0i32 {
                            empty.wait_parity(j, 1u32 - phase);
                        }
                        prod.produce::<I>(src, w, &mut a_s, &mut b_s, &g, &bars, j, sh);
                    }
                }
                k += i32::cast_from(stages);
                phase = 1u32 - phase;
            }
        }
    } else {
        if comptime!(!specialized) {
            #[unroll]
            for j in 0..stages - 1 {
                if i32::cast_from(j) < n_stages {
                    prod.produce::<I>(src, w, &mut a_s, &mut b_s, &g, &bars, j, sh);
                }
            }
        }

        let warp_seg = wm * frags_m;
        let warp_col = wn * frags_n * 8;
        let mut k = i32::new(0);
        let mut phase = 0u32;
        while k < n_stages {
            #[unroll]
            for j in 0..stages {
                let s = k + i32::cast_from(j);
                if s < n_stages {
                    if comptime!(specialized) {
                        // Stage s has landed in slot j (its use k / stages).
                        bars.wait_parity(j, phase);
                    } else {
                        // Stage s sits in slot j; once every thread is here, the slot read at
                        // stage s − 1 is free for stage s + stages − 1.
                        bars.wait(j);
                        let fill = comptime!((j + stages - 1) % stages);
                        if s + i32::cast_from(stages - 1) < n_stages {
                            prod.produce::<I>(src, w, &mut a_s, &mut b_s, &g, &bars, fill, sh);
                        }
                    }

                    #[unroll(!rows_halo.tap_loop)]
                    for uh in 0..comptime!(if probe == PROBE_NO_MMA { 0 } else { kh_inner }) {
                        #[unroll]
                        for u in 0..kw_inner {
                            // Tap (uh, u) of the group reads the halo shifted by this many rows: u
                            // positions along w, and in a rows halo uh dst rows along h.
                            // (`dil_w` at compile time: with the run-time dilation in
                            // every fragment address, the TF32 192-channel loop spent three
                            // integer instructions on each A `ldmatrix`.)
                            let shift = comptime!(if transposed {
                                dil_w * (kw_inner - 1 - u)
                            } else {
                                dil_w * u
                            });
                            let shift_h = if transposed { kh_inner - 1 - uh } else { uh };
                            let a_slot = j * a_stage + (shift_h * row_halo + shift) * pitch;
                            let b_slot =
                                j * b_stage + ((uh * kw_inner + u) * tap_cols + warp_col) * b_col;
                            #[unroll]
                            for kk in 0..bk / mk {
                                let k0 = kk * mk;
                                let mut a_frags = Sequence::<Array<Vector<M, NA>>>::new();
                                let mut b_frags = Sequence::<Array<Vector<M, NB>>>::new();
                                // A: ldmatrix.x4, lanes 0-15 give rows 0-15 at k0, lanes 16-31
                                // at k0 + 16 bytes.
                                #[unroll]
                                for i in 0..frags_m {
                                    a_frags.push(ldmatrix_frags::<I, M, NA>(
                                        &a_s,
                                        a_slot + lane_a[i] + k0,
                                        cmma::MatrixIdent::A,
                                        4usize,
                                        mk,
                                        false,
                                    ));
                                }
                                // B: ldmatrix.x4 over two 8-channel blocks, lanes 0-7 / 8-15 give
                                // the first block at k0 / k0 + 16 bytes, lanes 16-23 / 24-31 the
                                // second; an odd last block takes an x2.
                                #[unroll]
                                for jp in 0..frags_n / 2 {
                                    let regs = ldmatrix_frags::<I, M, NB>(
                                        &b_s,
                                        b_slot + jp * 16 * b_col + lane_b + k0 * b_red,
                                        cmma::MatrixIdent::B,
                                        4usize,
                                        mk,
                                        w_dst_fastest,
                                    );
                                    b_frags.push(regs_as::<M, M, NB>(&regs, 0usize, 2usize));
                                    b_frags.push(regs_as::<M, M, NB>(&regs, 2usize, 2usize));
                                }
                                if comptime!(frags_n % 2 == 1) {
                                    b_frags.push(ldmatrix_frags::<I, M, NB>(
                                        &b_s,
                                        b_slot
                                            + (frags_n - 1) * 8 * b_col
                                            + lane_b_odd
                                            + k0 * b_red,
                                        cmma::MatrixIdent::B,
                                        2usize,
                                        mk,
                                        w_dst_fastest,
                                    ));
                                }
                                mma_tile::<M, NA, NB, NC>(
                                    &def, &a_frags, &b_frags, &mut acc, frags_m, frags_n,
                                );
                            }
                        }
                    }
                    if comptime!(specialized) {
                        empty.arrive(j);
                    }
                }
            }
            k += i32::cast_from(stages);
            if comptime!(specialized) {
                phase = 1u32 - phase;
            }
        }

        if comptime!(!specialized) {
            dst_rows(
                &mut rows,
                &g,
                unit,
                seg0,
                segs_per_row,
                si * dst_split,
                cube_threads,
                bm,
                seg,
            );
            sync_cube();
        }
        #[unroll]
        for h in 0..vc {
            let (r, c) = def.position_of_nth(lane, (h * sc) as u32, cmma::MatrixIdent::Accumulator);
            #[unroll]
            for i in 0..frags_m {
                let at = rows[(warp_seg + i) * SEG + r as usize];
                #[unroll]
                for jn in 0..frags_n {
                    let v = acc.index(i * frags_n + jn)[h];
                    #[unroll]
                    for e in 0..sc {
                        let col = n0 + i32::cast_from(warp_col + jn * 8 + c as usize + e);
                        if at >= 0 && col < g.c_out {
                            let ch = grp * g.c_out + col;
                            let b = if has_bias {
                                select(si == 0i32, bias[usize::cast_from(ch)], 0.0f32)
                            } else {
                                f32::new(0.0)
                            };
                            dst[usize::cast_from(at + ch * g.sd_c)] = v[e] + b;
                        }
                    }
                }
            }
        }
    }
}

/// The dst address of each of a tile's `bm` rows (segment t / 16, −1 past the problem;
/// split partials `split_base` further) into `rows`, the cube's `threads` threads from
/// `unit` on, for the epilogue's stores.
#[cube]
#[allow(clippy::too_many_arguments)]
fn dst_rows(
    rows: &mut SharedMemory<i32>,
    g: &ConvGeo,
    unit: usize,
    seg0: i32,
    segs_per_row: i32,
    split_base: i32,
    #[comptime] threads: usize,
    #[comptime] bm: usize,
    #[comptime] seg: SegRows,
) {
    let (run, rows_per_seg) = comptime!((seg.run, seg.rows_per_seg));
    let total_rows = g.batch * g.dst_d * g.dst_h;
    #[unroll]
    for q in 0..bm.div_ceil(threads) {
        let t = unit + q * threads;
        if t < bm {
            let r = t % SEG;
            let (row, ow) = seg_place(
                seg0 + i32::cast_from(t / SEG),
                i32::cast_from(r / run),
                i32::cast_from(r % run),
                segs_per_row,
                rows_per_seg,
            );
            rows[t] = select(
                r < rows_per_seg * run && row < total_rows && ow < g.dst_w,
                split_base
                    + (row / (g.dst_h * g.dst_d)) * g.sd_n
                    + ((row / g.dst_h) % g.dst_d) * g.sd_d
                    + (row % g.dst_h) * g.sd_h
                    + ow * g.sd_w,
                -1i32,
            );
        }
    }
}

// ---- launch helpers ------------------------------------------------------------------------

/// Reduced channels per stage: 32 for bf16 when the channels come in whole 32s, else 16
/// (one bf16 MMA block, two TF32 ones). On an H200 a 32-deep bf16 stage (three slots)
/// halved the per-stage work (barrier wait, cursor, copy addressing) per MMA: forward /
/// backward-data 11 / 6 % faster at 96 channels, 6 / 6 % at 192; at 48 channels its
/// second half would be a third zeros (12 % slower), and 48-deep stages ran 7–22 %
/// slower everywhere. TF32 slots hold twice the bytes: 32-deep ran 8–55 % slower.
fn reduce_depth(c_red: usize, elem: usize) -> usize {
    if elem == 2 && c_red.is_multiple_of(32) {
        32
    } else {
        16
    }
}

/// Warp grid, accumulators per warp, tap grouping and pipeline depth of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PipeTile {
    pub warps_m: usize,
    pub warps_n: usize,
    /// Segments (16-row accumulator blocks) per warp.
    pub frags_m: usize,
    /// 8-column accumulator blocks per warp.
    pub frags_n: usize,
    /// Taps along w that share one halo (the kernel width when the w stride is 1).
    pub kw_inner: usize,
    /// Halo rows per segment.
    pub halo: usize,
    /// Positions per dst row within a segment: [`SEG`], or the whole row when a segment
    /// holds several.
    pub run: usize,
    /// Whole dst rows per segment (1: a segment is a run along one row).
    pub rows_per_seg: usize,
    /// Reduced channels per stage (a multiple of 16).
    pub bk: usize,
    /// Stage slots in shared memory.
    pub stages: usize,
    /// The cubes give every multiprocessor one ([`balanced`]): the taps are not split.
    pub one_per_sm: bool,
    /// A stage's halo along h ([`RowsHalo`]; `kh_inner` 1: per-segment halos).
    pub rows_halo: RowsHalo,
    /// The weights are read as they lie with their dst channels fastest ([`dst_fastest`]).
    pub w_dst_fastest: bool,
}

impl PipeTile {
    /// Segments (of [`SEG`] positions) per tile.
    fn segs(&self) -> usize {
        self.warps_m * self.frags_m
    }

    /// Segments along one dst row of `dst_w` positions (1 when a segment holds whole rows).
    fn segs_per_row(&self, dst_w: usize) -> usize {
        if self.rows_per_seg > 1 {
            1
        } else {
            dst_w.div_ceil(SEG)
        }
    }

    /// Segments covering `rows` dst rows of `dst_w` positions.
    fn segments(&self, rows: usize, dst_w: usize) -> usize {
        rows.div_ceil(self.rows_per_seg) * self.segs_per_row(dst_w)
    }

    /// Tiles along the positions and along the dst channels of one group, over `rows` dst
    /// rows of `dst_w` positions and `c_out` dst channels per group.
    fn tiles(&self, rows: usize, dst_w: usize, c_out: usize) -> (usize, usize) {
        let m_tiles = self.segments(rows, dst_w).div_ceil(self.segs());
        (m_tiles, c_out.div_ceil(self.bn()))
    }

    /// Cubes of one launch over `groups` groups of [`Self::tiles`] (before any tap split).
    fn cubes(&self, rows: usize, dst_w: usize, c_out: usize, groups: usize) -> usize {
        let (m_tiles, n_tiles) = self.tiles(rows, dst_w, c_out);
        m_tiles * n_tiles * groups
    }

    fn bn(&self) -> usize {
        self.warps_n * self.frags_n * 8
    }

    /// Shared memory of one stage slot, in bytes, for operands of `elem` bytes.
    fn stage_bytes(&self, elem: usize) -> usize {
        let rh = &self.rows_halo;
        let (a_rows, pad) = (rh.stage_rows(self.segs(), self.halo), row_pad(elem));
        let taps = rh.kh_inner * self.kw_inner;
        let w = weight_slot(taps, self.bn(), self.bk, pad, self.w_dst_fastest);
        (a_rows * (self.bk + pad) + w) * elem
    }

    /// Shared memory of one cube: the stage slots and the epilogue's row table.
    fn shared_bytes(&self, elem: usize) -> usize {
        self.stages * self.stage_bytes(elem) + self.segs() * SEG * 4
    }

    /// `self` in `slots` stage slots, fewer (down to two) while the cube passes
    /// `max_shared`; the caller checks that the result fits.
    fn in_slots_that_fit(self, slots: usize, elem: usize, max_shared: usize) -> PipeTile {
        let mut tile = PipeTile {
            stages: slots,
            ..self
        };
        while tile.stages > 2 && tile.shared_bytes(elem) > max_shared {
            tile.stages -= 1;
        }
        tile
    }
}

/// Tile for `c_out` dst channels per group and a kernel `k_w` wide with w stride `st_w`
/// and dilation `dil_w` over dst rows of `dst_w` positions, `bk` reduced channels per
/// stage, with `warps_m` warps along the segments (2 segments each): 1 warp for up to 64
/// dst channels, 2 warps of up to 48 for more (the same per-warp work and registers as the
/// narrow tile); [`stage_slots`] stage slots. Rows of at most 8 positions share a segment
/// (two of 8, three of 5, ...), so short rows do not leave most of each 16-row MMA block
/// empty.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pipe_tile(
    c_out: usize,
    k_w: usize,
    st_w: usize,
    dil_w: usize,
    dst_w: usize,
    bk: usize,
    elem: usize,
    warps_m: usize,
) -> PipeTile {
    let n8 = c_out.div_ceil(8);
    let (warps_n, frags_n) = if n8 <= 8 {
        (1, n8)
    } else {
        let tiles = n8.div_ceil(12);
        let per = n8.div_ceil(tiles);
        (2, (per + per % 2) / 2)
    };
    let frags_m = 2;
    let kw_inner = if st_w == 1 { k_w } else { 1 };
    let (run, rows_per_seg) = segment_rows(dst_w);
    let mut tile = PipeTile {
        warps_m,
        warps_n,
        frags_m,
        frags_n,
        kw_inner,
        halo: rows_per_seg * (run + (kw_inner - 1) * dil_w),
        run,
        rows_per_seg,
        bk,
        stages: 0, // stage_slots, once the slot size is known
        one_per_sm: false,
        rows_halo: RowsHalo::NONE,
        w_dst_fastest: false,
    };
    tile.stages = stage_slots(tile.stage_bytes(elem), elem);
    tile
}

/// Stage slots of `slot_bytes` each for operands of `elem` bytes. bf16: four, three where
/// a slot passes 24 KiB. f32: two, whose slots hold as many bytes in flight as four bf16
/// ones; on an H200 the freed shared memory let twice the cubes share an SM, and two slots
/// ran 12–25 % faster than three or four in the TF32 forward and backward-data passes of
/// the benchmark shapes and the 48-channel weight gradient (the other weight gradients:
/// within 1 %), while bf16 at two slots ran 3–13 % slower.
pub(crate) fn stage_slots(slot_bytes: usize, elem: usize) -> usize {
    if elem >= 4 {
        2
    } else if slot_bytes > 24 * 1024 {
        3
    } else {
        4
    }
}

/// (positions per row, rows) of a 16-position segment over dst rows of `dst_w`: whole rows
/// when at most 8 positions long (two of 8, three of 5, ...), else one run of 16.
pub(crate) fn segment_rows(dst_w: usize) -> (usize, usize) {
    if (1..=SEG / 2).contains(&dst_w) {
        (dst_w, SEG / dst_w)
    } else {
        (SEG, 1)
    }
}

/// The tile for `geo` on `device`: [`tile_for`] its shared memory, then [`balanced`] over
/// its multiprocessors, then any `SSM_CONV_TUNE` overrides ([`super::conv_tune`]).
fn tile_of(geo: &Geo, dtype: DType, device: &Device) -> PipeTile {
    let max_shared = device.max_shared_memory();
    let elem = dtype.size();
    let tune = conv_tune();
    let (c_out, k_w, st_w) = (
        geo.c_out as usize,
        geo.k[2] as usize,
        geo.stride[2] as usize,
    );
    let (dil_w, dst_w) = (geo.dil[2] as usize, geo.dst[2] as usize);
    let bk = tune
        .fwd_bk
        .unwrap_or_else(|| reduce_depth(geo.c_red as usize, elem));
    let tile = match tune.fwd_warps_m {
        Some(warps_m) => pipe_tile(c_out, k_w, st_w, dil_w, dst_w, bk, elem, warps_m),
        None => tile_for(c_out, k_w, st_w, dil_w, dst_w, bk, elem, max_shared),
    };
    let rows = (geo.batch * geo.dst[0] * geo.dst[1]) as usize;
    let groups = geo.groups as usize;
    let mut tile = balanced(
        tile,
        |t| t.cubes(rows, dst_w, c_out, groups),
        elem,
        device.multiprocessors(),
        max_shared,
    );
    // An overridden warp shape: its slots sized anew, its taps split by the rule.
    if tune.fwd_frags_m.is_some() || tune.fwd_warps_n.is_some() || tune.fwd_frags_n.is_some() {
        tile.frags_m = tune.fwd_frags_m.unwrap_or(tile.frags_m);
        tile.warps_n = tune.fwd_warps_n.unwrap_or(tile.warps_n);
        tile.frags_n = tune.fwd_frags_n.unwrap_or(tile.frags_n);
        tile.stages = stage_slots(tile.stage_bytes(elem), elem);
        tile.one_per_sm = false;
        check_warps("forward", tile.warps_m * tile.warps_n);
    }
    let h_taps = tune
        .fwd_h_taps
        .unwrap_or_else(|| rows_halo_taps(&tile, elem, geo.k[1] as usize));
    tile = with_rows_halo(tile, geo, h_taps, elem, max_shared);
    tile.rows_halo.tap_loop = tune
        .fwd_h_loop
        .map_or_else(|| h_tap_loop(&tile), |v| v == 1);
    if let Some(slots) = tune.fwd_slots {
        tile.stages = slots;
    }
    tile.w_dst_fastest = dst_fastest(&tile, geo, elem, max_shared);
    check_fits("forward", tile.shared_bytes(elem), max_shared);
    tile
}

/// Whether `tile` reads the weights of `geo` as they lie when their dst channels are
/// fastest (backward-data on PyTorch's `channels_last_3d` weights, `[C_out, taps, C_in]`
/// memory, whose dst channels are C_in), instead of `ops::conv` copying them reduced
/// channel fastest first (a transpose launch, ~4 µs of a 160 µs pass at 96 channels): bf16
/// (`ldmatrix.trans` moves 16-bit elements; TF32 fragments come from reduced-channel
/// rows), a tile that covers the weights whole (the copies go unguarded), a row of dst
/// channels of at most 32 copies (a producer warp's threads take it in one round), and
/// slots that still fit.
fn dst_fastest(tile: &PipeTile, geo: &Geo, elem: usize, max_shared: usize) -> bool {
    let rows_of_dst = PipeTile {
        w_dst_fastest: true,
        ..*tile
    };
    elem == 2
        && geo.sw[0] == 1
        && geo.sw[1] != 1
        && weights_whole(tile, geo)
        && tile.bn() / row_pad(elem) <= 32
        && rows_of_dst.shared_bytes(elem) <= max_shared
}

/// Taps along h a stage of `tile` holds, for a kernel `k_h` high (1: per-segment halos;
/// [`with_rows_halo`] then says whether the shape allows a rows halo). Measured on an H100
/// (2026-12-06, channels-last fwd / bwd-data µs, per-segment → rows halo): TF32 at 192
/// channels 227.0 / 213.7 → 192.3 / 187.6 and at 48 922.1 / 932.2 → 877.9 / 881.2; bf16 at
/// 192 101.4 / 95.0 → 96.2 / 92.2, but at 96 202.5 / 206.7 → 219.2 / 213.5 and at 48 within
/// 3 %. Its nine taps of weights a slot leave one cube an SM where two fitted: the
/// one-cube-an-SM tiles lose nothing, TF32 (half the MMAs a byte) gains anyway, bf16 tiles
/// of two cubes an SM lose (and so did bf16's four-segment tile at 96 channels, one cube an
/// SM: H100, 2026-12-07, fwd / bwd-data 154 / 164 → 196 / 197 µs). So: one-per-SM tiles
/// and TF32, except TF32's four-segment warps (96 channels), whose two slots with a rows
/// halo fit once 16-byte row padding shrank the f32 slots, and then ran slower (H100,
/// 2026-12-06, fwd / bwd-data 372.3 / 364.4 µs against 333.2 / 331.2 per-segment).
fn rows_halo_taps(tile: &PipeTile, elem: usize, k_h: usize) -> usize {
    if tile.one_per_sm || (elem == 4 && tile.frags_m < 4) {
        k_h
    } else {
        1
    }
}

/// Whether a rows halo's taps along h run in a loop rather than unrolled: in the
/// one-cube-an-SM tiles (192 channels), whose unrolled stage body took 255 registers and
/// spilled 104–128 B a thread (ptxas), while looped it takes 243–246 and none. H100
/// (2026-12-06, two runs, µs, unrolled → loop), channels-last / channels-first: TF32
/// forward 165.8 → 156.7 / 163.7 → 158.4, backward-data 162.7 → 155.9 / 162.3 → 157.4;
/// bf16 forward 91.5 → 88.6 / 87.6 → 82.7, backward-data 94.1 → 88.6 / 89.9 → 82.7. The
/// TF32 tiles at 48 channels (248 registers, no spills either way) ran 2–6 % slower in the
/// loop, so the others stay unrolled.
fn h_tap_loop(tile: &PipeTile) -> bool {
    tile.one_per_sm && tile.rows_halo.kh_inner > 1
}

/// `tile` with a [`RowsHalo`] of `h_taps` taps along h where `geo` and the tile allow one:
/// a kernel `h_taps` high (more than 1) at stride 1 and dilation 1 along h (and stride 1
/// elsewhere, which the backward-data gather needs), tiles of whole dst rows, and two
/// stage slots in `max_shared` bytes (up to the slots [`stage_slots`] gives the larger
/// slot). Elsewhere `tile` as it is.
fn with_rows_halo(
    tile: PipeTile,
    geo: &Geo,
    h_taps: usize,
    elem: usize,
    max_shared: usize,
) -> PipeTile {
    let (k_h, k_w) = (geo.k[1] as usize, geo.k[2] as usize);
    let (dst_h, dst_w) = (geo.dst[1] as usize, geo.dst[2] as usize);
    let segs_per_row = tile.segs_per_row(dst_w);
    let whole_rows = tile.rows_per_seg > 1 || tile.segs().is_multiple_of(segs_per_row);
    if h_taps < 2 || k_h != h_taps || geo.dil[1] != 1 || geo.stride != [1, 1, 1] || !whole_rows {
        return tile;
    }
    let tile_rows = if tile.rows_per_seg > 1 {
        tile.segs() * tile.rows_per_seg
    } else {
        tile.segs() / segs_per_row
    };
    let row_positions = if tile.rows_per_seg > 1 {
        tile.run
    } else {
        segs_per_row * SEG
    };
    let row_halo = row_positions + (k_w - 1) * geo.dil[2] as usize;
    let halo_tile = PipeTile {
        rows_halo: RowsHalo::new(k_h, tile_rows, dst_h, row_halo),
        ..tile
    };
    let slots = stage_slots(halo_tile.stage_bytes(elem), elem);
    let halo_tile = halo_tile.in_slots_that_fit(slots, elem, max_shared);
    if halo_tile.shared_bytes(elem) <= max_shared {
        halo_tile
    } else {
        tile
    }
}

/// Taller warps where they even out or thin the cubes, `cubes` counting a tile's cubes:
///
/// - Three segments a warp (two stage slots) when two-segment cubes would give some
///   multiprocessors one cube and others two (between one and two per multiprocessor) and
///   three-segment ones fit one each; such a tile is `one_per_sm` (its taps are not split).
///   The 192-channel benchmark shape went from 196 cubes to 132: on an H200 bf16 forward /
///   backward-data 14 / 15 % faster; on an H100 (2026-12-06) TF32 17 / 17 % faster than
///   two segments in two tap splits (265 → 219 µs, 260 → 216), while three segments in two
///   tap splits gained only 3 / 5 %.
/// - Four segments a warp where four-segment cubes still fill every multiprocessor twice
///   and fit it (TF32: two of them, in two slots; bf16: one, in up to four): each B
///   fragment serves four A fragments, 149 shared bytes per MMA instead of 213 in TF32.
///   TF32 at 96 channels (784 → 392 cubes): forward / backward-data 10 / 11 % faster on an
///   H100 (449 → 404 µs, 446 → 397); at 192 channels (98 cubes) 11 / 16 % slower; at 48
///   (two do not fit an SM) within 1 % in four (H100, 2026-12-07). bf16, with two producer
///   warps (H100, 2026-12-07, `scripts/sweeps/fm4-96.txt`, channels-last µs, two → four
///   segments): 96 channels 171 / 175 → 154 / 164 in three slots, 152.8 / 158.3 in four
///   (`after-fm4.txt`, `fm4-slots.txt`: twice; two slots 164 / 170; three segments 159 /
///   169), 48 channels 483 / 491 → 449 / 458 (three slots; four 456 / 451). Both hold one
///   cube an SM (ptxas: 167–168 registers a thread, 320 threads).
fn balanced(
    tile: PipeTile,
    cubes: impl Fn(&PipeTile) -> usize,
    elem: usize,
    multiprocessors: Option<usize>,
    max_shared: usize,
) -> PipeTile {
    let Some(sms) = multiprocessors else {
        return tile;
    };
    if tile.frags_m != 2 {
        return tile;
    }
    let three = PipeTile {
        frags_m: 3,
        stages: 2,
        ..tile
    };
    // Four-segment cubes an SM must hold: TF32 two, in two slots; bf16 one (its 167
    // registers a thread leave one cube an SM anyway), in as many of four slots as fit.
    let (four_per_sm, four_slots) = if elem == 4 { (2, 2) } else { (1, 4) };
    let four = PipeTile { frags_m: 4, ..tile }.in_slots_that_fit(four_slots, elem, max_shared);
    let now = cubes(&tile);
    let uneven = now > sms && now < 2 * sms;
    if uneven && cubes(&three) <= sms && three.shared_bytes(elem) <= max_shared {
        PipeTile {
            one_per_sm: true,
            ..three
        }
    } else if cubes(&four) >= 2 * sms && four_per_sm * four.shared_bytes(elem) <= max_shared {
        four
    } else {
        tile
    }
}

/// The tile on a device with `max_shared` bytes of shared memory per cube: up to 64 dst
/// channels, 8 warps along the segments (256 positions: the weights of a stage serve twice
/// the positions of a 4-warp tile, which cuts the L2 traffic that bounds these kernels)
/// where two such cubes still share one SM, else 4 (on an H200, one 8-warp TF32 cube per
/// SM ran slower than two 4-warp ones; with two TF32 slots both fit twice and ran within
/// 4 % of each other); wider tiles keep 4 × 2 warps.
#[allow(clippy::too_many_arguments)]
fn tile_for(
    c_out: usize,
    k_w: usize,
    st_w: usize,
    dil_w: usize,
    dst_w: usize,
    bk: usize,
    elem: usize,
    max_shared: usize,
) -> PipeTile {
    let tile = |warps_m| pipe_tile(c_out, k_w, st_w, dil_w, dst_w, bk, elem, warps_m);
    let eight = tile(8);
    if eight.warps_n == 1 && 2 * eight.shared_bytes(elem) <= max_shared {
        eight
    } else {
        tile(4)
    }
}

/// Whether [`gemm`] can run this problem: a device with `mma.sync` and `cp.async` for the
/// operand type, channels-last operands of one type whose channel runs and row starts are
/// 16-byte aligned (the copy granule; the weights' runs of reduced channels, or of dst
/// channels where [`dst_fastest`] allows), and stage slots that fit in shared memory.
///
/// `SSM_CONV_PIPELINE=0` turns this path off (the `wmma` kernel of [`super::conv_mma`] runs
/// instead), so benchmarks can compare the two in one process.
pub(crate) fn fits(src: &SsmTensor, w: &SsmTensor, geo: &Geo, channels_last: bool) -> bool {
    let dtype = src.dtype;
    if !usable(src, w, channels_last) {
        return false;
    }
    let granule = copy_granule(dtype) as i32;
    let max_shared = src.device.max_shared_memory();
    let tile = tile_of(geo, dtype, &src.device);
    // The weights' fastest axis first among the channels, as `rows_aligned` reads them.
    let [o, i, d, h, wd] = geo.sw;
    let sw = if tile.w_dst_fastest {
        [i, o, d, h, wd]
    } else {
        geo.sw
    };
    rows_aligned(src.offset, &geo.ss, dtype)
        && rows_aligned(w.offset, &sw, dtype)
        && geo.w_group % granule == 0
        && geo.c_red % granule == 0
        && tile.shared_bytes(dtype.size()) <= max_shared
}

/// Whether [`gemm`] runs this problem on weights `w` as they lie with their dst channels
/// fastest ([`dst_fastest`]); when not, the caller must hand it reduced-channel-fastest
/// weights.
pub(crate) fn reads_dst_fastest(
    src: &SsmTensor,
    w: &SsmTensor,
    geo: &Geo,
    channels_last: bool,
) -> bool {
    geo.sw[1] != 1 && fits(src, w, geo, channels_last)
}

/// Whether the pipelined kernels may take operands `a` and `b` at all: the path is on,
/// both are channels-last and of one type, and the device has `mma.sync` and `cp.async`
/// for it.
pub(crate) fn usable(a: &SsmTensor, b: &SsmTensor, channels_last: bool) -> bool {
    channels_last && a.dtype == b.dtype && runs_on(&a.device, a.dtype)
}

/// Whether the path is on and `device` has `mma.sync` and `cp.async` for `dtype`.
fn runs_on(device: &Device, dtype: DType) -> bool {
    pipeline_enabled() && device.has_pipelined_mma(dtype)
}

/// Whether the pipelined kernels take channel-fastest operands of `dtype` with `c_in` and
/// `c_out` channels per group on `device`: the device rule of [`usable`] and the channel
/// alignment of [`fits`] for compact operands. Channels-first passes that meet it run on
/// channel-fastest copies.
pub(crate) fn takes(device: &Device, dtype: DType, c_in: usize, c_out: usize) -> bool {
    let granule = copy_granule(dtype);
    runs_on(device, dtype) && c_in.is_multiple_of(granule) && c_out.is_multiple_of(granule)
}

/// Elements of `dtype` in one 16-byte `cp.async` copy.
pub(crate) fn copy_granule(dtype: DType) -> usize {
    16 / dtype.size()
}

/// Whether an operand at `offset` with `strides` (`[n, c, d, h, w]`, PyTorch order) can be
/// copied in 16-byte chunks of channels: channel stride 1, every other stride and the
/// offset multiples of [`copy_granule`].
pub(crate) fn rows_aligned(offset: usize, strides: &[i32; 5], dtype: DType) -> bool {
    let granule = copy_granule(dtype) as i32;
    strides[1] == 1
        && offset as i32 % granule == 0
        && [0, 2, 3, 4].iter().all(|&i| strides[i] % granule == 0)
}

/// False when `SSM_CONV_PIPELINE` is `0` (read once).
fn pipeline_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("SSM_CONV_PIPELINE").map_or(true, |v| v != "0"))
}

/// Cubes [`gemm`] aims for before it splits the taps: split only when the tiles alone leave
/// a large GPU short of cubes, since the partial sums cost a pass over `k_splits` f32
/// outputs, which the cheaper bf16 MMAs hide less. On an H200 the 192-channel shape (196
/// cubes) ran 5 % faster in two splits than unsplit in TF32, but 25 % slower in bf16; 784
/// cubes (96 channels) ran fastest unsplit in both.
fn split_target(dtype: DType) -> usize {
    if dtype == DType::F32 { 256 } else { 128 }
}

/// Warps of a cube that only copy ([`conv_pipe`]'s `producers`), with the stepped copies
/// ([`COPIES_DENSE`]). On an H100 (2026-12-07, `scripts/sweeps/producers-copies*.txt`, µs
/// channels-last forward) two beat none on every table shape (TF32 192 channels 158 -> 126,
/// 96: 331 -> 272; bf16 192 88 -> 72, 96 185 -> 171, 48 502 -> 483); the TF32 tile of at
/// most 48 dst channels, whose stages are mostly halo rows, wants four (727 -> 632 with
/// four; bf16 there ran 523 with four). One was slower than none (TF32 192: 177). The
/// TF32 tile of one cube an SM (192 channels) takes three (H100, 2026-12-07, 08:00 UTC,
/// `rule-neighbours.txt`: forward 126.9 -> 122.0, backward-data 132.8 -> 131.2; ptxas
/// spills 12 B a thread with two, none with three); bf16 at 96 channels ran slower with
/// three (171.7 -> 187.8).
fn producer_warps(tile: &PipeTile, dtype: DType) -> usize {
    match dtype {
        DType::F32 if tile.bn() <= 48 => 4,
        DType::F32 if tile.one_per_sm => 3,
        _ => 2,
    }
}

/// Whether `tile`'s stages cover the weights whole: every dst channel tile and every stage
/// of reduced channels full, so no weight copy reaches past them ([`COPIES_DENSE`]).
fn weights_whole(tile: &PipeTile, geo: &Geo) -> bool {
    (geo.c_out as usize).is_multiple_of(tile.bn()) && (geo.c_red as usize).is_multiple_of(tile.bk)
}

/// Forward or backward-data into a fresh f32 tensor of `dst_shape` (channels-last strides
/// `geo.sd`); the caller checked [`fits`], and `w` has its taps packed (tap `t` at
/// `t · sw_w`). Tap groups split across cubes when the tiles alone cannot fill the device.
pub(crate) fn gemm(
    src: &SsmTensor,
    w: &SsmTensor,
    bias: Option<&SsmTensor>,
    dst_shape: &[usize],
    geo: &Geo,
    transposed: bool,
) -> SsmTensor {
    let numel: usize = dst_shape.iter().product();
    if geo.dst_positions() == 0 || numel == 0 {
        return SsmTensor::empty(dst_shape, DType::F32, &src.device);
    }
    let tile = tile_of(geo, src.dtype, &src.device);
    let dst_w = geo.dst[2] as usize;
    let segs_per_row = tile.segs_per_row(dst_w);
    let rows = (geo.batch * geo.dst[0] * geo.dst[1]) as usize;
    let (m_tiles, n_tiles) = tile.tiles(rows, dst_w, geo.c_out as usize);
    let cubes = m_tiles * n_tiles * geo.groups as usize;
    let tap_groups =
        (geo.k[0] * geo.k[1] * geo.k[2]) as usize / (tile.kw_inner * tile.rows_halo.kh_inner);
    let k_splits = match conv_tune().fwd_split_target {
        Some(target) => tap_splits(cubes, tap_groups, target),
        None if tile.one_per_sm => 1,
        None => tap_splits(cubes, tap_groups, split_target(src.dtype)),
    };
    let out = SsmTensor::empty(&[k_splits * numel], DType::F32, &src.device);
    let (frag_ty, mk) = fragment(src.dtype);
    let vec = copy_granule(src.dtype);
    let bias_t = bias.unwrap_or(&out);
    let producers = conv_tune()
        .fwd_producers
        .unwrap_or_else(|| producer_warps(&tile, src.dtype));
    let copies = match conv_tune().fwd_copies {
        Some(0) => COPIES_DECODED,
        Some(1) => COPIES_STEPPED,
        Some(3) if weights_whole(&tile, geo) => COPIES_PLACED,
        // Without producer warps the stepped copies did not pay (H100, 96 channels: TF32
        // 331 -> 345 µs, bf16 185 -> 218).
        None if producers == 0 => COPIES_DECODED,
        _ if weights_whole(&tile, geo) => COPIES_DENSE,
        _ => COPIES_STEPPED,
    };
    let warps = tile.warps_m * tile.warps_n + producers;
    check_warps("forward", warps);
    dispatch!(src.device, c => {
        let (gx, gy) = position_grid(m_tiles, c.properties().hardware.max_cube_count.0);
        let count = CubeCount::Static(gx, gy, (n_tiles * geo.groups as usize * k_splits) as u32);
        let dim = CubeDim::new_2d(32, warps as u32);
        record_launch();
        unsafe {
            conv_pipe::launch_unchecked(
                c, count, dim,
                src.array_arg(src.buffer_len()),
                w.array_arg(w.buffer_len()),
                bias_t.array_arg(bias_t.buffer_len()),
                out.array_arg(out.numel()),
                src.offset as i32,
                w.offset as i32,
                geo.launch(),
                segs_per_row as i32,
                n_tiles as u32,
                k_splits as u32,
                numel as i32,
                tile.warps_m, tile.warps_n, tile.frags_m, tile.frags_n, tile.bk, mk, vec,
                tile.stages, producers, copies, tile.w_dst_fastest, tile.kw_inner, geo.dil[2] as usize, tile.halo, tile.run, tile.rows_per_seg, tile.rows_halo,
                bias.is_some(),
                transposed,
                geo.stride == [1, 1, 1],
                conv_probe(),
                [src.dtype.storage(), frag_ty],
            )
        }
    });
    sum_tap_splits(out, k_splits, dst_shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_split_only_where_the_measurements_say() {
        // The 192-channel benchmark shape (196 cubes, 9 tap groups): two splits in TF32,
        // none in bf16; 784 cubes (96 channels) need none.
        assert_eq!(tap_splits(196, 9, split_target(DType::F32)), 2);
        assert_eq!(tap_splits(196, 9, split_target(DType::BF16)), 1);
        assert_eq!(tap_splits(784, 9, split_target(DType::F32)), 1);
    }

    #[test]
    fn producer_warps_where_the_measurements_say() {
        // The table's tiles on an H100's 132 multiprocessors (sweeps of 2026-12-07): four
        // copying warps for the TF32 48-channel tile, three for the TF32 192-channel one
        // (one cube an SM), two elsewhere.
        let hopper = 227 * 1024;
        for (c, dst_w, rows) in [
            (48, 32, 2 * 112 * 112),
            (96, 16, 2 * 56 * 56),
            (192, 8, 2 * 28 * 28),
        ] {
            for dtype in [DType::F32, DType::BF16] {
                let elem = dtype.size();
                let t = tile_for(c, 3, 1, 1, dst_w, reduce_depth(c, elem), elem, hopper);
                let t = balanced(t, |t| t.cubes(rows, dst_w, c, 1), elem, Some(132), hopper);
                let want = match (c, dtype) {
                    (48, DType::F32) => 4,
                    (192, DType::F32) => 3,
                    _ => 2,
                };
                assert_eq!(producer_warps(&t, dtype), want, "{c} {dtype:?}: {t:?}");
            }
        }
    }

    #[test]
    fn dense_weight_copies_only_where_the_stages_cover_the_weights() {
        let t = tile_for(192, 3, 1, 1, 8, 16, 4, 227 * 1024);
        let geo = |c_out, c_red| Geo {
            c_out,
            c_red,
            ..Geo::default()
        };
        assert!(weights_whole(&t, &geo(192, 192)));
        // A partial channel tile, or a partial last stage of reduced channels.
        assert!(!weights_whole(&t, &geo(200, 192)));
        assert!(!weights_whole(&t, &geo(192, 40)));
    }

    #[test]
    fn weights_read_dst_fastest_only_in_bf16_whole_tiles() {
        let hopper = 227 * 1024;
        // Backward-data on channels-last weights `[C_out, 3, 3, 3, C_in]`: the dst channels
        // (C_in) have stride 1, the reduced ones (C_out) 27·C_in.
        let geo = |c_in: i32, c_out: i32, sw_o: i32, sw_i: i32| Geo {
            c_out: c_in,
            c_red: c_out,
            sw: [sw_o, sw_i, 9 * c_in, 3 * c_in, c_in],
            ..Geo::default()
        };
        for (c, dst_w, elem) in [(96, 16, 2), (192, 8, 2), (48, 32, 2), (96, 16, 4)] {
            let t = tile_for(c, 3, 1, 1, dst_w, reduce_depth(c, elem), elem, hopper);
            let g = geo(c as i32, c as i32, 1, 27 * c as i32);
            assert_eq!(dst_fastest(&t, &g, elem, hopper), elem == 2, "{c} {elem}");
            // Weights reduced-channel fastest stay as they are read now.
            let reduced = geo(c as i32, c as i32, 27 * c as i32, 1);
            assert!(!dst_fastest(&t, &reduced, elem, hopper), "{c} {elem}");
        }
        // A partial tile of dst channels or a partial stage of reduced ones: copied first.
        let t = tile_for(96, 3, 1, 1, 16, 32, 2, hopper);
        assert!(!dst_fastest(&t, &geo(88, 96, 1, 27 * 88), 2, hopper));
        assert!(!dst_fastest(&t, &geo(96, 80, 1, 27 * 96), 2, hopper));
        // Its slots are smaller where bn > bk: 96 dst channels in 32-deep stages.
        let mut rows = t;
        rows.w_dst_fastest = true;
        assert!(rows.stage_bytes(2) < t.stage_bytes(2));
    }

    #[test]
    fn tiles_cover_the_segments_and_the_channels() {
        for c_out in [8, 16, 24, 48, 64, 72, 96, 128, 192, 200] {
            for elem in [2, 4] {
                for warps_m in [4, 8] {
                    let t = pipe_tile(c_out, 3, 1, 1, 32, 16, elem, warps_m);
                    assert_eq!(t.warps_n, if c_out <= 64 { 1 } else { 2 }, "{t:?}");
                    assert_eq!(t.segs(), 2 * warps_m, "{t:?}");
                    let tiles = c_out.div_ceil(t.bn());
                    assert!(tiles * t.bn() >= c_out, "{c_out}: {t:?}");
                    assert!(tiles * t.bn() - c_out < 16 * tiles, "{c_out}: {t:?}");
                    assert!(t.bn() <= 96, "{t:?}");
                    // Fits the 227 KiB of a Hopper cube.
                    assert!(t.shared_bytes(elem) <= 227 * 1024, "{t:?}");
                }
            }
        }
        // The SRMA-Mamba GSC shapes on an H200 (227 KiB a cube): two cubes share an SM,
        // with 8 warps up to 64 channels, two stage slots for f32, three or four for bf16.
        for (c, dst_w) in [(48, 32), (96, 16), (192, 8)] {
            for elem in [2, 4] {
                let t = tile_for(c, 3, 1, 1, dst_w, 16, elem, 227 * 1024);
                assert!(2 * t.shared_bytes(elem) <= 227 * 1024, "{c} {elem}: {t:?}");
                assert_eq!(t.warps_m, if c <= 64 { 8 } else { 4 }, "{c} {elem}: {t:?}");
            }
        }
        assert_eq!(tile_for(96, 3, 1, 1, 16, 16, 4, 227 * 1024).stages, 2);
        // bf16 at 96 / 192 channels: 32-deep stages, three slots, two cubes an SM.
        for (c, dst_w) in [(96, 16), (192, 8)] {
            let t = tile_for(c, 3, 1, 1, dst_w, reduce_depth(c, 2), 2, 227 * 1024);
            assert_eq!((t.bk, t.stages, t.warps_m), (32, 3, 4), "{c}: {t:?}");
            assert!(2 * t.shared_bytes(2) <= 227 * 1024, "{c}: {t:?}");
        }
        assert_eq!(reduce_depth(48, 2), 16);
        assert_eq!(reduce_depth(96, 4), 16);
        assert_eq!(tile_for(96, 3, 1, 1, 16, 16, 2, 227 * 1024).stages, 4);
        // Stride 1 along w: the taps along w share a halo of 16 + (k_w − 1)·dil rows.
        let t = pipe_tile(48, 3, 1, 2, 32, 16, 2, 4);
        assert_eq!((t.kw_inner, t.halo), (3, 20));
        // Any other stride: one tap per group, one row per position.
        let t = pipe_tile(48, 7, 2, 1, 32, 16, 2, 4);
        assert_eq!((t.kw_inner, t.halo), (1, 16));
    }

    #[test]
    fn taller_warps_only_where_they_even_out_or_thin_the_cubes() {
        let hopper = 227 * 1024;
        // (channels, dst rows, dst_w) of the benchmark shapes.
        let tile = |c: usize, rows: usize, dst_w: usize, elem: usize, sms: Option<usize>| {
            let bk = reduce_depth(c, elem);
            let t = tile_for(c, 3, 1, 1, dst_w, bk, elem, hopper);
            let b = balanced(t, |t| t.cubes(rows, dst_w, c, 1), elem, sms, hopper);
            (
                b.frags_m,
                b.stages,
                b.cubes(rows, dst_w, c, 1),
                b.one_per_sm,
            )
        };
        // 192 channels on 132 multiprocessors: 196 cubes → 132, one each, in both types.
        assert_eq!(tile(192, 2 * 28 * 28, 8, 2, Some(132)), (3, 2, 132, true));
        assert_eq!(tile(192, 2 * 28 * 28, 8, 4, Some(132)), (3, 2, 132, true));
        // Unknown multiprocessors, or fewer multiprocessors than three-segment cubes (and
        // too few four-segment TF32 cubes to fill them twice): unchanged.
        assert_eq!(tile(192, 2 * 28 * 28, 8, 2, None), (2, 3, 196, false));
        assert_eq!(tile(192, 2 * 28 * 28, 8, 2, Some(114)), (2, 3, 196, false));
        assert_eq!(tile(192, 2 * 28 * 28, 8, 4, Some(114)), (2, 2, 196, false));
        // 96 channels: four-segment warps (784 → 392 cubes), TF32 in two slots (1.5 waves
        // of two an SM), bf16 in four (one an SM); too few for 200 multiprocessors.
        assert_eq!(tile(96, 2 * 56 * 56, 16, 4, Some(132)), (4, 2, 392, false));
        assert_eq!(tile(96, 2 * 56 * 56, 16, 2, Some(132)), (4, 4, 392, false));
        for elem in [2, 4] {
            assert_eq!(tile(96, 2 * 56 * 56, 16, elem, Some(200)).0, 2);
        }
        // 48 channels (8-warp tiles): bf16 in four segments (3136 → 1568 cubes); TF32
        // unchanged (two four-segment cubes would not fit one SM).
        assert_eq!(
            tile(48, 2 * 112 * 112, 32, 2, Some(132)),
            (4, 4, 1568, false)
        );
        assert_eq!(tile(48, 2 * 112 * 112, 32, 4, Some(132)).0, 2);
        // The GPU test's odd shape (48 channels, 59 × 58 rows of 30): bf16 in four
        // segments with a partial last cube.
        assert_eq!(tile(48, 2 * 59 * 58, 30, 2, Some(132)), (4, 4, 428, false));
        // The taps of a one-per-SM tile are not split; others as `split_target` says.
        let t = tile(192, 2 * 28 * 28, 8, 4, Some(132));
        assert!(t.3 && tap_splits(t.2, 9, split_target(DType::F32)) == 2);
    }

    #[test]
    fn padded_rows_put_an_ldmatrix_on_distinct_banks() {
        // The 8 rows of one `ldmatrix` matrix sit a pitch apart; they fall on distinct
        // 16-byte bank groups (8 to a 128-byte line) when the pitch is an odd number of
        // 16-byte units.
        for dtype in [DType::BF16, DType::F32] {
            let elem = dtype.size();
            // The kernels pad by `vec`, one copy's elements.
            assert_eq!(row_pad(elem), copy_granule(dtype));
            for bk in [16, 32, 48, 64] {
                let units = (bk + row_pad(elem)) * elem / 16;
                let groups: std::collections::BTreeSet<usize> =
                    (0..8).map(|r| r * units % 8).collect();
                assert_eq!(groups.len(), 8, "{elem}-byte rows of {bk}");
            }
        }
    }

    #[test]
    fn rows_halos_where_the_tile_allows() {
        let hopper = 227 * 1024;
        let geo = |c: i32, dst: [i32; 3]| Geo {
            dst,
            k: [3; 3],
            stride: [1; 3],
            dil: [1; 3],
            pad: [1; 3],
            c_red: c,
            c_out: c,
            groups: 1,
            batch: 2,
            ..Geo::default()
        };
        let bench = |c: usize, dst_w: usize, elem: usize, rows: usize| {
            let t = tile_for(c, 3, 1, 1, dst_w, reduce_depth(c, elem), elem, hopper);
            balanced(t, |t| t.cubes(rows, dst_w, c, 1), elem, Some(132), hopper)
        };
        // 192 channels: three-segment tiles of 12 segments, two rows of 8 each = 24 dst
        // rows, spanning at most two planes of 28: 28 halo rows of 8 + 2 positions (72
        // per-tap rows before); nine taps of weights a stage, two slots in both types.
        for elem in [2, 4] {
            let t = bench(192, 8, elem, 2 * 28 * 28);
            let h = with_rows_halo(t, &geo(192, [28, 28, 8]), 3, elem, hopper);
            let want = RowsHalo {
                kh_inner: 3,
                tile_rows: 24,
                planes: 2,
                row_halo: 10,
                tap_loop: false,
            };
            assert_eq!((h.rows_halo, h.stages), (want, 2), "{elem}");
            assert_eq!(h.rows_halo.ext_rows(), 28);
            assert!(h.shared_bytes(elem) <= hopper);
            // Off, or a kernel of another height, or a stride along h: unchanged.
            assert_eq!(
                with_rows_halo(t, &geo(192, [28, 28, 8]), 1, elem, hopper),
                t
            );
            assert_eq!(
                with_rows_halo(t, &geo(192, [28, 28, 8]), 5, elem, hopper),
                t
            );
            let strided = Geo {
                stride: [1, 2, 1],
                ..geo(192, [28, 28, 8])
            };
            assert_eq!(with_rows_halo(t, &strided, 3, elem, hopper), t);
            // Too little shared memory for two slots: unchanged.
            assert_eq!(
                with_rows_halo(t, &geo(192, [28, 28, 8]), 3, elem, 100 * 1024),
                t
            );
        }
        // 96 channels, bf16: 16 segments of one 16-position row = 16 dst rows, 20 halo
        // rows of 18 positions.
        let t = bench(96, 16, 2, 2 * 56 * 56);
        let h = with_rows_halo(t, &geo(96, [56, 56, 16]), 3, 2, hopper);
        assert_eq!((h.rows_halo.tile_rows, h.rows_halo.ext_rows()), (16, 20));
        assert_eq!(h.rows_halo.row_halo, 18);
        // Rows of two segments (32 positions): whole rows only.
        let t = bench(48, 32, 2, 2 * 112 * 112);
        let h = with_rows_halo(t, &geo(48, [112, 112, 32]), 3, 2, hopper);
        assert_eq!(h.rows_halo.tile_rows, t.segs() / 2);
        assert_eq!(h.rows_halo.row_halo, 34);
        // The rule on the benchmark shapes (132 SMs): 192 channels in both types, 48 in
        // TF32; not 96 in TF32 (its four-segment tile's two slots fit one, which ran
        // slower) nor bf16 at 48 and 96 (slower in two-segment tiles; at 96 in four-segment
        // ones too: H100, 2026-12-07, fwd / bwd-data 154 / 164 µs → 196 / 197). Its taps
        // along h loop at 192 channels only (the one-cube-an-SM tiles, which spilled
        // unrolled).
        for (c, dst, elem, want, looped) in [
            (192, [28, 28, 8], 2, 3, true),
            (192, [28, 28, 8], 4, 3, true),
            (96, [56, 56, 16], 4, 1, false),
            (96, [56, 56, 16], 2, 1, false),
            (48, [112, 112, 32], 4, 3, false),
            (48, [112, 112, 32], 2, 1, false),
        ] {
            let (dst_w, rows) = (dst[2] as usize, 2 * (dst[0] * dst[1]) as usize);
            let t = bench(c as usize, dst_w, elem, rows);
            let taps = rows_halo_taps(&t, elem, 3);
            let h = with_rows_halo(t, &geo(c, dst), taps, elem, hopper);
            assert_eq!(
                (h.rows_halo.kh_inner, h_tap_loop(&h)),
                (want, looped),
                "{c} channels, {elem}-byte operands"
            );
        }
        // The four-segment TF32 tile at 96 channels fits a rows halo in two slots (16-byte
        // row padding); the rule leaves it out.
        let t = bench(96, 16, 4, 2 * 56 * 56);
        assert_eq!(t.frags_m, 4);
        let h = with_rows_halo(t, &geo(96, [56, 56, 16]), 3, 4, hopper);
        assert_eq!(h.rows_halo.kh_inner, 3);
        // Planes of one row each: every row its own plane.
        let t = bench(192, 8, 2, 2 * 28);
        let h = with_rows_halo(t, &geo(192, [28, 1, 8]), 3, 2, hopper);
        if h.rows_halo.kh_inner > 1 {
            assert_eq!(h.rows_halo.planes, h.rows_halo.tile_rows);
        }
    }

    /// Every halo row's run start and offset + 1 (`rows_halo_place`), and the halo place of
    /// every row of every segment (`rows_halo_at`), as the kernel computes them.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    fn rows_halo_probe(
        place: &mut Array<u32>,
        at: &mut Array<u32>,
        h_first: i32,
        dst_h: i32,
        segs_per_row: i32,
        #[comptime] segs: usize,
        #[comptime] run: usize,
        #[comptime] rows_per_seg: usize,
        #[comptime] rh: RowsHalo,
    ) {
        let i = ABSOLUTE_POS;
        let ext = comptime!(rh.ext_rows());
        if i < ext {
            let (start, off) = rows_halo_place(i32::cast_from(i), h_first, dst_h, rh);
            place[2 * i] = u32::cast_from(start);
            place[2 * i + 1] = u32::cast_from(off + 1i32);
        }
        if i < segs * SEG {
            let (s, r) = (i32::cast_from(i / SEG), i % SEG);
            let a = rows_halo_at(s, r, h_first, dst_h, segs_per_row, run, rows_per_seg, rh);
            at[i] = u32::cast_from(a);
        }
    }

    /// The producer's halo rows (which src row each holds) against what the consumer reads
    /// (each position's row at each tap along h), on the test device: every tap of every
    /// position must find its src row (same plane, h + th) and its w place.
    #[test]
    fn rows_halo_rows_hold_what_every_tap_reads() {
        use crate::kernels::launch::elemwise_grid;
        use crate::testing::device;
        let d = device();
        // (dst_h, dst_w, segments a tile, first rows' h)
        for (dst_h, dst_w, segs, firsts) in [
            (28, 8, 12, vec![0, 5, 20, 27]),
            (56, 16, 16, vec![0, 40, 55]),
            (3, 32, 16, vec![0, 1, 2]),
            (1, 8, 4, vec![0]),
        ] {
            let (run, rows_per_seg) = segment_rows(dst_w);
            let segs_per_row = if rows_per_seg > 1 {
                1
            } else {
                dst_w.div_ceil(SEG)
            };
            let tile_rows = if rows_per_seg > 1 {
                segs * rows_per_seg
            } else {
                segs / segs_per_row
            };
            let positions = if rows_per_seg > 1 {
                run
            } else {
                segs_per_row * SEG
            };
            let rh = RowsHalo::new(3, tile_rows, dst_h, positions + 2);
            for h_first in firsts {
                let place_t = SsmTensor::from_slice(
                    &vec![u32::MAX; 2 * rh.ext_rows()],
                    &[2 * rh.ext_rows()],
                    &d,
                )
                .unwrap();
                let at_t =
                    SsmTensor::from_slice(&vec![u32::MAX; segs * SEG], &[segs * SEG], &d).unwrap();
                dispatch!(d, c => {
                    let (count, dim) = elemwise_grid(c, (segs * SEG).max(rh.ext_rows()));
                    unsafe {
                        rows_halo_probe::launch_unchecked(
                            c, count, dim,
                            place_t.array_arg(2 * rh.ext_rows()),
                            at_t.array_arg(segs * SEG),
                            h_first as i32, dst_h as i32, segs_per_row as i32,
                            segs, run, rows_per_seg, rh,
                        )
                    }
                });
                let place: Vec<u32> = place_t.to_vec().unwrap();
                let at: Vec<u32> = at_t.to_vec().unwrap();
                // Plane and h of the tile's row rho.
                let plane_h = |rho: usize| ((h_first + rho) / dst_h, (h_first + rho) % dst_h);
                let what = format!("dst_h {dst_h}, dst_w {dst_w}, first h {h_first}");
                for s in 0..segs {
                    for r in 0..rows_per_seg * run {
                        let (rho, w) = if rows_per_seg > 1 {
                            (s * rows_per_seg + r / run, r % run)
                        } else {
                            (s / segs_per_row, (s % segs_per_row) * SEG + r)
                        };
                        let a = at[s * SEG + r] as usize;
                        assert_eq!(a % rh.row_halo, w, "{what}: segment {s} row {r}");
                        for th in 0..3 {
                            let e = a / rh.row_halo + th;
                            assert!(
                                e < rh.ext_rows(),
                                "{what}: row {rho} tap {th}: halo row {e}"
                            );
                            let (start, off) = (place[2 * e] as usize, place[2 * e + 1]);
                            assert!(
                                off > 0,
                                "{what}: row {rho} tap {th}: halo row {e} holds none"
                            );
                            let (p_run, h_run) = plane_h(start);
                            let (p, h) = plane_h(rho);
                            assert_eq!(
                                (p_run, h_run + off as usize - 1),
                                (p, h + th),
                                "{what}: row {rho} tap {th}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn short_rows_share_a_segment() {
        // (dst_w, run, rows per segment, halo rows of a 3-wide kernel, segments of 10 rows)
        for (dst_w, run, rows, halo, segments) in [
            (1, 1, 16, 48, 1),
            (5, 5, 3, 21, 4),
            (8, 8, 2, 20, 5),
            (9, 16, 1, 18, 10),
            (16, 16, 1, 18, 10),
            (28, 16, 1, 18, 20),
        ] {
            let t = pipe_tile(48, 3, 1, 1, dst_w, 16, 2, 4);
            assert_eq!(
                (t.run, t.rows_per_seg, t.halo),
                (run, rows, halo),
                "w {dst_w}"
            );
            assert!(t.run * t.rows_per_seg <= SEG);
            assert_eq!(t.segments(10, dst_w), segments, "w {dst_w}");
        }
    }
}
