//! Average and max pooling (1-D to 3-D, either layout) and their backward passes.
//!
//! Geometry is the convolution's [`ConvGeo`] with one "group" per channel. Forward: one
//! thread per output. Backward: one thread per input element gathering from the outputs
//! whose windows contain it (the transposed index map of the convolution), so no atomics
//! are needed; max pooling compares with the argmax index saved by the forward (PyTorch's
//! first-maximum tie rule, NaN propagating).

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::conv::{ConvGeo, Geo, split_pos, src_coord};
use crate::kernels::launch::elemwise_grid;
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// (channel, flat position) of contiguous element `i` over spatial sizes (d, h, w).
#[cube]
fn split_elem(
    i: i32,
    c_total: i32,
    d: i32,
    h: i32,
    w: i32,
    #[comptime] channels_last: bool,
) -> (i32, i32) {
    if channels_last {
        (i % c_total, i / c_total)
    } else {
        let spatial = d * h * w;
        let s = i % spatial;
        let r = i / spatial;
        (r % c_total, (r / c_total) * spatial + s)
    }
}

/// Number of window elements of output coordinate `o` inside the unpadded input.
#[cube]
fn valid_span(o: i32, st: i32, pad: i32, k: i32, size: i32) -> i32 {
    let lo = o * st - pad;
    let hi = lo + k;
    let a = select(lo > 0, lo, 0i32);
    let b = select(hi < size, hi, size);
    select(b > a, b - a, 0i32)
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn pool_fwd<F: Float>(
    src: &Array<F>,
    dst: &mut Array<F>,
    idx: &mut Array<u32>,
    src_off: i32,
    g: ConvGeo,
    total: usize,
    #[comptime] is_max: bool,
    #[comptime] count_pad: bool,
    #[comptime] channels_last: bool,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let (c, p) = split_elem(
            i32::cast_from(i),
            g.groups,
            g.dst_d,
            g.dst_h,
            g.dst_w,
            channels_last,
        );
        let (n, od, oh, ow) = split_pos(p, g.dst_d, g.dst_h, g.dst_w);
        let base = src_off + n * g.ss_n + c * g.ss_c;
        let mut acc = if is_max {
            math::neg_infinity_like::<F>(F::cast_from(UNIT_POS))
        } else {
            F::new(0.0)
        };
        let mut best = i32::new(-1);
        for td in 0..g.k_d {
            let sd = src_coord(od, td, g.st_d, g.pad_d, 1i32, g.src_d, false);
            for th in 0..g.k_h {
                let sh = src_coord(oh, th, g.st_h, g.pad_h, 1i32, g.src_h, false);
                for tw in 0..g.k_w {
                    let sw = src_coord(ow, tw, g.st_w, g.pad_w, 1i32, g.src_w, false);
                    if sd >= 0 && sh >= 0 && sw >= 0 {
                        let v =
                            src[usize::cast_from(base + sd * g.ss_d + sh * g.ss_h + sw * g.ss_w)];
                        if is_max {
                            let flat = (sd * g.src_h + sh) * g.src_w + sw;
                            // NaN wins, and a later NaN takes over (PyTorch's
                            // `val > max || isnan(val)`: the index of the last NaN).
                            let take = best < 0 || v > acc || math::is_nan::<F>(v);
                            if take {
                                acc = v;
                                best = flat;
                            }
                        } else {
                            acc += v;
                        }
                    }
                }
            }
        }
        if is_max {
            dst[i] = acc;
            idx[i] = u32::cast_from(best);
        } else {
            let div = if count_pad {
                g.k_d * g.k_h * g.k_w
            } else {
                valid_span(od, g.st_d, g.pad_d, g.k_d, g.src_d)
                    * valid_span(oh, g.st_h, g.pad_h, g.k_h, g.src_h)
                    * valid_span(ow, g.st_w, g.pad_w, g.k_w, g.src_w)
            };
            dst[i] = acc / F::cast_from(div);
        }
    }
}

/// Input gradient: one thread per input element (contiguous `dx`), gathering from `dy`
/// (strides `sd`, same layout as the saved indices).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn pool_bwd<F: Float>(
    dy: &Array<F>,
    idx: &Array<u32>,
    dx: &mut Array<F>,
    dy_off: i32,
    g: ConvGeo,
    total: usize,
    #[comptime] is_max: bool,
    #[comptime] count_pad: bool,
    #[comptime] channels_last: bool,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let (c, p) = split_elem(
            i32::cast_from(i),
            g.groups,
            g.src_d,
            g.src_h,
            g.src_w,
            channels_last,
        );
        let (n, id, ih, iw) = split_pos(p, g.src_d, g.src_h, g.src_w);
        let flat = (id * g.src_h + ih) * g.src_w + iw;
        let base = n * g.sd_n + c * g.sd_c;
        let mut acc = F::new(0.0);
        for td in 0..g.k_d {
            let od = src_coord(id, td, g.st_d, g.pad_d, 1i32, g.dst_d, true);
            for th in 0..g.k_h {
                let oh = src_coord(ih, th, g.st_h, g.pad_h, 1i32, g.dst_h, true);
                for tw in 0..g.k_w {
                    let ow = src_coord(iw, tw, g.st_w, g.pad_w, 1i32, g.dst_w, true);
                    if od >= 0 && oh >= 0 && ow >= 0 {
                        let o = base + od * g.sd_d + oh * g.sd_h + ow * g.sd_w;
                        if is_max {
                            if idx[usize::cast_from(o)] == u32::cast_from(flat) {
                                acc += dy[usize::cast_from(dy_off + o)];
                            }
                        } else {
                            let div = if count_pad {
                                g.k_d * g.k_h * g.k_w
                            } else {
                                valid_span(od, g.st_d, g.pad_d, g.k_d, g.src_d)
                                    * valid_span(oh, g.st_h, g.pad_h, g.k_h, g.src_h)
                                    * valid_span(ow, g.st_w, g.pad_w, g.k_w, g.src_w)
                            };
                            acc += dy[usize::cast_from(dy_off + o)] / F::cast_from(div);
                        }
                    }
                }
            }
        }
        dx[i] = acc;
    }
}

/// Pooling forward into the fresh contiguous `dst` (and `idx` for max pooling).
pub(crate) fn forward(
    src: &SsmTensor,
    dst: &SsmTensor,
    idx: &SsmTensor,
    geo: &Geo,
    is_max: bool,
    count_pad: bool,
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
            pool_fwd::launch_unchecked(
                c, count, dim,
                src.array_arg(src.buffer_len()),
                dst.array_arg(total),
                idx.array_arg(idx.buffer_len()),
                src.offset as i32,
                geo.launch(),
                total,
                is_max, count_pad, channels_last,
                dtype,
            )
        }
    })
}

/// Pooling backward into the fresh contiguous `dx`; `dy` and `idx` share the strides
/// `geo.sd` (contiguous in the layout).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dy: &SsmTensor,
    idx: &SsmTensor,
    dx: &SsmTensor,
    geo: &Geo,
    is_max: bool,
    count_pad: bool,
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
            pool_bwd::launch_unchecked(
                c, count, dim,
                dy.array_arg(dy.buffer_len()),
                idx.array_arg(idx.buffer_len()),
                dx.array_arg(total),
                dy.offset as i32,
                geo.launch(),
                total,
                is_max, count_pad, channels_last,
                dtype,
            )
        }
    })
}
