//! Named parameter sets: ordered, unique PyTorch-style dotted names, safetensors I/O.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use ssm_autodiff::Param;
use ssm_runtime::{DType, Error, Result, Tensor};

/// An ordered set of named parameters (a module's `state_dict`).
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    params: Vec<Param>,
}

fn io_err(op: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Argument {
        op,
        msg: format!("{}: {e}", path.display()),
    }
}

impl ParamSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a parameter holding a copy of `value`; names must be unique.
    pub fn add(&mut self, name: impl Into<String>, value: &Tensor) -> Result<Param> {
        let name = name.into();
        if self.get(&name).is_some() {
            return Err(Error::Argument {
                op: "ParamSet::add",
                msg: format!("parameter `{name}` is defined twice"),
            });
        }
        let p = Param::new(name, value)?;
        self.params.push(p.clone());
        Ok(p)
    }

    /// Append another set under `prefix.` (e.g. a sub-module).
    pub fn extend_prefixed(&mut self, prefix: &str, other: &ParamSet) -> Result<()> {
        for p in other.iter() {
            let name = format!("{prefix}.{}", p.name());
            if self.get(&name).is_some() {
                return Err(Error::Argument {
                    op: "ParamSet::extend_prefixed",
                    msg: format!("parameter `{name}` is defined twice"),
                });
            }
            self.params.push(Param::renamed(p, name));
        }
        Ok(())
    }

    /// Look a parameter up by name.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name() == name)
    }

    /// A parameter that must exist (generated code uses this).
    pub fn expect(&self, name: &str) -> Result<&Param> {
        self.get(name).ok_or_else(|| Error::Argument {
            op: "ParamSet",
            msg: format!("no parameter `{name}`"),
        })
    }

    /// Parameters in definition order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    /// The parameters as a slice (what optimizers take).
    pub fn as_slice(&self) -> &[Param] {
        &self.params
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Total number of scalar values.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.value().numel()).sum()
    }

    /// Write every parameter to a safetensors file. The file is written to a temporary
    /// name, synced and renamed into place, so a crash never leaves a truncated file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let op = "save weights";
        let mut blobs = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let v = p.value();
            let (dtype, bytes) = match v.dtype() {
                DType::F32 => (
                    safetensors::Dtype::F32,
                    v.to_vec::<f32>()?
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
                DType::F64 => (
                    safetensors::Dtype::F64,
                    v.to_vec::<f64>()?
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect(),
                ),
                other => {
                    return Err(Error::DType {
                        op,
                        msg: format!("{} is {other}", p.name()),
                    });
                }
            };
            blobs.push((p.name().to_string(), dtype, v.shape().to_vec(), bytes));
        }
        let views = blobs
            .iter()
            .map(|(n, d, s, b)| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| io_err(op, path, e))
            })
            .collect::<Result<Vec<_>>>()?;
        let data = safetensors::serialize(views, None).map_err(|e| io_err(op, path, e))?;
        let tmp = path.with_extension("safetensors.partial");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(op, &tmp, e))?;
        f.write_all(&data)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err(op, &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(op, path, e))
    }

    /// Load parameters from a safetensors file: every parameter of the set must be present
    /// with its exact shape (values are converted to the parameter's dtype). Returns the
    /// names in the file that the set does not use.
    pub fn load(&self, path: &Path) -> Result<Vec<String>> {
        let op = "load weights";
        let data = std::fs::read(path).map_err(|e| io_err(op, path, e))?;
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| io_err(op, path, e))?;
        let mut used = HashSet::new();
        for p in &self.params {
            let t = st
                .tensor(p.name())
                .map_err(|_| io_err(op, path, format!("missing parameter `{}`", p.name())))?;
            if t.shape() != p.value().shape() {
                return Err(io_err(
                    op,
                    path,
                    format!(
                        "`{}` has shape {:?} in the file but {:?} in the model",
                        p.name(),
                        t.shape(),
                        p.value().shape()
                    ),
                ));
            }
            let values: Vec<f64> = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                    .collect(),
                safetensors::Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                other => {
                    return Err(io_err(
                        op,
                        path,
                        format!("`{}` has unsupported dtype {other:?}", p.name()),
                    ));
                }
            };
            let src = Tensor::from_f64(&values, t.shape(), p.value().dtype(), p.value().device())?;
            p.set(&src)?;
            used.insert(p.name().to_string());
        }
        Ok(st
            .names()
            .into_iter()
            .filter(|n| !used.contains(*n))
            .map(str::to_string)
            .collect())
    }
}
