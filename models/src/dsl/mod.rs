//! The library side of the DSL: what `#[ssm_block]`, `#[pointwise]` and friends expand
//! into. Declarations are checked at compile time by the macros and become
//! configurations of the modules here, plus generated glue (typed structs, parameter
//! names, gradient-check tests).
//!
//! - [`params`]: named parameter sets with safetensors save/load.
//! - [`init`]: initialisers as in the papers (Mamba's Δ, A and D, PyTorch Linear/Conv).
//! - [`mixer`], [`block`]: the Mamba mixer (VMamba SS2D, Vim, SRMA ABSS views, MSVMamba DMS).
//! - [`lpr`]: local perception residual units.
//! - [`check`]: generated gradient checks.

pub mod block;
pub mod check;
pub mod init;
pub mod lpr;
pub mod mixer;
pub mod params;

pub use block::{Block, BlockConfig, Views};
pub use check::{check_block, check_lpr, check_pointwise, check_reverse_attention};
pub use lpr::{Lpr, LprConfig};
pub use params::ParamSet;
