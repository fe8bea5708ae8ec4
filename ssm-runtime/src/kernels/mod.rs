//! `#[cube]` kernels and their launch helpers. Helpers are generic over the CubeCL
//! runtime and take element types at run time (`#[define]`), so each kernel is compiled
//! once per runtime in Rust and once per dtype/op by the JIT.
pub mod attention;
pub(crate) mod cast;
pub mod conv;
pub(crate) mod conv_mma;
pub(crate) mod conv_pipe;
pub(crate) mod conv_pipe_wgrad;
pub(crate) mod conv_tune;
pub(crate) mod copy;
pub mod elementwise;
pub(crate) mod fill;
pub mod fused;
pub(crate) mod launch;
pub mod loss;
pub mod math;
pub mod matmul;
pub mod mma_probe;
pub mod optim;
pub mod pool;
pub mod random;
pub mod reduce;
pub mod resize;
pub mod reverse_attention;
pub mod rows;
pub(crate) mod split_sum;
pub(crate) mod strided;
pub(crate) mod transpose;
