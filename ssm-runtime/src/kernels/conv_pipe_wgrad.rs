//! Pipelined tensor-core weight gradient for channels-last convolutions with a w stride of 1
//! (CUDA, sm_80+): `dw[co, c, tap] = Σ_pos dy[pos, co] · x[gather(pos, tap), c]`.
//!
//! The same machinery as [`super::conv_pipe`] (`cp.async` stages behind one `mbarrier` per
//! slot, `ldmatrix`/`mma.sync`, f32 accumulators in registers), on the weight-gradient GEMM:
//! rows = dst channels (`co`), columns = the `k_w` taps along w of one (td, th) × a chunk of
//! `cc` input channels, reduction over dst positions. A stage holds `ks` segments of 16
//! positions: runs along w of one dst row, or whole rows (of at most 8 positions, several
//! to a segment), and stages of short rows take `stage_rows` rows at once. Each segment
//! brings its `dy` rows and its x *halo* (16 + (k_w − 1)·dil_w rows, or row length +
//! (k_w − 1)·dil_w per row it holds) once for all taps along w, which read it shifted by
//! whole rows. Warp `(wm, u)` owns dst channels `wm·frags_m·16 ..` and tap `u`.
//!
//! Cubes split the dst rows into ranges and write partial sums
//! `[splits, c_out·groups, taps, c_red]` (channel fastest, so stores coalesce); [`wgrad`]
//! sums them and returns PyTorch's weight order.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::dtype::DType;
use crate::kernels::conv::{ConvGeo, Geo, row_splits};
use crate::kernels::conv_mma::fragment;
use crate::kernels::conv_pipe::{
    SEG, SlotBarriers, copy_chunk, copy_granule, ldmatrix_regs, mma_tile, push_b_pair,
    rows_aligned, seg_place, seg_row, segment_rows, stage_slots, tf32_pair, tf32_quad, usable,
};
use crate::kernels::conv_tune::{
    PROBE_NO_COPIES, PROBE_NO_MMA, check_fits, check_warps, conv_probe, conv_tune,
};
use crate::kernels::split_sum::split_sum;
use crate::tensor::Tensor as SsmTensor;

/// Shared-row padding in elements: 16 bytes for bf16 (conflict-free `ldmatrix`), 32 for
/// f32 (conflict-free transposed fragment reads).
const PAD: usize = 8;

/// What a cube's rows share: its tap (`td`, `th`), operand offsets, group and the end of
/// its row range.
#[derive(CubeType)]
struct TileRows {
    td: i32,
    th: i32,
    x_off: i32,
    dy_off: i32,
    grp: i32,
    row_end: i32,
}

/// Where the producer is: the stage's first dst row `row` (decoded into `n`, `od`, `oh`),
/// its segment group `sg` within the row, and that row's dy and x bases (`x_row` −1 when
/// the tile's (td, th) tap falls outside x).
#[derive(CubeType)]
struct RowState {
    row: i32,
    sg: i32,
    n: i32,
    od: i32,
    oh: i32,
    dy_row: i32,
    x_row: i32,
}

/// The comptime shape of a stage as the producer sees it: `threads` per cube, `bm` dst
/// channels, `cc` input channels, `ks` segments (each a run of 16 positions along w, or
/// `rows_per_seg` whole rows of `run` positions) with x halos of `halo` rows, in
/// `vec`-element copies; segment `s` lies in the stage's dst row `s / seg_per_row`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct StageShape {
    threads: usize,
    bm: usize,
    cc: usize,
    ks: usize,
    halo: usize,
    run: usize,
    rows_per_seg: usize,
    seg_per_row: usize,
    stage_rows: usize,
    vec: usize,
    probe: u32,
    /// Producer warps of their own: the copies then commit and arrive at the slot's full
    /// barrier (see [`conv_wgrad_pipe`]'s `producers`).
    specialized: bool,
    /// x sub-rows a stage holds for all taps along h ([`WgradTile::x_rows`]; 0: a halo a
    /// dst sub-row, copied with it).
    x_rows: usize,
}

impl StageShape {
    /// Whether the producer warps copy a stage sub-row by sub-row ([`RowCopies`]).
    fn row_warps(&self) -> bool {
        whole_row_copies(
            self.specialized,
            self.stage_rows,
            self.seg_per_row,
            self.rows_per_seg,
            self.run,
        )
    }

    /// dy copies of one sub-row (`run` positions × `bm / vec` chunks), x copies of its
    /// halo (`halo / rows_per_seg` rows × `cc / vec` chunks), sub-rows a producer warp
    /// takes, for [`RowCopies`] (1 each when the stage is not copied that way).
    fn row_copies(&self) -> (usize, usize, usize) {
        if self.row_warps() {
            (
                self.run * (self.bm / self.vec),
                self.halo / self.rows_per_seg * (self.cc / self.vec),
                self.stage_rows.div_ceil(self.threads / 32),
            )
        } else {
            (1, 1, 1)
        }
    }

    /// x sub-rows a producer warp takes when the stage's x rows serve all taps along h
    /// (at least 1, so that [`RowCopies`]' arrays are never empty).
    fn x_sub_rows(&self) -> usize {
        self.x_rows.div_ceil(self.threads / 32).max(1)
    }

    /// x rows (positions) of a stage slot.
    fn b_rows(&self) -> usize {
        slot_x_rows(self.ks, self.halo, self.rows_per_seg, self.x_rows)
    }
}

/// Whether producer warps copy a stage sub-row by sub-row ([`RowCopies`]): producer warps
/// of their own, stages of whole dst rows, one segment a row group, and segments with no
/// unused positions (rows of 1, 2, 4, 8 or more than 8 positions). Cubes that take all
/// taps along h need it ([`h_taps_fit`]): only these copies bring their x rows.
fn whole_row_copies(
    specialized: bool,
    stage_rows: usize,
    seg_per_row: usize,
    rows_per_seg: usize,
    run: usize,
) -> bool {
    specialized && stage_rows > 1 && seg_per_row == 1 && rows_per_seg * run == SEG
}

/// x rows (positions) of a stage slot: `ks` segment halos of `halo`, or, where the x rows
/// serve all taps along h, `x_rows` sub-rows of `halo / rows_per_seg`.
fn slot_x_rows(ks: usize, halo: usize, rows_per_seg: usize, x_rows: usize) -> usize {
    if x_rows > 0 {
        x_rows * (halo / rows_per_seg)
    } else {
        ks * halo
    }
}

/// A producer warp's plan for copying whole sub-rows ([`StageShape::row_warps`]): warp
/// `pw` takes the stage's sub-rows `pw, pw + P, ..` (P producer warps), whose dy and x row
/// bases it finds once a sub-row (warp-uniform); its lanes take the sub-row's copies
/// `lane, lane + 32, ..`, whose offsets, fixed for the kernel, are decoded here once:
/// source offsets past the row base (−1: the copy is zero-filled: past the row, the
/// channels or x) and places in the slot past the sub-row's first. Decoded per copy and
/// per stage instead, with a loop stepping the sub-row across h and d, a copy took ~47
/// instructions (ptxas, bf16 192 channels).
#[derive(CubeType)]
struct RowCopies {
    dy_src: Array<i32>,
    dy_at: Array<u32>,
    x_src: Array<i32>,
    x_at: Array<u32>,
    /// The sub-rows this warp takes (≥ `stage_rows`: none) and where each starts in the
    /// dy and x slots.
    sub: Array<i32>,
    sub_a: Array<u32>,
    sub_b: Array<u32>,
    /// With x rows shared by the taps along h: the x sub-rows this warp takes (≥ `x_rows`:
    /// none) and where each starts in the x slot.
    sub_x: Array<i32>,
    sub_bx: Array<u32>,
}

/// [`RowCopies`] for copying thread `tid` (`tid / 32` its producer warp).
#[cube]
fn row_copies(g: &ConvGeo, tid: usize, m0: i32, c0: i32, #[comptime] sh: StageShape) -> RowCopies {
    let (n_dy, n_x, n_sub) = comptime!(sh.row_copies());
    let (bm, cc, vec, run, halo) = comptime!((sh.bm, sh.cc, sh.vec, sh.run, sh.halo));
    let rows_per_seg = comptime!(sh.rows_per_seg);
    let (a_chunks, b_chunks) = comptime!((bm / vec, cc / vec));
    let sub_halo = comptime!(halo / rows_per_seg);
    let (a_pitch, b_pitch) = comptime!((bm + PAD, cc + PAD));
    let mut rc = RowCopies {
        dy_src: Array::<i32>::new(comptime!(n_dy.div_ceil(32))),
        dy_at: Array::<u32>::new(comptime!(n_dy.div_ceil(32))),
        x_src: Array::<i32>::new(comptime!(n_x.div_ceil(32))),
        x_at: Array::<u32>::new(comptime!(n_x.div_ceil(32))),
        sub: Array::<i32>::new(n_sub),
        sub_a: Array::<u32>::new(n_sub),
        sub_b: Array::<u32>::new(n_sub),
        sub_x: Array::<i32>::new(comptime!(sh.x_sub_rows())),
        sub_bx: Array::<u32>::new(comptime!(sh.x_sub_rows())),
    };
    if comptime!(sh.row_warps()) {
        let lane = tid % 32;
        let pw = tid / 32;
        #[unroll]
        for i in 0..n_dy.div_ceil(32) {
            let e = lane + i * 32;
            let (w, ch) = (e / a_chunks, e % a_chunks);
            let co = m0 + i32::cast_from(ch * vec);
            let ok = e < n_dy && i32::cast_from(w) < g.dst_w && co < g.c_out;
            rc.dy_src[i] = select(ok, i32::cast_from(w) * g.sd_w + co * g.sd_c, -1i32);
            rc.dy_at[i] = (w * a_pitch + ch * vec) as u32;
        }
        #[unroll]
        for i in 0..n_x.div_ceil(32) {
            let e = lane + i * 32;
            let (hw, ch) = (e / b_chunks, e % b_chunks);
            let sw = i32::cast_from(hw) - g.pad_w;
            let c = c0 + i32::cast_from(ch * vec);
            let ok = e < n_x && sw >= 0 && sw < g.src_w && c < g.c_red;
            rc.x_src[i] = select(ok, sw * g.ss_w + c * g.ss_c, -1i32);
            rc.x_at[i] = (hw * b_pitch + ch * vec) as u32;
        }
        #[unroll]
        for t in 0..n_sub {
            // Sub-row j: row j % rows_per_seg of segment j / rows_per_seg.
            let j = pw + t * comptime!(sh.threads / 32);
            let (s, r) = (j / rows_per_seg, j % rows_per_seg);
            rc.sub[t] = i32::cast_from(j);
            rc.sub_a[t] = ((s * SEG + r * run) * a_pitch) as u32;
            rc.sub_b[t] = ((s * halo + r * sub_halo) * b_pitch) as u32;
        }
        if comptime!(sh.x_rows > 0) {
            #[unroll]
            for t in 0..comptime!(sh.x_sub_rows()) {
                let j = pw + t * comptime!(sh.threads / 32);
                rc.sub_x[t] = i32::cast_from(j);
                rc.sub_bx[t] = (j * sub_halo * b_pitch) as u32;
            }
        }
    }
    rc
}

