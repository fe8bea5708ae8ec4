//! Model-op throughput on the shapes that dominate SRMA-Mamba (compare with
//! `benches/torch_model_ops.py`, which times the same shapes with PyTorch/cuDNN).
//!
//! - `conv3d/<shape>/<kernel>_<layout>/<pass>`: 3×3×3 convolution C→C, "same" padding,
//!   shapes `(N, C, H, W, D)` = (2, 48, 112, 112, 32), (2, 96, 56, 56, 16),
//!   (2, 192, 28, 28, 8); kernels `gemm` (own implicit GEMM, exact f32), `tf32` (own
//!   tensor-core GEMM, TF32 fragments), `bf16` (bf16 x, w and dy under `Auto`: the
//!   tensor-core GEMM with bf16 fragments where the device has them; f32 accumulation and
//!   f32 results — PyTorch's `bf16` writes bf16 results) and `cubek` (cubek-convolution,
//!   TF32, channels-last, for comparison); passes `fwd`,
//!   `bwd_data`, `bwd_weight` (weight gradient including the sum over splits), and for the
//!   `bf16` and `tf32` kernels `bwd` (both gradients through `Tensor::conv_backward`, as a
//!   training step takes them: a channels-first dy is converted once for both). Weights
//!   follow the layout as PyTorch's do: contiguous `[C_out, C_in, 3, 3, 3]` for `cf`,
//!   channels-last memory (`[C_out, 3, 3, 3, C_in]`, `channels_last_3d`) viewed in that
//!   axis order for `cl`. Throughput counts 2·N·C²·27·H·W·D FLOP a pass as "elements".
//! - `norm/<op>/<pass>` on (2, 48, 112, 112, 32): LayerNorm over channels with affine
//!   (`ln_cl` channels-last, `ln_cf` channels-first) and InstanceNorm without affine
//!   (`in_cf`, `in_cl`); `bwd` computes every gradient (x, and weight and bias for
//!   LayerNorm). Throughput counts the bytes of one read of x and one write of y (fwd) or
//!   reads of x and dy and one write of dx (bwd).
//!
//! Sizes are scaled down on Vulkan (which in CI is a CPU). A case whose benches the
//! command line's filter cannot match skips its setup too (operands, and the conv
//! availability check that runs all three passes once): on an H200 the setup of every case
//! took about 50 s, paid by each filtered call.

#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented functions

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use regex::Regex;
use ssm_benches::{device, is_gpu, time_batched};
use ssm_runtime::{ConvImpl, ConvSpec, DType, Layout, Norm, NormNeeds, Tensor};

/// Criterion's bench filter from the command line: its first positional argument (a regex
/// searched in each bench id, or the whole id with `--exact`).
enum Filter {
    All,
    Search(Regex),
    Exact(String),
}

impl Filter {
    fn from_args() -> Filter {
        // Criterion's options that take their value as the next argument.
        const WITH_VALUE: &[&str] = &[
            "-c",
            "--color",
            "-s",
            "--save-baseline",
            "-b",
            "--baseline",
            "--baseline-lenient",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--plotting-backend",
            "--output-format",
            "--format",
            "--logfile",
        ];
        let mut args = std::env::args().skip(1);
        let mut exact = false;
        let mut filter = None;
        while let Some(a) = args.next() {
            if a == "--exact" {
                exact = true;
            } else if WITH_VALUE.contains(&a.as_str()) {
                args.next();
            } else if !a.starts_with('-') && filter.is_none() {
                filter = Some(a);
            }
        }
        if let Some(f) = &filter {
            // Visible, so a filter taken from the wrong argument does not pass unnoticed.
            eprintln!("model_ops: setting up only the cases with a bench matching `{f}`");
        }
        match filter {
            None => Filter::All,
            Some(f) if exact => Filter::Exact(f),
            // Criterion rejects a filter that is not a regex; so does this (same message).
            Some(f) => Filter::Search(Regex::new(&f).expect("invalid filter regex")),
        }
    }

    /// Whether any of the bench ids `ids` runs under this filter.
    fn any(&self, ids: &[String]) -> bool {
        ids.iter().any(|id| match self {
            Filter::All => true,
            Filter::Search(r) => r.is_match(id),
            Filter::Exact(f) => f == id,
        })
    }
}

/// Whether a case with benches `group/case/pass` for `passes` is worth setting up.
fn wanted(group: &str, case: &str, passes: &[&str]) -> bool {
    static FILTER: std::sync::OnceLock<Filter> = std::sync::OnceLock::new();
    let ids: Vec<String> = passes
        .iter()
        .map(|p| format!("{group}/{case}/{p}"))
        .collect();
    FILTER.get_or_init(Filter::from_args).any(&ids)
}

