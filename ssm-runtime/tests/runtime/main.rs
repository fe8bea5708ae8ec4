//! Runtime tests: every op against a host f64 reference on fresh random inputs, on the
//! device selected by `SSM_DEVICE`, with outputs poisoned before each kernel runs.

mod attention;
mod bfloat16;
mod conv;
mod elementwise;
mod errors;
mod fused;
mod layout;
mod loss;
mod math;
mod matmul;
mod norm;
mod optim;
mod random;
mod reduce;
mod scan;
mod source_rules;
mod spatial;

use ssm_runtime::testing::{HostRng, device};
use ssm_runtime::{DType, Element, Tensor, bf16};

/// Both float dtypes, with (rtol, atol) suited to elementwise results in each.
pub const FLOATS: [(DType, f64, f64); 2] = [(DType::F32, 1e-5, 1e-6), (DType::F64, 1e-12, 1e-14)];

/// Report a test that cannot run its checks on this device. Written to stderr directly,
/// not through `eprintln!`, so the test harness does not capture it.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Upload host values.
pub fn upload(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f64(v, shape, dtype, &device()).unwrap()
}

/// Host values rounded to the dtype (what the device actually holds).
pub fn rounded(v: &[f64], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => v.iter().map(|&x| x as f32 as f64).collect(),
        // Through `Element`: half's inherent `bf16::from_f64` rounds some values wrongly.
        DType::BF16 => v
            .iter()
            .map(|&x| <bf16 as Element>::from_f64(x).to_f64())
            .collect(),
        _ => v.to_vec(),
    }
}

/// Row-major host gather of a strided view described by shape/strides/offset over `data`.
pub fn host_view(data: &[f64], shape: &[usize], strides: &[usize], offset: usize) -> Vec<f64> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| {
            let mut rem = i;
            let mut off = offset;
            for d in (0..shape.len()).rev() {
                off += (rem % shape[d]) * strides[d];
                rem /= shape[d];
            }
            data[off]
        })
        .collect()
}

/// Index of `out` coordinates into a broadcast operand of `shape` (host reference).
pub fn broadcast_index(i: usize, out: &[usize], shape: &[usize]) -> usize {
    let lead = out.len() - shape.len();
    let mut rem = i;
    let mut idx = 0;
    let mut mul = 1;
    for d in (0..out.len()).rev() {
        let c = rem % out[d];
        rem /= out[d];
        if d >= lead {
            let s = shape[d - lead];
            idx += if s == 1 { 0 } else { c * mul };
            mul *= s;
        }
    }
    idx
}

/// A fresh generator for one test.
pub fn rng(salt: u64) -> HostRng {
    HostRng::new(salt)
}
