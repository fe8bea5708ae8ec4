//! Convolutions (1-D, 2-D, 3-D) with stride, padding ("same", causal, asymmetric),
//! dilation, bias and groups, and their input and weight gradients.
//!
//! Activations are channels-first `[N, C, *spatial]` or channels-last `[N, *spatial, C]`
//! ([`Layout`]); weights always use PyTorch's `[C_out, C_in / groups, *kernel]` axis order,
//! in any memory order (a channels-last model can keep them as `[C_out, *kernel, C_in]`
//! memory, PyTorch's `channels_last_3d`, which the tensor-core forward reads without the
//! weight copy a PyTorch-order weight takes). Kernels read strided views in place, except
//! that the pipelined tensor-core kernels read channel-fastest memory: channels-first
//! operands they take are transposed to it (skipped for a view that already is; results
//! are written channels-first directly), so keep activations channels-last to pay no
//! copies. A pass's two copies (an operand and the weights it reorders for the tensor
//! cores, or both operands of a weight gradient) go in one launch.
//! [`Tensor::conv_backward`] takes both gradients with one copy of a channels-first `dy`
//! (the autodiff op's backward uses it). Outputs come back in the input's layout. Which
//! kernel runs ([`ConvImpl`]):
//!
//! | kernel | used for | prefers |
//! | --- | --- | --- |
//! | implicit GEMM (own, CUDA cores, exact f32/f64) | ≥ 8 channels per group on both sides | either layout (coalesced loads chosen per layout) |
//! | direct (own) | depthwise and other thin groups | channels-first for the weight gradient, either otherwise |
//! | implicit GEMM on tensor cores (own, [`ConvImpl::TensorCore`]) | bf16 operands, or f32 with [`ConvSpec::allow_tf32`] (TF32), with ≥ 16 channels per group on both sides, on a device with tensor cores (CUDA sm_80+) | channels-last: pipelined kernels (`cp.async`, `mma.sync`) for channel counts per group that are multiples of 16 bytes, channels-first operands copied to channel-fastest memory for them; the `wmma` kernels read other views in place |
//! | `cubek-convolution` (tensor cores, TF32 for f32) | only when asked for ([`ConvImpl::Cubek`]): dense, CUDA | channels-last (other layouts are copied once per call) |
//!
//! **bf16**: `x`, `weight`, `dy` (and a forward bias) may be [`DType::BF16`]; every result
//! is **f32** (cast with [`Tensor::to_dtype`] where bf16 is wanted). When all operands are
//! bf16 and the device has tensor cores, the tensor-core GEMM multiplies them as bf16
//! fragments (products of two bf16 values are exact) into f32 accumulators. Otherwise they
//! are widened to f32 once per call (exact) and run through the f32 kernels above.
//! `cubek-convolution` with bf16 operands was tried and dropped: on an H100 (2026-11-23)
//! its backward-data was wrong and every pass was slower than the exact f32 GEMM.
//!
//! None of them materialises an im2col buffer: the GEMM kernels gather input patches into
//! shared memory tile by tile.

use crate::device::{Device, record_launch};
use crate::dispatch;
use crate::dtype::{DType, refuse_bf16};
use crate::error::{Error, Result};
use crate::kernels::conv::{self as k, Geo};
use crate::kernels::conv_mma as tc;
use crate::kernels::conv_pipe;
use crate::kernels::split_sum::split_sum;
use crate::ops::cast::require_bf16_device;
use crate::ops::elementwise::require_float;
use crate::shape::contiguous_strides;
use crate::tensor::{Tensor, same_device};

/// Memory layout of activation tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// `[N, C, *spatial]` (PyTorch's default).
    #[default]
    ChannelsFirst,
    /// `[N, *spatial, C]`.
    ChannelsLast,
}

impl Layout {
    /// Index of the channel axis in a tensor of `rank` axes.
    pub fn channel_axis(self, rank: usize) -> usize {
        match self {
            Layout::ChannelsFirst => 1,
            Layout::ChannelsLast => rank - 1,
        }
    }

    /// Indices of the spatial axes in a tensor of `rank` axes.
    pub fn spatial_axes(self, rank: usize) -> Vec<usize> {
        match self {
            Layout::ChannelsFirst => (2..rank).collect(),
            Layout::ChannelsLast => (1..rank - 1).collect(),
        }
    }

    /// Shape `[n, c, spatial...]` arranged in this layout.
    pub fn shape(self, n: usize, c: usize, spatial: &[usize]) -> Vec<usize> {
        match self {
            Layout::ChannelsFirst => [&[n, c][..], spatial].concat(),
            Layout::ChannelsLast => [&[n][..], spatial, &[c]].concat(),
        }
    }

    /// `(batch, channels, spatial)` of a shape in this layout (rank ≥ 2).
    pub fn split(self, shape: &[usize]) -> (usize, usize, Vec<usize>) {
        let r = shape.len();
        let c = shape[self.channel_axis(r)];
        let sp = self.spatial_axes(r).iter().map(|&a| shape[a]).collect();
        (shape[0], c, sp)
    }
}

/// Padding of a convolution (per spatial axis; a single value applies to every axis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Padding {
    /// The same number of zeros before and after.
    Symmetric(Vec<usize>),
    /// (before, after) per axis.
    Asymmetric(Vec<(usize, usize)>),
    /// Output size = input size (stride 1): `dil·(k − 1)` zeros split with the extra one
    /// after, as PyTorch's `padding="same"`.
    Same,
    /// `dil·(k − 1)` zeros before and none after (causal 1-D convolution).
    Causal,
}

/// Hyper-parameters of a convolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    /// Stride per spatial axis (one value broadcasts).
    pub stride: Vec<usize>,
    /// Zero padding.
    pub padding: Padding,
    /// Dilation per spatial axis (one value broadcasts).
    pub dilation: Vec<usize>,
    /// Channel groups (`groups = C_in` is depthwise).
    pub groups: usize,
    /// Layout of the activations.
    pub layout: Layout,
    /// Allow tensor cores with TF32 operands for f32 (PyTorch's default for cuDNN
    /// convolutions); off by default, so f32 results are exact f32 arithmetic.
    pub allow_tf32: bool,
}

impl Default for ConvSpec {
    fn default() -> Self {
        ConvSpec {
            stride: vec![1],
            padding: Padding::Symmetric(vec![0]),
            dilation: vec![1],
            groups: 1,
            layout: Layout::ChannelsFirst,
            allow_tf32: false,
        }
    }
}