/// The copies of one stage sub-row by sub-row ([`RowCopies`]); only a partial last round
/// of a sub-row's copies is guarded (every lane of the others has one).
#[cube]
#[allow(clippy::too_many_arguments)]
fn issue_stage_rows<I: Float>(
    x: &Array<I>,
    dy: &Array<I>,
    a_s: &mut SharedMemory<I>,
    b_s: &mut SharedMemory<I>,
    g: &ConvGeo,
    prod: &Producer,
    #[comptime] slot: usize,
    #[comptime] sh: StageShape,
) {
    let (n_dy, _, n_sub) = comptime!(sh.row_copies());
    let (ks, stage_rows, x_rows) = comptime!((sh.ks, sh.stage_rows, sh.x_rows));
    let (a_pitch, b_pitch) = comptime!((sh.bm + PAD, sh.cc + PAD));
    let a_slot = comptime!((slot * ks * SEG * a_pitch) as u32);
    let b_slot = comptime!((slot * sh.b_rows() * b_pitch) as u32);
    let lane = (prod.tid % 32) as u32;
    let rc = &prod.rows;
    let st = &prod.st;
    #[unroll]
    for t in 0..n_sub {
        let j = rc.sub[t];
        if j < i32::cast_from(stage_rows) {
            let (n, od, oh) = rows_on(g, st.n, st.od, st.oh, j);
            let in_range = st.row + j < prod.tile.row_end;
            let dy_row = dy_base(g, &prod.tile, n, od, oh);
            let a_at = a_slot + rc.sub_a[t];
            copy_sub_row::<I>(
                dy, a_s, &rc.dy_src, &rc.dy_at, dy_row, in_range, a_at, lane, n_dy, sh.vec,
            );
            if comptime!(x_rows == 0) {
                let x_row = select(in_range, x_base(g, &prod.tile, n, od, oh), -1i32);
                let b_at = b_slot + rc.sub_b[t];
                copy_x_sub_row::<I>(x, b_s, rc, x_row, b_at, lane, sh);
            }
        }
    }
    if comptime!(x_rows > 0) {
        // The stage's x rows for all taps along h: sub-row j is x row oh − pad_h + j of
        // the stage's (n, od) plane (the stage never leaves it: [`h_taps_fit`]).
        #[unroll]
        for t in 0..comptime!(sh.x_sub_rows()) {
            let j = rc.sub_x[t];
            if j < i32::cast_from(x_rows) {
                let x_row = x_row_at(g, &prod.tile, st.n, st.od, st.oh - g.pad_h + j);
                let b_at = b_slot + rc.sub_bx[t];
                copy_x_sub_row::<I>(x, b_s, rc, x_row, b_at, lane, sh);
            }
        }
    }
}

/// [`copy_sub_row`] of one x sub-row (base `x_row`, −1: zero-filled) to the slot at `b_at`.
#[cube]
fn copy_x_sub_row<I: Float>(
    x: &Array<I>,
    b_s: &mut SharedMemory<I>,
    rc: &RowCopies,
    x_row: i32,
    b_at: u32,
    lane: u32,
    #[comptime] sh: StageShape,
) {
    let (_, n_x, _) = comptime!(sh.row_copies());
    copy_sub_row::<I>(
        x,
        b_s,
        &rc.x_src,
        &rc.x_at,
        x_row,
        x_row >= 0,
        b_at,
        lane,
        n_x,
        sh.vec,
    );
}

/// A lane's copies of one sub-row of `n` chunks: from `row` plus the lane's source offsets
/// `srcs` (−1: past the row) to the slot at `at` plus its places `ats`; chunks are
/// zero-filled where `row_ok` fails or the offset is −1. Only a partial last round of the
/// sub-row's chunks is guarded (every lane of the others has one).
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_sub_row<I: Float>(
    src: &Array<I>,
    slot: &mut SharedMemory<I>,
    srcs: &Array<i32>,
    ats: &Array<u32>,
    row: i32,
    row_ok: bool,
    at: u32,
    lane: u32,
    #[comptime] n: usize,
    #[comptime] vec: usize,
) {
    #[unroll]
    for i in 0..n.div_ceil(32) {
        if comptime!((i + 1) * 32 <= n) || lane + comptime!((i * 32) as u32) < comptime!(n as u32) {
            let off = srcs[i];
            copy_chunk::<I>(
                src,
                row + off,
                row_ok && off >= 0,
                slot,
                (at + ats[i]) as usize,
                vec,
            );
        }
    }
}

/// One thread's producer: the cube's rows and where the next stage starts, plus what stays
/// fixed (segment groups per row `spr`, thread index `tid`, first dst channel `m0` and
/// input channel `c0`).
#[derive(CubeType)]
struct Producer {
    tile: TileRows,
    st: RowState,
    spr: i32,
    tid: usize,
    m0: i32,
    c0: i32,
    rows: RowCopies,
}

/// dy base (channel 0 of the group) of dst row (n, od, oh).
#[cube]
fn dy_base(g: &ConvGeo, t: &TileRows, n: i32, od: i32, oh: i32) -> i32 {
    t.dy_off + n * g.sd_n + od * g.sd_d + oh * g.sd_h + t.grp * g.c_out * g.sd_c
}

/// x base (w = 0, channel 0 of the group) that dst row (n, od, oh) reads at the tile's
/// tap, −1 outside x.
#[cube]
fn x_base(g: &ConvGeo, t: &TileRows, n: i32, od: i32, oh: i32) -> i32 {
    x_row_at(g, t, n, od, oh * g.st_h - g.pad_h + t.th * g.dil_h)
}

/// x base (w = 0, channel 0 of the group) of x row `sh` read by dst plane (n, od) at the
/// tile's tap along d, −1 outside x.
#[cube]
fn x_row_at(g: &ConvGeo, t: &TileRows, n: i32, od: i32, sh: i32) -> i32 {
    let sd = od * g.st_d - g.pad_d + t.td * g.dil_d;
    let ok = sd >= 0 && sd < g.src_d && sh >= 0 && sh < g.src_h;
    select(
        ok,
        t.x_off + n * g.ss_n + sd * g.ss_d + sh * g.ss_h + t.grp * g.c_red * g.ss_c,
        -1i32,
    )
}

/// (n, od, oh) of the dst row `k ≥ 0` rows past (n, od, oh), without divisions.
#[cube]
fn rows_on(g: &ConvGeo, n: i32, od: i32, oh: i32, k: i32) -> (i32, i32, i32) {
    let mut rn = n;
    let mut rd = od;
    let mut rh = oh + k;
    while rh >= g.dst_h {
        rh -= g.dst_h;
        rd += 1i32;
        if rd >= g.dst_d {
            rd = 0i32;
            rn += 1i32;
        }
    }
    (rn, rd, rh)
}

/// Put `st` at the start of dst row `row` = (n, od, oh).
#[cube]
fn place(st: &mut RowState, g: &ConvGeo, t: &TileRows, row: i32, n: i32, od: i32, oh: i32) {
    st.row = row;
    st.sg = 0i32;
    st.n = n;
    st.od = od;
    st.oh = oh;
    st.dy_row = dy_base(g, t, n, od, oh);
    st.x_row = x_base(g, t, n, od, oh);
}

/// Move `st` to the start of dst row `row` (decoded with divisions: once per cube).
#[cube]
fn set_row(st: &mut RowState, g: &ConvGeo, t: &TileRows, row: i32) {
    let n = row / (g.dst_h * g.dst_d);
    let od = (row / g.dst_h) % g.dst_d;
    let oh = row % g.dst_h;
    place(st, g, t, row, n, od, oh);
}

/// Move `st` `k` rows on, to the start of that row.
#[cube]
fn next_rows(st: &mut RowState, g: &ConvGeo, t: &TileRows, k: i32) {
    let (n, od, oh) = rows_on(g, st.n, st.od, st.oh, k);
    let row = st.row + k;
    place(st, g, t, row, n, od, oh);
}

