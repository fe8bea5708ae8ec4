//! The fused pointwise functions run as one kernel forward and one backward, and agree
//! with the same expression built from separate ops.

use my_ssm::runtime::testing::{HostRng, assert_close, device};
use my_ssm::{DType, Tensor, Var};
use ssm_user_crate::{gated_mix, kitchen_sink};

fn leaf(r: &mut HostRng, shape: &[usize], lo: f64, hi: f64) -> Var {
    let n: usize = shape.iter().product();
    Var::leaf(Tensor::from_f64(&r.vec(n, lo, hi), shape, DType::F64, &device()).unwrap())
}

#[test]
fn one_launch_forward_one_launch_backward() {
    let mut r = HostRng::new(91);
    let (x, y, g) = (
        leaf(&mut r, &[4, 5], -1.0, 1.0),
        leaf(&mut r, &[4, 5], -1.0, 1.0),
        leaf(&mut r, &[4, 5], -2.0, 2.0),
    );
    let before = my_ssm::runtime::launch_count();
    let out = gated_mix(&x, &y, &g, 0.8).unwrap();
    assert_eq!(
        my_ssm::runtime::launch_count() - before,
        1,
        "forward is one fused kernel"
    );
    // Backward from a seed: one fused kernel (no broadcast inputs, nothing to reduce).
    let seed = out.value().ones_like().unwrap();
    let before = my_ssm::runtime::launch_count();
    let grads = out.backward_with(&seed).unwrap();
    assert_eq!(
        my_ssm::runtime::launch_count() - before,
        1,
        "backward is one fused kernel"
    );
    assert_eq!(grads.len(), 3);
}

#[test]
fn fused_matches_unfused_ops() {
    let mut r = HostRng::new(92);
    let (x, y, g) = (
        leaf(&mut r, &[3, 4], -1.0, 1.0),
        leaf(&mut r, &[4], -1.0, 1.0),
        leaf(&mut r, &[3, 4], -2.0, 2.0),
    );
    let fused = gated_mix(&x, &y, &g, 0.8).unwrap();
    let s = g.sigmoid().unwrap();
    let unfused = x
        .mul(&s)
        .unwrap()
        .add(
            &s.rsub_scalar(1.0)
                .unwrap()
                .mul(&y)
                .unwrap()
                .mul_scalar(0.8)
                .unwrap(),
        )
        .unwrap();
    assert_close(
        "forward",
        &fused.value().to_f64_vec().unwrap(),
        &unfused.value().to_f64_vec().unwrap(),
        1e-12,
        1e-12,
    );
    let gf = fused.sum_all().unwrap().backward().unwrap();
    let gu = unfused.sum_all().unwrap().backward().unwrap();
    for v in [&x, &y, &g] {
        assert_eq!(gf.get(v).unwrap().shape(), v.shape());
        assert_close(
            "grad",
            &gf.get(v).unwrap().to_f64_vec().unwrap(),
            &gu.get(v).unwrap().to_f64_vec().unwrap(),
            1e-12,
            1e-12,
        );
    }
    // The larger expression compiles and runs (its gradient is checked by the generated test).
    let (a, b) = (leaf(&mut r, &[6], 0.2, 1.0), leaf(&mut r, &[6], 0.2, 1.0));
    assert!(
        kitchen_sink(&a, &b)
            .unwrap()
            .value()
            .to_f64_vec()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}
