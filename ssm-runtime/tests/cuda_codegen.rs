//! The CUDA kernels compiled offline (feature `cuda-codegen`, no GPU needed): every
//! tensor-core convolution pass of the benchmark table, set up and launched as
//! `benches/benches/model_ops.rs` launches it, on the codegen target, where each distinct
//! kernel is expanded and compiled to CUDA C++ for an H100. A kernel that fails to expand,
//! fails to compile or declares more shared memory than sm_90 allows fails the test, as it
//! would fail its first launch on the GPU.
//!
//! `SSM_CODEGEN_CASES` (space-separated bench ids, e.g.
//! `conv3d/2x96x56x56x16/bf16_cl/fwd`) narrows the passes; `SSM_CONV_TUNE` applies as on
//! the GPU (`scripts/codegen-check.sh` runs a sweep file's lines this way).
//! `SSM_CODEGEN_DUMP=DIR` writes each kernel's CUDA source there.

#![cfg(feature = "cuda-codegen")]

use ssm_runtime::codegen::{self, Record};
use ssm_runtime::scan::{
    ScanInputs, ScanOptions, ScanSpec, presets, selective_scan_bwd, selective_scan_fwd,
};
use ssm_runtime::{ConvImpl, ConvSpec, DType, Device, Layout, MatmulImpl, Norm, NormNeeds, Tensor};

/// Held by each test for its duration: the target's record of compiled kernels is one per
/// process, and each test takes what its own launches compiled.
static TARGET: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn hold_target() -> std::sync::MutexGuard<'static, ()> {
    TARGET.lock().unwrap_or_else(|e| e.into_inner())
}

/// The benchmark table's shapes (N, C, H, W, D).
const SHAPES: [[usize; 5]; 3] = [
    [2, 48, 112, 112, 32],
    [2, 96, 56, 56, 16],
    [2, 192, 28, 28, 8],
];
const PASSES: [&str; 4] = ["fwd", "bwd_data", "bwd_weight", "bwd"];

/// One pass of the table, named as its bench.
struct Case {
    shape: [usize; 5],
    /// `tf32` (TF32 fragments on f32 operands) or `bf16` (bf16 operands under `Auto`).
    kernel: &'static str,
    layout: Layout,
    pass: &'static str,
}

impl Case {
    fn id(&self) -> String {
        let [n, c, h, w, d] = self.shape;
        let l = match self.layout {
            Layout::ChannelsLast => "cl",
            Layout::ChannelsFirst => "cf",
        };
        format!(
            "conv3d/{n}x{c}x{h}x{w}x{d}/{}_{l}/{}",
            self.kernel, self.pass
        )
    }

    /// Launch the pass as the bench does (its operands, weight layout and kernel choice).
    fn launch(&self, d: &Device) {
        let (which, tf32, dtype) = match self.kernel {
            "tf32" => (ConvImpl::TensorCore, true, DType::F32),
            _ => (ConvImpl::Auto, false, DType::BF16),
        };
        let [n, c, h, w, dd] = self.shape;
        let mut weight = rand(d, &[c, c, 3, 3, 3], dtype, 2);
        if self.layout == Layout::ChannelsLast {
            // Channels-last weight memory viewed in PyTorch's axis order, as the bench's.
            weight = (weight.permute(&[0, 2, 3, 4, 1]))
                .and_then(|w| w.contiguous())
                .and_then(|w| w.permute(&[0, 4, 1, 2, 3]))
                .unwrap();
        }
        let spec = ConvSpec::new().same().layout(self.layout).allow_tf32(tf32);
        let shape = self.layout.shape(n, c, &[h, w, dd]);
        let x = rand(d, &shape, dtype, 1);
        let dy = rand(d, &shape, dtype, 3);
        let id = self.id();
        let ran = match self.pass {
            "fwd" => x.conv_with(&weight, None, &spec, which).map(|r| r.1),
            "bwd_data" => {
                Tensor::conv_backward_input(&dy, &weight, &shape, &spec, which).map(|r| r.1)
            }
            "bwd_weight" => {
                Tensor::conv_backward_weight(&x, &dy, weight.shape(), &spec, which).map(|r| r.1)
            }
            _ => Tensor::conv_backward(&x, &weight, &dy, &spec, (true, true))
                .map(|_| ConvImpl::TensorCore),
        }
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            ran,
            ConvImpl::TensorCore,
            "{id}: an H100 runs this pass on tensor cores"
        );
    }
}

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for shape in SHAPES {
        for kernel in ["tf32", "bf16"] {
            for layout in [Layout::ChannelsLast, Layout::ChannelsFirst] {
                for pass in PASSES {
                    cases.push(Case {
                        shape,
                        kernel,
                        layout,
                        pass,
                    });
                }
            }
        }
    }
    cases
}