const CONV_PASSES: &[&str] = &["fwd", "bwd_data", "bwd_weight", "bwd"];

/// (N, C, H, W, D) shapes.
fn conv_shapes(gpu: bool) -> Vec<[usize; 5]> {
    if gpu {
        vec![
            [2, 48, 112, 112, 32],
            [2, 96, 56, 56, 16],
            [2, 192, 28, 28, 8],
        ]
    } else {
        vec![[1, 8, 8, 8, 4]]
    }
}

fn norm_shape(gpu: bool) -> [usize; 5] {
    if gpu {
        [2, 48, 112, 112, 32]
    } else {
        [1, 8, 8, 8, 4]
    }
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let d = device();
    Tensor::rand_normal(shape, 0.0, 1.0, seed, DType::F32, &d).unwrap()
}

/// Whether a kernel runs (and does not panic) for all three passes of this problem.
fn available(x: &Tensor, w: &Tensor, spec: &ConvSpec, which: ConvImpl) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (y, ran) = x.conv_with(w, None, spec, which).ok()?;
        // bf16 operands give f32 results: the gradient goes back in the operand dtype.
        let y = y.to_dtype(x.dtype()).ok()?;
        Tensor::conv_backward_input(&y, w, x.shape(), spec, which).ok()?;
        Tensor::conv_backward_weight(x, &y, w.shape(), spec, which).ok()?;
        Some(which == ConvImpl::Auto || ran == which)
    }))
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// One benchmark kernel: its name prefix, layouts, implementation, TF32 switch and the
/// operand dtype (x, w and dy).
struct ConvKernel {
    name: &'static str,
    layouts: &'static [Layout],
    which: ConvImpl,
    tf32: bool,
    dtype: DType,
}

fn conv_group(c: &mut Criterion, k: ConvKernel) {
    let d = device();
    let (kernel, which) = (k.name, k.which);
    let mut g = c.benchmark_group("conv3d");
    for s in conv_shapes(is_gpu(&d)) {
        let [n, ch, h, w, dd] = s;
        let flop = 2 * n * ch * ch * 27 * h * w * dd;
        g.throughput(Throughput::Elements(flop as u64));
        let name = format!("{n}x{ch}x{h}x{w}x{dd}");
        let tag = |layout: Layout| {
            let l = if layout == Layout::ChannelsLast {
                "cl"
            } else {
                "cf"
            };
            format!("{kernel}_{l}")
        };
        let layouts: Vec<Layout> = (k.layouts.iter().copied())
            .filter(|&l| wanted("conv3d", &format!("{name}/{}", tag(l)), CONV_PASSES))
            .collect();
        if layouts.is_empty() {
            continue;
        }
        let Ok(weight) = rand(&[ch, ch, 3, 3, 3], 2)
            .mul_scalar(0.05)
            .and_then(|w| w.to_dtype(k.dtype))
        else {
            eprintln!("conv3d {name} {kernel}: {} not available on {d}", k.dtype);
            continue;
        };
        // The channels-last cases take the weight in channels-last memory, as PyTorch's do
        // (`channels_last_3d`), viewed in PyTorch's axis order: the same values.
        let weight_cl = weight
            .permute(&[0, 2, 3, 4, 1])
            .and_then(|w| w.contiguous())
            .and_then(|w| w.permute(&[0, 4, 1, 2, 3]))
            .unwrap();
        for layout in layouts {
            let weight = match layout {
                Layout::ChannelsLast => &weight_cl,
                Layout::ChannelsFirst => &weight,
            };
            let spec = ConvSpec::new().same().layout(layout).allow_tf32(k.tf32);
            let shape = layout.shape(n, ch, &[h, w, dd]);
            let x = rand(&shape, 1).to_dtype(k.dtype).unwrap();
            let tag = tag(layout);
            if !available(&x, weight, &spec, which) {
                eprintln!("conv3d {name} {tag}: not available on {d}");
                continue;
            }
            let (dy, _) = x.conv_with(weight, None, &spec, which).unwrap();
            let dy = dy.to_dtype(k.dtype).unwrap();
            let id = format!("{name}/{tag}");
            g.bench_with_input(BenchmarkId::new(&id, "fwd"), &(), |b, _| {
                b.iter_custom(|it| {
                    time_batched(&d, it, || {
                        drop(x.conv_with(weight, None, &spec, which).unwrap())
                    })
                })
            });
            g.bench_with_input(BenchmarkId::new(&id, "bwd_data"), &(), |b, _| {
                b.iter_custom(|it| {
                    time_batched(&d, it, || {
                        drop(
                            Tensor::conv_backward_input(&dy, weight, &shape, &spec, which).unwrap(),
                        )
                    })
                })
            });
            g.bench_with_input(BenchmarkId::new(&id, "bwd_weight"), &(), |b, _| {
                b.iter_custom(|it| {
                    time_batched(&d, it, || {
                        drop(
                            Tensor::conv_backward_weight(&x, &dy, weight.shape(), &spec, which)
                                .unwrap(),
                        )
                    })
                })
            });
            // `conv_backward` picks kernels as `Auto` does: the same ones as these kernels.
            if matches!(which, ConvImpl::Auto | ConvImpl::TensorCore) {
                g.throughput(Throughput::Elements(2 * flop as u64));
                g.bench_with_input(BenchmarkId::new(&id, "bwd"), &(), |b, _| {
                    b.iter_custom(|it| {
                        time_batched(&d, it, || {
                            drop(
                                Tensor::conv_backward(&x, weight, &dy, &spec, (true, true))
                                    .unwrap(),
                            )
                        })
                    })
                });
                g.throughput(Throughput::Elements(flop as u64));
            }
        }
    }
    g.finish();
}

