//! # ssm-macros
//!
//! The ssm DSL. Declarations expand into calls of fused GPU kernels and their derivatives;
//! use them through the `ssm` crate (`ssm::pointwise`, …), which re-exports this crate.
//!
//! - [`ssm_block`]: a Mamba mixer declaration (VMamba SS2D, Vim, SRMA ABSS, MSVMamba DMS).
//! - [`lpr`]: a local perception residual unit `x + act(norm(dwconv(x)))`.
//! - [`reverse_attention`]: `(1 − σ(resize(m))) ⊙ f` with the resize fused.
//! - [`pointwise`]: a function of tensors written as an arithmetic expression becomes one
//!   fused forward kernel and one fused backward kernel, whose program is the
//!   expression's symbolic reverse-mode derivative (shared subexpressions computed once).
//!
//! Generated code reaches the `ssm` crate by the name the calling crate gave it in its
//! `Cargo.toml` (renamed dependencies work), or by an explicit `crate = path` option.

mod block;
mod graph;
mod krate;
mod paths;
mod pointwise;
mod units;

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

/// A Mamba mixer block. See `docs/dsl.md` for every option.
///
/// ```ignore
/// /// VMamba's SS2D as SRMA-Mamba uses it.
/// #[ssm::ssm_block(d_model = 48, d_state = 1, paths = cross2d, conv = depthwise(3), gate = none)]
/// pub struct Ss2d;
/// // Ss2d::new(&device, DType::F32, seed)?.forward(&x)?   (x: (B, H, W, 48))
/// ```
#[proc_macro_attribute]
pub fn ssm_block(attr: TokenStream, item: TokenStream) -> TokenStream {
    let result = syn::parse(item).and_then(|s| block::expand(attr.into(), s));
    result.unwrap_or_else(|e| e.to_compile_error()).into()
}

/// A local perception residual unit (CMT): `x + act(norm(dwconv_k(x)))`.
///
/// ```ignore
/// #[ssm::lpr(channels = 64, kernel = 3, rank = 2)]
/// pub struct Lpu;
/// ```
#[proc_macro_attribute]
pub fn lpr(attr: TokenStream, item: TokenStream) -> TokenStream {
    let result = syn::parse(item).and_then(|s| units::expand_lpr(attr.into(), s));
    result.unwrap_or_else(|e| e.to_compile_error()).into()
}

/// Reverse attention `(1 − σ(resize(m))) ⊙ f`, the resize fused into the kernel.
///
/// ```ignore
/// #[ssm::reverse_attention(mode = trilinear)]
/// pub struct SrmaReverse;
/// // SrmaReverse::apply(&m, &f)?
/// ```
#[proc_macro_attribute]
pub fn reverse_attention(attr: TokenStream, item: TokenStream) -> TokenStream {
    let result = syn::parse(item).and_then(|s| units::expand_reverse_attention(attr.into(), s));
    result.unwrap_or_else(|e| e.to_compile_error()).into()
}
