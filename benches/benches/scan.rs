#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented functions

//! Selective-scan benchmarks at the shapes, forward and forward+backward.
//!
//! Throughput counts the bytes that must move (each input read once, each output written
//! once; f32): forward reads u, Δ (per path where the model has one), B, C, z and writes
//! the output; backward reads u, Δ, B, C, z, dout and writes du, dΔ, dB, dC, dz. Each shape
//! also prints a `SUMMARY` line with the median time, the effective bandwidth and the
//! fraction of the memory floor at 3.0 TB/s (the H100's measured copy bandwidth).
//! `SSM_BENCH_SUMMARY_ONLY=1` prints only those lines (a quick run on the GPU machine).
//! `SSM_SCAN_SHAPES=a,b` keeps the shapes whose name contains one of the words, and
//! `SSM_SCAN_VARIANTS="label:key=value,...;..."` times each shape under each set of
//! [`ScanOptions`] (keys `items`, `warps`, `seg`, `plane`, `atomics`, `fast_exp`, `tiled`
//! with values 0/1 or numbers, `tile=AxBxC`), one `SUMMARY` line per variant.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ssm_benches::{device, is_gpu, time_batched};
use ssm_runtime::scan::{
    ScanInputs, ScanOptions, ScanPath, ScanSpec, presets, selective_scan_bwd, selective_scan_fwd,
};
use ssm_runtime::{DType, Device, Tensor};

struct Shape {
    name: &'static str,
    batch: usize,
    channels: usize,
    state: usize,
    grid: Vec<usize>,
    paths: Vec<ScanPath>,
    gate: bool,
    delta_per_path: bool,
}

fn shapes(gpu: bool) -> Vec<Shape> {
    let s = |name, batch, channels, state, grid: &[usize], paths, gate, dpp| Shape {
        name,
        batch,
        channels,
        state,
        grid: grid.to_vec(),
        paths,
        gate,
        delta_per_path: dpp,
    };
    if gpu {
        vec![
            s(
                "mamba1d_8x1536x2048_n16",
                8,
                1536,
                16,
                &[2048],
                presets::forward_1d(),
                true,
                false,
            ),
            s(
                "mamba1d_1x4096x65536_n16",
                1,
                4096,
                16,
                &[65536],
                presets::forward_1d(),
                true,
                false,
            ),
            s(
                "srma_view_k4_2x96x112x3584_n1",
                2,
                96,
                1,
                &[112, 3584],
                presets::cross2d(),
                false,
                true,
            ),
            s(
                "srma_abss_k12_2x96x112x112x32_n1",
                2,
                96,
                1,
                &[112, 112, 32],
                presets::srma_abss(),
                false,
                true,
            ),
        ]
    } else {
        vec![
            s(
                "mamba1d_2x16x512_n16",
                2,
                16,
                16,
                &[512],
                presets::forward_1d(),
                true,
                false,
            ),
            s(
                "srma_view_k4_1x8x16x64_n1",
                1,
                8,
                1,
                &[16, 64],
                presets::cross2d(),
                false,
                true,
            ),
        ]
    }
}

struct Data {
    t: Vec<Tensor>,
    spec: ScanSpec,
    fwd_bytes: u64,
    bwd_bytes: u64,
}

impl Data {
    fn new(sh: &Shape, d: &Device) -> Data {
        let l: usize = sh.grid.iter().product();
        let k = sh.paths.len();
        let (b, di, n) = (sh.batch, sh.channels, sh.state);
        let r = |shape: &[usize], lo: f64, hi: f64, seed: u64| {
            Tensor::rand_uniform(shape, lo, hi, seed, DType::F32, d).unwrap()
        };
        let delta_shape = if sh.delta_per_path {
            vec![b, k, di, l]
        } else {
            vec![b, di, l]
        };
        let mut t = vec![
            r(&[b, di, l], -1.0, 1.0, 1),
            r(&delta_shape, -4.0, -1.0, 2),
            r(&[k, di, n], -2.0, -0.1, 3),
            r(&[b, k, 1, n, l], -1.0, 1.0, 4),
            r(&[b, k, 1, n, l], -1.0, 1.0, 5),
            r(&[k, di], -1.0, 1.0, 6),
            r(&[k, di], -1.0, 0.0, 7),
        ];
        if sh.gate {
            t.push(r(&[b, di, l], -1.0, 1.0, 8));
        }
        let e = |x: usize| 4 * x as u64;
        let (io, dl, bc) = (
            e(b * di * l),
            e(delta_shape.iter().product()),
            e(b * k * n * l),
        );
        let z = if sh.gate { io } else { 0 };
        // fwd: u, Δ, B, C, z in; out.   bwd: u, Δ, B, C, z, dout in; du, dΔ, dB, dC, dz out.
        let fwd_bytes = io + dl + 2 * bc + z + io;
        let bwd_bytes = (io + dl + 2 * bc + z + io) + (io + dl + 2 * bc + z);
        Data {
            t,
            spec: ScanSpec::new(&sh.grid, sh.paths.clone()),
            fwd_bytes,
            bwd_bytes,
        }
    }

