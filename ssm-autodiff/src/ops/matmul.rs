//! Matrix products and their derivatives.

use ssm_runtime::Result;

use crate::var::Var;

impl Var {
    /// `a @ b` with broadcast batch axes. dA = dY·Bᵀ, dB = Aᵀ·dY, each summed over the
    /// batch axes its operand was broadcast along; transposes are views, not copies.
    pub fn matmul(&self, o: &Var) -> Result<Var> {
        let y = self.value().matmul(o.value())?;
        let (a, b) = (self.value().clone(), o.value().clone());
        let need = Var::needs(&[self, o]);
        Ok(Var::from_op("matmul", y, &[self, o], move |g| {
            let ga = need[0]
                .then(|| g.matmul(&b.transpose(-1, -2)?)?.sum_to_shape(a.shape()))
                .transpose()?;
            let gb = need[1]
                .then(|| a.transpose(-1, -2)?.matmul(g)?.sum_to_shape(b.shape()))
                .transpose()?;
            Ok(vec![ga, gb])
        }))
    }
}