#[cube]
/// Issue the `cp.async` copies of producer `prod`'s next stage into slot `slot`: `ks·16` dy rows (dst
/// channels `m0 .. m0 + bm`) and `ks` x halos (channels `c0 .. c0 + cc`). The stage starts
/// at segment group `st.sg` of row `st.row`; its segment `s` lies in row `st.row + s /
/// seg_per_row` (or, with `rows_per_seg` > 1, holds rows `st.row + s·rows_per_seg ..`
/// whole: sub-row `sub` at positions `sub·run ..` and halo rows `sub·(halo /
/// rows_per_seg) ..`). Chunks outside the problem or past the cube's rows are
/// zero-filled.
#[allow(clippy::too_many_arguments)]
fn issue_stage<I: Float>(
    x: &Array<I>,
    dy: &Array<I>,
    a_s: &mut SharedMemory<I>,
    b_s: &mut SharedMemory<I>,
    g: &ConvGeo,
    prod: &Producer,
    #[comptime] slot: usize,
    #[comptime] sh: StageShape,
) {
    let (threads, bm, cc, ks) = comptime!((sh.threads, sh.bm, sh.cc, sh.ks));
    let (halo, run, rows_per_seg, vec) = comptime!((sh.halo, sh.run, sh.rows_per_seg, sh.vec));
    let (seg_per_row, stage_rows) = comptime!((sh.seg_per_row, sh.stage_rows));
    let (tid, m0, c0) = (prod.tid, prod.m0, prod.c0);
    let a_pitch = comptime!(bm + PAD);
    let b_pitch = comptime!(cc + PAD);
    let sub_halo = comptime!(halo / rows_per_seg);
    let ow0 = prod.st.sg * i32::cast_from(ks * SEG);
    // dy: position p of the stage, dst channels m0 + ch·vec ...
    let a_chunks = comptime!(bm / vec);
    let a_total = comptime!(ks * SEG * a_chunks);
    #[unroll]
    for r in 0..a_total.div_ceil(threads) {
        let e = tid + r * threads;
        if e < a_total {
            let p = e / a_chunks;
            let ch = e % a_chunks;
            let co = m0 + i32::cast_from(ch * vec);
            // The dst row (`sub` rows past the stage's first) and w of position p.
            let mut ow = ow0 + i32::cast_from(p);
            let mut row_ok = true;
            let mut dy_row = prod.st.dy_row;
            if comptime!(stage_rows > 1) {
                let (s, q) = (p / SEG, p % SEG);
                let (sub, w) = seg_place(
                    i32::cast_from(s),
                    i32::cast_from(q / run),
                    i32::cast_from(q % run),
                    i32::cast_from(seg_per_row),
                    rows_per_seg,
                );
                ow = w;
                let (n, od, oh) = rows_on(g, prod.st.n, prod.st.od, prod.st.oh, sub);
                row_ok = q < rows_per_seg * run && prod.st.row + sub < prod.tile.row_end;
                dy_row = dy_base(g, &prod.tile, n, od, oh);
            }
            let ok = row_ok && ow < g.dst_w && co < g.c_out;
            let at = slot * (ks * SEG * a_pitch) + p * a_pitch + ch * vec;
            copy_chunk::<I>(dy, dy_row + ow * g.sd_w + co * g.sd_c, ok, a_s, at, vec);
        }
    }
    // x halos: row hr of segment s reads x at w = (the segment's first position) − pad_w
    // + hr (per sub-row of `sub_halo` rows when a segment holds several dst rows).
    let b_chunks = comptime!(cc / vec);
    let b_total = comptime!(ks * halo * b_chunks);
    #[unroll]
    for r in 0..b_total.div_ceil(threads) {
        let e = tid + r * threads;
        if e < b_total {
            let hrow = e / b_chunks;
            let ch = e % b_chunks;
            let s = hrow / halo;
            let hr = hrow % halo;
            let mut sw = ow0 + i32::cast_from(s * SEG + hr) - g.pad_w;
            let mut x_row = prod.st.x_row;
            if comptime!(stage_rows > 1) {
                let (sub, w) = seg_place(
                    i32::cast_from(s),
                    i32::cast_from(hr / sub_halo),
                    i32::cast_from(hr % sub_halo),
                    i32::cast_from(seg_per_row),
                    rows_per_seg,
                );
                sw = w - g.pad_w;
                let (n, od, oh) = rows_on(g, prod.st.n, prod.st.od, prod.st.oh, sub);
                x_row = select(
                    prod.st.row + sub < prod.tile.row_end,
                    x_base(g, &prod.tile, n, od, oh),
                    -1i32,
                );
            }
            let c = c0 + i32::cast_from(ch * vec);
            let ok = x_row >= 0 && sw >= 0 && sw < g.src_w && c < g.c_red;
            let at = slot * (ks * halo * b_pitch) + hrow * b_pitch + ch * vec;
            copy_chunk::<I>(x, x_row + sw * g.ss_w + c * g.ss_c, ok, b_s, at, vec);
        }
    }
}

#[cube]
impl Producer {
    /// [`issue_stage`] the next stage into slot `slot` (unless `SSM_CONV_PROBE=no_copies`
    /// leaves the copies out, a timing bound), commit the copies to the slot's barrier and
    /// move `st` on to the next stage (`spr` segment groups per row, `stage_rows` rows a
    /// stage).
    #[allow(clippy::too_many_arguments)]
    fn produce<I: Float>(
        &mut self,
        x: &Array<I>,
        dy: &Array<I>,
        a_s: &mut SharedMemory<I>,
        b_s: &mut SharedMemory<I>,
        g: &ConvGeo,
        bars: &SlotBarriers,
        #[comptime] slot: usize,
        #[comptime] sh: StageShape,
    ) {
        if comptime!(sh.probe != PROBE_NO_COPIES) {
            if comptime!(sh.row_warps()) {
                issue_stage_rows::<I>(x, dy, a_s, b_s, g, self, slot, sh);
            } else {
                issue_stage::<I>(x, dy, a_s, b_s, g, self, slot, sh);
            }
        }
        let stage_rows = comptime!(sh.stage_rows);
        bars.commit(slot);
        if comptime!(sh.specialized) {
            bars.arrive(slot);
        }
        self.st.sg += 1;
        if self.st.sg == self.spr {
            next_rows(&mut self.st, g, &self.tile, i32::cast_from(stage_rows));
        }
    }
}

