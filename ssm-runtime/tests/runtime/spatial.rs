//! Pooling and resizing against host references (and PyTorch's published behaviour on
//! small vectors), forward and backward, both layouts, f32 and f64.

use ssm_runtime::testing::{assert_close, device};
use ssm_runtime::{DType, Layout, PoolSpec, ResizeMode, ResizeTo, Tensor};

use crate::{rng, rounded, upload};

fn to_layout(cf: &[f64], shape_cf: &[usize], layout: Layout) -> (Vec<f64>, Vec<usize>) {
    if layout == Layout::ChannelsFirst {
        return (cf.to_vec(), shape_cf.to_vec());
    }
    let (n, c) = (shape_cf[0], shape_cf[1]);
    let sp: usize = shape_cf[2..].iter().product();
    let mut out = vec![0.0; cf.len()];
    for b in 0..n {
        for ch in 0..c {
            for s in 0..sp {
                out[(b * sp + s) * c + ch] = cf[(b * c + ch) * sp + s];
            }
        }
    }
    let mut shape = vec![n];
    shape.extend_from_slice(&shape_cf[2..]);
    shape.push(c);
    (out, shape)
}

/// All spatial coordinates.
fn boxes(sp: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &s in sp {
        out = out
            .into_iter()
            .flat_map(|v| {
                (0..s).map(move |i| {
                    let mut w = v.clone();
                    w.push(i);
                    w
                })
            })
            .collect();
    }
    out
}

fn flat(pos: &[usize], sp: &[usize]) -> usize {
    pos.iter().zip(sp).fold(0, |a, (p, s)| a * s + p)
}

/// Host pooling results: (avg, max, dx of avg, dx of max, output shape).
type Pooled = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<usize>);

/// Host pooling on channels-first data.
#[allow(clippy::too_many_arguments)]
fn host_pool(
    x: &[f64],
    shape: &[usize],
    k: &[usize],
    s: &[usize],
    p: &[usize],
    count_pad: bool,
    dy: &[f64],
) -> Pooled {
    let (n, c) = (shape[0], shape[1]);
    let sp = &shape[2..];
    let nd = sp.len();
    let out: Vec<usize> = (0..nd)
        .map(|a| (sp[a] + 2 * p[a] - k[a]) / s[a] + 1)
        .collect();
    let osz: usize = out.iter().product();
    let isz: usize = sp.iter().product();
    let mut avg = vec![0.0; n * c * osz];
    let mut mx = vec![0.0; n * c * osz];
    let mut dx_avg = vec![0.0; x.len()];
    let mut dx_max = vec![0.0; x.len()];
    let mut out_shape = vec![n, c];
    out_shape.extend(&out);
    for b in 0..n {
        for ch in 0..c {
            let xo = (b * c + ch) * isz;
            for o in boxes(&out) {
                let oi = (b * c + ch) * osz + flat(&o, &out);
                let mut sum = 0.0;
                let mut cnt = 0usize;
                let mut best = f64::NEG_INFINITY;
                let mut best_i = usize::MAX;
                let mut members = Vec::new();
                for t in boxes(k) {
                    let pos: Vec<isize> = (0..nd)
                        .map(|a| (o[a] * s[a] + t[a]) as isize - p[a] as isize)
                        .collect();
                    if pos
                        .iter()
                        .zip(sp)
                        .all(|(&q, &sz)| q >= 0 && (q as usize) < sz)
                    {
                        let pu: Vec<usize> = pos.iter().map(|&q| q as usize).collect();
                        let fi = flat(&pu, sp);
                        let v = x[xo + fi];
                        sum += v;
                        cnt += 1;
                        members.push(fi);
                        if best_i == usize::MAX || v > best {
                            best = v;
                            best_i = fi;
                        }
                    }
                }
                let div = if count_pad {
                    k.iter().product::<usize>()
                } else {
                    cnt
                } as f64;
                avg[oi] = sum / div;
                mx[oi] = best;
                for fi in members {
                    dx_avg[xo + fi] += dy[oi] / div;
                }
                dx_max[xo + best_i] += dy[oi];
            }
        }
    }
    (avg, mx, dx_avg, dx_max, out_shape)
}

