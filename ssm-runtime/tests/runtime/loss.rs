//! Pointwise loss kernels and one-hot labels against host references.

use ssm_runtime::testing::{assert_close, device};
use ssm_runtime::{DType, Layout, Tensor};

use crate::{rng, rounded, upload};

#[test]
fn bce_with_logits_is_stable_and_matches_host() {
    let mut r = rng(501);
    let mut xv = r.vec(60, -30.0, 30.0);
    xv.extend([0.0, 100.0, -100.0, 1e-8]);
    let n = xv.len();
    let tv = r.vec(n, 0.0, 1.0);
    let gv = r.vec(n, -1.0, 1.0);
    for dtype in [DType::F32, DType::F64] {
        let (xr, tr, gr) = (
            rounded(&xv, dtype),
            rounded(&tv, dtype),
            rounded(&gv, dtype),
        );
        let x = upload(&xv, &[n], dtype);
        let t = upload(&tv, &[n], dtype);
        let g = upload(&gv, &[n], dtype);
        let want: Vec<f64> = xr
            .iter()
            .zip(&tr)
            .map(|(&x, &t)| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p())
            .collect();
        let (rt, at) = if dtype == DType::F32 {
            (2e-6, 1e-6)
        } else {
            (1e-13, 1e-15)
        };
        assert_close(
            &format!("bce {dtype}"),
            &x.bce_with_logits(&t).unwrap().to_f64_vec().unwrap(),
            &want,
            rt,
            at,
        );
        let want_g: Vec<f64> = (0..n)
            .map(|i| gr[i] * (1.0 / (1.0 + (-xr[i]).exp()) - tr[i]))
            .collect();
        let got = x.bce_with_logits_backward(&t, &g).unwrap();
        assert_close(
            &format!("bce grad {dtype}"),
            &got.to_f64_vec().unwrap(),
            &want_g,
            rt,
            at,
        );
    }
    // Broadcast target (one value per row) and a mismatched target.
    let d = device();
    let x = Tensor::zeros(&[2, 3], DType::F32, &d).unwrap();
    let t = Tensor::ones(&[2, 1], DType::F32, &d).unwrap();
    let l = x.bce_with_logits(&t).unwrap().to_f64_vec().unwrap();
    assert_close(
        "bce broadcast",
        &l,
        &[std::f64::consts::LN_2; 6],
        1e-6,
        1e-7,
    );
    let bad = Tensor::ones(&[3, 3], DType::F32, &d).unwrap();
    assert!(x.bce_with_logits(&bad).is_err());
}

#[test]
fn one_hot_in_both_layouts() {
    let d = device();
    let labels = Tensor::from_f64(&[0.0, 2.0, 1.0, 2.0], &[1, 2, 2], DType::F32, &d).unwrap();
    let cf = Tensor::one_hot(&labels, 3, Layout::ChannelsFirst).unwrap();
    assert_eq!(cf.shape(), &[1, 3, 2, 2]);
    assert_eq!(
        cf.to_f64_vec().unwrap(),
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    );
    let cl = Tensor::one_hot(&labels, 3, Layout::ChannelsLast).unwrap();
    assert_eq!(cl.shape(), &[1, 2, 2, 3]);
    assert_eq!(
        cl.to_f64_vec().unwrap(),
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    );
}
