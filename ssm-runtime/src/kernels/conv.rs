//! Convolution kernels (1-D, 2-D and 3-D, unified to three spatial axes: lower ranks use
//! size-1 leading axes). Every kernel reads its operands through element strides, so
//! channels-first `[N, C, D, H, W]` and channels-last `[N, D, H, W, C]` tensors (or any other
//! strided view) are read in place; outputs are written contiguous in the requested layout.
//!
//! Three families:
//! - **direct** (`conv_direct`, `conv_wgrad_direct`): one thread per output element
//!   looping over its window (or, for the weight gradient, one cube per weight element
//!   and chunk of positions). Memory-bound and exact for depthwise and other thin groups.
//! - **implicit GEMM** (`conv_gemm`, `conv_wgrad_gemm`): shared-memory tiles with register
//!   blocking on CUDA cores, full f32/f64 precision. The im2col matrix is never built:
//!   each tile gathers its input patch straight from the activation. Forward and
//!   backward-data are the same kernel (`transposed` reads the output gradient through
//!   the transposed index map `(o + pad − t·dil) / stride`); the weight gradient reduces
//!   over positions, split across cubes, with a second pass summing the splits.
//! - `cubek-convolution` (tensor cores, TF32 for f32 operands) for dense channels-last
//!   problems when the caller allows TF32; see `ops::conv`.
//!
//! Geometry is passed as one [`ConvGeo`] launch struct of `i32`s (tensors are limited to
//! 2³¹ elements by the caller).

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::{ELEMWISE_CUBE, elemwise_grid};
use crate::kernels::split_sum::split_sum;
use crate::tensor::Tensor as SsmTensor;

/// Geometry of a convolution-like launch. "src" is the operand gathered through the window
/// (the input for forward, the output gradient for backward-data), "dst" the tensor whose
/// positions the kernel iterates (the output for forward, the input gradient for
/// backward-data). Strides are in elements, per (batch, channel, d, h, w).
#[derive(CubeType, CubeLaunch, Clone, Copy, Debug)]
pub struct ConvGeo {
    /// src spatial sizes.
    pub src_d: i32,
    pub src_h: i32,
    pub src_w: i32,
    /// src strides.
    pub ss_n: i32,
    pub ss_c: i32,
    pub ss_d: i32,
    pub ss_h: i32,
    pub ss_w: i32,
    /// dst spatial sizes.
    pub dst_d: i32,
    pub dst_h: i32,
    pub dst_w: i32,
    /// dst strides.
    pub sd_n: i32,
    pub sd_c: i32,
    pub sd_d: i32,
    pub sd_h: i32,
    pub sd_w: i32,
    /// Kernel window.
    pub k_d: i32,
    pub k_h: i32,
    pub k_w: i32,
    /// Weight strides: per dst channel, per reduced (src) channel, per tap.
    pub sw_o: i32,
    pub sw_i: i32,
    pub sw_d: i32,
    pub sw_h: i32,
    pub sw_w: i32,
    /// Weight offset from one group to the next.
    pub w_group: i32,
    /// Convolution stride, padding before, dilation.
    pub st_d: i32,
    pub st_h: i32,
    pub st_w: i32,
    pub pad_d: i32,
    pub pad_h: i32,
    pub pad_w: i32,
    pub dil_d: i32,
    pub dil_h: i32,
    pub dil_w: i32,
    /// src channels per group (reduced), dst channels per group, groups, batch.
    pub c_red: i32,
    pub c_out: i32,
    pub groups: i32,
    pub batch: i32,
}

/// Host-side copy of [`ConvGeo`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Geo {
    pub src: [i32; 3],
    pub ss: [i32; 5],
    pub dst: [i32; 3],
    pub sd: [i32; 5],
    pub k: [i32; 3],
    pub sw: [i32; 5],
    pub w_group: i32,
    pub stride: [i32; 3],
    pub pad: [i32; 3],
    pub dil: [i32; 3],
    pub c_red: i32,
    pub c_out: i32,
    pub groups: i32,
    pub batch: i32,
}

impl Geo {
    pub(crate) fn launch<R: Runtime>(&self) -> ConvGeoLaunch<R> {
        ConvGeoLaunch::new(
            self.src[0],
            self.src[1],
            self.src[2],
            self.ss[0],
            self.ss[1],
            self.ss[2],
            self.ss[3],
            self.ss[4],
            self.dst[0],
            self.dst[1],
            self.dst[2],
            self.sd[0],
            self.sd[1],
            self.sd[2],
            self.sd[3],
            self.sd[4],
            self.k[0],
            self.k[1],
            self.k[2],
            self.sw[0],
            self.sw[1],
            self.sw[2],
            self.sw[3],
            self.sw[4],
            self.w_group,
            self.stride[0],
            self.stride[1],
            self.stride[2],
            self.pad[0],
            self.pad[1],
            self.pad[2],
            self.dil[0],
            self.dil[1],
            self.dil[2],
            self.c_red,
            self.c_out,
            self.groups,
            self.batch,
        )
    }

    pub(crate) fn dst_positions(&self) -> usize {
        (self.batch * self.dst[0] * self.dst[1] * self.dst[2]) as usize
    }
}