/// Pipelined weight gradient (see the module docs). Grid: x = (td, th) taps × channel
/// chunks, y = dst-channel tiles, z = row splits × groups.
///
/// `producers` > 0 specializes the warps as [`super::conv_pipe`]'s forward does: the
/// tile's warps only load fragments and multiply, `producers` more warps only copy, behind
/// a full barrier (producer arrivals and copies) and an empty one (consumer arrivals) a
/// slot.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_wgrad_pipe<I: Float, M: Float>(
    x: &Array<I>,
    dy: &Array<I>,
    out: &mut Array<f32>,
    x_off: i32,
    dy_off: i32,
    g: ConvGeo,
    c_tiles: i32,
    splits: i32,
    rows_per_split: i32,
    #[comptime] warps_m: usize,
    #[comptime] frags_m: usize,
    #[comptime] kw: usize,
    #[comptime] cc: usize,
    #[comptime] ks: usize,
    #[comptime] halo: usize,
    #[comptime] run: usize,
    #[comptime] rows_per_seg: usize,
    #[comptime] seg_per_row: usize,
    #[comptime] stage_rows: usize,
    #[comptime] mk: usize,
    #[comptime] vec: usize,
    #[comptime] stages: usize,
    #[comptime] producers: usize,
    #[comptime] h_taps: usize,
    #[comptime] x_rows: usize,
    #[comptime] probe: u32,
    #[define(I, M)] _d: [StorageType; 2],
) {
    // Consumer warps first, then any producer warps; `threads` are the ones that copy.
    let consumers = comptime!(32 * warps_m * kw * h_taps);
    let specialized = comptime!(producers > 0);
    let cube_threads = comptime!(consumers + producers * 32);
    let threads = comptime!(if specialized {
        producers * 32
    } else {
        consumers
    });
    let bm = comptime!(warps_m * frags_m * 16);
    let frags_n = comptime!(cc / 8);
    let a_pitch = comptime!(bm + PAD);
    let b_pitch = comptime!(cc + PAD);
    let sub_halo = comptime!(halo / rows_per_seg);
    let a_stage = comptime!(ks * SEG * a_pitch);
    let b_stage = comptime!(slot_x_rows(ks, halo, rows_per_seg, x_rows) * b_pitch);

    let unit = UNIT_POS as usize;
    // The copying thread's index (for a consumer of a specialized cube: unused).
    let tid = if comptime!(specialized) {
        (unit + comptime!(producers * 32)) % cube_threads
    } else {
        unit
    };
    let lane = UNIT_POS_X;
    let warp = UNIT_POS_Y as usize;
    let wm = warp % warps_m;
    let u = (warp / warps_m) % kw;
    // The warp's tap along h past the tile's (0 unless the cube takes all of them).
    let tw = warp / comptime!(warps_m * kw);
    let xi = i32::cast_from(CUBE_POS_X);
    let tap_dh = xi / c_tiles;
    let c0 = (xi % c_tiles) * i32::cast_from(cc);
    let mut td = tap_dh / g.k_h;
    let mut th = tap_dh % g.k_h;
    if comptime!(h_taps > 1) {
        td = tap_dh;
        th = 0i32;
    }
    let m0 = i32::cast_from(CUBE_POS_Y) * i32::cast_from(bm);
    let zi = i32::cast_from(CUBE_POS_Z);
    let split = zi % splits;
    let grp = zi / splits;
    let rows = g.batch * g.dst_d * g.dst_h;
    let row_start = split * rows_per_split;
    let row_end = select(
        row_start + rows_per_split < rows,
        row_start + rows_per_split,
        rows,
    );
    // Segment groups per row (1 when a stage holds whole rows), rows per stage.
    let spr = (g.dst_w + i32::cast_from(ks * SEG) - 1) / i32::cast_from(ks * SEG);
    let srows = i32::cast_from(stage_rows);
    let n_stages = select(
        row_end > row_start,
        (row_end - row_start + srows - 1) / srows * spr,
        0i32,
    );
    let tr = TileRows {
        td,
        th,
        x_off,
        dy_off,
        grp,
        row_end,
    };

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

    let def = cmma::MmaDefinition::<M, M, f32>::new(16usize, 8usize, mk);
    let size!(NA) = def.vector_size(cmma::MatrixIdent::A);
    let size!(NB) = def.vector_size(cmma::MatrixIdent::B);
    let size!(NC) = def.vector_size(cmma::MatrixIdent::Accumulator);
    let va = def.vectors_per_lane(cmma::MatrixIdent::A);
    let vb = def.vectors_per_lane(cmma::MatrixIdent::B);
    let vc = def.vectors_per_lane(cmma::MatrixIdent::Accumulator);
    let sc = def.vector_size(cmma::MatrixIdent::Accumulator);
    // TF32 fragments come from the k-major tiles (A = co × pos from dy rows, B = pos × c
    // from x rows) in vector loads rather than one 32-bit load per element: which dst or
    // input channel a fragment row or column stands for is ours to choose, so lane (g, t)'s
    // rows g and g + 8 of all `frags_m` A fragments are 2·frags_m adjacent dst channels,
    // and its column g of the B fragments adjacent input channels (four fragments a load,
    // two for a remainder), each brought by one 64- or 128-bit load per k row
    // ([`tf32_row`], [`tf32_column`]; the epilogue writes through the same maps). The
    // padded pitches keep these loads free of bank conflicts. Their f32 bits pass
    // unconverted, as in `conv_pipe` (the tensor cores truncate them to TF32).
    // x rows are read through `seg_row`: position k of a segment sits at halo row
    // seg_row(k) (k itself unless the segment holds several dst rows).
    let blocks = comptime!(SEG / mk);
    let (gq, tq) = ((lane / 4) as usize, (lane % 4) as usize);
    // This lane's A elements at k = t (k = t + 4 four rows on).
    let a_lane = tq * a_pitch + 2 * frags_m * gq;
    // Its x rows (times the pitch) at k = t and t + 4 of each 8-deep block.
    let mut b_rows = Array::<usize>::new(comptime!(2 * blocks));
    if comptime!(mk == 8) {
        #[unroll]
        for kk in 0..blocks {
            #[unroll]
            for e in 0..2usize {
                let k = kk * mk + e * 4 + tq;
                b_rows[kk * 2 + e] = seg_row(k, run, rows_per_seg, sub_halo) * b_pitch;
            }
        }
    }
    // bf16 (one 16-deep block per segment): the x row this lane points `ldmatrix` at.
    let b_lane = seg_row(
        (lane % 8 + ((lane / 8) % 2) * 8) as usize,
        run,
        rows_per_seg,
        sub_halo,
    ) * b_pitch
        + (lane / 16) as usize * 8;
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

    let sh = comptime!(StageShape {
        threads,
        bm,
        cc,
        ks,
        halo,
        run,
        rows_per_seg,
        seg_per_row,
        stage_rows,
        vec,
        probe,
        specialized,
        x_rows,
    });
    let mut prod = Producer {
        tile: tr,
        st: RowState {
            row: 0i32,
            sg: 0i32,
            n: 0i32,
            od: 0i32,
            oh: 0i32,
            dy_row: 0i32,
            x_row: 0i32,
        },
        spr,
        tid,
        m0,
        c0,
        rows: row_copies(&g, tid, m0, c0, sh),
    };
    set_row(&mut prod.st, &g, &prod.tile, row_start);
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
                        prod.produce::<I>(x, dy, &mut a_s, &mut b_s, &g, &bars, j, sh);
                    }
                }
                k += i32::cast_from(stages);
                phase = 1u32 - phase;
            }
        }
        terminate!();
    }
    if comptime!(!specialized) {
        #[unroll]
        for j in 0..stages - 1 {
            if i32::cast_from(j) < n_stages {
                prod.produce::<I>(x, dy, &mut a_s, &mut b_s, &g, &bars, j, sh);
            }
        }
    }

    let m_warp = wm * frags_m * 16;
    // x rows past a segment's first: tap u along w, and tap tw along h (`tw·dil_h` sub-rows
    // on, where a stage's x rows serve all taps along h).
    let shift = usize::cast_from(g.dil_w) * u + tw * usize::cast_from(g.dil_h) * sub_halo;
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
                    bars.wait(j);
                    let fill = comptime!((j + stages - 1) % stages);
                    if s + i32::cast_from(stages - 1) < n_stages {
                        prod.produce::<I>(x, dy, &mut a_s, &mut b_s, &g, &bars, fill, sh);
                    }
                }

                #[unroll]
                for sg in 0..comptime!(if probe == PROBE_NO_MMA { 0 } else { ks }) {
                    #[unroll]
                    for kk in 0..SEG / mk {
                        // Positions sg·16 + kk·mk .. of the stage; x rows shifted by tap u.
                        let a_k = j * a_stage + (sg * SEG + kk * mk) * a_pitch + m_warp;
                        let b_k = j * b_stage + (sg * halo + shift) * b_pitch;
                        let mut a_frags = Sequence::<Array<Vector<M, NA>>>::new();
                        let mut b_frags = Sequence::<Array<Vector<M, NB>>>::new();
                        if comptime!(mk == 16) {
                            // ldmatrix.x4.trans on k-major tiles: lanes give k rows
                            // (l % 8 + 8·(l / 16) for A, l % 8 + 8·((l / 8) % 2) for B) at
                            // column offsets 8·((l / 8) % 2) (A) and 8·(l / 16) (B).
                            let ka = (lane % 8 + (lane / 16) * 8) as usize;
                            let ma = ((lane / 8) % 2) as usize * 8;
                            #[unroll]
                            for i in 0..frags_m {
                                let at = a_k + ka * a_pitch + i * 16 + ma;
                                a_frags.push(ldmatrix_regs::<I, M, NA>(
                                    &a_s,
                                    at,
                                    cmma::MatrixIdent::A,
                                    4usize,
                                    true,
                                ));
                            }
                            #[unroll]
                            for jp in 0..frags_n / 2 {
                                let at = b_k + b_lane + jp * 16;
                                push_b_pair::<I, M, NB>(&b_s, at, true, &mut b_frags);
                            }
                        } else {
                            // a0, a1 = rows g, g + 8 at k = t; a2, a3 the same at t + 4.
                            let a_t = a_k + a_lane;
                            if comptime!(frags_m == 2) {
                                let lo = tf32_quad::<I, M>(&a_s, a_t);
                                let hi = tf32_quad::<I, M>(&a_s, a_t + 4 * a_pitch);
                                #[unroll]
                                for i in 0..2usize {
                                    let mut f = Array::<Vector<M, NA>>::new(va);
                                    f[0] = Vector::new(lo[2 * i]);
                                    f[1] = Vector::new(lo[2 * i + 1]);
                                    f[2] = Vector::new(hi[2 * i]);
                                    f[3] = Vector::new(hi[2 * i + 1]);
                                    a_frags.push(f);
                                }
                            } else {
                                #[unroll]
                                for i in 0..frags_m {
                                    let lo = tf32_pair::<I, M>(&a_s, a_t + 2 * i);
                                    let hi = tf32_pair::<I, M>(&a_s, a_t + 4 * a_pitch + 2 * i);
                                    let mut f = Array::<Vector<M, NA>>::new(va);
                                    f[0] = Vector::new(lo[0]);
                                    f[1] = Vector::new(lo[1]);
                                    f[2] = Vector::new(hi[0]);
                                    f[3] = Vector::new(hi[1]);
                                    a_frags.push(f);
                                }
                            }
                            // b0, b1 = (k = t, column g), (t + 4, g).
                            let b_t = b_k + b_rows[kk * 2] + 4 * gq;
                            let b_t4 = b_k + b_rows[kk * 2 + 1] + 4 * gq;
                            #[unroll]
                            for q in 0..frags_n / 4 {
                                let lo = tf32_quad::<I, M>(&b_s, b_t + q * 32);
                                let hi = tf32_quad::<I, M>(&b_s, b_t4 + q * 32);
                                #[unroll]
                                for j in 0..4usize {
                                    let mut f = Array::<Vector<M, NB>>::new(vb);
                                    f[0] = Vector::new(lo[j]);
                                    f[1] = Vector::new(hi[j]);
                                    b_frags.push(f);
                                }
                            }
                            if comptime!(frags_n % 4 == 2) {
                                // The last two fragments: pairs at 2·g past the quads.
                                let tail = comptime!(frags_n / 4 * 32);
                                let lo = tf32_pair::<I, M>(&b_s, b_t - 2 * gq + tail);
                                let hi = tf32_pair::<I, M>(&b_s, b_t4 - 2 * gq + tail);
                                #[unroll]
                                for j in 0..2usize {
                                    let mut f = Array::<Vector<M, NB>>::new(vb);
                                    f[0] = Vector::new(lo[j]);
                                    f[1] = Vector::new(hi[j]);
                                    b_frags.push(f);
                                }
                            }
                        }
                        mma_tile::<M, NA, NB, NC>(
                            &def, &a_frags, &b_frags, &mut acc, frags_m, frags_n,
                        );
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

    // out[split, grp·c_out + co, tap, c].
    let taps = g.k_d * g.k_h * g.k_w;
    let tap = (td * g.k_h + th + i32::cast_from(tw)) * g.k_w + i32::cast_from(u);
    let co_total = g.c_out * g.groups;
    // TF32: under the column map of the fragment loads (`tf32_column`), column n of the four
    // fragments 4q .. 4q + 3 is four adjacent input channels, so each lane writes them in
    // one 16-byte store (two of them, n = 2t and 2t + 1, fill a 32-byte sector); the
    // channels come in fours (TF32 rows are 16-byte aligned: c_red % 4 == 0), so a quad lies
    // wholly inside or outside the problem. The fragments past the quads (a last pair in
    // TF32, all of them in bf16: two adjacent channels a lane) write element by element.
    let quads = comptime!(if mk == 8 { frags_n / 4 } else { 0 });
    #[unroll]
    for h in 0..vc {
        let (r, c) = def.position_of_nth(lane, (h * sc) as u32, cmma::MatrixIdent::Accumulator);
        let (r, c) = (r as usize, c as usize);
        #[unroll]
        for i in 0..frags_m {
            let co = m0 + i32::cast_from(m_warp + tf32_row(i, r, frags_m, mk));
            let row_base = ((split * co_total + grp * g.c_out + co) * taps + tap) * g.c_red;
            #[unroll]
            for e in 0..sc {
                #[unroll]
                for q in 0..quads {
                    let ch = c0 + i32::cast_from(q * 32 + 4 * (c + e));
                    if co < g.c_out && ch < g.c_red {
                        let mut v = Vector::<f32, Const<4>>::empty();
                        #[unroll]
                        for j in 0..4usize {
                            let a = acc.index(i * frags_n + q * 4 + j)[h];
                            v[j] = a[e];
                        }
                        let at = usize::cast_from(row_base + ch);
                        let mut quad = out
                            .slice_mut(at, at + 4)
                            .into_vectorized()
                            .with_vector_size::<Const<4>>();
                        quad[0] = v;
                    }
                }
                #[unroll]
                for jn in comptime!(quads * 4)..frags_n {
                    let a = acc.index(i * frags_n + jn)[h];
                    let ch = c0 + i32::cast_from(tf32_column(jn, c + e, frags_n, mk));
                    if co < g.c_out && ch < g.c_red {
                        out[usize::cast_from(row_base + ch)] = a[e];
                    }
                }
            }
        }
    }
}

/// The dst channel (past the warp's first) of row `r` of A fragment `i`: `i·16 + r` for
/// bf16; for TF32 (`mk` = 8) rows g and g + 8 of every fragment are adjacent, lane g's
/// 2·frags_m channels in a row (see the fragment loads).
#[cube]
fn tf32_row(
    #[comptime] i: usize,
    r: usize,
    #[comptime] frags_m: usize,
    #[comptime] mk: usize,
) -> usize {
    let mut at = i * 16 + r;
    if comptime!(mk == 8) {
        at = 2 * frags_m * (r % 8) + 2 * i + r / 8;
    }
    at
}

/// The input channel (past the tile's first) of column `n` of B fragment `jn`: `jn·8 + n`
/// for bf16; for TF32 (`mk` = 8) column n of four fragments at a time is four adjacent
/// channels (a last pair of fragments: two).
#[cube]
fn tf32_column(
    #[comptime] jn: usize,
    n: usize,
    #[comptime] frags_n: usize,
    #[comptime] mk: usize,
) -> usize {
    let quads = comptime!(frags_n / 4 * 4);
    let mut at = jn * 8 + n;
    if comptime!(mk == 8) {
        if comptime!(jn < quads) {
            at = (jn / 4) * 32 + 4 * n + jn % 4;
        } else {
            at = quads * 8 + 2 * n + (jn - quads);
        }
    }
    at
}

// ---- launch helpers ------------------------------------------------------------------------

/// Warps, accumulators, channel chunk, stage shape and pipeline depth of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WgradTile {
    /// Warps along the dst channels (each `frags_m` 16-row blocks); one warp per tap along w.
    pub warps_m: usize,
    pub frags_m: usize,
    /// Taps along w (warps along the columns).
    pub kw: usize,
    /// Input channels per tile (16·k, 8-column accumulator blocks `cc / 8` per warp).
    pub cc: usize,
    /// Segments of 16 positions per stage.
    pub ks: usize,
    /// x rows per segment halo.
    pub halo: usize,
    /// Positions per dst row within a segment (16, or the row length when a segment holds
    /// `rows_per_seg` > 1 whole rows).
    pub run: usize,
    pub rows_per_seg: usize,
    /// Segments of a stage per dst row (`ks` when a stage is a run within one row).
    pub seg_per_row: usize,
    /// Whole dst rows per stage (1: a stage is a run within one row).
    pub stage_rows: usize,
    pub stages: usize,
    /// Warps a cube that only copy (0: every warp copies and multiplies).
    pub producers: usize,
    /// Taps along h a cube takes: 1, or `k_h`, whose x rows a stage then holds once
    /// ([`h_taps_stage_rows`], [`h_taps_fit`]).
    pub h_taps: usize,
    /// x sub-rows (of `halo / rows_per_seg` positions) a stage holds when `h_taps > 1`:
    /// `stage_rows + (h_taps − 1)·dil_h`; 0 otherwise.
    pub x_rows: usize,
}

