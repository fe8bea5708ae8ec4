//! Tiled multi-path kernels for 2D/3D grids.
//!
//! The grid (padded to three axes) is cut into tiles of `t0 × t1 × t2` positions. A cube
//! holds `warps` logical warps; warp `w` handles channel `block·warps + w` of one batch over
//! one tile. It stages the tile's u (and Δ, per path) in shared memory with coalesced loads
//! — whatever order the paths walk — and then runs every path over the tile, accumulating
//! the merged output (or, backward, du) in shared memory, so each input is read from device
//! memory once per pass and each output written once: no per-path buffers, no merge kernel.
//!
//! Within a tile, path `k` is cut into *segments*: runs of at most `seglen` consecutive
//! steps along the path's fastest axis (`seglen` = min(tile extent along that axis,
//! positions / 32), so every tile holds at least 32 segments of every path). A lane walks
//! its segments sequentially, all states at once (N is a compile-time constant here). A
//! segment's rank is its position in the path's order of segments; an aggregate pass
//! computes every segment's composed map (Π a, h from 0), `tile_chain` composes them in
//! rank order into each segment's start state, and the main pass starts every segment from
//! it. The backward does the same for the adjoint with ranks reversed, and walks each
//! segment twice: forward to recompute the states (kept in shared memory), then backward.
//!
//! The per-path words ([`TILE_WORDS`] each, built by [`super::ScanPlan`]) describe the path
//! against the tile shape: canonical axis, grid size, tile extent, shared-memory stride and
//! grid stride of each path axis (slowest → fastest), flips, snake, reversal, segment length,
//! segments per tile and per path.

use cubecl::prelude::*;

use super::kernels::{exp_of, sigmoid_of, softplus_of, warp_scan, warp_sum};

/// Number of `u32` words describing one path for the tiled kernels.
pub const TILE_WORDS: usize = 24;

/// Sizes shared by the tiled kernels (all runtime values).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
pub struct TileDims {
    /// Batch size.
    pub batch: u32,
    /// Number of paths K.
    pub paths: u32,
    /// Channels Di.
    pub channels: u32,
    /// B/C groups per path.
    pub groups: u32,
    /// Grid size L.
    pub len: u32,
    /// Grid extent along canonical axis 0 (the grid padded to three axes).
    pub g0: u32,
    /// Grid extent along canonical axis 1.
    pub g1: u32,
    /// Grid extent along canonical axis 2.
    pub g2: u32,
    /// Tiles along axis 1.
    pub n1: u32,
    /// Tiles along axis 2.
    pub n2: u32,
    /// Tiles in all.
    pub tiles: u32,
    /// Channel blocks: ceil(Di / warps).
    pub blocks: u32,
    /// Segment slots per row in the aggregate and start buffers (the most segments of any
    /// path).
    pub seg_max: u32,
}

/// Tile element `e` (row-major over the tile): whether it lies in the grid, its grid
/// index, and its shared-memory slot (rows padded by one word against bank conflicts).
#[cube]
fn tile_pos(
    e: u32,
    o0: u32,
    o1: u32,
    o2: u32,
    dims: &TileDims,
    #[comptime] t1: u32,
    #[comptime] t2: u32,
) -> (bool, u32, usize) {
    let l2 = e % t2;
    let l1 = (e / t2) % t1;
    let l0 = e / (t1 * t2);
    let x0 = o0 + l0;
    let x1 = o1 + l1;
    let x2 = o2 + l2;
    let ok = x0 < dims.g0 && x1 < dims.g1 && x2 < dims.g2;
    (
        ok,
        (x0 * dims.g1 + x1) * dims.g2 + x2,
        ((l0 * t1 + l1) * (t2 + 1) + l2) as usize,
    )
}

/// Decoded position of the cube: (batch, tile, channel block, tile origin along the three
/// canonical axes).
#[cube]
fn tile_locate(
    dims: &TileDims,
    #[comptime] t0: u32,
    #[comptime] t1: u32,
    #[comptime] t2: u32,
) -> (u32, u32, u32, u32, u32, u32) {
    let cube = CUBE_POS as u32;
    let blk = cube % dims.blocks;
    let rest = cube / dims.blocks;
    let tile = rest % dims.tiles;
    let b = rest / dims.tiles;
    let i2 = tile % dims.n2;
    let i1 = (tile / dims.n2) % dims.n1;
    let i0 = tile / (dims.n1 * dims.n2);
    (b, tile, blk, i0 * t0, i1 * t1, i2 * t2)
}

