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

/// Index of the first maximum (`sign` 1) or minimum (−1) of `g`.
fn first_extreme(g: &[f64], sign: f64) -> f64 {
    let best = g.iter().map(|v| v * sign).fold(f64::MIN, f64::max);
    g.iter().position(|&v| v * sign == best).unwrap() as f64
}

/// Shapes that take each layout of the kernel: a unit per output, chunked or not (reduced
/// axes strided, merged or not, a size-1 axis among them), short contiguous rows (a unit
/// each, or blocks of threads several to a cube), reduced
/// lengths around the unroll of 8 loads, a cube per output (few outputs), and unmerged
/// reduced axes under a long innermost one (reduced in two passes). Sums and
/// variances on random values; extremes and arg-extremes on small integers, whose many
/// ties check that the first index wins across unrolled blocks and chunks.
#[test]
fn reductions_in_every_layout_match_host() {
    let mut r = rng(34);
    let cases: [(&[usize], &[usize]); 18] = [
        (&[3, 700, 40], &[0, 1]),
        // Contiguous rows, several a cube: 32-thread blocks, the last cube partly past the
        // outputs (37 rows, 8 a cube); 33 elements over 32 threads; 64-thread blocks.
        (&[37, 96], &[1]),
        (&[70, 33], &[1]),
        (&[9, 2, 100], &[1, 2]),
        (&[11, 1030], &[1]),
        (&[300, 64], &[0]),
        (&[1, 33], &[0]),
        (&[7, 33], &[0]),
        (&[8, 33], &[0]),
        (&[9, 33], &[0]),
        (&[17, 1, 33], &[0, 1]),
        (&[50, 5], &[1]),
        (&[6, 40, 4], &[0, 2]),
        (&[3, 5, 300], &[0, 2]),
        (&[2, 4, 3, 260], &[0, 2, 3]),
        (&[2, 5000], &[0]),
        (&[700, 12], &[0]),
        (&[2000, 3], &[0]),
    ];
    for (dtype, rtol, atol) in [(DType::F32, 2e-5, 1e-4), (DType::F64, 1e-12, 1e-12)] {
        for (shape, axes) in cases {
            let n: usize = shape.iter().product();
            let what = |name: &str| format!("{name} {shape:?} over {axes:?} {dtype}");
            let ia: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
            let raw = r.vec(n, -2.0, 3.0);
            let xr = rounded(&raw, dtype);
            let x = upload(&raw, shape, dtype);
            let got = x.sum(&ia, false).unwrap().to_f64_vec().unwrap();
            assert_close(
                &what("sum"),
                &got,
                &host_reduce(&xr, shape, axes, sum),
                rtol,
                atol,
            );
            let got = x.var(&ia, 0, false).unwrap().to_f64_vec().unwrap();
            let want = host_reduce(&xr, shape, axes, |g| var(g, 0));
            assert_close(&what("var"), &got, &want, rtol * 10.0, atol);

            let ints: Vec<f64> = r.vec(n, 0.0, 4.0).iter().map(|v| v.floor()).collect();
            let xi = upload(&ints, shape, dtype);
            let fold =
                |g: &[f64], sign: f64| g.iter().map(|v| v * sign).fold(f64::MIN, f64::max) * sign;
            let got = xi.max(&ia, false).unwrap().to_f64_vec().unwrap();
            assert_eq!(
                got,
                host_reduce(&ints, shape, axes, |g| fold(g, 1.0)),
                "{}",
                what("max")
            );
            let got = xi.min(&ia, false).unwrap().to_f64_vec().unwrap();
            assert_eq!(
                got,
                host_reduce(&ints, shape, axes, |g| fold(g, -1.0)),
                "{}",
                what("min")
            );
            let a = axes[0];
            for (name, sign) in [("argmax", 1.0), ("argmin", -1.0)] {
                let t = if sign > 0.0 {
                    xi.argmax(a as isize, false)
                } else {
                    xi.argmin(a as isize, false)
                };
                let got: Vec<f64> = t
                    .unwrap()
                    .to_vec::<u32>()
                    .unwrap()
                    .iter()
                    .map(|&i| i as f64)
                    .collect();
                let want = host_reduce(&ints, shape, &[a], |g| first_extreme(g, sign));
                assert_eq!(got, want, "{}", what(name));
            }
        }
    }
}

/// Outputs or reduced ranges of length zero: empty results, and zero sums.
#[test]
fn reductions_of_empty_extents() {
    let d = ssm_runtime::testing::device();
    let x = Tensor::zeros(&[0, 300], DType::F32, &d).unwrap();
    assert_eq!(x.sum(&[1], false).unwrap().shape(), &[0]);
    assert_eq!(x.argmax(1, false).unwrap().shape(), &[0]);
    let y = Tensor::zeros(&[3, 0], DType::F32, &d).unwrap();
    let s = y.sum(&[1], false).unwrap();
    assert_eq!(s.to_f64_vec().unwrap(), vec![0.0; 3]);
    assert!(y.max(&[1], false).is_err());
}
