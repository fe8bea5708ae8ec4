//! Declarations written against the ssm DSL from outside the ssm workspace crates, through
//! a renamed dependency (`my_ssm`). Every declaration gets a generated f64 gradient check
//! (`cargo test -p ssm-user-crate`).

use my_ssm::pointwise;

/// A gated mix of two tensors: σ(g)·x + (1 − σ(g))·y·α.
#[pointwise]
pub fn gated_mix(x: Tensor, y: Tensor, gate: Tensor, alpha: f64) -> Tensor {
    let s = sigmoid(gate);
    x * s + (1.0 - s) * y * alpha
}

/// Every supported function once, with shared subexpressions.
#[pointwise]
pub fn kitchen_sink(a: Tensor, b: Tensor) -> Tensor {
    let t = a * b + 0.5;
    exp(-t)
        + log(t)
        + sqrt(t) * rsqrt(a)
        + tanh(t)
        + silu(b)
        + softplus(t)
        + gelu(a - b)
        + relu(a)
        + abs(b)
        + square(t)
        + recip(t)
        + pow(t, 1.5)
        + t.sigmoid() / 3
}
