//! Losses for segmentation, classification and masked image modelling, differentiable
//! through the tape. Semantics follow PyTorch and MONAI (1.4 / 1.5):
//!
//! - [`bce_with_logits`]: `BCEWithLogitsLoss` (mean over all elements);
//!   [`bce_with_logits_pos_weight`] with its `pos_weight`.
//! - [`cross_entropy`]: `CrossEntropyLoss` on logits `[N, C, *]` with class labels (optionally
//!   an `ignore_index`) or class probabilities and optional label smoothing (mean over the
//!   positions that count); [`cross_entropy_weighted`] adds PyTorch's per-class `weight`.
//! - [`dice_loss`]: MONAI `DiceLoss`: per sample and channel
//!   `1 − (2·Σpg + smooth_nr)/(Σp + Σg + smooth_dr)` (p² with `squared_pred`), then the
//!   mean; sigmoid or softmax applied to the logits first (softmax needs two channels or
//!   more: MONAI skips it with a warning over one, here it is an error);
//!   `include_background = false` drops channel 0 (after the softmax); `batch = true` sums
//!   over the batch too; [`dice_loss_weighted`] multiplies each class's term by its weight
//!   before the mean (MONAI's `weight`).
//! - [`dice_ce_loss`]: MONAI `DiceCELoss` = λ_dice·Dice + λ_ce·CE where CE is on the raw
//!   logits over all channels, and becomes `BCEWithLogitsLoss` when there is one channel;
//!   [`dice_ce_loss_weighted`] passes MONAI's `weight` to both terms.
//! - [`masked_mse`], [`masked_l1`]: reconstruction losses over the masked elements only
//!   (masked image modelling): `Σ mask·err / Σ mask` with the mask (of the prediction's rank,
//!   size-1 axes broadcasting) expanded to the prediction; 0 when the mask is empty.

use ssm_runtime::shape::broadcast_shapes;
use ssm_runtime::{DType, Error, Layout, Result, Tensor};

use crate::var::Var;

/// Elementwise BCE on logits with its fused derivative (target constant).
fn bce_terms(logits: &Var, target: &Tensor) -> Result<Var> {
    let y = logits.value().bce_with_logits(target)?;
    let (x, t) = (logits.value().clone(), target.clone());
    Ok(Var::from_op("bce_with_logits", y, &[logits], move |g| {
        Ok(vec![Some(x.bce_with_logits_backward(&t, g)?)])
    }))
}

/// Binary cross-entropy on logits, averaged over all elements (`target` broadcasts).
pub fn bce_with_logits(logits: &Var, target: &Tensor) -> Result<Var> {
    bce_terms(logits, target)?.mean(&[], false)
}

/// [`bce_with_logits`] with PyTorch's `pos_weight`: the positive term of each element
/// weighted by `pos_weight` (broadcast with the target by trailing axes, as PyTorch does:
/// for `[N, C, H, W]` logits a per-channel weight is `[C, 1, 1]`),
/// `(1 − t)·x + (1 + (w − 1)·t)·ln(1 + e^(−x))`, averaged over all elements. Composed of
/// the elementwise ops (softplus in its stable form), so its gradient comes from theirs.
pub fn bce_with_logits_pos_weight(
    logits: &Var,
    target: &Tensor,
    pos_weight: &Tensor,
) -> Result<Var> {
    let op = "bce_with_logits_pos_weight";
    let x = logits.value();
    for (what, t) in [("target", target), ("pos_weight", pos_weight)] {
        if t.dtype() != x.dtype() {
            return Err(Error::DType {
                op,
                msg: format!("{what} is {} but logits are {}", t.dtype(), x.dtype()),
            });
        }
        if broadcast_shapes(op, x.shape(), t.shape())? != x.shape() {
            return Err(Error::Shape {
                op,
                msg: format!(
                    "{what} {:?} does not broadcast to logits {:?}",
                    t.shape(),
                    x.shape()
                ),
            });
        }
    }
    // 1 + (w − 1)·t, the weight of ln(1 + e^(−x)); 1 − t, that of x.
    let log_weight = pos_weight.add_scalar(-1.0)?.mul(target)?.add_scalar(1.0)?;
    let linear = logits.mul(&Var::constant(target.rsub_scalar(1.0)?))?;
    linear
        .add(&logits.neg()?.softplus()?.mul(&Var::constant(log_weight))?)?
        .mean(&[], false)
}

