//! Tensor-level operations: argument checking, output allocation and dispatch to the
//! kernels in [`crate::kernels`].
pub mod attention;
pub(crate) mod cast;
pub mod conv;
mod elementwise;
mod fused;
mod loss;
mod matmul;
pub mod norm;
mod optim;
pub mod pool;
mod random;
mod reduce;
pub mod resize;
mod reverse_attention;

pub use crate::kernels::elementwise::{BinaryOp, UnaryOp};
pub use crate::kernels::fused::{FusedBinary, FusedUnary, Inst, Program};
pub use crate::kernels::matmul::MatmulImpl;
pub use crate::kernels::optim::{OptimRule, OptimScalars};
pub use conv::{ConvImpl, ConvProblem, ConvSpec, Layout, Padding};
pub use fused::{run_fused, validate as validate_program};
pub use norm::{Norm, NormGrads, NormNeeds, NormStats};
pub use optim::optimizer_step;
pub use pool::PoolSpec;
pub use resize::{ResizeMode, ResizeTo};