#[test]
fn pooling_matches_host() {
    let mut r = rng(301);
    type Case = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>, bool);
    let cases: Vec<Case> = vec![
        (vec![2, 3, 9], vec![3], vec![2], vec![1], true),
        (vec![2, 3, 7, 6], vec![2, 2], vec![2, 2], vec![0, 0], true),
        (vec![1, 2, 7, 8], vec![3, 3], vec![2, 1], vec![1, 1], false),
        (
            vec![1, 2, 5, 6, 7],
            vec![3, 2, 3],
            vec![2, 2, 1],
            vec![1, 0, 1],
            true,
        ),
        (
            vec![2, 4, 4, 6, 5],
            vec![2, 2, 2],
            vec![2, 2, 2],
            vec![0, 0, 0],
            true,
        ),
    ];
    for (shape, k, s, p, count_pad) in cases {
        let n: usize = shape.iter().product();
        let xv = r.vec(n, -2.0, 2.0);
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            for dtype in [DType::F32, DType::F64] {
                let xr = rounded(&xv, dtype);
                // dy drawn per output; computed after the output shape is known.
                let nd = shape.len() - 2;
                let out: Vec<usize> = (0..nd)
                    .map(|a| (shape[2 + a] + 2 * p[a] - k[a]) / s[a] + 1)
                    .collect();
                let on: usize = shape[0] * shape[1] * out.iter().product::<usize>();
                let dyv = rounded(&r.vec(on, -1.0, 1.0), dtype);
                let (avg, mx, dxa, dxm, oshape) =
                    host_pool(&xr, &shape, &k, &s, &p, count_pad, &dyv);
                let (x_l, x_shape) = to_layout(&xv, &shape, layout);
                let x = upload(&x_l, &x_shape, dtype);
                let (dy_l, dy_shape) = to_layout(&dyv, &oshape, layout);
                let dy = upload(&dy_l, &dy_shape, dtype);
                let mut spec = PoolSpec::new(&k).stride(&s).pad(&p).layout(layout);
                if !count_pad {
                    spec = spec.exclude_pad();
                }
                let (tol_r, tol_a) = if dtype == DType::F32 {
                    (1e-6, 1e-6)
                } else {
                    (1e-13, 1e-13)
                };
                let what = format!("pool {shape:?} k{k:?} s{s:?} p{p:?} {layout:?} {dtype}");
                let y = x.avg_pool(&spec).unwrap();
                assert_close(
                    &format!("{what} avg"),
                    &y.to_f64_vec().unwrap(),
                    &to_layout(&avg, &oshape, layout).0,
                    tol_r,
                    tol_a,
                );
                let (ym, idx) = x.max_pool(&spec).unwrap();
                assert_close(
                    &format!("{what} max"),
                    &ym.to_f64_vec().unwrap(),
                    &to_layout(&mx, &oshape, layout).0,
                    0.0,
                    0.0,
                );
                let dxa_got = Tensor::avg_pool_backward(&dy, &x_shape, &spec).unwrap();
                assert_close(
                    &format!("{what} avg grad"),
                    &dxa_got.to_f64_vec().unwrap(),
                    &to_layout(&dxa, &shape, layout).0,
                    tol_r,
                    tol_a,
                );
                let dxm_got = Tensor::max_pool_backward(&dy, &idx, &x_shape, &spec).unwrap();
                assert_close(
                    &format!("{what} max grad"),
                    &dxm_got.to_f64_vec().unwrap(),
                    &to_layout(&dxm, &shape, layout).0,
                    tol_r,
                    tol_a,
                );
            }
        }
    }
}

