//! Normalisations (LayerNorm over channels, InstanceNorm, GroupNorm, BatchNorm) and
//! softmax / log-softmax, forward and backward, on the row kernels of
//! [`crate::kernels::rows`].
//!
//! Every normalisation groups the elements of `x` (channels-first or channels-last, see
//! [`Layout`]), normalises each group to zero mean and unit (biased) variance, and applies
//! an optional per-channel affine `w·x̂ + b`:
//!
//! | [`Norm`] | one group per | reduced over |
//! | --- | --- | --- |
//! | `Layer` | (batch, position) | channels |
//! | `Instance` | (batch, channel) | positions |
//! | `Group(g)` | (batch, channel group) | channels of the group × positions |
//! | `Batch` | channel | batch × positions |
//!
//! Small groups run as one fused launch (statistics + normalisation); large groups with
//! few of them (InstanceNorm on big volumes, BatchNorm) are split into chunks: partial
//! statistics, a combine, and an apply launch. The backward is fused the same way, with
//! the affine gradients (per-channel sums) as one more reduction launch.

use crate::error::{Error, Result};
use crate::kernels::rows::{self, RowArgs, RowOp, RowPlan};
use crate::ops::conv::Layout;
use crate::ops::elementwise::require_float;
use crate::shape::normalize_axis;
use crate::tensor::{Tensor, same_device};

/// Which elements share statistics (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// LayerNorm over the channel axis.
    Layer,
    /// InstanceNorm: per sample and channel over all positions.
    Instance,
    /// GroupNorm with this many channel groups.
    Group(usize),
    /// BatchNorm: per channel over batch and positions.
    Batch,
}

/// Statistics saved by a forward pass for its backward: one value per group, in the order
/// of the group axes (e.g. `[N, C]` for InstanceNorm, `[C]` for BatchNorm).
#[derive(Debug, Clone)]
pub struct NormStats {
    /// Group means (or the running means in BatchNorm evaluation).
    pub mean: Tensor,
    /// 1/√(var + eps) per group.
    pub rstd: Tensor,
    /// Whether the statistics are constants of the forward (BatchNorm evaluation), so the
    /// backward does not differentiate through them.
    pub constant: bool,
}

/// Gradients of a normalisation.
#[derive(Debug, Clone, Default)]
pub struct NormGrads {
    /// Input gradient.
    pub dx: Option<Tensor>,
    /// Affine weight gradient `[C]`.
    pub dw: Option<Tensor>,
    /// Affine bias gradient `[C]`.
    pub db: Option<Tensor>,
}

/// How a normalisation sees `x`: a common view shape (the channel axis split into
/// (groups, channels per group) for GroupNorm), its group axes and its channel axes.
#[derive(Debug, Clone)]
struct Grouping {
    view: Vec<usize>,
    /// Channel axis of `x` split in two at this index of the view.
    split: Option<(usize, usize)>,
    kept: Vec<usize>,
    chan: Vec<usize>,
    channels: usize,
}

fn grouping(op: &'static str, shape: &[usize], norm: Norm, layout: Layout) -> Result<Grouping> {
    let r = shape.len();
    if r < 2 {
        return Err(Error::shape(
            op,
            format!("input {shape:?} needs a batch and a channel axis"),
        ));
    }
    let ca = layout.channel_axis(r);
    let c = shape[ca];
    let all: Vec<usize> = (0..r).collect();
    let g = match norm {
        Norm::Layer => Grouping {
            view: shape.to_vec(),
            split: None,
            kept: all.iter().copied().filter(|&a| a != ca).collect(),
            chan: vec![ca],
            channels: c,
        },
        Norm::Instance if layout.split(shape).2.iter().product::<usize>() < 2 => {
            // Each (sample, channel) would normalise a single value to 0; PyTorch refuses.
            return Err(Error::shape(
                op,
                format!("instance norm needs more than one spatial element, input {shape:?}"),
            ));
        }
        Norm::Instance => Grouping {
            view: shape.to_vec(),
            split: None,
            kept: if ca == 0 { vec![0] } else { vec![0, ca] },
            chan: vec![ca],
            channels: c,
        },
        Norm::Batch => Grouping {
            view: shape.to_vec(),
            split: None,
            kept: vec![ca],
            chan: vec![ca],
            channels: c,
        },
        Norm::Group(groups) => {
            if groups == 0 || !c.is_multiple_of(groups) {
                return Err(Error::shape(
                    op,
                    format!("{c} channels (input {shape:?}) do not split into {groups} groups"),
                ));
            }
            let mut view = shape.to_vec();
            view[ca] = groups;
            view.insert(ca + 1, c / groups);
            Grouping {
                view,
                split: Some((ca, groups)),
                kept: vec![0, ca],
                chan: vec![ca, ca + 1],
                channels: c,
            }
        }
    };
    Ok(g)
}