/// The src coordinate read by dst coordinate `o` at tap `t`, or −1 outside the src.
/// Forward: `o·stride − pad + t·dil`. Transposed (backward-data): the `s` with
/// `s·stride − pad + t·dil = o`, when it exists.
#[cube]
pub(crate) fn src_coord(
    o: i32,
    t: i32,
    st: i32,
    pad: i32,
    dil: i32,
    size: i32,
    #[comptime] transposed: bool,
) -> i32 {
    if transposed {
        let num = o + pad - t * dil;
        let q = num / st;
        select(num >= 0 && q * st == num && q < size, q, -1i32)
    } else {
        let s = o * st - pad + t * dil;
        select(s >= 0 && s < size, s, -1i32)
    }
}

/// Split a flat position index into (n, d, h, w) over sizes (d, h, w).
#[cube]
pub(crate) fn split_pos(p: i32, d: i32, h: i32, w: i32) -> (i32, i32, i32, i32) {
    let ow = p % w;
    let r = p / w;
    let oh = r % h;
    let r2 = r / h;
    (r2 / d, r2 % d, oh, ow)
}

/// Direct convolution: one thread per dst element (dst contiguous in its layout).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_direct<F: Float>(
    src: &Array<F>,
    w: &Array<F>,
    bias: &Array<F>,
    dst: &mut Array<F>,
    src_off: i32,
    w_off: i32,
    g: ConvGeo,
    total: usize,
    #[comptime] has_bias: bool,
    #[comptime] channels_last: bool,
    #[comptime] transposed: bool,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let c_total = g.c_out * g.groups;
        let ii = i32::cast_from(i);
        let (c, p) = if channels_last {
            (ii % c_total, ii / c_total)
        } else {
            let spatial = g.dst_d * g.dst_h * g.dst_w;
            let s = ii % spatial;
            let r = ii / spatial;
            (r % c_total, (r / c_total) * spatial + s)
        };
        let (n, od, oh, ow) = split_pos(p, g.dst_d, g.dst_h, g.dst_w);
        let grp = c / g.c_out;
        let mut acc = if has_bias {
            bias[usize::cast_from(c)]
        } else {
            F::new(0.0)
        };
        let src_n = src_off + n * g.ss_n + grp * g.c_red * g.ss_c;
        let w_c = w_off + grp * g.w_group + (c % g.c_out) * g.sw_o;
        for td in 0..g.k_d {
            let sd = src_coord(od, td, g.st_d, g.pad_d, g.dil_d, g.src_d, transposed);
            if sd >= 0 {
                for th in 0..g.k_h {
                    let sh = src_coord(oh, th, g.st_h, g.pad_h, g.dil_h, g.src_h, transposed);
                    if sh >= 0 {
                        for tw in 0..g.k_w {
                            let sw =
                                src_coord(ow, tw, g.st_w, g.pad_w, g.dil_w, g.src_w, transposed);
                            if sw >= 0 {
                                let s_off = src_n + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w;
                                let w_tap = w_c + td * g.sw_d + th * g.sw_h + tw * g.sw_w;
                                for ci in 0..g.c_red {
                                    acc += src[usize::cast_from(s_off + ci * g.ss_c)]
                                        * w[usize::cast_from(w_tap + ci * g.sw_i)];
                                }
                            }
                        }
                    }
                }
            }
        }
        dst[i] = acc;
    }
}

/// Weight gradient, direct: one cube per (weight element, chunk of positions); partial sums
/// go to `out[item]` and a reduction over chunks finishes the sum. src = input x (strides
/// `ss`), dst = output gradient dy (strides `sd`), weight element `e` is row-major
/// `[c_out·groups, c_red, k_d, k_h, k_w]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_wgrad_direct<F: Float>(
    src: &Array<F>,
    dy: &Array<F>,
    out: &mut Array<F>,
    src_off: i32,
    dy_off: i32,
    g: ConvGeo,
    n_items: usize,
    n_chunks: i32,
    chunk_len: i32,
    #[comptime] block: usize,
    #[define(F)] _d: StorageType,
) {
    let item = CUBE_POS;
    if item < n_items {
        let it = i32::cast_from(item);
        let chunk = it % n_chunks;
        let e = it / n_chunks;
        let taps = g.k_d * g.k_h * g.k_w;
        let tap = e % taps;
        let ci = (e / taps) % g.c_red;
        let co = e / (taps * g.c_red);
        let tw = tap % g.k_w;
        let th = (tap / g.k_w) % g.k_h;
        let td = tap / (g.k_w * g.k_h);
        let grp = co / g.c_out;
        let positions = g.batch * g.dst_d * g.dst_h * g.dst_w;
        let start = chunk * chunk_len;
        let end = select(start + chunk_len < positions, start + chunk_len, positions);
        let src_c = src_off + (grp * g.c_red + ci) * g.ss_c;
        let dy_c = dy_off + co * g.sd_c;
        let mut acc = F::new(0.0);
        let mut p = start + i32::cast_from(UNIT_POS);
        while p < end {
            let (n, od, oh, ow) = split_pos(p, g.dst_d, g.dst_h, g.dst_w);
            let sd = src_coord(od, td, g.st_d, g.pad_d, g.dil_d, g.src_d, false);
            let sh = src_coord(oh, th, g.st_h, g.pad_h, g.dil_h, g.src_h, false);
            let sw = src_coord(ow, tw, g.st_w, g.pad_w, g.dil_w, g.src_w, false);
            if sd >= 0 && sh >= 0 && sw >= 0 {
                acc += src[usize::cast_from(
                    src_c + n * g.ss_n + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w,
                )] * dy
                    [usize::cast_from(dy_c + n * g.sd_n + od * g.sd_d + oh * g.sd_h + ow * g.sd_w)];
            }
            p += i32::cast_from(block);
        }
        let mut sm = SharedMemory::<F>::new(block);
        let t = UNIT_POS as usize;
        sm[t] = acc;
        sync_cube();
        let mut half = (CUBE_DIM / 2) as usize;
        while half > 0 {
            if t < half {
                sm[t] = sm[t] + sm[t + half];
            }
            sync_cube();
            half /= 2;
        }
        if t == 0 {
            out[item] = sm[0];
        }
    }
}

