//! Tensor-level operations: argument checking, output allocation and dispatch to the
//! kernels in [`crate::kernels`].
mod elementwise;
mod fused;
mod matmul;
mod optim;
mod random;
mod reduce;

pub use crate::kernels::elementwise::{BinaryOp, UnaryOp};
pub use crate::kernels::fused::{FusedBinary, FusedUnary, Inst, Program};
pub use crate::kernels::matmul::MatmulImpl;
pub use crate::kernels::optim::{OptimRule, OptimScalars};
pub use fused::{run_fused, validate as validate_program};
pub use optim::optimizer_step;