impl ConvSpec {
    /// Stride 1, no padding, no dilation, one group, channels-first.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the stride.
    pub fn stride(mut self, s: &[usize]) -> Self {
        self.stride = s.to_vec();
        self
    }
    /// Symmetric zero padding.
    pub fn pad(mut self, p: &[usize]) -> Self {
        self.padding = Padding::Symmetric(p.to_vec());
        self
    }
    /// Any padding.
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// "same" padding.
    pub fn same(self) -> Self {
        self.padding(Padding::Same)
    }
    /// Causal padding.
    pub fn causal(self) -> Self {
        self.padding(Padding::Causal)
    }
    /// Set the dilation.
    pub fn dilation(mut self, d: &[usize]) -> Self {
        self.dilation = d.to_vec();
        self
    }
    /// Set the number of groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Set the activation layout.
    pub fn layout(mut self, l: Layout) -> Self {
        self.layout = l;
        self
    }
    /// Allow TF32 tensor cores for f32.
    pub fn allow_tf32(mut self, on: bool) -> Self {
        self.allow_tf32 = on;
        self
    }
}

/// Which kernel computes a convolution (or one of its gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ConvImpl {
    /// Pick by shape and [`ConvSpec::allow_tf32`] (see the module docs).
    #[default]
    Auto,
    /// One thread per output element (or per weight element and chunk).
    Direct,
    /// Implicit GEMM on CUDA cores.
    Gemm,
    /// `cubek-convolution` (tensor cores; needs groups = 1 and a device with them).
    Cubek,
    /// Own implicit GEMM on tensor cores (CUDA `cmma`): bf16 fragments for bf16 operands,
    /// TF32 for f32 operands; f32 accumulation and f32 results.
    TensorCore,
}

/// A convolution problem resolved against concrete shapes.
#[derive(Debug, Clone)]
pub struct ConvProblem {
    /// Spatial rank (1, 2 or 3).
    pub nd: usize,
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Groups.
    pub groups: usize,
    /// Input spatial sizes.
    pub input: Vec<usize>,
    /// Kernel sizes.
    pub kernel: Vec<usize>,
    /// Output spatial sizes.
    pub output: Vec<usize>,
    /// Strides.
    pub stride: Vec<usize>,
    /// Zeros before each axis.
    pub pad_before: Vec<usize>,
    /// Zeros after each axis.
    pub pad_after: Vec<usize>,
    /// Dilations.
    pub dilation: Vec<usize>,
    /// Activation layout.
    pub layout: Layout,
}

/// `v` for `nd` spatial axes (a single value broadcasts).
pub(crate) fn per_axis(op: &'static str, what: &str, v: &[usize], nd: usize) -> Result<Vec<usize>> {
    match v.len() {
        1 => Ok(vec![v[0]; nd]),
        n if n == nd => Ok(v.to_vec()),
        n => Err(Error::arg(
            op,
            format!("{what} has {n} values for {nd} spatial axes"),
        )),
    }
}

impl ConvSpec {
    /// Resolve against an input shape (in `self.layout`) and a weight shape.
    pub fn resolve(
        &self,
        op: &'static str,
        input: &[usize],
        weight: &[usize],
    ) -> Result<ConvProblem> {
        let rank = input.len();
        if !(3..=5).contains(&rank) {
            return Err(Error::shape(
                op,
                format!(
                    "input {input:?} must have rank 3, 4 or 5 (batch, channels, 1-3 spatial axes)"
                ),
            ));
        }
        let nd = rank - 2;
        if weight.len() != rank {
            return Err(Error::shape(
                op,
                format!(
                    "weight {weight:?} must be [C_out, C_in/groups, *kernel] with {nd} kernel axes (input {input:?})"
                ),
            ));
        }
        let (n, c_in, sp) = self.layout.split(input);
        let (c_out, c_in_g, kernel) = (weight[0], weight[1], weight[2..].to_vec());
        let g = self.groups;
        if g == 0 || c_in % g != 0 || c_out % g != 0 || c_in / g != c_in_g {
            return Err(Error::shape(
                op,
                format!(
                    "groups {g}: input has {c_in} channels and weight {weight:?} expects {c_in_g} per group \
                     ({c_out} outputs); both channel counts must divide by groups"
                ),
            ));
        }
        if kernel.contains(&0) {
            return Err(Error::shape(
                op,
                format!("weight {weight:?} has an empty kernel axis"),
            ));
        }
        let stride = per_axis(op, "stride", &self.stride, nd)?;
        let dilation = per_axis(op, "dilation", &self.dilation, nd)?;
        if stride.contains(&0) || dilation.contains(&0) {
            return Err(Error::arg(
                op,
                format!("stride {stride:?} and dilation {dilation:?} must be positive"),
            ));
        }
        let span: Vec<usize> = (0..nd).map(|i| dilation[i] * (kernel[i] - 1)).collect();
        let (pad_before, pad_after) = match &self.padding {
            Padding::Symmetric(p) => {
                let p = per_axis(op, "padding", p, nd)?;
                (p.clone(), p)
            }
            Padding::Asymmetric(p) => match p.len() {
                1 => (vec![p[0].0; nd], vec![p[0].1; nd]),
                l if l == nd => (
                    p.iter().map(|q| q.0).collect(),
                    p.iter().map(|q| q.1).collect(),
                ),
                l => {
                    return Err(Error::arg(
                        op,
                        format!("padding has {l} pairs for {nd} spatial axes"),
                    ));
                }
            },
            Padding::Same => {
                if stride.iter().any(|&s| s != 1) {
                    return Err(Error::arg(
                        op,
                        format!("padding \"same\" needs stride 1, got {stride:?}"),
                    ));
                }
                (
                    span.iter().map(|s| s / 2).collect(),
                    span.iter().map(|s| s - s / 2).collect(),
                )
            }
            Padding::Causal => (span.clone(), vec![0; nd]),
        };
        let mut output = Vec::with_capacity(nd);
        for i in 0..nd {
            let padded = sp[i] + pad_before[i] + pad_after[i];
            if padded < span[i] + 1 {
                return Err(Error::shape(
                    op,
                    format!(
                        "spatial axis {i}: input {} with padding ({}, {}) is smaller than the dilated kernel {}",
                        sp[i],
                        pad_before[i],
                        pad_after[i],
                        span[i] + 1
                    ),
                ));
            }
            output.push((padded - span[i] - 1) / stride[i] + 1);
        }
        Ok(ConvProblem {
            nd,
            n,
            c_in,
            c_out,
            groups: g,
            input: sp,
            kernel,
            output,
            stride,
            pad_before,
            pad_after,
            dilation,
            layout: self.layout,
        })
    }
}

