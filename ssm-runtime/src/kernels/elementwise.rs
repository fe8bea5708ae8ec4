//! Elementwise kernels: unary, binary (NumPy broadcasting) and `where`.
//!
//! Each family has a contiguous kernel (vectorised loads, no index math) and a strided
//! kernel (one coordinate decomposition per element, shared by all operands, so broadcast
//! operands are read through stride-0 axes and never materialised). The operation is a
//! comptime enum, so every (op, dtype) pair is its own compiled kernel.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::{elemwise_grid, vector_width};
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// One-input operations. `p` is the op's scalar parameter where it has one.
#[derive(CubeType, Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UnaryOp {
    /// −x
    Neg,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// √x
    Sqrt,
    /// 1/√x
    Rsqrt,
    /// |x|
    Abs,
    /// tanh x
    Tanh,
    /// 1/(1+e^−x)
    Sigmoid,
    /// x·σ(x)
    Silu,
    /// ln(1+e^x), or x above the threshold `p`
    Softplus,
    /// x·Φ(x) with the exact (erf) Φ
    Gelu,
    /// max(x, 0)
    Relu,
    /// 1/x
    Recip,
    /// x²
    Square,
    /// sign(x) ∈ {−1, 0, 1}
    Sign,
    /// x + p
    AddScalar,
    /// x · p
    MulScalar,
    /// x^p
    PowScalar,
    /// p − x
    RsubScalar,
    /// p / x
    RdivScalar,
    /// max(x, p)
    MaxScalar,
    /// min(x, p)
    MinScalar,
    /// 1 if x > p else 0
    GtScalar,
    /// 1 if x < p else 0
    LtScalar,
    /// 1 if x >= p else 0
    GeScalar,
    /// 1 if x <= p else 0
    LeScalar,
}

/// Two-input operations. The `*Grad` ops are the backward of a unary op: `a` is the
/// saved forward input `x` (or output `y` where noted) and `b` the incoming gradient.
#[derive(CubeType, Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
    /// a / b
    Div,
    /// a^b (C `pow` conventions)
    Pow,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// 1 if a == b else 0
    Eq,
    /// 1 if a != b else 0
    Ne,
    /// 1 if a < b else 0
    Lt,
    /// 1 if a <= b else 0
    Le,
    /// 1 if a > b else 0
    Gt,
    /// 1 if a >= b else 0
    Ge,
    /// b · y (a = y = e^x)
    ExpGrad,
    /// b / x
    LogGrad,
    /// b / (2y) (a = y = √x)
    SqrtGrad,
    /// −b·y³/2 (a = y = 1/√x)
    RsqrtGrad,
    /// b · sign(x)
    AbsGrad,
    /// b·(1 − y²) (a = y = tanh x)
    TanhGrad,
    /// b·y(1 − y) (a = y = σ(x))
    SigmoidGrad,
    /// b·σ(x)(1 + x(1 − σ(x)))
    SiluGrad,
    /// b·σ(x), or b above the threshold `p`
    SoftplusGrad,
    /// b·(Φ(x) + x·φ(x))
    GeluGrad,
    /// b where x > 0, else 0
    ReluGrad,
    /// −b·y² (a = y = 1/x)
    RecipGrad,
    /// b·p·x^(p−1)
    PowScalarGrad,
}

/// Evaluate a unary op on one element.
#[cube]
pub fn apply_unary<F: Float>(x: F, p: F, #[comptime] op: UnaryOp) -> F {
    let zero = F::new(0.0);
    let one = F::new(1.0);
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => math::exp::<F>(x),
        UnaryOp::Log => math::ln::<F>(x),
        UnaryOp::Sqrt => F::sqrt(x),
        UnaryOp::Rsqrt => F::inverse_sqrt(x),
        UnaryOp::Abs => F::abs(x),
        UnaryOp::Tanh => math::tanh::<F>(x),
        UnaryOp::Sigmoid => math::sigmoid::<F>(x),
        UnaryOp::Silu => x * math::sigmoid::<F>(x),
        UnaryOp::Softplus => math::softplus::<F>(x, p),
        UnaryOp::Gelu => math::gelu::<F>(x),
        UnaryOp::Relu => math::max_nan::<F>(x, zero),
        UnaryOp::Recip => one / x,
        UnaryOp::Square => x * x,
        UnaryOp::Sign => select(x > zero, one, select(x < zero, -one, zero)),
        UnaryOp::AddScalar => x + p,
        UnaryOp::MulScalar => x * p,
        UnaryOp::PowScalar => math::pow::<F>(x, p),
        UnaryOp::RsubScalar => p - x,
        UnaryOp::RdivScalar => p / x,
        UnaryOp::MaxScalar => math::max_nan::<F>(x, p),
        UnaryOp::MinScalar => math::min_nan::<F>(x, p),
        UnaryOp::GtScalar => select(x > p, one, zero),
        UnaryOp::LtScalar => select(x < p, one, zero),
        UnaryOp::GeScalar => select(x >= p, one, zero),
        UnaryOp::LeScalar => select(x <= p, one, zero),
    }
}