/// The value of canonical axis `ax` among three.
#[cube]
fn pick(ax: u32, v0: u32, v1: u32, v2: u32) -> u32 {
    select(ax == 0u32, v0, select(ax == 1u32, v1, v2))
}

/// One segment of path `k` in the tile: (exists, rank in the path's segment order, length,
/// shared-memory slot of its first step in path order, whether the slot grows along the
/// path, shared-memory stride of a step).
#[cube]
fn segment(
    words: &Array<u32>,
    k: u32,
    i: u32,
    o0: u32,
    o1: u32,
    o2: u32,
) -> (bool, u32, u32, u32, bool, u32) {
    let w = (k as usize) * 24;
    let op0 = pick(words[w], o0, o1, o2);
    let op1 = pick(words[w + 1], o0, o1, o2);
    let op2 = pick(words[w + 2], o0, o1, o2);
    let s0 = words[w + 3];
    let s1 = words[w + 4];
    let s2 = words[w + 5];
    let t1p = words[w + 7];
    let flips = words[w + 15];
    let snake = words[w + 16];
    let rev = words[w + 17];
    let seglen = words[w + 18];
    let nsub_tile = words[w + 19];
    let nsub_grid = words[w + 20];
    let nseg = words[w + 21];
    let sub = i % nsub_tile;
    let line = i / nsub_tile;
    let a = line / t1p;
    let bq = line % t1p;
    let x0 = op0 + a;
    let x1 = op1 + bq;
    let blk = op2 / seglen + sub;
    let lo = blk * seglen;
    let ok = i < words[w + 22] && x0 < s0 && x1 < s1 && lo < s2;
    let hi = select(lo + seglen < s2, lo + seglen, s2);
    let c0 = select((flips & 1u32) != 0u32, s0 - 1u32 - x0, x0);
    let c1 = select((flips & 2u32) != 0u32, s1 - 1u32 - x1, x1);
    let line_rank = c0 * s1 + c1;
    let turn = ((flips >> 2u32) & 1u32) + (snake & line_rank & 1u32);
    // Along the fastest axis the non-reversed path walks up unless exactly one of the
    // flip and the snake's odd line turns it around.
    let inc = (turn & 1u32) == 0u32;
    let forward = ((turn + rev) & 1u32) == 0u32;
    let rank_nr = line_rank * nsub_grid + select(inc, blk, nsub_grid - 1u32 - blk);
    let rank = select(rev == 1u32, nseg - 1u32 - rank_nr, rank_nr);
    let first = select(forward, lo, hi - 1u32);
    let ss2 = words[w + 11];
    let slot = a * words[w + 9] + bq * words[w + 10] + (first - op2) * ss2;
    (ok, rank, hi - lo, slot, forward, ss2)
}