impl ConvProblem {
    /// Output shape in the problem's layout.
    pub fn output_shape(&self) -> Vec<usize> {
        self.layout.shape(self.n, self.c_out, &self.output)
    }
    /// Input shape in the problem's layout.
    pub fn input_shape(&self) -> Vec<usize> {
        self.layout.shape(self.n, self.c_in, &self.input)
    }
    /// Weight shape `[C_out, C_in/groups, *kernel]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        [&[self.c_out, self.c_in / self.groups][..], &self.kernel].concat()
    }
    fn c_in_g(&self) -> usize {
        self.c_in / self.groups
    }
    fn c_out_g(&self) -> usize {
        self.c_out / self.groups
    }
}

/// Pad a spatial list to three axes with leading `fill`.
pub(crate) fn pad3(v: &[usize], fill: usize) -> [i32; 3] {
    let mut out = [fill as i32; 3];
    let off = 3 - v.len();
    for (i, &x) in v.iter().enumerate() {
        out[off + i] = x as i32;
    }
    out
}

/// (n, c, d, h, w) element strides of an activation with `strides` in `layout`.
pub(crate) fn layout_strides(strides: &[usize], layout: Layout) -> [i32; 5] {
    let r = strides.len();
    let sp: Vec<usize> = layout.spatial_axes(r).iter().map(|&a| strides[a]).collect();
    let s3 = pad3(&sp, 0);
    [
        strides[0] as i32,
        strides[layout.channel_axis(r)] as i32,
        s3[0],
        s3[1],
        s3[2],
    ]
}

/// (n, c, d, h, w) element strides of an activation view in `layout`.
fn act_strides(t: &Tensor, layout: Layout) -> [i32; 5] {
    layout_strides(t.strides(), layout)
}

/// (out, in, d, h, w) strides of a weight view. A tap axis of extent 1 only ever takes
/// index 0, so its stored stride means nothing, and any value may sit there (a 1 × 1
/// kernel held channels-last has 1): such axes get 0, except w, which the tensor-core
/// kernels step a packed tap index by (tap `t` at `t · sw_w`), so it gets the step of the
/// innermost longer tap axis. Left as stored, an odd stride failed the 16-byte copy
/// alignment checks and cost a copy of the weights.
fn weight_strides(w: &Tensor) -> [i32; 5] {
    let st = w.strides();
    let k = pad3(&w.shape()[2..], 1);
    let mut s3 = pad3(&st[2..], 0);
    let unit = (0..3).rev().find(|&a| k[a] > 1).map_or(0, |a| s3[a]);
    for a in 0..2 {
        if k[a] == 1 {
            s3[a] = 0;
        }
    }
    if k[2] == 1 {
        s3[2] = unit;
    }
    [st[0] as i32, st[1] as i32, s3[0], s3[1], s3[2]]
}

fn strides_of_contiguous(shape: &[usize], layout: Layout) -> [i32; 5] {
    layout_strides(&contiguous_strides(shape), layout)
}

fn conv_params(p: &ConvProblem) -> ([i32; 3], [i32; 3], [i32; 3], [i32; 3]) {
    (
        pad3(&p.kernel, 1),
        pad3(&p.stride, 1),
        pad3(&p.pad_before, 0),
        pad3(&p.dilation, 1),
    )
}

/// Geometry of forward: src = x, dst = y.
fn fwd_geo(p: &ConvProblem, x: &Tensor, w: &Tensor, y_strides: [i32; 5]) -> Geo {
    let (kk, st, pad, dil) = conv_params(p);
    let sw = weight_strides(w);
    Geo {
        src: pad3(&p.input, 1),
        ss: act_strides(x, p.layout),
        dst: pad3(&p.output, 1),
        sd: y_strides,
        k: kk,
        sw,
        w_group: p.c_out_g() as i32 * sw[0],
        stride: st,
        pad,
        dil,
        c_red: p.c_in_g() as i32,
        c_out: p.c_out_g() as i32,
        groups: p.groups as i32,
        batch: p.n as i32,
    }
}

/// Geometry of backward-data: src = dy, dst = dx; the weight's roles swap.
fn bwd_geo(p: &ConvProblem, dy: &Tensor, w: &Tensor, dx_strides: [i32; 5]) -> Geo {
    let (kk, st, pad, dil) = conv_params(p);
    let ws = weight_strides(w);
    Geo {
        src: pad3(&p.output, 1),
        ss: act_strides(dy, p.layout),
        dst: pad3(&p.input, 1),
        sd: dx_strides,
        k: kk,
        sw: [ws[1], ws[0], ws[2], ws[3], ws[4]],
        w_group: p.c_out_g() as i32 * ws[0],
        stride: st,
        pad,
        dil,
        c_red: p.c_out_g() as i32,
        c_out: p.c_in_g() as i32,
        groups: p.groups as i32,
        batch: p.n as i32,
    }
}

/// Geometry of the weight gradient: src = x, dst = dy (both read).
fn wgrad_geo(p: &ConvProblem, x: &Tensor, dy: &Tensor) -> Geo {
    let (kk, st, pad, dil) = conv_params(p);
    Geo {
        src: pad3(&p.input, 1),
        ss: act_strides(x, p.layout),
        dst: pad3(&p.output, 1),
        sd: act_strides(dy, p.layout),
        k: kk,
        sw: [0; 5],
        w_group: 0,
        stride: st,
        pad,
        dil,
        c_red: p.c_in_g() as i32,
        c_out: p.c_out_g() as i32,
        groups: p.groups as i32,
        batch: p.n as i32,
    }
}

const I32_LIMIT: usize = i32::MAX as usize;

/// Same device, same dtype, a float one (bf16 too: only the tensor-core path sees bf16 here,
/// the others widen it first), and within the kernels' i32 indexing.
fn check_operands(op: &'static str, ts: &[(&str, &Tensor)]) -> Result<()> {
    let first = ts[0].1;
    if first.dtype() != DType::BF16 {
        require_float(op, first)?;
    }
    for (name, t) in ts {
        same_device(op, first, t)?;
        if t.dtype() != first.dtype() {
            return Err(Error::dtype(
                op,
                format!(
                    "{name} is {} but {} is {}",
                    t.dtype(),
                    ts[0].0,
                    first.dtype()
                ),
            ));
        }
        if t.buffer_len() > I32_LIMIT {
            return Err(Error::arg(
                op,
                format!("{name} {:?} exceeds 2^31 elements", t.shape()),
            ));
        }
    }
    Ok(())
}