impl Grouping {
    /// `t` (shaped like x) as a view of the common shape.
    fn view_of(&self, t: &Tensor) -> Tensor {
        let mut shape = t.shape.clone();
        let mut strides = t.strides.clone();
        if let Some((a, groups)) = self.split {
            let cg = shape[a] / groups;
            let s = strides[a];
            shape[a] = groups;
            shape.insert(a + 1, cg);
            strides[a] = s * cg;
            strides.insert(a + 1, s);
        }
        Tensor {
            shape,
            strides,
            ..t.clone()
        }
    }

    /// A `[C]` vector broadcast along the channel axes of the view.
    fn channel_view(&self, v: &Tensor) -> Tensor {
        let mut strides = vec![0; self.view.len()];
        let mut acc = v.strides[0];
        for &a in self.chan.iter().rev() {
            strides[a] = acc;
            acc *= self.view[a];
        }
        Tensor {
            shape: self.view.clone(),
            strides,
            ..v.clone()
        }
    }

    /// Number of groups.
    fn items(&self) -> usize {
        self.kept.iter().map(|&a| self.view[a]).product()
    }

    fn group_shape(&self) -> Vec<usize> {
        self.kept.iter().map(|&a| self.view[a]).collect()
    }

    /// Elements per group.
    fn group_len(&self) -> usize {
        self.view.iter().product::<usize>() / self.items().max(1)
    }

    /// A contiguous per-group tensor (`[items]`) broadcast over the reduced axes.
    fn group_view(&self, v: &Tensor) -> Tensor {
        let mut strides = vec![0; self.view.len()];
        let mut acc = 1;
        for &a in self.kept.iter().rev() {
            strides[a] = acc;
            acc *= self.view[a];
        }
        Tensor {
            shape: self.view.clone(),
            strides,
            ..v.clone()
        }
    }
}

/// Operands permuted (kept axes first) and with mergeable axes merged.
struct Prepared {
    tensors: Vec<Tensor>,
    plan: RowPlan,
}

/// How to split work for ops that support chunked partials.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    Never,
    /// Up to 1024 chunks per item: their partials are combined by one thread per item.
    Allowed,
    /// Up to 16384 chunks per item, for partials summed by a reduction kernel. With few
    /// items and long ranges (the affine gradient of a channels-last LayerNorm: 48
    /// channels × 800 k positions) 1024 chunks leave most of the GPU idle.
    Wide,
}

