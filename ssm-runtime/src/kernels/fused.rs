//! Fused elementwise programs: a straight-line list of operations over broadcast inputs,
//! compiled into one kernel per program.
//!
//! The DSL's fused expressions (`ssm::pointwise`) and their symbolically derived
//! gradients become [`Program`]s. A program is a comptime argument of `fused_kernel`, so
//! the JIT unrolls it into straight-line code: one launch evaluates every instruction for
//! one element and writes all outputs. Register `k` holds the value of instruction `k`.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// One-operand operations of a program.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FusedUnary {
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
    /// tanh x
    Tanh,
    /// σ(x)
    Sigmoid,
    /// x·σ(x)
    Silu,
    /// ln(1 + e^x), x above 20
    Softplus,
    /// softplus′(x): σ(x), 1 above 20
    SoftplusGrad,
    /// x·Φ(x)
    Gelu,
    /// gelu′(x) = Φ(x) + x·φ(x)
    GeluGrad,
    /// max(x, 0)
    Relu,
    /// 1 where x > 0, else 0 (relu′)
    Step,
    /// |x|
    Abs,
    /// sign(x) (abs′)
    Sign,
    /// x²
    Square,
    /// 1/x
    Recip,
}

/// Two-operand operations of a program.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FusedBinary {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
    /// a / b
    Div,
}

/// One instruction; operands are indices of earlier instructions.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Inst {
    /// Tensor input `j`, broadcast to the output shape.
    Input(u8),
    /// Runtime scalar `j`.
    Scalar(u8),
    /// A constant (f64 bits).
    Const(u64),
    /// `op(a)`.
    Unary(FusedUnary, u16),
    /// `op(a, b)`.
    Binary(FusedBinary, u16, u16),
    /// `a^p` for a constant p (f64 bits).
    PowConst(u16, u64),
}

/// A straight-line elementwise program with one or more outputs.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Program {
    /// Instructions in evaluation order.
    pub insts: Vec<Inst>,
    /// Instruction index of each output.
    pub outputs: Vec<u16>,
    /// Number of tensor inputs.
    pub inputs: u8,
    /// Number of runtime scalars.
    pub scalars: u8,
}

#[cube]
fn unary<F: Float>(x: F, #[comptime] op: FusedUnary) -> F {
    let zero = F::new(0.0);
    let one = F::new(1.0);
    match op {
        FusedUnary::Neg => -x,
        FusedUnary::Exp => math::exp::<F>(x),
        FusedUnary::Log => math::ln::<F>(x),
        FusedUnary::Sqrt => F::sqrt(x),
        FusedUnary::Rsqrt => F::inverse_sqrt(x),
        FusedUnary::Tanh => math::tanh::<F>(x),
        FusedUnary::Sigmoid => math::sigmoid::<F>(x),
        FusedUnary::Silu => x * math::sigmoid::<F>(x),
        FusedUnary::Softplus => math::softplus::<F>(x, F::new(20.0)),
        FusedUnary::SoftplusGrad => select(x > F::new(20.0), one, math::sigmoid::<F>(x)),
        FusedUnary::Gelu => math::gelu::<F>(x),
        FusedUnary::GeluGrad => {
            let cdf = F::new(0.5)
                * (one + math::erf::<F>(x * math::constant::<F>(core::f64::consts::FRAC_1_SQRT_2)));
            let pdf =
                math::exp::<F>(F::new(-0.5) * x * x) * math::constant::<F>(0.398_942_280_401_432_7);
            cdf + x * pdf
        }
        FusedUnary::Relu => math::max_nan::<F>(x, zero),
        // relu's derivative: 1 at NaN, so a NaN input passes its gradient on (PyTorch).
        FusedUnary::Step => select(x <= zero, zero, one),
        FusedUnary::Abs => F::abs(x),
        FusedUnary::Sign => select(x > zero, one, select(x < zero, -one, zero)),
        FusedUnary::Square => x * x,
        FusedUnary::Recip => one / x,
    }
}