/// Forward over tiles. With `aggregate`, writes each segment's composed map per state into
/// `agg` (`(rows, seg_max, N, 2)`: Π a, then h from 0); otherwise starts each segment from
/// `starts` (`(rows, seg_max, N)`) and writes the merged output `·scale` (and, with `gate`,
/// the pre-gate value into `merged` and `·silu(z)` into `out`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn tile_fwd<F: Float>(
    u: &Array<F>,
    delta: &Array<F>,
    a_mat: &Array<F>,
    b_mat: &Array<F>,
    c_mat: &Array<F>,
    d_skip: &Array<F>,
    bias: &Array<F>,
    words: &Array<u32>,
    starts: &Array<F>,
    z: &Array<F>,
    out: &mut Array<F>,
    merged: &mut Array<F>,
    agg: &mut Array<F>,
    dims: TileDims,
    scale: InputScalar,
    #[comptime] t0: u32,
    #[comptime] t1: u32,
    #[comptime] t2: u32,
    #[comptime] state: u32,
    #[comptime] warps: u32,
    #[comptime] delta_per_path: bool,
    #[comptime] aggregate: bool,
    #[comptime] gate: bool,
    #[comptime] fast_exp: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (b, _tile, blk, o0, o1, o2) = tile_locate(&dims, t0, t1, t2);
    let lane = UNIT_POS % 32u32;
    let warp = UNIT_POS / 32u32;
    let d = blk * warps + warp;
    let valid = d < dims.channels;
    let dc = select(valid, d, 0u32);
    let di = dims.channels;
    let group = (blk * warps) / (di / dims.groups);
    let u_base = ((b * di + dc) * dims.len) as usize;
    let tp = comptime!(t0 * t1 * t2);
    let pp = comptime!((t0 * t1 * (t2 + 1)) as usize);
    let threads = comptime!(32 * warps);
    let wo = warp as usize * pp;

    let mut su = SharedMemory::<F>::new(comptime!(warps as usize * pp));
    let mut sd = SharedMemory::<F>::new(comptime!(warps as usize * pp));
    let mut so = SharedMemory::<F>::new(comptime!(if aggregate { 1 } else { warps as usize * pp }));
    let mut sbm = SharedMemory::<F>::new(comptime!(state as usize * pp));
    let mut scm =
        SharedMemory::<F>::new(comptime!(if aggregate { 1 } else { state as usize * pp }));

    let mut dsum = F::new(0.0);
    for k in 0..dims.paths {
        dsum += d_skip[(k * di + dc) as usize];
    }
    let mut e = lane;
    while e < tp {
        let (ok, gx, sx) = tile_pos(e, o0, o1, o2, &dims, t1, t2);
        if ok && valid {
            let uv = u[u_base + gx as usize];
            su[wo + sx] = uv;
            if !aggregate {
                so[wo + sx] = dsum * uv;
            }
            if !delta_per_path {
                sd[wo + sx] = delta[u_base + gx as usize];
            }
        }
        e += 32u32;
    }

    let mut h = Array::<F>::new(comptime!(state as usize));
    let mut pa = Array::<F>::new(comptime!(state as usize));
    let mut an = Array::<F>::new(comptime!(state as usize));
    for k in 0..dims.paths {
        let row = (b * dims.paths + k) * di + dc;
        if delta_per_path {
            let dl_base = row as usize * dims.len as usize;
            let mut e2 = lane;
            while e2 < tp {
                let (ok, gx, sx) = tile_pos(e2, o0, o1, o2, &dims, t1, t2);
                if ok && valid {
                    sd[wo + sx] = delta[dl_base + gx as usize];
                }
                e2 += 32u32;
            }
        }
        let bc_base = ((b * dims.paths + k) * dims.groups + group) * state;
        let mut e3 = UNIT_POS;
        while e3 < comptime!(state * t0 * t1 * t2) {
            let n = e3 / tp;
            let (ok, gx, sx) = tile_pos(e3 % tp, o0, o1, o2, &dims, t1, t2);
            if ok {
                let o = ((bc_base + n) * dims.len + gx) as usize;
                sbm[n as usize * pp + sx] = b_mat[o];
                if !aggregate {
                    scm[n as usize * pp + sx] = c_mat[o];
                }
            }
            e3 += threads;
        }
        sync_cube();

        let kd = (k * di + dc) as usize;
        let bs = bias[kd];
        #[unroll]
        for n in 0..state {
            an[n as usize] = a_mat[kd * state as usize + n as usize];
        }
        let nst = words[(k as usize) * 24 + 22];
        let mut i = lane;
        while i < nst {
            let (ok, rank, len, first, forward, ss2) = segment(words, k, i, o0, o1, o2);
            if ok && valid {
                let sbase = (row * dims.seg_max + rank) * state;
                #[unroll]
                for n in 0..state {
                    h[n as usize] = if aggregate {
                        F::new(0.0)
                    } else {
                        starts[(sbase + n) as usize]
                    };
                    pa[n as usize] = F::new(1.0);
                }
                let mut idx = first;
                for _s in 0..len {
                    let x = idx as usize;
                    let uv = su[wo + x];
                    let dtv = softplus_of::<F>(sd[wo + x] + bs, fast_exp);
                    let dtu = dtv * uv;
                    let mut y = F::new(0.0);
                    #[unroll]
                    for n in 0..state {
                        let av = exp_of::<F>(dtv * an[n as usize], fast_exp);
                        let hn = av * h[n as usize] + dtu * sbm[n as usize * pp + x];
                        h[n as usize] = hn;
                        if aggregate {
                            pa[n as usize] *= av;
                        } else {
                            y += scm[n as usize * pp + x] * hn;
                        }
                    }
                    if !aggregate {
                        so[wo + x] += y;
                    }
                    idx = select(forward, idx + ss2, idx - ss2);
                }
                if aggregate {
                    #[unroll]
                    for n in 0..state {
                        let o = ((sbase + n) * 2u32) as usize;
                        agg[o] = pa[n as usize];
                        agg[o + 1] = h[n as usize];
                    }
                }
            }
            i += 32u32;
        }
        sync_cube();
    }

    if !aggregate {
        let sc = scale.get::<F>();
        let mut e4 = lane;
        while e4 < tp {
            let (ok, gx, sx) = tile_pos(e4, o0, o1, o2, &dims, t1, t2);
            if ok && valid {
                let o = u_base + gx as usize;
                let m = so[wo + sx] * sc;
                if gate {
                    let zv = z[o];
                    merged[o] = m;
                    out[o] = m * zv * sigmoid_of::<F>(zv, fast_exp);
                } else {
                    out[o] = m;
                }
            }
            e4 += 32u32;
        }
    }
}