/// Target of [`cross_entropy`].
#[derive(Debug, Clone, Copy)]
pub enum CeTarget<'a> {
    /// Class indices stored as floats, shaped like the logits without the channel axis
    /// (or with a size-1 channel axis). Each must be an integer in `0..C`: any other label
    /// makes the loss and its gradient NaN (checked on the device, without a sync; PyTorch
    /// stops with an error instead).
    Labels(&'a Tensor),
    /// Class indices as in `Labels`, where positions labelled with the second value
    /// (PyTorch's `ignore_index`: −100 by default there, 255 in many segmentation sets)
    /// count neither in the sum nor in the mean's denominator. NaN when every position is
    /// ignored (0/0, as PyTorch).
    LabelsIgnoring(&'a Tensor, f64),
    /// Class probabilities shaped like the logits (e.g. one-hot).
    Probs(&'a Tensor),
}

/// Cross-entropy on logits `[N, C, *]` (channel axis per `layout`), mean over the other
/// axes; `label_smoothing` ε mixes the target with the uniform distribution:
/// `q = (1 − ε)·target + ε/C` (PyTorch).
pub fn cross_entropy(
    logits: &Var,
    target: CeTarget<'_>,
    label_smoothing: f64,
    layout: Layout,
) -> Result<Var> {
    weighted_ce(
        "cross_entropy",
        logits,
        target,
        label_smoothing,
        None,
        layout,
    )
}

/// [`cross_entropy`] with a weight per class, `class_weights` `[C]` (PyTorch's `weight`,
/// e.g. against class imbalance in segmentation). With labels, each position's term is
/// weighted by its target row, `−Σ_c w_c·q_c·log p_c`, and the mean divides by the weights
/// of the positions' labels, `Σ w_label` (PyTorch's weighted mean, label smoothing
/// included); with probabilities the weighted terms are averaged over the positions, as
/// PyTorch does there.
pub fn cross_entropy_weighted(
    logits: &Var,
    target: CeTarget<'_>,
    label_smoothing: f64,
    class_weights: &Tensor,
    layout: Layout,
) -> Result<Var> {
    let op = "cross_entropy_weighted";
    weighted_ce(
        op,
        logits,
        target,
        label_smoothing,
        Some(class_weights),
        layout,
    )
}

/// [`cross_entropy`], weighted per class when `class_weights` is given.
fn weighted_ce(
    op: &'static str,
    logits: &Var,
    target: CeTarget<'_>,
    label_smoothing: f64,
    class_weights: Option<&Tensor>,
    layout: Layout,
) -> Result<Var> {
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::Argument {
            op,
            msg: format!("label smoothing {label_smoothing} is outside [0, 1]"),
        });
    }
    let ca = logits.channel_axis(layout)?;
    let c = logits.shape()[ca];
    let w = class_weights
        .map(|w| channel_weights(op, w, logits.value(), ca))
        .transpose()?;
    let (q, kept) = match target {
        CeTarget::Labels(l) => label_target(l, None, c, label_smoothing, w.as_ref(), layout)?,
        CeTarget::LabelsIgnoring(l, ignore) => {
            label_target(l, Some(ignore), c, label_smoothing, w.as_ref(), layout)?
        }
        CeTarget::Probs(p) => {
            let q = smoothed(p.clone(), c, label_smoothing)?;
            let q = match &w {
                Some(w) => q.mul(w)?,
                None => q,
            };
            (q, None)
        }
    };
    if q.shape() != logits.shape() {
        return Err(Error::Shape {
            op,
            msg: format!(
                "target {:?} does not match logits {:?}",
                q.shape(),
                logits.shape()
            ),
        });
    }
    let per_position = logits
        .log_softmax(ca as isize)?
        .mul(&Var::constant(q))?
        .sum(&[ca as isize], false)?;
    match kept {
        None => per_position.mean(&[], false)?.neg(),
        Some(count) => per_position.sum_all()?.div(&Var::constant(count))?.neg(),
    }
}