/// Write this thread's staged registers into a shared tile at `(kl·stride + ml)`; slots
/// with `kl < 0` are unused.
#[cube]
fn store_tile<F: Float>(
    sm: &mut SharedMemory<F>,
    regs: &Array<F>,
    kl: &Array<i32>,
    ml: &Array<i32>,
    #[comptime] stride: usize,
    #[comptime] n: usize,
) {
    #[unroll]
    for r in 0..n {
        let k = kl[r];
        if k >= 0 {
            let idx = usize::cast_from(k) * stride + usize::cast_from(ml[r]);
            sm[idx] = regs[r];
        }
    }
}

/// Register-tile FMA over one shared-memory stage: `acc[i][j] += Σ_k a[k][row i]·b[k][col j]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_fma<F: Float>(
    a_s: &SharedMemory<F>,
    b_s: &SharedMemory<F>,
    acc: &mut Array<F>,
    row0: usize,
    col0: usize,
    #[comptime] a_stride: usize,
    #[comptime] b_stride: usize,
    #[comptime] bk: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] tx: usize,
) {
    let mut a_r = Array::<F>::new(tm);
    let mut b_r = Array::<F>::new(tn);
    #[unroll]
    for kk in 0..bk {
        #[unroll]
        for i in 0..tm {
            a_r[i] = a_s[kk * a_stride + row0 + i];
        }
        #[unroll]
        for j in 0..tn {
            b_r[j] = b_s[kk * b_stride + col0 + j * tx];
        }
        #[unroll]
        for i in 0..tm {
            #[unroll]
            for j in 0..tn {
                acc[i * tn + j] += a_r[i] * b_r[j];
            }
        }
    }
}

/// Fetch stage `st` (tap `st / n_c`, channels `(st % n_c)·bk ..`) of the src and weight
/// tiles into registers; gather addresses are recomputed when a new tap starts.
#[cube]
#[allow(clippy::too_many_arguments)]
fn gemm_load<F: Float>(
    src: &Array<F>,
    w: &Array<F>,
    g: &ConvGeo,
    st: i32,
    n_c: i32,
    w_grp: i32,
    n0: i32,
    tid: usize,
    a_kl: &Array<i32>,
    a_base: &Array<i32>,
    a_d: &Array<i32>,
    a_h: &Array<i32>,
    a_w: &Array<i32>,
    a_addr: &mut Array<i32>,
    a_reg: &mut Array<F>,
    b_reg: &mut Array<F>,
    #[comptime] threads: usize,
    #[comptime] bk: usize,
    #[comptime] bn: usize,
    #[comptime] ra: usize,
    #[comptime] rb: usize,
    #[comptime] transposed: bool,
) {
    let tap = st / n_c;
    let c0 = (st % n_c) * i32::cast_from(bk);
    let tw = tap % g.k_w;
    let th = (tap / g.k_w) % g.k_h;
    let td = tap / (g.k_w * g.k_h);
    if c0 == 0i32 {
        #[unroll]
        for r in 0..ra {
            let sd = src_coord(a_d[r], td, g.st_d, g.pad_d, g.dil_d, g.src_d, transposed);
            let sh = src_coord(a_h[r], th, g.st_h, g.pad_h, g.dil_h, g.src_h, transposed);
            let sw = src_coord(a_w[r], tw, g.st_w, g.pad_w, g.dil_w, g.src_w, transposed);
            a_addr[r] = select(
                a_base[r] >= 0 && sd >= 0 && sh >= 0 && sw >= 0,
                a_base[r] + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w,
                -1i32,
            );
        }
    }
    #[unroll]
    for r in 0..ra {
        let c = c0 + a_kl[r];
        a_reg[r] = if a_addr[r] >= 0 && c < g.c_red {
            src[usize::cast_from(a_addr[r] + c * g.ss_c)]
        } else {
            F::new(0.0)
        };
    }
    let w_tap = w_grp + td * g.sw_d + th * g.sw_h + tw * g.sw_w;
    #[unroll]
    for r in 0..rb {
        let e = i32::cast_from(tid + r * threads);
        let kl = e % i32::cast_from(bk);
        let col = n0 + e / i32::cast_from(bk);
        let c = c0 + kl;
        b_reg[r] = if e < i32::cast_from(bn * bk) && col < g.c_out && c < g.c_red {
            w[usize::cast_from(w_tap + col * g.sw_o + c * g.sw_i)]
        } else {
            F::new(0.0)
        };
    }
}