/// The cases `SSM_CODEGEN_CASES` names (all when unset); a name that is no case is an error.
fn selected_cases() -> Vec<Case> {
    let all = all_cases();
    let Ok(wanted) = std::env::var("SSM_CODEGEN_CASES") else {
        return all;
    };
    let wanted: Vec<&str> = wanted.split_whitespace().collect();
    for w in &wanted {
        assert!(
            all.iter().any(|c| c.id() == *w),
            "SSM_CODEGEN_CASES: `{w}` is not a case; they are\n{}",
            all.iter().map(Case::id).collect::<Vec<_>>().join("\n")
        );
    }
    all.into_iter()
        .filter(|c| wanted.contains(&c.id().as_str()))
        .collect()
}

/// Standard-normal values of `dtype` (drawn in f32) on the target.
fn rand(d: &Device, shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::rand_normal(shape, 0.0, 1.0, seed, DType::F32, d)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

/// The kernels compiled since the last call, once the launches have reached the target's
/// server (they arrive asynchronously).
fn launched(d: &Device) -> Vec<Record> {
    d.sync().unwrap();
    codegen::take_records()
}

/// Keep the sources (`$SSM_CODEGEN_DUMP`) and fail on any kernel that did not compile.
fn assert_compiled(test: &str, records: &[Record]) {
    dump(test, records);
    let failed: Vec<String> = records
        .iter()
        .filter_map(|r| r.outcome.as_ref().err().map(|e| format!("{}: {e}", r.name)))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Write each compiled kernel's source to `$SSM_CODEGEN_DUMP/<test>-<index>-<kernel>.cu`.
fn dump(test: &str, records: &[Record]) {
    let Ok(dir) = std::env::var("SSM_CODEGEN_DUMP") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (i, r) in records.iter().enumerate() {
        if let Ok(k) = &r.outcome {
            let name = r.name.replace("::", "-");
            let path = std::path::Path::new(&dir).join(format!("{test}-{i:03}-{name}.cu"));
            let id: String = r.id.lines().map(|l| format!("// {l}\n")).collect();
            std::fs::write(&path, format!("{id}{}", k.source)).unwrap();
        }
    }
}

#[test]
fn tensor_core_convolutions_compile_for_sm90() {
    let _target = hold_target();
    let d = Device::cuda_codegen();
    assert!(d.has_pipelined_mma(DType::BF16) && d.has_pipelined_mma(DType::F32));
    let mut records = Vec::new();
    for case in selected_cases() {
        case.launch(&d);
        let new = launched(&d);
        let names: Vec<&str> = new.iter().map(|r| r.name.as_str()).collect();
        eprintln!("{}: {} new kernels {names:?}", case.id(), new.len());
        records.extend(new);
    }
    let largest = records
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok().map(|k| (k.shared_bytes, &r.name)))
        .max();
    eprintln!(
        "{} kernels compiled; most shared memory: {largest:?}",
        records.len()
    );
    assert_compiled("table", &records);
}

/// The shapes `conv_tensor_cores_match_host` checks on a GPU
/// ([`tensor_core_conv_cases`](ssm_runtime::testing::tensor_core_conv_cases)), with a bias,
/// in both layouts and both operand types.
#[test]
fn tensor_core_convolution_variants_compile_for_sm90() {
    let _target = hold_target();
    let d = Device::cuda_codegen();
    let cases = ssm_runtime::testing::tensor_core_conv_cases();
    let mut records = Vec::new();
    for dtype in [DType::BF16, DType::F32] {
        for (input, c_out, kernel, spec) in &cases {
            for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
                let spec = spec.clone().layout(layout).allow_tf32(true);
                let spatial = &input[2..];
                let in_shape = layout.shape(input[0], input[1], spatial);
                let w_shape = [&[*c_out, input[1] / spec.groups][..], kernel].concat();
                let out_shape = spec
                    .resolve("codegen", &in_shape, &w_shape)
                    .unwrap()
                    .output_shape();
                let (x, w, dy) = (
                    rand(&d, &in_shape, dtype, 7),
                    rand(&d, &w_shape, dtype, 7),
                    rand(&d, &out_shape, dtype, 7),
                );
                let b = rand(&d, &[*c_out], DType::F32, 7);
                let what = format!("{input:?} {layout:?} {dtype}");
                let tc = ConvImpl::TensorCore;
                x.conv_with(&w, Some(&b), &spec, tc)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                Tensor::conv_backward_input(&dy, &w, &in_shape, &spec, tc)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                Tensor::conv_backward_weight(&x, &dy, &w_shape, &spec, tc)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                records.extend(launched(&d));
            }
        }
    }
    let pipelined = records.iter().filter(|r| r.name.contains("Pipe")).count();
    eprintln!(
        "{} kernels compiled, {pipelined} of them pipelined",
        records.len()
    );
    assert!(pipelined > 0, "no pipelined kernel was launched");
    assert_compiled("variants", &records);
}

