//! The f64 polyfills of `kernels::math` against the host's libm over wide ranges.

use ssm_runtime::testing::assert_close;
use ssm_runtime::{DType, UnaryOp};

use crate::{rng, upload};

#[test]
fn f64_transcendentals_are_accurate_over_wide_ranges() {
    let mut r = rng(21);
    let mut wide = r.vec(2000, -700.0, 700.0);
    wide.extend(r.vec(2000, -30.0, 30.0));
    wide.extend(r.vec(500, -1e-6, 1e-6));
    wide.extend([-745.0, 709.7, 0.0, 1e-300, -1e-300]);
    let pos: Vec<f64> = wide
        .iter()
        .map(|v| v.abs() * 1.7 + 1e-300)
        .chain([1.0, 1.0 + 1e-12, 1e300])
        .collect();
    let near: Vec<f64> = r.vec(2000, -0.999, 3.0);
    type Case<'a> = (UnaryOp, &'a [f64], fn(f64) -> f64, f64);
    let cases: [Case; 5] = [
        (UnaryOp::Exp, &wide, f64::exp, 1e-14),
        (UnaryOp::Log, &pos, f64::ln, 1e-14),
        (UnaryOp::Tanh, &wide, f64::tanh, 1e-14),
        (UnaryOp::Sigmoid, &wide, |x| 1.0 / (1.0 + (-x).exp()), 1e-14),
        (
            UnaryOp::Gelu,
            &near,
            |x| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())),
            1e-13,
        ),
    ];
    for (op, xs, f, rtol) in cases {
        let x = upload(xs, &[xs.len()], DType::F64);
        let got = x.unary(op, 0.0).unwrap().to_f64_vec().unwrap();
        let want: Vec<f64> = xs.iter().map(|&v| f(v)).collect();
        assert_close(&format!("{op:?} f64"), &got, &want, rtol, 1e-300);
    }
    // log1p accuracy through softplus on very negative inputs: ln(1 + e^x) ≈ e^x.
    let xs = r.vec(500, -700.0, -20.0);
    let x = upload(&xs, &[xs.len()], DType::F64);
    let got = x.softplus().unwrap().to_f64_vec().unwrap();
    let want: Vec<f64> = xs.iter().map(|v| v.exp().ln_1p()).collect();
    assert_close("softplus tail f64", &got, &want, 1e-13, 1e-300);
    // erf over its whole range through gelu'(x) = Φ(x) + xφ(x) is covered in elementwise;
    // here check the pow polyfill on wide exponents.
    let a = r.vec(500, 1e-3, 50.0);
    let b = r.vec(500, -8.0, 8.0);
    let ta = upload(&a, &[500], DType::F64);
    let tb = upload(&b, &[500], DType::F64);
    let got = ta.pow(&tb).unwrap().to_f64_vec().unwrap();
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x.powf(*y)).collect();
    assert_close("pow f64", &got, &want, 1e-13, 1e-300);
}

#[test]
fn f32_log1p_keeps_small_arguments_on_every_backend() {
    // softplus(x) = ln(1 + e^x) for x ≤ 0 takes log1p of e^x ∈ (0, 1]: small arguments
    // lost their low digits where log1p was log(1 + x) (SPIR-V), 1e-4 relative at −9.
    // BCE on logits takes the same log1p(e^(−|x|)).
    let mut r = rng(22);
    let mut xs = r.vec(2000, -30.0, 0.0);
    xs.extend(r.vec(500, -1.5, -1.2)); // around the series' edge, e^x = 1/4
    xs.extend([-9.21, -1.386_294_4, -1e-6, 0.0]);
    let x = upload(&xs, &[xs.len()], DType::F32);
    // Reference in f64 from the f32 inputs the kernel saw.
    let x32 = x.to_f64_vec().unwrap();
    let got = x.softplus().unwrap().to_f64_vec().unwrap();
    let want: Vec<f64> = x32.iter().map(|v| v.exp().ln_1p()).collect();
    assert_close("softplus f32", &got, &want, 2e-6, 0.0);
    let t = upload(&vec![0.0; xs.len()], &[xs.len()], DType::F32);
    let got = x.bce_with_logits(&t).unwrap().to_f64_vec().unwrap();
    assert_close("bce f32, target 0", &got, &want, 2e-6, 0.0);
}

