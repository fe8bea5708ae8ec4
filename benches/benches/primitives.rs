//! Elementwise, matmul and reduction throughput.
//!
//! - `elementwise/add`: c = a + b, 12 bytes per f32 element moved (read a, b; write c).
//! - `elementwise/chain`: y = gelu(x·s + b) as three launches (mul_scalar, add, gelu), each
//!   a full pass: 4 + 4 + 4 + 4 + 4 + 4 + 4 = 28 bytes per element in total.
//! - `matmul/N`: N×N×N f32 product; throughput counts 2N³ FLOP as "elements".
//! - `reduce/<case>`: f32 sums over a channels-last activation `[rows, 96]` (rows = 2 × 56 ×
//!   56 × 16, the (2, 96, 56, 56, 16) stage): over the rows (`rows`: a bias gradient of a
//!   channels-last or linear layer), over each row (`row_each`: 96 contiguous values), and
//!   over batch and space of the channels-first `[2, 96, 50176]` (`cf_bias`); throughput
//!   counts the bytes read.
//!
//! - `layout/cf_to_cl_<f32|bf16>/N`: channels-first → channels-last copies of the conv
//!   benchmark activations (a batched transpose each); throughput counts the bytes read.
//! - `mma_peak/<bf16|tf32>`: tensor-core products from registers only (the `mma.sync`
//!   ceiling the pipelined convolutions work under); throughput counts FLOPs as elements.
//!
//! Sizes are scaled down on Vulkan (which in CI is a CPU).

#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented functions

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ssm_benches::{device, is_gpu, time_batched};
use ssm_runtime::{DType, Tensor};

fn elementwise(c: &mut Criterion) {
    let d = device();
    let sizes: &[usize] = if is_gpu(&d) {
        &[1 << 20, 1 << 24, 1 << 27]
    } else {
        &[1 << 14, 1 << 18]
    };
    let mut g = c.benchmark_group("elementwise");
    for &n in sizes {
        let a = Tensor::rand_normal(&[n], 0.0, 1.0, 1, DType::F32, &d).unwrap();
        let b = Tensor::rand_normal(&[n], 0.0, 1.0, 2, DType::F32, &d).unwrap();
        g.throughput(Throughput::Bytes(12 * n as u64));
        g.bench_with_input(BenchmarkId::new("add_f32", n), &n, |bench, _| {
            bench.iter_custom(|iters| time_batched(&d, iters, || drop(a.add(&b).unwrap())))
        });
        g.throughput(Throughput::Bytes(28 * n as u64));
        g.bench_with_input(BenchmarkId::new("chain_f32", n), &n, |bench, _| {
            bench.iter_custom(|iters| {
                time_batched(&d, iters, || {
                    drop(a.mul_scalar(1.5).unwrap().add(&b).unwrap().gelu().unwrap())
                })
            })
        });
    }
    g.finish();
}

fn matmul(c: &mut Criterion) {
    let d = device();
    let sizes: &[usize] = if is_gpu(&d) {
        &[1024, 2048, 4096, 8192]
    } else {
        &[64, 256]
    };
    let mut g = c.benchmark_group("matmul");
    for &n in sizes {
        let a = Tensor::rand_normal(&[n, n], 0.0, 1.0, 3, DType::F32, &d).unwrap();
        let b = Tensor::rand_normal(&[n, n], 0.0, 1.0, 4, DType::F32, &d).unwrap();
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        g.bench_with_input(BenchmarkId::new("f32_flop", n), &n, |bench, _| {
            bench.iter_custom(|iters| time_batched(&d, iters, || drop(a.matmul(&b).unwrap())))
        });
    }
    g.finish();
}

fn reduce(c: &mut Criterion) {
    let d = device();
    // Rows of the (2, 96, 56, 56, 16) activation; a sixteenth on Vulkan.
    let rows = if is_gpu(&d) {
        2 * 56 * 56 * 16
    } else {
        2 * 56 * 56
    };
    let channels = 96;
    let x = Tensor::rand_normal(&[rows, channels], 0.0, 1.0, 5, DType::F32, &d).unwrap();
    let cf = Tensor::rand_normal(&[2, channels, rows / 2], 0.0, 1.0, 6, DType::F32, &d).unwrap();
    let mut g = c.benchmark_group("reduce");
    g.throughput(Throughput::Bytes(4 * (rows * channels) as u64));
    let cases: [(&str, &Tensor, &[isize]); 3] = [
        ("rows", &x, &[0]),
        ("row_each", &x, &[1]),
        ("cf_bias", &cf, &[0, 2]),
    ];
    for (name, t, axes) in cases {
        g.bench_function(BenchmarkId::new(name, rows * channels), |bench| {
            bench.iter_custom(|iters| time_batched(&d, iters, || drop(t.sum(axes, false).unwrap())))
        });
    }
    g.finish();
}

/// Channels-first → channels-last copies (one batched transpose each) of the convolution
/// benchmark activations: f32 (2, 192, 8, 28, 28) and bf16 (2, 96, 16, 56, 56); a
/// sixteenth of the spatial size on Vulkan. Throughput counts the bytes read.
fn layout(c: &mut Criterion) {
    let d = device();
    let scale = if is_gpu(&d) { 1 } else { 4 };
    let mut g = c.benchmark_group("layout");
    for (shape, dtype, name) in [
        (
            [2, 192, 8, 28 / scale, 28 / scale],
            DType::F32,
            "cf_to_cl_f32",
        ),
        (
            [2, 96, 16, 56 / scale, 56 / scale],
            DType::BF16,
            "cf_to_cl_bf16",
        ),
    ] {
        if dtype == DType::BF16 && !d.has_bf16() {
            continue;
        }
        let x = Tensor::rand_normal(&shape, 0.0, 1.0, 7, DType::F32, &d)
            .and_then(|x| x.to_dtype(dtype))
            .unwrap();
        let n = x.numel();
        g.throughput(Throughput::Bytes((n * dtype.size()) as u64));
        g.bench_function(BenchmarkId::new(name, n), |bench| {
            bench.iter_custom(|iters| {
                time_batched(&d, iters, || {
                    drop(x.permute(&[0, 2, 3, 4, 1]).unwrap().contiguous().unwrap())
                })
            })
        });
    }
    g.finish();
}

/// The `mma.sync` ceiling (`ssm_runtime::kernels::mma_probe`): products from registers
/// only, 4 cubes of 8 warps per multiprocessor. Devices without `mma.sync` skip it.
fn mma_peak(c: &mut Criterion) {
    use ssm_runtime::kernels::mma_probe::{mma_peak, mma_peak_flops};
    let d = device();
    let Some(sms) = d.multiprocessors() else {
        return;
    };
    let (cubes, reps) = (4 * sms, 256);
    let mut g = c.benchmark_group("mma_peak");
    for (name, dtype) in [("bf16", DType::BF16), ("tf32", DType::F32)] {
        if !d.has_pipelined_mma(dtype) {
            continue;
        }
        g.throughput(Throughput::Elements(mma_peak_flops(dtype, cubes, reps)));
        g.bench_function(BenchmarkId::new(name, "flop"), |bench| {
            bench.iter_custom(|iters| {
                time_batched(&d, iters, || {
                    drop(mma_peak(&d, dtype, cubes, reps, 1.0).unwrap())
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1));
    targets = elementwise, matmul, reduce, layout, mma_peak
}
criterion_main!(benches);
