//! Pointwise loss terms and label helpers (the reductions and compositions that make
//! complete losses live in `ssm-autodiff`'s `loss` module).

use crate::error::{Error, Result};
use crate::kernels::loss::{LossOp, pointwise};
use crate::ops::conv::Layout;
use crate::ops::elementwise::require_float;
use crate::shape::broadcast_shapes;
use crate::tensor::{Tensor, same_device};

fn check_target(op: &'static str, x: &Tensor, t: &Tensor) -> Result<()> {
    require_float(op, x)?;
    same_device(op, x, t)?;
    if t.dtype != x.dtype {
        return Err(Error::dtype(
            op,
            format!("target is {} but logits are {}", t.dtype, x.dtype),
        ));
    }
    let b = broadcast_shapes(op, &x.shape, &t.shape)?;
    if b != x.shape {
        return Err(Error::shape(
            op,
            format!(
                "target {:?} does not broadcast to logits {:?}",
                t.shape, x.shape
            ),
        ));
    }
    Ok(())
}

impl Tensor {
    /// Elementwise binary cross-entropy on logits, `max(x, 0) − x·t + ln(1 + e^(−|x|))`
    /// (PyTorch's stable form; no reduction). `target` broadcasts to `self`.
    pub fn bce_with_logits(&self, target: &Tensor) -> Result<Tensor> {
        check_target("bce_with_logits", self, target)?;
        let out = Tensor::empty(&self.shape, self.dtype, &self.device);
        pointwise(self, target, target, &out, LossOp::BceLogits);
        Ok(out)
    }

    /// Gradient of [`bce_with_logits`](Self::bce_with_logits) with respect to the logits:
    /// `grad·(σ(x) − t)`.
    pub fn bce_with_logits_backward(&self, target: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let op = "bce_with_logits_backward";
        check_target(op, self, target)?;
        check_target(op, self, grad)?;
        let out = Tensor::empty(&self.shape, self.dtype, &self.device);
        pointwise(self, target, grad, &out, LossOp::BceLogitsGrad);
        Ok(out)
    }

    /// Class labels (`[N, *spatial]`, or already with a size-1 channel axis in `layout`)
    /// with a size-1 channel axis in place: the shape [`one_hot`](Self::one_hot) compares
    /// against the classes, and that of per-position masks derived from the labels.
    pub fn with_label_channel(labels: &Tensor, layout: Layout) -> Result<Tensor> {
        let r = labels.rank();
        if r == 0 {
            return Err(Error::shape(
                "with_label_channel",
                "labels need at least a batch axis",
            ));
        }
        if r >= 2 && labels.shape[layout.channel_axis(r)] == 1 {
            return Ok(labels.clone());
        }
        match layout {
            Layout::ChannelsFirst => labels.unsqueeze(1),
            Layout::ChannelsLast => labels.unsqueeze(r as isize),
        }
    }

    /// One-hot encoding of class labels stored as floats (`[N, *spatial]`, or with a size-1
    /// channel axis in `layout`): `[N, classes, *spatial]` (or channels-last). Labels outside
    /// `0..classes` (or not integers) give all-zero rows.
    pub fn one_hot(labels: &Tensor, classes: usize, layout: Layout) -> Result<Tensor> {
        let op = "one_hot";
        require_float(op, labels)?;
        if classes == 0 {
            return Err(Error::shape(
                op,
                format!("labels {:?} with 0 classes", labels.shape),
            ));
        }
        let with_c = Tensor::with_label_channel(labels, layout)?;
        let rank = with_c.rank();
        let mut cls_shape = vec![1; rank];
        cls_shape[layout.channel_axis(rank)] = classes;
        let ids: Vec<f64> = (0..classes).map(|c| c as f64).collect();
        let cls = Tensor::from_f64(&ids, &cls_shape, labels.dtype, &labels.device)?;
        with_c.eq(&cls)
    }
}
