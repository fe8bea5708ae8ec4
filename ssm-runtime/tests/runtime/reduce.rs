use ssm_runtime::testing::assert_close;
use ssm_runtime::{DType, Tensor};

use crate::{rng, rounded, upload};

/// Host reduction of a row-major `shape` over `axes` with `f` folding the kept groups.
fn host_reduce(x: &[f64], shape: &[usize], axes: &[usize], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).collect();
    let n_out: usize = kept.iter().map(|&d| shape[d]).product();
    let mut groups = vec![Vec::new(); n_out];
    for (i, &v) in x.iter().enumerate() {
        let mut rem = i;
        let mut coords = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            coords[d] = rem % shape[d];
            rem /= shape[d];
        }
        let mut o = 0;
        for &d in &kept {
            o = o * shape[d] + coords[d];
        }
        groups[o].push(v);
    }
    groups.iter().map(|g| f(g)).collect()
}

fn sum(g: &[f64]) -> f64 {
    g.iter().sum()
}
fn var(g: &[f64], corr: usize) -> f64 {
    let m = sum(g) / g.len() as f64;
    g.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (g.len() - corr) as f64
}

#[test]
fn reductions_over_axis_sets_match_host() {
    let mut r = rng(31);
    let shape = [3, 4, 5, 6];
    let axis_sets: [&[usize]; 7] = [&[3], &[0], &[1, 2], &[0, 3], &[0, 1, 2, 3], &[2], &[1, 3]];
    for (dtype, rtol, atol) in [(DType::F32, 2e-5, 1e-5), (DType::F64, 1e-12, 1e-12)] {
        let raw = r.vec(360, -2.0, 3.0);
        let xr = rounded(&raw, dtype);
        let x = upload(&raw, &shape, dtype);
        for axes in axis_sets {
            let ia: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
            let check = |name: &str, got: Tensor, f: &dyn Fn(&[f64]) -> f64, rt: f64, at: f64| {
                let want = host_reduce(&xr, &shape, axes, f);
                assert_close(
                    &format!("{name} {axes:?} {dtype}"),
                    &got.to_f64_vec().unwrap(),
                    &want,
                    rt,
                    at,
                );
            };
            check("sum", x.sum(&ia, false).unwrap(), &sum, rtol, atol);
            check(
                "mean",
                x.mean(&ia, true).unwrap(),
                &|g| sum(g) / g.len() as f64,
                rtol,
                atol,
            );
            check(
                "max",
                x.max(&ia, false).unwrap(),
                &|g| g.iter().cloned().fold(f64::MIN, f64::max),
                0.0,
                0.0,
            );
            check(
                "min",
                x.min(&ia, false).unwrap(),
                &|g| g.iter().cloned().fold(f64::MAX, f64::min),
                0.0,
                0.0,
            );
            check(
                "var",
                x.var(&ia, 1, false).unwrap(),
                &|g| var(g, 1),
                rtol * 10.0,
                atol,
            );
            check(
                "var0",
                x.var(&ia, 0, false).unwrap(),
                &|g| var(g, 0),
                rtol * 10.0,
                atol,
            );
            // Same reductions through a transposed view (other memory order).
            let xt = x.permute(&[3, 1, 0, 2]).unwrap();
            let map = [2usize, 1, 3, 0]; // original axis -> position in xt
            let it: Vec<isize> = axes.iter().map(|&a| map[a] as isize).collect();
            let got = xt.sum(&it, false).unwrap();
            let want_shape = ssm_runtime::shape::reduced_shape(
                xt.shape(),
                &{
                    let mut v: Vec<usize> = it.iter().map(|&a| a as usize).collect();
                    v.sort();
                    v
                },
                false,
            );
            assert_eq!(got.shape(), want_shape.as_slice());
            let direct = x
                .permute(&[3, 1, 0, 2])
                .unwrap()
                .contiguous()
                .unwrap()
                .sum(&it, false)
                .unwrap();
            assert_close(
                &format!("sum^T {axes:?} {dtype}"),
                &got.to_f64_vec().unwrap(),
                &direct.to_f64_vec().unwrap(),
                rtol,
                atol,
            );
        }
    }
}

