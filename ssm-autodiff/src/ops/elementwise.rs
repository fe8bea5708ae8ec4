//! Elementwise ops and their derivatives (broadcast gradients are summed back to the
//! operand's shape).

use ssm_runtime::{BinaryOp, Result, Tensor, UnaryOp};

use crate::var::Var;

/// PyTorch's softplus threshold.
const SOFTPLUS_THRESHOLD: f64 = 20.0;

/// Which forward value the fused derivative kernel reads.
#[derive(Clone, Copy)]
enum Saved {
    Input,
    Output,
}

impl Var {
    /// A unary op whose derivative is one fused kernel `grad_op(saved, g)`.
    fn unary_fused(
        &self,
        name: &'static str,
        op: UnaryOp,
        grad_op: BinaryOp,
        p: f64,
        saved: Saved,
    ) -> Result<Var> {
        let y = self.value().unary(op, p)?;
        let keep = match saved {
            Saved::Input => self.value().clone(),
            Saved::Output => y.clone(),
        };
        Ok(Var::from_op(name, y, &[self], move |g| {
            Ok(vec![Some(keep.binary(g, grad_op, p)?)])
        }))
    }

    /// e^x
    pub fn exp(&self) -> Result<Var> {
        self.unary_fused("exp", UnaryOp::Exp, BinaryOp::ExpGrad, 0.0, Saved::Output)
    }
    /// ln x
    pub fn log(&self) -> Result<Var> {
        self.unary_fused("log", UnaryOp::Log, BinaryOp::LogGrad, 0.0, Saved::Input)
    }
    /// √x
    pub fn sqrt(&self) -> Result<Var> {
        self.unary_fused(
            "sqrt",
            UnaryOp::Sqrt,
            BinaryOp::SqrtGrad,
            0.0,
            Saved::Output,
        )
    }
    /// 1/√x
    pub fn rsqrt(&self) -> Result<Var> {
        self.unary_fused(
            "rsqrt",
            UnaryOp::Rsqrt,
            BinaryOp::RsqrtGrad,
            0.0,
            Saved::Output,
        )
    }
    /// |x| (derivative sign(x), 0 at 0)
    pub fn abs(&self) -> Result<Var> {
        self.unary_fused("abs", UnaryOp::Abs, BinaryOp::AbsGrad, 0.0, Saved::Input)
    }
    /// tanh x
    pub fn tanh(&self) -> Result<Var> {
        self.unary_fused(
            "tanh",
            UnaryOp::Tanh,
            BinaryOp::TanhGrad,
            0.0,
            Saved::Output,
        )
    }
    /// σ(x)
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary_fused(
            "sigmoid",
            UnaryOp::Sigmoid,
            BinaryOp::SigmoidGrad,
            0.0,
            Saved::Output,
        )
    }
    /// x·σ(x)
    pub fn silu(&self) -> Result<Var> {
        self.unary_fused("silu", UnaryOp::Silu, BinaryOp::SiluGrad, 0.0, Saved::Input)
    }
    /// ln(1 + e^x), x above 20
    pub fn softplus(&self) -> Result<Var> {
        self.unary_fused(
            "softplus",
            UnaryOp::Softplus,
            BinaryOp::SoftplusGrad,
            SOFTPLUS_THRESHOLD,
            Saved::Input,
        )
    }
    /// Exact GELU.
    pub fn gelu(&self) -> Result<Var> {
        self.unary_fused("gelu", UnaryOp::Gelu, BinaryOp::GeluGrad, 0.0, Saved::Input)
    }
    /// max(x, 0) (derivative 0 at 0)
    pub fn relu(&self) -> Result<Var> {
        self.unary_fused("relu", UnaryOp::Relu, BinaryOp::ReluGrad, 0.0, Saved::Input)
    }
    /// 1/x
    pub fn recip(&self) -> Result<Var> {
        self.unary_fused(
            "recip",
            UnaryOp::Recip,
            BinaryOp::RecipGrad,
            0.0,
            Saved::Output,
        )
    }
    /// x²
    pub fn square(&self) -> Result<Var> {
        let y = self.value().square()?;
        let x = self.value().clone();
        Ok(Var::from_op("square", y, &[self], move |g| {
            Ok(vec![Some(x.binary(g, BinaryOp::PowScalarGrad, 2.0)?)])
        }))
    }
    /// x^p for a constant p.
    pub fn pow_scalar(&self, p: f64) -> Result<Var> {
        self.unary_fused(
            "pow_scalar",
            UnaryOp::PowScalar,
            BinaryOp::PowScalarGrad,
            p,
            Saved::Input,
        )
    }
    /// −x
    pub fn neg(&self) -> Result<Var> {
        let y = self.value().neg()?;
        Ok(Var::from_op("neg", y, &[self], |g| {
            Ok(vec![Some(g.neg()?)])
        }))
    }
    /// x + s
    pub fn add_scalar(&self, s: f64) -> Result<Var> {
        let y = self.value().add_scalar(s)?;
        Ok(Var::from_op("add_scalar", y, &[self], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }
    /// x · s
    pub fn mul_scalar(&self, s: f64) -> Result<Var> {
        let y = self.value().mul_scalar(s)?;
        Ok(Var::from_op("mul_scalar", y, &[self], move |g| {
            Ok(vec![Some(g.mul_scalar(s)?)])
        }))
    }
    /// s − x
    pub fn rsub_scalar(&self, s: f64) -> Result<Var> {
        let y = self.value().rsub_scalar(s)?;
        Ok(Var::from_op("rsub_scalar", y, &[self], |g| {
            Ok(vec![Some(g.neg()?)])
        }))
    }
    /// s / x
    pub fn rdiv_scalar(&self, s: f64) -> Result<Var> {
        let y = self.value().rdiv_scalar(s)?;
        let x = self.value().clone();
        // d(s/x) = −s/x² = s · PowScalarGrad(x, p = −1)
        Ok(Var::from_op("rdiv_scalar", y, &[self], move |g| {
            Ok(vec![Some(
                x.binary(g, BinaryOp::PowScalarGrad, -1.0)?.mul_scalar(s)?,
            )])
        }))
    }
    /// max(x, s); the gradient passes where x >= s (as PyTorch's clamp).
    pub fn max_scalar(&self, s: f64) -> Result<Var> {
        let y = self.value().max_scalar(s)?;
        let x = self.value().clone();
        Ok(Var::from_op("max_scalar", y, &[self], move |g| {
            Ok(vec![Some(g.mul(&x.ge_scalar(s)?)?)])
        }))
    }
    /// min(x, s); the gradient passes where x <= s.
    pub fn min_scalar(&self, s: f64) -> Result<Var> {
        let y = self.value().min_scalar(s)?;
        let x = self.value().clone();
        Ok(Var::from_op("min_scalar", y, &[self], move |g| {
            Ok(vec![Some(g.mul(&x.le_scalar(s)?)?)])
        }))
    }

    /// a + b (broadcasting)
    pub fn add(&self, o: &Var) -> Result<Var> {
        let y = self.value().add(o.value())?;
        let (sa, sb) = (self.shape().to_vec(), o.shape().to_vec());
        let need = Var::needs(&[self, o]);
        Ok(Var::from_op("add", y, &[self, o], move |g| {
            Ok(vec![
                need[0].then(|| g.sum_to_shape(&sa)).transpose()?,
                need[1].then(|| g.sum_to_shape(&sb)).transpose()?,
            ])
        }))
    }
    /// a − b
    pub fn sub(&self, o: &Var) -> Result<Var> {
        let y = self.value().sub(o.value())?;
        let (sa, sb) = (self.shape().to_vec(), o.shape().to_vec());
        let need = Var::needs(&[self, o]);
        Ok(Var::from_op("sub", y, &[self, o], move |g| {
            Ok(vec![
                need[0].then(|| g.sum_to_shape(&sa)).transpose()?,
                need[1].then(|| g.sum_to_shape(&sb)?.neg()).transpose()?,
            ])
        }))
    }
    /// a · b
    pub fn mul(&self, o: &Var) -> Result<Var> {
        let y = self.value().mul(o.value())?;
        let (a, b) = (self.value().clone(), o.value().clone());
        let need = Var::needs(&[self, o]);
        Ok(Var::from_op("mul", y, &[self, o], move |g| {
            Ok(vec![
                need[0]
                    .then(|| g.mul(&b)?.sum_to_shape(a.shape()))
                    .transpose()?,
                need[1]
                    .then(|| g.mul(&a)?.sum_to_shape(b.shape()))
                    .transpose()?,
            ])
        }))
    }
    /// a / b
    pub fn div(&self, o: &Var) -> Result<Var> {
        let y = self.value().div(o.value())?;
        let (sa, b, yk) = (self.shape().to_vec(), o.value().clone(), y.clone());
        let need = Var::needs(&[self, o]);
        Ok(Var::from_op("div", y, &[self, o], move |g| {
            let ga = g.div(&b)?;
            Ok(vec![
                need[0].then(|| ga.sum_to_shape(&sa)).transpose()?,
                // d(a/b)/db = −y/b
                need[1]
                    .then(|| ga.mul(&yk)?.neg()?.sum_to_shape(b.shape()))
                    .transpose()?,
            ])
        }))
    }
    /// a^b. The gradient with respect to b uses ln a and needs a > 0.
    pub fn pow(&self, o: &Var) -> Result<Var> {
        let y = self.value().pow(o.value())?;
        let (a, b, yk) = (self.value().clone(), o.value().clone(), y.clone());
        let need = Var::needs(&[self, o]);
        Ok(Var::from_op("pow", y, &[self, o], move |g| {
            let ga = if need[0] {
                // b · a^(b−1) · g
                let d = a.pow(&b.add_scalar(-1.0)?)?.mul(&b)?;
                Some(g.mul(&d)?.sum_to_shape(a.shape())?)
            } else {
                None
            };
            let gb = if need[1] {
                Some(g.mul(&yk)?.mul(&a.log()?)?.sum_to_shape(b.shape())?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }
    /// Elementwise maximum; ties split the gradient in half (as PyTorch).
    pub fn maximum(&self, o: &Var) -> Result<Var> {
        self.extremum(o, "maximum", BinaryOp::Max, BinaryOp::Gt)
    }
    /// Elementwise minimum; ties split the gradient in half.
    pub fn minimum(&self, o: &Var) -> Result<Var> {
        self.extremum(o, "minimum", BinaryOp::Min, BinaryOp::Lt)
    }

    fn extremum(&self, o: &Var, name: &'static str, op: BinaryOp, wins: BinaryOp) -> Result<Var> {
        let y = self.value().binary(o.value(), op, 0.0)?;
        let (a, b) = (self.value().clone(), o.value().clone());
        let need = Var::needs(&[self, o]);
        Ok(Var::from_op(name, y, &[self, o], move |g| {
            let tie = a.eq(&b)?.mul_scalar(0.5)?;
            let wa = a.binary(&b, wins, 0.0)?.add(&tie)?;
            let ga = need[0]
                .then(|| g.mul(&wa)?.sum_to_shape(a.shape()))
                .transpose()?;
            let gb = need[1]
                .then(|| g.mul(&wa.rsub_scalar(1.0)?)?.sum_to_shape(b.shape()))
                .transpose()?;
            Ok(vec![ga, gb])
        }))
    }

    /// `cond ? a : b` (cond nonzero; cond gets no gradient).
    pub fn where_cond(cond: &Tensor, a: &Var, b: &Var) -> Result<Var> {
        let y = Tensor::where_cond(cond, a.value(), b.value())?;
        let (c, sa, sb) = (cond.clone(), a.shape().to_vec(), b.shape().to_vec());
        let need = Var::needs(&[a, b]);
        Ok(Var::from_op("where", y, &[a, b], move |g| {
            let zero = Tensor::zeros(&[], g.dtype(), g.device())?;
            Ok(vec![
                need[0]
                    .then(|| Tensor::where_cond(&c, g, &zero)?.sum_to_shape(&sa))
                    .transpose()?,
                need[1]
                    .then(|| Tensor::where_cond(&c, &zero, g)?.sum_to_shape(&sb))
                    .transpose()?,
            ])
        }))
    }
}
