//! Convolutions against a host f64 reference: forward, input gradient and weight gradient,
//! every kernel (direct, implicit GEMM, and on devices with tensor cores our tensor-core
//! GEMM and cubek), both layouts, strided views, f32, f64 and bf16.

use ssm_runtime::ops::conv::ConvProblem;
use ssm_runtime::testing::{assert_close, device, rel_l2};
use ssm_runtime::{ConvImpl, ConvSpec, DType, DeviceKind, Layout, Padding, Tensor};

use crate::{rng, rounded, upload};

/// Index of (n, c, spatial...) in a contiguous tensor of `layout`.
fn idx(layout: Layout, c_total: usize, sp: &[usize], n: usize, c: usize, pos: &[usize]) -> usize {
    let mut i = n;
    if layout == Layout::ChannelsFirst {
        i = i * c_total + c;
    }
    for (a, &s) in sp.iter().enumerate() {
        i = i * s + pos[a];
    }
    if layout == Layout::ChannelsLast {
        i = i * c_total + c;
    }
    i
}

/// All coordinates of a spatial box.
fn positions(sp: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &s in sp {
        let mut next = Vec::new();
        for v in &out {
            for i in 0..s {
                let mut w = v.clone();
                w.push(i);
                next.push(w);
            }
        }
        out = next;
    }
    out
}

/// The input position read by output `o` at tap `t`, if inside.
fn src_pos(p: &ConvProblem, o: &[usize], t: &[usize]) -> Option<Vec<usize>> {
    let mut s = Vec::new();
    for a in 0..p.nd {
        let v = (o[a] * p.stride[a] + t[a] * p.dilation[a]) as isize - p.pad_before[a] as isize;
        if v < 0 || v >= p.input[a] as isize {
            return None;
        }
        s.push(v as usize);
    }
    Some(s)
}

fn w_idx(p: &ConvProblem, co: usize, ci: usize, t: &[usize]) -> usize {
    let mut i = co * (p.c_in / p.groups) + ci;
    for (k, tt) in p.kernel.iter().zip(t) {
        i = i * k + tt;
    }
    i
}

/// y, dx, dw of the host reference (dy given).
fn host(
    p: &ConvProblem,
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let l = p.layout;
    let cig = p.c_in / p.groups;
    let cog = p.c_out / p.groups;
    let mut y = vec![0.0; p.n * p.c_out * p.output.iter().product::<usize>()];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let taps = positions(&p.kernel);
    for n in 0..p.n {
        for co in 0..p.c_out {
            let g = co / cog;
            for o in positions(&p.output) {
                let yi = idx(l, p.c_out, &p.output, n, co, &o);
                let mut acc = b.map_or(0.0, |b| b[co]);
                for t in &taps {
                    if let Some(s) = src_pos(p, &o, t) {
                        for ci in 0..cig {
                            let xi = idx(l, p.c_in, &p.input, n, g * cig + ci, &s);
                            let wi = w_idx(p, co, ci, t);
                            acc += x[xi] * w[wi];
                            dx[xi] += dy[yi] * w[wi];
                            dw[wi] += dy[yi] * x[xi];
                        }
                    }
                }
                y[yi] = acc;
            }
        }
    }
    (y, dx, dw)
}

struct Case {
    name: &'static str,
    input: Vec<usize>, // channels-first shape
    c_out: usize,
    kernel: Vec<usize>,
    spec: ConvSpec,
    bias: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "1d causal depthwise k4",
            input: vec![2, 6, 9],
            c_out: 6,
            kernel: vec![4],
            spec: ConvSpec::new().causal().groups(6),
            bias: true,
        },
        Case {
            name: "2d depthwise 3x3 same",
            input: vec![2, 4, 7, 6],
            c_out: 4,
            kernel: vec![3, 3],
            spec: ConvSpec::new().same().groups(4),
            bias: false,
        },
        Case {
            name: "2d depthwise 7x7 stride 2",
            input: vec![1, 3, 11, 9],
            c_out: 3,
            kernel: vec![7, 7],
            spec: ConvSpec::new().stride(&[2]).pad(&[3]).groups(3),
            bias: true,
        },
        Case {
            name: "3d dense 3x3x3 same",
            input: vec![2, 8, 5, 6, 4],
            c_out: 8,
            kernel: vec![3, 3, 3],
            spec: ConvSpec::new().same(),
            bias: true,
        },
        Case {
            name: "3d dense stride 2 C->2C",
            input: vec![1, 8, 7, 6, 5],
            c_out: 16,
            kernel: vec![3, 3, 3],
            spec: ConvSpec::new().stride(&[2]).pad(&[1]),
            bias: true,
        },
        Case {
            name: "2d grouped dilated asymmetric",
            input: vec![2, 16, 9, 8],
            c_out: 16,
            kernel: vec![3, 2],
            spec: ConvSpec::new()
                .groups(2)
                .dilation(&[2, 1])
                .stride(&[1, 2])
                .padding(Padding::Asymmetric(vec![(2, 1), (0, 1)])),
            bias: false,
        },
        Case {
            name: "3d 1x1x1 9->10 (odd tiles)",
            input: vec![2, 9, 3, 5, 7],
            c_out: 10,
            kernel: vec![1, 1, 1],
            spec: ConvSpec::new(),
            bias: true,
        },
        Case {
            name: "3d stem 1->8 k3 s2",
            input: vec![1, 1, 6, 7, 5],
            c_out: 8,
            kernel: vec![3, 3, 3],
            spec: ConvSpec::new().stride(&[2]).pad(&[1]),
            bias: true,
        },
    ]
}

fn to_layout(shape_cf: &[usize], layout: Layout) -> Vec<usize> {
    let (n, c, sp) = Layout::ChannelsFirst.split(shape_cf);
    layout.shape(n, c, &sp)
}

