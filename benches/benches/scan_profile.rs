#![allow(missing_docs)]

//! One forward and one backward of a chosen scan shape, for a profiler (`ncu`):
//!
//!     bench-scan_profile [mamba1d|srma_view]
//!
//! Runs a warm-up pass first so that kernel compilation stays out of the profile.

use ssm_benches::device;
use ssm_runtime::scan::{
    ScanInputs, ScanOptions, ScanSpec, presets, selective_scan_bwd, selective_scan_fwd,
};
use ssm_runtime::{DType, Tensor};

fn main() {
    let which = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "mamba1d".into());
    let d = device();
    let (b, di, n, grid, paths, gate, dpp) = match which.as_str() {
        "srma_view" => (2, 96, 1, vec![112, 3584], presets::cross2d(), false, true),
        _ => (8, 1536, 16, vec![2048], presets::forward_1d(), true, false),
    };
    let l: usize = grid.iter().product();
    let k = paths.len();
    let r = |s: &[usize], lo: f64, hi: f64, seed| {
        Tensor::rand_uniform(s, lo, hi, seed, DType::F32, &d).unwrap()
    };
    let delta_shape = if dpp {
        vec![b, k, di, l]
    } else {
        vec![b, di, l]
    };
    let t = [
        r(&[b, di, l], -1.0, 1.0, 1),
        r(&delta_shape, -4.0, -1.0, 2),
        r(&[k, di, n], -2.0, -0.1, 3),
        r(&[b, k, 1, n, l], -1.0, 1.0, 4),
        r(&[b, k, 1, n, l], -1.0, 1.0, 5),
        r(&[k, di], -1.0, 1.0, 6),
        r(&[k, di], -1.0, 0.0, 7),
        r(&[b, di, l], -1.0, 1.0, 8),
    ];
    let x = ScanInputs {
        u: &t[0],
        delta: &t[1],
        a: &t[2],
        b: &t[3],
        c: &t[4],
        d: &t[5],
        delta_bias: &t[6],
        z: gate.then_some(&t[7]),
    };
    let spec = ScanSpec::new(&grid, paths);
    for _ in 0..2 {
        let (out, saved) = selective_scan_fwd(&x, &spec, &ScanOptions::default()).unwrap();
        let g = selective_scan_bwd(&x, &spec, &saved, &out.ones_like().unwrap()).unwrap();
        d.sync().unwrap();
        drop(g);
    }
    eprintln!("profiled {which}");
}