/// Evaluate a binary op on one element pair.
#[cube]
pub fn apply_binary<F: Float>(a: F, b: F, p: F, #[comptime] op: BinaryOp) -> F {
    let zero = F::new(0.0);
    let one = F::new(1.0);
    let half = F::new(0.5);
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => math::pow::<F>(a, b),
        BinaryOp::Max => math::max_nan::<F>(a, b),
        BinaryOp::Min => math::min_nan::<F>(a, b),
        BinaryOp::Eq => select(a == b, one, zero),
        BinaryOp::Ne => select(a != b, one, zero),
        BinaryOp::Lt => select(a < b, one, zero),
        BinaryOp::Le => select(a <= b, one, zero),
        BinaryOp::Gt => select(a > b, one, zero),
        BinaryOp::Ge => select(a >= b, one, zero),
        BinaryOp::ExpGrad => b * a,
        BinaryOp::LogGrad => b / a,
        BinaryOp::SqrtGrad => b * half / a,
        BinaryOp::RsqrtGrad => -(b * half * a * a * a),
        BinaryOp::AbsGrad => b * select(a > zero, one, select(a < zero, -one, zero)),
        BinaryOp::TanhGrad => b * (one - a * a),
        BinaryOp::SigmoidGrad => b * a * (one - a),
        BinaryOp::SiluGrad => {
            let s = math::sigmoid::<F>(a);
            b * s * (one + a * (one - s))
        }
        BinaryOp::SoftplusGrad => select(a > p, b, b * math::sigmoid::<F>(a)),
        BinaryOp::GeluGrad => {
            let cdf = half
                * (one + math::erf::<F>(a * math::constant::<F>(core::f64::consts::FRAC_1_SQRT_2)));
            let pdf = math::exp::<F>(-half * a * a) * math::constant::<F>(0.398_942_280_401_432_7);
            b * (cdf + a * pdf)
        }
        // `a <= 0` rather than `a > 0`: a NaN input passes its gradient on, as PyTorch's
        // threshold_backward does (it tests the output, NaN there too).
        BinaryOp::ReluGrad => select(a <= zero, zero, b),
        BinaryOp::RecipGrad => -(b * a * a),
        BinaryOp::PowScalarGrad => b * p * math::pow::<F>(a, p - one),
    }
}

#[cube(launch_unchecked)]
fn unary_contig<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    x_off: usize,
    len: usize,
    p: InputScalar,
    #[comptime] op: UnaryOp,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let v = x[x_off + i];
        let pf = p.get::<F>();
        let mut r = RuntimeCell::<Vector<F, N>>::new(v);
        #[unroll]
        for k in 0..N::value() {
            r.store_at(k, apply_unary::<F>(v[k], pf, op));
        }
        out[i] = r.consume();
    }
}

#[cube(launch_unchecked)]
fn unary_strided<F: Float>(
    x: &Tensor<F>,
    out: &mut Array<F>,
    x_off: usize,
    len: usize,
    p: InputScalar,
    #[comptime] op: UnaryOp,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut rem = i;
        let mut xi = x_off;
        let rank = x.rank();
        for k in 0..rank {
            let d = rank - 1 - k;
            let size = x.shape(d);
            xi += (rem % size) * x.stride(d);
            rem /= size;
        }
        out[i] = apply_unary::<F>(x[xi], p.get::<F>(), op);
    }
}

#[cube(launch_unchecked)]
fn binary_contig<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    a_off: usize,
    b_off: usize,
    len: usize,
    p: InputScalar,
    #[comptime] op: BinaryOp,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let va = a[a_off + i];
        let vb = b[b_off + i];
        let pf = p.get::<F>();
        let mut r = RuntimeCell::<Vector<F, N>>::new(va);
        #[unroll]
        for k in 0..N::value() {
            r.store_at(k, apply_binary::<F>(va[k], vb[k], pf, op));
        }
        out[i] = r.consume();
    }
}