#[test]
fn conv_forward_and_gradients_match_host() {
    let d = device();
    let mut r = rng(101);
    for case in cases() {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let spec = case.spec.clone().layout(layout);
            let in_shape = to_layout(&case.input, layout);
            let c_in = case.input[1];
            let w_shape = [&[case.c_out, c_in / spec.groups][..], &case.kernel].concat();
            let p = spec.resolve("test", &in_shape, &w_shape).unwrap();
            let out_shape = p.output_shape();
            let xv = r.vec(in_shape.iter().product(), -1.0, 1.0);
            let wv = r.vec(w_shape.iter().product(), -1.0, 1.0);
            let bv = r.vec(case.c_out, -1.0, 1.0);
            let dyv = r.vec(out_shape.iter().product(), -1.0, 1.0);
            for (dtype, rtol, atol) in [(DType::F32, 3e-5, 3e-5), (DType::F64, 1e-12, 1e-12)] {
                let (xr, wr, br, dyr) = (
                    rounded(&xv, dtype),
                    rounded(&wv, dtype),
                    rounded(&bv, dtype),
                    rounded(&dyv, dtype),
                );
                let (y_want, dx_want, dw_want) =
                    host(&p, &xr, &wr, case.bias.then_some(&br[..]), &dyr);
                let x = upload(&xv, &in_shape, dtype);
                let w = upload(&wv, &w_shape, dtype);
                let b = upload(&bv, &[case.c_out], dtype);
                let dy = upload(&dyv, &out_shape, dtype);
                // Auto runs one of these two (checked below), so it needs no pass of its own.
                let (_, ran) = x
                    .conv_with(&w, case.bias.then_some(&b), &spec, ConvImpl::Auto)
                    .unwrap();
                let dense = c_in / spec.groups >= 8 && case.c_out / spec.groups >= 8;
                assert_eq!(
                    ran,
                    if dense {
                        ConvImpl::Gemm
                    } else {
                        ConvImpl::Direct
                    }
                );
                for which in [ConvImpl::Direct, ConvImpl::Gemm] {
                    let what = format!("{} {layout:?} {dtype} {which:?}", case.name);
                    let (y, _) = x
                        .conv_with(&w, case.bias.then_some(&b), &spec, which)
                        .unwrap();
                    assert_eq!(y.shape(), out_shape.as_slice(), "{what}");
                    assert_close(
                        &format!("{what} forward"),
                        &y.to_f64_vec().unwrap(),
                        &y_want,
                        rtol,
                        atol,
                    );
                    let (dx, _) =
                        Tensor::conv_backward_input(&dy, &w, &in_shape, &spec, which).unwrap();
                    assert_close(
                        &format!("{what} input grad"),
                        &dx.to_f64_vec().unwrap(),
                        &dx_want,
                        rtol,
                        atol,
                    );
                    let (dw, _) =
                        Tensor::conv_backward_weight(&x, &dy, &w_shape, &spec, which).unwrap();
                    assert_eq!(dw.shape(), w_shape.as_slice());
                    // The weight gradient sums over every position.
                    assert_close(
                        &format!("{what} weight grad"),
                        &dw.to_f64_vec().unwrap(),
                        &dw_want,
                        rtol,
                        atol * 10.0,
                    );
                }
                if case.bias {
                    let db = Tensor::conv_backward_bias(&dy, layout).unwrap();
                    let ca = layout.channel_axis(out_shape.len());
                    let mut want = vec![0.0; case.c_out];
                    for (i, v) in dyr.iter().enumerate() {
                        let mut rem = i;
                        let mut c = 0;
                        for a in (0..out_shape.len()).rev() {
                            if a == ca {
                                c = rem % out_shape[a];
                            }
                            rem /= out_shape[a];
                        }
                        want[c] += v;
                    }
                    assert_close(
                        &format!("{} bias grad {dtype}", case.name),
                        &db.to_f64_vec().unwrap(),
                        &want,
                        rtol,
                        atol,
                    );
                }
            }
        }
    }
    let _ = d;
}

#[test]
fn conv_reads_strided_views_in_place() {
    // A channels-last tensor presented as a permuted view of a channels-first buffer (and
    // the reverse), plus a weight that is a transposed view.
    let mut r = rng(102);
    let cf_shape = [2usize, 8, 6, 5];
    let xv = r.vec(cf_shape.iter().product(), -1.0, 1.0);
    let wv = r.vec(8 * 8 * 9, -1.0, 1.0);
    for dtype in [DType::F32, DType::F64] {
        let x_cf = upload(&xv, &cf_shape, dtype);
        let x_cl_view = x_cf.permute(&[0, 2, 3, 1]).unwrap(); // [N, H, W, C], strided
        // Weight stored [C_in, C_out, k, k] and viewed as [C_out, C_in, k, k].
        let w_store = upload(&wv, &[8, 8, 3, 3], dtype);
        let w_view = w_store.transpose(0, 1).unwrap();
        let w_contig = w_view.contiguous().unwrap();
        for which in [ConvImpl::Direct, ConvImpl::Gemm] {
            let spec_cf = ConvSpec::new().pad(&[1]);
            let spec_cl = spec_cf.clone().layout(Layout::ChannelsLast);
            let (want, _) = x_cf.conv_with(&w_contig, None, &spec_cf, which).unwrap();
            let (got, _) = x_cl_view.conv_with(&w_view, None, &spec_cl, which).unwrap();
            let got_cf = got.permute(&[0, 3, 1, 2]).unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            assert_close(
                &format!("strided {which:?} {dtype}"),
                &got_cf.to_f64_vec().unwrap(),
                &want.to_f64_vec().unwrap(),
                tol,
                tol,
            );
            // Offset views (narrow along the batch axis).
            let x1 = x_cf.narrow(0, 1, 1).unwrap();
            let (y1, _) = x1.conv_with(&w_contig, None, &spec_cf, which).unwrap();
            assert_close(
                &format!("offset view {which:?} {dtype}"),
                &y1.to_f64_vec().unwrap(),
                &want.narrow(0, 1, 1).unwrap().to_f64_vec().unwrap(),
                tol,
                tol,
            );
        }
    }
}