/// The kernels that take warp shuffles only where planes are 32 lanes wide (lavapipe's are
/// 8, so CI never expanded them): reductions, norms, softmax, attention and the selective
/// scan (1-D chunked, 2-D and 3-D tiled, gated), forward and backward, f32 and f64.
#[test]
fn warp_shuffle_paths_compile_for_sm90() {
    let _target = hold_target();
    let d = Device::cuda_codegen();
    assert!(d.has_planes_of(32));
    let mut records = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        let randn = |shape: &[usize]| rand(&d, shape, dtype, 11);
        let x = randn(&[2, 48, 6, 5, 7]);
        for axes in [&[1isize][..], &[-1], &[2, 3, 4], &[0, 2, 3, 4]] {
            x.sum(axes, false).unwrap();
            x.mean(axes, true).unwrap();
            x.var(axes, 1, false).unwrap();
            x.max(axes, false).unwrap();
        }
        x.argmax(1, false).unwrap();
        let y = x.softmax(-1).unwrap();
        Tensor::softmax_backward(&y, &x, -1).unwrap();
        let (w, b) = (randn(&[48]), randn(&[48]));
        for (norm, layout, affine) in [
            (Norm::Layer, Layout::ChannelsLast, true),
            (Norm::Layer, Layout::ChannelsFirst, true),
            (Norm::Instance, Layout::ChannelsFirst, false),
            (Norm::Instance, Layout::ChannelsLast, false),
            (Norm::Group(4), Layout::ChannelsFirst, true),
            (Norm::Batch, Layout::ChannelsFirst, true),
        ] {
            let shape = layout.shape(2, 48, &[6, 5, 7]);
            let (xn, dy) = (randn(&shape), randn(&shape));
            let (wo, bo) = if affine {
                (Some(&w), Some(&b))
            } else {
                (None, None)
            };
            let what = format!("{norm:?} {layout:?} {dtype}");
            let (_, stats) = (xn.norm_forward(norm, layout, wo, bo, 1e-5))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let needs = NormNeeds {
                dx: true,
                dw: affine,
                db: affine,
            };
            Tensor::norm_backward(&xn, &dy, norm, layout, wo, &stats, needs)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let (q, k, v) = (
            randn(&[2, 3, 40, 16]),
            randn(&[2, 3, 40, 16]),
            randn(&[2, 3, 40, 16]),
        );
        let (out, lse) = Tensor::attention(&q, &k, &v, None).unwrap();
        Tensor::attention_backward(&q, &k, &v, &out, &lse, &out, None).unwrap();
        // Scans: (grid, paths, gated); B 1, Di 16, N 8, one B/C group.
        for (grid, paths, gated) in [
            (vec![300], presets::bidirectional(), true),
            (vec![12, 10], presets::cross2d(), false),
            (vec![4, 6, 5], presets::srma_abss(), true),
        ] {
            let (di, n, l, kp) = (16, 8, grid.iter().product::<usize>(), paths.len());
            let a = randn(&[kp, di, n]).abs().and_then(|t| t.neg()).unwrap();
            let (u, delta, z) = (randn(&[1, di, l]), randn(&[1, di, l]), randn(&[1, di, l]));
            let (bm, cm) = (randn(&[1, kp, 1, n, l]), randn(&[1, kp, 1, n, l]));
            let (dd, db) = (randn(&[kp, di]), randn(&[kp, di]));
            let inputs = ScanInputs {
                u: &u,
                delta: &delta,
                a: &a,
                b: &bm,
                c: &cm,
                d: &dd,
                delta_bias: &db,
                z: gated.then_some(&z),
            };
            let spec = ScanSpec::new(&grid, paths);
            let what = format!("scan over {grid:?} {dtype}");
            let (y, saved) = selective_scan_fwd(&inputs, &spec, &ScanOptions::default())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            selective_scan_bwd(&inputs, &spec, &saved, &y)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        records.extend(launched(&d));
    }
    eprintln!("{} kernels compiled", records.len());
    assert_compiled("shuffles", &records);
}

/// cubek's kernels as an H100 selects them: the matmul (f32 and f64, square and skinny)
/// and the TF32 channels-last convolution.
#[test]
fn cubek_paths_compile_for_sm90() {
    let _target = hold_target();
    let d = Device::cuda_codegen();
    for dtype in [DType::F32, DType::F64] {
        for (m, k, n) in [(256, 256, 256), (4, 384, 1000), (1000, 48, 96)] {
            let (a, b) = (
                rand(&d, &[2, m, k], dtype, 13),
                rand(&d, &[2, k, n], dtype, 13),
            );
            let (_, ran) = a.matmul_with(&b, MatmulImpl::Auto).unwrap();
            eprintln!("matmul {m}x{k}x{n} {dtype}: {ran:?}");
            // cubek-matmul takes f32 on an H100 (f64 goes to the tiled kernel).
            if dtype == DType::F32 {
                assert_eq!(ran, MatmulImpl::Cubek, "matmul {m}x{k}x{n}");
            }
        }
    }
    let spec = ConvSpec::new()
        .same()
        .layout(Layout::ChannelsLast)
        .allow_tf32(true);
    let (x, w) = (
        rand(&d, &[2, 6, 5, 4, 16], DType::F32, 13),
        rand(&d, &[16, 16, 3, 3, 3], DType::F32, 13),
    );
    let (_, ran) = x.conv_with(&w, None, &spec, ConvImpl::Cubek).unwrap();
    assert_eq!(ran, ConvImpl::Cubek);
    let records = launched(&d);
    let cubek = records
        .iter()
        .filter(|r| r.name.contains("MatmulEntry"))
        .count();
    eprintln!(
        "{} kernels compiled, {cubek} of them cubek's",
        records.len()
    );
    assert!(cubek > 0, "no cubek kernel was launched");
    assert_compiled("cubek", &records);
}

mod reported {
    //! The target reports what a GPU launch would refuse: without these, a check that
    //! compiled nothing, or swallowed every error, would pass.
    use cubecl::prelude::*;
    use ssm_runtime::codegen::{self, CodegenDevice, CodegenRuntime, MAX_SHARED};

    #[cube(launch)]
    fn shared_past_the_limit(out: &mut Array<f32>, #[comptime] floats: usize) {
        let mut s = SharedMemory::<f32>::new(floats);
        s[UNIT_POS as usize] = 1.0;
        sync_cube();
        out[UNIT_POS as usize] = s[0];
    }

    #[cube(launch)]
    fn refused_at_expansion(out: &mut Array<f32>, #[comptime] lanes: usize) {
        // A comptime rule that fails, as a tile rule's would on a setting it cannot hold.
        comptime!(assert!(lanes <= 4, "lanes = {lanes}: at most 4"));
        out[0] = 1.0;
    }

    #[test]
    fn refusals_are_reported_and_the_rest_compiles() {
        let _target = super::hold_target();
        let client = CodegenRuntime::client(&CodegenDevice);
        let out = client.empty(4 * 32);
        let arg = || unsafe { ArrayArg::from_raw_parts(out.clone(), 32) };
        let (one, warp) = (CubeCount::Static(1, 1, 1), CubeDim::new_1d(32));
        let fits = MAX_SHARED / 4;
        shared_past_the_limit::launch::<CodegenRuntime>(&client, one.clone(), warp, arg(), fits);
        shared_past_the_limit::launch::<CodegenRuntime>(
            &client,
            one.clone(),
            warp,
            arg(),
            fits + 1,
        );
        refused_at_expansion::launch::<CodegenRuntime>(&client, one.clone(), warp, arg(), 4);
        refused_at_expansion::launch::<CodegenRuntime>(&client, one, warp, arg(), 5);
        cubecl::future::block_on(client.sync()).unwrap();
        let records = codegen::take_records();
        let outcome: Vec<_> = records
            .iter()
            .map(|r| r.outcome.as_ref().map(|k| k.shared_bytes))
            .collect();
        assert_eq!(records.len(), 4, "{outcome:?}");
        assert_eq!(outcome[0], Ok(MAX_SHARED), "{outcome:?}");
        assert!(outcome[2].is_ok(), "{outcome:?}");
        let past = outcome[1].as_ref().unwrap_err();
        assert!(past.contains("shared memory"), "{past}");
        let panicked = outcome[3].as_ref().unwrap_err();
        assert!(panicked.contains("lanes = 5: at most 4"), "{panicked}");
        let source = &records[2].outcome.as_ref().unwrap().source;
        assert!(source.contains("__global__"), "{source}");
    }
}