/// Permute every operand to `[kept..., reduced...]`, drop size-1 axes, merge reduced axes
/// that are adjacent in memory for every operand, and choose the segment size and chunking.
fn prepare(view: &[usize], kept: &[usize], operands: &[&Tensor], split: Split) -> Prepared {
    let reduced: Vec<usize> = (0..view.len()).filter(|a| !kept.contains(a)).collect();
    let mut k_axes: Vec<usize> = kept.iter().copied().filter(|&a| view[a] != 1).collect();
    let mut r_axes: Vec<usize> = reduced.iter().copied().filter(|&a| view[a] != 1).collect();
    if r_axes.is_empty() {
        // Keep one (size-1) reduced axis so the kernel has a range to walk.
        r_axes.push(*reduced.first().unwrap_or(&0));
        if reduced.is_empty() {
            k_axes.retain(|&a| a != r_axes[0]);
        }
    }
    // Merge adjacent reduced axes (slow to fast) when contiguous for every operand.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &a in &r_axes {
        if let Some(last) = groups.last_mut() {
            let prev = *last.last().expect("non-empty");
            if operands
                .iter()
                .all(|t| t.strides[prev] == t.strides[a] * view[a])
            {
                last.push(a);
                continue;
            }
        }
        groups.push(vec![a]);
    }
    let k_rank = k_axes.len();
    let tensors = operands
        .iter()
        .map(|t| {
            let mut shape: Vec<usize> = k_axes.iter().map(|&a| view[a]).collect();
            let mut strides: Vec<usize> = k_axes.iter().map(|&a| t.strides[a]).collect();
            for gr in &groups {
                shape.push(gr.iter().map(|&a| view[a]).product());
                strides.push(t.strides[*gr.last().expect("non-empty")]);
            }
            Tensor {
                shape,
                strides,
                ..(*t).clone()
            }
        })
        .collect::<Vec<_>>();
    let num_items: usize = k_axes.iter().map(|&a| view[a]).product();
    let reduce_len: usize = groups
        .iter()
        .map(|g| g.iter().map(|&a| view[a]).product::<usize>())
        .product();
    let x = &tensors[0];
    let contiguous_rows = x.strides[x.rank() - 1] == 1 && reduce_len > 1;
    let seg = if contiguous_rows {
        prev_pow2(reduce_len / 4).clamp(1, 256)
    } else {
        1
    };
    let target_threads = 1usize << 18;
    let max_chunks = match split {
        Split::Never => 1,
        Split::Allowed => 1024,
        Split::Wide => 16384,
    };
    let n_chunks = if num_items * seg < target_threads && reduce_len > 16 * seg {
        (target_threads / (num_items * seg).max(1))
            .min(reduce_len / (8 * seg))
            .clamp(1, max_chunks)
    } else {
        1
    };
    let chunk_len = reduce_len.div_ceil(n_chunks).max(1);
    let n_chunks = reduce_len.div_ceil(chunk_len).max(1);
    Prepared {
        tensors,
        plan: RowPlan {
            k_rank,
            num_items,
            reduce_len,
            seg,
            fast: groups.len() == 1,
            n_chunks,
            chunk_len,
        },
    }
}

fn prev_pow2(n: usize) -> usize {
    if n == 0 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

fn check_vec(op: &'static str, name: &str, v: Option<&Tensor>, x: &Tensor, c: usize) -> Result<()> {
    if let Some(v) = v {
        same_device(op, x, v)?;
        if v.dtype != x.dtype || v.shape != [c] {
            return Err(Error::shape(
                op,
                format!(
                    "{name} is {} {:?} but must be {} [{c}] for input {:?}",
                    v.dtype, v.shape, x.dtype, x.shape
                ),
            ));
        }
    }
    Ok(())
}

fn check_eps(op: &'static str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::arg(op, format!("eps {eps} must be finite and >= 0")));
    }
    Ok(())
}

/// Argument checks shared by the BatchNorm variants; returns the grouping.
fn check_batch_norm(
    x: &Tensor,
    vectors: [Option<&Tensor>; 4],
    eps: f64,
    layout: Layout,
) -> Result<Grouping> {
    let op = "batch_norm";
    require_float(op, x)?;
    check_eps(op, eps)?;
    let g = grouping(op, &x.shape, Norm::Batch, layout)?;
    for (name, v) in ["weight", "bias", "running_mean", "running_var"]
        .into_iter()
        .zip(vectors)
    {
        check_vec(op, name, v, x, g.channels)?;
    }
    Ok(g)
}

