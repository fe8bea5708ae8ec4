use ssm_runtime::testing::assert_close;
use ssm_runtime::{DType, OptimRule, OptimScalars, Tensor, optimizer_step};

use crate::{rng, rounded, upload};

/// Host replica of one update (PyTorch semantics).
fn host_step(
    rule: OptimRule,
    p: &mut [f64],
    g: &[f64],
    s1: &mut [f64],
    s2: &mut [f64],
    s: &OptimScalars,
) {
    for i in 0..p.len() {
        match rule {
            OptimRule::Sgd | OptimRule::SgdNesterov => {
                let gd = g[i] + s.weight_decay * p[i];
                s1[i] = if s.corr1 == 1.0 {
                    gd
                } else {
                    s.beta1 * s1[i] + (1.0 - s.dampening) * gd
                };
                let d = if rule == OptimRule::SgdNesterov {
                    gd + s.beta1 * s1[i]
                } else {
                    s1[i]
                };
                p[i] -= s.lr * d;
            }
            OptimRule::Adam | OptimRule::AdamW => {
                let adamw = rule == OptimRule::AdamW;
                let gd = if adamw {
                    g[i]
                } else {
                    g[i] + s.weight_decay * p[i]
                };
                if adamw {
                    p[i] *= 1.0 - s.lr * s.weight_decay;
                }
                s1[i] = s.beta1 * s1[i] + (1.0 - s.beta1) * gd;
                s2[i] = s.beta2 * s2[i] + (1.0 - s.beta2) * gd * gd;
                p[i] -= s.lr * s.corr1 * s1[i] / (s2[i].sqrt() * s.corr2 + s.eps);
            }
        }
    }
}

#[test]
fn fused_updates_match_host_over_several_steps() {
    let mut r = rng(51);
    let rules = [
        OptimRule::Sgd,
        OptimRule::SgdNesterov,
        OptimRule::Adam,
        OptimRule::AdamW,
    ];
    // atol: a few ulps of the update's terms (|g| ≤ 1, |p| ≤ 1, sums of a few): the
    // momentum of gradients of random signs can cancel far below them (seed
    // 1796423340552259197 left an SGD-Nesterov state of 1.9e-3 off by 1.8e-7 in f32).
    for (dtype, rtol, atol) in [(DType::F32, 1e-5, 2e-6), (DType::F64, 1e-13, 1e-14)] {
        for rule in rules {
            let n = 37;
            let mut p = rounded(&r.vec(n, -1.0, 1.0), dtype);
            let (mut s1, mut s2) = (vec![0.0; n], vec![0.0; n]);
            let dp = upload(&p, &[n], dtype);
            let d1 = Tensor::zeros(&[n], dtype, dp.device()).unwrap();
            let d2 = Tensor::zeros(&[n], dtype, dp.device()).unwrap();
            for t in 1..=4 {
                let g = rounded(&r.nonzero(n, 0.01, 1.0), dtype);
                let (b1, b2) = (0.9, 0.999);
                let adam = matches!(rule, OptimRule::Adam | OptimRule::AdamW);
                let s = OptimScalars {
                    lr: 0.05,
                    weight_decay: 0.01,
                    beta1: b1,
                    beta2: b2,
                    eps: 1e-8,
                    dampening: 0.1,
                    corr1: if adam {
                        1.0 / (1.0 - b1.powi(t))
                    } else if t == 1 {
                        1.0
                    } else {
                        0.0
                    },
                    corr2: if adam {
                        1.0 / (1.0 - b2.powi(t)).sqrt()
                    } else {
                        0.0
                    },
                };
                optimizer_step(&dp, &upload(&g, &[n], dtype), &d1, &d2, rule, &s).unwrap();
                host_step(rule, &mut p, &g, &mut s1, &mut s2, &s);
            }
            assert_close(
                &format!("{rule:?} {dtype} param"),
                &dp.to_f64_vec().unwrap(),
                &p,
                rtol,
                atol,
            );
            assert_close(
                &format!("{rule:?} {dtype} state"),
                &d1.to_f64_vec().unwrap(),
                &s1,
                rtol,
                atol,
            );
        }
    }
}

#[test]
fn optimizer_step_rejects_mismatched_state() {
    let p = upload(&[1.0, 2.0], &[2], DType::F32);
    let g = upload(&[1.0, 2.0, 3.0], &[3], DType::F32);
    let e = optimizer_step(&p, &g, &p, &p, OptimRule::Sgd, &OptimScalars::default()).unwrap_err();
    assert!(e.to_string().contains("grad"), "{e}");
}