/// `weights` (`[C]`) in the logits' dtype, shaped to broadcast along their channel axis
/// `ca` (`[1, C, 1, …]` or `[1, …, C]`).
fn channel_weights(
    op: &'static str,
    weights: &Tensor,
    logits: &Tensor,
    ca: usize,
) -> Result<Tensor> {
    let c = logits.shape()[ca];
    if weights.shape() != [c] {
        return Err(Error::Shape {
            op,
            msg: format!(
                "class weights {:?} must be [{c}] (one per channel of logits {:?})",
                weights.shape(),
                logits.shape()
            ),
        });
    }
    if !(weights.dtype().is_float() || weights.dtype() == DType::BF16) {
        return Err(Error::DType {
            op,
            msg: format!(
                "class weights are {}, not a floating dtype",
                weights.dtype()
            ),
        });
    }
    if weights.device() != logits.device() {
        return Err(Error::Device {
            op,
            msg: format!(
                "class weights are on {}, logits on {}",
                weights.device(),
                logits.device()
            ),
        });
    }
    let mut shape = vec![1; logits.rank()];
    shape[ca] = c;
    weights.to_dtype(logits.dtype())?.reshape(&shape)
}

/// `(1 − ε)·target + ε/C` (the target itself without smoothing).
fn smoothed(target: Tensor, c: usize, eps: f64) -> Result<Tensor> {
    if eps > 0.0 {
        target.mul_scalar(1.0 - eps)?.add_scalar(eps / c as f64)
    } else {
        Ok(target)
    }
}

/// The smoothed one-hot target of class `labels` over `c` classes (times the class
/// `weights`, broadcast along the channel axis, when given) and, with an `ignore` label or
/// weights, what the mean divides by: the positions that count, or the sum of their
/// labels' weights. Ignored positions get a zero row; a label that is neither a class nor
/// `ignore` gets a NaN row, so a bad label poisons the loss and its gradient instead of
/// vanishing. (The NaN is uploaded, not computed: Vulkan leaves `sqrt` and `log` of
/// out-of-domain values undefined.)
fn label_target(
    labels: &Tensor,
    ignore: Option<f64>,
    c: usize,
    eps: f64,
    weights: Option<&Tensor>,
    layout: Layout,
) -> Result<(Tensor, Option<Tensor>)> {
    let (dtype, device) = (labels.dtype(), labels.device());
    let onehot = Tensor::one_hot(labels, c, layout)?;
    let ca = layout.channel_axis(onehot.rank()) as isize;
    // 1 where the label is a class, 0 elsewhere; [N, 1, *] (or channels-last).
    let class = onehot.sum(&[ca], true)?;
    let (q, kept) = match ignore {
        None => (smoothed(onehot.clone(), c, eps)?, class.ones_like()?),
        Some(v) => {
            let kept = Tensor::with_label_channel(labels, layout)?
                .eq(&Tensor::scalar(v, dtype, device)?)?
                .rsub_scalar(1.0)?;
            (smoothed(onehot.clone(), c, eps)?.mul(&kept)?, kept)
        }
    };
    let (q, count) = match weights {
        None => (q, ignore.map(|_| kept.sum_all()).transpose()?),
        // Σ over the kept positions of their label's weight.
        Some(w) => {
            let label_weight = onehot.mul(w)?.sum(&[ca], true)?.mul(&kept)?;
            (q.mul(w)?, Some(label_weight.sum_all()?))
        }
    };
    // Neither a class nor ignored: class 0 and kept 1.
    let bad = class.lt(&kept)?;
    let q = Tensor::where_cond(&bad, &Tensor::scalar(f64::NAN, dtype, device)?, &q)?;
    Ok((q, count))
}

/// Activation applied to the logits before the Dice term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiceActivation {
    /// Use the input as probabilities.
    None,
    /// Sigmoid per channel (multi-label / binary).
    Sigmoid,
    /// Softmax over the channels.
    Softmax,
}