#[test]
fn conv_cubek_path_refuses_cleanly_or_matches_in_tf32() {
    let d = device();
    let mut r = rng(103);
    let spec = ConvSpec::new()
        .same()
        .layout(Layout::ChannelsLast)
        .allow_tf32(true);
    let in_shape = [2usize, 6, 5, 4, 16];
    let w_shape = [16usize, 16, 3, 3, 3];
    let p = spec.resolve("test", &in_shape, &w_shape).unwrap();
    let xv = r.vec(in_shape.iter().product(), -1.0, 1.0);
    let wv = r.vec(w_shape.iter().product(), -1.0, 1.0);
    let dyv = r.vec(p.output_shape().iter().product(), -1.0, 1.0);
    let (y_want, dx_want, dw_want) = host(
        &p,
        &rounded(&xv, DType::F32),
        &rounded(&wv, DType::F32),
        None,
        &rounded(&dyv, DType::F32),
    );
    let x = upload(&xv, &in_shape, DType::F32);
    let w = upload(&wv, &w_shape, DType::F32);
    let dy = upload(&dyv, &p.output_shape(), DType::F32);
    let fwd = x.conv_with(&w, None, &spec, ConvImpl::Cubek);
    if d.kind() != DeviceKind::Cuda {
        assert!(fwd.is_err(), "cubek needs tensor cores; lavapipe has none");
        // Auto falls back to the exact kernels.
        let (y, ran) = x.conv_with(&w, None, &spec, ConvImpl::Auto).unwrap();
        assert_ne!(ran, ConvImpl::Cubek);
        assert_close(
            "auto fallback",
            &y.to_f64_vec().unwrap(),
            &y_want,
            3e-5,
            3e-5,
        );
        return;
    }
    // cubek pads both sides alike: an even kernel's "same" padding is refused, not run
    // shifted.
    let even = ConvSpec::new().same().layout(Layout::ChannelsLast);
    let w4 = upload(
        &r.vec(16 * 16 * 4, -1.0, 1.0),
        &[16, 16, 1, 1, 4],
        DType::F32,
    );
    let e = x
        .conv_with(&w4, None, &even, ConvImpl::Cubek)
        .unwrap_err()
        .to_string();
    assert!(e.contains("both sides"), "{e}");
    // TF32 keeps 10 mantissa bits: compare in relative L2.
    let (y, _) = fwd.unwrap();
    assert!(
        rel_l2(&y.to_f64_vec().unwrap(), &y_want) < 5e-3,
        "cubek forward"
    );
    let (dx, _) = Tensor::conv_backward_input(&dy, &w, &in_shape, &spec, ConvImpl::Cubek).unwrap();
    assert!(
        rel_l2(&dx.to_f64_vec().unwrap(), &dx_want) < 5e-3,
        "cubek input grad"
    );
    let (dw, _) = Tensor::conv_backward_weight(&x, &dy, &w_shape, &spec, ConvImpl::Cubek).unwrap();
    assert!(
        rel_l2(&dw.to_f64_vec().unwrap(), &dw_want) < 5e-3,
        "cubek weight grad"
    );
}

#[test]
fn conv_large_shapes_on_gpu() {
    // Realistic SRMA shapes only where they run fast (CUDA); checked against the exact
    // direct kernel on a slice.
    let d = device();
    if d.kind() != DeviceKind::Cuda {
        return;
    }
    let mut r = rng(104);
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let spec = ConvSpec::new().same().layout(layout);
        let shape = layout.shape(1, 48, &[28, 28, 16]);
        let x = upload(
            &r.vec(shape.iter().product(), -1.0, 1.0),
            &shape,
            DType::F32,
        );
        let w = upload(
            &r.vec(48 * 48 * 27, -0.2, 0.2),
            &[48, 48, 3, 3, 3],
            DType::F32,
        );
        let (g, _) = x.conv_with(&w, None, &spec, ConvImpl::Gemm).unwrap();
        let (dref, _) = x.conv_with(&w, None, &spec, ConvImpl::Direct).unwrap();
        assert_close(
            &format!("large {layout:?}"),
            &g.to_f64_vec().unwrap(),
            &dref.to_f64_vec().unwrap(),
            1e-4,
            1e-4,
        );
        let (dw_g, _) =
            Tensor::conv_backward_weight(&x, &g, &[48, 48, 3, 3, 3], &spec, ConvImpl::Gemm)
                .unwrap();
        let (dw_d, _) =
            Tensor::conv_backward_weight(&x, &g, &[48, 48, 3, 3, 3], &spec, ConvImpl::Direct)
                .unwrap();
        assert!(rel_l2(&dw_g.to_f64_vec().unwrap(), &dw_d.to_f64_vec().unwrap()) < 1e-5);
    }
}

