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

use my_ssm::ssm_block;

/// Vim's bidirectional block (bimamba v2): two paths with their own causal conv, x_proj,
/// dt_proj, A and D, a shared in_proj/out_proj, gated by silu(z).
#[ssm_block(
    d_model = 8,
    d_state = 4,
    expand = 2,
    paths = bidirectional,
    conv = causal(4),
    conv_bias = true,
    gate = silu,
    out_norm = none,
    per_path = [conv, x_proj, dt_proj, a, d],
    names = mamba,
    bias = [in_proj]
)]
pub struct VimBlock;

/// VMamba's SS2D as SRMA-Mamba configures it: cross2d, N = 1, no gate.
#[ssm_block(d_model = 8, d_state = 1, ssm_ratio = 2.0, paths = cross2d, conv = depthwise(3), gate = none)]
pub struct Ss2d;

/// SRMA-Mamba's ABSS: three 2D views of the volume (h × w·d, w × h·d, d × h·w), cross2d
/// in each (12 scans), N = 1, no gate, summed.
#[ssm_block(d_model = 4, d_state = 1, paths = cross2d, views = abss, gate = none)]
pub struct Abss;

/// An MSVMamba-style DMS mixer: one full-resolution raster scan, and three directions on a
/// copy downsampled by a 7×7 stride-2 depthwise conv, upsampled and summed.
#[ssm_block(
    d_model = 4,
    d_state = 1,
    paths = [raster(2), raster(2).rev(), order(1, 0), order(1, 0).rev()],
    multi_scale(full = 1, stride = 2, kernel = 7)
)]
pub struct DmsMixer;

use my_ssm::{lpr, reverse_attention};

/// CMT's local perception unit with a LayerNorm and GELU: x + GELU(LN(DWConv3×3(x))).
#[lpr(channels = 6, kernel = 3, rank = 2, norm = layer_norm, activation = gelu)]
pub struct Lpu;

/// SRMA-Mamba's reverse-attention step: (1 − σ(trilinear(m))) ⊙ f.
#[reverse_attention(mode = trilinear)]
pub struct SrmaReverse;
