//! The selective-scan kernels.
//!
//! Work decomposition: a cube holds `warps` logical warps of 32 lanes; warp `w` of cube
//! `(b, k, channel block, segment)` scans channel `d = block·warps + w` of batch `b` along
//! path `k`, over one segment of the path. A segment is processed in chunks of `32·items`
//! steps; lane `j` owns steps `[j·items, (j+1)·items)` of a chunk (blocked arrangement), so
//! a chunk is one thread-local scan per lane plus one 32-lane scan of the lanes'
//! aggregates (plane shuffles where the device has them, shared memory otherwise).
//! The N states are handled one after another inside the chunk.
//!
//! The recurrence per state n is the affine map h_t = a_t·h_{t−1} + b_t with
//! a_t = exp(Δ_t·A_n) and b_t = Δ_t·B_{t,n}·u_t; maps compose as (a₂,b₂)∘(a₁,b₁) =
//! (a₂a₁, a₂b₁ + b₂). The backward runs the adjoint recurrence q_t = a_t·(c_t + q_{t+1})
//! (c_t = C_{t,n}·dy_t) over the reversed chunk order, recomputing forward states from
//! the states saved at every chunk start, and forms g_t = c_t + q_{t+1} = ∂L/∂h_t.
//!
//! Steps map to grid positions through the path cursor; all tensors stay in canonical
//! layout.

use cubecl::prelude::*;

use crate::kernels::math;
use crate::scan::path::PATH_WORDS;

/// Lanes of a logical warp.
pub const LANES: usize = 32;

/// Walks a path's steps in order, yielding canonical grid positions without divisions
/// after the first step.
#[derive(CubeType)]
pub struct Cursor {
    c0: u32,
    c1: u32,
    c2: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    st0: u32,
    st1: u32,
    st2: u32,
    flips: u32,
    snake: u32,
    reversed: u32,
}

#[cube]
impl Cursor {
    /// Cursor at step `t` of path `k`.
    pub fn new(paths: &Array<u32>, k: u32, t: u32) -> Cursor {
        let base = (k as usize) * PATH_WORDS;
        let s1 = paths[base + 1];
        let s2 = paths[base + 2];
        let reversed = paths[base + 8];
        let len = paths[base + 9];
        let raw = select(reversed == 1u32, len - 1u32 - t, t);
        Cursor {
            c0: raw / (s1 * s2),
            c1: (raw / s2) % s1,
            c2: raw % s2,
            s0: paths[base],
            s1,
            s2,
            st0: paths[base + 3],
            st1: paths[base + 4],
            st2: paths[base + 5],
            flips: paths[base + 6],
            snake: paths[base + 7],
            reversed,
        }
    }

    /// Canonical grid position of the current step.
    pub fn pos(&self) -> u32 {
        let odd_line = ((self.c0 * self.s1 + self.c1) & 1u32) == 1u32;
        let c2s = select(
            self.snake == 1u32 && odd_line,
            self.s2 - 1u32 - self.c2,
            self.c2,
        );
        let c0 = select(
            (self.flips & 1u32) != 0u32,
            self.s0 - 1u32 - self.c0,
            self.c0,
        );
        let c1 = select(
            (self.flips & 2u32) != 0u32,
            self.s1 - 1u32 - self.c1,
            self.c1,
        );
        let c2 = select((self.flips & 4u32) != 0u32, self.s2 - 1u32 - c2s, c2s);
        c0 * self.st0 + c1 * self.st1 + c2 * self.st2
    }

    /// Move to the next step of the path (wrapping coordinates as needed).
    pub fn advance(&mut self) {
        if self.reversed == 1u32 {
            if self.c2 > 0u32 {
                self.c2 -= 1u32;
            } else {
                self.c2 = self.s2 - 1u32;
                if self.c1 > 0u32 {
                    self.c1 -= 1u32;
                } else {
                    self.c1 = self.s1 - 1u32;
                    self.c0 -= 1u32;
                }
            }
        } else {
            self.c2 += 1u32;
            if self.c2 == self.s2 {
                self.c2 = 0u32;
                self.c1 += 1u32;
                if self.c1 == self.s1 {
                    self.c1 = 0u32;
                    self.c0 += 1u32;
                }
            }
        }
    }
}

/// Composition of affine maps, `second ∘ first`.
#[cube]
fn compose<F: Float>(first_a: F, first_b: F, second_a: F, second_b: F) -> (F, F) {
    (second_a * first_a, second_a * first_b + second_b)
}

