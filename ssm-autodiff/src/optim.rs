//! Optimizers (one fused kernel per parameter update) and gradient clipping.

use std::collections::HashMap;

use ssm_runtime::{Error, OptimRule, OptimScalars, Result, Tensor, optimizer_step};

use crate::param::Param;
use crate::var::Gradients;

/// Updates parameters from gradients.
pub trait Optimizer {
    /// One update of every parameter that has a gradient in `grads` (others are skipped,
    /// as PyTorch skips parameters whose `.grad` is `None`).
    fn step(&mut self, params: &[Param], grads: &Gradients) -> Result<()>;
    /// Current learning rate.
    fn lr(&self) -> f64;
    /// Set the learning rate (schedules call this between steps).
    fn set_lr(&mut self, lr: f64);
}

/// Parameters that get no weight decay, by name pattern (`*` matches any run of
/// characters, e.g. `*.bias`, `*norm*`) and optionally every parameter with at most one
/// axis (biases and normalisation weights, the usual exclusion).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecayExclusions {
    patterns: Vec<String>,
    one_dimensional: bool,
}

impl DecayExclusions {
    /// Nothing excluded.
    pub fn new() -> Self {
        Self::default()
    }

    /// The common choice: biases (`*.bias`) and every parameter with at most one axis
    /// (norm weights and biases, scalars).
    pub fn biases_and_norms() -> Self {
        DecayExclusions::new().pattern("*.bias").one_dimensional()
    }

    /// Exclude names matching a glob pattern.
    pub fn pattern(mut self, p: &str) -> Self {
        self.patterns.push(p.to_string());
        self
    }

    /// Exclude every parameter with at most one axis.
    pub fn one_dimensional(mut self) -> Self {
        self.one_dimensional = true;
        self
    }

    /// Whether `p` is excluded from weight decay.
    pub fn excludes(&self, p: &Param) -> bool {
        (self.one_dimensional && p.value().rank() <= 1)
            || self
                .patterns
                .iter()
                .any(|pat| glob(pat.as_bytes(), p.name().as_bytes()))
    }
}

/// `*`-glob match of a whole name.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match pat.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// Stochastic gradient descent with momentum, dampening, weight decay and Nesterov
/// momentum, with PyTorch's semantics.
#[derive(Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum (0 disables the buffer).
    pub momentum: f64,
    /// Dampening of the momentum update.
    pub dampening: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Parameters without weight decay.
    pub decay_exclusions: DecayExclusions,
    state: HashMap<u64, (Tensor, u64)>,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            decay_exclusions: DecayExclusions::new(),
            state: HashMap::new(),
        }
    }

    /// Set the weight decay.
    pub fn with_weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }

    /// Exclude parameters from weight decay.
    pub fn with_decay_exclusions(mut self, ex: DecayExclusions) -> Self {
        self.decay_exclusions = ex;
        self
    }

    /// With momentum.
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[Param], grads: &Gradients) -> Result<()> {
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::Argument {
                op: "sgd",
                msg: format!(
                    "Nesterov momentum needs a momentum and zero dampening (as PyTorch), got \
                     momentum {} and dampening {}",
                    self.momentum, self.dampening
                ),
            });
        }
        for p in params {
            let Some(g) = grads.get_id(p.id()) else {
                continue;
            };
            let (buf, steps) = match self.state.remove(&p.id()) {
                Some(s) => s,
                None => (p.value().zeros_like()?, 0),
            };
            // Without momentum PyTorch keeps no buffer: every step is a "first" step.
            let first = steps == 0 || self.momentum == 0.0;
            let s = OptimScalars {
                lr: self.lr,
                weight_decay: if self.decay_exclusions.excludes(p) {
                    0.0
                } else {
                    self.weight_decay
                },
                beta1: self.momentum,
                dampening: if self.momentum == 0.0 {
                    0.0
                } else {
                    self.dampening
                },
                corr1: if first { 1.0 } else { 0.0 },
                ..Default::default()
            };
            let rule = if self.nesterov {
                OptimRule::SgdNesterov
            } else {
                OptimRule::Sgd
            };
            optimizer_step(p.value(), g, &buf, &buf, rule, &s)?;
            self.state.insert(p.id(), (buf, steps + 1));
        }
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