#[test]
fn conv_tensor_cores_on_the_benchmark_shapes_on_gpu() {
    // The tile rules choose differently at the GSC shapes on a GPU of many multiprocessors
    // (three-segment warps one cube an SM and unsplit at 192 channels, four-segment warps
    // at 96 and for bf16 at 48, the weight gradient's row splits): every pass there against
    // the exact f32 GEMM on CUDA cores, on the same (for bf16: bf16-rounded) operands. The
    // 48-channel shape is smaller than the benchmark's and odd (rows of 30, 59 × 58 of
    // them): partial segments and a partial last cube (`conv_pipe`'s tile tests).
    let d = device();
    if d.kind() != DeviceKind::Cuda {
        crate::skip(
            "conv_tensor_cores_on_the_benchmark_shapes_on_gpu",
            "CUDA only (full-size shapes)",
        );
        return;
    }
    let mut r = rng(109);
    let dtypes: Vec<DType> = [DType::F32, DType::BF16]
        .into_iter()
        .filter(|&t| d.has_tensor_cores(t))
        .collect();
    // TF32 as `assert_tf32_close`; bf16 sums of up to 12 544 exact products in f32 on both
    // sides (√K·2⁻²⁴ ≈ 7e-6 typical), where results rounded to bf16 would be ~2e-3 off.
    let check = |what: &str, dtype: DType, got: &Tensor, want: &Tensor, mag: &Tensor| {
        let (want, mag) = (want.to_f64_vec().unwrap(), mag.to_f64_vec().unwrap());
        if dtype == DType::F32 {
            assert_tf32_close(what, got, &want, &mag);
        } else {
            assert_product_sums(what, got, &want, &mag, 2e-4, 1e-4);
        }
    };
    for (c, sp) in [
        (48usize, [59usize, 58, 30]),
        (96, [56, 56, 16]),
        (192, [28, 28, 8]),
    ] {
        let spec = ConvSpec::new()
            .same()
            .layout(Layout::ChannelsLast)
            .allow_tf32(true);
        let in_shape = Layout::ChannelsLast.shape(2, c, &sp);
        let w_shape = [c, c, 3, 3, 3];
        let n_in: usize = in_shape.iter().product();
        let (xv, wv, dyv) = (
            r.vec(n_in, -1.0, 1.0),
            r.vec(c * c * 27, -1.0, 1.0),
            r.vec(n_in, -1.0, 1.0),
        );
        for &dtype in &dtypes {
            let what = format!("{c} channels {dtype}");
            let (xr, wr, dyr) = (
                rounded(&xv, dtype),
                rounded(&wv, dtype),
                rounded(&dyv, dtype),
            );
            let exact = |v: &[f64], shape: &[usize]| upload(v, shape, DType::F32);
            let (x32, w32, dy32) = (
                exact(&xr, &in_shape),
                exact(&wr, &w_shape),
                exact(&dyr, &in_shape),
            );
            let (xa, wa, dya) = (
                exact(&abs(&xr), &in_shape),
                exact(&abs(&wr), &w_shape),
                exact(&abs(&dyr), &in_shape),
            );
            let (x, w, dy) = (
                upload(&xv, &in_shape, dtype),
                upload(&wv, &w_shape, dtype),
                upload(&dyv, &in_shape, dtype),
            );
            let tc = ConvImpl::TensorCore;
            let gemm = ConvImpl::Gemm;

            let (y, _) = x.conv_with(&w, None, &spec, tc).unwrap();
            let (y_want, _) = x32.conv_with(&w32, None, &spec, gemm).unwrap();
            let (y_mag, _) = xa.conv_with(&wa, None, &spec, gemm).unwrap();
            check(&format!("{what} forward"), dtype, &y, &y_want, &y_mag);

            let dx = |dy: &Tensor, w: &Tensor, which| {
                Tensor::conv_backward_input(dy, w, &in_shape, &spec, which)
                    .unwrap()
                    .0
            };
            let dx_want = dx(&dy32, &w32, gemm);
            let dx_mag = dx(&dya, &wa, gemm);
            check(
                &format!("{what} input grad"),
                dtype,
                &dx(&dy, &w, tc),
                &dx_want,
                &dx_mag,
            );
            // Channels-last weights, as the bench times them (bf16 reads them as they lie).
            let w_cl = w
                .permute(&[0, 2, 3, 4, 1])
                .unwrap()
                .contiguous()
                .unwrap()
                .permute(&[0, 4, 1, 2, 3])
                .unwrap();
            check(
                &format!("{what} input grad, channels-last weights"),
                dtype,
                &dx(&dy, &w_cl, tc),
                &dx_want,
                &dx_mag,
            );
            let dw = |x: &Tensor, dy: &Tensor, which| {
                Tensor::conv_backward_weight(x, dy, &w_shape, &spec, which)
                    .unwrap()
                    .0
            };
            check(
                &format!("{what} weight grad"),
                dtype,
                &dw(&x, &dy, tc),
                &dw(&x32, &dy32, gemm),
                &dw(&xa, &dya, gemm),
            );
        }
    }
}

#[test]
fn conv_padding_resolves_as_pytorch() {
    // PyTorch's padding="same": total dilation·(k − 1), total/2 before, the rest after;
    // causal (Mamba's conv1d(padding=k − 1) then [..., :L]): all of it before.
    // (kernel, dilation, spec, before, after)
    let cases = [
        (4, 1, ConvSpec::new().same(), 1, 2),
        (3, 2, ConvSpec::new().same(), 2, 2),
        (4, 3, ConvSpec::new().same(), 4, 5),
        (4, 1, ConvSpec::new().causal(), 3, 0),
        (4, 2, ConvSpec::new().causal(), 6, 0),
    ];
    for (k, dil, spec, before, after) in cases {
        let spec = spec.dilation(&[dil]);
        let p = spec.resolve("test", &[1, 2, 20], &[2, 2, k]).unwrap();
        assert_eq!(
            (p.pad_before[0], p.pad_after[0], p.output[0]),
            (before, after, 20),
            "kernel {k}, dilation {dil}, {:?}",
            spec
        );
    }
}

