//! The Mamba mixer: what `#[ssm_block]` declarations configure.
//!
//! Input and output are channels-last `(B, *grid, d_model)`. The mixer computes
//!
//! ```text
//! [x, z] = in_proj(x)                                   (z only with a gate)
//! u = act(conv(x))                                      (depthwise or causal, channels-first)
//! per path k: [δ, B_k, C_k] = x_proj_k(u); Δ_k = dt_proj_k(δ)   (Δ bias added in the scan)
//! y = merge_k scan_k(u, Δ_k, A_k = −exp(A_log_k), B_k, C_k, D_k)
//! y = out_norm(y) ⊙ silu(z)   (or the gate inside the scan when there is no norm)
//! out = out_proj(y)
//! ```
//!
//! with the scan engine's fused kernels along index-mapped paths. Variants: several views
//! of a volume (SRMA-Mamba's ABSS: three 2D views, summed), per-path local convolutions
//! (Vim), and a downsampled low-resolution branch (MSVMamba's DMS).

use ssm_autodiff::{ScanVars, Var, selective_scan};
use ssm_runtime::scan::{Merge, ScanPath, ScanSpec};
use ssm_runtime::{
    ConvSpec, DType, Device, Error, Layout, Padding, ResizeMode, ResizeTo, Result, Tensor,
};

use crate::dsl::init;
use crate::dsl::params::ParamSet;

/// The local convolution before the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalConv {
    /// No convolution.
    None,
    /// Depthwise causal 1D convolution of width k (Mamba); on a reversed path it is causal
    /// along the path, i.e. anti-causal in memory order.
    Causal1d(usize),
    /// Depthwise convolution of odd width k on the grid ("same" padding): 2D or 3D by the
    /// grid's rank.
    Depthwise(usize),
}

/// The activation after the local convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Identity.
    None,
    /// SiLU.
    Silu,
    /// Exact GELU.
    Gelu,
}

/// Parameter naming scheme (follows the official checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// VMamba/SRMA-Mamba: `in_proj`, `conv{1,2,3}d`, stacked per-path `x_proj_weight`
    /// `(K, R + 2N, Di)`, `dt_projs_weight` `(K, Di, R)`, `dt_projs_bias` `(K, Di)`,
    /// `A_logs` `(K·Di, N)`, `Ds` `(K·Di)`, `out_norm`, `out_proj`.
    VMamba,
    /// mamba_ssm / Vim: `in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`, `out_proj`;
    /// a second path's own parameters get the suffix `_b` (`A_b_log`, `conv1d_b`, …).
    Mamba,
}

/// Which parameters each path has its own copy of (the rest are shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerPath {
    /// The local convolution.
    pub conv: bool,
    /// x_proj (Δ rank part, B and C).
    pub x_proj: bool,
    /// dt_proj (weight and the Δ bias).
    pub dt_proj: bool,
    /// A (A_log).
    pub a: bool,
    /// D.
    pub d: bool,
}

impl Default for PerPath {
    fn default() -> Self {
        PerPath {
            conv: false,
            x_proj: true,
            dt_proj: true,
            a: true,
            d: true,
        }
    }
}

/// MSVMamba's directional multi-scale layout: some paths on the full grid, the others on a
/// copy downsampled by a strided depthwise convolution; their output is upsampled
/// (bilinear/trilinear, align_corners = false) and added.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiScale {
    /// How many of `paths` (the first ones) scan the full-resolution grid.
    pub full_paths: usize,
    /// Stride of the downsampling convolution.
    pub stride: usize,
    /// Width of the downsampling depthwise convolution (padding (k − 1)/2).
    pub kernel: usize,
}