/// Implicit-GEMM convolution (forward, or backward-data with `transposed`):
/// `dst[m, col] = Σ_{tap, c} src[gather(m, tap), c] · w[col, c, tap]` with m the dst
/// positions, col the dst channels of one group, tiles of `bm = ty·tm` positions ×
/// `bn = tx·tn` channels per cube (`tx·ty` threads), `bk` channels per stage. Taps are the
/// outer reduction loop, so each thread computes its gather addresses once per tap.
///
/// src loads are coalesced along positions (channels-first src) or channels (channels-last
/// src). Grid: x·y = position tiles, z = groups × channel tiles.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_gemm<F: Float>(
    src: &Array<F>,
    w: &Array<F>,
    bias: &Array<F>,
    dst: &mut Array<F>,
    src_off: i32,
    w_off: i32,
    g: ConvGeo,
    n_tiles: u32,
    k_splits: u32,
    dst_split: i32,
    #[comptime] tx: usize,
    #[comptime] ty: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] bk: usize,
    #[comptime] has_bias: bool,
    #[comptime] src_channels_last: bool,
    #[comptime] transposed: bool,
    #[define(F)] _d: StorageType,
) {
    let threads = comptime!(tx * ty);
    let bm = comptime!(ty * tm);
    let bn = comptime!(tx * tn);
    // Padded smem rows avoid bank conflicts on the transposed stores.
    let a_stride = comptime!(bm + 1);
    let b_stride = comptime!(bn + 1);
    let ra = comptime!((bm * bk).div_ceil(tx * ty));
    let rb = comptime!((bn * bk).div_ceil(tx * ty));

    let tid = UNIT_POS as usize;
    let t_col = tid % tx;
    let t_row = tid / tx;
    let m_tile = CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X;
    let split = CUBE_POS_Z % k_splits;
    let zr = CUBE_POS_Z / k_splits;
    let grp = i32::cast_from(zr / n_tiles);
    let n_tile = zr % n_tiles;
    let m_total = g.batch * g.dst_d * g.dst_h * g.dst_w;
    let m0 = i32::cast_from(m_tile) * i32::cast_from(bm);
    let n0 = i32::cast_from(n_tile) * i32::cast_from(bn);

    let mut a_s = SharedMemory::<F>::new(bk * a_stride);
    let mut b_s = SharedMemory::<F>::new(bk * b_stride);
    let mut acc = Array::<F>::new(tm * tn);
    #[unroll]
    for i in 0..tm * tn {
        acc[i] = F::new(0.0);
    }

    // The src elements this thread loads: element e = tid + r·threads of the bk × bm tile.
    // (m_local, k_local) per r; positions decomposed once.
    let mut a_ml = Array::<i32>::new(ra);
    let mut a_kl = Array::<i32>::new(ra);
    let mut a_base = Array::<i32>::new(ra);
    let mut a_d = Array::<i32>::new(ra);
    let mut a_h = Array::<i32>::new(ra);
    let mut a_w = Array::<i32>::new(ra);
    let mut a_addr = Array::<i32>::new(ra);
    #[unroll]
    for r in 0..ra {
        let e = i32::cast_from(tid + r * threads);
        let (ml, kl) = if src_channels_last {
            (e / i32::cast_from(bk), e % i32::cast_from(bk))
        } else {
            (e % i32::cast_from(bm), e / i32::cast_from(bm))
        };
        let in_tile = e < i32::cast_from(bm * bk);
        a_ml[r] = ml;
        a_kl[r] = select(in_tile, kl, -1i32);
        let m = m0 + ml;
        let (n, od, oh, ow) = split_pos(m, g.dst_d, g.dst_h, g.dst_w);
        a_base[r] = select(
            m < m_total && in_tile,
            src_off + n * g.ss_n + grp * g.c_red * g.ss_c,
            -1i32,
        );
        a_d[r] = od;
        a_h[r] = oh;
        a_w[r] = ow;
        a_addr[r] = -1i32;
    }
    // Weight tile slots (k_local, n_local) of this thread.
    let mut b_kl = Array::<i32>::new(rb);
    let mut b_nl = Array::<i32>::new(rb);
    #[unroll]
    for r in 0..rb {
        let e = i32::cast_from(tid + r * threads);
        b_kl[r] = select(e < i32::cast_from(bn * bk), e % i32::cast_from(bk), -1i32);
        b_nl[r] = e / i32::cast_from(bk);
    }
    let w_grp = w_off + grp * g.w_group;
    let bki = i32::cast_from(bk);
    let n_c = (g.c_red + bki - 1) / bki;
    // Split-K over taps: split `split` reduces taps [t0, t1) into its own output slice.
    let taps = g.k_d * g.k_h * g.k_w;
    let ks = i32::cast_from(k_splits);
    let taps_per = (taps + ks - 1) / ks;
    let si = i32::cast_from(split);
    let t0 = si * taps_per;
    let t1 = select(t0 + taps_per < taps, t0 + taps_per, taps);
    let s_begin = t0 * n_c;
    let n_stages = t1 * n_c;
    let mut a_reg = Array::<F>::new(ra);
    let mut b_reg = Array::<F>::new(rb);

    // Software pipeline: stage s + 1 is fetched from global memory into registers while
    // stage s is multiplied out of shared memory.
    gemm_load::<F>(
        src,
        w,
        &g,
        s_begin,
        n_c,
        w_grp,
        n0,
        tid,
        &a_kl,
        &a_base,
        &a_d,
        &a_h,
        &a_w,
        &mut a_addr,
        &mut a_reg,
        &mut b_reg,
        threads,
        bk,
        bn,
        ra,
        rb,
        transposed,
    );
    let mut s = s_begin;
    while s < n_stages {
        store_tile::<F>(&mut a_s, &a_reg, &a_kl, &a_ml, a_stride, ra);
        store_tile::<F>(&mut b_s, &b_reg, &b_kl, &b_nl, b_stride, rb);
        sync_cube();
        if s + 1 < n_stages {
            gemm_load::<F>(
                src,
                w,
                &g,
                s + 1,
                n_c,
                w_grp,
                n0,
                tid,
                &a_kl,
                &a_base,
                &a_d,
                &a_h,
                &a_w,
                &mut a_addr,
                &mut a_reg,
                &mut b_reg,
                threads,
                bk,
                bn,
                ra,
                rb,
                transposed,
            );
        }
        stage_fma::<F>(
            &a_s,
            &b_s,
            &mut acc,
            t_row * tm,
            t_col,
            a_stride,
            b_stride,
            bk,
            tm,
            tn,
            tx,
        );
        sync_cube();
        s += 1i32;
    }

    #[unroll]
    for i in 0..tm {
        let m = m0 + i32::cast_from(t_row * tm + i);
        if m < m_total {
            let (n, od, oh, ow) = split_pos(m, g.dst_d, g.dst_h, g.dst_w);
            let base = n * g.sd_n + od * g.sd_d + oh * g.sd_h + ow * g.sd_w;
            #[unroll]
            for j in 0..tn {
                let col = n0 + i32::cast_from(t_col + j * tx);
                if col < g.c_out {
                    let c = grp * g.c_out + col;
                    // The bias goes into the first split only.
                    let b = if has_bias {
                        select(si == 0i32, bias[usize::cast_from(c)], F::new(0.0))
                    } else {
                        F::new(0.0)
                    };
                    dst[usize::cast_from(si * dst_split + base + c * g.sd_c)] = acc[i * tn + j] + b;
                }
            }
        }
    }
}

