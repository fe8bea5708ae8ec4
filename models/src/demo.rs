//! A small end-to-end training run on synthetic data: a two-layer GELU network learns to
//! classify points of two interleaved spirals with AdamW, binary cross-entropy computed on
//! the tape, and gradient clipping. It exercises matmul, broadcasting, reductions, the
//! fused optimizer and the RNG on whatever device is selected.

use ssm_autodiff::{Adam, Optimizer, Param, Var, clip_grad_norm};
use ssm_runtime::{DType, Device, Result, Tensor};

/// Settings of the demo run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Points per spiral arm.
    pub points: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Optimisation steps (full batch).
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Seed of data and initialisation.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            points: 256,
            hidden: 64,
            steps: 300,
            lr: 0.01,
            seed: 7,
        }
    }
}

/// Loss and accuracy after a step.
#[derive(Debug, Clone, Copy)]
pub struct DemoStep {
    /// Step index (1-based).
    pub step: usize,
    /// Mean binary cross-entropy.
    pub loss: f64,
    /// Fraction of points classified correctly.
    pub accuracy: f64,
}

/// Two interleaved spirals, labels 0/1, generated on the host from `seed`.
pub fn spirals(points: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut xs = Vec::with_capacity(points * 4);
    let mut ys = Vec::with_capacity(points * 2);
    for arm in 0..2 {
        for i in 0..points {
            let t = 0.25 + 2.75 * i as f64 / points as f64;
            let angle = t * std::f64::consts::PI + arm as f64 * std::f64::consts::PI;
            let r = t / 3.0;
            xs.push(r * angle.cos() + 0.03 * noise());
            xs.push(r * angle.sin() + 0.03 * noise());
            ys.push(arm as f64);
        }
    }
    (xs, ys)
}

/// Train and report every step through `on_step`. Returns the final step.
pub fn run(
    device: &Device,
    cfg: &DemoConfig,
    mut on_step: impl FnMut(DemoStep),
) -> Result<DemoStep> {
    let (xs, ys) = spirals(cfg.points, cfg.seed);
    let n = ys.len();
    let x = Var::constant(Tensor::from_f64(&xs, &[n, 2], DType::F32, device)?);
    let y = Tensor::from_f64(&ys, &[n, 1], DType::F32, device)?;
    let h = cfg.hidden;
    let init = |shape: &[usize], fan_in: usize, seed: u64| {
        let bound = 1.0 / (fan_in as f64).sqrt();
        Tensor::rand_uniform(shape, -bound, bound, seed, DType::F32, device)
    };
    let params = vec![
        Param::new("fc1.weight", &init(&[2, h], 2, cfg.seed + 1)?)?,
        Param::new("fc1.bias", &Tensor::zeros(&[h], DType::F32, device)?)?,
        Param::new("fc2.weight", &init(&[h, h], h, cfg.seed + 2)?)?,
        Param::new("fc2.bias", &Tensor::zeros(&[h], DType::F32, device)?)?,
        Param::new("head.weight", &init(&[h, 1], h, cfg.seed + 3)?)?,
        Param::new("head.bias", &Tensor::zeros(&[1], DType::F32, device)?)?,
    ];
    let mut opt = Adam::adamw(cfg.lr).with_weight_decay(1e-4);
    let mut last = DemoStep {
        step: 0,
        loss: f64::NAN,
        accuracy: 0.0,
    };
    for step in 1..=cfg.steps {
        let p = |i: usize| params[i].var();
        let a1 = x.matmul(p(0))?.add(p(1))?.gelu()?;
        let a2 = a1.matmul(p(2))?.add(p(3))?.gelu()?;
        let logits = a2.matmul(p(4))?.add(p(5))?;
        // BCE with logits: softplus(z) − y·z, averaged.
        let loss = logits
            .softplus()?
            .sub(&logits.mul(&Var::constant(y.clone()))?)?
            .mean(&[], false)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, 1.0)?;
        opt.step(&params, &grads)?;
        let correct = logits.value().gt_scalar(0.0)?.eq(&y)?.mean(&[], false)?;
        last = DemoStep {
            step,
            loss: loss.value().item()?,
            accuracy: correct.item()?,
        };
        on_step(last);
    }
    Ok(last)
}
