//! Differentiable versions of the runtime ops. Each forward computes with
//! [`ssm_runtime::Tensor`] and records a backward closure holding only what it needs.
mod elementwise;
mod fused;
mod layout;
mod matmul;
mod nn;
mod reduce;
pub mod scan;