/// Forward pass of `norm` with batch statistics; returns y and the group statistics
/// (and, for BatchNorm, the unbiased variance per channel for running statistics).
fn forward_stats(
    x: &Tensor,
    g: &Grouping,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, NormStats, Option<Tensor>)> {
    let y = Tensor::empty(&x.shape, x.dtype, &x.device);
    let xv = g.view_of(x);
    let yv = g.view_of(&y);
    let wv = w.map(|w| g.channel_view(w));
    let bv = b.map(|b| g.channel_view(b));
    let mut ops = vec![&xv, &yv];
    if let Some(w) = &wv {
        ops.push(w);
    }
    if let Some(b) = &bv {
        ops.push(b);
    }
    let gshape = g.group_shape();
    let p = prepare(&g.view, &g.kept, &ops, Split::Allowed);
    let t = &p.tensors;
    let (wi, bi) = (
        wv.as_ref().map(|_| 2),
        bv.as_ref().map(|_| 2 + wv.is_some() as usize),
    );
    if p.plan.n_chunks == 1 {
        let args = RowArgs {
            x: &t[0],
            dy: None,
            w: wi.map(|i| &t[i]),
            b: bi.map(|i| &t[i]),
            m: None,
            r: None,
            s: None,
            out: Some(&t[1]),
        };
        let (mean, rstd) = rows::launch(&args, &p.plan, RowOp::NormFwd, eps);
        let stats = NormStats {
            mean: mean.reshape(&gshape)?,
            rstd: rstd.reshape(&gshape)?,
            constant: false,
        };
        // Unbiased variance from rstd (BatchNorm running statistics).
        return Ok((y, stats, None));
    }
    let stat_args = RowArgs {
        x: &t[0],
        dy: None,
        w: None,
        b: None,
        m: None,
        r: None,
        s: None,
        out: None,
    };
    let (pm, pm2) = rows::launch(&stat_args, &p.plan, RowOp::NormStats, eps);
    let (mean, rstd, var_u) = rows::finalize(&pm, &pm2, &p.plan, eps);
    apply(x, &y, g, w, b, &mean, &rstd)?;
    Ok((
        y,
        NormStats {
            mean: mean.reshape(&gshape)?,
            rstd: rstd.reshape(&gshape)?,
            constant: false,
        },
        Some(var_u),
    ))
}