/// Fetch one weight-gradient stage (dst row `row`, positions `ow0 .. ow0 + bk` along w)
/// of the output-gradient and gathered-input tiles into registers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn wgrad_load<F: Float>(
    src: &Array<F>,
    dy: &Array<F>,
    g: &ConvGeo,
    row: i32,
    ow0: i32,
    dy_grp: i32,
    a_kl: &Array<i32>,
    a_ml: &Array<i32>,
    b_kl: &Array<i32>,
    b_c: &Array<i32>,
    b_d: &Array<i32>,
    b_h: &Array<i32>,
    b_w: &Array<i32>,
    a_reg: &mut Array<F>,
    b_reg: &mut Array<F>,
    #[comptime] bk: usize,
    #[comptime] ra: usize,
    #[comptime] rb: usize,
) {
    let _ = bk;
    let oh = row % g.dst_h;
    let od = (row / g.dst_h) % g.dst_d;
    let n = row / (g.dst_h * g.dst_d);
    let dy_row = dy_grp + n * g.sd_n + od * g.sd_d + oh * g.sd_h;
    let src_n = n * g.ss_n;
    let id0 = od * g.st_d;
    let ih0 = oh * g.st_h;
    #[unroll]
    for r in 0..ra {
        let kl = a_kl[r];
        let ow = ow0 + kl;
        a_reg[r] = if kl >= 0 && ow < g.dst_w {
            dy[usize::cast_from(dy_row + a_ml[r] * g.sd_c + ow * g.sd_w)]
        } else {
            F::new(0.0)
        };
    }
    #[unroll]
    for r in 0..rb {
        let kl = b_kl[r];
        let ow = ow0 + kl;
        let sd = id0 + b_d[r];
        let sh = ih0 + b_h[r];
        let sw = ow * g.st_w + b_w[r];
        let ok = kl >= 0
            && ow < g.dst_w
            && sd >= 0
            && sd < g.src_d
            && sh >= 0
            && sh < g.src_h
            && sw >= 0
            && sw < g.src_w;
        b_reg[r] = if ok {
            src[usize::cast_from(b_c[r] + src_n + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w)]
        } else {
            F::new(0.0)
        };
    }
}