#[test]
fn argmax_prefers_first_index_and_nan() {
    let d = ssm_runtime::testing::device();
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_f64(
            &[1.0, 3.0, 3.0, 2.0, 5.0, 5.0, -1.0, 0.0],
            &[2, 4],
            dtype,
            &d,
        )
        .unwrap();
        assert_eq!(
            x.argmax(1, false).unwrap().to_vec::<u32>().unwrap(),
            vec![1, 0]
        );
        assert_eq!(
            x.argmin(1, false).unwrap().to_vec::<u32>().unwrap(),
            vec![0, 2]
        );
        assert_eq!(x.argmax(0, true).unwrap().shape(), &[1, 4]);
        let y = Tensor::from_f64(&[1.0, f64::NAN, 7.0], &[3], dtype, &d).unwrap();
        assert_eq!(
            y.argmax(0, false).unwrap().to_vec::<u32>().unwrap(),
            vec![1]
        );
        assert!(y.max(&[0], false).unwrap().item().unwrap().is_nan());
    }
}

#[test]
fn long_reductions_split_into_chunks() {
    // Few outputs over a long range take the two-stage path.
    let mut r = rng(32);
    for (dtype, rtol) in [(DType::F32, 1e-4), (DType::F64, 1e-11)] {
        let n = 100_003;
        let raw = r.vec(2 * n, -1.0, 1.5);
        let xr = rounded(&raw, dtype);
        let x = upload(&raw, &[2, n], dtype);
        let want: Vec<f64> = (0..2)
            .map(|i| xr[i * n..(i + 1) * n].iter().sum())
            .collect();
        assert_close(
            &format!("long sum {dtype}"),
            &x.sum(&[1], false).unwrap().to_f64_vec().unwrap(),
            &want,
            rtol,
            1e-6,
        );
        // Long reduction along a non-innermost axis (unit-per-item layout, chunked).
        let xt = x.transpose(0, 1).unwrap();
        assert_close(
            &format!("long sum^T {dtype}"),
            &xt.sum(&[0], false).unwrap().to_f64_vec().unwrap(),
            &want,
            rtol,
            1e-6,
        );
        let am = x.argmax(1, false).unwrap().to_vec::<u32>().unwrap();
        for i in 0..2 {
            let row = &xr[i * n..(i + 1) * n];
            let best = row.iter().cloned().fold(f64::MIN, f64::max);
            let first = row.iter().position(|&v| v == best).unwrap();
            assert_eq!(am[i] as usize, first, "argmax row {i} {dtype}");
        }
        let v = x.var(&[1], 1, false).unwrap().to_f64_vec().unwrap();
        let wv: Vec<f64> = (0..2).map(|i| var(&xr[i * n..(i + 1) * n], 1)).collect();
        assert_close(&format!("long var {dtype}"), &v, &wv, rtol, 1e-8);
    }
}

#[test]
fn sum_to_shape_reduces_broadcast_axes() {
    let mut r = rng(33);
    let raw = r.vec(2 * 3 * 4, -1.0, 1.0);
    let x = upload(&raw, &[2, 3, 4], DType::F64);
    let got = x.sum_to_shape(&[3, 1]).unwrap();
    assert_eq!(got.shape(), &[3, 1]);
    let want: Vec<f64> = (0..3)
        .map(|j| {
            (0..2)
                .flat_map(|i| (0..4).map(move |k| (i, k)))
                .map(|(i, k)| raw[i * 12 + j * 4 + k])
                .sum()
        })
        .collect();
    assert_close(
        "sum_to_shape",
        &got.to_f64_vec().unwrap(),
        &want,
        1e-12,
        1e-12,
    );
    assert!(x.sum_to_shape(&[5]).is_err());
}