/// `y = (x − mean)·rstd·w + b` with per-group mean and rstd.
fn apply(
    x: &Tensor,
    y: &Tensor,
    g: &Grouping,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<()> {
    let xv = g.view_of(x);
    let yv = g.view_of(y);
    let mv = g.group_view(&mean.contiguous()?);
    let rv = g.group_view(&rstd.contiguous()?);
    let wv = w.map(|w| g.channel_view(w));
    let bv = b.map(|b| g.channel_view(b));
    let mut ops = vec![&xv, &yv, &mv, &rv];
    if let Some(w) = &wv {
        ops.push(w);
    }
    if let Some(b) = &bv {
        ops.push(b);
    }
    let p = prepare(&g.view, &g.kept, &ops, Split::Allowed);
    let t = &p.tensors;
    let wi = wv.as_ref().map(|_| 4);
    let bi = bv.as_ref().map(|_| 4 + wv.is_some() as usize);
    let args = RowArgs {
        x: &t[0],
        dy: None,
        w: wi.map(|i| &t[i]),
        b: bi.map(|i| &t[i]),
        m: Some(&t[2]),
        r: Some(&t[3]),
        s: None,
        out: Some(&t[1]),
    };
    rows::launch(&args, &p.plan, RowOp::NormApply, 0.0);
    Ok(())
}

/// Options of [`Tensor::norm_backward`]: which gradients to compute.
#[derive(Debug, Clone, Copy)]
pub struct NormNeeds {
    /// Input gradient.
    pub dx: bool,
    /// Weight gradient (needs an affine weight).
    pub dw: bool,
    /// Bias gradient.
    pub db: bool,
}

impl Tensor {
    /// Normalise `self` (layout `layout`) by `norm` with batch statistics and apply the
    /// optional affine `weight`, `bias` (`[C]`). Returns y and the statistics the backward
    /// needs.
    pub fn norm_forward(
        &self,
        norm: Norm,
        layout: Layout,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, NormStats)> {
        let op = "norm";
        require_float(op, self)?;
        check_eps(op, eps)?;
        let g = grouping(op, &self.shape, norm, layout)?;
        check_vec(op, "weight", weight, self, g.channels)?;
        check_vec(op, "bias", bias, self, g.channels)?;
        let (y, stats, _) = forward_stats(self, &g, weight, bias, eps)?;
        Ok((y, stats))
    }

    /// LayerNorm over the channel axis (eps is 1e-5 in PyTorch and SRMA-Mamba).
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
        layout: Layout,
    ) -> Result<Tensor> {
        Ok(self.norm_forward(Norm::Layer, layout, weight, bias, eps)?.0)
    }

    /// InstanceNorm (per sample and channel over positions); PyTorch's `InstanceNorm3d`
    /// default has no affine and eps 1e-5.
    pub fn instance_norm(&self, eps: f64, layout: Layout) -> Result<Tensor> {
        Ok(self
            .norm_forward(Norm::Instance, layout, None, None, eps)?
            .0)
    }

    /// GroupNorm with `groups` channel groups.
    pub fn group_norm(
        &self,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
        layout: Layout,
    ) -> Result<Tensor> {
        Ok(self
            .norm_forward(Norm::Group(groups), layout, weight, bias, eps)?
            .0)
    }

    /// BatchNorm in training mode: normalise with the batch statistics and update the
    /// running statistics in place (`running ← (1 − momentum)·running + momentum·batch`,
    /// the variance unbiased, as PyTorch). Returns y and the statistics for the backward.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_train(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
        layout: Layout,
    ) -> Result<(Tensor, NormStats)> {
        let op = "batch_norm";
        let g = check_batch_norm(
            self,
            [weight, bias, Some(running_mean), Some(running_var)],
            eps,
            layout,
        )?;
        let n = g.group_len();
        if n < 2 {
            return Err(Error::shape(
                op,
                format!(
                    "training needs more than one value per channel, input {:?}",
                    self.shape
                ),
            ));
        }
        let (y, stats, var_u) = forward_stats(self, &g, weight, bias, eps)?;
        let var_u = match var_u {
            Some(v) => v,
            // The one-launch path keeps rstd only, and 1/rstd² − eps loses the variance
            // when it is far below eps (a residue, even a negative one, at zero variance,
            // where PyTorch stores 0): a second pass over this (small) input instead.
            None => {
                let reduced: Vec<isize> = (0..self.rank())
                    .filter(|&a| a != layout.channel_axis(self.rank()))
                    .map(|a| a as isize)
                    .collect();
                self.var(&reduced, 1, false)?
            }
        };
        let new_mean = running_mean
            .mul_scalar(1.0 - momentum)?
            .add(&stats.mean.mul_scalar(momentum)?)?;
        let new_var = running_var
            .mul_scalar(1.0 - momentum)?
            .add(&var_u.reshape(&[g.channels])?.mul_scalar(momentum)?)?;
        running_mean.assign(&new_mean)?;
        running_var.assign(&new_var)?;
        Ok((y, stats))
    }

    /// BatchNorm in evaluation mode: normalise with the running statistics.
    pub fn batch_norm_eval(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        layout: Layout,
    ) -> Result<(Tensor, NormStats)> {
        let g = check_batch_norm(
            self,
            [weight, bias, Some(running_mean), Some(running_var)],
            eps,
            layout,
        )?;
        let rstd = running_var.add_scalar(eps)?.rsqrt()?;
        let mean = running_mean.contiguous()?;
        let y = Tensor::empty(&self.shape, self.dtype, &self.device);
        apply(self, &y, &g, weight, bias, &mean, &rstd)?;
        Ok((
            y,
            NormStats {
                mean,
                rstd,
                constant: true,
            },
        ))
    }

    /// Backward of [`norm_forward`](Self::norm_forward) (and of the BatchNorm variants):
    /// gradients of x, the affine weight and bias from the output gradient `dy`.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_backward(
        x: &Tensor,
        dy: &Tensor,
        norm: Norm,
        layout: Layout,
        weight: Option<&Tensor>,
        stats: &NormStats,
        needs: NormNeeds,
    ) -> Result<NormGrads> {
        let op = "norm_backward";
        require_float(op, x)?;
        same_device(op, x, dy)?;
        if dy.shape != x.shape || dy.dtype != x.dtype {
            return Err(Error::shape(
                op,
                format!(
                    "gradient {} {:?} does not match input {} {:?}",
                    dy.dtype, dy.shape, x.dtype, x.shape
                ),
            ));
        }
        let g = grouping(op, &x.shape, norm, layout)?;
        check_vec(op, "weight", weight, x, g.channels)?;
        if stats.mean.numel() != g.items() || stats.rstd.numel() != g.items() {
            return Err(Error::shape(
                op,
                format!(
                    "statistics have {} values, input {:?} has {} groups",
                    stats.mean.numel(),
                    x.shape,
                    g.items()
                ),
            ));
        }
        let mean = stats.mean.contiguous()?;
        let rstd = stats.rstd.contiguous()?;
        let xv = g.view_of(x);
        let dyv = g.view_of(dy);
        let mv = g.group_view(&mean);
        let rv = g.group_view(&rstd);
        let mut out = NormGrads::default();
        if needs.dx {
            let dx = Tensor::empty(&x.shape, x.dtype, &x.device);
            let dxv = g.view_of(&dx);
            let wv = weight.map(|w| g.channel_view(w));
            let mut ops = vec![&xv, &dyv, &dxv, &mv, &rv];
            if let Some(w) = &wv {
                ops.push(w);
            }
            let p = prepare(&g.view, &g.kept, &ops, Split::Allowed);
            let t = &p.tensors;
            let wt = wv.as_ref().map(|_| &t[5]);
            if stats.constant || p.plan.n_chunks > 1 {
                let (s1, s2) = if stats.constant {
                    (mean.zeros_like()?, mean.zeros_like()?)
                } else {
                    let args = RowArgs {
                        x: &t[0],
                        dy: Some(&t[1]),
                        w: wt,
                        b: None,
                        m: Some(&t[3]),
                        r: Some(&t[4]),
                        s: None,
                        out: None,
                    };
                    let (pa, pb) = rows::launch(&args, &p.plan, RowOp::NormBwdStats, 0.0);
                    let inv = 1.0 / p.plan.reduce_len as f64;
                    (
                        pa.sum(&[1], false)?.mul_scalar(inv)?,
                        pb.sum(&[1], false)?.mul_scalar(inv)?,
                    )
                };
                let s1v = g.group_view(&s1);
                let s2v = g.group_view(&s2);
                let mut ops2 = vec![&xv, &dyv, &dxv, &mv, &rv, &s1v, &s2v];
                if let Some(w) = &wv {
                    ops2.push(w);
                }
                let p2 = prepare(&g.view, &g.kept, &ops2, Split::Allowed);
                let t2 = &p2.tensors;
                let args = RowArgs {
                    x: &t2[0],
                    dy: Some(&t2[1]),
                    w: wv.as_ref().map(|_| &t2[7]),
                    b: Some(&t2[5]),
                    m: Some(&t2[3]),
                    r: Some(&t2[4]),
                    s: Some(&t2[6]),
                    out: Some(&t2[2]),
                };
                rows::launch(&args, &p2.plan, RowOp::NormBwdApply, 0.0);
            } else {
                let args = RowArgs {
                    x: &t[0],
                    dy: Some(&t[1]),
                    w: wt,
                    b: None,
                    m: Some(&t[3]),
                    r: Some(&t[4]),
                    s: None,
                    out: Some(&t[2]),
                };
                rows::launch(&args, &p.plan, RowOp::NormBwd, 0.0);
            }
            out.dx = Some(dx);
        }
        if needs.dw || needs.db {
            // Per channel: Σ dy·x̂ and Σ dy over everything but the channel axes.
            let p = prepare(&g.view, &g.chan, &[&xv, &dyv, &mv, &rv], Split::Wide);
            let t = &p.tensors;
            let args = RowArgs {
                x: &t[0],
                dy: Some(&t[1]),
                w: None,
                b: None,
                m: Some(&t[2]),
                r: Some(&t[3]),
                s: None,
                out: None,
            };
            let (pa, pb) = rows::launch(&args, &p.plan, RowOp::AffineGrad, 0.0);
            let c = [g.channels];
            if needs.dw {
                out.dw = Some(pa.sum(&[1], false)?.reshape(&c)?);
            }
            if needs.db {
                out.db = Some(pb.sum(&[1], false)?.reshape(&c)?);
            }
        }
        Ok(out)
    }

    /// Softmax along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_like("softmax", axis, RowOp::Softmax)
    }

    /// Log-softmax along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_like("log_softmax", axis, RowOp::LogSoftmax)
    }

    fn softmax_like(&self, op: &'static str, axis: isize, row_op: RowOp) -> Result<Tensor> {
        require_float(op, self)?;
        let ax = normalize_axis(op, axis, self.rank())?;
        let y = Tensor::empty(&self.shape, self.dtype, &self.device);
        if self.numel() == 0 {
            return Ok(y);
        }
        let kept: Vec<usize> = (0..self.rank()).filter(|&a| a != ax).collect();
        let p = prepare(&self.shape, &kept, &[self, &y], Split::Never);
        let args = RowArgs {
            x: &p.tensors[0],
            dy: None,
            w: None,
            b: None,
            m: None,
            r: None,
            s: None,
            out: Some(&p.tensors[1]),
        };
        rows::launch(&args, &p.plan, row_op, 0.0);
        Ok(y)
    }

    /// Backward of [`softmax`](Self::softmax) from its output `y`: `y·(dy − Σ dy·y)`.
    pub fn softmax_backward(y: &Tensor, dy: &Tensor, axis: isize) -> Result<Tensor> {
        Self::softmax_bwd_like("softmax_backward", y, dy, axis, RowOp::SoftmaxBwd)
    }

    /// Backward of [`log_softmax`](Self::log_softmax) from its output `y`:
    /// `dy − e^y·Σ dy`.
    pub fn log_softmax_backward(y: &Tensor, dy: &Tensor, axis: isize) -> Result<Tensor> {
        Self::softmax_bwd_like("log_softmax_backward", y, dy, axis, RowOp::LogSoftmaxBwd)
    }

    fn softmax_bwd_like(
        op: &'static str,
        y: &Tensor,
        dy: &Tensor,
        axis: isize,
        row_op: RowOp,
    ) -> Result<Tensor> {
        require_float(op, y)?;
        same_device(op, y, dy)?;
        if y.shape != dy.shape || y.dtype != dy.dtype {
            return Err(Error::shape(
                op,
                format!(
                    "gradient {} {:?} does not match output {} {:?}",
                    dy.dtype, dy.shape, y.dtype, y.shape
                ),
            ));
        }
        let ax = normalize_axis(op, axis, y.rank())?;
        let dx = Tensor::empty(&y.shape, y.dtype, &y.device);
        if y.numel() == 0 {
            return Ok(dx);
        }
        let kept: Vec<usize> = (0..y.rank()).filter(|&a| a != ax).collect();
        let p = prepare(&y.shape, &kept, &[y, dy, &dx], Split::Never);
        let args = RowArgs {
            x: &p.tensors[0],
            dy: Some(&p.tensors[1]),
            w: None,
            b: None,
            m: None,
            r: None,
            s: None,
            out: Some(&p.tensors[2]),
        };
        rows::launch(&args, &p.plan, row_op, 0.0);
        Ok(dx)
    }
}
