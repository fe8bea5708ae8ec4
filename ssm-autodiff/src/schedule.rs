//! Learning-rate schedules and gradient accumulation.
//!
//! - [`CosineWarmup`]: linear warm-up then cosine decay to a floor (timm / MAE style).
//! - [`ReduceLrOnPlateau`]: PyTorch's `ReduceLROnPlateau` (mode, factor, patience,
//!   relative or absolute threshold, cooldown, minimum learning rate, eps), driven by a
//!   validation metric.
//! - [`GradAccumulator`]: sums the gradients of several micro-batches and hands back their
//!   mean (or sum), so a large batch can be trained in pieces.

use std::f64::consts::PI;

use ssm_runtime::Result;

use crate::optim::Optimizer;
use crate::var::Gradients;

/// Linear warm-up from `warmup_start_factor·base_lr` to `base_lr` over `warmup_steps`,
/// then cosine decay to `min_lr` at `total_steps` (constant afterwards).
#[derive(Debug, Clone, PartialEq)]
pub struct CosineWarmup {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warm-up length in steps.
    pub warmup_steps: u64,
    /// Schedule length in steps (warm-up included).
    pub total_steps: u64,
    /// Learning rate at step 0 as a fraction of `base_lr`.
    pub warmup_start_factor: f64,
}

impl CosineWarmup {
    /// Warm-up from 0, decay to 0.
    pub fn new(base_lr: f64, warmup_steps: u64, total_steps: u64) -> Self {
        CosineWarmup {
            base_lr,
            min_lr: 0.0,
            warmup_steps,
            total_steps,
            warmup_start_factor: 0.0,
        }
    }

    /// With a final learning rate.
    pub fn min_lr(mut self, lr: f64) -> Self {
        self.min_lr = lr;
        self
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.base_lr
                * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * f);
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 {
            return self.min_lr;
        }
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (PI * progress).cos())
    }

    /// Set the optimizer's learning rate for step `step`.
    pub fn apply(&self, opt: &mut dyn Optimizer, step: u64) {
        opt.set_lr(self.lr_at(step));
    }
}

/// Whether a smaller or a larger metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlateauMode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (Dice, accuracy).
    Max,
}

/// How the improvement threshold is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdMode {
    /// Relative to the best value.
    Rel,
    /// Absolute difference.
    Abs,
}

/// PyTorch's `ReduceLROnPlateau`: after more than `patience` epochs without improvement,
/// multiply the learning rate by `factor` (not below `min_lr`; changes smaller than `eps`
/// are skipped), then wait `cooldown` epochs.
#[derive(Debug, Clone)]
pub struct ReduceLrOnPlateau {
    /// Direction of improvement (fixed at construction: the initial best depends on it).
    mode: PlateauMode,
    /// Reduction factor in [0, 1) (set through [`Self::factor`], which checks it).
    factor: f64,
    /// Epochs without improvement tolerated.
    pub patience: u32,
    /// Minimum improvement.
    pub threshold: f64,
    /// Relative or absolute threshold.
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a reduction.
    pub cooldown: u32,
    /// Lower bound of the learning rate.
    pub min_lr: f64,
    /// Minimal change of the learning rate.
    pub eps: f64,
    best: f64,
    num_bad: u32,
    cooldown_counter: u32,
}

impl ReduceLrOnPlateau {
    /// PyTorch defaults: factor 0.1, patience 10, threshold 1e-4 (relative), no cooldown,
    /// min_lr 0, eps 1e-8.
    pub fn new(mode: PlateauMode) -> Self {
        ReduceLrOnPlateau {
            mode,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
            best: match mode {
                PlateauMode::Min => f64::INFINITY,
                PlateauMode::Max => f64::NEG_INFINITY,
            },
            num_bad: 0,
            cooldown_counter: 0,
        }
    }

    /// Set the patience.
    pub fn patience(mut self, p: u32) -> Self {
        self.patience = p;
        self
    }

    /// Set the factor.
    ///
    /// # Panics
    /// If `f` is not in [0, 1) (PyTorch raises there too: the rate would not decrease).
    pub fn factor(mut self, f: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&f),
            "ReduceLrOnPlateau: factor {f} must be in [0, 1)"
        );
        self.factor = f;
        self
    }

    /// Direction of improvement.
    pub fn mode(&self) -> PlateauMode {
        self.mode
    }

    /// Best metric seen so far.
    pub fn best(&self) -> f64 {
        self.best
    }

    fn is_better(&self, a: f64) -> bool {
        let best = self.best;
        match (self.mode, self.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - self.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - self.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (1.0 + self.threshold),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + self.threshold,
        }
    }

    /// Record one epoch's metric; reduces the optimizer's learning rate when the plateau
    /// is long enough. Returns whether it was reduced.
    pub fn step(&mut self, metric: f64, opt: &mut dyn Optimizer) -> bool {
        if self.is_better(metric) {
            self.best = metric;
            self.num_bad = 0;
        } else {
            self.num_bad += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad = 0;
        }
        if self.num_bad > self.patience {
            let old = opt.lr();
            let new = (old * self.factor).max(self.min_lr);
            self.cooldown_counter = self.cooldown;
            self.num_bad = 0;
            if old - new > self.eps {
                opt.set_lr(new);
                return true;
            }
        }
        false
    }
}

/// Sums the gradients of micro-batches (through [`Gradients::accumulate`]) until the
/// optimizer step.
#[derive(Debug, Default)]
pub struct GradAccumulator {
    acc: Option<Gradients>,
    count: usize,
}

impl GradAccumulator {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one micro-batch's gradients.
    pub fn add(&mut self, grads: Gradients) -> Result<()> {
        match &mut self.acc {
            Some(acc) => acc.accumulate(grads)?,
            None => self.acc = Some(grads),
        }
        self.count += 1;
        Ok(())
    }

    /// Micro-batches added since the last `take_*`.
    pub fn micro_batches(&self) -> usize {
        self.count
    }

    /// The summed gradients; resets the accumulator.
    pub fn take_sum(&mut self) -> Gradients {
        self.count = 0;
        self.acc.take().unwrap_or_default()
    }

    /// The mean over micro-batches (equal to the full-batch gradient when each micro-batch
    /// loss is a mean over equally sized micro-batches); resets the accumulator.
    pub fn take_mean(&mut self) -> Result<Gradients> {
        let n = self.count.max(1) as f64;
        let mut g = self.take_sum();
        let ids: Vec<u64> = g.ids().collect();
        for id in ids {
            let scaled = g.get_id(id).expect("listed id").mul_scalar(1.0 / n)?;
            g.insert(id, scaled);
        }
        Ok(g)
    }
}