#[cube(launch_unchecked)]
fn binary_strided<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    out: &mut Array<F>,
    a_off: usize,
    b_off: usize,
    len: usize,
    p: InputScalar,
    #[comptime] op: BinaryOp,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut rem = i;
        let mut ai = a_off;
        let mut bi = b_off;
        let rank = a.rank();
        for k in 0..rank {
            let d = rank - 1 - k;
            let size = a.shape(d);
            let c = rem % size;
            rem /= size;
            ai += c * a.stride(d);
            bi += c * b.stride(d);
        }
        out[i] = apply_binary::<F>(a[ai], b[bi], p.get::<F>(), op);
    }
}

#[cube(launch_unchecked)]
fn where_strided<F: Float>(
    cond: &Tensor<F>,
    a: &Tensor<F>,
    b: &Tensor<F>,
    out: &mut Array<F>,
    c_off: usize,
    a_off: usize,
    b_off: usize,
    len: usize,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut rem = i;
        let mut ci = c_off;
        let mut ai = a_off;
        let mut bi = b_off;
        let rank = a.rank();
        for k in 0..rank {
            let d = rank - 1 - k;
            let size = a.shape(d);
            let c = rem % size;
            rem /= size;
            ci += c * cond.stride(d);
            ai += c * a.stride(d);
            bi += c * b.stride(d);
        }
        out[i] = select(cond[ci] != F::new(0.0), a[ai], b[bi]);
    }
}

/// `out = op(x)`; `out` is a fresh contiguous tensor of x's shape and dtype.
pub(crate) fn unary(x: &SsmTensor, out: &SsmTensor, op: UnaryOp, p: f64) {
    let n = x.numel();
    if n == 0 {
        return;
    }
    let dtype = x.dtype.storage();
    let param = InputScalar::new(p, dtype);
    dispatch!(x.device, c => {
        record_launch();
        if x.is_contiguous() {
            let w = vector_width(&[n, x.offset]);
            let (count, dim) = elemwise_grid(c, n / w);
            unsafe {
                unary_contig::launch_unchecked(
                    c, count, dim, w,
                    x.array_arg(x.buffer_len() / w),
                    out.array_arg(n / w),
                    x.offset / w, n / w, param, op, dtype,
                )
            }
        } else {
            let (count, dim) = elemwise_grid(c, n);
            unsafe {
                unary_strided::launch_unchecked(
                    c, count, dim, x.arg(), out.array_arg(n), x.offset, n, param, op, dtype,
                )
            }
        }
    })
}

/// `out = op(a, b)` with `a` and `b` broadcast to `out`'s shape (checked by the caller).
pub(crate) fn binary(a: &SsmTensor, b: &SsmTensor, out: &SsmTensor, op: BinaryOp, p: f64) {
    let n = out.numel();
    if n == 0 {
        return;
    }
    let dtype = a.dtype.storage();
    let param = InputScalar::new(p, dtype);
    let same = a.shape == out.shape && b.shape == out.shape;
    dispatch!(a.device, c => {
        record_launch();
        if same && a.is_contiguous() && b.is_contiguous() {
            let w = vector_width(&[n, a.offset, b.offset]);
            let (count, dim) = elemwise_grid(c, n / w);
            unsafe {
                binary_contig::launch_unchecked(
                    c, count, dim, w,
                    a.array_arg(a.buffer_len() / w),
                    b.array_arg(b.buffer_len() / w),
                    out.array_arg(n / w),
                    a.offset / w, b.offset / w, n / w, param, op, dtype,
                )
            }
        } else {
            let (count, dim) = elemwise_grid(c, n);
            unsafe {
                binary_strided::launch_unchecked(
                    c, count, dim,
                    a.arg_broadcast(&out.shape),
                    b.arg_broadcast(&out.shape),
                    out.array_arg(n),
                    a.offset, b.offset, n, param, op, dtype,
                )
            }
        }
    })
}

/// `out = cond ? a : b` (cond nonzero), all broadcast to `out`'s shape.
pub(crate) fn where_(cond: &SsmTensor, a: &SsmTensor, b: &SsmTensor, out: &SsmTensor) {
    let n = out.numel();
    if n == 0 {
        return;
    }
    dispatch!(a.device, c => {
        record_launch();
        let (count, dim) = elemwise_grid(c, n);
        unsafe {
            where_strided::launch_unchecked(
                c, count, dim,
                cond.arg_broadcast(&out.shape),
                a.arg_broadcast(&out.shape),
                b.arg_broadcast(&out.shape),
                out.array_arg(n),
                cond.offset, a.offset, b.offset, n, a.dtype.storage(),
            )
        }
    })
}
