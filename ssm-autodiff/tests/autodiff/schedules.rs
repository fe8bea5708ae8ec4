//! Learning-rate schedules, weight-decay exclusions and gradient accumulation.

use ssm_autodiff::{
    Adam, CosineWarmup, DecayExclusions, GradAccumulator, Optimizer, Param, PlateauMode,
    ReduceLrOnPlateau, Sgd, ThresholdMode, Var,
};
use ssm_runtime::testing::{HostRng, assert_close, device};
use ssm_runtime::{DType, Tensor};

#[test]
fn cosine_warmup_follows_its_formula() {
    let s = CosineWarmup::new(1e-3, 10, 110).min_lr(1e-5);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
    assert!(close(s.lr_at(0), 0.0));
    assert!(close(s.lr_at(5), 5e-4));
    assert!(close(s.lr_at(10), 1e-3));
    assert!(close(s.lr_at(60), 1e-5 + 0.5 * (1e-3 - 1e-5)));
    assert!(close(s.lr_at(110), 1e-5));
    assert!(close(s.lr_at(500), 1e-5));
    // Monotone decay after the warm-up.
    assert!((11..110).all(|t| s.lr_at(t) <= s.lr_at(t - 1)));
    let mut opt = Sgd::new(1.0);
    s.apply(&mut opt, 5);
    assert!(close(opt.lr(), 5e-4));
    // Warm-up from a fraction of the peak; a schedule no longer than its warm-up ends at
    // the floor.
    let s = CosineWarmup {
        warmup_start_factor: 0.1,
        ..CosineWarmup::new(1e-3, 10, 10).min_lr(1e-5)
    };
    assert!(close(s.lr_at(0), 1e-4));
    assert!(close(s.lr_at(5), 1e-3 * (0.1 + 0.9 * 0.5)));
    assert!(close(s.lr_at(10), 1e-5));
    assert!(close(s.lr_at(11), 1e-5));
}