/// Whether the shared GEMM kernel suits these channel counts (reduced, produced per group).
fn gemm_suits(c_red: usize, c_out: usize) -> bool {
    c_red >= 8 && c_out >= 8
}

/// Run the cubek path when asked for (its refusal is then the error). `Auto` never picks
/// it: on an H200 (docs/model-ops-benchmarks.md) the tensor-core GEMM here was faster on
/// most measured TF32 passes and cubek's weight gradient up to 8× slower; cubek wins only at
/// 192 channels (weight gradient 0.95 vs 2.0 ms), where it can be asked for.
fn try_cubek(
    op: &'static str,
    which: ConvImpl,
    run: impl FnOnce() -> std::result::Result<Tensor, String>,
) -> Result<Option<Tensor>> {
    match which {
        ConvImpl::Cubek => run().map(Some).map_err(|e| Error::kernel(op, e)),
        _ => Ok(None),
    }
}

/// Whether any operand is bf16 (the call then runs on [`widened`] copies).
fn any_bf16(ts: &[Option<&Tensor>]) -> bool {
    ts.iter().flatten().any(|t| t.dtype() == DType::BF16)
}

/// `t` widened to f32 if it is bf16 (exact), otherwise `t` itself; the refusal on a device
/// without bf16 names the convolution op.
fn widened(op: &'static str, t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::BF16 {
        return Ok(t.clone());
    }
    require_bf16_device(op, DType::BF16, t.device())?;
    t.to_dtype(DType::F32)
}

/// Implicit GEMM or direct kernel for a pass reducing over `c_red` channels per group into
/// `c_out` (`Auto` by channel counts).
fn use_gemm(which: ConvImpl, c_red: usize, c_out: usize) -> bool {
    match which {
        ConvImpl::Gemm => true,
        ConvImpl::Direct => false,
        _ => gemm_suits(c_red, c_out),
    }
}

/// The one dtype of `operands`, if they share one.
fn common_dtype(operands: &[&Tensor]) -> Option<DType> {
    let d = operands[0].dtype();
    operands.iter().all(|t| t.dtype() == d).then_some(d)
}

/// Whether the tensor-core kernels run this pass: when asked for (an error where they
/// cannot), or under `Auto` for bf16 operands, or f32 operands with TF32 allowed. Both need a
/// device with tensor cores and at least 16 channels per group on both sides (narrower
/// problems leave most of each 16-wide fragment empty, and the weight-gradient kernel's
/// address table assumes it).
fn use_tensor_cores(
    op: &'static str,
    which: ConvImpl,
    operands: &[&Tensor],
    allow_tf32: bool,
    c_red: usize,
    c_out: usize,
) -> Result<bool> {
    let dtype = common_dtype(operands);
    let device = operands[0].device();
    let able = dtype.is_some_and(|d| device.has_tensor_cores(d));
    let wide = c_red >= 16 && c_out >= 16;
    match which {
        ConvImpl::TensorCore if able && wide => Ok(true),
        ConvImpl::TensorCore if able => Err(Error::arg(
            op,
            format!(
                "the tensor-core kernels need at least 16 channels per group on both sides; this pass has {c_red} → {c_out}"
            ),
        )),
        ConvImpl::TensorCore => {
            let dtypes: Vec<String> = operands.iter().map(|t| t.dtype().to_string()).collect();
            Err(Error::kernel(
                op,
                format!(
                    "the tensor-core kernels need bf16 or f32 operands of one dtype on a device with tensor cores (CUDA, sm_80 or newer); got {} on {device}",
                    dtypes.join(" and ")
                ),
            ))
        }
        ConvImpl::Auto => Ok(able && wide && (dtype == Some(DType::BF16) || allow_tf32)),
        _ => Ok(false),
    }
}

/// The memory order (axes, slowest first) a tensor-core pass wants of weight `w`
/// (`[C_out, C_in/groups, *kernel]`): axis `reduced` (1 for forward, 0 for backward-data)
/// fastest, so weight tiles load coalesced, and the taps packed in their order (the
/// kernels step the weight by tap · the last tap stride); the other channel axis goes
/// before the taps, or between them and `reduced` where `w`'s memory has it there. A
/// PyTorch-order weight takes one tiled transpose either way; a channels-last one
/// (`[C_out, *kernel, C_in]` memory, PyTorch's `channels_last_3d`) none for the forward
/// and one tiled transpose (not a scattered copy) for backward-data.
fn reduced_fastest(w: &Tensor, reduced: usize) -> Vec<usize> {
    let other = 1 - reduced;
    let taps = 2..w.rank();
    let tap_stride = taps
        .clone()
        .filter(|&a| w.shape()[a] > 1)
        .map(|a| w.strides()[a])
        .min();
    let inside = tap_stride.is_some_and(|t| w.strides()[other] < t);
    let mut order: Vec<usize> = if inside {
        taps.chain([other]).collect()
    } else {
        [other].into_iter().chain(taps).collect()
    };
    order.push(reduced);
    order
}

/// The inverse of permutation `perm`.
fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &a) in perm.iter().enumerate() {
        inv[a] = i;
    }
    inv
}

/// Two operands of a tensor-core pass, each `(t, order)` as a view of memory in `order`
/// (axes, slowest first; `t` itself when its memory already is, or when `order` is
/// `None`), the copies of both in one launch where both are tiled transposes.
fn in_memory_order(
    a: (&Tensor, Option<Vec<usize>>),
    b: (&Tensor, Option<Vec<usize>>),
) -> Result<(Tensor, Tensor)> {
    let view = |(t, order): &(&Tensor, Option<Vec<usize>>)| match order {
        Some(o) => t.permute(o),
        None => Ok((*t).clone()),
    };
    let back = |t: Tensor, order: &Option<Vec<usize>>| match order {
        Some(o) => t.permute(&inverse(o)),
        None => Ok(t),
    };
    let (va, vb) = (view(&a)?, view(&b)?);
    let (ca, cb) = match (&a.1, &b.1) {
        (Some(_), Some(_)) => va.contiguous_pair(&vb)?,
        (Some(_), None) => (va.contiguous()?, vb),
        (None, Some(_)) => (va, vb.contiguous()?),
        (None, None) => (va, vb),
    };
    Ok((back(ca, &a.1)?, back(cb, &b.1)?))
}