/// Implicit-GEMM weight gradient: `dw[co, c, tap] = Σ_pos dy[pos, co] · x[gather(pos, tap), c]`
/// with rows = output channels of one group (`bm = ty·tm`), columns = (tap, input channel)
/// pairs (`bn = tx·tn`), and the reduction over positions walked one dst row `(n, d, h)`
/// at a time in chunks of `bk` along w. Each split (grid z, together with the group) sums a
/// contiguous range of rows into its own slice of `out` = `[splits, c_out·groups, c_red,
/// taps]`. src = x (strides `ss`), dst = dy (strides `sd`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn conv_wgrad_gemm<F: Float>(
    src: &Array<F>,
    dy: &Array<F>,
    out: &mut Array<F>,
    src_off: i32,
    dy_off: i32,
    g: ConvGeo,
    splits: i32,
    rows_per_split: i32,
    #[comptime] tx: usize,
    #[comptime] ty: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] bk: usize,
    #[comptime] dy_channels_last: bool,
    #[comptime] src_channels_last: bool,
    #[define(F)] _d: StorageType,
) {
    let threads = comptime!(tx * ty);
    let bm = comptime!(ty * tm);
    let bn = comptime!(tx * tn);
    let a_stride = comptime!(bm + 1);
    let b_stride = comptime!(bn + 1);
    let ra = comptime!((bm * bk).div_ceil(tx * ty));
    let rb = comptime!((bn * bk).div_ceil(tx * ty));
    let bki = i32::cast_from(bk);

    let tid = UNIT_POS as usize;
    let t_col = tid % tx;
    let t_row = tid / tx;
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

    let mut a_s = SharedMemory::<F>::new(bk * a_stride);
    let mut b_s = SharedMemory::<F>::new(bk * b_stride);
    let mut acc = Array::<F>::new(tm * tn);
    #[unroll]
    for i in 0..tm * tn {
        acc[i] = F::new(0.0);
    }

    // dy tile (bk positions × bm channels): fixed (k_local, m_local) per r.
    let mut a_kl = Array::<i32>::new(ra);
    let mut a_ml = Array::<i32>::new(ra);
    #[unroll]
    for r in 0..ra {
        let e = i32::cast_from(tid + r * threads);
        let (kl, ml) = if dy_channels_last {
            (e / i32::cast_from(bm), e % i32::cast_from(bm))
        } else {
            (e % bki, e / bki)
        };
        let ok = e < i32::cast_from(bm * bk) && m0 + ml < g.c_out;
        a_kl[r] = select(ok, kl, -1i32);
        a_ml[r] = ml;
    }
    // x tile (bk positions × bn (tap, channel) columns): fixed columns per r, decomposed once.
    let mut b_kl = Array::<i32>::new(rb);
    let mut b_nl = Array::<i32>::new(rb);
    let mut b_c = Array::<i32>::new(rb);
    let mut b_d = Array::<i32>::new(rb);
    let mut b_h = Array::<i32>::new(rb);
    let mut b_w = Array::<i32>::new(rb);
    #[unroll]
    for r in 0..rb {
        let e = i32::cast_from(tid + r * threads);
        let (kl, nl) = if src_channels_last {
            (e / i32::cast_from(bn), e % i32::cast_from(bn))
        } else {
            (e % bki, e / bki)
        };
        let col = n0 + nl;
        let ok = e < i32::cast_from(bn * bk) && col < n_cols;
        // Columns are ordered (tap, channel), channel fastest.
        let c = col % g.c_red;
        let tap = col / g.c_red;
        b_kl[r] = select(ok, kl, -1i32);
        b_nl[r] = nl;
        b_c[r] = src_off + (grp * g.c_red + c) * g.ss_c;
        b_d[r] = (tap / (g.k_h * g.k_w)) * g.dil_d - g.pad_d;
        b_h[r] = ((tap / g.k_w) % g.k_h) * g.dil_h - g.pad_h;
        b_w[r] = (tap % g.k_w) * g.dil_w - g.pad_w;
    }
    let dy_grp = dy_off + (grp * g.c_out + m0) * g.sd_c;
    let n_w = (g.dst_w + bki - 1) / bki;
    let n_stages = (row_end - row_start) * n_w;
    let mut a_reg = Array::<F>::new(ra);
    let mut b_reg = Array::<F>::new(rb);
    wgrad_load::<F>(
        src, dy, &g, row_start, 0i32, dy_grp, &a_kl, &a_ml, &b_kl, &b_c, &b_d, &b_h, &b_w,
        &mut a_reg, &mut b_reg, bk, ra, rb,
    );
    let mut s = i32::new(0);
    while s < n_stages {
        store_tile::<F>(&mut a_s, &a_reg, &a_kl, &a_ml, a_stride, ra);
        store_tile::<F>(&mut b_s, &b_reg, &b_kl, &b_nl, b_stride, rb);
        sync_cube();
        let s1 = s + 1;
        if s1 < n_stages {
            wgrad_load::<F>(
                src,
                dy,
                &g,
                row_start + s1 / n_w,
                (s1 % n_w) * bki,
                dy_grp,
                &a_kl,
                &a_ml,
                &b_kl,
                &b_c,
                &b_d,
                &b_h,
                &b_w,
                &mut a_reg,
                &mut b_reg,
                bk,
                ra,
                rb,
            );
        }
        stage_fma::<F>(
            &a_s,
            &b_s,
            &mut acc,
            t_row * tm,
            t_col,
            a_stride,
            b_stride,
            bk,
            tm,
            tn,
            tx,
        );
        sync_cube();
        s += 1i32;
    }

    // out[split, co, c, tap] (row-major [splits, c_out·groups, c_red, taps]).
    let co_total = g.c_out * g.groups;
    #[unroll]
    for i in 0..tm {
        let co = m0 + i32::cast_from(t_row * tm + i);
        if co < g.c_out {
            let row_base = ((split * co_total) + grp * g.c_out + co) * n_cols;
            #[unroll]
            for j in 0..tn {
                let col = n0 + i32::cast_from(t_col + j * tx);
                if col < n_cols {
                    let c = col % g.c_red;
                    let tap = col / g.c_red;
                    out[usize::cast_from(row_base + c * taps + tap)] = acc[i * tn + j];
                }
            }
        }
    }
}

// ---- launch helpers ------------------------------------------------------------------------

/// Direct convolution into the fresh contiguous `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn direct(
    src: &SsmTensor,
    w: &SsmTensor,
    bias: Option<&SsmTensor>,
    dst: &SsmTensor,
    geo: &Geo,
    channels_last: bool,
    transposed: bool,
) {
    let total = dst.numel();
    if total == 0 {
        return;
    }
    let dtype = src.dtype.storage();
    let bias_t = bias.unwrap_or(w);
    dispatch!(src.device, c => {
        let (count, dim) = elemwise_grid(c, total);
        record_launch();
        unsafe {
            conv_direct::launch_unchecked(
                c, count, dim,
                src.array_arg(src.buffer_len()),
                w.array_arg(w.buffer_len()),
                bias_t.array_arg(bias_t.buffer_len()),
                dst.array_arg(total),
                src.offset as i32,
                w.offset as i32,
                geo.launch(),
                total,
                bias.is_some(),
                channels_last,
                transposed,
                dtype,
            )
        }
    })
}