impl WgradTile {
    fn bm(&self) -> usize {
        self.warps_m * self.frags_m * 16
    }

    /// Warps a cube that multiply: `warps_m` along the dst channels × one per tap along w
    /// and along h.
    fn warps(&self) -> usize {
        self.warps_m * self.kw * self.h_taps
    }

    /// x rows (positions) of a stage: a halo a segment, or the `x_rows` sub-rows all taps
    /// along h share.
    fn b_rows(&self) -> usize {
        slot_x_rows(self.ks, self.halo, self.rows_per_seg, self.x_rows)
    }

    /// Warps a cube in all: those that multiply and any that only copy.
    fn cube_warps(&self) -> usize {
        self.warps() + self.producers
    }

    /// Shared memory of one stage slot, in bytes, for operands of `elem` bytes.
    fn stage_bytes(&self, elem: usize) -> usize {
        (self.ks * SEG * (self.bm() + PAD) + self.b_rows() * (self.cc + PAD)) * elem
    }
}

/// Segments per stage for dst rows of `dst_w` positions and operands of `elem` bytes.
/// Rows of at most 16 make whole-row stages of four segments (bf16; TF32 only for rows of
/// at most 8); longer rows runs of two along one row. H200, channels-last µs (one / two /
/// four segments): bf16 at 96 channels (rows of 16) 316 / 258 / 231, at 192 (rows of 8)
/// 215 / 186 / 183; TF32 at 192 487 / 453 / 431, but at 96 492 / 779 / 731 (not
/// understood; kept at one); at 48 (rows of 32) four segments, two rows a stage, ran 80 %
/// slower than two in both types (fewer cubes fit an SM).
fn stage_segments(dst_w: usize, elem: usize) -> usize {
    if dst_w > SEG {
        2
    } else if elem == 2 || dst_w <= SEG / 2 {
        4
    } else {
        1
    }
}

/// Tile for `c_out` dst and `c_red` input channels per group, a kernel `k_w` wide with
/// dilation `dil_w`, dst rows `dst_w` long: up to 96 dst channels (two warps of 48) for
/// bf16, up to 192 (four warps of 48) for TF32, up to 64 input channels per chunk, `ks`
/// segments per stage. Short rows make whole-row stages: `ks` is then rounded down to
/// whole rows (rows of ≤ 8 share a segment, as in [`super::conv_pipe`]); longer rows make
/// stages of `ks` segments along one row.
///
/// A tile's x is read once per dst-channel tile, so fewer, taller tiles read it fewer
/// times. At 192 channels on an H100 (2026-12-06, channels-last / channels-first µs), one
/// tile of four warps against two of two: TF32 355.3 / 359.0 → 274.2 / 283.7, but bf16
/// 147.1 / 150.9 → 181.3 / 186.9 (its two 6-warp cubes an SM become one of 12 warps, at
/// the same warps an SM; not understood).
pub(crate) fn wgrad_tile(
    c_out: usize,
    c_red: usize,
    k_w: usize,
    dil_w: usize,
    dst_w: usize,
    elem: usize,
    ks: usize,
) -> WgradTile {
    // 16-row blocks: tiles of at most six over one or two warps; TF32 tiles of up to
    // twelve where they split into warps of exactly three.
    let mf = c_out.div_ceil(16);
    let per = mf.div_ceil(mf.div_ceil(6));
    let tall = mf.div_ceil(mf.div_ceil(12));
    let (warps_m, frags_m) = if elem == 4 && tall.is_multiple_of(3) {
        (tall / 3, 3)
    } else if per <= 3 {
        (1, per)
    } else {
        (2, per.div_ceil(2))
    };
    let cf = c_red.div_ceil(16);
    let cc = 16 * cf.div_ceil(cf.div_ceil(4));
    let (run, rows_per_seg) = segment_rows(dst_w);
    let segs_row = if rows_per_seg > 1 {
        1
    } else {
        dst_w.div_ceil(SEG)
    };
    let ks = ks.max(1);
    let (ks, seg_per_row, stage_rows) = if ks >= segs_row {
        let rows = ks / segs_row;
        (rows * segs_row, segs_row, rows * rows_per_seg)
    } else {
        (ks, ks, 1)
    };
    let mut tile = WgradTile {
        warps_m,
        frags_m,
        kw: k_w,
        cc,
        ks,
        halo: rows_per_seg * (run + (k_w - 1) * dil_w),
        run,
        rows_per_seg,
        seg_per_row,
        stage_rows,
        stages: 0, // stage_slots, once the slot size is known
        producers: 0,
        h_taps: 1,
        x_rows: 0,
    };
    tile.stages = stage_slots(tile.stage_bytes(elem), elem);
    tile
}