/// `bias` checked against the problem (`[C_out]`, a floating dtype, the input's device) and
/// made compact: the kernels index it from element 0.
fn checked_bias(op: &'static str, b: &Tensor, p: &ConvProblem, weight: &Tensor) -> Result<Tensor> {
    if b.shape() != [p.c_out] {
        return Err(Error::shape(
            op,
            format!(
                "bias {:?} must be [{}] (weight {:?})",
                b.shape(),
                p.c_out,
                weight.shape()
            ),
        ));
    }
    b.compact()
}

/// A weight gradient from per-split partial sums along `axis`, in `weight_shape` (split
/// partials leading and contiguous: [`split_sum`]; else the generic reduction).
fn summed_parts(parts: Tensor, axis: usize, weight_shape: &[usize]) -> Result<Tensor> {
    if parts.shape()[axis] == 1 {
        parts.reshape(weight_shape)
    } else if axis == 0 && parts.is_contiguous() {
        Ok(split_sum(&parts, weight_shape, None))
    } else {
        parts.sum(&[axis as isize], false)?.reshape(weight_shape)
    }
}

/// Axes of a channels-first activation of `rank` axes in channels-last order.
fn first_to_last(rank: usize) -> Vec<usize> {
    [0].into_iter().chain(2..rank).chain([1]).collect()
}

/// (channel-fastest, copied) for a tensor-core pass: whether it reads channel-fastest
/// memory, and whether that takes copies of channels-first operands. The pipelined kernels
/// read channel runs in 16-byte chunks (their results go to any strides); for
/// channels-first operands they take, a tiled transpose per operand costs far less than
/// the channels-first `wmma` kernels lose.
fn channel_fastest_pass(p: &ConvProblem, dtype: DType, device: &Device) -> (bool, bool) {
    let copy = p.layout == Layout::ChannelsFirst
        && conv_pipe::takes(device, dtype, p.c_in_g(), p.c_out_g());
    (p.layout == Layout::ChannelsLast || copy, copy)
}

/// The memory order [`in_memory_order`] gives an activation operand of a pass with
/// `copied` from [`channel_fastest_pass`]: channel-fastest when set, as it is otherwise.
fn operand_order(t: &Tensor, copied: bool) -> Option<Vec<usize>> {
    copied.then(|| first_to_last(t.rank()))
}

/// Forward on the tensor cores (f32 result; a bf16 or f32 bias joins the accumulators).
fn tc_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: &ConvProblem) -> Result<Tensor> {
    let op = "conv";
    check_operands(op, &[("input", x), ("weight", w)])?;
    let bias = match bias {
        None => None,
        Some(b) => {
            same_device(op, x, b)?;
            if !matches!(b.dtype(), DType::F32 | DType::BF16) {
                return Err(Error::dtype(
                    op,
                    format!("bias is {} but input is {}", b.dtype(), x.dtype()),
                ));
            }
            Some(checked_bias(op, &b.to_dtype(DType::F32)?, p, w)?)
        }
    };
    let (cl, copied) = channel_fastest_pass(p, x.dtype(), x.device());
    let w_order = Some(reduced_fastest(w, 1));
    let (x, wt) = in_memory_order((x, operand_order(x, copied)), (w, w_order))?;
    let out_shape = p.output_shape();
    let geo = fwd_geo(p, &x, &wt, strides_of_contiguous(&out_shape, p.layout));
    let tile = tc::gemm_tile(p.c_out_g());
    Ok(tc::gemm(
        &x,
        &wt,
        bias.as_ref(),
        &out_shape,
        &geo,
        cl,
        false,
        tile,
    ))
}

impl Tensor {
    /// Convolution of `self` (`[N, C_in, *spatial]` or channels-last, see [`ConvSpec::layout`])
    /// with `weight` `[C_out, C_in/groups, *kernel]` and an optional `bias` `[C_out]`.
    pub fn conv(&self, weight: &Tensor, bias: Option<&Tensor>, spec: &ConvSpec) -> Result<Tensor> {
        self.conv_with(weight, bias, spec, ConvImpl::Auto)
            .map(|(t, _)| t)
    }

    /// [`conv`](Self::conv) with an explicit kernel; returns the one that ran.
    pub fn conv_with(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        spec: &ConvSpec,
        which: ConvImpl,
    ) -> Result<(Tensor, ConvImpl)> {
        let op = "conv";
        if let Ok(p) = spec.resolve(op, self.shape(), weight.shape())
            && use_tensor_cores(
                op,
                which,
                &[self, weight],
                spec.allow_tf32,
                p.c_in_g(),
                p.c_out_g(),
            )?
        {
            let y = tc_forward(self, weight, bias, &p)?;
            return Ok((y, ConvImpl::TensorCore));
        }
        if any_bf16(&[Some(self), Some(weight), bias]) {
            let b = bias.map(|b| widened(op, b)).transpose()?;
            return widened(op, self)?.conv_with(&widened(op, weight)?, b.as_ref(), spec, which);
        }
        let mut ops = vec![("input", self), ("weight", weight)];
        if let Some(b) = bias {
            ops.push(("bias", b));
        }
        check_operands(op, &ops)?;
        let p = spec.resolve(op, self.shape(), weight.shape())?;
        let bias = bias.map(|b| checked_bias(op, b, &p, weight)).transpose()?;
        let bias = bias.as_ref();
        let out_shape = p.output_shape();
        if let Some(y) = try_cubek(op, which, || cubek_conv::forward(self, weight, bias, &p))? {
            return Ok((y, ConvImpl::Cubek));
        }
        let geo = fwd_geo(
            &p,
            self,
            weight,
            strides_of_contiguous(&out_shape, p.layout),
        );
        let cl = p.layout == Layout::ChannelsLast;
        if use_gemm(which, p.c_in_g(), p.c_out_g()) {
            let cfg = k::gemm_tile(p.c_out_g());
            let y = k::gemm(self, weight, bias, &out_shape, &geo, cl, false, cfg);
            Ok((y, ConvImpl::Gemm))
        } else {
            let y = Tensor::empty(&out_shape, self.dtype, &self.device);
            k::direct(self, weight, bias, &y, &geo, cl, false);
            Ok((y, ConvImpl::Direct))
        }
    }