/// Exclusive composition of the segments' maps in rank order: one warp per (row, state)
/// walks the row's segments in blocks of `32·items`, turning `agg` (`(rows, seg_max, N,
/// 2)`) into the state entering every segment (`starts`, `(rows, seg_max, N)`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
pub fn tile_chain<F: Float>(
    agg: &Array<F>,
    starts: &mut Array<F>,
    words: &Array<u32>,
    channels: u32,
    paths: u32,
    seg_max: u32,
    n_state: u32,
    #[comptime] items: u32,
    #[comptime] plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let id = CUBE_POS as u32;
    let row = id / n_state;
    let n = id % n_state;
    let lane = UNIT_POS % 32u32;
    let k = (row / channels) % paths;
    let nseg = words[(k as usize) * 24 + 21];
    let mut sa = SharedMemory::<F>::new(32usize);
    let mut sb = SharedMemory::<F>::new(32usize);
    let mut ca = Array::<F>::new(comptime!(items as usize));
    let mut cb = Array::<F>::new(comptime!(items as usize));
    let block = comptime!(32 * items);
    let blocks = (nseg + block - 1u32) / block;
    let mut carry = F::new(0.0);
    for c in 0..blocks {
        let t0 = c * block + lane * items;
        let mut pa = F::new(1.0);
        let mut pb = F::new(0.0);
        #[unroll]
        for j in 0..items {
            let s = t0 + j;
            let o = (((row * seg_max + s) * n_state + n) * 2u32) as usize;
            let av = if s < nseg { agg[o] } else { F::new(1.0) };
            let bv = if s < nseg { agg[o + 1] } else { F::new(0.0) };
            ca[j as usize] = av;
            cb[j as usize] = bv;
            pa = av * pa;
            pb = av * pb + bv;
        }
        let (ea, eb, ta, tb) = warp_scan::<F>(pa, pb, &mut sa, &mut sb, false, plane);
        let mut hv = ea * carry + eb;
        #[unroll]
        for j in 0..items {
            let s = t0 + j;
            if s < nseg {
                starts[((row * seg_max + s) * n_state + n) as usize] = hv;
            }
            hv = ca[j as usize] * hv + cb[j as usize];
        }
        carry = ta * carry + tb;
    }
}

