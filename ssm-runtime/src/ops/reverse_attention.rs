//! Reverse attention (SRMA-Mamba's decoder step).

use crate::error::{Error, Result};
use crate::kernels::reverse_attention as k;
use crate::ops::conv::Layout;
use crate::ops::elementwise::require_float;
use crate::ops::resize::{ResizeMode, ResizeTo};
use crate::tensor::{Tensor, same_device};

fn check(m: &Tensor, f: &Tensor) -> Result<()> {
    let op = "reverse_attention";
    same_device(op, m, f)?;
    require_float(op, f)?;
    if m.dtype() != f.dtype() {
        return Err(Error::dtype(
            op,
            format!("m is {} but f is {}", m.dtype(), f.dtype()),
        ));
    }
    let (rm, rf) = (m.rank(), f.rank());
    if !(3..=5).contains(&rf) || rm != rf || m.shape()[0] != f.shape()[0] || m.shape()[1] != 1 {
        return Err(Error::shape(
            op,
            format!(
                "m {:?} must be (B, 1, *spatial) and f {:?} (B, C, *spatial) with 1 to 3 spatial axes",
                m.shape(),
                f.shape()
            ),
        ));
    }
    Ok(())
}

impl Tensor {
    /// `(1 − σ(resize(m))) ⊙ f` with `m` `(B, 1, *coarse)` resized linearly (bilinear,
    /// trilinear; align_corners = false) to `f` `(B, C, *fine)`, in one kernel.
    pub fn reverse_attention(m: &Tensor, f: &Tensor) -> Result<Tensor> {
        check(m, f)?;
        let (m, f) = (m.compact()?, f.compact()?);
        let out = Tensor::empty(f.shape(), f.dtype(), f.device());
        k::forward(&m, &f, &out);
        Ok(out)
    }

    /// Gradients `(dm, df)` of [`Tensor::reverse_attention`] for the output gradient `g`.
    pub fn reverse_attention_backward(
        m: &Tensor,
        f: &Tensor,
        g: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        check(m, f)?;
        if g.shape() != f.shape() {
            return Err(Error::shape(
                "reverse_attention backward",
                format!("gradient {:?} vs f {:?}", g.shape(), f.shape()),
            ));
        }
        let (m, f, g) = (m.compact()?, f.compact()?, g.compact()?);
        let df = Tensor::empty(f.shape(), f.dtype(), f.device());
        let mut mi_shape = f.shape().to_vec();
        mi_shape[1] = 1;
        let dmi = Tensor::empty(&mi_shape, f.dtype(), f.device());
        k::backward(&m, &f, &g, &df, &dmi);
        let dm = Tensor::resize_backward(
            &dmi,
            m.shape(),
            &ResizeTo::Size(f.shape()[2..].to_vec()),
            ResizeMode::Linear,
            false,
            Layout::ChannelsFirst,
        )?;
        Ok((dm, df))
    }
}