/// Everything a mixer declaration fixes.
#[derive(Debug, Clone, PartialEq)]
pub struct MixerConfig {
    /// Model width C.
    pub d_model: usize,
    /// State size N.
    pub d_state: usize,
    /// Inner width Di.
    pub d_inner: usize,
    /// Rank of the Δ projection.
    pub dt_rank: usize,
    /// Local convolution.
    pub conv: LocalConv,
    /// Bias in the local convolution.
    pub conv_bias: bool,
    /// Activation after it.
    pub activation: Activation,
    /// Gate with silu(z) (in_proj then produces 2·Di channels).
    pub gate: bool,
    /// LayerNorm over Di before out_proj.
    pub out_norm: bool,
    /// Scan paths (all of the same rank, the grid's).
    pub paths: Vec<ScanPath>,
    /// Merge of the paths' outputs.
    pub merge: Merge,
    /// Per-path parameters.
    pub per_path: PerPath,
    /// Bias in in_proj.
    pub in_proj_bias: bool,
    /// Bias in out_proj.
    pub out_proj_bias: bool,
    /// Parameter names.
    pub naming: Naming,
    /// Optional low-resolution branch.
    pub multi_scale: Option<MultiScale>,
    /// Δ initialisation range and floor, and dt_proj weight scale.
    pub dt_min: f64,
    /// See `dt_min`.
    pub dt_max: f64,
    /// See `dt_min`.
    pub dt_floor: f64,
    /// See `dt_min`.
    pub dt_scale: f64,
    /// LayerNorm ε.
    pub norm_eps: f64,
}

impl MixerConfig {
    /// Defaults of the papers for everything but the sizes and paths: expand 2, Δ rank
    /// ⌈C/16⌉, depthwise conv 3 without bias, SiLU, no gate, LayerNorm, sum merge, VMamba
    /// names and per-path parameters, Δ in [1e-3, 1e-1].
    pub fn new(d_model: usize, d_state: usize, paths: Vec<ScanPath>) -> MixerConfig {
        MixerConfig {
            d_model,
            d_state,
            d_inner: 2 * d_model,
            dt_rank: d_model.div_ceil(16),
            conv: LocalConv::Depthwise(3),
            conv_bias: false,
            activation: Activation::Silu,
            gate: false,
            out_norm: true,
            paths,
            merge: Merge::Sum,
            per_path: PerPath::default(),
            in_proj_bias: false,
            out_proj_bias: false,
            naming: Naming::VMamba,
            multi_scale: None,
            dt_min: 1e-3,
            dt_max: 1e-1,
            dt_floor: 1e-4,
            dt_scale: 1.0,
            norm_eps: 1e-5,
        }
    }

    /// Grid rank (that of the paths).
    pub fn grid_rank(&self) -> usize {
        self.paths.first().map(ScanPath::rank).unwrap_or(1)
    }

    /// Check the combination of options (the macros check the same at compile time).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Argument {
                op: "mixer config",
                msg,
            })
        };
        if self.paths.is_empty() {
            return bad("no scan paths".into());
        }
        let rank = self.grid_rank();
        if self.paths.iter().any(|p| p.rank() != rank) {
            return bad("all paths must walk grids of the same rank".into());
        }
        if self.d_model == 0
            || self.d_inner == 0
            || self.dt_rank == 0
            || self.d_state == 0
            || self.d_state > 64
        {
            return bad(format!(
                "sizes must be positive and d_state <= 64 (got {self:?})"
            ));
        }
        match self.conv {
            LocalConv::Causal1d(k) if rank != 1 || k == 0 => {
                return bad("a causal 1D conv needs a 1D grid and a width".into());
            }
            LocalConv::Depthwise(k) if k % 2 == 0 || rank > 3 => {
                return bad("a depthwise conv needs an odd width".into());
            }
            _ => {}
        }
        if self.naming == Naming::VMamba && self.per_path.conv {
            return bad("per-path convolutions need Mamba names (`conv1d`, `conv1d_b`)".into());
        }
        if self.naming == Naming::Mamba && self.paths.len() > 2 {
            return bad("Mamba names cover one or two paths".into());
        }
        if let Some(ms) = &self.multi_scale
            && (ms.full_paths == 0
                || ms.full_paths >= self.paths.len()
                || ms.stride < 2
                || ms.kernel % 2 == 0
                || self.per_path.conv)
        {
            return bad("multi-scale needs full-resolution and low-resolution paths, stride >= 2, an odd kernel and a shared conv".into());
        }
        Ok(())
    }

    fn suffix(&self, k: usize) -> &'static str {
        if k == 0 { "" } else { "_b" }
    }

    fn conv_name(&self) -> String {
        format!("conv{}d", self.grid_rank())
    }
}

