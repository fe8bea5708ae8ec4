//! # ssm-macros
//!
//! The ssm DSL. Declarations expand into calls of fused GPU kernels and their derivatives;
//! use them through the `ssm` crate (`ssm::pointwise`, …), which re-exports this crate.
//!
//! - [`pointwise`]: a function of tensors written as an arithmetic expression becomes one
//!   fused forward kernel and one fused backward kernel, whose program is the
//!   expression's symbolic reverse-mode derivative (shared subexpressions computed once).
//!
//! Generated code reaches the `ssm` crate by the name the calling crate gave it in its
//! `Cargo.toml` (renamed dependencies work), or by an explicit `crate = path` option.

mod graph;
mod krate;
mod pointwise;

use proc_macro::TokenStream;

/// A fused elementwise function with a generated derivative.
///
/// ```ignore
/// #[ssm::pointwise]
/// fn gated_mix(x: Tensor, y: Tensor, gate: Tensor, alpha: f64) -> Tensor {
///     let s = sigmoid(gate);
///     x * s + (1.0 - s) * y * alpha
/// }
/// // becomes: fn gated_mix(x: &Var, y: &Var, gate: &Var, alpha: f64) -> Result<Var>
/// ```
///
/// `Tensor` parameters broadcast like NumPy and are differentiated; `f64` parameters are
/// runtime constants. The body is `let` bindings and a final expression over `+ - * /`,
/// number literals and `exp log sqrt rsqrt tanh sigmoid silu softplus gelu relu abs square
/// recip pow(x, <number>)` (also as methods, `x.exp()`). Options: `no_gradcheck` (skip the
/// generated `#[test]` gradient check), `test_range(lo, hi)` (its input range),
/// `crate = path`.
#[proc_macro_attribute]
pub fn pointwise(attr: TokenStream, item: TokenStream) -> TokenStream {
    let result = pointwise::Options::parse(attr.into())
        .and_then(|opts| pointwise::expand(opts, syn::parse(item)?));
    result.unwrap_or_else(|e| e.to_compile_error()).into()
}