/// The tile for `geo`: [`wgrad_tile`] with [`stage_segments`] (where the cubes take all
/// taps along h, [`h_taps_stage_rows`] and one warp along the dst channels instead), then
/// any `SSM_CONV_TUNE` overrides ([`super::conv_tune`]) checked against `max_shared`.
fn tile_of(geo: &Geo, dtype: DType, max_shared: usize) -> WgradTile {
    let (elem, dst_w) = (dtype.size(), geo.dst[2] as usize);
    let tune = conv_tune();
    let h_rows = h_taps_stage_rows(geo, elem);
    let mut tile = wgrad_tile(
        geo.c_out as usize,
        geo.c_red as usize,
        geo.k[2] as usize,
        geo.dil[2] as usize,
        dst_w,
        elem,
        tune.wgrad_ks
            .unwrap_or_else(|| h_rows.unwrap_or_else(|| stage_segments(dst_w, elem))),
    );
    if h_rows.is_some() {
        // One warp along the dst channels (up to three 16-row blocks): the taps' warps
        // fill the cube.
        let mf = (geo.c_out as usize).div_ceil(16);
        tile.warps_m = 1;
        tile.frags_m = mf.div_ceil(mf.div_ceil(3));
    }
    if let Some(cc) = tune.wgrad_cc {
        tile.cc = cc;
    }
    if let Some(warps_m) = tune.wgrad_warps_m {
        // The dst channels' 16-row blocks spread over `warps_m` warps.
        tile.warps_m = warps_m;
        tile.frags_m = (geo.c_out as usize).div_ceil(16).div_ceil(warps_m);
        check_warps("weight-gradient", tile.warps());
    }
    if let Some(frags_m) = tune.wgrad_frags_m {
        // Fewer accumulators a warp: more warps fit an SM's registers, each A fragment
        // serves fewer products.
        tile.frags_m = frags_m;
    }
    tile.producers = tune
        .wgrad_producers
        .unwrap_or_else(|| producer_warps(&tile, elem));
    // `wgrad.h_taps` applies where the tile allows, as `fwd.h_taps` does.
    let k_h = geo.k[1] as usize;
    let h = match tune.wgrad_h_taps {
        Some(h) if h_taps_fit(geo, &tile, h) => h,
        None if h_rows.is_some() && h_taps_fit(geo, &tile, k_h) => k_h,
        _ => 1,
    };
    if h > 1 {
        tile.h_taps = h;
        tile.x_rows = tile.stage_rows + (h - 1) * geo.dil[1] as usize;
    }
    // The slots, once the slot size is final (nothing above reads them).
    tile.stages = tune
        .wgrad_slots
        .unwrap_or_else(|| stage_slots(tile.stage_bytes(elem), elem));
    check_warps("weight-gradient", tile.cube_warps());
    check_fits(
        "weight-gradient",
        tile.stages * tile.stage_bytes(elem),
        max_shared,
    );
    tile
}

/// Where the rule's cubes take all taps along h (where [`h_taps_fit`] agrees), the dst
/// rows of a stage: bf16 rows of exactly 16 positions (a segment each), at least two taps
/// along h and at most nine along (h, w) (nine consumer warps of up to 48 × 64 and two
/// producers fit an SM's registers), h stride and dilation 1 (a dilation along h has
/// only run through `wgrad.h_taps`, not on a GPU); stages of the most rows up to 8 that
/// divide the dst height. On an H100 (2026-12-07, `scripts/sweeps/wgrad-h-taps.txt`,
/// channels-last µs): 96 channels (rows of 16) 164.2 → 144.3 in 8-row stages (151.4 in
/// 4-row ones); at 192 channels (rows of 8, two a segment) 124.4 → 146.6 in 14-row stages
/// (171.3 in 4-row ones), so rows of 8 keep a cube a tap along h (not understood: the
/// cubes read half as much from L2 there).
fn h_taps_stage_rows(geo: &Geo, elem: usize) -> Option<usize> {
    let (k_h, k_w) = (geo.k[1] as usize, geo.k[2] as usize);
    let (dst_h, dst_w) = (geo.dst[1] as usize, geo.dst[2] as usize);
    let unit_h = geo.stride[1] == 1 && geo.dil[1] == 1;
    if elem != 2 || dst_w != SEG || k_h < 2 || k_h * k_w > 9 || !unit_h {
        return None;
    }
    (2..=8).rev().find(|&rows| dst_h.is_multiple_of(rows))
}

/// Whether a cube of `tile` can take all `h` taps along h, sharing a stage's x rows: `h`
/// is the kernel height, the h stride is 1 (consecutive dst rows read consecutive x
/// rows), the stage is copied whole rows a producer warp ([`StageShape::row_warps`]), and
/// its rows divide the dst height, so that no stage leaves its (n, d) plane (row splits
/// start at stages).
fn h_taps_fit(geo: &Geo, tile: &WgradTile, h: usize) -> bool {
    h == geo.k[1] as usize
        && geo.stride[1] == 1
        && whole_row_copies(
            tile.producers > 0,
            tile.stage_rows,
            tile.seg_per_row,
            tile.rows_per_seg,
            tile.run,
        )
        && (geo.dst[1] as usize).is_multiple_of(tile.stage_rows)
}

/// Warps of a cube that only copy ([`conv_wgrad_pipe`]'s `producers`). On an H100
/// (2026-12-07, 08:00 UTC, `scripts/sweeps/wgrad-producers.txt`, channels-last µs, none ->
/// two) two paid in every bf16 tile (192 channels 144.4 -> 122.8, 96: 197.9 -> 164.3, 48: 393.7
/// -> 380.5; four: 122.5 and 183.6) and in the TF32 tile of two warps along the dst
/// channels (96 channels: 442.1 -> 423.8), not in the other TF32 ones: the four-warp tile
/// (192 channels), held to 128 registers beside them, spills (275.1 -> 371.0; 316.7 with
/// four), and the one-warp tile (48 channels) ran 848.5 -> 903.0.
fn producer_warps(tile: &WgradTile, elem: usize) -> usize {
    if elem == 2 || tile.warps_m == 2 { 2 } else { 0 }
}

/// At most this many cubes (`tiles × row splits`): on an H200 the six benchmark shapes ran
/// 0–10 % faster with 512 than with 1024 (fewer f32 partials to write and sum), and 256
/// left too few cubes at 48/96 channels (before the splits were fitted to waves). Where the
/// backend does not report its multiprocessors (Vulkan), the splits aim for this count.
const MOST_CUBES: usize = 512;

/// (row splits, dst rows a split) for about `target` cubes of `tiles` tiles: [`row_splits`],
/// with splits starting at stage boundaries (the last stage's rows past the end are masked).
fn split_rows(geo: &Geo, tile: &WgradTile, tiles: usize, target: usize) -> (usize, usize) {
    let (splits, rows_per_split) = row_splits(geo, tile.ks * SEG, tiles, target);
    let rows = (geo.batch * geo.dst[0] * geo.dst[1]) as usize;
    let rows_per_split = rows_per_split.next_multiple_of(tile.stage_rows);
    (
        splits.min(rows.div_ceil(rows_per_split)).max(1),
        rows_per_split,
    )
}

/// Cubes of `tile` one multiprocessor runs at once: the least its registers, shared memory
/// (`max_shared` a cube; one SM holds that plus 1 KiB, and each cube reserves 1 KiB) and
/// threads allow. Registers a lane are estimated as 72 + the f32 accumulators (bf16 with 96
/// accumulators: 167 in `ncu`, two cubes an SM), except TF32 with more than 72, whose
/// vector fragment loads took 204 (`ncu`, 2026-12-06, before the 16-byte partial-sum
/// stores; 255 with spills under scalar loads): one cube an SM either way; the 96- and
/// 48-channel tiles (72
/// accumulators) come out at two and four cubes an SM, as their times' pattern over the
/// split counts shows (H100 / H200, 2026-12-06). The limits are sm_80 / sm_90's (64 Ki
/// registers and 2048 threads an SM); on sm_86 / sm_89 (1536 threads) the count can come
/// out one high, which only moves the split count.
fn cubes_per_sm(tile: &WgradTile, elem: usize, max_shared: usize) -> usize {
    let threads = 32 * tile.cube_warps();
    let accumulators = tile.frags_m * tile.cc / 8 * 4;
    let regs = if elem == 4 && accumulators > 72 {
        204
    } else {
        72 + accumulators
    };
    // Registers go to warps in blocks of 256 (8 a lane).
    let by_regs = 65536 / (regs.next_multiple_of(8) * threads);
    let by_shared = (max_shared + 1024) / (tile.stages * tile.stage_bytes(elem) + 1024);
    let by_threads = 2048 / threads;
    by_regs.min(by_shared).min(by_threads).max(1)
}