/// A mixer with its parameters.
#[derive(Debug, Clone)]
pub struct Mixer {
    cfg: MixerConfig,
    params: ParamSet,
}

/// Looks parameters up by name during a forward pass.
type Lookup<'a> = &'a dyn Fn(&str) -> Result<Var>;

impl Mixer {
    /// A mixer with freshly initialised parameters (deterministic in `seed`).
    pub fn new(cfg: MixerConfig, device: &Device, dtype: DType, seed: u64) -> Result<Mixer> {
        cfg.validate()?;
        let mut params = ParamSet::new();
        let (c, di, n, r, kp) = (
            cfg.d_model,
            cfg.d_inner,
            cfg.d_state,
            cfg.dt_rank,
            cfg.paths.len(),
        );
        let s = |name: &str| init::derive_seed(seed, name);
        let add_linear =
            |p: &mut ParamSet, name: &str, out: usize, inp: usize, bias: bool| -> Result<()> {
                p.add(
                    format!("{name}.weight"),
                    &init::fan_in_uniform(&[out, inp], s(name), dtype, device)?,
                )?;
                if bias {
                    let b = init::uniform(
                        &[out],
                        1.0 / (inp as f64).sqrt(),
                        s(&format!("{name}.bias")),
                        dtype,
                        device,
                    )?;
                    p.add(format!("{name}.bias"), &b)?;
                }
                Ok(())
            };
        add_linear(
            &mut params,
            "in_proj",
            di * (1 + cfg.gate as usize),
            c,
            cfg.in_proj_bias,
        )?;
        let kernel = match cfg.conv {
            LocalConv::None => None,
            LocalConv::Causal1d(k) | LocalConv::Depthwise(k) => Some(k),
        };
        let convs = if cfg.per_path.conv { kp } else { 1 };
        let mut conv_names = Vec::new();
        if let Some(k) = kernel {
            for p in 0..convs {
                let base = match cfg.naming {
                    Naming::Mamba => format!("{}{}", cfg.conv_name(), cfg.suffix(p)),
                    Naming::VMamba => cfg.conv_name(),
                };
                let mut shape = vec![di, 1];
                shape.extend(std::iter::repeat_n(k, cfg.grid_rank()));
                params.add(
                    format!("{base}.weight"),
                    &init::fan_in_uniform(&shape, s(&base), dtype, device)?,
                )?;
                if cfg.conv_bias {
                    let fan = (k.pow(cfg.grid_rank() as u32)) as f64;
                    params.add(
                        format!("{base}.bias"),
                        &init::uniform(
                            &[di],
                            1.0 / fan.sqrt(),
                            s(&format!("{base}.b")),
                            dtype,
                            device,
                        )?,
                    )?;
                }
                conv_names.push(base);
            }
        }
        if let Some(ms) = &cfg.multi_scale {
            let mut shape = vec![di, 1];
            shape.extend(std::iter::repeat_n(ms.kernel, cfg.grid_rank()));
            params.add(
                "down_conv.weight",
                &init::fan_in_uniform(&shape, s("down_conv"), dtype, device)?,
            )?;
        }
        let kx = if cfg.per_path.x_proj { kp } else { 1 };
        let kd = if cfg.per_path.dt_proj { kp } else { 1 };
        let ka = if cfg.per_path.a { kp } else { 1 };
        let kdd = if cfg.per_path.d { kp } else { 1 };
        let dt_std = (r as f64).powf(-0.5) * cfg.dt_scale;
        match cfg.naming {
            Naming::VMamba => {
                params.add(
                    "x_proj_weight",
                    &init::uniform(
                        &[kx, r + 2 * n, di],
                        1.0 / (di as f64).sqrt(),
                        s("x_proj"),
                        dtype,
                        device,
                    )?,
                )?;
                params.add(
                    "dt_projs_weight",
                    &init::uniform(&[kd, di, r], dt_std, s("dt_projs_weight"), dtype, device)?,
                )?;
                params.add(
                    "dt_projs_bias",
                    &init::dt_bias(
                        &[kd, di],
                        cfg.dt_min,
                        cfg.dt_max,
                        cfg.dt_floor,
                        s("dt_projs_bias"),
                        dtype,
                        device,
                    )?,
                )?;
                params.add("A_logs", &init::a_log(ka * di, n, dtype, device)?)?;
                params.add("Ds", &Tensor::ones(&[kdd * di], dtype, device)?)?;
            }
            Naming::Mamba => {
                for p in 0..kp {
                    let sx = cfg.suffix(p);
                    if p < kx {
                        params.add(
                            format!("x_proj{sx}.weight"),
                            &init::uniform(
                                &[r + 2 * n, di],
                                1.0 / (di as f64).sqrt(),
                                s(&format!("x{p}")),
                                dtype,
                                device,
                            )?,
                        )?;
                    }
                    if p < kd {
                        params.add(
                            format!("dt_proj{sx}.weight"),
                            &init::uniform(&[di, r], dt_std, s(&format!("dtw{p}")), dtype, device)?,
                        )?;
                        params.add(
                            format!("dt_proj{sx}.bias"),
                            &init::dt_bias(
                                &[di],
                                cfg.dt_min,
                                cfg.dt_max,
                                cfg.dt_floor,
                                s(&format!("dtb{p}")),
                                dtype,
                                device,
                            )?,
                        )?;
                    }
                    if p < ka {
                        let name = if p == 0 {
                            "A_log".to_string()
                        } else {
                            "A_b_log".to_string()
                        };
                        params.add(name, &init::a_log(di, n, dtype, device)?)?;
                    }
                    if p < kdd {
                        params.add(format!("D{sx}"), &Tensor::ones(&[di], dtype, device)?)?;
                    }
                }
            }
        }
        if cfg.out_norm {
            params.add("out_norm.weight", &Tensor::ones(&[di], dtype, device)?)?;
            params.add("out_norm.bias", &Tensor::zeros(&[di], dtype, device)?)?;
        }
        add_linear(&mut params, "out_proj", c, di, cfg.out_proj_bias)?;
        Ok(Mixer { cfg, params })
    }

