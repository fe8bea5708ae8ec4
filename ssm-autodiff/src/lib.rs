//! # ssm-autodiff
//!
//! Reverse-mode automatic differentiation over [`ssm_runtime::Tensor`]s.
//!
//! - [`Var`] wraps a tensor; ops on `Var`s (elementwise with broadcasting, reductions,
//!   views, concat, matmul) record a backward closure that keeps only what it needs.
//!   Custom fused kernels (the scan engine, DSL blocks) join the tape through
//!   [`Var::from_op`].
//! - [`Var::backward`] walks the graph once in reverse topological order, accumulating
//!   gradients of values used several times and summing broadcast gradients back to
//!   their operands' shapes. Each op's saved tensors are freed as soon as its backward
//!   has run; intermediate gradients are dropped once propagated.
//! - [`no_grad`] runs inference without recording anything.
//! - [`gradcheck()`] compares analytic gradients with f64 central differences.
//! - [`Param`], [`Sgd`], [`Adam`] (and AdamW) with one fused kernel per parameter update,
//!   weight-decay exclusions ([`DecayExclusions`]), [`clip_grad_norm`] and
//!   [`clip_grad_value`]; learning-rate schedules ([`CosineWarmup`],
//!   [`ReduceLrOnPlateau`]) and gradient accumulation ([`GradAccumulator`]).
//! - Model ops on `Var` (convolution, normalisations, softmax, pooling, resizing,
//!   attention, dropout, drop-path, pixel shuffle) and the [`loss`] functions.

pub mod gradcheck;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod param;
pub mod schedule;
pub mod var;

pub use gradcheck::{GradcheckOptions, GradcheckReport, gradcheck};
pub use ops::scan::{ScanVars, selective_scan, selective_scan_with};
pub use optim::{Adam, DecayExclusions, Optimizer, Sgd, clip_grad_norm, clip_grad_value};
pub use param::Param;
pub use schedule::{CosineWarmup, GradAccumulator, PlateauMode, ReduceLrOnPlateau, ThresholdMode};
pub use var::{BackwardFn, Gradients, NoGradGuard, Var, grad_enabled, no_grad};