/// The cube count, at most [`MOST_CUBES`], whose last wave (`wave` cubes run at once) is
/// fullest; near-ties (within 2 %) go to fewer cubes, which also write and sum fewer
/// partials. `splits_for(target)` is the split count the rows allow for a target. On an
/// H200 (channels-last µs, TF32 / bf16), the 192-channel weight gradient (54 tiles, waves
/// of 132 TF32 and 264 bf16 cubes) ran 406 / 157 in 10 splits (540 cubes: 82 / 68 % of
/// their last waves used), 363 / 143 in 7 (95 / 72 %), 381 / 135 in 9 (92 / 92 %), 412 / 130
/// in 4 (82 / 82 %); at 96 channels (18 tiles, waves of 264) 470 / 211 in 29 splits (99 %),
/// 459 / 197 in 14 (95 %), 662 / 269 in 20 (68 %).
fn wave_filling_cubes(tiles: usize, wave: usize, splits_for: impl Fn(usize) -> usize) -> usize {
    let filled = |cubes: usize| cubes as f64 / (cubes.div_ceil(wave) * wave) as f64;
    let mut best = (0.0, tiles);
    for splits in 1..=MOST_CUBES.div_ceil(tiles) {
        let cubes = tiles * splits_for(tiles * splits);
        if cubes > MOST_CUBES.max(tiles) {
            break;
        }
        if filled(cubes) > best.0 + 0.02 {
            best = (filled(cubes), cubes);
        }
    }
    best.1
}

/// (row splits, dst rows a split) of `tiles` tiles: `SSM_CONV_TUNE`'s `wgrad.target` when
/// set, else [`wave_filling_cubes`] for waves of `wave` cubes, else [`MOST_CUBES`].
fn wgrad_splits(geo: &Geo, tile: &WgradTile, tiles: usize, wave: Option<usize>) -> (usize, usize) {
    let target = match (conv_tune().wgrad_target, wave) {
        (Some(target), _) => target,
        (None, Some(wave)) => {
            wave_filling_cubes(tiles, wave, |t| split_rows(geo, tile, tiles, t).0)
        }
        (None, None) => MOST_CUBES,
    };
    split_rows(geo, tile, tiles, target)
}

/// (input-channel chunks, grid x = taps × chunks, grid y = dst-channel tiles) of `tile`:
/// a cube per tap along (d, h), or along d where the cube takes those along h.
fn grid_tiles(geo: &Geo, tile: &WgradTile) -> (usize, usize, usize) {
    let c_tiles = (geo.c_red as usize).div_ceil(tile.cc);
    let tap_rows = if tile.h_taps > 1 {
        geo.k[0]
    } else {
        geo.k[0] * geo.k[1]
    };
    (
        c_tiles,
        tap_rows as usize * c_tiles,
        (geo.c_out as usize).div_ceil(tile.bm()),
    )
}

/// Whether [`wgrad`] can run this problem: the device and alignment rules of
/// [`super::conv_pipe::fits`] ([`usable`], [`rows_aligned`]) for x and dy (dy rows are
/// copied in 16-byte chunks of dst channels too), a w stride of 1 (the halo), at most 32
/// warps, and slots that fit in shared memory.
pub(crate) fn fits(x: &SsmTensor, dy: &SsmTensor, geo: &Geo, channels_last: bool) -> bool {
    let dtype = x.dtype;
    if !usable(x, dy, channels_last) || geo.stride[2] != 1 {
        return false;
    }
    let granule = copy_granule(dtype) as i32;
    let tile = tile_of(geo, dtype, x.device.max_shared_memory());
    rows_aligned(x.offset, &geo.ss, dtype)
        && rows_aligned(dy.offset, &geo.sd, dtype)
        && geo.c_red % granule == 0
        && geo.c_out % granule == 0
        && tile.warps() <= 32
        && tile.stages * tile.stage_bytes(dtype.size()) <= x.device.max_shared_memory()
}