    /// The configuration.
    pub fn config(&self) -> &MixerConfig {
        &self.cfg
    }

    /// The parameters (PyTorch-style names).
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Forward pass on the tape; `x` is `(B, *grid, d_model)`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let get = |name: &str| self.params.expect(name).map(|p| p.var().clone());
        self.run(x, &get)
    }

    /// Forward pass with the parameters replaced by `params` (in [`Mixer::params`] order),
    /// e.g. to check gradients with respect to them.
    pub fn forward_with(&self, x: &Var, params: &[Var]) -> Result<Var> {
        let names: Vec<&str> = self.params.iter().map(|p| p.name()).collect();
        let get = |name: &str| {
            names
                .iter()
                .position(|n| *n == name)
                .and_then(|i| params.get(i).cloned())
                .ok_or_else(|| Error::Argument {
                    op: "Mixer::forward_with",
                    msg: format!("no value for parameter `{name}`"),
                })
        };
        self.run(x, &get)
    }

    fn run(&self, x: &Var, get: Lookup) -> Result<Var> {
        let cfg = &self.cfg;
        let op = "mixer";
        let rank = cfg.grid_rank();
        let shape = x.shape().to_vec();
        if shape.len() != rank + 2 || shape[rank + 1] != cfg.d_model {
            return Err(Error::Shape {
                op,
                msg: format!(
                    "input has shape {shape:?}, expected (batch, {rank} grid axes, {})",
                    cfg.d_model
                ),
            });
        }
        let (b, grid) = (shape[0], shape[1..=rank].to_vec());
        let l: usize = grid.iter().product();
        let di = cfg.d_inner;
        // in_proj on (B·L, C) rows.
        let rows = x.contiguous()?.reshape(&[b * l, cfg.d_model])?;
        let h = linear(&rows, get, "in_proj", cfg.in_proj_bias)?;
        let xin = h.narrow(1, 0, di)?;
        let z = if cfg.gate {
            Some(to_channels_first(&h.narrow(1, di, di)?, b, l, di)?)
        } else {
            None
        };
        let x_cf = to_channels_first(&xin, b, l, di)?; // (B, Di, L)

        let y = match &cfg.multi_scale {
            None if cfg.per_path.conv => {
                // One scan per path, each on its own convolution.
                let mut acc: Option<Var> = None;
                for k in 0..cfg.paths.len() {
                    let u = self.local_conv(&x_cf, &grid, get, k)?;
                    let y = self.scan(
                        &u,
                        &grid,
                        get,
                        k..k + 1,
                        if cfg.out_norm { None } else { z.as_ref() },
                    )?;
                    acc = Some(match acc {
                        Some(a) => a.add(&y)?,
                        None => y,
                    });
                }
                let y = acc.expect("at least one path");
                if cfg.merge == Merge::Mean {
                    y.mul_scalar(1.0 / cfg.paths.len() as f64)?
                } else {
                    y
                }
            }
            None => {
                let u = self.local_conv(&x_cf, &grid, get, 0)?;
                self.scan(
                    &u,
                    &grid,
                    get,
                    0..cfg.paths.len(),
                    if cfg.out_norm { None } else { z.as_ref() },
                )?
            }
            Some(ms) => {
                let u = self.local_conv(&x_cf, &grid, get, 0)?;
                let full = self.scan(&u, &grid, get, 0..ms.full_paths, None)?;
                // Low-resolution branch: strided depthwise conv, scan, upsample.
                let (low, low_grid) = self.downsample(&x_cf, &grid, get, ms)?;
                let low_y =
                    self.scan(&low, &low_grid, get, ms.full_paths..cfg.paths.len(), None)?;
                let mut sh = vec![b, di];
                sh.extend(&low_grid);
                let up = low_y.reshape(&sh)?.resize(
                    &ResizeTo::Size(grid.clone()),
                    ResizeMode::Linear,
                    false,
                    Layout::ChannelsFirst,
                )?;
                let y = full.add(&up.reshape(&[b, di, l])?)?;
                let y = if cfg.merge == Merge::Mean {
                    y.mul_scalar(1.0 / cfg.paths.len() as f64)?
                } else {
                    y
                };
                match (&z, cfg.out_norm) {
                    (Some(z), false) => y.mul(&z.silu()?)?,
                    _ => y,
                }
            }
        };
        // Back to rows (B·L, Di), norm, gate, out_proj.
        let mut y = y.transpose(1, 2)?.contiguous()?.reshape(&[b * l, di])?;
        if cfg.out_norm {
            y = y.layer_norm(
                Some(&get("out_norm.weight")?),
                Some(&get("out_norm.bias")?),
                cfg.norm_eps,
                Layout::ChannelsLast,
            )?;
            if let Some(z) = &z {
                let zr = z.transpose(1, 2)?.contiguous()?.reshape(&[b * l, di])?;
                y = y.mul(&zr.silu()?)?;
            }
        }
        let out = linear(&y, get, "out_proj", cfg.out_proj_bias)?;
        let mut out_shape = vec![b];
        out_shape.extend(&grid);
        out_shape.push(cfg.d_model);
        out.reshape(&out_shape)
    }

    /// `act(conv_k(x))` on `(B, Di, L)`, back as `(B, Di, L)`.
    fn local_conv(&self, x: &Var, grid: &[usize], get: Lookup, k: usize) -> Result<Var> {
        let cfg = &self.cfg;
        let (b, di) = (x.shape()[0], x.shape()[1]);
        let l: usize = grid.iter().product();
        let base = match (cfg.naming, cfg.per_path.conv) {
            (Naming::Mamba, true) => format!("{}{}", cfg.conv_name(), cfg.suffix(k)),
            _ => cfg.conv_name(),
        };
        let mut cf_shape = vec![b, di];
        cf_shape.extend(grid);
        let conv = match cfg.conv {
            LocalConv::None => x.clone(),
            LocalConv::Depthwise(kw) => {
                let spec = ConvSpec::new()
                    .groups(di)
                    .padding(Padding::Symmetric(vec![(kw - 1) / 2]));
                let bias = if cfg.conv_bias {
                    Some(get(&format!("{base}.bias"))?)
                } else {
                    None
                };
                x.reshape(&cf_shape)?
                    .conv(&get(&format!("{base}.weight"))?, bias.as_ref(), &spec)?
                    .reshape(&[b, di, l])?
            }
            LocalConv::Causal1d(kw) => {
                let bias = if cfg.conv_bias {
                    Some(get(&format!("{base}.bias"))?)
                } else {
                    None
                };
                let w = get(&format!("{base}.weight"))?;
                // On a reversed path the convolution is causal along the path: mirror the
                // kernel and pad on the other side.
                let reversed = cfg.per_path.conv
                    && cfg.paths[k].positions(grid)?.first() == Some(&(l - 1))
                    && l > 1;
                let (w, pad) = if reversed {
                    (flip_last(&w, kw)?, Padding::Asymmetric(vec![(0, kw - 1)]))
                } else {
                    (w, Padding::Causal)
                };
                let spec = ConvSpec::new().groups(di).padding(pad);
                x.reshape(&cf_shape)?
                    .conv(&w, bias.as_ref(), &spec)?
                    .reshape(&[b, di, l])?
            }
        };
        match cfg.activation {
            Activation::None => Ok(conv),
            Activation::Silu => conv.silu(),
            Activation::Gelu => conv.gelu(),
        }
    }

    /// The low-resolution branch input: strided depthwise conv and activation.
    fn downsample(
        &self,
        x: &Var,
        grid: &[usize],
        get: Lookup,
        ms: &MultiScale,
    ) -> Result<(Var, Vec<usize>)> {
        let (b, di) = (x.shape()[0], x.shape()[1]);
        let mut cf_shape = vec![b, di];
        cf_shape.extend(grid);
        let spec = ConvSpec::new()
            .groups(di)
            .stride(&[ms.stride])
            .padding(Padding::Symmetric(vec![(ms.kernel - 1) / 2]));
        let y = x
            .reshape(&cf_shape)?
            .conv(&get("down_conv.weight")?, None, &spec)?;
        let low_grid = y.shape()[2..].to_vec();
        let y = y.reshape(&[b, di, low_grid.iter().product()])?;
        let y = match self.cfg.activation {
            Activation::None => y,
            Activation::Silu => y.silu()?,
            Activation::Gelu => y.gelu()?,
        };
        Ok((y, low_grid))
    }

    /// Scan `u` `(B, Di, L)` along `paths[range]`; returns the merged `(B, Di, L)` (sum;
    /// the caller applies a mean).
    fn scan(
        &self,
        u: &Var,
        grid: &[usize],
        get: Lookup,
        range: std::ops::Range<usize>,
        z: Option<&Var>,
    ) -> Result<Var> {
        let cfg = &self.cfg;
        let di = u.shape()[1];
        let (n, r) = (cfg.d_state, cfg.dt_rank);
        let k = range.len();
        // Per-path parameter stacks (K, …), taken for this range of paths.
        let stack = |per_path: bool,
                     vm: &str,
                     mamba: &dyn Fn(usize) -> String,
                     one: &[usize]|
         -> Result<Var> {
            let count = if per_path { cfg.paths.len() } else { 1 };
            match cfg.naming {
                Naming::VMamba => {
                    let all = get(vm)?.reshape(&[&[count][..], one].concat())?;
                    if per_path {
                        all.narrow(0, range.start, k)
                    } else {
                        all.expand(&[&[k][..], one].concat())
                    }
                }
                Naming::Mamba => {
                    let parts = range
                        .clone()
                        .map(|p| {
                            get(&mamba(if per_path { p } else { 0 }))?
                                .reshape(&[&[1][..], one].concat())
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Var::concat(&parts.iter().collect::<Vec<_>>(), 0)
                }
            }
        };
        let sfx = |p: usize| cfg.suffix(p);
        let wx = stack(
            cfg.per_path.x_proj,
            "x_proj_weight",
            &|p| format!("x_proj{}.weight", sfx(p)),
            &[r + 2 * n, di],
        )?;
        let wdt = stack(
            cfg.per_path.dt_proj,
            "dt_projs_weight",
            &|p| format!("dt_proj{}.weight", sfx(p)),
            &[di, r],
        )?;
        let bias = stack(
            cfg.per_path.dt_proj,
            "dt_projs_bias",
            &|p| format!("dt_proj{}.bias", sfx(p)),
            &[di],
        )?;
        let a_log = stack(
            cfg.per_path.a,
            "A_logs",
            &|p| {
                if p == 0 {
                    "A_log".into()
                } else {
                    "A_b_log".into()
                }
            },
            &[di, n],
        )?;
        let d = stack(cfg.per_path.d, "Ds", &|p| format!("D{}", sfx(p)), &[di])?;
        // x_proj: (1, K, R+2N, Di) @ (B, 1, Di, L) → (B, K, R+2N, L).
        let xdbl = wx.unsqueeze(0)?.matmul(&u.unsqueeze(1)?)?;
        let dts = wdt.unsqueeze(0)?.matmul(&xdbl.narrow(2, 0, r)?)?; // (B, K, Di, L)
        let bm = xdbl.narrow(2, r, n)?.unsqueeze(2)?; // (B, K, 1, N, L)
        let cm = xdbl.narrow(2, r + n, n)?.unsqueeze(2)?;
        let a = a_log.exp()?.neg()?;
        let spec = ScanSpec {
            grid: grid.to_vec(),
            paths: cfg.paths[range.clone()].to_vec(),
            merge: Merge::Sum,
        };
        selective_scan(
            ScanVars {
                u,
                delta: &dts,
                a: &a,
                b: &bm,
                c: &cm,
                d: &d,
                delta_bias: &bias,
                z,
            },
            &spec,
        )
    }
}

/// `rows @ W^T (+ b)` for a Linear named `name`.
fn linear(rows: &Var, get: Lookup, name: &str, bias: bool) -> Result<Var> {
    let w = get(&format!("{name}.weight"))?;
    let y = rows.matmul(&w.transpose(0, 1)?)?;
    if bias {
        y.add(&get(&format!("{name}.bias"))?)
    } else {
        Ok(y)
    }
}

/// `(B·L, Di)` rows (a view) to a contiguous `(B, Di, L)`.
fn to_channels_first(rows: &Var, b: usize, l: usize, di: usize) -> Result<Var> {
    rows.contiguous()?
        .reshape(&[b, l, di])?
        .transpose(1, 2)?
        .contiguous()
}

/// Reverse the last axis (width `k`) of a small weight tensor, differentiably: a product
/// with the k × k anti-identity.
fn flip_last(w: &Var, k: usize) -> Result<Var> {
    let mut anti = vec![0.0; k * k];
    for i in 0..k {
        anti[i * k + (k - 1 - i)] = 1.0;
    }
    let p = Var::constant(Tensor::from_f64(
        &anti,
        &[k, k],
        w.value().dtype(),
        w.value().device(),
    )?);
    w.matmul(&p)
}
