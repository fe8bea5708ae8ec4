//! Normalisations and softmax against host f64 references, forward and backward, both
//! layouts, fused and chunked paths, strided inputs, f32 and f64.

use ssm_runtime::testing::{HostRng, assert_close, device};
use ssm_runtime::{DType, Layout, Norm, NormNeeds, Tensor};

use crate::{rng, rounded, upload};

/// Coordinates of row-major index `i`.
fn coords(i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    let mut rem = i;
    for d in (0..shape.len()).rev() {
        c[d] = rem % shape[d];
        rem /= shape[d];
    }
    c
}

/// (group index, channel) of every element.
fn groups(shape: &[usize], norm: Norm, layout: Layout) -> (Vec<usize>, Vec<usize>, usize) {
    let r = shape.len();
    let ca = layout.channel_axis(r);
    let c_total = shape[ca];
    let n: usize = shape.iter().product();
    let mut gid = Vec::with_capacity(n);
    let mut ch = Vec::with_capacity(n);
    let mut n_groups = 0;
    for i in 0..n {
        let co = coords(i, shape);
        let c = co[ca];
        let g = match norm {
            Norm::Layer => {
                let mut k = 0;
                for (a, &v) in co.iter().enumerate() {
                    if a != ca {
                        k = k * shape[a] + v;
                    }
                }
                k
            }
            Norm::Instance => co[0] * c_total + c,
            Norm::Group(g) => co[0] * g + c / (c_total / g),
            Norm::Batch => c,
        };
        n_groups = n_groups.max(g + 1);
        gid.push(g);
        ch.push(c);
    }
    (gid, ch, n_groups)
}

struct HostNorm {
    y: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn host_norm(
    x: &[f64],
    dy: &[f64],
    shape: &[usize],
    norm: Norm,
    layout: Layout,
    w: Option<&[f64]>,
    b: Option<&[f64]>,
    eps: f64,
) -> HostNorm {
    let (gid, ch, ng) = groups(shape, norm, layout);
    let c_total = shape[layout.channel_axis(shape.len())];
    let mut sum = vec![0.0; ng];
    let mut cnt = vec![0.0; ng];
    for (i, &g) in gid.iter().enumerate() {
        sum[g] += x[i];
        cnt[g] += 1.0;
    }
    let mean: Vec<f64> = sum.iter().zip(&cnt).map(|(s, c)| s / c).collect();
    let mut var = vec![0.0; ng];
    for (i, &g) in gid.iter().enumerate() {
        var[g] += (x[i] - mean[g]).powi(2);
    }
    let rstd: Vec<f64> = var
        .iter()
        .zip(&cnt)
        .map(|(v, c)| 1.0 / (v / c + eps).sqrt())
        .collect();
    let wv = |c: usize| w.map_or(1.0, |w| w[c]);
    let xh: Vec<f64> = (0..x.len())
        .map(|i| (x[i] - mean[gid[i]]) * rstd[gid[i]])
        .collect();
    let y: Vec<f64> = (0..x.len())
        .map(|i| xh[i] * wv(ch[i]) + b.map_or(0.0, |b| b[ch[i]]))
        .collect();
    let mut s1 = vec![0.0; ng];
    let mut s2 = vec![0.0; ng];
    let mut dw = vec![0.0; c_total];
    let mut db = vec![0.0; c_total];
    for i in 0..x.len() {
        let g = dy[i] * wv(ch[i]);
        s1[gid[i]] += g;
        s2[gid[i]] += g * xh[i];
        dw[ch[i]] += dy[i] * xh[i];
        db[ch[i]] += dy[i];
    }
    let dx: Vec<f64> = (0..x.len())
        .map(|i| {
            let k = gid[i];
            let g = dy[i] * wv(ch[i]);
            rstd[k] * (g - s1[k] / cnt[k] - xh[i] * s2[k] / cnt[k])
        })
        .collect();
    HostNorm {
        y,
        mean,
        rstd,
        dx,
        dw,
        db,
    }
}

fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (3e-5, 3e-5),
        _ => (1e-11, 1e-11),
    }
}

