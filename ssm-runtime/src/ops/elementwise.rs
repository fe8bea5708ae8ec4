//! Elementwise operations with NumPy broadcasting.

use crate::error::{Error, Result};
use crate::kernels::elementwise as k;
use crate::kernels::elementwise::{BinaryOp, UnaryOp};
use crate::shape::broadcast_shapes;
use crate::tensor::{Tensor, same_device};

/// PyTorch's default softplus threshold: above it softplus(x) = x.
pub const SOFTPLUS_THRESHOLD: f64 = 20.0;

pub(crate) fn require_float(op: &'static str, t: &Tensor) -> Result<()> {
    crate::dtype::refuse_bf16(op, t.dtype)?;
    if !t.dtype.is_float() {
        return Err(Error::dtype(
            op,
            format!("expected a float tensor, got {}", t.dtype),
        ));
    }
    Ok(())
}

fn check_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<Vec<usize>> {
    same_device(op, a, b)?;
    require_float(op, a)?;
    if a.dtype != b.dtype {
        return Err(Error::dtype(
            op,
            format!(
                "operands are {} {:?} and {} {:?}",
                a.dtype, a.shape, b.dtype, b.shape
            ),
        ));
    }
    broadcast_shapes(op, &a.shape, &b.shape)
}

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        $( $(#[$doc])* pub fn $name(&self) -> Result<Tensor> { self.unary(UnaryOp::$op, 0.0) } )*
    };
}

macro_rules! scalar_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        $( $(#[$doc])* pub fn $name(&self, s: f64) -> Result<Tensor> { self.unary(UnaryOp::$op, s) } )*
    };
}

macro_rules! binary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        $( $(#[$doc])* pub fn $name(&self, other: &Tensor) -> Result<Tensor> {
            self.binary(other, BinaryOp::$op, 0.0)
        } )*
    };
}

impl Tensor {
    /// Apply a unary op with scalar parameter `p` (ignored by ops without one).
    pub fn unary(&self, op: UnaryOp, p: f64) -> Result<Tensor> {
        let name = "unary";
        require_float(name, self)?;
        let out = Tensor::empty(&self.shape, self.dtype, &self.device);
        k::unary(self, &out, op, p);
        Ok(out)
    }

    /// Apply a binary op with broadcasting and scalar parameter `p`.
    pub fn binary(&self, other: &Tensor, op: BinaryOp, p: f64) -> Result<Tensor> {
        let shape = check_pair(binary_name(op), self, other)?;
        let out = Tensor::empty(&shape, self.dtype, &self.device);
        k::binary(self, other, &out, op, p);
        Ok(out)
    }

    unary_methods! {
        /// −x
        neg => Neg,
        /// e^x
        exp => Exp,
        /// Natural logarithm.
        log => Log,
        /// Square root.
        sqrt => Sqrt,
        /// 1/√x
        rsqrt => Rsqrt,
        /// |x|
        abs => Abs,
        /// Hyperbolic tangent.
        tanh => Tanh,
        /// Logistic sigmoid.
        sigmoid => Sigmoid,
        /// x·σ(x)
        silu => Silu,
        /// Exact GELU, x·Φ(x) with the erf form of Φ.
        gelu => Gelu,
        /// max(x, 0)
        relu => Relu,
        /// 1/x
        recip => Recip,
        /// x²
        square => Square,
        /// sign(x) ∈ {−1, 0, 1}
        sign => Sign,
    }

    /// softplus(x) = ln(1 + e^x), passing x through above 20 as PyTorch does.
    pub fn softplus(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Softplus, SOFTPLUS_THRESHOLD)
    }

    scalar_methods! {
        /// x + s
        add_scalar => AddScalar,
        /// x · s
        mul_scalar => MulScalar,
        /// x^s
        pow_scalar => PowScalar,
        /// s − x
        rsub_scalar => RsubScalar,
        /// s / x
        rdiv_scalar => RdivScalar,
        /// max(x, s)
        max_scalar => MaxScalar,
        /// min(x, s)
        min_scalar => MinScalar,
        /// 1 where x > s, else 0
        gt_scalar => GtScalar,
        /// 1 where x < s, else 0
        lt_scalar => LtScalar,
        /// 1 where x >= s, else 0
        ge_scalar => GeScalar,
        /// 1 where x <= s, else 0
        le_scalar => LeScalar,
    }

    binary_methods! {
        /// a + b
        add => Add,
        /// a − b
        sub => Sub,
        /// a · b
        mul => Mul,
        /// a / b
        div => Div,
        /// a^b (C `pow` conventions: a negative base needs an integral exponent)
        pow => Pow,
        /// Elementwise maximum.
        maximum => Max,
        /// Elementwise minimum.
        minimum => Min,
        /// 1 where a == b, else 0 (in the operands' dtype).
        eq => Eq,
        /// 1 where a != b, else 0.
        ne => Ne,
        /// 1 where a < b, else 0.
        lt => Lt,
        /// 1 where a <= b, else 0.
        le => Le,
        /// 1 where a > b, else 0.
        gt => Gt,
        /// 1 where a >= b, else 0.
        ge => Ge,
    }

    /// `cond ? a : b` elementwise (cond nonzero), all three broadcast together.
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let shape = check_pair("where", a, b)?;
        same_device("where", cond, a)?;
        if cond.dtype != a.dtype {
            return Err(Error::dtype(
                "where",
                format!("condition is {} but values are {}", cond.dtype, a.dtype),
            ));
        }
        let shape = broadcast_shapes("where", &cond.shape, &shape)?;
        let out = Tensor::empty(&shape, a.dtype, &a.device);
        k::where_(cond, a, b, &out);
        Ok(out)
    }
}

fn binary_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Pow => "pow",
        BinaryOp::Max => "maximum",
        BinaryOp::Min => "minimum",
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            "compare"
        }
        _ => "unary_backward",
    }
}
