//! A declared block: one mixer over the input grid, or several mixers over views of a
//! volume whose outputs are summed (SRMA-Mamba's ABSS).

use ssm_autodiff::Var;
use ssm_runtime::{DType, Device, Error, Result};

use crate::dsl::mixer::{Mixer, MixerConfig};
use crate::dsl::params::ParamSet;

/// How the input is presented to the mixers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Views {
    /// One mixer over the input's own grid.
    Single,
    /// SRMA-Mamba's ABSS on a `(B, h, w, d, C)` volume: three mixers (`sh`, `sw`, `sd`),
    /// each over one 2D view — `h × (w·d)`, `w × (h·d)`, `d × (h·w)` — summed.
    Abss,
}

/// A block's full declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    /// The mixer (for `Abss`, each branch's; its paths walk the 2D view).
    pub mixer: MixerConfig,
    /// How the input is presented.
    pub views: Views,
}

/// ABSS branches: name, permutation of (h, w, d) that puts the view's row axis first.
const ABSS: [(&str, [usize; 3]); 3] = [("sh", [0, 1, 2]), ("sw", [1, 0, 2]), ("sd", [2, 0, 1])];

/// A block with its parameters.
#[derive(Debug, Clone)]
pub struct Block {
    cfg: BlockConfig,
    mixers: Vec<Mixer>,
    params: ParamSet,
}

impl Block {
    /// A block with freshly initialised parameters.
    pub fn new(cfg: BlockConfig, device: &Device, dtype: DType, seed: u64) -> Result<Block> {
        let mut params = ParamSet::new();
        let mixers = match cfg.views {
            Views::Single => {
                let m = Mixer::new(cfg.mixer.clone(), device, dtype, seed)?;
                params = m.params().clone();
                vec![m]
            }
            Views::Abss => {
                if cfg.mixer.grid_rank() != 2 {
                    return Err(Error::Argument {
                        op: "block",
                        msg: "ABSS views need 2D paths (they walk each view)".into(),
                    });
                }
                let mut v = Vec::new();
                for (i, (name, _)) in ABSS.iter().enumerate() {
                    let m = Mixer::new(
                        cfg.mixer.clone(),
                        device,
                        dtype,
                        seed.wrapping_add(i as u64 * 0x1000_0001),
                    )?;
                    params.extend_prefixed(name, m.params())?;
                    v.push(m);
                }
                v
            }
        };
        Ok(Block {
            cfg,
            mixers,
            params,
        })
    }

    /// The declaration.
    pub fn config(&self) -> &BlockConfig {
        &self.cfg
    }

    /// Parameters with their PyTorch-style names.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Forward pass on the tape (`x` channels-last).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        match self.cfg.views {
            Views::Single => self.mixers[0].forward(x),
            Views::Abss => self.abss(x, |i, v| self.mixers[i].forward(v)),
        }
    }

    /// Forward pass with the parameters replaced by `params` (in [`Block::params`] order).
    pub fn forward_with(&self, x: &Var, params: &[Var]) -> Result<Var> {
        if params.len() != self.params.len() {
            return Err(Error::Argument {
                op: "Block::forward_with",
                msg: format!(
                    "{} parameter values for {} parameters",
                    params.len(),
                    self.params.len()
                ),
            });
        }
        let mut start = 0;
        let slices: Vec<&[Var]> = self
            .mixers
            .iter()
            .map(|m| {
                let s = &params[start..start + m.params().len()];
                start += m.params().len();
                s
            })
            .collect();
        match self.cfg.views {
            Views::Single => self.mixers[0].forward_with(x, slices[0]),
            Views::Abss => self.abss(x, |i, v| self.mixers[i].forward_with(v, slices[i])),
        }
    }

    fn abss(&self, x: &Var, branch: impl Fn(usize, &Var) -> Result<Var>) -> Result<Var> {
        let s = x.shape().to_vec();
        if s.len() != 5 {
            return Err(Error::Shape {
                op: "abss",
                msg: format!("input has shape {s:?}, expected (B, h, w, d, C)"),
            });
        }
        let (b, c) = (s[0], s[4]);
        let mut acc: Option<Var> = None;
        for (i, (_, perm)) in ABSS.iter().enumerate() {
            let dims = [s[1 + perm[0]], s[1 + perm[1]], s[1 + perm[2]]];
            // (B, a, b, c, C) → the view (B, a, b·c, C).
            let full_perm = [0, 1 + perm[0], 1 + perm[1], 1 + perm[2], 4];
            let view = x.permute(&full_perm)?.contiguous()?.reshape(&[
                b,
                dims[0],
                dims[1] * dims[2],
                c,
            ])?;
            let y = branch(i, &view)?.reshape(&[b, dims[0], dims[1], dims[2], c])?;
            let mut inv = [0usize; 5];
            for (j, &p) in full_perm.iter().enumerate() {
                inv[p] = j;
            }
            let y = y.permute(&inv)?;
            acc = Some(match acc {
                Some(a) => a.add(&y)?,
                None => y.contiguous()?,
            });
        }
        Ok(acc.expect("three branches"))
    }
}