#[test]
fn norms_match_host_forward_and_backward() {
    let d = device();
    let mut r = rng(201);
    let cases: Vec<(&str, Norm, Layout, Vec<usize>, bool)> = vec![
        (
            "layer cf",
            Norm::Layer,
            Layout::ChannelsFirst,
            vec![2, 5, 3, 4],
            true,
        ),
        (
            "layer cl",
            Norm::Layer,
            Layout::ChannelsLast,
            vec![2, 3, 4, 5],
            true,
        ),
        (
            "layer cl 48",
            Norm::Layer,
            Layout::ChannelsLast,
            vec![3, 7, 48],
            true,
        ),
        (
            "layer cf 3d",
            Norm::Layer,
            Layout::ChannelsFirst,
            vec![2, 6, 3, 4, 5],
            false,
        ),
        (
            "instance cf",
            Norm::Instance,
            Layout::ChannelsFirst,
            vec![2, 3, 4, 5, 6],
            false,
        ),
        (
            "instance cl",
            Norm::Instance,
            Layout::ChannelsLast,
            vec![2, 4, 5, 6, 3],
            false,
        ),
        (
            "instance cf affine",
            Norm::Instance,
            Layout::ChannelsFirst,
            vec![2, 3, 7, 5],
            true,
        ),
        // 2 groups of 4800: the chunked statistics path.
        (
            "instance cf chunked",
            Norm::Instance,
            Layout::ChannelsFirst,
            vec![1, 2, 20, 20, 12],
            false,
        ),
        (
            "instance cl chunked",
            Norm::Instance,
            Layout::ChannelsLast,
            vec![1, 20, 20, 12, 2],
            false,
        ),
        // 8 channels over 40 000 positions: the affine gradient splits into > 1024 chunks.
        (
            "layer cl wide affine gradient",
            Norm::Layer,
            Layout::ChannelsLast,
            vec![2, 20000, 8],
            true,
        ),
        (
            "group cf",
            Norm::Group(3),
            Layout::ChannelsFirst,
            vec![2, 6, 4, 5],
            true,
        ),
        (
            "group cl",
            Norm::Group(2),
            Layout::ChannelsLast,
            vec![2, 4, 5, 6],
            true,
        ),
        (
            "batch cf",
            Norm::Batch,
            Layout::ChannelsFirst,
            vec![4, 3, 5, 6],
            true,
        ),
        (
            "batch cl",
            Norm::Batch,
            Layout::ChannelsLast,
            vec![4, 5, 6, 3],
            true,
        ),
        (
            "batch cf chunked",
            Norm::Batch,
            Layout::ChannelsFirst,
            vec![2, 2, 50, 60],
            true,
        ),
    ];
    for (name, norm, layout, shape, affine) in cases {
        let n: usize = shape.iter().product();
        let c = shape[layout.channel_axis(shape.len())];
        // Offset mean: checks the shifted accumulation.
        let xv: Vec<f64> = r.vec(n, -1.0, 1.0).iter().map(|v| v * 2.0 + 3.0).collect();
        let dyv = r.vec(n, -1.0, 1.0);
        let wv = r.vec(c, 0.5, 1.5);
        let bv = r.vec(c, -0.5, 0.5);
        for dtype in [DType::F32, DType::F64] {
            let (rtol, atol) = tol(dtype);
            let (xr, dyr, wr, br) = (
                rounded(&xv, dtype),
                rounded(&dyv, dtype),
                rounded(&wv, dtype),
                rounded(&bv, dtype),
            );
            let want = host_norm(
                &xr,
                &dyr,
                &shape,
                norm,
                layout,
                affine.then_some(&wr[..]),
                affine.then_some(&br[..]),
                1e-5,
            );
            let x = upload(&xv, &shape, dtype);
            let dy = upload(&dyv, &shape, dtype);
            let w = upload(&wv, &[c], dtype);
            let b = upload(&bv, &[c], dtype);
            let (wo, bo) = if affine {
                (Some(&w), Some(&b))
            } else {
                (None, None)
            };
            let what = format!("{name} {dtype}");
            let (y, stats) = x.norm_forward(norm, layout, wo, bo, 1e-5).unwrap();
            assert_close(
                &format!("{what} y"),
                &y.to_f64_vec().unwrap(),
                &want.y,
                rtol,
                atol,
            );
            assert_close(
                &format!("{what} mean"),
                &stats.mean.to_f64_vec().unwrap(),
                &want.mean,
                rtol,
                atol,
            );
            assert_close(
                &format!("{what} rstd"),
                &stats.rstd.to_f64_vec().unwrap(),
                &want.rstd,
                rtol * 10.0,
                atol,
            );
            let needs = NormNeeds {
                dx: true,
                dw: affine,
                db: affine,
            };
            let g = Tensor::norm_backward(&x, &dy, norm, layout, wo, &stats, needs).unwrap();
            assert_close(
                &format!("{what} dx"),
                &g.dx.unwrap().to_f64_vec().unwrap(),
                &want.dx,
                rtol * 10.0,
                atol * 10.0,
            );
            if affine {
                assert_close(
                    &format!("{what} dw"),
                    &g.dw.unwrap().to_f64_vec().unwrap(),
                    &want.dw,
                    rtol * 10.0,
                    atol * 10.0,
                );
                assert_close(
                    &format!("{what} db"),
                    &g.db.unwrap().to_f64_vec().unwrap(),
                    &want.db,
                    rtol * 10.0,
                    atol * 10.0,
                );
            }
        }
    }
    let _ = d;
}