/// Backward over tiles. With `aggregate`, writes each segment's composed adjoint map
/// (Π a, q from 0, walking against the path) under the reversed rank, for `tile_chain`
/// to turn into the adjoint entering every segment from its end. Otherwise recomputes the
/// states from the forward's segment starts and writes du, dΔ_raw (per path, or summed over
/// the paths for a shared Δ), dB and dC (atomically added into `(B, K, G, N, L)`, or as
/// per-cube partial sums over the cube's channels `(B, K, blocks, N, L)`), and partial sums
/// of dA `(B, K, Di, tiles, N)`, dD `(B, Di, tiles)` (the same for every full-scale path)
/// and d(bias) `(B, K, Di, tiles)`. The output gradient of every path is `dy·dy_scale`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn tile_bwd<F: Float>(
    u: &Array<F>,
    delta: &Array<F>,
    a_mat: &Array<F>,
    b_mat: &Array<F>,
    c_mat: &Array<F>,
    d_skip: &Array<F>,
    bias: &Array<F>,
    words: &Array<u32>,
    fstarts: &Array<F>,
    bstarts: &Array<F>,
    dy: &Array<F>,
    du: &mut Array<F>,
    ddelta: &mut Array<F>,
    db_part: &mut Array<F>,
    dc_part: &mut Array<F>,
    db_sum: &mut Array<Atomic<F>>,
    dc_sum: &mut Array<Atomic<F>>,
    da_part: &mut Array<F>,
    dd_part: &mut Array<F>,
    dbias_part: &mut Array<F>,
    agg: &mut Array<F>,
    dims: TileDims,
    dy_scale: InputScalar,
    #[comptime] t0: u32,
    #[comptime] t1: u32,
    #[comptime] t2: u32,
    #[comptime] state: u32,
    #[comptime] warps: u32,
    #[comptime] plane: bool,
    #[comptime] delta_per_path: bool,
    #[comptime] aggregate: bool,
    #[comptime] atomics: bool,
    #[comptime] fast_exp: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (b, tile, blk, o0, o1, o2) = tile_locate(&dims, t0, t1, t2);
    let lane = UNIT_POS % 32u32;
    let warp = UNIT_POS / 32u32;
    let d = blk * warps + warp;
    let valid = d < dims.channels;
    let dc = select(valid, d, 0u32);
    let di = dims.channels;
    let group = (blk * warps) / (di / dims.groups);
    let u_base = ((b * di + dc) * dims.len) as usize;
    let tp = comptime!(t0 * t1 * t2);
    let pp = comptime!((t0 * t1 * (t2 + 1)) as usize);
    let threads = comptime!(32 * warps);
    let wo = warp as usize * pp;
    // Per-warp state arrays: slot (warp·N + n)·pp + x.
    let hw = warp as usize * comptime!(state as usize) * pp;
    let main = comptime!(!aggregate);
    let main_w = comptime!(if aggregate { 1 } else { warps as usize * pp });
    let main_n = comptime!(if aggregate {
        1
    } else {
        (warps * state) as usize * pp
    });

    let mut sy = SharedMemory::<F>::new(comptime!(warps as usize * pp));
    let mut sd = SharedMemory::<F>::new(comptime!(warps as usize * pp));
    let mut su = SharedMemory::<F>::new(main_w);
    let mut sdu = SharedMemory::<F>::new(main_w);
    let mut sdd = SharedMemory::<F>::new(comptime!(if aggregate || delta_per_path {
        1
    } else {
        warps as usize * pp
    }));
    let mut sh = SharedMemory::<F>::new(main_n);
    let mut sx = SharedMemory::<F>::new(main_n);
    let mut scm = SharedMemory::<F>::new(comptime!(state as usize * pp));
    let mut sbm =
        SharedMemory::<F>::new(comptime!(if aggregate { 1 } else { state as usize * pp }));
    let mut sa = SharedMemory::<F>::new(comptime!((warps * 32) as usize));

    let scale = dy_scale.get::<F>();
    let mut dsum = F::new(0.0);
    for k in 0..dims.paths {
        dsum += d_skip[(k * di + dc) as usize];
    }
    let mut dd_acc = F::new(0.0);
    let mut e = lane;
    while e < tp {
        let (ok, gx, sxi) = tile_pos(e, o0, o1, o2, &dims, t1, t2);
        if ok && valid {
            let gv = dy[u_base + gx as usize] * scale;
            sy[wo + sxi] = gv;
            if main {
                let uv = u[u_base + gx as usize];
                su[wo + sxi] = uv;
                sdu[wo + sxi] = dsum * gv;
                dd_acc += gv * uv;
                if !delta_per_path {
                    sdd[wo + sxi] = F::new(0.0);
                }
            }
            if !delta_per_path {
                sd[wo + sxi] = delta[u_base + gx as usize];
            }
        }
        e += 32u32;
    }

    let mut h0 = Array::<F>::new(comptime!(state as usize));
    let mut hs = Array::<F>::new(comptime!(state as usize));
    let mut q = Array::<F>::new(comptime!(state as usize));
    let mut pa = Array::<F>::new(comptime!(state as usize));
    let mut an = Array::<F>::new(comptime!(state as usize));
    let mut da = Array::<F>::new(comptime!(state as usize));
    for k in 0..dims.paths {
        let row = (b * dims.paths + k) * di + dc;
        let dl_base = row as usize * dims.len as usize;
        if delta_per_path {
            let mut e2 = lane;
            while e2 < tp {
                let (ok, gx, sxi) = tile_pos(e2, o0, o1, o2, &dims, t1, t2);
                if ok && valid {
                    sd[wo + sxi] = delta[dl_base + gx as usize];
                }
                e2 += 32u32;
            }
        }
        let bc_base = ((b * dims.paths + k) * dims.groups + group) * state;
        let mut e3 = UNIT_POS;
        while e3 < comptime!(state * t0 * t1 * t2) {
            let n = e3 / tp;
            let (ok, gx, sxi) = tile_pos(e3 % tp, o0, o1, o2, &dims, t1, t2);
            if ok {
                let o = ((bc_base + n) * dims.len + gx) as usize;
                scm[n as usize * pp + sxi] = c_mat[o];
                if main {
                    sbm[n as usize * pp + sxi] = b_mat[o];
                }
            }
            e3 += threads;
        }
        sync_cube();

        let kd = (k * di + dc) as usize;
        let bs = bias[kd];
        #[unroll]
        for n in 0..state {
            an[n as usize] = a_mat[kd * state as usize + n as usize];
            da[n as usize] = F::new(0.0);
        }
        let mut dbias_acc = F::new(0.0);
        let nseg = words[(k as usize) * 24 + 21];
        let nst = words[(k as usize) * 24 + 22];
        let mut i = lane;
        while i < nst {
            let (ok, rank, len, first, forward, ss2) = segment(words, k, i, o0, o1, o2);
            if ok && valid {
                let rank_rev = nseg - 1u32 - rank;
                // Slot of the segment's last step in path order.
                let last = select(
                    forward,
                    first + (len - 1u32) * ss2,
                    first - (len - 1u32) * ss2,
                );
                let rbase = (row * dims.seg_max + rank_rev) * state;
                if aggregate {
                    #[unroll]
                    for n in 0..state {
                        q[n as usize] = F::new(0.0);
                        pa[n as usize] = F::new(1.0);
                    }
                    let mut idx = last;
                    for _s in 0..len {
                        let x = idx as usize;
                        let gv = sy[wo + x];
                        let dtv = softplus_of::<F>(sd[wo + x] + bs, fast_exp);
                        #[unroll]
                        for n in 0..state {
                            let av = exp_of::<F>(dtv * an[n as usize], fast_exp);
                            q[n as usize] = av * (scm[n as usize * pp + x] * gv + q[n as usize]);
                            pa[n as usize] *= av;
                        }
                        idx = select(forward, idx - ss2, idx + ss2);
                    }
                    #[unroll]
                    for n in 0..state {
                        let o = ((rbase + n) * 2u32) as usize;
                        agg[o] = pa[n as usize];
                        agg[o + 1] = q[n as usize];
                    }
                } else {
                    let fbase = (row * dims.seg_max + rank) * state;
                    #[unroll]
                    for n in 0..state {
                        h0[n as usize] = fstarts[(fbase + n) as usize];
                        hs[n as usize] = h0[n as usize];
                        q[n as usize] = bstarts[(rbase + n) as usize];
                    }
                    // Recompute the states along the segment; keep Δ for the adjoint in
                    // the dB slot of state 0 (written only after it is read back).
                    let mut idx = first;
                    for _s in 0..len {
                        let x = idx as usize;
                        let dtv = softplus_of::<F>(sd[wo + x] + bs, fast_exp);
                        sx[hw + x] = dtv;
                        let dtu = dtv * su[wo + x];
                        #[unroll]
                        for n in 0..state {
                            let av = exp_of::<F>(dtv * an[n as usize], fast_exp);
                            let hn = av * hs[n as usize] + dtu * sbm[n as usize * pp + x];
                            hs[n as usize] = hn;
                            sh[hw + n as usize * pp + x] = hn;
                        }
                        idx = select(forward, idx + ss2, idx - ss2);
                    }
                    // Adjoint, against the path.
                    let mut idx2 = last;
                    for st in 0..len {
                        let x = idx2 as usize;
                        let prev = select(forward, idx2 - ss2, idx2 + ss2);
                        let at_first = st + 1u32 == len;
                        let uv = su[wo + x];
                        let raw = sd[wo + x] + bs;
                        let dtv = sx[hw + x];
                        let gv = sy[wo + x];
                        let mut dup = F::new(0.0);
                        let mut gdt = F::new(0.0);
                        #[unroll]
                        for n in 0..state {
                            let ns = n as usize * pp;
                            let av = exp_of::<F>(dtv * an[n as usize], fast_exp);
                            let hc = sh[hw + ns + x];
                            let hp = if at_first {
                                h0[n as usize]
                            } else {
                                sh[hw + ns + prev as usize]
                            };
                            let bv = sbm[ns + x];
                            let g = scm[ns + x] * gv + q[n as usize];
                            let qi = av * g;
                            dup += g * dtv * bv;
                            gdt += g * bv * uv + qi * hp * an[n as usize];
                            da[n as usize] += qi * hp * dtv;
                            sx[hw + ns + x] = g * dtv * uv;
                            sh[hw + ns + x] = gv * hc;
                            q[n as usize] = qi;
                        }
                        // softplus'(x) = σ(x), 1 above the threshold.
                        let gr = if raw > F::new(20.0) {
                            gdt
                        } else {
                            gdt * sigmoid_of::<F>(raw, fast_exp)
                        };
                        dbias_acc += gr;
                        sdu[wo + x] += dup;
                        if delta_per_path {
                            sd[wo + x] = gr;
                        } else {
                            sdd[wo + x] += gr;
                        }
                        idx2 = prev;
                    }
                }
            }
            i += 32u32;
        }
        sync_cube();
        if main {
            if delta_per_path {
                let mut e5 = lane;
                while e5 < tp {
                    let (ok, gx, sxi) = tile_pos(e5, o0, o1, o2, &dims, t1, t2);
                    if ok && valid {
                        ddelta[dl_base + gx as usize] = sd[wo + sxi];
                    }
                    e5 += 32u32;
                }
            }
            // dB and dC summed over the cube's channels.
            let mut e6 = UNIT_POS;
            while e6 < comptime!(state * t0 * t1 * t2) {
                let n = e6 / tp;
                let (ok, gx, sxi) = tile_pos(e6 % tp, o0, o1, o2, &dims, t1, t2);
                if ok {
                    let mut vb = F::new(0.0);
                    let mut vc = F::new(0.0);
                    #[unroll]
                    for w in 0..warps {
                        let o = (w * state + n) as usize * pp + sxi;
                        vb += sx[o];
                        vc += sh[o];
                    }
                    if atomics {
                        let o = ((bc_base + n) * dims.len + gx) as usize;
                        db_sum[o].fetch_add(vb);
                        dc_sum[o].fetch_add(vc);
                    } else {
                        let pb =
                            (((b * dims.paths + k) * dims.blocks + blk) * state + n) * dims.len;
                        db_part[(pb + gx) as usize] = vb;
                        dc_part[(pb + gx) as usize] = vc;
                    }
                }
                e6 += threads;
            }
            let tb = (row * dims.tiles + tile) as usize;
            #[unroll]
            for n in 0..state {
                let s = warp_sum::<F>(da[n as usize], &mut sa, plane);
                if lane == 0u32 && valid {
                    da_part[tb * state as usize + n as usize] = s;
                }
            }
            let sbias = warp_sum::<F>(dbias_acc, &mut sa, plane);
            if lane == 0u32 && valid {
                dbias_part[tb] = sbias;
            }
            sync_cube();
        }
    }

    if main {
        let mut e7 = lane;
        while e7 < tp {
            let (ok, gx, sxi) = tile_pos(e7, o0, o1, o2, &dims, t1, t2);
            if ok && valid {
                du[u_base + gx as usize] = sdu[wo + sxi];
                if !delta_per_path {
                    ddelta[u_base + gx as usize] = sdd[wo + sxi];
                }
            }
            e7 += 32u32;
        }
        let sdd_sum = warp_sum::<F>(dd_acc, &mut sa, plane);
        if lane == 0u32 && valid {
            dd_part[((b * di + dc) * dims.tiles + tile) as usize] = sdd_sum;
        }
    }
}
