//! # ssm-runtime
//!
//! The bottom layer of ssm: compute devices ([`Device`], chosen by `SSM_DEVICE`), device
//! tensors ([`Tensor`]) with zero-copy views, and every primitive kernel (elementwise with
//! broadcasting, reductions, matmul, RNG, optimizer updates) written in CubeCL, running on
//! CUDA and on Vulkan (including Mesa's CPU driver lavapipe).
//!
//! All fallible operations return [`Result`]; shape, dtype and device mistakes are
//! [`Error`]s naming the operation and the operands, never panics.

#[cfg(feature = "cuda-codegen")]
pub mod codegen;
pub mod device;
pub mod dtype;
pub mod error;
// `#[cube]` expansions emit undocumented helper items; the kernels themselves are documented.
#[allow(missing_docs)]
pub mod kernels;
pub mod ops;
#[allow(missing_docs)]
pub mod scan;
pub mod shape;
pub mod tensor;
pub mod testing;

pub use device::{Device, DeviceKind, copied_elements, launch_count};
pub use dtype::{DType, Element, bf16};
pub use error::{Error, Result};
pub use ops::{
    BinaryOp, ConvImpl, ConvSpec, FusedBinary, FusedUnary, Inst, Layout, MatmulImpl, Norm,
    NormGrads, NormNeeds, NormStats, OptimRule, OptimScalars, Padding, PoolSpec, Program,
    ResizeMode, ResizeTo, UnaryOp, optimizer_step, run_fused,
};
pub use tensor::{Tensor, set_poison_outputs};
