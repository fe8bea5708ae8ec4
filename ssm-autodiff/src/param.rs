//! Trainable parameters.

use std::sync::Arc;

use ssm_runtime::{Result, Tensor};

use crate::var::Var;

/// A named trainable tensor. Its leaf [`Var`] keeps one identity for life, so gradients
/// of every step are found under the same id; optimizers update the buffer in place.
#[derive(Clone, Debug)]
pub struct Param {
    name: Arc<str>,
    var: Var,
}

impl Param {
    /// A parameter holding a private contiguous copy of `value`.
    pub fn new(name: impl Into<String>, value: &Tensor) -> Result<Param> {
        Ok(Param {
            name: Arc::from(name.into()),
            var: Var::leaf(value.deep_clone()?),
        })
    }

    /// The same parameter (same storage and gradient key) under another name.
    pub fn renamed(p: &Param, name: impl Into<String>) -> Param {
        Param {
            name: Arc::from(name.into()),
            var: p.var.clone(),
        }
    }

    /// Dotted name, e.g. `layers.0.mixer.in_proj.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leaf to use in a forward pass.
    pub fn var(&self) -> &Var {
        &self.var
    }

    /// Current value.
    pub fn value(&self) -> &Tensor {
        self.var.value()
    }

    /// Stable gradient key.
    pub fn id(&self) -> u64 {
        self.var.id().expect("parameters are leaves")
    }

    /// Overwrite the value in place (e.g. when loading weights); shapes must match.
    pub fn set(&self, value: &Tensor) -> Result<()> {
        self.value().assign(value)
    }
}