    /// Gradient of a convolution with respect to its input: `dy` is the output gradient,
    /// `input_shape` the shape of the input (in `spec.layout`).
    pub fn conv_backward_input(
        dy: &Tensor,
        weight: &Tensor,
        input_shape: &[usize],
        spec: &ConvSpec,
        which: ConvImpl,
    ) -> Result<(Tensor, ConvImpl)> {
        let op = "conv_backward_input";
        if let Ok(p) = spec.resolve(op, input_shape, weight.shape())
            && dy.shape() == p.output_shape().as_slice()
            && use_tensor_cores(
                op,
                which,
                &[dy, weight],
                spec.allow_tf32,
                p.c_out_g(),
                p.c_in_g(),
            )?
        {
            check_operands(op, &[("output gradient", dy), ("weight", weight)])?;
            let (cl, copied) = channel_fastest_pass(&p, dy.dtype(), dy.device());
            let dx_strides = strides_of_contiguous(input_shape, p.layout);
            // Weights whose C_in (this pass's dst channels) is fastest, as PyTorch's
            // `channels_last_3d` holds them, are read as they lie where the kernel can (a
            // channels-last pass copies nothing then); otherwise copied C_out fastest.
            let as_they_lie = !copied
                && conv_pipe::reads_dst_fastest(
                    dy,
                    weight,
                    &bwd_geo(&p, dy, weight, dx_strides),
                    cl,
                );
            let w_order = (!as_they_lie).then(|| reduced_fastest(weight, 0));
            let (dy, wt) = in_memory_order((dy, operand_order(dy, copied)), (weight, w_order))?;
            let geo = bwd_geo(&p, &dy, &wt, dx_strides);
            let tile = tc::gemm_tile(p.c_in_g());
            let dx = tc::gemm(&dy, &wt, None, input_shape, &geo, cl, true, tile);
            return Ok((dx, ConvImpl::TensorCore));
        }
        if any_bf16(&[Some(dy), Some(weight)]) {
            let (dy, wt) = (widened(op, dy)?, widened(op, weight)?);
            return Tensor::conv_backward_input(&dy, &wt, input_shape, spec, which);
        }
        check_operands(op, &[("output gradient", dy), ("weight", weight)])?;
        let p = spec.resolve(op, input_shape, weight.shape())?;
        if dy.shape() != p.output_shape().as_slice() {
            return Err(Error::shape(
                op,
                format!(
                    "output gradient {:?} does not match the output {:?} of input {input_shape:?} and weight {:?}",
                    dy.shape(),
                    p.output_shape(),
                    weight.shape()
                ),
            ));
        }
        if let Some(dx) = try_cubek(op, which, || cubek_conv::backward_data(dy, weight, &p))? {
            return Ok((dx, ConvImpl::Cubek));
        }
        let geo = bwd_geo(&p, dy, weight, strides_of_contiguous(input_shape, p.layout));
        let cl = p.layout == Layout::ChannelsLast;
        if use_gemm(which, p.c_out_g(), p.c_in_g()) {
            let cfg = k::gemm_tile(p.c_in_g());
            let dx = k::gemm(dy, weight, None, input_shape, &geo, cl, true, cfg);
            Ok((dx, ConvImpl::Gemm))
        } else {
            let dx = Tensor::empty(input_shape, dy.dtype, &dy.device);
            k::direct(dy, weight, None, &dx, &geo, cl, true);
            Ok((dx, ConvImpl::Direct))
        }
    }

    /// Gradient of a convolution with respect to its weight (`[C_out, C_in/groups, *kernel]`).
    pub fn conv_backward_weight(
        x: &Tensor,
        dy: &Tensor,
        weight_shape: &[usize],
        spec: &ConvSpec,
        which: ConvImpl,
    ) -> Result<(Tensor, ConvImpl)> {
        let op = "conv_backward_weight";
        if let Ok(p) = spec.resolve(op, x.shape(), weight_shape)
            && dy.shape() == p.output_shape().as_slice()
            && use_tensor_cores(
                op,
                which,
                &[x, dy],
                spec.allow_tf32,
                p.c_in_g(),
                p.c_out_g(),
            )?
        {
            check_operands(op, &[("input", x), ("output gradient", dy)])?;
            let (cl, copied) = channel_fastest_pass(&p, x.dtype(), x.device());
            let order = operand_order(x, copied);
            let (x, dy) = in_memory_order((x, order.clone()), (dy, order))?;
            let geo = wgrad_geo(&p, &x, &dy);
            let tile = tc::wgrad_tile(p.c_out_g());
            let parts = tc::wgrad(&x, &dy, &geo, cl, tile);
            return Ok((summed_parts(parts, 0, weight_shape)?, ConvImpl::TensorCore));
        }
        if any_bf16(&[Some(x), Some(dy)]) {
            let (x, dy) = (widened(op, x)?, widened(op, dy)?);
            return Tensor::conv_backward_weight(&x, &dy, weight_shape, spec, which);
        }
        check_operands(op, &[("input", x), ("output gradient", dy)])?;
        let p = spec.resolve(op, x.shape(), weight_shape)?;
        if dy.shape() != p.output_shape().as_slice() {
            return Err(Error::shape(
                op,
                format!(
                    "output gradient {:?} does not match the output {:?} of input {:?} and weight {weight_shape:?}",
                    dy.shape(),
                    p.output_shape(),
                    x.shape()
                ),
            ));
        }
        if let Some(dw) = try_cubek(op, which, || cubek_conv::backward_weight(x, dy, &p))? {
            return Ok((dw, ConvImpl::Cubek));
        }
        let geo = wgrad_geo(&p, x, dy);
        let n_weights: usize = weight_shape.iter().product();
        let cl = p.layout == Layout::ChannelsLast;
        if use_gemm(which, p.c_in_g(), p.c_out_g()) {
            let taps: usize = p.kernel.iter().product();
            let cfg = k::wgrad_tile(p.c_out_g(), taps * p.c_in_g(), geo.dst[2] as usize);
            let parts = k::wgrad_gemm(x, dy, &geo, cl, cl, cfg);
            Ok((summed_parts(parts, 0, weight_shape)?, ConvImpl::Gemm))
        } else {
            let parts = k::wgrad_direct(x, dy, &geo, n_weights);
            Ok((summed_parts(parts, 1, weight_shape)?, ConvImpl::Direct))
        }
    }

