//! End-to-end checks through the public `ssm` crate only.

use ssm::demo::{DemoConfig, run};
use ssm::runtime::testing::device;
use ssm::{DType, Tensor, Var};

#[test]
fn demo_training_learns_the_spirals() {
    // A reduced demo run: the loss must fall and most points must end up classified.
    let cfg = DemoConfig {
        points: 64,
        hidden: 32,
        steps: 150,
        lr: 0.02,
        seed: 3,
    };
    let mut losses = Vec::new();
    let last = run(&device(), &cfg, |s| losses.push(s.loss)).unwrap();
    assert_eq!(losses.len(), cfg.steps);
    assert!(losses.iter().all(|l| l.is_finite()));
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let tail: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(tail < 0.5 * first, "loss did not fall: {first} -> {tail}");
    assert!(last.accuracy > 0.9, "accuracy {}", last.accuracy);
}

#[test]
fn the_public_crate_exposes_tensors_tape_and_scan() {
    let d = device();
    let x = Var::leaf(Tensor::from_f64(&[1.0, 2.0, 3.0], &[3], DType::F64, &d).unwrap());
    let g = x.square().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(&x).unwrap().to_f64_vec().unwrap(),
        vec![2.0, 4.0, 6.0]
    );
    assert_eq!(ssm::runtime::scan::presets::srma_abss().len(), 12);
}