/// Options of [`dice_loss`] (MONAI `DiceLoss` defaults).
#[derive(Debug, Clone, Copy)]
pub struct DiceOptions {
    /// Activation.
    pub activation: DiceActivation,
    /// Keep channel 0 (ignored with one channel, as MONAI).
    pub include_background: bool,
    /// Added to the numerator (1e-5).
    pub smooth_nr: f64,
    /// Added to the denominator (1e-5).
    pub smooth_dr: f64,
    /// Use Σp² in the denominator.
    pub squared_pred: bool,
    /// Sum over the batch before the ratio (one Dice per channel).
    pub batch: bool,
    /// Layout of logits and target.
    pub layout: Layout,
}

impl Default for DiceOptions {
    fn default() -> Self {
        DiceOptions {
            activation: DiceActivation::None,
            include_background: true,
            smooth_nr: 1e-5,
            smooth_dr: 1e-5,
            squared_pred: false,
            batch: false,
            layout: Layout::ChannelsFirst,
        }
    }
}

impl DiceOptions {
    /// MONAI `DiceLoss(sigmoid=True)`.
    pub fn sigmoid() -> Self {
        DiceOptions {
            activation: DiceActivation::Sigmoid,
            ..Default::default()
        }
    }
    /// MONAI `DiceLoss(softmax=True)`.
    pub fn softmax() -> Self {
        DiceOptions {
            activation: DiceActivation::Softmax,
            ..Default::default()
        }
    }
}

/// The target as a tensor shaped like the logits (one-hot from labels when it has one
/// channel and the logits several).
fn dice_target(logits: &Var, target: &Tensor, layout: Layout) -> Result<Tensor> {
    let ca = logits.channel_axis(layout)?;
    let c = logits.shape()[ca];
    if target.shape() == logits.shape() {
        return Ok(target.clone());
    }
    let r = target.rank();
    let one_channel = r == logits.shape().len() && target.shape()[layout.channel_axis(r)] == 1;
    if c > 1 && (one_channel || r + 1 == logits.shape().len()) {
        let oh = Tensor::one_hot(target, c, layout)?;
        if oh.shape() == logits.shape() {
            return Ok(oh);
        }
    }
    Err(Error::Shape {
        op: "dice_loss",
        msg: format!(
            "target {:?} matches neither logits {:?} nor their labels",
            target.shape(),
            logits.shape()
        ),
    })
}

/// Soft Dice loss with MONAI semantics (see the module docs). `target` is one-hot (or
/// binary) shaped like `logits`, or class labels with one channel fewer / a size-1
/// channel axis (one-hot encoded here, MONAI's `to_onehot_y`).
pub fn dice_loss(logits: &Var, target: &Tensor, opts: &DiceOptions) -> Result<Var> {
    dice_terms(logits, target, opts)?.mean(&[], false)
}

/// [`dice_loss`] with MONAI's class `weight`: each class's term (per sample, or over the
/// batch with `batch`) times its weight, then the plain mean (weights are not normalised).
/// One weight per channel the loss keeps (without the background channel when
/// `include_background` is false), each at least 0. As in MONAI, weights are not applied
/// when a single channel remains.
pub fn dice_loss_weighted(
    logits: &Var,
    target: &Tensor,
    opts: &DiceOptions,
    class_weights: &[f64],
) -> Result<Var> {
    let op = "dice_loss_weighted";
    let f = dice_terms(logits, target, opts)?;
    let kept = f.shape()[f.shape().len() - 1];
    if class_weights.len() != kept {
        return Err(Error::Shape {
            op,
            msg: format!(
                "{} class weights for {kept} channels (without the background channel when \
                 include_background is false)",
                class_weights.len()
            ),
        });
    }
    check_class_weights(op, class_weights)?;
    let f = if kept > 1 {
        let x = f.value();
        f.mul(&Var::constant(Tensor::from_f64(
            class_weights,
            &[kept],
            x.dtype(),
            x.device(),
        )?))?
    } else {
        f
    };
    f.mean(&[], false)
}

/// Class weights of the Dice losses must be finite and at least 0 (MONAI refuses negative
/// ones).
fn check_class_weights(op: &'static str, weights: &[f64]) -> Result<()> {
    match weights.iter().find(|w| !(**w >= 0.0 && w.is_finite())) {
        Some(w) => Err(Error::Argument {
            op,
            msg: format!("class weight {w} is not a finite value of at least 0"),
        }),
        None => Ok(()),
    }
}

