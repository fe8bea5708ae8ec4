//! Support code for what the DSL macros generate (`ssm::pointwise`, …): the generated
//! gradient-check tests call into here. Not meant to be called by hand, but stable.

use ssm_autodiff::{GradcheckOptions, Var, gradcheck};
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