#[test]
fn max_pool_ties_and_nan_follow_pytorch() {
    let d = device();
    // Windows of 3 over 6 values: (maxima, flat indices).
    let pool = |v: &[f64]| {
        let x = Tensor::from_f64(v, &[1, 1, 6], DType::F32, &d).unwrap();
        let (y, idx) = x.max_pool(&PoolSpec::new(&[3])).unwrap();
        (y.to_f64_vec().unwrap(), idx.to_vec::<u32>().unwrap())
    };
    let (y, idx) = pool(&[1.0, 3.0, 3.0, 2.0, f64::NAN, 5.0]);
    assert_eq!(y[0], 3.0);
    assert!(y[1].is_nan());
    assert_eq!(idx, vec![1, 4]);
    // Two NaNs in a window: PyTorch's `val > max || isnan(val)` keeps the last one, and a
    // number after a NaN does not replace it.
    let (y, idx) = pool(&[f64::NAN, 9.0, f64::NAN, 1.0, 7.0, 7.0]);
    assert!(y[0].is_nan());
    assert_eq!(y[1], 7.0);
    assert_eq!(idx, vec![2, 4]);
}

#[test]
fn global_avg_pool_is_the_spatial_mean() {
    let mut r = rng(302);
    let xv = r.vec(2 * 3 * 4 * 5, -1.0, 1.0);
    let x = upload(&xv, &[2, 3, 4, 5], DType::F64);
    let g = x.global_avg_pool(Layout::ChannelsFirst, false).unwrap();
    assert_eq!(g.shape(), &[2, 3]);
    let want: Vec<f64> = (0..6)
        .map(|i| xv[i * 20..(i + 1) * 20].iter().sum::<f64>() / 20.0)
        .collect();
    assert_close("gap", &g.to_f64_vec().unwrap(), &want, 1e-13, 1e-13);
}

/// Host 1-D interpolation weights, written from PyTorch's formulas.
fn host_weights(
    inp: usize,
    out: usize,
    mode: ResizeMode,
    ac: bool,
    scale: Option<f64>,
) -> Vec<Vec<(usize, f64)>> {
    (0..out)
        .map(|o| match mode {
            ResizeMode::Linear => {
                let src = if ac {
                    if out > 1 {
                        o as f64 * (inp - 1) as f64 / (out - 1) as f64
                    } else {
                        0.0
                    }
                } else {
                    let s = scale.map_or(inp as f64 / out as f64, |s| 1.0 / s);
                    ((o as f64 + 0.5) * s - 0.5).max(0.0)
                };
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                let l = src - i0 as f64;
                vec![(i0, 1.0 - l), (i1, l)]
            }
            _ => {
                // PyTorch's CUDA nearest kernels take an f32 scale: `floorf(o·s)`, and
                // `floorf((o + 0.5)·s)` whose product is a double rounded to f32.
                let s = scale.map_or(inp as f32 / out as f32, |s| (1.0 / s) as f32);
                let src = if mode == ResizeMode::NearestExact {
                    ((o as f64 + 0.5) * f64::from(s)) as f32
                } else {
                    o as f32 * s
                };
                vec![((src.floor() as usize).min(inp - 1), 1.0)]
            }
        })
        .collect()
}

