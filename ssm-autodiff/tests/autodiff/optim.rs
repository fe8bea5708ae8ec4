//! Optimizer objects against a host replica of PyTorch's update rules.

use ssm_autodiff::{Adam, Gradients, Optimizer, Param, Sgd, clip_grad_norm, clip_grad_value};
use ssm_runtime::testing::{HostRng, assert_close, device};
use ssm_runtime::{DType, Tensor};

fn tensor(v: &[f64]) -> Tensor {
    Tensor::from_f64(v, &[v.len()], DType::F64, &device()).unwrap()
}

fn grads_for(p: &Param, g: &[f64]) -> Gradients {
    let mut grads = Gradients::default();
    grads.insert(p.id(), tensor(g));
    grads
}

#[test]
fn sgd_variants_follow_pytorch() {
    let mut r = HostRng::new(71);
    for (momentum, dampening, nesterov, wd) in [
        (0.0, 0.3, false, 0.0),
        (0.9, 0.1, false, 0.01),
        (0.9, 0.0, true, 0.0),
    ] {
        let init = r.vec(5, -1.0, 1.0);
        let p = Param::new("w", &tensor(&init)).unwrap();
        let mut opt = Sgd::new(0.1).with_momentum(momentum);
        (opt.dampening, opt.nesterov, opt.weight_decay) = (dampening, nesterov, wd);
        let (mut host, mut buf) = (init.clone(), vec![0.0; 5]);
        for step in 0..3 {
            let g = r.vec(5, -1.0, 1.0);
            opt.step(std::slice::from_ref(&p), &grads_for(&p, &g))
                .unwrap();
            for i in 0..5 {
                let gd = g[i] + wd * host[i];
                let d = if momentum == 0.0 {
                    gd
                } else {
                    buf[i] = if step == 0 {
                        gd
                    } else {
                        momentum * buf[i] + (1.0 - dampening) * gd
                    };
                    if nesterov {
                        gd + momentum * buf[i]
                    } else {
                        buf[i]
                    }
                };
                host[i] -= 0.1 * d;
            }
        }
        assert_close(
            &format!("sgd m={momentum} n={nesterov}"),
            &p.value().to_f64_vec().unwrap(),
            &host,
            1e-12,
            1e-12,
        );
    }
    // Nesterov without momentum, or with dampening, is refused (PyTorch raises too).
    let p = Param::new("w", &tensor(&[1.0, 2.0])).unwrap();
    for (momentum, dampening) in [(0.0, 0.0), (0.9, 0.1)] {
        let mut opt = Sgd::new(0.1).with_momentum(momentum);
        (opt.dampening, opt.nesterov) = (dampening, true);
        let e = opt
            .step(std::slice::from_ref(&p), &grads_for(&p, &[1.0, 1.0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Nesterov"), "{e}");
    }
    assert_eq!(p.value().to_f64_vec().unwrap(), vec![1.0, 2.0], "untouched");
}

#[test]
fn adam_and_adamw_follow_pytorch() {
    let mut r = HostRng::new(72);
    for decoupled in [false, true] {
        let init = r.vec(4, -1.0, 1.0);
        let p = Param::new("w", &tensor(&init)).unwrap();
        let mut opt = if decoupled {
            Adam::adamw(0.01)
        } else {
            Adam::new(0.01).with_weight_decay(0.05)
        };
        let wd = opt.weight_decay;
        let (mut host, mut m, mut v) = (init.clone(), vec![0.0; 4], vec![0.0; 4]);
        for t in 1..=3 {
            let g = r.vec(4, -1.0, 1.0);
            opt.step(std::slice::from_ref(&p), &grads_for(&p, &g))
                .unwrap();
            for i in 0..4 {
                let gd = if decoupled { g[i] } else { g[i] + wd * host[i] };
                if decoupled {
                    host[i] *= 1.0 - 0.01 * wd;
                }
                m[i] = 0.9 * m[i] + 0.1 * gd;
                v[i] = 0.999 * v[i] + 0.001 * gd * gd;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                host[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        assert_close(
            &format!("adam decoupled={decoupled}"),
            &p.value().to_f64_vec().unwrap(),
            &host,
            1e-10,
            1e-12,
        );
    }
}

#[test]
fn training_a_line_converges() {
    // Fit y = 2x − 1 by Adam through the tape.
    let d = device();
    let xs: Vec<f64> = (0..16).map(|i| i as f64 / 8.0 - 1.0).collect();
    let ys: Vec<f64> = xs.iter().map(|x| 2.0 * x - 1.0).collect();
    let x = Tensor::from_f64(&xs, &[16, 1], DType::F32, &d).unwrap();
    let y = Tensor::from_f64(&ys, &[16, 1], DType::F32, &d).unwrap();
    let w = Param::new("w", &Tensor::zeros(&[1, 1], DType::F32, &d).unwrap()).unwrap();
    let b = Param::new("b", &Tensor::zeros(&[1], DType::F32, &d).unwrap()).unwrap();
    let params = [w.clone(), b.clone()];
    let mut opt = Adam::new(0.1);
    let mut last = f64::MAX;
    for _ in 0..150 {
        let pred = ssm_autodiff::Var::constant(x.clone())
            .matmul(w.var())
            .unwrap()
            .add(b.var())
            .unwrap();
        let loss = pred
            .sub(&ssm_autodiff::Var::constant(y.clone()))
            .unwrap()
            .square()
            .unwrap()
            .mean(&[], false)
            .unwrap();
        last = loss.value().item().unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&params, &grads).unwrap();
    }
    assert!(last < 1e-3, "loss {last}");
    assert!(
        (w.value().item().unwrap() - 2.0).abs() < 0.05
            && (b.value().item().unwrap() + 1.0).abs() < 0.05
    );
}

#[test]
fn clipping_scales_to_the_max_norm() {
    let p = Param::new("w", &tensor(&[0.0, 0.0])).unwrap();
    let q = Param::new("v", &tensor(&[0.0])).unwrap();
    let mut grads = grads_for(&p, &[3.0, 0.0]);
    grads.insert(q.id(), tensor(&[4.0]));
    let norm = clip_grad_norm(&mut grads, 1.0).unwrap().unwrap();
    assert!((norm.item().unwrap() - 5.0).abs() < 1e-12);
    let coef = 1.0 / (5.0 + 1e-6);
    assert_close(
        "clipped",
        &grads.get_id(p.id()).unwrap().to_f64_vec().unwrap(),
        &[3.0 * coef, 0.0],
        1e-12,
        0.0,
    );
    assert_close(
        "clipped",
        &grads.get_id(q.id()).unwrap().to_f64_vec().unwrap(),
        &[4.0 * coef],
        1e-12,
        0.0,
    );
    // Below the threshold nothing changes.
    let mut small = grads_for(&p, &[0.1, 0.2]);
    clip_grad_norm(&mut small, 1.0).unwrap();
    assert_close(
        "unclipped",
        &small.get_id(p.id()).unwrap().to_f64_vec().unwrap(),
        &[0.1, 0.2],
        0.0,
        0.0,
    );
    // A NaN anywhere poisons every gradient (PyTorch's clamp keeps the NaN coefficient).
    let mut bad = grads_for(&p, &[0.1, 0.2]);
    bad.insert(q.id(), tensor(&[f64::NAN]));
    let norm = clip_grad_norm(&mut bad, 1.0).unwrap().unwrap();
    assert!(norm.item().unwrap().is_nan());
    for id in [p.id(), q.id()] {
        let g = bad.get_id(id).unwrap().to_f64_vec().unwrap();
        assert!(g.iter().all(|v| v.is_nan()), "{g:?}");
    }
}

#[test]
fn value_clipping_clamps_each_element() {
    let p = Param::new("w", &tensor(&[0.0; 5])).unwrap();
    let q = Param::new("v", &tensor(&[0.0])).unwrap();
    let mut grads = grads_for(&p, &[-3.0, -0.5, 0.25, 2.0, f64::NAN]);
    grads.insert(q.id(), tensor(&[1.5]));
    clip_grad_value(&mut grads, 1.0).unwrap();
    let g = grads.get_id(p.id()).unwrap().to_f64_vec().unwrap();
    assert_eq!(&g[..4], &[-1.0, -0.5, 0.25, 1.0]);
    assert!(g[4].is_nan(), "a NaN stays NaN, as torch.clamp keeps it");
    assert_eq!(
        grads.get_id(q.id()).unwrap().to_f64_vec().unwrap(),
        vec![1.0]
    );
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let e = clip_grad_value(&mut grads, bad).unwrap_err().to_string();
        assert!(e.contains("clip value"), "{bad}: {e}");
    }
}
