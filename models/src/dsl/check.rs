//! Gradient checks that the DSL macros generate for every declaration.

use ssm_autodiff::{GradcheckOptions, Var, gradcheck};

use crate::dsl::block::{Block, BlockConfig};
use ssm_runtime::testing::{HostRng, device};
use ssm_runtime::{DType, Result, Tensor};

/// Gradient check of a generated fused function of `n_inputs` tensors: f64 inputs drawn
/// uniformly from `range` (positive by default so log/sqrt are defined and kinks at 0
/// are avoided), the first of shape `[2, 3]` and the others alternating between `[2, 3]`
/// and the broadcast shape `[3]`, so broadcast gradients are checked too. Panics with the
/// failed comparisons.
pub fn check_pointwise(
    name: &str,
    n_inputs: usize,
    range: (f64, f64),
    f: impl Fn(&[Var]) -> Result<Var>,
) {
    let mut r = HostRng::new(0xd51 ^ name.len() as u64);
    let d = device();
    let inputs: Vec<Tensor> = (0..n_inputs)
        .map(|i| {
            let shape: &[usize] = if i % 2 == 1 { &[3] } else { &[2, 3] };
            let n: usize = shape.iter().product();
            Tensor::from_f64(&r.vec(n, range.0, range.1), shape, DType::F64, &d).expect("upload")
        })
        .collect();
    let report = gradcheck(f, &inputs, &GradcheckOptions::default()).expect("gradcheck ran");
    report.assert_passed(name);
}

/// Gradient check of a declared block in f64: a block built from `cfg` (seed fixed), input
/// `(1, *grid, d_model)` with fresh random values, gradients with respect to the input and
/// every parameter along random directions (and element by element for tiny ones).
pub fn check_block(name: &str, cfg: BlockConfig, grid: &[usize]) {
    let d = device();
    let block = Block::new(cfg, &d, DType::F64, 5).expect("block");
    let mut r = HostRng::new(0xb10c ^ name.len() as u64);
    let mut shape = vec![1];
    shape.extend(grid);
    shape.push(block.config().mixer.d_model);
    let n: usize = shape.iter().product();
    let mut inputs =
        vec![Tensor::from_f64(&r.vec(n, -1.0, 1.0), &shape, DType::F64, &d).expect("upload")];
    inputs.extend(block.params().iter().map(|p| p.value().clone()));
    let f = |v: &[Var]| block.forward_with(&v[0], &v[1..]);
    let opts = GradcheckOptions {
        directions: 2,
        elementwise_max: 8,
        ..GradcheckOptions::default()
    };
    gradcheck(f, &inputs, &opts)
        .expect("gradcheck ran")
        .assert_passed(name);
}