#[test]
fn reduce_on_plateau_replays_pytorch() {
    // Same sequence through torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min",
    // factor=0.5, patience=2): reductions after the 5th and the 9th epoch.
    let mut opt = Sgd::new(1.0);
    let mut s = ReduceLrOnPlateau::new(PlateauMode::Min)
        .patience(2)
        .factor(0.5);
    let metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.9, 0.9, 0.9, 0.9];
    let mut lrs = Vec::new();
    for m in metrics {
        s.step(m, &mut opt);
        lrs.push(opt.lr());
    }
    assert_eq!(
        lrs,
        vec![1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    );
    assert_eq!(s.best(), 0.8);
    // Relative threshold: 0.8·(1 − 1e-4) must be beaten, 0.79995 is not enough.
    let mut s2 = ReduceLrOnPlateau::new(PlateauMode::Min).patience(0);
    let mut o2 = Sgd::new(1.0);
    s2.step(0.8, &mut o2);
    assert!(s2.step(0.79995, &mut o2), "not a real improvement: reduce");
    // Cooldown blocks the counter; max mode; min_lr bound.
    let mut s3 = ReduceLrOnPlateau::new(PlateauMode::Max).patience(0);
    s3.cooldown = 2;
    s3.min_lr = 0.05;
    let mut o3 = Sgd::new(1.0);
    let got: Vec<bool> = [0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
        .iter()
        .map(|&m| s3.step(m, &mut o3))
        .collect();
    assert_eq!(got, vec![false, true, false, false, true, false, false]);
    assert!((o3.lr() - 0.05).abs() < 1e-15, "bounded by min_lr");
    // Absolute threshold: 0.8 − 0.01 must be beaten; a reduction smaller than eps is
    // skipped (and the counter still resets).
    let mut s4 = ReduceLrOnPlateau::new(PlateauMode::Min).patience(0);
    s4.threshold_mode = ThresholdMode::Abs;
    s4.threshold = 0.01;
    s4.eps = 0.2;
    let mut o4 = Sgd::new(1.0);
    s4.step(0.8, &mut o4);
    assert!(s4.step(0.795, &mut o4), "1.0 → 0.1 is 0.9 > eps: reduced");
    assert!((o4.lr() - 0.1).abs() < 1e-15, "{}", o4.lr());
    assert_eq!(s4.best(), 0.8, "0.795 is within the absolute threshold");
    assert!(
        !s4.step(0.7905, &mut o4),
        "0.1 → 0.01 is below eps: skipped"
    );
    assert!((o4.lr() - 0.1).abs() < 1e-15);
    assert_eq!(s4.mode(), PlateauMode::Min);
}

#[test]
#[should_panic(expected = "factor 1 must be in [0, 1)")]
fn reduce_on_plateau_refuses_a_factor_that_does_not_reduce() {
    let _ = ReduceLrOnPlateau::new(PlateauMode::Min).factor(1.0);
}

#[test]
fn weight_decay_skips_excluded_parameters() {
    let d = device();
    let w = Param::new(
        "encoder.proj.weight",
        &Tensor::ones(&[2, 3], DType::F64, &d).unwrap(),
    )
    .unwrap();
    let b = Param::new(
        "encoder.proj.bias",
        &Tensor::ones(&[3], DType::F64, &d).unwrap(),
    )
    .unwrap();
    let n = Param::new(
        "encoder.norm1.weight",
        &Tensor::ones(&[3], DType::F64, &d).unwrap(),
    )
    .unwrap();
    let k = Param::new(
        "encoder.norm_k",
        &Tensor::ones(&[2, 2], DType::F64, &d).unwrap(),
    )
    .unwrap();
    let params = [w.clone(), b.clone(), n.clone(), k.clone()];
    let mut grads = ssm_autodiff::Gradients::default();
    for p in &params {
        grads.insert(p.id(), p.value().zeros_like().unwrap());
    }
    let ex = DecayExclusions::biases_and_norms().pattern("*norm_*");
    assert!(!ex.excludes(&w) && ex.excludes(&b) && ex.excludes(&n) && ex.excludes(&k));
    let mut opt = Adam::adamw(0.1)
        .with_weight_decay(0.1)
        .with_decay_exclusions(ex.clone());
    opt.step(&params, &grads).unwrap();
    assert_close(
        "decayed",
        &w.value().to_f64_vec().unwrap(),
        &[0.99; 6],
        1e-15,
        1e-15,
    );
    for p in [&b, &n] {
        assert_eq!(
            p.value().to_f64_vec().unwrap(),
            vec![1.0; 3],
            "{}",
            p.name()
        );
    }
    assert_eq!(k.value().to_f64_vec().unwrap(), vec![1.0; 4]);
    let mut sgd = Sgd::new(0.1)
        .with_weight_decay(0.5)
        .with_decay_exclusions(ex);
    sgd.step(&params, &grads).unwrap();
    assert_close(
        "sgd decayed",
        &w.value().to_f64_vec().unwrap(),
        &[0.99 * 0.95; 6],
        1e-15,
        1e-15,
    );
    assert_eq!(b.value().to_f64_vec().unwrap(), vec![1.0; 3]);
}

#[test]
fn accumulated_micro_batches_equal_the_full_batch() {
    let d = device();
    let mut r = HostRng::new(0xacc);
    let x = Tensor::from_f64(&r.vec(4 * 3, -1.0, 1.0), &[4, 3], DType::F64, &d).unwrap();
    let w = Param::new(
        "w",
        &Tensor::from_f64(&r.vec(3 * 2, -1.0, 1.0), &[3, 2], DType::F64, &d).unwrap(),
    )
    .unwrap();
    let loss = |xb: &Tensor| -> Var {
        Var::constant(xb.clone())
            .matmul(w.var())
            .unwrap()
            .square()
            .unwrap()
            .mean(&[], false)
            .unwrap()
    };
    let full = loss(&x).backward().unwrap();
    let mut acc = GradAccumulator::new();
    for i in 0..2 {
        acc.add(loss(&x.narrow(0, 2 * i, 2).unwrap()).backward().unwrap())
            .unwrap();
    }
    assert_eq!(acc.micro_batches(), 2);
    let mean = acc.take_mean().unwrap();
    assert_eq!(acc.micro_batches(), 0);
    let full_g = full.get(w.var()).unwrap().to_f64_vec().unwrap();
    assert_close(
        "accumulated",
        &mean.get(w.var()).unwrap().to_f64_vec().unwrap(),
        &full_g,
        1e-13,
        1e-14,
    );
    // The sum of the same micro-batches is twice the mean.
    for i in 0..2 {
        acc.add(loss(&x.narrow(0, 2 * i, 2).unwrap()).backward().unwrap())
            .unwrap();
    }
    let twice: Vec<f64> = full_g.iter().map(|g| 2.0 * g).collect();
    assert_close(
        "summed",
        &acc.take_sum().get(w.var()).unwrap().to_f64_vec().unwrap(),
        &twice,
        1e-13,
        1e-14,
    );
    assert_eq!(acc.micro_batches(), 0);
}