#[test]
fn special_values_survive_every_backend() {
    // Kernels build ±∞ and NaN at run time (see kernels::math::infinity_like); check
    // that overflow, log of zero and invalid operations produce them in both dtypes.
    for dtype in [DType::F32, DType::F64] {
        let x = upload(&[1000.0, 0.0, -1.0, -0.5, 0.0], &[5], dtype);
        let e = x.exp().unwrap().to_f64_vec().unwrap();
        assert_eq!(e[0], f64::INFINITY, "exp(1000) {dtype}");
        let l = x.log().unwrap().to_f64_vec().unwrap();
        assert_eq!(l[1], f64::NEG_INFINITY, "ln(0) {dtype}");
        assert!(l[2].is_nan(), "ln(-1) {dtype}: {}", l[2]);
        let half = upload(&[0.5; 5], &[5], dtype);
        let p = x.pow(&half).unwrap().to_f64_vec().unwrap();
        assert!(p[3].is_nan(), "(-0.5)^0.5 {dtype}: {}", p[3]);
        let neg = upload(&[-1.0; 5], &[5], dtype);
        let q = x.pow(&neg).unwrap().to_f64_vec().unwrap();
        assert_eq!(q[4], f64::INFINITY, "0^-1 {dtype}");
        let m = x.max(&[0], false).unwrap().item().unwrap();
        assert_eq!(m, 1000.0);
    }
}

#[test]
fn f32_tanh_keeps_small_arguments_on_every_backend() {
    // Vulkan lowers tanh to (e^2x − 1)/(e^2x + 1), which cancels for small x (lavapipe
    // was 1e-2 relative off at 4e-6); the series / 1 − 2/(e^2|x| + 1) split is not.
    let mut r = rng(23);
    let mut xs = r.vec(1000, -1e-3, 1e-3);
    xs.extend(r.vec(1000, -0.35, 0.35)); // around the split at 0.3
    xs.extend(r.vec(1000, -30.0, 30.0));
    xs.extend([1e-30, -2e-8, 0.3, -0.3, 9.0, 100.0]);
    let x = upload(&xs, &[xs.len()], DType::F32);
    let x32 = x.to_f64_vec().unwrap();
    let got = x.tanh().unwrap().to_f64_vec().unwrap();
    let want: Vec<f64> = x32.iter().map(|v| v.tanh()).collect();
    assert_close("tanh f32", &got, &want, 1e-6, 0.0);
    let special = upload(
        &[f64::INFINITY, f64::NEG_INFINITY, f64::NAN],
        &[3],
        DType::F32,
    );
    let t = special.tanh().unwrap().to_f64_vec().unwrap();
    assert_eq!(&t[..2], &[1.0, -1.0]);
    assert!(t[2].is_nan());
}

#[test]
fn f32_log_is_relatively_accurate_near_one() {
    // Vulkan bounds log's error near 1 only absolutely (lavapipe: 1e-2 relative at
    // 1 − 5e-6); the log1p series covers [0.75, 1.25].
    let mut r = rng(24);
    let mut xs: Vec<f64> = r.vec(1000, 1.0 - 1e-3, 1.0 + 1e-3);
    xs.extend(r.vec(1000, 0.7, 1.3)); // across the series' edges
    xs.extend(r.vec(1000, 1e-6, 1e6));
    let x = upload(&xs, &[xs.len()], DType::F32);
    let x32: Vec<f64> = x
        .to_f64_vec()
        .unwrap()
        .into_iter()
        .filter(|&v| v != 1.0)
        .collect();
    let x = upload(&x32, &[x32.len()], DType::F32);
    let got = x.log().unwrap().to_f64_vec().unwrap();
    let want: Vec<f64> = x32.iter().map(|v| v.ln()).collect();
    assert_close("ln f32", &got, &want, 1e-6, 0.0);
}