/// The Dice loss terms before the mean: `[N, C']` per sample and channel, `[C']` with
/// `batch` (C' the channels kept).
fn dice_terms(logits: &Var, target: &Tensor, opts: &DiceOptions) -> Result<Var> {
    let layout = opts.layout;
    let ca = logits.channel_axis(layout)?;
    let c = logits.shape()[ca];
    if opts.activation == DiceActivation::Softmax && c == 1 {
        return Err(Error::Argument {
            op: "dice_loss",
            msg: "softmax over one channel is 1 everywhere; use DiceActivation::Sigmoid".into(),
        });
    }
    let target = dice_target(logits, target, layout)?;
    let p = match opts.activation {
        DiceActivation::None => logits.clone(),
        DiceActivation::Sigmoid => logits.sigmoid()?,
        DiceActivation::Softmax => logits.softmax(ca as isize)?,
    };
    let (p, g) = if !opts.include_background && c > 1 {
        (
            p.narrow(ca as isize, 1, c - 1)?,
            target.narrow(ca as isize, 1, c - 1)?,
        )
    } else {
        (p, target)
    };
    let r = p.shape().len();
    let mut axes: Vec<isize> = layout.spatial_axes(r).iter().map(|&a| a as isize).collect();
    if opts.batch {
        axes.insert(0, 0);
    }
    let gv = Var::constant(g.clone());
    let inter = p.mul(&gv)?.sum(&axes, false)?;
    let psum = if opts.squared_pred {
        p.square()?.sum(&axes, false)?
    } else {
        p.sum(&axes, false)?
    };
    let gsum = Var::constant(if opts.squared_pred {
        g.square()?.sum(&axes, false)?
    } else {
        g.sum(&axes, false)?
    });
    let num = inter.mul_scalar(2.0)?.add_scalar(opts.smooth_nr)?;
    let den = psum.add(&gsum)?.add_scalar(opts.smooth_dr)?;
    num.div(&den)?.rsub_scalar(1.0)
}

/// MONAI `DiceCELoss`: `λ_dice·Dice + λ_ce·CE`. CE uses the raw logits over all channels
/// (`BCEWithLogitsLoss` when there is one channel); `label_smoothing` applies to CE only.
pub fn dice_ce_loss(
    logits: &Var,
    target: &Tensor,
    opts: &DiceOptions,
    lambda_dice: f64,
    lambda_ce: f64,
    label_smoothing: f64,
) -> Result<Var> {
    let lambdas = (lambda_dice, lambda_ce);
    dice_ce(
        "dice_ce_loss",
        logits,
        target,
        opts,
        lambdas,
        label_smoothing,
        None,
    )
}

/// [`dice_ce_loss`] with MONAI's `weight`, one per channel of the logits: the Dice term
/// takes them as [`dice_loss_weighted`] (without the background's when
/// `include_background` is false), cross-entropy as [`cross_entropy_weighted`] (class
/// labels as the target: normalised by the labels' weights; one-hot: by the positions, as
/// PyTorch does for each), and with one channel BCE takes the weight as its `pos_weight`.
pub fn dice_ce_loss_weighted(
    logits: &Var,
    target: &Tensor,
    opts: &DiceOptions,
    lambda_dice: f64,
    lambda_ce: f64,
    label_smoothing: f64,
    class_weights: &[f64],
) -> Result<Var> {
    let lambdas = (lambda_dice, lambda_ce);
    let op = "dice_ce_loss_weighted";
    dice_ce(
        op,
        logits,
        target,
        opts,
        lambdas,
        label_smoothing,
        Some(class_weights),
    )
}