    /// Input and weight gradients of one convolution, each when wanted, with `Auto`
    /// kernels: [`conv_backward_input`](Self::conv_backward_input) and
    /// [`conv_backward_weight`](Self::conv_backward_weight), except that a channels-first
    /// `dy` which both passes would copy to channel-fastest memory for the tensor cores is
    /// copied once for both, in one launch with `x` (a training step's backward converts
    /// its output gradient once, not per pass).
    pub fn conv_backward(
        x: &Tensor,
        weight: &Tensor,
        dy: &Tensor,
        spec: &ConvSpec,
        (want_input, want_weight): (bool, bool),
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = "conv_backward";
        let auto = ConvImpl::Auto;
        let shared = want_input
            && want_weight
            && match spec.resolve(op, x.shape(), weight.shape()) {
                Ok(p) if dy.shape() == p.output_shape().as_slice() => {
                    let (c_in, c_out) = (p.c_in_g(), p.c_out_g());
                    let tf32 = spec.allow_tf32;
                    channel_fastest_pass(&p, dy.dtype(), dy.device()).1
                        && use_tensor_cores(op, auto, &[dy, weight], tf32, c_out, c_in)?
                        && use_tensor_cores(op, auto, &[x, dy], tf32, c_in, c_out)?
                }
                // The passes report what is wrong.
                _ => false,
            };
        // Shared: dy and x copied in one launch; the passes find them channel-fastest.
        let order = operand_order(dy, shared);
        let (dy, x) = in_memory_order((dy, order.clone()), (x, order))?;
        let dx = want_input
            .then(|| Tensor::conv_backward_input(&dy, weight, x.shape(), spec, auto))
            .transpose()?;
        let dw = want_weight
            .then(|| Tensor::conv_backward_weight(&x, &dy, weight.shape(), spec, auto))
            .transpose()?;
        Ok((dx.map(|r| r.0), dw.map(|r| r.0)))
    }

    /// Gradient of a convolution bias: the output gradient summed over batch and space.
    pub fn conv_backward_bias(dy: &Tensor, layout: Layout) -> Result<Tensor> {
        refuse_bf16("conv_backward_bias", dy.dtype)?;
        let r = dy.rank();
        let axes: Vec<isize> = (0..r)
            .filter(|&a| a != layout.channel_axis(r))
            .map(|a| a as isize)
            .collect();
        dy.sum(&axes, false)
    }
}

/// `cubek-convolution` (implicit GEMM on tensor cores, channels-last). It takes inputs
/// `[N, *spatial, C]` and weights `[C_out, *kernel, C_in]`, both contiguous at offset 0;
/// other layouts are copied once per call. Errors are cubek's refusal (no tensor cores,
/// unsupported dtype or shape).
mod cubek_conv {
    use cubecl::prelude::{Runtime, TensorBinding};
    use cubek::convolution::{
        AcceleratedTileKind, ConvAlgorithm, ConvolutionArgs, ConvolutionInputs, Strategy,
        launch_ref,
    };
    use cubek::matmul::definition::MatmulElems;
    use cubek::std::InputBinding;

    use super::*;

    fn channels_last(t: &Tensor, layout: Layout) -> std::result::Result<Tensor, String> {
        let r = t.rank();
        let v = match layout {
            Layout::ChannelsLast => t.clone(),
            Layout::ChannelsFirst => {
                let mut perm = vec![0];
                perm.extend(2..r);
                perm.push(1);
                t.permute(&perm).map_err(|e| e.to_string())?
            }
        };
        let v = v.contiguous().map_err(|e| e.to_string())?;
        if v.offset == 0 {
            Ok(v)
        } else {
            v.deep_clone().map_err(|e| e.to_string())
        }
    }