#[test]
fn norms_read_strided_views() {
    let mut r = rng(202);
    let shape = [2usize, 6, 5, 4];
    let xv = r.vec(shape.iter().product(), -2.0, 2.0);
    for dtype in [DType::F32, DType::F64] {
        let (rtol, atol) = tol(dtype);
        let x_cf = upload(&xv, &shape, dtype);
        let x_cl = x_cf.permute(&[0, 2, 3, 1]).unwrap(); // strided channels-last view
        for norm in [Norm::Layer, Norm::Instance, Norm::Group(3), Norm::Batch] {
            let want = x_cf
                .norm_forward(norm, Layout::ChannelsFirst, None, None, 1e-5)
                .unwrap()
                .0;
            let got = x_cl
                .norm_forward(norm, Layout::ChannelsLast, None, None, 1e-5)
                .unwrap()
                .0;
            assert_close(
                &format!("{norm:?} strided {dtype}"),
                &got.permute(&[0, 3, 1, 2]).unwrap().to_f64_vec().unwrap(),
                &want.to_f64_vec().unwrap(),
                rtol,
                atol,
            );
        }
        // A narrowed (offset) view.
        let xn = x_cf.narrow(0, 1, 1).unwrap();
        let got = xn
            .layer_norm(None, None, 1e-5, Layout::ChannelsFirst)
            .unwrap();
        let want = x_cf
            .layer_norm(None, None, 1e-5, Layout::ChannelsFirst)
            .unwrap();
        assert_close(
            &format!("offset view {dtype}"),
            &got.to_f64_vec().unwrap(),
            &want.narrow(0, 1, 1).unwrap().to_f64_vec().unwrap(),
            rtol,
            atol,
        );
    }
}