/// Exclusive and total scan of `(a, b)` across the 32 lanes of the caller's logical warp,
/// in lane order (`second ∘ first` for lane order first < second). With `reverse`, lanes
/// are taken from 31 down to 0. Returns (exclusive a, exclusive b, total a, total b).
#[cube]
pub(crate) fn warp_scan<F: Float>(
    a: F,
    b: F,
    sa: &mut SharedMemory<F>,
    sb: &mut SharedMemory<F>,
    #[comptime] reverse: bool,
    #[comptime] plane: bool,
) -> (F, F, F, F) {
    let lane = UNIT_POS % 32u32;
    let base = (UNIT_POS - lane) as usize;
    let mut ia = a;
    let mut ib = b;
    if plane {
        #[unroll]
        for s in 0..5u32 {
            let off = comptime!(1u32 << s);
            let na = if reverse {
                plane_shuffle_down(ia, off)
            } else {
                plane_shuffle_up(ia, off)
            };
            let nb = if reverse {
                plane_shuffle_down(ib, off)
            } else {
                plane_shuffle_up(ib, off)
            };
            let has = if reverse {
                lane + off < 32u32
            } else {
                lane >= off
            };
            if has {
                let (ca, cb) = compose::<F>(na, nb, ia, ib);
                ia = ca;
                ib = cb;
            }
        }
        let ea = if reverse {
            plane_shuffle_down(ia, 1u32)
        } else {
            plane_shuffle_up(ia, 1u32)
        };
        let eb = if reverse {
            plane_shuffle_down(ib, 1u32)
        } else {
            plane_shuffle_up(ib, 1u32)
        };
        let first = if reverse { lane == 31u32 } else { lane == 0u32 };
        let last = if reverse { 0u32 } else { 31u32 };
        let ta = plane_broadcast(ia, last);
        let tb = plane_broadcast(ib, last);
        (
            select(first, F::new(1.0), ea),
            select(first, F::new(0.0), eb),
            ta,
            tb,
        )
    } else {
        #[unroll]
        for s in 0..5u32 {
            let off = comptime!(1u32 << s);
            sa[UNIT_POS as usize] = ia;
            sb[UNIT_POS as usize] = ib;
            sync_cube();
            let has = if reverse {
                lane + off < 32u32
            } else {
                lane >= off
            };
            if has {
                let other = if reverse {
                    UNIT_POS + off
                } else {
                    UNIT_POS - off
                };
                let (ca, cb) = compose::<F>(sa[other as usize], sb[other as usize], ia, ib);
                ia = ca;
                ib = cb;
            }
            sync_cube();
        }
        sa[UNIT_POS as usize] = ia;
        sb[UNIT_POS as usize] = ib;
        sync_cube();
        let first = if reverse { lane == 31u32 } else { lane == 0u32 };
        let prev = if reverse {
            UNIT_POS + 1u32
        } else {
            UNIT_POS - 1u32
        };
        let ea = if first {
            F::new(1.0)
        } else {
            sa[prev as usize]
        };
        let eb = if first {
            F::new(0.0)
        } else {
            sb[prev as usize]
        };
        let last = if reverse { base } else { base + 31 };
        let ta = sa[last];
        let tb = sb[last];
        sync_cube();
        (ea, eb, ta, tb)
    }
}

/// Sum across the 32 lanes of the caller's logical warp (result valid in every lane).
#[cube]
pub(crate) fn warp_sum<F: Float>(v: F, sa: &mut SharedMemory<F>, #[comptime] plane: bool) -> F {
    if plane {
        plane_sum(v)
    } else {
        let lane = UNIT_POS % 32u32;
        let base = (UNIT_POS - lane) as usize;
        sa[UNIT_POS as usize] = v;
        sync_cube();
        let mut total = F::new(0.0);
        #[unroll]
        for i in 0..32usize {
            total += sa[base + i];
        }
        sync_cube();
        total
    }
}

/// Shapes and sizes shared by the kernels (all runtime values).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
pub struct ScanDims {
    /// Batch size.
    pub batch: u32,
    /// Number of paths K.
    pub paths: u32,
    /// Channels Di.
    pub channels: u32,
    /// State size N.
    pub state: u32,
    /// B/C groups per path.
    pub groups: u32,
    /// Canonical sequence length L (grid size).
    pub len: u32,
    /// Channel blocks per (b, k): ceil(Di / warps).
    pub blocks: u32,
    /// Segments per path sequence.
    pub segments: u32,
    /// Steps per segment (a multiple of the chunk size).
    pub seg_len: u32,
    /// Chunks per segment.
    pub seg_chunks: u32,
}

/// Decoded position of the calling warp: (b, k, d, segment, row, channel valid).
#[cube]
fn locate(dims: &ScanDims, #[comptime] warps: u32) -> (u32, u32, u32, u32, bool) {
    let cube = CUBE_POS as u32;
    let s = cube % dims.segments;
    let rest = cube / dims.segments;
    let block = rest % dims.blocks;
    let bk = rest / dims.blocks;
    let d = block * warps + UNIT_POS / 32u32;
    (bk / dims.paths, bk % dims.paths, d, s, d < dims.channels)
}

/// softplus(raw + bias) with PyTorch's threshold 20.
#[cube]
fn delta_of<F: Float>(raw: F) -> F {
    math::softplus::<F>(raw, F::new(20.0))
}