/// Adam (L2 weight decay) or AdamW (decoupled weight decay), PyTorch semantics.
#[derive(Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Weight decay (added to the gradient for Adam, applied to the weights for AdamW).
    pub weight_decay: f64,
    /// Parameters without weight decay.
    pub decay_exclusions: DecayExclusions,
    decoupled: bool,
    state: HashMap<u64, (Tensor, Tensor, i32)>,
}

impl Adam {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8, no weight decay).
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_exclusions: DecayExclusions::new(),
            decoupled: false,
            state: HashMap::new(),
        }
    }

    /// AdamW with PyTorch's defaults (weight decay 0.01).
    pub fn adamw(lr: f64) -> Self {
        Adam {
            weight_decay: 0.01,
            decoupled: true,
            ..Adam::new(lr)
        }
    }

    /// Set the weight decay.
    pub fn with_weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }

    /// Exclude parameters from weight decay.
    pub fn with_decay_exclusions(mut self, ex: DecayExclusions) -> Self {
        self.decay_exclusions = ex;
        self
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &[Param], grads: &Gradients) -> Result<()> {
        for p in params {
            let Some(g) = grads.get_id(p.id()) else {
                continue;
            };
            let (m, v, t) = match self.state.remove(&p.id()) {
                Some(s) => s,
                None => (p.value().zeros_like()?, p.value().zeros_like()?, 0),
            };
            let t = t + 1;
            let s = OptimScalars {
                lr: self.lr,
                weight_decay: if self.decay_exclusions.excludes(p) {
                    0.0
                } else {
                    self.weight_decay
                },
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                corr1: 1.0 / (1.0 - self.beta1.powi(t)),
                corr2: 1.0 / (1.0 - self.beta2.powi(t)).sqrt(),
                ..Default::default()
            };
            let rule = if self.decoupled {
                OptimRule::AdamW
            } else {
                OptimRule::Adam
            };
            optimizer_step(p.value(), g, &m, &v, rule, &s)?;
            self.state.insert(p.id(), (m, v, t));
        }
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

/// Scale all gradients so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: coefficient min(1, max_norm / (norm + 1e-6))). Returns the norm
/// before clipping as a rank-0 tensor; nothing is read back to the host. A NaN gradient
/// makes the norm and the coefficient NaN, so every gradient comes out NaN, as in PyTorch
/// (whose `error_if_nonfinite` defaults to off): a step on them shows the failure instead
/// of applying the finite gradients unscaled.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<Option<Tensor>> {
    let ids: Vec<u64> = grads.ids().collect();
    let mut total: Option<Tensor> = None;
    for &id in &ids {
        let sq = grads.get_id(id).expect("listed id").square()?.sum_all()?;
        total = Some(match total {
            Some(t) => t.add(&sq)?,
            None => sq,
        });
    }
    let Some(total) = total else { return Ok(None) };
    let norm = total.sqrt()?;
    let coef = norm
        .add_scalar(1e-6)?
        .rdiv_scalar(max_norm)?
        .min_scalar(1.0)?;
    for id in ids {
        let g = grads.get_id(id).expect("listed id").mul(&coef)?;
        grads.insert(id, g);
    }
    Ok(Some(norm))
}

/// Clamp every gradient element to [−`clip_value`, `clip_value`] (PyTorch's
/// `clip_grad_value_`; a NaN element stays NaN, as `clamp` keeps it). `clip_value` must be
/// finite and at least 0.
pub fn clip_grad_value(grads: &mut Gradients, clip_value: f64) -> Result<()> {
    if !(clip_value.is_finite() && clip_value >= 0.0) {
        return Err(Error::Argument {
            op: "clip_grad_value",
            msg: format!("the clip value must be finite and at least 0, got {clip_value}"),
        });
    }
    let ids: Vec<u64> = grads.ids().collect();
    for id in ids {
        let g = grads.get_id(id).expect("listed id");
        let clipped = g.max_scalar(-clip_value)?.min_scalar(clip_value)?;
        grads.insert(id, clipped);
    }
    Ok(())
}