/// [`dice_ce_loss`], weighted per class when `class_weights` is given.
fn dice_ce(
    op: &'static str,
    logits: &Var,
    target: &Tensor,
    opts: &DiceOptions,
    (lambda_dice, lambda_ce): (f64, f64),
    label_smoothing: f64,
    class_weights: Option<&[f64]>,
) -> Result<Var> {
    if !(lambda_dice >= 0.0 && lambda_ce >= 0.0) {
        return Err(Error::Argument {
            op,
            msg: format!(
                "weights must be non-negative, got λ_dice {lambda_dice}, λ_ce {lambda_ce}"
            ),
        });
    }
    let layout = opts.layout;
    let ca = logits.channel_axis(layout)?;
    let c = logits.shape()[ca];
    if let Some(w) = class_weights {
        if w.len() != c {
            return Err(Error::Shape {
                op,
                msg: format!("{} class weights for logits of {c} channels", w.len()),
            });
        }
        check_class_weights(op, w)?;
    }
    let dice = match class_weights {
        None => dice_loss(logits, target, opts)?,
        Some(w) if opts.include_background || c == 1 => {
            dice_loss_weighted(logits, target, opts, w)?
        }
        // The background channel is not in the Dice term, nor is its weight.
        Some(w) => dice_loss_weighted(logits, target, opts, &w[1..])?,
    };
    let x = logits.value();
    let ce = match (class_weights, c) {
        // MONAI's BCEWithLogitsLoss branch has no label smoothing.
        (None, 1) => bce_with_logits(logits, target)?,
        (Some(w), 1) => {
            let pos_weight = Tensor::from_f64(w, &[1], x.dtype(), x.device())?;
            bce_with_logits_pos_weight(logits, target, &pos_weight)?
        }
        (None, _) => {
            let full = dice_target(logits, target, layout)?;
            cross_entropy(logits, CeTarget::Probs(&full), label_smoothing, layout)?
        }
        (Some(w), _) => {
            let wt = Tensor::from_f64(w, &[c], x.dtype(), x.device())?;
            // MONAI hands CrossEntropyLoss class indices when the target has one channel
            // and the logits several; a weighted mean then divides by the labels' weights.
            let ce_target = if target.shape() == logits.shape() {
                CeTarget::Probs(target)
            } else {
                CeTarget::Labels(target)
            };
            cross_entropy_weighted(logits, ce_target, label_smoothing, &wt, layout)?
        }
    };
    dice.mul_scalar(lambda_dice)?
        .add(&ce.mul_scalar(lambda_ce)?)
}

fn masked(
    pred: &Var,
    target: &Tensor,
    mask: &Tensor,
    squared: bool,
    op: &'static str,
) -> Result<Var> {
    if target.shape() != pred.shape() {
        return Err(Error::Shape {
            op,
            msg: format!(
                "target {:?} does not match prediction {:?}",
                target.shape(),
                pred.shape()
            ),
        });
    }
    // Same rank only: NumPy's right-aligned broadcast would put an MAE mask `[N, L]`
    // along the pixel axis of a `[N, L, P]` prediction whenever L == P.
    let expanded = if mask.rank() == pred.shape().len() {
        mask.expand(pred.shape()).ok()
    } else {
        None
    };
    let m = expanded.ok_or_else(|| Error::Shape {
        op,
        msg: format!(
            "mask {:?} does not broadcast to prediction {:?} (same rank, size-1 axes \
             broadcast: e.g. [N, L, 1] for one mask value per patch)",
            mask.shape(),
            pred.shape()
        ),
    })?;
    let diff = pred.sub(&Var::constant(target.clone()))?;
    let err = if squared { diff.square()? } else { diff.abs()? };
    // An empty mask divides 0 by 1; any other count (soft masks too) is used as it is.
    let total = m.sum_all()?;
    let zero = Tensor::scalar(0.0, total.dtype(), total.device())?;
    let count = total.add(&total.eq(&zero)?)?;
    err.mul(&Var::constant(m))?
        .sum_all()?
        .div(&Var::constant(count))
}

/// Mean squared error over the masked elements.
pub fn masked_mse(pred: &Var, target: &Tensor, mask: &Tensor) -> Result<Var> {
    masked(pred, target, mask, true, "masked_mse")
}

/// Mean absolute error over the masked elements.
pub fn masked_l1(pred: &Var, target: &Tensor, mask: &Tensor) -> Result<Var> {
    masked(pred, target, mask, false, "masked_l1")
}
