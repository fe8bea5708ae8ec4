//! The f64 host oracle of the scan engine: loops over batches, channels and paths
//! explicitly, walking each path through [`ScanPath::positions`](super::ScanPath::positions). Slow and simple by
//! design; tests compare the kernels against it.

use crate::error::Result;
use crate::scan::{Merge, ScanSpec};

/// Host copies of the scan inputs (row-major, shapes as in [`super::ScanInputs`]).
#[derive(Debug, Clone)]
pub struct HostScan {
    /// Batch size.
    pub batch: usize,
    /// Channels Di.
    pub channels: usize,
    /// State size N.
    pub state: usize,
    /// B/C groups per path.
    pub groups: usize,
    /// `(B, Di, L)`.
    pub u: Vec<f64>,
    /// `(B, Di, L)` or `(B, K, Di, L)`.
    pub delta: Vec<f64>,
    /// Whether `delta` is per path.
    pub delta_per_path: bool,
    /// `(K, Di, N)`.
    pub a: Vec<f64>,
    /// `(B, K, G, N, L)`.
    pub b: Vec<f64>,
    /// `(B, K, G, N, L)`.
    pub c: Vec<f64>,
    /// `(K, Di)`.
    pub d: Vec<f64>,
    /// `(K, Di)`.
    pub delta_bias: Vec<f64>,
    /// `(B, Di, L)` gate.
    pub z: Option<Vec<f64>>,
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// The merged (and gated) output `(B, Di, L)`.
pub fn selective_scan_ref(x: &HostScan, spec: &ScanSpec) -> Result<Vec<f64>> {
    let l: usize = spec.grid.iter().product();
    let k_paths = spec.paths.len();
    let (bsz, di, n, g) = (x.batch, x.channels, x.state, x.groups);
    let mut out = vec![0.0; bsz * di * l];
    for (k, path) in spec.paths.iter().enumerate() {
        let positions = path.positions(&spec.grid)?;
        for b in 0..bsz {
            for d in 0..di {
                let group = d / (di / g);
                let mut h = vec![0.0; n];
                for &p in &positions {
                    let ui = (b * di + d) * l + p;
                    let di_idx = if x.delta_per_path {
                        ((b * k_paths + k) * di + d) * l + p
                    } else {
                        ui
                    };
                    let dt = softplus(x.delta[di_idx] + x.delta_bias[k * di + d]);
                    let mut y = x.d[k * di + d] * x.u[ui];
                    for (s, hs) in h.iter_mut().enumerate() {
                        let bc = (((b * k_paths + k) * g + group) * n + s) * l + p;
                        let a = (dt * x.a[(k * di + d) * n + s]).exp();
                        *hs = a * *hs + dt * x.b[bc] * x.u[ui];
                        y += x.c[bc] * *hs;
                    }
                    out[ui] += y;
                }
            }
        }
    }
    let scale = match spec.merge {
        Merge::Sum => 1.0,
        Merge::Mean => 1.0 / k_paths as f64,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o *= scale;
        if let Some(z) = &x.z {
            *o *= silu(z[i]);
        }
    }
    Ok(out)
}
