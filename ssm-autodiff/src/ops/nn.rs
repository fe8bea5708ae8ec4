//! Differentiable model ops: convolution, normalisation, softmax, pooling, resizing,
//! attention, dropout / drop-path and pixel shuffle. Each forward runs the fused runtime
//! kernel and records a backward that calls the matching gradient kernels, computing only
//! the gradients whose inputs need them.

use ssm_runtime::ops::conv::Layout;
use ssm_runtime::shape::normalize_axis;
use ssm_runtime::{
    ConvSpec, Error, Norm, NormNeeds, PoolSpec, ResizeMode, ResizeTo, Result, Tensor,
};

use crate::var::Var;

/// `[a, b?]` as a list of graph inputs.
fn inputs<'a>(first: &'a Var, rest: &[Option<&'a Var>]) -> Vec<&'a Var> {
    let mut v = vec![first];
    v.extend(rest.iter().flatten());
    v
}

/// The shape and spatial rank of a pixel (un)shuffle input, checked.
fn shuffle_rank(op: &'static str, x: &Var, r: usize) -> Result<(Vec<usize>, usize)> {
    let shape = x.shape().to_vec();
    if !(3..=5).contains(&shape.len()) || r == 0 {
        return Err(Error::Shape {
            op,
            msg: format!("input {shape:?} with factor {r}"),
        });
    }
    let nd = shape.len() - 2;
    Ok((shape, nd))
}

impl Var {
    /// Convolution (see [`Tensor::conv`]); gradients for input, weight and bias.
    pub fn conv(&self, weight: &Var, bias: Option<&Var>, spec: &ConvSpec) -> Result<Var> {
        let y = self
            .value()
            .conv(weight.value(), bias.map(|b| b.value()), spec)?;
        let all = inputs(self, &[Some(weight), bias]);
        let need = Var::needs(&all);
        let (x, w) = (self.value().clone(), weight.value().clone());
        let spec = spec.clone();
        let has_bias = bias.is_some();
        Ok(Var::from_op("conv", y, &all, move |g| {
            // Both gradients from one call: a channels-first `g` is converted for the
            // tensor cores once. (x is converted again rather than kept from the forward:
            // that would hold an activation-sized copy per convolution until the backward.)
            let (dx, dw) = Tensor::conv_backward(&x, &w, g, &spec, (need[0], need[1]))?;
            let mut out = vec![dx, dw];
            if has_bias {
                out.push(
                    need[2]
                        .then(|| Tensor::conv_backward_bias(g, spec.layout))
                        .transpose()?,
                );
            }
            Ok(out)
        }))
    }

    /// Normalisation with batch statistics and an optional affine (see
    /// [`Tensor::norm_forward`]).
    pub fn norm(
        &self,
        norm: Norm,
        layout: Layout,
        weight: Option<&Var>,
        bias: Option<&Var>,
        eps: f64,
    ) -> Result<Var> {
        let (y, stats) = self.value().norm_forward(
            norm,
            layout,
            weight.map(|w| w.value()),
            bias.map(|b| b.value()),
            eps,
        )?;
        self.norm_node("norm", y, stats, norm, layout, weight, bias)
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_node(
        &self,
        name: &'static str,
        y: Tensor,
        stats: ssm_runtime::NormStats,
        norm: Norm,
        layout: Layout,
        weight: Option<&Var>,
        bias: Option<&Var>,
    ) -> Result<Var> {
        let all = inputs(self, &[weight, bias]);
        let need = Var::needs(&all);
        let x = self.value().clone();
        let w = weight.map(|w| w.value().clone());
        let (has_w, has_b) = (weight.is_some(), bias.is_some());
        Ok(Var::from_op(name, y, &all, move |g| {
            let needs = NormNeeds {
                dx: need[0],
                dw: has_w && need[1],
                db: has_b && need[1 + has_w as usize],
            };
            let gr = Tensor::norm_backward(&x, g, norm, layout, w.as_ref(), &stats, needs)?;
            let mut out = vec![gr.dx];
            if has_w {
                out.push(gr.dw);
            }
            if has_b {
                out.push(gr.db);
            }
            Ok(out)
        }))
    }

    /// LayerNorm over the channel axis.
    pub fn layer_norm(
        &self,
        weight: Option<&Var>,
        bias: Option<&Var>,
        eps: f64,
        layout: Layout,
    ) -> Result<Var> {
        self.norm(Norm::Layer, layout, weight, bias, eps)
    }

    /// InstanceNorm without affine (PyTorch `InstanceNorm3d` defaults).
    pub fn instance_norm(&self, eps: f64, layout: Layout) -> Result<Var> {
        self.norm(Norm::Instance, layout, None, None, eps)
    }

    /// GroupNorm.
    pub fn group_norm(
        &self,
        groups: usize,
        weight: Option<&Var>,
        bias: Option<&Var>,
        eps: f64,
        layout: Layout,
    ) -> Result<Var> {
        self.norm(Norm::Group(groups), layout, weight, bias, eps)
    }

    /// BatchNorm. Training: batch statistics, and `running_mean` / `running_var` updated in
    /// place (momentum as PyTorch, default 0.1). Evaluation: the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        weight: Option<&Var>,
        bias: Option<&Var>,
        running_mean: &Tensor,
        running_var: &Tensor,
        training: bool,
        momentum: f64,
        eps: f64,
        layout: Layout,
    ) -> Result<Var> {
        let (w, b) = (weight.map(|w| w.value()), bias.map(|b| b.value()));
        let (y, stats) = if training {
            self.value()
                .batch_norm_train(w, b, running_mean, running_var, momentum, eps, layout)?
        } else {
            self.value()
                .batch_norm_eval(w, b, running_mean, running_var, eps, layout)?
        };
        self.norm_node("batch_norm", y, stats, Norm::Batch, layout, weight, bias)
    }

    /// Softmax along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Var> {
        let y = self.value().softmax(axis)?;
        let yk = y.clone();
        Ok(Var::from_op("softmax", y, &[self], move |g| {
            Ok(vec![Some(Tensor::softmax_backward(&yk, g, axis)?)])
        }))
    }

    /// Log-softmax along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Var> {
        let y = self.value().log_softmax(axis)?;
        let yk = y.clone();
        Ok(Var::from_op("log_softmax", y, &[self], move |g| {
            Ok(vec![Some(Tensor::log_softmax_backward(&yk, g, axis)?)])
        }))
    }

    /// Average pooling.
    pub fn avg_pool(&self, spec: &PoolSpec) -> Result<Var> {
        let y = self.value().avg_pool(spec)?;
        let (shape, spec) = (self.shape().to_vec(), spec.clone());
        Ok(Var::from_op("avg_pool", y, &[self], move |g| {
            Ok(vec![Some(Tensor::avg_pool_backward(g, &shape, &spec)?)])
        }))
    }

    /// Max pooling (the gradient goes to the first maximum of each window).
    pub fn max_pool(&self, spec: &PoolSpec) -> Result<Var> {
        let (y, idx) = self.value().max_pool(spec)?;
        let (shape, spec) = (self.shape().to_vec(), spec.clone());
        Ok(Var::from_op("max_pool", y, &[self], move |g| {
            Ok(vec![Some(Tensor::max_pool_backward(
                g, &idx, &shape, &spec,
            )?)])
        }))
    }

    /// Mean over the spatial axes.
    pub fn global_avg_pool(&self, layout: Layout, keepdim: bool) -> Result<Var> {
        let r = self.shape().len();
        if r < 3 {
            return Err(Error::Shape {
                op: "global_avg_pool",
                msg: format!("input {:?} has no spatial axis", self.shape()),
            });
        }
        let axes: Vec<isize> = layout.spatial_axes(r).iter().map(|&a| a as isize).collect();
        self.mean(&axes, keepdim)
    }

    /// Resize (PyTorch `F.interpolate`, see [`Tensor::resize`]).
    pub fn resize(
        &self,
        to: &ResizeTo,
        mode: ResizeMode,
        align_corners: bool,
        layout: Layout,
    ) -> Result<Var> {
        let y = self.value().resize(to, mode, align_corners, layout)?;
        let (shape, to) = (self.shape().to_vec(), to.clone());
        Ok(Var::from_op("resize", y, &[self], move |g| {
            Ok(vec![Some(Tensor::resize_backward(
                g,
                &shape,
                &to,
                mode,
                align_corners,
                layout,
            )?)])
        }))
    }

    /// Fused multi-head attention `softmax(Q·Kᵀ·scale)·V` on `[B, H, L, D]` inputs (scale
    /// defaults to 1/√D); memory is linear in L.
    pub fn attention(q: &Var, k: &Var, v: &Var, scale: Option<f64>) -> Result<Var> {
        let (out, lse) = Tensor::attention(q.value(), k.value(), v.value(), scale)?;
        let (qt, kt, vt, ot) = (
            q.value().clone(),
            k.value().clone(),
            v.value().clone(),
            out.clone(),
        );
        let need = Var::needs(&[q, k, v]);
        Ok(Var::from_op("attention", out, &[q, k, v], move |g| {
            let (dq, dk, dv) = Tensor::attention_backward(&qt, &kt, &vt, &ot, &lse, g, scale)?;
            Ok(vec![
                need[0].then_some(dq),
                need[1].then_some(dk),
                need[2].then_some(dv),
            ])
        }))
    }

    /// Reference attention that materialises the `L × L` probabilities (matmul, softmax,
    /// matmul); same result as [`attention`](Self::attention).
    pub fn attention_plain(q: &Var, k: &Var, v: &Var, scale: Option<f64>) -> Result<Var> {
        let d = *q.shape().last().unwrap_or(&1);
        let s = scale.unwrap_or(1.0 / (d as f64).sqrt());
        q.matmul(&k.transpose(-1, -2)?)?
            .mul_scalar(s)?
            .softmax(-1)?
            .matmul(v)
    }

    /// Dropout: zero each element with probability `p` and scale the rest by 1/(1 − p)
    /// (identity when not training or p = 0). The mask is a counter-based draw from `seed`.
    pub fn dropout(&self, p: f64, seed: u64, training: bool) -> Result<Var> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Argument {
                op: "dropout",
                msg: format!("probability {p} is outside [0, 1]"),
            });
        }
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        let x = self.value();
        if p == 1.0 {
            return self.mul_scalar(0.0);
        }
        let mask = Tensor::bernoulli(x.shape(), 1.0 - p, seed, x.dtype(), x.device())?
            .mul_scalar(1.0 / (1.0 - p))?;
        self.mul(&Var::constant(mask))
    }

    /// Stochastic depth: drop the whole sample `n` (axis 0) with probability `p` and scale
    /// kept samples by 1/(1 − p) (timm's `drop_path`; identity when not training).
    pub fn drop_path(&self, p: f64, seed: u64, training: bool) -> Result<Var> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Argument {
                op: "drop_path",
                msg: format!("probability {p} is outside [0, 1]"),
            });
        }
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        let x = self.value();
        let mut shape = vec![1; x.rank()];
        shape[0] = x.shape()[0];
        let keep = 1.0 - p;
        let mask = Tensor::bernoulli(&shape, keep, seed, x.dtype(), x.device())?;
        let mask = if keep > 0.0 {
            mask.mul_scalar(1.0 / keep)?
        } else {
            mask
        };
        self.mul(&Var::constant(mask))
    }

    /// Pixel shuffle by factor `r` over the spatial axes: `[N, C·r^d, *s]` →
    /// `[N, C, *(s·r)]` (channels-first, PyTorch's order; 1-3 spatial axes), or the same
    /// channel order channels-last.
    pub fn pixel_shuffle(&self, r: usize, layout: Layout) -> Result<Var> {
        let op = "pixel_shuffle";
        let (shape, nd) = shuffle_rank(op, self, r)?;
        let (n, c, sp) = layout.split(&shape);
        let rd = r.pow(nd as u32);
        if !c.is_multiple_of(rd) {
            return Err(Error::Shape {
                op,
                msg: format!("{c} channels of {shape:?} do not divide by {r}^{nd}"),
            });
        }
        let co = c / rd;
        let out_sp: Vec<usize> = sp.iter().map(|s| s * r).collect();
        match layout {
            Layout::ChannelsFirst => {
                // [N, Co, r.., s..] → [N, Co, s0, r, s1, r, ...]
                let mut v = vec![n, co];
                v.extend(vec![r; nd]);
                v.extend(&sp);
                let mut perm = vec![0, 1];
                for a in 0..nd {
                    perm.push(2 + nd + a);
                    perm.push(2 + a);
                }
                self.reshape(&v)?
                    .permute(&perm)?
                    .reshape(&layout.shape(n, co, &out_sp))
            }
            Layout::ChannelsLast => {
                // [N, s.., Co, r..] → [N, s0, r, s1, r, ..., Co]
                let mut v = vec![n];
                v.extend(&sp);
                v.push(co);
                v.extend(vec![r; nd]);
                let mut perm = vec![0];
                for a in 0..nd {
                    perm.push(1 + a);
                    perm.push(2 + nd + a);
                }
                perm.push(1 + nd);
                self.reshape(&v)?
                    .permute(&perm)?
                    .reshape(&layout.shape(n, co, &out_sp))
            }
        }
    }

    /// Inverse of [`pixel_shuffle`](Self::pixel_shuffle).
    pub fn pixel_unshuffle(&self, r: usize, layout: Layout) -> Result<Var> {
        let op = "pixel_unshuffle";
        let (shape, nd) = shuffle_rank(op, self, r)?;
        let (n, c, sp) = layout.split(&shape);
        if sp.iter().any(|s| !s.is_multiple_of(r)) {
            return Err(Error::Shape {
                op,
                msg: format!("spatial sizes of {shape:?} do not divide by {r}"),
            });
        }
        let small: Vec<usize> = sp.iter().map(|s| s / r).collect();
        let cout = c * r.pow(nd as u32);
        match layout {
            Layout::ChannelsFirst => {
                let mut v = vec![n, c];
                for &s in &small {
                    v.push(s);
                    v.push(r);
                }
                // [N, C, s0, r, s1, r..] → [N, C, r.., s..]
                let mut perm = vec![0, 1];
                for a in 0..nd {
                    perm.push(3 + 2 * a);
                }
                for a in 0..nd {
                    perm.push(2 + 2 * a);
                }
                self.reshape(&v)?
                    .permute(&perm)?
                    .reshape(&layout.shape(n, cout, &small))
            }
            Layout::ChannelsLast => {
                let mut v = vec![n];
                for &s in &small {
                    v.push(s);
                    v.push(r);
                }
                v.push(c);
                // [N, s0, r, s1, r, .., C] → [N, s.., C, r..]
                let mut perm = vec![0];
                for a in 0..nd {
                    perm.push(1 + 2 * a);
                }
                perm.push(1 + 2 * nd);
                for a in 0..nd {
                    perm.push(2 + 2 * a);
                }
                self.reshape(&v)?
                    .permute(&perm)?
                    .reshape(&layout.shape(n, cout, &small))
            }
        }
    }

    /// The channel axis of a tensor of this rank in `layout` (helper for losses).
    pub(crate) fn channel_axis(&self, layout: Layout) -> Result<usize> {
        let r = self.shape().len();
        if r < 2 {
            return Err(Error::Shape {
                op: "channel_axis",
                msg: format!("{:?} has no channel axis", self.shape()),
            });
        }
        normalize_axis("channel_axis", layout.channel_axis(r) as isize, r)
    }
}

impl Var {
    /// Reverse attention `(1 − σ(resize(m))) ⊙ f` (see [`Tensor::reverse_attention`]): one
    /// fused kernel forward; df and the resized map's gradient in one kernel backward,
    /// then the resize's transposed gather back to `m`.
    pub fn reverse_attention(m: &Var, f: &Var) -> Result<Var> {
        let y = Tensor::reverse_attention(m.value(), f.value())?;
        let (mt, ft) = (m.value().clone(), f.value().clone());
        Ok(Var::from_op("reverse_attention", y, &[m, f], move |g| {
            let (dm, df) = Tensor::reverse_attention_backward(&mt, &ft, g)?;
            Ok(vec![Some(dm), Some(df)])
        }))
    }
}