/// Position of chunk element `e` in a staging buffer: one pad word every 32 elements, so
/// that a lane reading its `items` consecutive elements and a thread writing element
/// `UNIT_POS` both hit 32 distinct banks.
#[cube]
fn staged(e: u32) -> usize {
    (e + e / 32u32) as usize
}

/// e^x, fast where allowed (see [`math::exp_fast`]).
#[cube]
pub(crate) fn exp_of<F: Float>(x: F, #[comptime] fast: bool) -> F {
    if fast {
        math::exp_fast::<F>(x)
    } else {
        math::exp::<F>(x)
    }
}

/// softplus(x) with PyTorch's threshold 20. With `fast` (f32 only), e^(−|x|) comes from the
/// fast exponential and ln(1 + e) = e·p(e) from a degree-8 Chebyshev fit of ln(1 + e)/e on
/// [0, 1] (3.3e-8 absolute; about 2e-7 relative after f32 rounding, against `log1pf`'s
/// 1 ulp).
#[cube]
pub(crate) fn softplus_of<F: Float>(x: F, #[comptime] fast: bool) -> F {
    if fast {
        let e = math::exp_fast::<F>(-F::abs(x));
        let mut p = F::new(0.005_126_102);
        p = p * e + F::new(-0.029_074_065);
        p = p * e + F::new(0.077_516_09);
        p = p * e + F::new(-0.136_022_48);
        p = p * e + F::new(0.190_768_81);
        p = p * e + F::new(-0.248_353_99);
        p = p * e + F::new(0.333_181_2);
        p = p * e + F::new(-0.499_994_45);
        p = p * e + F::new(0.999_999_97);
        select(x > F::new(20.0), x, F::max(x, F::new(0.0)) + e * p)
    } else {
        delta_of::<F>(x)
    }
}

/// Logistic sigmoid; with `fast` (f32 only), from the fast exponential and reciprocal.
#[cube]
pub(crate) fn sigmoid_of<F: Float>(x: F, #[comptime] fast: bool) -> F {
    if fast {
        let e = math::exp_fast::<F>(-F::abs(x));
        let s = math::recip_fast::<F>(F::new(1.0) + e);
        select(x >= F::new(0.0), s, e * s)
    } else {
        math::sigmoid::<F>(x)
    }
}

/// Marks a chunk element past the end of its segment in the shared position list.
#[cube]
fn no_position() -> u32 {
    u32::new(comptime!(u32::MAX as i64))
}