    fn from_channels_last(t: Tensor, layout: Layout) -> std::result::Result<Tensor, String> {
        match layout {
            Layout::ChannelsLast => Ok(t),
            Layout::ChannelsFirst => {
                let r = t.rank();
                let mut perm = vec![0, r - 1];
                perm.extend(1..r - 1);
                t.permute(&perm)
                    .and_then(|v| v.contiguous())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// PyTorch weight `[C_out, C_in, *k]` → `[C_out, *k, C_in]` contiguous.
    fn weight_cl(w: &Tensor) -> std::result::Result<Tensor, String> {
        channels_last(w, Layout::ChannelsFirst)
    }

    fn args<const N: usize>(p: &ConvProblem) -> ConvolutionArgs<N> {
        let mut stride = [1; N];
        let mut padding = [0; N];
        let mut dilation = [1; N];
        stride.copy_from_slice(&p.stride[..N]);
        padding.copy_from_slice(&p.pad_before[..N]);
        dilation.copy_from_slice(&p.dilation[..N]);
        ConvolutionArgs {
            stride,
            padding,
            dilation,
        }
    }

    const STRATEGY: Strategy = Strategy::Inferred {
        algorithm: ConvAlgorithm::SimpleSyncCyclic,
        tile_kind: AcceleratedTileKind::Cmma,
    };

    macro_rules! with_nd {
        ($nd:expr, $N:ident => $body:expr) => {
            match $nd {
                1 => {
                    const $N: usize = 1;
                    $body
                }
                2 => {
                    const $N: usize = 2;
                    $body
                }
                _ => {
                    const $N: usize = 3;
                    $body
                }
            }
        };
    }

    fn binding<R: Runtime>(t: &Tensor) -> TensorBinding<R> {
        // SAFETY: the tensors are contiguous at offset 0 with these shapes.
        unsafe {
            TensorBinding::from_raw_parts(
                t.handle.clone(),
                t.strides.clone().into(),
                t.shape.clone().into(),
            )
        }
    }

    /// cubek takes one padding per axis, applied on both sides.
    fn symmetric(p: &ConvProblem) -> std::result::Result<(), String> {
        if p.pad_before == p.pad_after {
            Ok(())
        } else {
            Err(format!(
                "cubek pads both sides alike; padding before {:?} and after {:?} differ \
                 (use the default implementation)",
                p.pad_before, p.pad_after
            ))
        }
    }

    pub(super) fn forward(
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: &ConvProblem,
    ) -> std::result::Result<Tensor, String> {
        symmetric(p)?;
        let xc = channels_last(x, p.layout)?;
        let wc = weight_cl(w)?;
        let bc = bias
            .map(|b| b.deep_clone().map_err(|e| e.to_string()))
            .transpose()?;
        let out_cl = Layout::ChannelsLast.shape(p.n, p.c_out, &p.output);
        let y = Tensor::empty(&out_cl, x.dtype, &x.device);
        let dtype = x.dtype.storage();
        dispatch!(x.device, c => {
            let elems = MatmulElems::from_single_dtype(cubecl::ir::Type::new(dtype));
            record_launch();
            with_nd!(p.nd, N => launch_ref::<_, N>(
                &STRATEGY,
                c,
                ConvolutionInputs::Forward {
                    input: InputBinding::Normal(binding(&xc), dtype),
                    weight: InputBinding::Normal(binding(&wc), dtype),
                    bias: bc.as_ref().map(|b| InputBinding::Normal(binding(b), dtype)),
                    out: binding(&y),
                },
                args::<N>(p),
                elems,
            ))
            .map_err(|e| format!("{e:?}"))
        })?;
        from_channels_last(y, p.layout)
    }

    pub(super) fn backward_data(
        dy: &Tensor,
        w: &Tensor,
        p: &ConvProblem,
    ) -> std::result::Result<Tensor, String> {
        symmetric(p)?;
        let dyc = channels_last(dy, p.layout)?;
        let wc = weight_cl(w)?;
        let in_cl = Layout::ChannelsLast.shape(p.n, p.c_in, &p.input);
        let dx = Tensor::zeros(&in_cl, dy.dtype, &dy.device).map_err(|e| e.to_string())?;
        let dtype = dy.dtype.storage();
        dispatch!(dy.device, c => {
            let elems = MatmulElems::from_single_dtype(cubecl::ir::Type::new(dtype));
            record_launch();
            with_nd!(p.nd, N => launch_ref::<_, N>(
                &STRATEGY,
                c,
                ConvolutionInputs::BackwardData {
                    out_grad: InputBinding::Normal(binding(&dyc), dtype),
                    weights: InputBinding::Normal(binding(&wc), dtype),
                    in_grad: binding(&dx),
                },
                args::<N>(p),
                elems,
            ))
            .map_err(|e| format!("{e:?}"))
        })?;
        from_channels_last(dx, p.layout)
    }

    pub(super) fn backward_weight(
        x: &Tensor,
        dy: &Tensor,
        p: &ConvProblem,
    ) -> std::result::Result<Tensor, String> {
        symmetric(p)?;
        let xc = channels_last(x, p.layout)?;
        let dyc = channels_last(dy, p.layout)?;
        let w_cl = [&[p.c_out][..], &p.kernel, &[p.c_in]].concat();
        let dw = Tensor::zeros(&w_cl, x.dtype, &x.device).map_err(|e| e.to_string())?;
        let dtype = x.dtype.storage();
        dispatch!(x.device, c => {
            let elems = MatmulElems::from_single_dtype(cubecl::ir::Type::new(dtype));
            record_launch();
            with_nd!(p.nd, N => launch_ref::<_, N>(
                &STRATEGY,
                c,
                ConvolutionInputs::BackwardWeight {
                    input: InputBinding::Normal(binding(&xc), dtype),
                    out_grad: InputBinding::Normal(binding(&dyc), dtype),
                    weight_grad: binding(&dw),
                },
                args::<N>(p),
                elems,
            ))
            .map_err(|e| format!("{e:?}"))
        })?;
        // [C_out, *k, C_in] → [C_out, C_in, *k]
        from_channels_last(dw, Layout::ChannelsFirst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::device;

    #[test]
    fn tensor_core_weight_orders_keep_the_taps_packed() {
        let d = device();
        let w = Tensor::zeros(&[24, 16, 3, 3, 3], DType::F32, &d).unwrap();
        // PyTorch order: forward [C_out, taps, C_in], backward-data [C_in, taps, C_out].
        assert_eq!(reduced_fastest(&w, 1), [0, 2, 3, 4, 1]);
        assert_eq!(reduced_fastest(&w, 0), [1, 2, 3, 4, 0]);
        // Channels-last memory [C_out, taps, C_in]: the forward's order as it is; for
        // backward-data C_in stays after the taps ([taps, C_in, C_out], one transpose).
        let cl = Tensor::zeros(&[24, 3, 3, 3, 16], DType::F32, &d).unwrap();
        let cl = cl.permute(&[0, 4, 1, 2, 3]).unwrap();
        assert_eq!(reduced_fastest(&cl, 1), [0, 2, 3, 4, 1]);
        assert_eq!(reduced_fastest(&cl, 0), [2, 3, 4, 1, 0]);
        // Taps split by a channel axis in memory ([kd, C_out, C_in, kh, kw]) come out
        // packed all the same.
        let odd = Tensor::zeros(&[3, 24, 16, 3, 3], DType::F32, &d).unwrap();
        let odd = odd.permute(&[1, 2, 0, 3, 4]).unwrap();
        assert_eq!(reduced_fastest(&odd, 1), [0, 2, 3, 4, 1]);
        assert_eq!(reduced_fastest(&odd, 0), [1, 2, 3, 4, 0]);
        // A 1 × 1 × 1 kernel has no tap stride to go by.
        let point = Tensor::zeros(&[24, 16, 1, 1, 1], DType::F32, &d).unwrap();
        assert_eq!(reduced_fastest(&point, 0), [1, 2, 3, 4, 0]);
    }

    #[test]
    fn weight_strides_of_single_tap_axes_follow_the_packed_taps() {
        let d = device();
        let channels_last = |shape: &[usize]| {
            let last = first_to_last(shape.len());
            let held: Vec<usize> = last.iter().map(|&a| shape[a]).collect();
            let t = Tensor::zeros(&held, DType::F32, &d).unwrap();
            t.permute(&inverse(&last)).unwrap()
        };
        // A 1 × 1 kernel held channels-last may carry stride 1 on its tap axes (the GPU
        // test saw a weight copy for it): no tap axis counts, all 0.
        let point = channels_last(&[32, 16, 1, 1]);
        assert_eq!(weight_strides(&point), [16, 1, 0, 0, 0]);
        let point = Tensor::zeros(&[32, 16, 1, 1], DType::F32, &d).unwrap();
        assert_eq!(point.strides(), [16, 1, 1, 1]);
        assert_eq!(weight_strides(&point), [16, 1, 0, 0, 0]);
        // One tap along w: w steps as the packed tap index does, here along h.
        let column = channels_last(&[32, 16, 3, 1]);
        assert_eq!(weight_strides(&column), [48, 1, 0, 16, 16]);
        let column = Tensor::zeros(&[32, 16, 3, 3, 1], DType::F32, &d).unwrap();
        assert_eq!(weight_strides(&column), [144, 9, 3, 1, 1]);
        // Longer tap axes keep what they hold.
        let cube = channels_last(&[32, 16, 3, 3, 3]);
        assert_eq!(weight_strides(&cube), [432, 1, 144, 48, 16]);
    }
}