/// Direct weight gradient: returns partial sums `[n_weights, n_chunks]`.
pub(crate) fn wgrad_direct(
    x: &SsmTensor,
    dy: &SsmTensor,
    geo: &Geo,
    n_weights: usize,
) -> SsmTensor {
    let positions = geo.dst_positions();
    let block = positions
        .next_power_of_two()
        .clamp(32, ELEMWISE_CUBE as usize);
    let target = 2048usize;
    let n_chunks = if n_weights < target && positions > 8 * block {
        (target / n_weights).clamp(1, positions.div_ceil(4 * block))
    } else {
        1
    };
    let chunk_len = positions.div_ceil(n_chunks);
    let items = n_weights * n_chunks;
    let out = SsmTensor::empty(&[n_weights, n_chunks], x.dtype, &x.device);
    let dtype = x.dtype.storage();
    dispatch!(x.device, c => {
        let dim = CubeDim::new_1d(block as u32);
        let count = cubecl::calculate_cube_count_elemwise(c, items * block, dim);
        record_launch();
        unsafe {
            conv_wgrad_direct::launch_unchecked(
                c, count, dim,
                x.array_arg(x.buffer_len()),
                dy.array_arg(dy.buffer_len()),
                out.array_arg(items),
                x.offset as i32,
                dy.offset as i32,
                geo.launch(),
                items,
                n_chunks as i32,
                chunk_len as i32,
                block,
                dtype,
            )
        }
    });
    out
}

/// Register-tile shape of an implicit-GEMM launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TileCfg {
    pub tx: usize,
    pub ty: usize,
    pub tm: usize,
    pub tn: usize,
    pub bk: usize,
}

/// Tap splits (split-K) of a forward/backward-data GEMM with `cubes` output tiles: enough
/// to reach about `target` cubes, at most 8, and every split covers at least one tap.
pub(crate) fn tap_splits(cubes: usize, taps: usize, target: usize) -> usize {
    let k_splits = target.div_ceil(cubes).clamp(1, taps.min(8));
    let taps_per = taps.div_ceil(k_splits);
    taps.div_ceil(taps_per)
}

/// (x, y) cube counts covering `m_tiles` position tiles within the device's x limit `max_x`.
pub(crate) fn position_grid(m_tiles: usize, max_x: u32) -> (u32, u32) {
    let max_x = max_x.clamp(1, 65_535) as usize;
    if m_tiles <= max_x {
        (m_tiles as u32, 1)
    } else {
        (max_x as u32, m_tiles.div_ceil(max_x) as u32)
    }
}

/// The `k_splits` partial outputs of a split-K GEMM (`[k_splits · numel]`) summed into
/// `dst_shape`.
pub(crate) fn sum_tap_splits(out: SsmTensor, k_splits: usize, dst_shape: &[usize]) -> SsmTensor {
    let shape = [&[k_splits][..], dst_shape].concat();
    let out = out.reshape(&shape).expect("same numel");
    if k_splits == 1 {
        out.reshape(dst_shape).expect("same numel")
    } else {
        split_sum(&out, dst_shape, None)
    }
}

/// Row splits of a weight-gradient GEMM with `tiles` output tiles: (splits, rows per split),
/// enough splits to reach about `target` cubes but at least 64 stages of `bk` positions
/// along w per split; every split covers at least one row.
pub(crate) fn row_splits(geo: &Geo, bk: usize, tiles: usize, target: usize) -> (usize, usize) {
    let rows = (geo.batch * geo.dst[0] * geo.dst[1]) as usize;
    let stages_per_row = (geo.dst[2] as usize).div_ceil(bk);
    let min_rows = 64usize.div_ceil(stages_per_row).max(1);
    let splits = target
        .div_ceil(tiles)
        .clamp(1, rows.div_ceil(min_rows).max(1));
    let rows_per_split = rows.div_ceil(splits);
    let splits = rows.div_ceil(rows_per_split.max(1)).max(1);
    (splits, rows_per_split)
}

/// Tile for the forward/backward-data GEMM: 128 positions × a channel tile fitted to the
/// channel count (least padding, then widest).
pub(crate) fn gemm_tile(c_out: usize) -> TileCfg {
    let options = [(8, 2), (8, 4), (8, 6), (16, 4), (16, 6), (16, 8)];
    let (tx, tn) = options
        .iter()
        .copied()
        .min_by_key(|&(tx, tn)| {
            let bn = tx * tn;
            let tiles = c_out.div_ceil(bn);
            (tiles * bn - c_out, tiles, usize::MAX - bn)
        })
        .expect("options");
    TileCfg {
        tx,
        ty: 16,
        tm: 8,
        tn,
        bk: 8,
    }
}