/// Forward scan of one segment per warp: writes the per-path output (D skip included) and
/// the state at every chunk start (for the backward). With `aggregate`, it writes instead
/// each segment's composed map (Π a, h from 0) per state into `agg` (used to find the
/// segment start states when a sequence is split into segments).
///
/// All warps of a cube walk the same steps (same path and segment), so B and C are loaded
/// once per cube: per state, the cube's threads stage the chunk's B and C values into
/// shared memory with coalesced loads (the next state's values are loaded into registers
/// while the current state is computed), and every lane reads its items from there.
///
/// With `direct` (one path), `y` is the final output `(B, Di, L)`; with `gate` as well,
/// `y` receives the merged value and `gated` the gated output `y·silu(z)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn scan_fwd<F: Float>(
    u: &Array<F>,
    delta: &Array<F>,
    a_mat: &Array<F>,
    b_mat: &Array<F>,
    c_mat: &Array<F>,
    d_skip: &Array<F>,
    bias: &Array<F>,
    paths: &Array<u32>,
    seg_start: &Array<F>,
    z: &Array<F>,
    y: &mut Array<F>,
    gated: &mut Array<F>,
    states: &mut Array<F>,
    agg: &mut Array<F>,
    dims: ScanDims,
    #[comptime] items: u32,
    #[comptime] warps: u32,
    #[comptime] plane: bool,
    #[comptime] delta_per_path: bool,
    #[comptime] aggregate: bool,
    #[comptime] direct_gate: bool,
    #[comptime] fast_exp: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (b, k, d, s, valid) = locate(&dims, warps);
    let lane = UNIT_POS % 32u32;
    let warp = UNIT_POS / 32u32;
    let n_state = dims.state;
    let dc = select(valid, d, 0u32);
    let row = (b * dims.paths + k) * dims.channels + dc;
    let path_len = paths[(k as usize) * PATH_WORDS + 9];
    let seg_begin = s * dims.seg_len;
    // Shorter (strided) paths leave trailing segments empty.
    let seg_stop = select(
        seg_begin + dims.seg_len < path_len,
        seg_begin + dims.seg_len,
        path_len,
    );
    let seg_end = select(seg_begin < path_len, seg_stop, seg_begin);
    let group = dc / (dims.channels / dims.groups);
    let u_base = ((b * dims.channels + dc) * dims.len) as usize;
    let dl_base = if delta_per_path {
        row as usize * dims.len as usize
    } else {
        u_base
    };
    let y_base = row as usize * dims.len as usize;
    let bc_base = ((b * dims.paths + k) * dims.groups + group) * n_state;
    let kd = (k * dims.channels + dc) as usize;
    let dsk = d_skip[kd];
    let bs = bias[kd];
    let chunk = comptime!(32 * items);
    let threads = comptime!(32 * warps);
    let stage = comptime!((32 * items + items) as usize);
    let per = comptime!((32 * items).div_ceil(32 * warps));

    let mut sa = SharedMemory::<F>::new(comptime!((warps * 32) as usize));
    let mut sb = SharedMemory::<F>::new(comptime!((warps * 32) as usize));
    let mut h_run = SharedMemory::<F>::new(comptime!((warps * 64) as usize));
    let mut p_run = SharedMemory::<F>::new(comptime!((warps * 64) as usize));
    let mut st_b = SharedMemory::<F>::new(comptime!(2 * stage));
    let mut st_c = SharedMemory::<F>::new(comptime!(2 * stage));
    let mut spos = SharedMemory::<u32>::new(comptime!((32 * items) as usize));

    // Running states start at the segment's start state (zero when aggregating).
    let mut n0 = lane;
    while n0 < n_state {
        let slot = (warp * 64u32 + n0) as usize;
        h_run[slot] = if !aggregate && dims.segments > 1u32 {
            seg_start[((row * dims.segments + s) * n_state + n0) as usize]
        } else {
            F::new(0.0)
        };
        p_run[slot] = F::new(1.0);
        n0 += 32u32;
    }
    sync_cube();

    let mut dtu = Array::<F>::new(comptime!(items as usize));
    let mut dt = Array::<F>::new(comptime!(items as usize));
    let mut yy = Array::<F>::new(comptime!(items as usize));
    let mut aa = Array::<F>::new(comptime!(items as usize));
    let mut bb = Array::<F>::new(comptime!(items as usize));
    let mut pf_b = Array::<F>::new(comptime!(per as usize));
    let mut pf_c = Array::<F>::new(comptime!(per as usize));

    // The last segment's composed map is never used.
    let n_chunks = if aggregate {
        select(s + 1u32 == dims.segments, 0u32, dims.seg_chunks)
    } else {
        dims.seg_chunks
    };
    for c in 0..n_chunks {
        let t0 = seg_begin + c * chunk + lane * items;
        let mut cur = Cursor::new(paths, k, select(t0 < seg_end, t0, 0u32));
        #[unroll]
        for i in 0..items {
            let live = valid && t0 + i < seg_end;
            let p = cur.pos();
            if warp == 0u32 {
                spos[(lane * items + i) as usize] = select(t0 + i < seg_end, p, no_position());
            }
            let uv = if live {
                u[u_base + p as usize]
            } else {
                F::new(0.0)
            };
            let dv = if live {
                softplus_of::<F>(delta[dl_base + p as usize] + bs, fast_exp)
            } else {
                F::new(0.0)
            };
            dt[i as usize] = dv;
            dtu[i as usize] = dv * uv;
            yy[i as usize] = dsk * uv;
            if t0 + i + 1u32 < seg_end {
                cur.advance();
            }
        }
        sync_cube();
        // Prefetch state 0's B and C for the chunk.
        #[unroll]
        for j in 0..per {
            let e = UNIT_POS + j * threads;
            let p = if e < chunk {
                spos[e as usize]
            } else {
                no_position()
            };
            let ok = p != no_position();
            let o = (bc_base * dims.len + p) as usize;
            pf_b[j as usize] = if ok { b_mat[o] } else { F::new(0.0) };
            if !aggregate {
                pf_c[j as usize] = if ok { c_mat[o] } else { F::new(0.0) };
            }
        }
        let gc = s * dims.seg_chunks + c;
        for n in 0..n_state {
            let buf = ((n % 2u32) as usize) * stage;
            #[unroll]
            for j in 0..per {
                let e = UNIT_POS + j * threads;
                if e < chunk {
                    st_b[buf + staged(e)] = pf_b[j as usize];
                    if !aggregate {
                        st_c[buf + staged(e)] = pf_c[j as usize];
                    }
                }
            }
            sync_cube();
            if n + 1u32 < n_state {
                #[unroll]
                for j in 0..per {
                    let e = UNIT_POS + j * threads;
                    let p = if e < chunk {
                        spos[e as usize]
                    } else {
                        no_position()
                    };
                    let ok = p != no_position();
                    let o = ((bc_base + n + 1u32) * dims.len + p) as usize;
                    pf_b[j as usize] = if ok { b_mat[o] } else { F::new(0.0) };
                    if !aggregate {
                        pf_c[j as usize] = if ok { c_mat[o] } else { F::new(0.0) };
                    }
                }
            }
            let an = a_mat[kd * n_state as usize + n as usize];
            let slot = (warp * 64u32 + n) as usize;
            let start = h_run[slot];
            let mut pa = F::new(1.0);
            let mut pb = F::new(0.0);
            #[unroll]
            for i in 0..items {
                let live = valid && t0 + i < seg_end;
                let av = if live {
                    exp_of::<F>(dt[i as usize] * an, fast_exp)
                } else {
                    F::new(1.0)
                };
                let bv = dtu[i as usize] * st_b[buf + staged(lane * items + i)];
                aa[i as usize] = av;
                bb[i as usize] = bv;
                pa = av * pa;
                pb = av * pb + bv;
            }
            let (ea, eb, ta, tb) = warp_scan::<F>(pa, pb, &mut sa, &mut sb, false, plane);
            if !aggregate {
                let mut h = ea * start + eb;
                #[unroll]
                for i in 0..items {
                    h = aa[i as usize] * h + bb[i as usize];
                    yy[i as usize] += st_c[buf + staged(lane * items + i)] * h;
                }
            }
            if plane {
                // Every lane has read `start` before lane 0 replaces it.
                sync_plane();
            }
            if lane == 0u32 {
                if valid && !aggregate {
                    states[((row * dims.segments * dims.seg_chunks + gc) * n_state + n) as usize] =
                        start;
                }
                h_run[slot] = ta * start + tb;
                p_run[slot] = ta * p_run[slot];
            }
        }
        if !aggregate {
            let mut cur2 = Cursor::new(paths, k, select(t0 < seg_end, t0, 0u32));
            #[unroll]
            for i in 0..items {
                let p = cur2.pos();
                if valid && t0 + i < seg_end {
                    let o = y_base + p as usize;
                    if direct_gate {
                        let zv = z[o];
                        y[o] = yy[i as usize];
                        gated[o] = yy[i as usize] * zv * sigmoid_of::<F>(zv, fast_exp);
                    } else {
                        y[o] = yy[i as usize];
                    }
                }
                if t0 + i + 1u32 < seg_end {
                    cur2.advance();
                }
            }
        }
    }
    sync_cube();
    if aggregate && valid {
        let mut n1 = lane;
        while n1 < n_state {
            let slot = (warp * 64u32 + n1) as usize;
            let o = (((row * dims.segments + s) * n_state + n1) * 2u32) as usize;
            agg[o] = p_run[slot];
            agg[o + 1] = h_run[slot];
            n1 += 32u32;
        }
    }
}