#[cube]
fn binary<F: Float>(a: F, b: F, #[comptime] op: FusedBinary) -> F {
    match op {
        FusedBinary::Add => a + b,
        FusedBinary::Sub => a - b,
        FusedBinary::Mul => a * b,
        FusedBinary::Div => a / b,
    }
}

/// Evaluate `prog` for output element `i`; returns the registers.
#[cube]
fn eval<F: Float>(
    inputs: &Sequence<Tensor<F>>,
    offsets: &Array<u32>,
    scalars: &Array<F>,
    i: usize,
    #[comptime] prog: Program,
) -> Sequence<F> {
    // Element index of every input from the coordinates of output element i.
    let mut idx = Sequence::<RuntimeCell<usize>>::new();
    let n_in = comptime!(prog.inputs as usize);
    #[unroll]
    for j in 0..n_in {
        idx.push(RuntimeCell::<usize>::new(offsets[j] as usize));
    }
    if comptime!(n_in > 0) {
        let first = inputs.index(0usize);
        let rank = first.rank();
        let mut rem = i;
        for k in 0..rank {
            let d = rank - 1 - k;
            let size = first.shape(d);
            let c = rem % size;
            rem /= size;
            #[unroll]
            for j in 0..n_in {
                let cell = idx.index(j);
                cell.store(cell.read() + c * inputs.index(j).stride(d));
            }
        }
    }
    let mut regs = Sequence::<F>::new();
    #[unroll]
    for k in 0..comptime!(prog.insts.len()) {
        let inst = comptime!(prog.insts[k]);
        let v = match inst {
            Inst::Input(j) => {
                let jj = comptime!(j as usize);
                inputs.index(jj)[idx.index(jj).read()]
            }
            Inst::Scalar(j) => scalars[comptime!(j as usize)],
            Inst::Const(bits) => math::constant::<F>(comptime!(f64::from_bits(bits))),
            Inst::Unary(op, a) => unary::<F>(*regs.index(comptime!(a as usize)), op),
            Inst::Binary(op, a, b) => binary::<F>(
                *regs.index(comptime!(a as usize)),
                *regs.index(comptime!(b as usize)),
                op,
            ),
            Inst::PowConst(a, bits) => math::pow::<F>(
                *regs.index(comptime!(a as usize)),
                math::constant::<F>(comptime!(f64::from_bits(bits))),
            ),
        };
        regs.push(v);
    }
    regs
}

/// One thread per output element: evaluate the program, write every output
/// (`out[j·len + i]` for output `j`).
#[cube(launch_unchecked)]
pub fn fused_kernel<F: Float>(
    inputs: &Sequence<Tensor<F>>,
    offsets: &Array<u32>,
    scalars: &Array<F>,
    out: &mut Array<F>,
    len: usize,
    #[comptime] prog: Program,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let regs = eval::<F>(inputs, offsets, scalars, i, comptime!(prog.clone()));
        #[unroll]
        for j in 0..comptime!(prog.outputs.len()) {
            out[j * len + i] = *regs.index(comptime!(prog.outputs[j] as usize));
        }
    }
}

/// Run `prog` over `inputs` (each broadcast to `shape`) with runtime `scalars`; `out` is a
/// fresh contiguous buffer of `outputs · numel(shape)` elements. The caller checked shapes,
/// dtypes and devices.
pub(crate) fn launch(
    prog: &Program,
    inputs: &[&SsmTensor],
    scalars: &SsmTensor,
    offsets: &SsmTensor,
    out: &SsmTensor,
    shape: &[usize],
) {
    let len: usize = shape.iter().product();
    if len == 0 {
        return;
    }
    let dtype = out.dtype.storage();
    dispatch!(out.device, c => {
        let mut seq = SequenceArg::new();
        for t in inputs {
            seq.push(unsafe { t.arg_broadcast(shape) });
        }
        let (count, dim) = elemwise_grid(c, len);
        record_launch();
        unsafe {
            fused_kernel::launch_unchecked(
                c, count, dim, seq,
                offsets.array_arg(offsets.buffer_len()),
                scalars.array_arg(scalars.buffer_len()),
                out.array_arg(out.buffer_len()),
                len, prog.clone(), dtype,
            )
        }
    })
}