#[test]
fn resize_matches_pytorch_vectors() {
    let d = device();
    let x = Tensor::from_f64(&[0.0, 1.0, 2.0, 3.0], &[1, 1, 4], DType::F64, &d).unwrap();
    // (label, target, mode, align_corners, PyTorch's output, tolerance).
    type Vector = (
        &'static str,
        ResizeTo,
        ResizeMode,
        bool,
        &'static [f64],
        f64,
    );
    let vectors: [Vector; 5] = [
        (
            "linear x2",
            ResizeTo::Size(vec![8]),
            ResizeMode::Linear,
            false,
            &[0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0],
            1e-15,
        ),
        (
            "align corners",
            ResizeTo::Size(vec![7]),
            ResizeMode::Linear,
            true,
            &[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
            1e-15,
        ),
        (
            "nearest",
            ResizeTo::Size(vec![7]),
            ResizeMode::Nearest,
            false,
            &[0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0],
            0.0,
        ),
        (
            "nearest-exact",
            ResizeTo::Size(vec![7]),
            ResizeMode::NearestExact,
            false,
            &[0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 3.0],
            0.0,
        ),
        (
            "linear /2",
            ResizeTo::Scale(vec![0.5]),
            ResizeMode::Linear,
            false,
            &[0.5, 2.5],
            1e-15,
        ),
    ];
    for (label, to, mode, align, want, tol) in vectors {
        let got = x.resize(&to, mode, align, Layout::ChannelsFirst).unwrap();
        assert_close(label, &got.to_f64_vec().unwrap(), want, tol, tol);
    }
    // Nearest indices where PyTorch's f32 arithmetic and exact (or f64) arithmetic part
    // ways, whatever the data type: (input, target, output index, PyTorch's source index).
    // 39·(1/1.3) is 30 in f32 (29.999… in f64); 41·(2/82) is 0.99999994 in f32 (1 in f64);
    // 46·(39/69) is 26.000002 in f32 (25.999… in f64).
    let cases = [
        (31, ResizeTo::Scale(vec![1.3]), 39, 30.0),
        (2, ResizeTo::Size(vec![82]), 41, 0.0),
        (39, ResizeTo::Size(vec![69]), 46, 26.0),
    ];
    for (inp, to, o, want) in cases {
        for dtype in [DType::F32, DType::F64] {
            let ramp: Vec<f64> = (0..inp).map(|i| i as f64).collect();
            let x = Tensor::from_f64(&ramp, &[1, 1, inp], dtype, &d).unwrap();
            let y = x
                .resize(&to, ResizeMode::Nearest, false, Layout::ChannelsFirst)
                .unwrap()
                .to_f64_vec()
                .unwrap();
            assert_eq!(y[o], want, "nearest {inp} {to:?} {dtype}: output {o}");
        }
    }
}

#[test]
fn resize_matches_host_and_backward_is_the_adjoint() {
    let mut r = rng(303);
    let cases: Vec<(Vec<usize>, ResizeTo, ResizeMode, bool)> = vec![
        (
            vec![2, 3, 5],
            ResizeTo::Size(vec![11]),
            ResizeMode::Linear,
            false,
        ),
        (
            vec![2, 3, 5, 4],
            ResizeTo::Size(vec![9, 3]),
            ResizeMode::Linear,
            true,
        ),
        (
            vec![1, 2, 3, 4, 5],
            ResizeTo::Scale(vec![2.0]),
            ResizeMode::Linear,
            false,
        ),
        (
            vec![1, 2, 6, 5, 7],
            ResizeTo::Size(vec![4, 9, 3]),
            ResizeMode::Linear,
            false,
        ),
        (
            vec![1, 2, 6, 5, 7],
            ResizeTo::Scale(vec![1.5, 0.7, 2.0]),
            ResizeMode::Linear,
            false,
        ),
        (
            vec![2, 2, 5, 6],
            ResizeTo::Size(vec![8, 4]),
            ResizeMode::Nearest,
            false,
        ),
        (
            vec![1, 3, 4, 3, 5],
            ResizeTo::Scale(vec![1.7]),
            ResizeMode::NearestExact,
            false,
        ),
        // Size-1 axes in and out: align_corners maps an output of 1 to source 0, an input
        // of 1 is read by every output.
        (
            vec![2, 2, 1, 6],
            ResizeTo::Size(vec![5, 1]),
            ResizeMode::Linear,
            true,
        ),
        (
            vec![2, 2, 1, 6],
            ResizeTo::Size(vec![5, 1]),
            ResizeMode::Linear,
            false,
        ),
        (
            vec![1, 2, 1, 7],
            ResizeTo::Size(vec![3, 1]),
            ResizeMode::Nearest,
            false,
        ),
    ];
    for (shape, to, mode, ac) in cases {
        let nd = shape.len() - 2;
        let (out, scale) = match &to {
            ResizeTo::Size(s) => (s.clone(), vec![None; nd]),
            ResizeTo::Scale(f) => {
                let f = if f.len() == 1 {
                    vec![f[0]; nd]
                } else {
                    f.clone()
                };
                (
                    (0..nd)
                        .map(|a| (shape[2 + a] as f64 * f[a]).floor() as usize)
                        .collect(),
                    f.iter().map(|&v| Some(v)).collect(),
                )
            }
        };
        let xv = r.vec(shape.iter().product(), -1.0, 1.0);
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            for dtype in [DType::F32, DType::F64] {
                let xr = rounded(&xv, dtype);
                // Separable: resize one axis at a time on the host.
                let mut want = xr.clone();
                let mut cur_shape = shape.clone();
                for a in 0..nd {
                    want = host_resize_axis(&want, &cur_shape, a, out[a], mode, ac, scale[a]);
                    cur_shape[2 + a] = out[a];
                }
                let (x_l, x_shape) = to_layout(&xv, &shape, layout);
                let x = upload(&x_l, &x_shape, dtype);
                let y = x.resize(&to, mode, ac, layout).unwrap();
                let mut oshape = shape[..2].to_vec();
                oshape.extend(&out);
                let (tr, ta) = if dtype == DType::F32 {
                    (1e-6, 1e-6)
                } else {
                    (1e-14, 1e-14)
                };
                let what = format!("resize {shape:?} {to:?} {mode:?} ac={ac} {layout:?} {dtype}");
                assert_close(
                    &what,
                    &y.to_f64_vec().unwrap(),
                    &to_layout(&want, &oshape, layout).0,
                    tr,
                    ta,
                );
                // ⟨resize(x), dy⟩ = ⟨x, resize_backward(dy)⟩.
                let dyv = r.vec(y.numel(), -1.0, 1.0);
                let dy = upload(&dyv, y.shape(), dtype);
                let dx = Tensor::resize_backward(&dy, &x_shape, &to, mode, ac, layout).unwrap();
                let dyr = rounded(&dyv, dtype);
                let lhs: f64 = y
                    .to_f64_vec()
                    .unwrap()
                    .iter()
                    .zip(&dyr)
                    .map(|(a, b)| a * b)
                    .sum();
                let rhs: f64 = dx
                    .to_f64_vec()
                    .unwrap()
                    .iter()
                    .zip(&rounded(&x_l, dtype))
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                    "{what}: adjoint {lhs} vs {rhs}"
                );
            }
        }
    }
}