/// Weight gradient `[1, c_out·groups, c_red·taps]` (PyTorch weight order); the caller
/// checked [`fits`].
pub(crate) fn wgrad(x: &SsmTensor, dy: &SsmTensor, geo: &Geo) -> SsmTensor {
    let tile = tile_of(geo, x.dtype, x.device.max_shared_memory());
    let taps = (geo.k[0] * geo.k[1] * geo.k[2]) as usize;
    let c_red = geo.c_red as usize;
    let co_total = (geo.c_out * geo.groups) as usize;
    let (c_tiles, x_tiles, m_tiles) = grid_tiles(geo, &tile);
    let tiles = x_tiles * m_tiles * geo.groups as usize;
    let wave = x
        .device
        .multiprocessors()
        .map(|sms| sms * cubes_per_sm(&tile, x.dtype.size(), x.device.max_shared_memory()));
    let (splits, rows_per_split) = wgrad_splits(geo, &tile, tiles, wave);
    let parts = SsmTensor::empty(&[splits, co_total, taps, c_red], DType::F32, &x.device);
    let (frag_ty, mk) = fragment(x.dtype);
    let vec = copy_granule(x.dtype);
    dispatch!(x.device, c => {
        let count = CubeCount::Static(
            x_tiles as u32,
            m_tiles as u32,
            (splits * geo.groups as usize) as u32,
        );
        let dim = CubeDim::new_2d(32, tile.cube_warps() as u32);
        record_launch();
        unsafe {
            conv_wgrad_pipe::launch_unchecked(
                c, count, dim,
                x.array_arg(x.buffer_len()),
                dy.array_arg(dy.buffer_len()),
                parts.array_arg(parts.numel()),
                x.offset as i32,
                dy.offset as i32,
                geo.launch(),
                c_tiles as i32,
                splits as i32,
                rows_per_split as i32,
                tile.warps_m, tile.frags_m, tile.kw, tile.cc, tile.ks, tile.halo, tile.run,
                tile.rows_per_seg, tile.seg_per_row, tile.stage_rows, mk, vec,
                tile.stages,
                tile.producers,
                tile.h_taps,
                tile.x_rows,
                conv_probe(),
                [x.dtype.storage(), frag_ty],
            )
        }
    });
    // The splits' sum and the permute to the weight's [c_out, c_red, tap] in one pass.
    split_sum(
        &parts,
        &[1, co_total, c_red * taps],
        Some((co_total, taps, c_red)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgrad_tiles_cover_the_channels() {
        for c_out in [16, 24, 48, 96, 112, 192] {
            for c_red in [16, 24, 48, 96, 192] {
                for elem in [2, 4] {
                    let t = wgrad_tile(c_out, c_red, 3, 1, 112, elem, stage_segments(112, elem));
                    let most_warps = if elem == 4 { 4 } else { 2 };
                    assert!(t.frags_m <= 3 && t.warps_m <= most_warps, "{t:?}");
                    if elem == 4 && c_out == 192 {
                        assert_eq!((t.warps_m, t.frags_m), (4, 3));
                    }
                    let m_tiles = c_out.div_ceil(t.bm());
                    assert!(m_tiles * t.bm() - c_out < 16 * m_tiles, "{c_out}: {t:?}");
                    let c_tiles = c_red.div_ceil(t.cc);
                    assert!(t.cc <= 64 && t.cc.is_multiple_of(16), "{t:?}");
                    assert!(c_tiles * t.cc - c_red < 16 * c_tiles, "{c_red}: {t:?}");
                    assert!(t.stages * t.stage_bytes(elem) <= 100 * 1024, "{t:?}");
                }
            }
        }
        let tile =
            |c_out, c_red, dil_w, dst_w, ks| wgrad_tile(c_out, c_red, 3, dil_w, dst_w, 2, ks);
        assert_eq!(tile(48, 48, 1, 112, 2).cc, 48);
        assert_eq!(tile(192, 192, 1, 28, 2).cc, 64);
        // (run, rows per segment, halo, segments, segments per row, rows) of a stage.
        let layout = |t: WgradTile| {
            (
                t.run,
                t.rows_per_seg,
                t.halo,
                t.ks,
                t.seg_per_row,
                t.stage_rows,
            )
        };
        // Rows of 8 share a segment (two sub-halos of 8 + 2·2 rows); a stage of two
        // segments holds four rows.
        assert_eq!(layout(tile(48, 48, 2, 8, 1)), (8, 2, 24, 1, 1, 2));
        assert_eq!(layout(tile(48, 48, 2, 8, 2)), (8, 2, 24, 2, 1, 4));
        // Rows of 9..16: a segment each, whole-row stages.
        assert_eq!(layout(tile(96, 96, 1, 16, 2)), (16, 1, 18, 2, 1, 2));
        // Rows of two segments: one row a stage, or two; three segments round down to one row.
        assert_eq!(layout(tile(48, 48, 1, 32, 2)), (16, 1, 18, 2, 2, 1));
        assert_eq!(layout(tile(48, 48, 1, 32, 4)), (16, 1, 18, 4, 2, 2));
        assert_eq!(layout(tile(48, 48, 1, 32, 3)), (16, 1, 18, 2, 2, 1));
        // Longer rows: runs of `ks` segments along one row.
        assert_eq!(layout(tile(48, 48, 1, 28, 1)), (16, 1, 18, 1, 1, 1));
        assert_eq!(layout(tile(48, 48, 1, 112, 2)), (16, 1, 18, 2, 2, 1));
        // The benchmark rows: 32 (two segments), 16 (four rows a stage, bf16 only) and 8
        // (two rows a segment, eight a stage).
        assert_eq!(stage_segments(32, 2), 2);
        assert_eq!((stage_segments(16, 2), stage_segments(16, 4)), (4, 1));
        assert_eq!((stage_segments(8, 2), stage_segments(8, 4)), (4, 4));
    }

    /// The benchmark shapes' tiles (3 × 3 × 3, C → C; dst rows of 32, 16 and 8) on an H100
    /// or H200 (227 KiB of shared memory a cube, 132 SMs), with the rule's producer warps.
    fn bench_tile(c: usize, dst_w: usize, elem: usize) -> WgradTile {
        let tile = wgrad_tile(c, c, 3, 1, dst_w, elem, stage_segments(dst_w, elem));
        WgradTile {
            producers: producer_warps(&tile, elem),
            ..tile
        }
    }

    /// [`bench_tile`] without producer warps (every warp copies and multiplies).
    fn bare_tile(c: usize, dst_w: usize, elem: usize) -> WgradTile {
        WgradTile {
            producers: 0,
            ..bench_tile(c, dst_w, elem)
        }
    }

    #[test]
    fn producer_warps_where_the_measurements_say() {
        // Two in every bf16 tile and in the TF32 one of two warps along the dst channels
        // (96 channels); none in the TF32 tiles of four (192) and one (48).
        for (c, dst_w, tf32, bf16) in [(192, 8, 0, 2), (96, 16, 2, 2), (48, 32, 0, 2)] {
            assert_eq!(bench_tile(c, dst_w, 4).producers, tf32, "TF32 {c}");
            assert_eq!(bench_tile(c, dst_w, 2).producers, bf16, "bf16 {c}");
        }
    }
    const HOPPER_SHARED: usize = 227 * 1024;

    #[test]
    fn cubes_an_sm_as_ncu_counted_them() {
        // Without producer warps, as `ncu` counted them: 192 channels: TF32 one (204
        // registers), bf16 two (167 registers, 74.5 KB).
        assert_eq!(cubes_per_sm(&bare_tile(192, 8, 4), 4, HOPPER_SHARED), 1);
        assert_eq!(cubes_per_sm(&bare_tile(192, 8, 2), 2, HOPPER_SHARED), 2);
        // 96 channels (48 input channels a tile): two in both types; 48 channels (one warp
        // of dst channels, 96 threads): four.
        for elem in [2, 4] {
            assert_eq!(
                cubes_per_sm(&bare_tile(96, 16, elem), elem, HOPPER_SHARED),
                2
            );
            assert_eq!(
                cubes_per_sm(&bare_tile(48, 32, elem), elem, HOPPER_SHARED),
                4
            );
        }
        // Two producer warps more: the six-warp tiles' registers hold one cube an SM (bf16
        // 192 channels: 162 registers in ptxas), the 48-channel bf16 tile's two.
        assert_eq!(cubes_per_sm(&bench_tile(192, 8, 2), 2, HOPPER_SHARED), 1);
        for elem in [2, 4] {
            assert_eq!(
                cubes_per_sm(&bench_tile(96, 16, elem), elem, HOPPER_SHARED),
                1
            );
        }
        assert_eq!(cubes_per_sm(&bench_tile(48, 32, 2), 2, HOPPER_SHARED), 2);
        // Shared memory bounds it where a cube takes most of it.
        let t = bare_tile(192, 8, 2);
        assert_eq!(cubes_per_sm(&t, 2, t.stages * t.stage_bytes(2)), 1);
    }

    #[test]
    fn h_taps_only_where_a_stage_keeps_to_its_plane() {
        let geo = |dst: [i32; 3], stride_h: i32| Geo {
            dst,
            k: [3; 3],
            stride: [1, stride_h, 1],
            dil: [1; 3],
            c_red: 192,
            c_out: 192,
            groups: 1,
            batch: 2,
            ..Geo::default()
        };
        let tile = |dst_w, ks, producers| WgradTile {
            producers,
            ..wgrad_tile(192, 192, 3, 1, dst_w, 2, ks)
        };
        let g192 = geo([28, 28, 8], 1);
        // Rows of 8, two a segment: 14-row stages (ks 7) divide the 28 rows of a plane,
        // the rule's 8-row ones (ks 4) do not.
        assert!(h_taps_fit(&g192, &tile(8, 7, 2), 3));
        assert!(!h_taps_fit(&g192, &tile(8, 4, 2), 3));
        // Only the kernel height, only with producer warps, only at h stride 1.
        assert!(!h_taps_fit(&g192, &tile(8, 7, 2), 2));
        assert!(!h_taps_fit(&g192, &tile(8, 7, 0), 3));
        assert!(!h_taps_fit(&geo([28, 28, 8], 2), &tile(8, 7, 2), 3));
        // Rows of 32 make stages of runs along one row: no.
        assert!(!h_taps_fit(&geo([28, 28, 32], 1), &tile(32, 4, 2), 3));
        // A stage of 14 rows and k_h = 3 holds 16 x sub-rows of 10 positions (8 + 2).
        let t = WgradTile {
            h_taps: 3,
            x_rows: 16,
            ..tile(8, 7, 2)
        };
        assert_eq!(
            (t.stage_rows, t.b_rows(), t.warps()),
            (14, 160, 3 * 3 * t.warps_m)
        );
    }

    #[test]
    fn h_taps_by_rule_for_bf16_rows_of_16() {
        let geo = |dst: [i32; 3], k: [i32; 3], dil_h: i32| Geo {
            dst,
            k,
            stride: [1; 3],
            dil: [1, dil_h, 1],
            ..Geo::default()
        };
        let k3 = [3; 3];
        // The most rows up to 8 that divide the dst height.
        assert_eq!(h_taps_stage_rows(&geo([56, 56, 16], k3, 1), 2), Some(8));
        assert_eq!(
            h_taps_stage_rows(&geo([1, 6, 16], [1, 3, 3], 1), 2),
            Some(6)
        );
        assert_eq!(h_taps_stage_rows(&geo([4, 7, 16], k3, 1), 2), Some(7));
        // Not TF32, rows other than 16, an h dilation, one tap along h, a 5 × 5 kernel,
        // or a prime dst height past 8.
        for (g, elem) in [
            (geo([56, 56, 16], k3, 1), 4),
            (geo([28, 28, 8], k3, 1), 2),
            (geo([56, 56, 32], k3, 1), 2),
            (geo([56, 56, 16], k3, 2), 2),
            (geo([56, 56, 16], [3, 1, 3], 1), 2),
            (geo([56, 56, 16], [1, 5, 5], 1), 2),
            (geo([56, 11, 16], k3, 1), 2),
        ] {
            assert_eq!(h_taps_stage_rows(&g, elem), None, "{g:?} {elem}");
        }
    }

    #[test]
    fn cubes_fill_their_last_wave() {
        let any_split = |target: usize, tiles: usize| target.div_ceil(tiles);
        let cubes = |tiles, wave| wave_filling_cubes(tiles, wave, |t| any_split(t, tiles));
        // 192 channels, 54 tiles: TF32 (waves of 132) 7 splits, 378 cubes (95 %); bf16
        // (264) 9 splits, 486 (92 %), not 4 (82 %) or 10 (540, a 2 % third wave).
        assert_eq!(cubes(54, 132), 378);
        assert_eq!(cubes(54, 264), 486);
        // 96 channels, 18 tiles: 14 splits fill one wave to 95 %, as do 28 (two): fewer.
        assert_eq!(cubes(18, 264), 252);
        // 48 channels, 9 tiles, waves of 528: the most cubes under the cap.
        assert_eq!(cubes(9, 528), 504);
        // More tiles than the cap: one split.
        assert_eq!(cubes(600, 264), 600);
        // Splits the rows cannot give (at most 3 here) are not counted as more cubes.
        assert_eq!(wave_filling_cubes(54, 264, |t| t.div_ceil(54).min(3)), 162);
    }

    #[test]
    fn benchmark_shapes_split_as_timed() {
        // (channels, dst (d, h, w)) of the benchmark shapes; 3 × 3 × 3, batch 2, 132 SMs.
        // The counts each rule picks, all timed with `wgrad.target` on an H200 (the doc of
        // `wave_filling_cubes`; 48 channels: 57 splits, 812 / 384 µs, before). TF32 at 192:
        // one tile of all dst channels (27 tiles), 14 splits, the 378 cubes of the two-tile
        // rule's 7 (timed on an H100 with `wgrad.warps_m=4`: `wgrad_tile`'s doc). With
        // producer warps (one cube an SM at 192 and 96 channels, two at 48 in bf16) the
        // counts the H100 sweep of 2026-12-07 ran: bf16 7 / 22 / 29, TF32 96 22. The bf16
        // 96-channel cubes take all taps along h (12 tiles of 48 dst channels × 9 taps × 48
        // input channels): 11 splits, one wave of 132, as `wgrad-h-taps.txt` timed them.
        for (c, dst, tf32, bf16) in [
            (192, [28, 28, 8], 14, 7),
            (96, [56, 56, 16], 22, 11),
            (48, [112, 112, 32], 56, 29),
        ] {
            let geo = Geo {
                dst,
                k: [3; 3],
                stride: [1; 3],
                dil: [1; 3],
                c_red: c as i32,
                c_out: c as i32,
                groups: 1,
                batch: 2,
                ..Geo::default()
            };
            for (dtype, want) in [(DType::F32, tf32), (DType::BF16, bf16)] {
                let elem = dtype.size();
                let tile = tile_of(&geo, dtype, HOPPER_SHARED);
                let h = (c, elem) == (96, 2);
                assert_eq!(tile.h_taps, if h { 3 } else { 1 }, "{tile:?}");
                if h {
                    assert_eq!((tile.warps_m, tile.frags_m, tile.stage_rows), (1, 3, 8));
                    assert_eq!((tile.x_rows, tile.warps(), tile.producers), (10, 9, 2));
                } else {
                    assert_eq!(tile, bench_tile(c, dst[2] as usize, elem));
                }
                let (_, x_tiles, m_tiles) = grid_tiles(&geo, &tile);
                let tiles = x_tiles * m_tiles;
                let wave = 132 * cubes_per_sm(&tile, elem, HOPPER_SHARED);
                let (splits, rows) = wgrad_splits(&geo, &tile, tiles, Some(wave));
                assert_eq!(splits, want, "{c} channels, {elem}-byte operands");
                // The splits cover the rows, each starting at a stage.
                let all = 2 * dst[0] as usize * dst[1] as usize;
                assert!(splits * rows >= all && (splits - 1) * rows < all);
                assert!(rows.is_multiple_of(tile.stage_rows));
            }
        }
    }
}
