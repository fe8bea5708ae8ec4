//! # ssm
//!
//! State space networks on GPUs. This crate is the one dependency users add: it
//! re-exports the runtime (devices, tensors, kernels) and the autodiff tape, and holds the
//! reference models and the `ssm` command-line tool.
//!
//! Status: the foundation (runtime, autodiff, optimizers) is in place; the scan engine,
//! the `#[ssm_block]` DSL and the SRMA-Mamba / SSMamba models are being built on it. The
//! CLI's `demo` command trains a small network on synthetic data to show the stack working
//! end to end on the selected device.

// Generated code names this crate `::ssm`, also from inside it.
extern crate self as ssm;

pub mod demo;
pub mod dsl;

pub use ssm_autodiff as autodiff;
pub use ssm_runtime as runtime;

pub use ssm_autodiff::{Adam, Gradients, Optimizer, Param, Sgd, Var, gradcheck, no_grad};
pub use ssm_macros::{lpr, pointwise, reverse_attention, ssm_block};
pub use ssm_runtime::{DType, Device, Error, Result, Tensor};