/// Start state of every segment from the segments' composed maps: one thread per
/// (row, state) composes them in order (segment 0 starts at zero). With `reverse`, the
/// composition runs from the last segment backwards (adjoint suffixes).
#[cube(launch_unchecked)]
pub fn segment_starts<F: Float>(
    agg: &Array<F>,
    starts: &mut Array<F>,
    rows: u32,
    segments: u32,
    n_state: u32,
    #[comptime] reverse: bool,
    #[define(F)] _dtype: StorageType,
) {
    let id = ABSOLUTE_POS as u32;
    if id < rows * n_state {
        let row = id / n_state;
        let n = id % n_state;
        let mut h = F::new(0.0);
        for j in 0..segments {
            let s = if reverse { segments - 1u32 - j } else { j };
            let o = ((row * segments + s) * n_state + n) as usize;
            starts[o] = h;
            h = agg[2 * o] * h + agg[2 * o + 1];
        }
    }
}

/// Backward scan of one segment per warp, chunks from last to first. Writes the gradients
/// of u and Δ_raw (per path, or final with one path), dB and dC (atomically added into
/// `(B, K, G, N, L)` with `atomics`, else per-cube partial sums over the cube's channels),
/// and per-warp partial sums of dA, dD and d(bias). With `aggregate`, it only writes each
/// segment's composed adjoint map into `agg` (for the segment suffixes).
///
/// The output gradient every path receives is `dout·dy_scale`, or, with `gate` (one path),
/// `dout·silu(z)`, in which case the pass also writes `dz = dout·merged·silu'(z)`.
/// B and C are staged per cube and state as in `scan_fwd`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn scan_bwd<F: Float>(
    u: &Array<F>,
    delta: &Array<F>,
    a_mat: &Array<F>,
    b_mat: &Array<F>,
    c_mat: &Array<F>,
    d_skip: &Array<F>,
    bias: &Array<F>,
    paths: &Array<u32>,
    states: &Array<F>,
    seg_suffix: &Array<F>,
    dout: &Array<F>,
    z: &Array<F>,
    merged: &Array<F>,
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
    dz: &mut Array<F>,
    dims: ScanDims,
    dy_scale: InputScalar,
    #[comptime] items: u32,
    #[comptime] warps: u32,
    #[comptime] plane: bool,
    #[comptime] delta_per_path: bool,
    #[comptime] aggregate: bool,
    #[comptime] gate: bool,
    #[comptime] atomics: bool,
    #[comptime] fast_exp: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (b, k, d, s, valid) = locate(&dims, warps);
    let lane = UNIT_POS % 32u32;
    let warp = UNIT_POS / 32u32;
    let n_state = dims.state;
    let dc = select(valid, d, 0u32);
    let row = (b * dims.paths + k) * dims.channels + dc;
    let path_len = paths[(k as usize) * PATH_WORDS + 9];
    let seg_begin = s * dims.seg_len;
    // Shorter (strided) paths leave trailing segments empty.
    let seg_stop = select(
        seg_begin + dims.seg_len < path_len,
        seg_begin + dims.seg_len,
        path_len,
    );
    let seg_end = select(seg_begin < path_len, seg_stop, seg_begin);
    let group = dc / (dims.channels / dims.groups);
    let u_base = ((b * dims.channels + dc) * dims.len) as usize;
    let dl_base = if delta_per_path {
        row as usize * dims.len as usize
    } else {
        u_base
    };
    let out_base = row as usize * dims.len as usize;
    let bc_base = ((b * dims.paths + k) * dims.groups + group) * n_state;
    let block = d / warps;
    let part_base = ((b * dims.paths + k) * dims.blocks + block) * n_state;
    let kd = (k * dims.channels + dc) as usize;
    let dsk = d_skip[kd];
    let bs = bias[kd];
    let scale = dy_scale.get::<F>();
    let chunk = comptime!(32 * items);
    let threads = comptime!(32 * warps);
    let stage = comptime!((32 * items + items) as usize);
    let per = comptime!((32 * items).div_ceil(32 * warps));

    let mut sa = SharedMemory::<F>::new(comptime!((warps * 32) as usize));
    let mut sb = SharedMemory::<F>::new(comptime!((warps * 32) as usize));
    let mut q_run = SharedMemory::<F>::new(comptime!((warps * 64) as usize));
    let mut p_run = SharedMemory::<F>::new(comptime!((warps * 64) as usize));
    let mut da_acc = SharedMemory::<F>::new(comptime!((warps * 64) as usize));
    let mut st_b = SharedMemory::<F>::new(comptime!(2 * stage));
    let mut st_c = SharedMemory::<F>::new(comptime!(2 * stage));
    let mut red_b = SharedMemory::<F>::new(comptime!(warps as usize * stage));
    let mut red_c = SharedMemory::<F>::new(comptime!(warps as usize * stage));
    let mut spos = SharedMemory::<u32>::new(comptime!((32 * items) as usize));

    let mut n0 = lane;
    while n0 < n_state {
        let slot = (warp * 64u32 + n0) as usize;
        q_run[slot] = if !aggregate && dims.segments > 1u32 {
            seg_suffix[((row * dims.segments + s) * n_state + n0) as usize]
        } else {
            F::new(0.0)
        };
        p_run[slot] = F::new(1.0);
        da_acc[slot] = F::new(0.0);
        n0 += 32u32;
    }
    sync_cube();

    let mut uu = Array::<F>::new(comptime!(items as usize));
    let mut dt = Array::<F>::new(comptime!(items as usize));
    let mut gy = Array::<F>::new(comptime!(items as usize));
    let mut gu = Array::<F>::new(comptime!(items as usize));
    let mut gdt = Array::<F>::new(comptime!(items as usize));
    let mut aa = Array::<F>::new(comptime!(items as usize));
    let mut hh = Array::<F>::new(comptime!(items as usize));
    let mut pf_b = Array::<F>::new(comptime!(per as usize));
    let mut pf_c = Array::<F>::new(comptime!(per as usize));
    let mut dd_acc = F::new(0.0);
    let mut dbias_acc = F::new(0.0);

    // The first segment's composed adjoint map is never used.
    let n_chunks = if aggregate {
        select(s == 0u32, 0u32, dims.seg_chunks)
    } else {
        dims.seg_chunks
    };
    for cr in 0..n_chunks {
        let c = dims.seg_chunks - 1u32 - cr;
        let t0 = seg_begin + c * chunk + lane * items;
        let mut cur = Cursor::new(paths, k, select(t0 < seg_end, t0, 0u32));
        #[unroll]
        for i in 0..items {
            let live = valid && t0 + i < seg_end;
            let p = cur.pos();
            if warp == 0u32 {
                spos[(lane * items + i) as usize] = select(t0 + i < seg_end, p, no_position());
            }
            let o = u_base + p as usize;
            let uv = if live { u[o] } else { F::new(0.0) };
            let g0 = if live { dout[o] } else { F::new(0.0) };
            let gv = if gate {
                let zv = if live { z[o] } else { F::new(0.0) };
                let sg = sigmoid_of::<F>(zv, fast_exp);
                if live && !aggregate {
                    dz[o] = g0 * merged[o] * sg * (F::new(1.0) + zv * (F::new(1.0) - sg));
                }
                g0 * zv * sg
            } else {
                g0 * scale
            };
            uu[i as usize] = uv;
            dt[i as usize] = if live {
                softplus_of::<F>(delta[dl_base + p as usize] + bs, fast_exp)
            } else {
                F::new(0.0)
            };
            gy[i as usize] = gv;
            gu[i as usize] = dsk * gv;
            gdt[i as usize] = F::new(0.0);
            dd_acc += gv * uv;
            if t0 + i + 1u32 < seg_end {
                cur.advance();
            }
        }
        sync_cube();
        #[unroll]
        for j in 0..per {
            let e = UNIT_POS + j * threads;
            let p = if e < chunk {
                spos[e as usize]
            } else {
                no_position()
            };
            let ok = p != no_position();
            let o = (bc_base * dims.len + p) as usize;
            if !aggregate {
                pf_b[j as usize] = if ok { b_mat[o] } else { F::new(0.0) };
            }
            pf_c[j as usize] = if ok { c_mat[o] } else { F::new(0.0) };
        }
        let gc = s * dims.seg_chunks + c;
        for n in 0..n_state {
            let buf = ((n % 2u32) as usize) * stage;
            #[unroll]
            for j in 0..per {
                let e = UNIT_POS + j * threads;
                if e < chunk {
                    if !aggregate {
                        st_b[buf + staged(e)] = pf_b[j as usize];
                    }
                    st_c[buf + staged(e)] = pf_c[j as usize];
                }
            }
            sync_cube();
            if n + 1u32 < n_state {
                #[unroll]
                for j in 0..per {
                    let e = UNIT_POS + j * threads;
                    let p = if e < chunk {
                        spos[e as usize]
                    } else {
                        no_position()
                    };
                    let ok = p != no_position();
                    let o = ((bc_base + n + 1u32) * dims.len + p) as usize;
                    if !aggregate {
                        pf_b[j as usize] = if ok { b_mat[o] } else { F::new(0.0) };
                    }
                    pf_c[j as usize] = if ok { c_mat[o] } else { F::new(0.0) };
                }
            }
            let an = a_mat[kd * n_state as usize + n as usize];
            let slot = (warp * 64u32 + n) as usize;
            let q_after = q_run[slot];
            // Forward recompute from the saved chunk-start state.
            let mut pa = F::new(1.0);
            let mut pb = F::new(0.0);
            #[unroll]
            for i in 0..items {
                let live = valid && t0 + i < seg_end;
                let av = if live {
                    exp_of::<F>(dt[i as usize] * an, fast_exp)
                } else {
                    F::new(1.0)
                };
                aa[i as usize] = av;
                if !aggregate {
                    let bv = if live {
                        dt[i as usize] * st_b[buf + staged(lane * items + i)] * uu[i as usize]
                    } else {
                        F::new(0.0)
                    };
                    pa = av * pa;
                    pb = av * pb + bv;
                    hh[i as usize] = bv;
                }
            }
            let mut h_in = F::new(0.0);
            if !aggregate {
                let (ea, eb, _ta, _tb) = warp_scan::<F>(pa, pb, &mut sa, &mut sb, false, plane);
                let start = if valid {
                    states[((row * dims.segments * dims.seg_chunks + gc) * n_state + n) as usize]
                } else {
                    F::new(0.0)
                };
                h_in = ea * start + eb;
                let mut h = h_in;
                #[unroll]
                for i in 0..items {
                    h = aa[i as usize] * h + hh[i as usize];
                    hh[i as usize] = h;
                }
            }
            // Adjoint: q_t = a_t·(c_t + q_{t+1}), composed from the right.
            let mut qa = F::new(1.0);
            let mut qb = F::new(0.0);
            #[unroll]
            for j in 0..items {
                let i = items - 1 - j;
                let cv = st_c[buf + staged(lane * items + i)] * gy[i as usize];
                qb = aa[i as usize] * (qb + cv);
                qa = aa[i as usize] * qa;
            }
            let (ea2, eb2, ta2, tb2) = warp_scan::<F>(qa, qb, &mut sa, &mut sb, true, plane);
            if !aggregate {
                let mut q = ea2 * q_after + eb2;
                let mut da = F::new(0.0);
                #[unroll]
                for j in 0..items {
                    let i = items - 1 - j;
                    let e = staged(lane * items + i);
                    let bv = st_b[buf + e];
                    let g = st_c[buf + e] * gy[i as usize] + q;
                    let qi = aa[i as usize] * g;
                    let hp = if i == 0 { h_in } else { hh[(i - 1) as usize] };
                    gu[i as usize] += g * dt[i as usize] * bv;
                    gdt[i as usize] += g * bv * uu[i as usize] + qi * hp * an;
                    da += qi * hp * dt[i as usize];
                    let r = (warp as usize) * stage + e;
                    red_b[r] = g * dt[i as usize] * uu[i as usize];
                    red_c[r] = gy[i as usize] * hh[i as usize];
                    q = qi;
                }
                let da_sum = warp_sum::<F>(da, &mut sa, plane);
                sync_cube();
                // Sum dB/dC over the cube's channels, one position per thread.
                let mut j = UNIT_POS;
                while j < chunk {
                    let p = spos[j as usize];
                    if p != no_position() {
                        let mut vb = F::new(0.0);
                        let mut vc = F::new(0.0);
                        #[unroll]
                        for w in 0..warps {
                            vb += red_b[(w as usize) * stage + staged(j)];
                            vc += red_c[(w as usize) * stage + staged(j)];
                        }
                        if atomics {
                            let o = ((bc_base + n) * dims.len + p) as usize;
                            db_sum[o].fetch_add(vb);
                            dc_sum[o].fetch_add(vc);
                        } else {
                            let o = ((part_base + n) * dims.len + p) as usize;
                            db_part[o] = vb;
                            dc_part[o] = vc;
                        }
                    }
                    j += threads;
                }
                if lane == 0u32 {
                    da_acc[slot] += da_sum;
                }
            }
            if plane {
                sync_plane();
            }
            if lane == 0u32 {
                q_run[slot] = ta2 * q_after + tb2;
                p_run[slot] = ta2 * p_run[slot];
            }
        }
        if !aggregate {
            let mut cur2 = Cursor::new(paths, k, select(t0 < seg_end, t0, 0u32));
            #[unroll]
            for i in 0..items {
                let p = cur2.pos();
                if valid && t0 + i < seg_end {
                    let rv = delta[dl_base + p as usize] + bs;
                    // softplus'(x) = σ(x), 1 above the threshold.
                    let gr = if rv > F::new(20.0) {
                        gdt[i as usize]
                    } else {
                        gdt[i as usize] * sigmoid_of::<F>(rv, fast_exp)
                    };
                    dbias_acc += gr;
                    du[out_base + p as usize] = gu[i as usize];
                    ddelta[out_base + p as usize] = gr;
                }
                if t0 + i + 1u32 < seg_end {
                    cur2.advance();
                }
            }
        }
    }
    sync_cube();
    if aggregate {
        if valid {
            let mut n1 = lane;
            while n1 < n_state {
                let slot = (warp * 64u32 + n1) as usize;
                let o = (((row * dims.segments + s) * n_state + n1) * 2u32) as usize;
                agg[o] = p_run[slot];
                agg[o + 1] = q_run[slot];
                n1 += 32u32;
            }
        }
    } else {
        let dd_sum = warp_sum::<F>(dd_acc, &mut sa, plane);
        let dbias_sum = warp_sum::<F>(dbias_acc, &mut sa, plane);
        if valid {
            if lane == 0u32 {
                dd_part[(row * dims.segments + s) as usize] = dd_sum;
                dbias_part[(row * dims.segments + s) as usize] = dbias_sum;
            }
            let mut n2 = lane;
            while n2 < n_state {
                da_part[((row * dims.segments + s) * n_state + n2) as usize] =
                    da_acc[(warp * 64u32 + n2) as usize];
                n2 += 32u32;
            }
        }
    }
}

