//! Local perception residual (CMT's local perception unit): `x + act(norm(dwconv_k(x)))`
//! on channels-last input `(B, *grid, C)`; the depthwise conv has a bias and "same"
//! padding. Parameters: `proj.weight` `(C, 1, k…)`, `proj.bias`, and `norm.*` with a norm.

use ssm_autodiff::Var;
use ssm_runtime::{ConvSpec, DType, Device, Error, Layout, Padding, Result, Tensor};

use crate::dsl::init;
use crate::dsl::mixer::Activation;
use crate::dsl::params::ParamSet;

/// An LPR declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct LprConfig {
    /// Channels C.
    pub channels: usize,
    /// Odd kernel width.
    pub kernel: usize,
    /// Grid rank (1 to 3).
    pub rank: usize,
    /// LayerNorm over channels after the conv.
    pub layer_norm: bool,
    /// Activation after the norm.
    pub activation: Activation,
    /// ReLU instead (CMT variants); ignored when `activation` is not `None`.
    pub relu: bool,
}

/// An LPR unit with its parameters.
#[derive(Debug, Clone)]
pub struct Lpr {
    cfg: LprConfig,
    params: ParamSet,
}

impl Lpr {
    /// A unit with PyTorch's default conv initialisation (deterministic in `seed`).
    pub fn new(cfg: LprConfig, device: &Device, dtype: DType, seed: u64) -> Result<Lpr> {
        if cfg.kernel.is_multiple_of(2) || cfg.channels == 0 || !(1..=3).contains(&cfg.rank) {
            return Err(Error::Argument {
                op: "lpr",
                msg: format!("invalid LPR configuration {cfg:?}"),
            });
        }
        let mut params = ParamSet::new();
        let mut shape = vec![cfg.channels, 1];
        shape.extend(std::iter::repeat_n(cfg.kernel, cfg.rank));
        params.add(
            "proj.weight",
            &init::fan_in_uniform(
                &shape,
                init::derive_seed(seed, "proj.weight"),
                dtype,
                device,
            )?,
        )?;
        let bound = 1.0 / (cfg.kernel.pow(cfg.rank as u32) as f64).sqrt();
        params.add(
            "proj.bias",
            &init::uniform(
                &[cfg.channels],
                bound,
                init::derive_seed(seed, "proj.bias"),
                dtype,
                device,
            )?,
        )?;
        if cfg.layer_norm {
            params.add(
                "norm.weight",
                &Tensor::ones(&[cfg.channels], dtype, device)?,
            )?;
            params.add("norm.bias", &Tensor::zeros(&[cfg.channels], dtype, device)?)?;
        }
        Ok(Lpr { cfg, params })
    }

    /// The declaration.
    pub fn config(&self) -> &LprConfig {
        &self.cfg
    }

    /// Parameters.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Forward pass on the tape.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let p: Vec<Var> = self.params.iter().map(|p| p.var().clone()).collect();
        self.forward_with(x, &p)
    }

    /// Forward pass with the parameters replaced by `params` (in [`Lpr::params`] order).
    pub fn forward_with(&self, x: &Var, params: &[Var]) -> Result<Var> {
        let c = &self.cfg;
        if x.shape().len() != c.rank + 2
            || x.shape()[c.rank + 1] != c.channels
            || params.len() != self.params.len()
        {
            return Err(Error::Shape {
                op: "lpr",
                msg: format!(
                    "input {:?} must be (B, {} grid axes, {})",
                    x.shape(),
                    c.rank,
                    c.channels
                ),
            });
        }
        let spec = ConvSpec::new()
            .groups(c.channels)
            .padding(Padding::Symmetric(vec![(c.kernel - 1) / 2]))
            .layout(Layout::ChannelsLast);
        let mut y = x.conv(&params[0], Some(&params[1]), &spec)?;
        if c.layer_norm {
            y = y.layer_norm(
                Some(&params[2]),
                Some(&params[3]),
                1e-5,
                Layout::ChannelsLast,
            )?;
        }
        y = match (c.activation, c.relu) {
            (Activation::Gelu, _) => y.gelu()?,
            (Activation::Silu, _) => y.silu()?,
            (Activation::None, true) => y.relu()?,
            (Activation::None, false) => y,
        };
        x.add(&y)
    }
}
