//! Separable resizing (nearest, linear, bilinear, trilinear) driven by per-axis tables.
//!
//! The host computes, for every output index of every spatial axis, the two source indices
//! and weights of PyTorch's `F.interpolate` (in f64), and the transposed lists (for every
//! input index, the output indices that read it, with their weights). The forward gathers
//! `Σ w_d·w_h·w_w·x[i_d, i_h, i_w]` per output; the backward gathers the same products per
//! input from the transposed lists, so it is the exact adjoint without atomics. Any scale
//! factor or output size works, up- or down-sampling.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::tensor::Tensor as SsmTensor;

/// Sizes and strides of one resize launch (three spatial axes; missing ones have size 1).
#[derive(CubeType, CubeLaunch, Clone, Copy, Debug)]
pub struct ResizeGeo {
    pub channels: u32,
    /// Spatial sizes of the tensor the kernel reads.
    pub src_d: u32,
    pub src_h: u32,
    pub src_w: u32,
    /// Its strides (n, c, d, h, w).
    pub ss_n: u32,
    pub ss_c: u32,
    pub ss_d: u32,
    pub ss_h: u32,
    pub ss_w: u32,
    /// Spatial sizes of the tensor the kernel writes (contiguous in the layout).
    pub dst_d: u32,
    pub dst_h: u32,
    pub dst_w: u32,
    /// Offsets of the d, h, w tables in the table arrays.
    pub tab_d: u32,
    pub tab_h: u32,
    pub tab_w: u32,
}

/// Host copy of [`ResizeGeo`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RGeo {
    pub channels: u32,
    pub src: [u32; 3],
    pub ss: [u32; 5],
    pub dst: [u32; 3],
    pub tab: [u32; 3],
}

impl RGeo {
    fn launch<R: Runtime>(&self) -> ResizeGeoLaunch<R> {
        ResizeGeoLaunch::new(
            self.channels,
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
            self.tab[0],
            self.tab[1],
            self.tab[2],
        )
    }
}

/// (channel, n, d, h, w) of contiguous element `i`.
#[cube]
fn split5(i: u32, g: &ResizeGeo, #[comptime] channels_last: bool) -> (u32, u32, u32, u32, u32) {
    let (c, p) = if channels_last {
        (i % g.channels, i / g.channels)
    } else {
        let spatial = g.dst_d * g.dst_h * g.dst_w;
        let r = i / spatial;
        (r % g.channels, (r / g.channels) * spatial + i % spatial)
    };
    let w = p % g.dst_w;
    let r = p / g.dst_w;
    let h = r % g.dst_h;
    let r2 = r / g.dst_h;
    (c, r2 / g.dst_d, r2 % g.dst_d, h, w)
}

/// Forward: `idx`/`wt` hold two (index, weight) pairs per output index of each axis.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn resize_fwd<F: Float>(
    src: &Array<F>,
    idx: &Array<u32>,
    wt: &Array<F>,
    dst: &mut Array<F>,
    src_off: u32,
    g: ResizeGeo,
    total: usize,
    #[comptime] taps: usize,
    #[comptime] channels_last: bool,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let (c, n, od, oh, ow) = split5(u32::cast_from(i), &g, channels_last);
        let base = src_off + n * g.ss_n + c * g.ss_c;
        let mut acc = F::new(0.0);
        #[unroll]
        for a in 0..taps {
            let ed = (g.tab_d + od) * 2 + a as u32;
            let sd = idx[ed as usize];
            let wd = wt[ed as usize];
            #[unroll]
            for b in 0..taps {
                let eh = (g.tab_h + oh) * 2 + b as u32;
                let sh = idx[eh as usize];
                let wh = wt[eh as usize];
                #[unroll]
                for cc in 0..taps {
                    let ew = (g.tab_w + ow) * 2 + cc as u32;
                    let sw = idx[ew as usize];
                    let ww = wt[ew as usize];
                    acc += wd
                        * wh
                        * ww
                        * src[(base + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w) as usize];
                }
            }
        }
        dst[i] = acc;
    }
}

/// Backward: `ptr` holds CSR row starts per input index of each axis (`ptr[tab + i]` to
/// `ptr[tab + i + 1]`), `ent`/`ewt` the (output index, weight) entries. Here "src" is the
/// output gradient and "dst" the input gradient.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn resize_bwd<F: Float>(
    dy: &Array<F>,
    ptr: &Array<u32>,
    ent: &Array<u32>,
    ewt: &Array<F>,
    dx: &mut Array<F>,
    dy_off: u32,
    g: ResizeGeo,
    total: usize,
    #[comptime] channels_last: bool,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let (c, n, id, ih, iw) = split5(u32::cast_from(i), &g, channels_last);
        let base = dy_off + n * g.ss_n + c * g.ss_c;
        let mut acc = F::new(0.0);
        let pd = g.tab_d + id;
        let ph = g.tab_h + ih;
        let pw = g.tab_w + iw;
        for ed in ptr[pd as usize]..ptr[(pd + 1) as usize] {
            let od = ent[ed as usize];
            let wd = ewt[ed as usize];
            for eh in ptr[ph as usize]..ptr[(ph + 1) as usize] {
                let oh = ent[eh as usize];
                let wdh = wd * ewt[eh as usize];
                for ew in ptr[pw as usize]..ptr[(pw + 1) as usize] {
                    let ow = ent[ew as usize];
                    acc += wdh
                        * ewt[ew as usize]
                        * dy[(base + od * g.ss_d + oh * g.ss_h + ow * g.ss_w) as usize];
                }
            }
        }
        dx[i] = acc;
    }
}

/// Forward into the fresh contiguous `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    src: &SsmTensor,
    idx: &SsmTensor,
    wt: &SsmTensor,
    dst: &SsmTensor,
    geo: &RGeo,
    taps: usize,
    channels_last: bool,
) {
    let total = dst.numel();
    if total == 0 {
        return;
    }
    let dtype = src.dtype.storage();
    dispatch!(src.device, c => {
        let (count, dim) = elemwise_grid(c, total);
        record_launch();
        unsafe {
            resize_fwd::launch_unchecked(
                c, count, dim,
                src.array_arg(src.buffer_len()),
                idx.array_arg(idx.buffer_len()),
                wt.array_arg(wt.buffer_len()),
                dst.array_arg(total),
                src.offset as u32,
                geo.launch(),
                total,
                taps,
                channels_last,
                dtype,
            )
        }
    })
}

/// Backward into the fresh contiguous `dx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dy: &SsmTensor,
    ptr: &SsmTensor,
    ent: &SsmTensor,
    ewt: &SsmTensor,
    dx: &SsmTensor,
    geo: &RGeo,
    channels_last: bool,
) {
    let total = dx.numel();
    if total == 0 {
        return;
    }
    let dtype = dy.dtype.storage();
    dispatch!(dy.device, c => {
        let (count, dim) = elemwise_grid(c, total);
        record_launch();
        unsafe {
            resize_bwd::launch_unchecked(
                c, count, dim,
                dy.array_arg(dy.buffer_len()),
                ptr.array_arg(ptr.buffer_len()),
                ent.array_arg(ent.buffer_len()),
                ewt.array_arg(ewt.buffer_len()),
                dx.array_arg(total),
                dy.offset as u32,
                geo.launch(),
                total,
                channels_last,
                dtype,
            )
        }
    })
}