/// Merge the per-path outputs `(B, K, Di, L)` into `(B, Di, L)`: sum times `scale`
/// (1 or 1/K); with a gate, also keep the merged value and multiply by silu(z).
#[cube(launch_unchecked)]
pub fn merge_fwd<F: Float>(
    y: &Array<F>,
    z: &Array<F>,
    merged: &mut Array<F>,
    out: &mut Array<F>,
    paths: u32,
    channels_len: u32,
    total: u32,
    scale: InputScalar,
    #[comptime] gate: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS as u32;
    if i < total {
        let b = i / channels_len;
        let r = i % channels_len;
        let mut acc = F::new(0.0);
        for k in 0..paths {
            acc += y[((b * paths + k) * channels_len + r) as usize];
        }
        let m = acc * scale.get::<F>();
        if gate {
            let zv = z[i as usize];
            merged[i as usize] = m;
            out[i as usize] = m * zv * math::sigmoid::<F>(zv);
        } else {
            out[i as usize] = m;
        }
    }
}

/// Backward of the merge: the gradient every path receives (`dout · silu(z) · scale`) and,
/// with a gate, `dz = dout · merged · silu'(z)`.
#[cube(launch_unchecked)]
pub fn merge_bwd<F: Float>(
    dout: &Array<F>,
    z: &Array<F>,
    merged: &Array<F>,
    dy: &mut Array<F>,
    dz: &mut Array<F>,
    total: u32,
    scale: InputScalar,
    #[comptime] gate: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS as u32;
    if i < total {
        let g = dout[i as usize];
        if gate {
            let zv = z[i as usize];
            let sg = math::sigmoid::<F>(zv);
            dy[i as usize] = g * zv * sg * scale.get::<F>();
            dz[i as usize] = g * merged[i as usize] * sg * (F::new(1.0) + zv * (F::new(1.0) - sg));
        } else {
            dy[i as usize] = g * scale.get::<F>();
        }
    }
}
