//! Reverse attention `(1 − σ(resize(m))) ⊙ f`, with the linear resize of the coarse map `m`
//! (align_corners = false, PyTorch's `F.interpolate` rule) computed on the fly: the forward
//! is one kernel, gathering m's 2^d neighbours for every output element. The backward is
//! one kernel for df and the per-position gradient of the resized map, which the resize's
//! transposed gather (the "scatter-add", as a deterministic gather) takes back to m.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// Sizes (spatial axes padded to 3 with 1s).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
pub struct RaDims {
    /// Channels of f.
    pub channels: u32,
    /// Output (f) spatial sizes.
    pub o0: u32,
    /// See `o0`.
    pub o1: u32,
    /// See `o0`.
    pub o2: u32,
    /// Map (m) spatial sizes.
    pub i0: u32,
    /// See `i0`.
    pub i1: u32,
    /// See `i0`.
    pub i2: u32,
}

/// Source index pair and the weight of the second, for output index `o` (PyTorch's
/// `align_corners = False` linear rule, source clamped at 0).
#[cube]
fn taps<F: Float>(o: u32, out_size: u32, in_size: u32) -> (u32, u32, F) {
    let scale = F::cast_from(in_size) / F::cast_from(out_size);
    let src = F::max(
        (F::cast_from(o) + F::new(0.5)) * scale - F::new(0.5),
        F::new(0.0),
    );
    let f0 = F::floor(src);
    let i0 = u32::cast_from(f0);
    let last = in_size - 1u32;
    let a = select(i0 < last, i0, last);
    let b = select(a + 1u32 < last, a + 1u32, last);
    (a, b, src - f0)
}

/// The resized map at output position (p0, p1, p2) of batch `b`.
#[cube]
fn interp<F: Float>(m: &Array<F>, b: u32, p0: u32, p1: u32, p2: u32, dims: &RaDims) -> F {
    let (a0, b0, w0) = taps::<F>(p0, dims.o0, dims.i0);
    let (a1, b1, w1) = taps::<F>(p1, dims.o1, dims.i1);
    let (a2, b2, w2) = taps::<F>(p2, dims.o2, dims.i2);
    let base = b * dims.i0 * dims.i1 * dims.i2;
    let lo = bilerp::<F>(
        m,
        base + a0 * dims.i1 * dims.i2,
        a1,
        b1,
        a2,
        b2,
        w1,
        w2,
        dims.i2,
    );
    let hi = bilerp::<F>(
        m,
        base + b0 * dims.i1 * dims.i2,
        a1,
        b1,
        a2,
        b2,
        w1,
        w2,
        dims.i2,
    );
    (F::new(1.0) - w0) * lo + w0 * hi
}

/// Bilinear interpolation inside one plane starting at `base`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn bilerp<F: Float>(
    m: &Array<F>,
    base: u32,
    a1: u32,
    b1: u32,
    a2: u32,
    b2: u32,
    w1: F,
    w2: F,
    i2: u32,
) -> F {
    let one = F::new(1.0);
    let r0 =
        (one - w2) * m[(base + a1 * i2 + a2) as usize] + w2 * m[(base + a1 * i2 + b2) as usize];
    let r1 =
        (one - w2) * m[(base + b1 * i2 + a2) as usize] + w2 * m[(base + b1 * i2 + b2) as usize];
    (one - w1) * r0 + w1 * r1
}

#[cube(launch_unchecked)]
fn ra_forward<F: Float>(
    m: &Array<F>,
    f: &Array<F>,
    out: &mut Array<F>,
    dims: RaDims,
    total: u32,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS as u32;
    if i < total {
        let plane = dims.o0 * dims.o1 * dims.o2;
        let p = i % plane;
        let b = i / plane / dims.channels;
        let (p0, p1, p2) = (
            p / (dims.o1 * dims.o2),
            (p / dims.o2) % dims.o1,
            p % dims.o2,
        );
        let r = F::new(1.0) - math::sigmoid::<F>(interp::<F>(m, b, p0, p1, p2, &dims));
        out[i as usize] = r * f[i as usize];
    }
}

/// One thread per (batch, position): df for every channel, and d(resized m) at the position.
#[cube(launch_unchecked)]
fn ra_backward<F: Float>(
    m: &Array<F>,
    f: &Array<F>,
    g: &Array<F>,
    df: &mut Array<F>,
    dmi: &mut Array<F>,
    dims: RaDims,
    total: u32,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS as u32;
    if i < total {
        let plane = dims.o0 * dims.o1 * dims.o2;
        let p = i % plane;
        let b = i / plane;
        let (p0, p1, p2) = (
            p / (dims.o1 * dims.o2),
            (p / dims.o2) % dims.o1,
            p % dims.o2,
        );
        let s = math::sigmoid::<F>(interp::<F>(m, b, p0, p1, p2, &dims));
        let r = F::new(1.0) - s;
        let mut acc = F::new(0.0);
        for c in 0..dims.channels {
            let k = ((b * dims.channels + c) * plane + p) as usize;
            let gv = g[k];
            df[k] = r * gv;
            acc += gv * f[k];
        }
        dmi[i as usize] = -(s * r) * acc;
    }
}

fn dims_of(m: &SsmTensor, f: &SsmTensor) -> RaDims {
    let pad = |s: &[usize]| {
        let mut v = vec![1u32; 3 - s.len()];
        v.extend(s.iter().map(|&x| x as u32));
        v
    };
    let (o, i) = (pad(&f.shape[2..]), pad(&m.shape[2..]));
    RaDims {
        channels: f.shape[1] as u32,
        o0: o[0],
        o1: o[1],
        o2: o[2],
        i0: i[0],
        i1: i[1],
        i2: i[2],
    }
}

/// `out = (1 − σ(resize(m))) ⊙ f`; all compact, shapes checked by the caller.
pub(crate) fn forward(m: &SsmTensor, f: &SsmTensor, out: &SsmTensor) {
    let total = f.numel();
    let d = dims_of(m, f);
    dispatch!(f.device, c => {
        let (count, dim) = elemwise_grid(c, total);
        record_launch();
        unsafe {
            ra_forward::launch_unchecked(
                c, count, dim,
                m.array_arg(m.numel()), f.array_arg(total), out.array_arg(total),
                RaDimsLaunch::new(d.channels, d.o0, d.o1, d.o2, d.i0, d.i1, d.i2),
                total as u32, f.dtype.storage(),
            )
        }
    })
}

/// df and the gradient of the resized map `dmi` (shape `(B, 1, *f spatial)`).
pub(crate) fn backward(
    m: &SsmTensor,
    f: &SsmTensor,
    g: &SsmTensor,
    df: &SsmTensor,
    dmi: &SsmTensor,
) {
    let total = dmi.numel();
    let d = dims_of(m, f);
    dispatch!(f.device, c => {
        let (count, dim) = elemwise_grid(c, total);
        record_launch();
        unsafe {
            ra_backward::launch_unchecked(
                c, count, dim,
                m.array_arg(m.numel()), f.array_arg(f.numel()), g.array_arg(g.numel()),
                df.array_arg(df.numel()), dmi.array_arg(total),
                RaDimsLaunch::new(d.channels, d.o0, d.o1, d.o2, d.i0, d.i1, d.i2),
                total as u32, f.dtype.storage(),
            )
        }
    })
}