#[test]
fn batch_norm_running_statistics_follow_pytorch() {
    let d = device();
    let mut r = rng(203);
    let shape = [4usize, 3, 5, 2];
    let (gid, _, _) = groups(&shape, Norm::Batch, Layout::ChannelsFirst);
    // Channel 1 constant (zero variance: PyTorch's running variance gets exactly 0 from
    // it), channel 2 with a variance far below eps.
    let xv: Vec<f64> = r
        .vec(40 * 3, -1.0, 1.0)
        .iter()
        .zip(&gid)
        .map(|(v, &c)| match c {
            1 => 0.75,
            2 => 0.5 + 1e-4 * v,
            _ => v + 0.5,
        })
        .collect();
    for dtype in [DType::F32, DType::F64] {
        let (rtol, atol) = tol(dtype);
        let xr = rounded(&xv, dtype);
        let rm0 = [0.1, -0.2, 0.3];
        let rv0 = [1.5, 0.8, 1.1];
        let rm = upload(&rm0, &[3], dtype);
        let rv = upload(&rv0, &[3], dtype);
        let x = upload(&xv, &shape, dtype);
        x.batch_norm_train(None, None, &rm, &rv, 0.1, 1e-5, Layout::ChannelsFirst)
            .unwrap();
        let mut want_m = rm0.to_vec();
        let mut want_v = rv0.to_vec();
        let mut batch_var = [0.0; 3];
        for c in 0..3 {
            let vals: Vec<f64> = xr
                .iter()
                .zip(&gid)
                .filter(|(_, g)| **g == c)
                .map(|(v, _)| *v)
                .collect();
            let n = vals.len() as f64;
            let m = vals.iter().sum::<f64>() / n;
            let var_u = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
            want_m[c] = 0.9 * rm0[c] + 0.1 * m;
            want_v[c] = 0.9 * rv0[c] + 0.1 * var_u;
            batch_var[c] = var_u;
        }
        assert_close(
            &format!("running mean {dtype}"),
            &rm.to_f64_vec().unwrap(),
            &want_m,
            rtol,
            atol,
        );
        assert_close(
            &format!("running var {dtype}"),
            &rv.to_f64_vec().unwrap(),
            &want_v,
            rtol,
            atol,
        );
        // Momentum 1 stores the batch's unbiased variance itself: exactly 0 for the
        // constant channel (1/rstd² − eps left −9e-13 there), the tiny one as closely as
        // the input's precision allows.
        let rv1 = upload(&rv0, &[3], dtype);
        x.batch_norm_train(None, None, &rm, &rv1, 1.0, 1e-5, Layout::ChannelsFirst)
            .unwrap();
        let got = rv1.to_f64_vec().unwrap();
        assert_eq!(got[1], 0.0, "constant channel {dtype}");
        assert_close(
            &format!("batch variance {dtype}"),
            &got,
            &batch_var,
            rtol,
            0.0,
        );
        // Evaluation uses the running statistics; its input gradient is dy·w·rstd.
        let w = upload(&[0.5, 1.0, 2.0], &[3], dtype);
        let b = upload(&[0.1, 0.2, 0.3], &[3], dtype);
        let (y, stats) = x
            .batch_norm_eval(Some(&w), Some(&b), &rm, &rv, 1e-5, Layout::ChannelsFirst)
            .unwrap();
        let wr = [0.5, 1.0, 2.0];
        let br = [0.1, 0.2, 0.3];
        let rmh = rm.to_f64_vec().unwrap();
        let rvh = rv.to_f64_vec().unwrap();
        let want: Vec<f64> = xr
            .iter()
            .zip(&gid)
            .map(|(v, &c)| (v - rmh[c]) / (rvh[c] + 1e-5).sqrt() * wr[c] + br[c])
            .collect();
        assert_close(
            &format!("eval {dtype}"),
            &y.to_f64_vec().unwrap(),
            &want,
            rtol,
            atol,
        );
        let dy = Tensor::ones(&shape, dtype, &d).unwrap();
        let g = Tensor::norm_backward(
            &x,
            &dy,
            Norm::Batch,
            Layout::ChannelsFirst,
            Some(&w),
            &stats,
            NormNeeds {
                dx: true,
                dw: false,
                db: false,
            },
        )
        .unwrap();
        let want_dx: Vec<f64> = gid
            .iter()
            .map(|&c| wr[c] / (rvh[c] + 1e-5).sqrt())
            .collect();
        assert_close(
            &format!("eval dx {dtype}"),
            &g.dx.unwrap().to_f64_vec().unwrap(),
            &want_dx,
            rtol,
            atol,
        );
    }
}

fn host_softmax(x: &[f64], shape: &[usize], axis: usize, log: bool) -> Vec<f64> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut y = vec![0.0; x.len()];
    for o in 0..x.len() / n {
        let base = (o / inner) * n * inner + o % inner;
        let vals: Vec<f64> = (0..n).map(|k| x[base + k * inner]).collect();
        let m = vals.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = vals.iter().map(|v| (v - m).exp()).sum();
        for k in 0..n {
            y[base + k * inner] = if log {
                vals[k] - m - s.ln()
            } else {
                (vals[k] - m).exp() / s
            };
        }
    }
    y
}

