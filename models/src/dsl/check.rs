//! Gradient checks that the DSL macros generate for every declaration.

use ssm_autodiff::{GradcheckOptions, Var, gradcheck};

use crate::dsl::block::{Block, BlockConfig};
use crate::dsl::lpr::{Lpr, LprConfig};
use crate::dsl::params::ParamSet;
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

/// Gradient check of a module in f64 with respect to its input (fresh uniform values in
/// [−1, 1) of `shape`) and its parameters: along random directions for all of them, and
/// element by element for the tiny ones.
fn check_module(
    name: &str,
    shape: &[usize],
    params: &ParamSet,
    forward_with: impl Fn(&Var, &[Var]) -> Result<Var>,
) {
    let d = device();
    let mut r = HostRng::new(0xb10c ^ name.len() as u64);
    let n: usize = shape.iter().product();
    let mut inputs =
        vec![Tensor::from_f64(&r.vec(n, -1.0, 1.0), shape, DType::F64, &d).expect("upload")];
    inputs.extend(params.iter().map(|p| p.value().clone()));
    let f = |v: &[Var]| forward_with(&v[0], &v[1..]);
    let opts = GradcheckOptions {
        directions: 2,
        elementwise_max: 8,
        ..GradcheckOptions::default()
    };
    gradcheck(f, &inputs, &opts)
        .expect("gradcheck ran")
        .assert_passed(name);
}

/// Gradient check of a declared block (fixed seed, input `(1, *grid, d_model)`).
pub fn check_block(name: &str, cfg: BlockConfig, grid: &[usize]) {
    let block = Block::new(cfg, &device(), DType::F64, 5).expect("block");
    let shape = [&[1][..], grid, &[block.config().mixer.d_model]].concat();
    check_module(name, &shape, block.params(), |x, p| {
        block.forward_with(x, p)
    });
}

/// Gradient check of a declared LPR unit (input `(1, 4[, 3[, 3]], C)`).
pub fn check_lpr(name: &str, cfg: LprConfig) {
    let lpr = Lpr::new(cfg, &device(), DType::F64, 9).expect("lpr");
    let c = lpr.config();
    let shape = [&[1][..], &[4, 3, 3][..c.rank], &[c.channels]].concat();
    check_module(name, &shape, lpr.params(), |x, p| lpr.forward_with(x, p));
}

/// Gradient check of a reverse-attention step over `rank` spatial axes in f64: a coarse
/// map resized up to a finer feature grid of another size.
pub fn check_reverse_attention(name: &str, rank: usize) {
    let d = device();
    let mut r = HostRng::new(0x7a ^ name.len() as u64);
    let (coarse, fine): (&[usize], &[usize]) = match rank {
        1 => (&[3], &[7]),
        2 => (&[2, 3], &[4, 5]),
        _ => (&[2, 2, 3], &[3, 4, 5]),
    };
    let m_shape = [&[1, 1][..], coarse].concat();
    let f_shape = [&[1, 2][..], fine].concat();
    let t = |r: &mut HostRng, s: &[usize]| {
        Tensor::from_f64(&r.vec(s.iter().product(), -1.5, 1.5), s, DType::F64, &d).expect("upload")
    };
    let inputs = [t(&mut r, &m_shape), t(&mut r, &f_shape)];
    let f = |v: &[Var]| Var::reverse_attention(&v[0], &v[1]);
    gradcheck(f, &inputs, &GradcheckOptions::default())
        .expect("gradcheck ran")
        .assert_passed(name);
}