    fn inputs(&self) -> ScanInputs<'_> {
        let t = &self.t;
        ScanInputs {
            u: &t[0],
            delta: &t[1],
            a: &t[2],
            b: &t[3],
            c: &t[4],
            d: &t[5],
            delta_bias: &t[6],
            z: t.get(7),
        }
    }
}

fn summary(name: &str, what: &str, secs: f64, bytes: u64) {
    let floor = bytes as f64 / 3.0e12;
    eprintln!(
        "SUMMARY {name} {what}: {:.3} ms, {:.0} GB/s effective, memory floor {:.3} ms, {:.0}% of floor speed",
        secs * 1e3,
        bytes as f64 / secs / 1e9,
        floor * 1e3,
        100.0 * floor / secs
    );
}

/// Parse `SSM_SCAN_VARIANTS` (see the module docs); the default options alone otherwise.
fn variants() -> Vec<(String, ScanOptions)> {
    let Ok(spec) = std::env::var("SSM_SCAN_VARIANTS") else {
        return vec![(String::new(), ScanOptions::default())];
    };
    spec.split(';')
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let (label, kvs) = v.split_once(':').unwrap_or((v, ""));
            let mut o = ScanOptions::default();
            for kv in kvs.split(',').filter(|s| !s.is_empty()) {
                let (key, val) = kv.split_once('=').expect("key=value");
                let num = || val.parse::<usize>().expect("a number");
                let flag = || val == "1";
                match key {
                    "items" => o.items = Some(num()),
                    "warps" => o.warps = Some(num()),
                    "seg" => o.segment_len = Some(num()),
                    "plane" => o.plane = Some(flag()),
                    "atomics" => o.atomics = Some(flag()),
                    "fast_exp" => o.fast_exp = Some(flag()),
                    "tiled" => o.tiled = Some(flag()),
                    "tile" => {
                        let t: Vec<usize> = val.split('x').map(|x| x.parse().unwrap()).collect();
                        o.tile = Some([t[0], t[1], t[2]]);
                    }
                    other => panic!("unknown scan option {other}"),
                }
            }
            (format!(" [{}]", label.trim()), o)
        })
        .collect()
}

fn scan(c: &mut Criterion) {
    let d = device();
    let gpu = is_gpu(&d);
    let mut g = c.benchmark_group("scan");
    g.sample_size(10);
    let keep = std::env::var("SSM_SCAN_SHAPES").ok();
    for sh in shapes(gpu) {
        if let Some(k) = &keep
            && !k.split(',').any(|w| sh.name.contains(w))
        {
            continue;
        }
        let data = Data::new(&sh, &d);
        let x = data.inputs();
        let reps = if gpu { 10 } else { 2 };
        for (label, opts) in variants() {
            let fwd = || drop(selective_scan_fwd(&x, &data.spec, &opts).unwrap());
            let (out, saved) = match selective_scan_fwd(&x, &data.spec, &opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("SUMMARY {}{label}: skipped ({e})", sh.name);
                    continue;
                }
            };
            let dout = out.ones_like().unwrap();
            let fwd_bwd = || {
                let (_, s) = selective_scan_fwd(&x, &data.spec, &opts).unwrap();
                drop(selective_scan_bwd(&x, &data.spec, &s, &dout).unwrap());
            };
            drop(saved);
            let name = format!("{}{label}", sh.name);
            summary(
                &name,
                "fwd",
                time_batched(&d, reps, fwd).as_secs_f64() / reps as f64,
                data.fwd_bytes,
            );
            summary(
                &name,
                "fwd+bwd",
                time_batched(&d, reps, fwd_bwd).as_secs_f64() / reps as f64,
                data.fwd_bytes + data.bwd_bytes,
            );
        }
        let opts = ScanOptions::default();
        let fwd = || drop(selective_scan_fwd(&x, &data.spec, &opts).unwrap());
        let (out, _) = selective_scan_fwd(&x, &data.spec, &opts).unwrap();
        let dout = out.ones_like().unwrap();
        let fwd_bwd = || {
            let (_, s) = selective_scan_fwd(&x, &data.spec, &opts).unwrap();
            drop(selective_scan_bwd(&x, &data.spec, &s, &dout).unwrap());
        };
        if std::env::var_os("SSM_BENCH_SUMMARY_ONLY").is_some() {
            continue;
        }
        g.throughput(Throughput::Bytes(data.fwd_bytes));
        g.bench_with_input(BenchmarkId::new("fwd", sh.name), &(), |b, _| {
            b.iter_custom(|n| time_batched(&d, n, fwd))
        });
        g.throughput(Throughput::Bytes(data.fwd_bytes + data.bwd_bytes));
        g.bench_with_input(BenchmarkId::new("fwd_bwd", sh.name), &(), |b, _| {
            b.iter_custom(|n| time_batched(&d, n, fwd_bwd))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = scan
}
criterion_main!(benches);