fn host_resize_axis(
    x: &[f64],
    shape: &[usize],
    a: usize,
    out: usize,
    mode: ResizeMode,
    ac: bool,
    scale: Option<f64>,
) -> Vec<f64> {
    let axis = 2 + a;
    let w = host_weights(shape[axis], out, mode, ac, scale);
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut next = vec![0.0; outer * out * inner];
    for o in 0..outer {
        for (j, taps) in w.iter().enumerate() {
            for i in 0..inner {
                next[(o * out + j) * inner + i] = taps
                    .iter()
                    .map(|&(src, wt)| wt * x[(o * shape[axis] + src) * inner + i])
                    .sum();
            }
        }
    }
    next
}

#[test]
fn resize_rejects_bad_arguments() {
    let d = device();
    let x = Tensor::zeros(&[1, 2, 4, 4], DType::F32, &d).unwrap();
    assert!(
        x.resize(
            &ResizeTo::Size(vec![3, 3, 3]),
            ResizeMode::Linear,
            false,
            Layout::ChannelsFirst
        )
        .is_err()
    );
    let e = x
        .resize(
            &ResizeTo::Size(vec![8]),
            ResizeMode::Nearest,
            true,
            Layout::ChannelsFirst,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("align_corners"), "{e}");
    assert!(
        x.resize(
            &ResizeTo::Scale(vec![0.1]),
            ResizeMode::Linear,
            false,
            Layout::ChannelsFirst
        )
        .is_err()
    );
    // The kernels address with u32: a result past 2^32 elements is refused up front.
    let e = x
        .resize(
            &ResizeTo::Scale(vec![32768.0]),
            ResizeMode::Nearest,
            false,
            Layout::ChannelsFirst,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("2^32"), "{e}");
}