/// Implicit-GEMM forward or backward-data: returns the contiguous `dst_shape` tensor (whose
/// strides are `geo.sd`). When the tiles alone cannot fill the device, the taps are split
/// across cubes (split-K) into partial outputs that one reduction sums.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    src: &SsmTensor,
    w: &SsmTensor,
    bias: Option<&SsmTensor>,
    dst_shape: &[usize],
    geo: &Geo,
    src_channels_last: bool,
    transposed: bool,
    cfg: TileCfg,
) -> SsmTensor {
    let m_total = geo.dst_positions();
    let numel: usize = dst_shape.iter().product();
    if m_total == 0 || numel == 0 {
        return SsmTensor::empty(dst_shape, src.dtype, &src.device);
    }
    let bm = cfg.ty * cfg.tm;
    let bn = cfg.tx * cfg.tn;
    let m_tiles = m_total.div_ceil(bm);
    let n_tiles = (geo.c_out as usize).div_ceil(bn);
    let cubes = m_tiles * n_tiles * geo.groups as usize;
    let taps = (geo.k[0] * geo.k[1] * geo.k[2]) as usize;
    // About two waves of resident cubes on a large GPU.
    let k_splits = tap_splits(cubes, taps, 1024);
    let out = SsmTensor::empty(&[k_splits * numel], src.dtype, &src.device);
    let dtype = src.dtype.storage();
    let bias_t = bias.unwrap_or(w);
    dispatch!(src.device, c => {
        let (gx, gy) = position_grid(m_tiles, c.properties().hardware.max_cube_count.0);
        let count = CubeCount::Static(gx, gy, (n_tiles * geo.groups as usize * k_splits) as u32);
        let dim = CubeDim::new_1d((cfg.tx * cfg.ty) as u32);
        record_launch();
        unsafe {
            conv_gemm::launch_unchecked(
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
                cfg.tx, cfg.ty, cfg.tm, cfg.tn, cfg.bk,
                bias.is_some(),
                src_channels_last,
                transposed,
                dtype,
            )
        }
    });
    sum_tap_splits(out, k_splits, dst_shape)
}

/// Tile for the weight-gradient GEMM (rows = output channels, columns = (tap, channel)).
pub(crate) fn wgrad_tile(c_out: usize, n_cols: usize, dst_w: usize) -> TileCfg {
    let rows = [(8usize, 2usize), (8, 4), (8, 6), (16, 4), (16, 6), (16, 8)];
    let (ty, tm) = rows
        .iter()
        .copied()
        .min_by_key(|&(ty, tm)| {
            let bm = ty * tm;
            let tiles = c_out.div_ceil(bm);
            (tiles * bm - c_out, tiles, usize::MAX - bm)
        })
        .expect("options");
    let (tx, tn) = if n_cols >= 128 {
        (16, 8)
    } else if n_cols >= 64 {
        (16, 4)
    } else {
        (16, 2)
    };
    let bk = if dst_w >= 8 { 8 } else { 4 };
    TileCfg { tx, ty, tm, tn, bk }
}

/// Implicit-GEMM weight gradient: returns per-split partial sums
/// `[splits, c_out·groups, c_red·taps]` (PyTorch weight order within each split).
pub(crate) fn wgrad_gemm(
    x: &SsmTensor,
    dy: &SsmTensor,
    geo: &Geo,
    x_channels_last: bool,
    dy_channels_last: bool,
    cfg: TileCfg,
) -> SsmTensor {
    let taps = (geo.k[0] * geo.k[1] * geo.k[2]) as usize;
    let n_cols = taps * geo.c_red as usize;
    let co_total = (geo.c_out * geo.groups) as usize;
    let bm = cfg.ty * cfg.tm;
    let bn = cfg.tx * cfg.tn;
    let n_tiles = n_cols.div_ceil(bn);
    let m_tiles = (geo.c_out as usize).div_ceil(bm);
    let tiles = n_tiles * m_tiles * geo.groups as usize;
    // Enough cubes to fill a large GPU, but a few rows (and stages) per split.
    let (splits, rows_per_split) = row_splits(geo, cfg.bk, tiles, 2048);
    let out = SsmTensor::empty(&[splits, co_total, n_cols], x.dtype, &x.device);
    let dtype = x.dtype.storage();
    dispatch!(x.device, c => {
        let count = CubeCount::Static(
            n_tiles as u32,
            m_tiles as u32,
            (splits * geo.groups as usize) as u32,
        );
        let dim = CubeDim::new_1d((cfg.tx * cfg.ty) as u32);
        record_launch();
        unsafe {
            conv_wgrad_gemm::launch_unchecked(
                c, count, dim,
                x.array_arg(x.buffer_len()),
                dy.array_arg(dy.buffer_len()),
                out.array_arg(out.numel()),
                x.offset as i32,
                dy.offset as i32,
                geo.launch(),
                splits as i32,
                rows_per_split as i32,
                cfg.tx, cfg.ty, cfg.tm, cfg.tn, cfg.bk,
                dy_channels_last,
                x_channels_last,
                dtype,
            )
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_the_work_without_empty_parts() {
        // 4 tiles of a 3×3×3 kernel: 128 splits wanted, capped at 8, then 4 taps per split
        // leave 7 non-empty splits; a full grid or one tap needs no split.
        assert_eq!(tap_splits(4, 27, 512), 7);
        assert_eq!(tap_splits(6272, 27, 512), 1);
        assert_eq!(tap_splits(4, 1, 512), 1);
        assert_eq!(position_grid(6272, u32::MAX), (6272, 1));
        assert_eq!(position_grid(70_000, u32::MAX), (65_535, 2));
        assert_eq!(position_grid(300, 256), (256, 2));
        // 2·112 rows of 32 positions (2 stages of 16 each): at least 32 rows per split.
        let geo = Geo {
            batch: 2,
            dst: [112, 1, 32],
            ..Geo::default()
        };
        assert_eq!(row_splits(&geo, 16, 11, 1024), (7, 32));
        let (splits, per) = row_splits(&geo, 16, 2048, 1024);
        assert_eq!((splits, per), (1, 224));
    }
}