fn conv3d_gemm(c: &mut Criterion) {
    conv_group(
        c,
        ConvKernel {
            name: "gemm",
            layouts: &[Layout::ChannelsFirst, Layout::ChannelsLast],
            which: ConvImpl::Gemm,
            tf32: false,
            dtype: DType::F32,
        },
    );
}

fn conv3d_tf32(c: &mut Criterion) {
    conv_group(
        c,
        ConvKernel {
            name: "tf32",
            layouts: &[Layout::ChannelsLast, Layout::ChannelsFirst],
            which: ConvImpl::TensorCore,
            tf32: true,
            dtype: DType::F32,
        },
    );
}

fn conv3d_cubek(c: &mut Criterion) {
    conv_group(
        c,
        ConvKernel {
            name: "cubek",
            layouts: &[Layout::ChannelsLast],
            which: ConvImpl::Cubek,
            tf32: true,
            dtype: DType::F32,
        },
    );
}

fn conv3d_bf16(c: &mut Criterion) {
    conv_group(
        c,
        ConvKernel {
            name: "bf16",
            layouts: &[Layout::ChannelsLast, Layout::ChannelsFirst],
            which: ConvImpl::Auto,
            tf32: false,
            dtype: DType::BF16,
        },
    );
}

fn norms(c: &mut Criterion) {
    let d = device();
    let [n, ch, h, w, dd] = norm_shape(is_gpu(&d));
    let numel = n * ch * h * w * dd;
    let mut g = c.benchmark_group("norm");
    let wt = rand(&[ch], 3);
    let bs = rand(&[ch], 4);
    for (name, norm, layout, affine) in [
        ("ln_cl", Norm::Layer, Layout::ChannelsLast, true),
        ("ln_cf", Norm::Layer, Layout::ChannelsFirst, true),
        ("in_cf", Norm::Instance, Layout::ChannelsFirst, false),
        ("in_cl", Norm::Instance, Layout::ChannelsLast, false),
    ] {
        if !wanted("norm", name, &["fwd", "bwd"]) {
            continue;
        }
        let shape = layout.shape(n, ch, &[h, w, dd]);
        let x = rand(&shape, 5);
        let dy = rand(&shape, 6);
        let (wo, bo) = if affine {
            (Some(&wt), Some(&bs))
        } else {
            (None, None)
        };
        g.throughput(Throughput::Bytes(8 * numel as u64));
        g.bench_with_input(BenchmarkId::new(name, "fwd"), &(), |b, _| {
            b.iter_custom(|it| {
                time_batched(&d, it, || {
                    drop(x.norm_forward(norm, layout, wo, bo, 1e-5).unwrap())
                })
            })
        });
        let (_, stats) = x.norm_forward(norm, layout, wo, bo, 1e-5).unwrap();
        let needs = NormNeeds {
            dx: true,
            dw: affine,
            db: affine,
        };
        g.throughput(Throughput::Bytes(12 * numel as u64));
        g.bench_with_input(BenchmarkId::new(name, "bwd"), &(), |b, _| {
            b.iter_custom(|it| {
                time_batched(&d, it, || {
                    drop(Tensor::norm_backward(&x, &dy, norm, layout, wo, &stats, needs).unwrap())
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = norms, conv3d_gemm, conv3d_tf32, conv3d_bf16, conv3d_cubek
}
criterion_main!(benches);