fn host_softmax_bwd(y: &[f64], dy: &[f64], shape: &[usize], axis: usize, log: bool) -> Vec<f64> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut dx = vec![0.0; y.len()];
    for o in 0..y.len() / n {
        let base = (o / inner) * n * inner + o % inner;
        let s: f64 = (0..n)
            .map(|k| {
                if log {
                    dy[base + k * inner]
                } else {
                    dy[base + k * inner] * y[base + k * inner]
                }
            })
            .sum();
        for k in 0..n {
            let i = base + k * inner;
            dx[i] = if log {
                dy[i] - y[i].exp() * s
            } else {
                y[i] * (dy[i] - s)
            };
        }
    }
    dx
}

fn check_softmax(r: &mut HostRng, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let xv = r.vec(n, -4.0, 4.0);
    let dyv = r.vec(n, -1.0, 1.0);
    for dtype in [DType::F32, DType::F64] {
        let (rtol, atol) = tol(dtype);
        let x = upload(&xv, shape, dtype);
        let dy = upload(&dyv, shape, dtype);
        let xr = rounded(&xv, dtype);
        let dyr = rounded(&dyv, dtype);
        for axis in 0..shape.len() {
            for log in [false, true] {
                let what = format!(
                    "{} {shape:?} axis {axis} {dtype}",
                    if log { "log_softmax" } else { "softmax" }
                );
                let y = if log {
                    x.log_softmax(axis as isize)
                } else {
                    x.softmax(axis as isize)
                }
                .unwrap();
                let want = host_softmax(&xr, shape, axis, log);
                assert_close(&what, &y.to_f64_vec().unwrap(), &want, rtol, atol);
                let dx = if log {
                    Tensor::log_softmax_backward(&y, &dy, axis as isize)
                } else {
                    Tensor::softmax_backward(&y, &dy, axis as isize)
                }
                .unwrap();
                let want_dx = host_softmax_bwd(&y.to_f64_vec().unwrap(), &dyr, shape, axis, log);
                assert_close(
                    &format!("{what} backward"),
                    &dx.to_f64_vec().unwrap(),
                    &want_dx,
                    rtol,
                    atol,
                );
            }
        }
    }
}

#[test]
fn softmax_and_log_softmax_match_host() {
    let mut r = rng(204);
    check_softmax(&mut r, &[3, 4, 5]);
    check_softmax(&mut r, &[2, 700]);
    // Large logits: no overflow.
    let d = device();
    let x = Tensor::from_f64(&[1000.0, 999.0, -1000.0], &[3], DType::F32, &d).unwrap();
    let y = x.softmax(0).unwrap().to_f64_vec().unwrap();
    let e = (-1.0f64).exp();
    assert_close(
        "softmax large",
        &y,
        &[1.0 / (1.0 + e), e / (1.0 + e), 0.0],
        1e-6,
        1e-7,
    );
}

#[test]
fn norm_errors_name_the_problem() {
    let d = device();
    let x = Tensor::zeros(&[2, 6, 4], DType::F32, &d).unwrap();
    let e = x
        .group_norm(4, None, None, 1e-5, Layout::ChannelsFirst)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 groups"), "{e}");
    let w = Tensor::ones(&[5], DType::F32, &d).unwrap();
    let e = x
        .layer_norm(Some(&w), None, 1e-5, Layout::ChannelsFirst)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weight") && e.contains("[6]"), "{e}");
    assert!(x.softmax(3).is_err());
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let single = Tensor::zeros(&layout.shape(2, 6, &[1, 1, 1]), DType::F32, &d).unwrap();
        let e = single.instance_norm(1e-5, layout).unwrap_err().to_string();
        assert!(e.contains("more than one spatial element"), "{e}");
    }
    let one = Tensor::zeros(&[1, 6], DType::F32, &d).unwrap();
    let rm = Tensor::zeros(&[6], DType::F32, &d).unwrap();
    let rv = Tensor::ones(&[6], DType::F32, &d).unwrap();
    let e = one
        .batch_norm_train(None, None, &rm, &rv, 0.1, 1e-5, Layout::ChannelsFirst)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than one value"), "{e}");
}