#[test]
fn conv_rejects_bad_arguments() {
    let d = device();
    let x = Tensor::zeros(&[1, 4, 5, 5], DType::F32, &d).unwrap();
    let w = Tensor::zeros(&[6, 4, 3, 3], DType::F32, &d).unwrap();
    let e = x
        .conv(&w, None, &ConvSpec::new().groups(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv") && e.contains("groups 2"), "{e}");
    let b = Tensor::zeros(&[5], DType::F32, &d).unwrap();
    let e = x
        .conv(&w, Some(&b), &ConvSpec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias [5]"), "{e}");
    let e = x
        .conv(&w, None, &ConvSpec::new().stride(&[2]).same())
        .unwrap_err()
        .to_string();
    assert!(e.contains("same"), "{e}");
    let small = Tensor::zeros(&[1, 4, 2, 2], DType::F32, &d).unwrap();
    assert!(small.conv(&w, None, &ConvSpec::new()).is_err());
    let w64 = Tensor::zeros(&[6, 4, 3, 3], DType::F64, &d).unwrap();
    assert!(
        x.conv(&w64, None, &ConvSpec::new())
            .unwrap_err()
            .to_string()
            .contains("dtype")
    );
}

/// bf16 results against the host on the bf16-rounded operands. A product of two bf16
/// values is exact in f32 (8 + 8 significant bits), so the only error is the f32
/// summation of K terms: per element ≲ K·2⁻²⁴·Σ|terms| at worst, and in relative L2
/// about √K·2⁻²⁴ ≈ 10⁻⁶ for the K ≤ 1000 here. Rounding the result (or the
/// accumulator) to bf16 would instead cost ~2⁻⁹ ≈ 2·10⁻³ relative, which the L2 bound
/// of 10⁻⁴ rejects with a wide margin on both sides.
fn assert_f32_accumulated(what: &str, got: &Tensor, want: &[f64], magnitude: &[f64]) {
    assert_product_sums(what, got, want, magnitude, 3e-5, 1e-4);
}

/// f32 results of sums of products: each element within `per_term`·Σ|terms| (`magnitude`)
/// of `want`, and the whole within `l2` in relative L2.
fn assert_product_sums(
    what: &str,
    got: &Tensor,
    want: &[f64],
    magnitude: &[f64],
    per_term: f64,
    l2: f64,
) {
    assert_eq!(got.dtype(), DType::F32, "{what}: results are f32");
    let g = got.to_f64_vec().unwrap();
    assert_eq!(g.len(), want.len(), "{what}");
    assert_eq!(magnitude.len(), want.len(), "{what}");
    for (i, ((g, w), m)) in g.iter().zip(want).zip(magnitude).enumerate() {
        assert!(
            (g - w).abs() <= per_term * m + 1e-30,
            "{what}: element {i} is {g}, expected {w} (Σ|terms| {m})"
        );
    }
    let e = rel_l2(&g, want);
    assert!(e < l2, "{what}: relative L2 error {e:e}");
}

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

/// The kernel a bf16 convolution with ≥ 16 channels per group runs when asked for `which`:
/// `Auto` takes the tensor cores where the device has them.
fn bf16_kernel(which: ConvImpl) -> ConvImpl {
    if which == ConvImpl::Auto && device().has_tensor_cores(DType::BF16) {
        ConvImpl::TensorCore
    } else {
        ConvImpl::Gemm
    }
}

#[test]
fn conv_bf16_matches_host_with_f32_accumulation() {
    let d = device();
    let mut r = rng(106);
    if !d.has_bf16() {
        let x = Tensor::from_f64(&[0.5; 2 * 8 * 16], &[2, 8, 16], DType::BF16, &d).unwrap();
        let w = Tensor::from_f64(&[0.5; 8 * 8 * 3], &[8, 8, 3], DType::BF16, &d).unwrap();
        let e = x.conv(&w, None, &ConvSpec::new()).unwrap_err().to_string();
        assert!(e.contains("conv") && e.contains("no bf16 support"), "{e}");
        crate::skip(
            "conv_bf16_matches_host_with_f32_accumulation",
            &format!("{d} has no bf16 support (its refusal was checked)"),
        );
        return;
    }
    // (channels-first input, C_out, kernel, spec): the model's 3×3×3 C→C block, and a
    // strided 2-D case with C_in ≠ C_out.
    let cases = [
        (
            vec![2usize, 16, 5, 6, 4],
            16,
            vec![3usize, 3, 3],
            ConvSpec::new().same(),
        ),
        (
            vec![1, 24, 9, 8],
            32,
            vec![3, 3],
            ConvSpec::new().pad(&[1]).stride(&[2]),
        ),
    ];
    for (input, c_out, kernel, spec) in cases {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let spec = spec.clone().layout(layout);
            let in_shape = to_layout(&input, layout);
            let w_shape = [&[c_out, input[1]][..], &kernel].concat();
            let p = spec.resolve("test", &in_shape, &w_shape).unwrap();
            let xv = r.vec(in_shape.iter().product(), -1.0, 1.0);
            let wv = r.vec(w_shape.iter().product(), -1.0, 1.0);
            let bv = r.vec(c_out, -1.0, 1.0);
            let dyv = r.vec(p.output_shape().iter().product(), -1.0, 1.0);
            let bf = |v: &[f64]| rounded(v, DType::BF16);
            let (xr, wr, dyr) = (bf(&xv), bf(&wv), bf(&dyv));
            let x = upload(&xv, &in_shape, DType::BF16);
            let w = upload(&wv, &w_shape, DType::BF16);
            let dy = upload(&dyv, &p.output_shape(), DType::BF16);
            // The bias joins the f32 accumulators: bf16 or f32.
            for bias_dtype in [DType::F32, DType::BF16] {
                let br = rounded(&bv, bias_dtype);
                let b = upload(&bv, &[c_out], bias_dtype);
                let (y_want, _, _) = host(&p, &xr, &wr, Some(&br), &dyr);
                let (y_mag, _, _) = host(&p, &abs(&xr), &abs(&wr), Some(&abs(&br)), &dyr);
                for which in [ConvImpl::Auto, ConvImpl::Gemm] {
                    let what = format!("{input:?} {layout:?} bias {bias_dtype} {which:?}");
                    let (y, ran) = x.conv_with(&w, Some(&b), &spec, which).unwrap();
                    assert_eq!(ran, bf16_kernel(which), "{what}");
                    assert_eq!(y.shape(), p.output_shape().as_slice(), "{what}");
                    assert_f32_accumulated(&format!("{what} forward"), &y, &y_want, &y_mag);
                }
            }
            let (_, dx_want, dw_want) = host(&p, &xr, &wr, None, &dyr);
            let (_, dx_mag, dw_mag) = host(&p, &abs(&xr), &abs(&wr), None, &abs(&dyr));
            for which in [ConvImpl::Auto, ConvImpl::Gemm] {
                let what = format!("{input:?} {layout:?} {which:?}");
                let (dx, ran) =
                    Tensor::conv_backward_input(&dy, &w, &in_shape, &spec, which).unwrap();
                assert_eq!(ran, bf16_kernel(which), "{what}");
                assert_eq!(dx.shape(), in_shape.as_slice(), "{what}");
                assert_f32_accumulated(&format!("{what} input grad"), &dx, &dx_want, &dx_mag);
                let (dw, ran) =
                    Tensor::conv_backward_weight(&x, &dy, &w_shape, &spec, which).unwrap();
                assert_eq!(ran, bf16_kernel(which), "{what}");
                assert_eq!(dw.shape(), w_shape.as_slice(), "{what}");
                assert_f32_accumulated(&format!("{what} weight grad"), &dw, &dw_want, &dw_mag);
            }
        }
    }
}

/// bf16 operands are widened to f32 exactly, so any kernel (here a grouped one, and mixed
/// bf16/f32 operands) gives bit for bit what f32 gives on the rounded values.
#[test]
fn conv_bf16_equals_f32_on_rounded_operands() {
    let d = device();
    if !d.has_bf16() {
        crate::skip(
            "conv_bf16_equals_f32_on_rounded_operands",
            &format!(
                "{d} has no bf16 support (conv_bf16_matches_host_with_f32_accumulation checks the refusal)"
            ),
        );
        return;
    }
    let mut r = rng(107);
    let spec = ConvSpec::new().pad(&[1]).groups(2);
    let xv = r.vec(2 * 8 * 7 * 6, -1.0, 1.0);
    let wv = r.vec(8 * 4 * 3 * 3, -1.0, 1.0);
    let x16 = upload(&xv, &[2, 8, 7, 6], DType::BF16);
    let w16 = upload(&wv, &[8, 4, 3, 3], DType::BF16);
    let x32 = upload(&rounded(&xv, DType::BF16), &[2, 8, 7, 6], DType::F32);
    let w32 = upload(&rounded(&wv, DType::BF16), &[8, 4, 3, 3], DType::F32);
    let want = x32.conv(&w32, None, &spec).unwrap().to_f64_vec().unwrap();
    for (what, x, w) in [("bf16", &x16, &w16), ("bf16 x, f32 w", &x16, &w32)] {
        let y = x.conv(w, None, &spec).unwrap();
        assert_eq!(y.dtype(), DType::F32, "{what}");
        assert_eq!(y.to_f64_vec().unwrap(), want, "{what}");
    }
    let dy = upload(&r.vec(2 * 8 * 7 * 6, -1.0, 1.0), &[2, 8, 7, 6], DType::BF16);
    let dy32 = dy.to_dtype(DType::F32).unwrap();
    let dx = |dy: &Tensor, w: &Tensor| {
        let (dx, _) =
            Tensor::conv_backward_input(dy, w, &[2, 8, 7, 6], &spec, ConvImpl::Auto).unwrap();
        dx.to_f64_vec().unwrap()
    };
    assert_eq!(dx(&dy, &w16), dx(&dy32, &w32), "input grad");
    let dw = |x: &Tensor, dy: &Tensor| {
        let (dw, _) =
            Tensor::conv_backward_weight(x, dy, &[8, 4, 3, 3], &spec, ConvImpl::Auto).unwrap();
        dw.to_f64_vec().unwrap()
    };
    assert_eq!(dw(&x16, &dy), dw(&x32, &dy32), "weight grad");
    let b64 = Tensor::zeros(&[8], DType::F64, &d).unwrap();
    let e = x16.conv(&w16, Some(&b64), &spec).unwrap_err().to_string();
    assert!(e.contains("bias is f64"), "{e}");
}

/// TF32 keeps 10 of f32's 23 mantissa bits: each operand is off by up to 2⁻¹¹ relative when
/// rounded, 2⁻¹⁰ when truncated (the pipelined kernels hand f32 bits to the tensor cores
/// unconverted), so each product by up to ~2⁻⁹ and a sum by at most ~2⁻⁹·Σ|terms| (2×
/// margin below), while dropping a term or a tap would cost far more; the relative L2
/// error of random data stays far smaller, the products' signs being random.
fn assert_tf32_close(what: &str, got: &Tensor, want: &[f64], magnitude: &[f64]) {
    assert_product_sums(what, got, want, magnitude, 4e-3, 2e-3);
}

#[test]
fn conv_tensor_cores_match_host() {
    let d = device();
    let mut r = rng(108);
    let dtypes: Vec<DType> = [DType::BF16, DType::F32]
        .into_iter()
        .filter(|&t| d.has_tensor_cores(t))
        .collect();
    if dtypes.is_empty() {
        let x = upload(
            &r.vec(2 * 16 * 6 * 5, -1.0, 1.0),
            &[2, 16, 6, 5],
            DType::F32,
        );
        let w = upload(&r.vec(16 * 16 * 9, -1.0, 1.0), &[16, 16, 3, 3], DType::F32);
        let spec = ConvSpec::new().same().allow_tf32(true);
        let e = x
            .conv_with(&w, None, &spec, ConvImpl::TensorCore)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv") && e.contains("tensor cores"), "{e}");
        let (_, ran) = x.conv_with(&w, None, &spec, ConvImpl::Auto).unwrap();
        assert_ne!(ran, ConvImpl::TensorCore);
        crate::skip(
            "conv_tensor_cores_match_host",
            &format!("{d} has no tensor cores (the refusal was checked)"),
        );
        return;
    }
    let cases = ssm_runtime::testing::tensor_core_conv_cases();
    // Fewer than 16 channels per group: asked for, a clear refusal; `Auto` goes elsewhere.
    let x8 = upload(&r.vec(2 * 8 * 6 * 5, -1.0, 1.0), &[2, 8, 6, 5], dtypes[0]);
    let w8 = upload(&r.vec(8 * 8 * 9, -1.0, 1.0), &[8, 8, 3, 3], dtypes[0]);
    let spec8 = ConvSpec::new().same().allow_tf32(true);
    let e = x8
        .conv_with(&w8, None, &spec8, ConvImpl::TensorCore)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 16 channels"), "{e}");
    let (_, ran) = x8.conv_with(&w8, None, &spec8, ConvImpl::Auto).unwrap();
    assert_ne!(ran, ConvImpl::TensorCore);
    for dtype in dtypes {
        for (input, c_out, kernel, spec) in &cases {
            for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
                let spec = spec.clone().layout(layout).allow_tf32(true);
                let in_shape = to_layout(input, layout);
                let w_shape = [&[*c_out, input[1] / spec.groups][..], kernel].concat();
                let p = spec.resolve("test", &in_shape, &w_shape).unwrap();
                let xv = r.vec(in_shape.iter().product(), -1.0, 1.0);
                let wv = r.vec(w_shape.iter().product(), -1.0, 1.0);
                let bv = r.vec(*c_out, -1.0, 1.0);
                let dyv = r.vec(p.output_shape().iter().product(), -1.0, 1.0);
                let (xr, wr, dyr) = (
                    rounded(&xv, dtype),
                    rounded(&wv, dtype),
                    rounded(&dyv, dtype),
                );
                let br = rounded(&bv, DType::F32);
                let (y_want, dx_want, dw_want) = host(&p, &xr, &wr, Some(&br), &dyr);
                let (y_mag, dx_mag, dw_mag) =
                    host(&p, &abs(&xr), &abs(&wr), Some(&abs(&br)), &abs(&dyr));
                let x = upload(&xv, &in_shape, dtype);
                let w = upload(&wv, &w_shape, dtype);
                let b = upload(&bv, &[*c_out], DType::F32);
                let dy = upload(&dyv, &p.output_shape(), dtype);
                let check = |what: &str, got: &Tensor, want: &[f64], mag: &[f64]| {
                    let what = format!("{input:?} {layout:?} {dtype} {what}");
                    if dtype == DType::BF16 {
                        assert_f32_accumulated(&what, got, want, mag);
                    } else {
                        assert_tf32_close(&what, got, want, mag);
                    }
                };
                let auto_takes_it = input[1] / spec.groups >= 16 && c_out / spec.groups >= 16;
                for which in [ConvImpl::TensorCore, ConvImpl::Auto] {
                    let want_ran = if which == ConvImpl::TensorCore || auto_takes_it {
                        ConvImpl::TensorCore
                    } else {
                        ConvImpl::Gemm
                    };
                    let (y, ran) = x.conv_with(&w, Some(&b), &spec, which).unwrap();
                    assert_eq!(ran, want_ran, "{input:?} {which:?} forward");
                    check("forward", &y, &y_want, &y_mag);
                    let (dx, ran) =
                        Tensor::conv_backward_input(&dy, &w, &in_shape, &spec, which).unwrap();
                    assert_eq!(ran, want_ran, "{input:?} {which:?} input grad");
                    check("input grad", &dx, &dx_want, &dx_mag);
                    let (dw, ran) =
                        Tensor::conv_backward_weight(&x, &dy, &w_shape, &spec, which).unwrap();
                    assert_eq!(ran, want_ran, "{input:?} {which:?} weight grad");
                    check("weight grad", &dw, &dw_want, &dw_mag);
                }
                if layout == Layout::ChannelsLast {
                    // The weights held channels-last (`[C_out, *kernel, C_in]` memory seen in
                    // PyTorch's axis order, as `channels_last_3d` holds them): the pipelined
                    // bf16 backward-data reads them as they lie (C_in, its dst channels,
                    // fastest) where its tile covers them whole (dst channels a multiple of 8
                    // up to 64 here, reduced ones of 16: the stage depth) and copies nothing;
                    // otherwise they are copied C_out fastest first. The same results.
                    let r = w.rank();
                    let to_last: Vec<usize> = [0].into_iter().chain(2..r).chain([1]).collect();
                    let to_first: Vec<usize> = [0, r - 1].into_iter().chain(1..r - 1).collect();
                    let w_cl = w
                        .permute(&to_last)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .permute(&to_first)
                        .unwrap();
                    let before = ssm_runtime::copied_elements();
                    let (dx, _) = Tensor::conv_backward_input(
                        &dy,
                        &w_cl,
                        &in_shape,
                        &spec,
                        ConvImpl::TensorCore,
                    )
                    .unwrap();
                    let copied = ssm_runtime::copied_elements() - before;
                    check("input grad, channels-last weights", &dx, &dx_want, &dx_mag);
                    let (c_in_g, c_out_g) = (input[1] / spec.groups, c_out / spec.groups);
                    let as_they_lie = dtype == DType::BF16
                        && d.has_pipelined_mma(dtype)
                        && std::env::var("SSM_CONV_PIPELINE").as_deref() != Ok("0")
                        && c_in_g % 8 == 0
                        && c_in_g <= 64
                        && c_out_g % 16 == 0;
                    assert_eq!(
                        copied == 0,
                        as_they_lie,
                        "{input:?} {dtype}: {copied} elements copied for channels-last weights"
                    );
                }
                if layout == Layout::ChannelsFirst {
                    // The same operands held channel-fastest (channels-last memory seen as
                    // channels-first), as a previous pass may hand them over: results are
                    // the same, and come back as compact channels-first tensors.
                    let held = |t: &Tensor| {
                        let r = t.rank();
                        let to_last: Vec<usize> = [0].into_iter().chain(2..r).chain([1]).collect();
                        let to_first: Vec<usize> = [0, r - 1].into_iter().chain(1..r - 1).collect();
                        t.permute(&to_last)
                            .unwrap()
                            .contiguous()
                            .unwrap()
                            .permute(&to_first)
                            .unwrap()
                    };
                    let (xh, dyh) = (held(&x), held(&dy));
                    let (y, _) = xh
                        .conv_with(&w, Some(&b), &spec, ConvImpl::TensorCore)
                        .unwrap();
                    assert!(y.is_contiguous(), "{input:?}: channels-first result");
                    check("forward, channel-fastest input", &y, &y_want, &y_mag);
                    let (dx, _) = Tensor::conv_backward_input(
                        &dyh,
                        &w,
                        &in_shape,
                        &spec,
                        ConvImpl::TensorCore,
                    )
                    .unwrap();
                    assert!(dx.is_contiguous(), "{input:?}: channels-first input grad");
                    check("input grad, channel-fastest dy", &dx, &dx_want, &dx_mag);
                    let (dw, _) = Tensor::conv_backward_weight(
                        &xh,
                        &dyh,
                        &w_shape,
                        &spec,
                        ConvImpl::TensorCore,
                    )
                    .unwrap();
                    check(
                        "weight grad, channel-fastest operands",
                        &dw,
                        &dw_want,
                        &dw_mag,
                    );
                }
            }
        }
    }
}

/// `conv_backward` gives what the two passes give on their own, bit for bit (the same
/// kernels on the same values), and where the tensor-core passes copy a channels-first
/// output gradient to channel-fastest memory it copies it once for both: dy's elements
/// copied once fewer (counted in elements: copies share launches).
/// f64 everywhere; bf16 and TF32 where the device has tensor cores.
#[test]
fn conv_backward_converts_the_output_gradient_once() {
    let d = device();
    let mut r = rng(109);
    let pipelined = |t: DType| {
        d.has_pipelined_mma(t) && std::env::var("SSM_CONV_PIPELINE").as_deref() != Ok("0")
    };
    let mut dtypes = vec![DType::F64];
    dtypes.extend(
        [DType::BF16, DType::F32]
            .into_iter()
            .filter(|&t| d.has_tensor_cores(t)),
    );
    let (input, c_out, kernel) = (vec![2usize, 16, 4, 5, 6], 24, vec![3usize, 3, 3]);
    for dtype in dtypes {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let what = format!("{dtype} {layout:?}");
            let spec = ConvSpec::new().same().layout(layout).allow_tf32(true);
            let in_shape = to_layout(&input, layout);
            let w_shape = [&[c_out, input[1]][..], &kernel].concat();
            let p = spec.resolve("test", &in_shape, &w_shape).unwrap();
            let x = upload(
                &r.vec(in_shape.iter().product(), -1.0, 1.0),
                &in_shape,
                dtype,
            );
            let w = upload(&r.vec(w_shape.iter().product(), -1.0, 1.0), &w_shape, dtype);
            let dy_len = p.output_shape().iter().product();
            let dy = upload(&r.vec(dy_len, -1.0, 1.0), &p.output_shape(), dtype);

            let before = ssm_runtime::copied_elements();
            let auto = ConvImpl::Auto;
            let (dx, ran) = Tensor::conv_backward_input(&dy, &w, &in_shape, &spec, auto).unwrap();
            let (dw, _) = Tensor::conv_backward_weight(&x, &dy, &w_shape, &spec, auto).unwrap();
            let apart = ssm_runtime::copied_elements() - before;
            let before = ssm_runtime::copied_elements();
            let (dx2, dw2) = Tensor::conv_backward(&x, &w, &dy, &spec, (true, true)).unwrap();
            let together = ssm_runtime::copied_elements() - before;

            let vals = |t: Option<Tensor>| t.expect(&what).to_f64_vec().unwrap();
            assert_eq!(vals(dx2), dx.to_f64_vec().unwrap(), "{what} input grad");
            assert_eq!(vals(dw2), dw.to_f64_vec().unwrap(), "{what} weight grad");
            let copies =
                layout == Layout::ChannelsFirst && ran == ConvImpl::TensorCore && pipelined(dtype);
            assert_eq!(
                apart - together,
                copies as u64 * dy.numel() as u64,
                "{what}: elements copied {apart} apart, {together} together"
            );

            // One gradient alone: the pass as it is.
            for want in [(true, false), (false, true)] {
                let (gx, gw) = Tensor::conv_backward(&x, &w, &dy, &spec, want).unwrap();
                assert_eq!((gx.is_some(), gw.is_some()), want, "{what}");
                let (got, pass) = if want.0 { (gx, &dx) } else { (gw, &dw) };
                let alone = format!("{what} {want:?} alone");
                assert_eq!(vals(got), pass.to_f64_vec().unwrap(), "{alone}");
            }
        }
    }
    // A mismatched output gradient is the passes' error, not a failed copy.
    let x = upload(
        &r.vec(2 * 16 * 6 * 5, -1.0, 1.0),
        &[2, 16, 6, 5],
        DType::F32,
    );
    let w = upload(&r.vec(16 * 16 * 9, -1.0, 1.0), &[16, 16, 3, 3], DType::F32);
    let dy = upload(
        &r.vec(2 * 16 * 4 * 3, -1.0, 1.0),
        &[2, 16, 4, 3],
        DType::F32,
    );
    let e = Tensor::conv_backward(&x, &w, &dy, &ConvSpec::new().same(), (true, true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match"), "{e}");
}

/// A weight in channels-last memory (`[C_out, *kernel, C_in]`, PyTorch's
/// `channels_last_3d`) viewed as `[C_out, C_in, *kernel]` gives what the same weight in
/// PyTorch's order gives, bit for bit (the same kernels read the same values), and the
/// tensor-core forward reads it without a copy where the PyTorch-order weight takes one.
/// f64 everywhere; bf16 and TF32 where the device has tensor cores.
#[test]
fn conv_takes_channels_last_weights() {
    let d = device();
    let mut r = rng(113);
    let mut dtypes = vec![DType::F64];
    dtypes.extend(
        [DType::BF16, DType::F32]
            .into_iter()
            .filter(|&t| d.has_tensor_cores(t)),
    );
    let (input, c_out) = (vec![2usize, 16, 4, 5, 6], 24);
    let w_shape = [c_out, input[1], 3, 3, 3];
    let w_memory = [c_out, 3, 3, 3, input[1]];
    for dtype in dtypes {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let what = format!("{dtype} {layout:?}");
            let spec = ConvSpec::new().same().layout(layout).allow_tf32(true);
            let in_shape = to_layout(&input, layout);
            let p = spec.resolve("test", &in_shape, &w_shape).unwrap();
            let len = |s: &[usize]| s.iter().product::<usize>();
            let x = upload(&r.vec(len(&in_shape), -1.0, 1.0), &in_shape, dtype);
            let dy_shape = p.output_shape();
            let dy = upload(&r.vec(len(&dy_shape), -1.0, 1.0), &dy_shape, dtype);
            let w_cl = upload(&r.vec(len(&w_memory), -1.0, 1.0), &w_memory, dtype)
                .permute(&[0, 4, 1, 2, 3])
                .unwrap();
            let w = w_cl.contiguous().unwrap();
            assert_eq!(w.shape(), w_cl.shape(), "{what}");

            let auto = ConvImpl::Auto;
            let mut runs = Vec::new();
            for weight in [&w, &w_cl] {
                let before = ssm_runtime::copied_elements();
                let (y, ran) = x.conv_with(weight, None, &spec, auto).unwrap();
                let copied = ssm_runtime::copied_elements() - before;
                let (dx, _) =
                    Tensor::conv_backward_input(&dy, weight, &in_shape, &spec, auto).unwrap();
                let vals = [y, dx].map(|t| t.to_f64_vec().unwrap());
                runs.push((ran, copied, vals));
            }
            let ((ran, copied, want), (ran_cl, copied_cl, got)) = (&runs[0], &runs[1]);
            assert_eq!(ran, ran_cl, "{what}");
            assert_eq!(got[0], want[0], "{what}: forward");
            assert_eq!(got[1], want[1], "{what}: input gradient");
            let reorder = u64::from(*ran == ConvImpl::TensorCore) * w.numel() as u64;
            assert_eq!(copied - copied_cl, reorder, "{what}: forward copies");
        }
    }
}
