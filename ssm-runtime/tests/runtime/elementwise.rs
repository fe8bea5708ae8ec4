use ssm_runtime::testing::assert_close;
use ssm_runtime::{BinaryOp, DType, Tensor, UnaryOp};

use crate::{FLOATS, broadcast_index, rng, rounded, upload};

fn erf(x: f64) -> f64 {
    libm::erf(x)
}
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
fn softplus(x: f64, t: f64) -> f64 {
    if x > t { x } else { x.exp().ln_1p() }
}

/// (op, host function, input range, needs positive input, scalar param)
type UnaryCase = (UnaryOp, fn(f64, f64) -> f64, f64, bool, f64);

fn unary_cases() -> Vec<UnaryCase> {
    vec![
        (UnaryOp::Neg, |x, _| -x, 3.0, false, 0.0),
        (UnaryOp::Exp, |x, _| x.exp(), 4.0, false, 0.0),
        (UnaryOp::Log, |x, _| x.ln(), 5.0, true, 0.0),
        (UnaryOp::Sqrt, |x, _| x.sqrt(), 5.0, true, 0.0),
        (UnaryOp::Rsqrt, |x, _| 1.0 / x.sqrt(), 5.0, true, 0.0),
        (UnaryOp::Abs, |x, _| x.abs(), 3.0, false, 0.0),
        (UnaryOp::Tanh, |x, _| x.tanh(), 4.0, false, 0.0),
        (UnaryOp::Sigmoid, |x, _| sigmoid(x), 8.0, false, 0.0),
        (UnaryOp::Silu, |x, _| x * sigmoid(x), 6.0, false, 0.0),
        (UnaryOp::Softplus, softplus, 30.0, false, 20.0),
        (
            UnaryOp::Gelu,
            |x, _| 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
            5.0,
            false,
            0.0,
        ),
        (UnaryOp::Relu, |x, _| x.max(0.0), 3.0, false, 0.0),
        (UnaryOp::Recip, |x, _| 1.0 / x, 3.0, false, 0.0),
        (UnaryOp::Square, |x, _| x * x, 3.0, false, 0.0),
        (UnaryOp::Sign, |x, _| x.signum(), 3.0, false, 0.0),
        (UnaryOp::AddScalar, |x, p| x + p, 3.0, false, 0.75),
        (UnaryOp::MulScalar, |x, p| x * p, 3.0, false, -1.25),
        (UnaryOp::PowScalar, |x, p| x.powf(p), 3.0, true, 1.7),
        (UnaryOp::PowScalar, |x, p| x.powf(p), 3.0, false, 3.0),
        (UnaryOp::RsubScalar, |x, p| p - x, 3.0, false, 2.5),
        (UnaryOp::RdivScalar, |x, p| p / x, 3.0, false, 2.5),
        (UnaryOp::MaxScalar, |x, p| x.max(p), 3.0, false, 0.3),
        (UnaryOp::MinScalar, |x, p| x.min(p), 3.0, false, 0.3),
        (
            UnaryOp::GtScalar,
            |x, p| if x > p { 1.0 } else { 0.0 },
            3.0,
            false,
            0.3,
        ),
        (
            UnaryOp::LtScalar,
            |x, p| if x < p { 1.0 } else { 0.0 },
            3.0,
            false,
            0.3,
        ),
    ]
}

#[test]
fn unary_ops_match_host_contiguous_and_strided() {
    let mut r = rng(1);
    let shape = [3, 5, 7];
    for (dtype, rtol, atol) in FLOATS {
        for (op, f, range, positive, p) in unary_cases() {
            let raw = if positive {
                r.vec(105, 0.05, range)
            } else {
                r.nonzero(105, 0.01, range)
            };
            let x = upload(&raw, &shape, dtype);
            let xr = rounded(&raw, dtype);
            let want: Vec<f64> = xr.iter().map(|&v| f(v, p)).collect();
            let got = x.unary(op, p).unwrap().to_f64_vec().unwrap();
            assert_close(
                &format!("{op:?} {dtype} contiguous"),
                &got,
                &want,
                rtol,
                atol,
            );

            // Strided: a transposed view goes through the strided kernel.
            let xt = x.transpose(0, 2).unwrap();
            let want_t = crate::host_view(&want, &[7, 5, 3], &[1, 7, 35], 0);
            let got_t = xt.unary(op, p).unwrap().to_f64_vec().unwrap();
            assert_close(
                &format!("{op:?} {dtype} strided"),
                &got_t,
                &want_t,
                rtol,
                atol,
            );
        }
    }
}

#[test]
fn unary_on_offset_views_uses_the_right_elements() {
    let mut r = rng(2);
    for (dtype, rtol, atol) in FLOATS {
        let raw = r.nonzero(64, 0.1, 2.0);
        let x = upload(&raw, &[64], dtype);
        // Offsets 1 and 3 force the scalar path; 4 keeps vectorised loads aligned.
        for start in [1usize, 3, 4] {
            let v = x.narrow(0, start, 37).unwrap();
            let got = v.exp().unwrap().to_f64_vec().unwrap();
            let want: Vec<f64> = rounded(&raw, dtype)[start..start + 37]
                .iter()
                .map(|x| x.exp())
                .collect();
            assert_close(
                &format!("exp narrow {start} {dtype}"),
                &got,
                &want,
                rtol,
                atol,
            );
        }
    }
}

fn binary_host(op: BinaryOp, a: f64, b: f64) -> f64 {
    let t = |c: bool| if c { 1.0 } else { 0.0 };
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Eq => t(a == b),
        BinaryOp::Ne => t(a != b),
        BinaryOp::Lt => t(a < b),
        BinaryOp::Le => t(a <= b),
        BinaryOp::Gt => t(a > b),
        BinaryOp::Ge => t(a >= b),
        other => unreachable!("{other:?} is tested with the backward ops"),
    }
}

const BINARY: [BinaryOp; 13] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
];

#[test]
fn binary_ops_broadcast_like_numpy() {
    let mut r = rng(3);
    let cases: [(&[usize], &[usize]); 5] = [
        (&[4, 6], &[4, 6]),       // contiguous fast path
        (&[2, 1, 5], &[3, 1]),    // both sides broadcast
        (&[3, 4, 5], &[5]),       // trailing vector
        (&[7], &[]),              // rank-0 scalar
        (&[1, 9, 1], &[2, 1, 3]), // size-1 axes on both
    ];
    for (dtype, rtol, atol) in FLOATS {
        for (sa, sb) in cases {
            let out_shape = ssm_runtime::shape::broadcast_shapes("test", sa, sb).unwrap();
            let na: usize = sa.iter().product();
            let nb: usize = sb.iter().product();
            let a_raw = r.vec(na, 0.2, 3.0);
            let mut b_raw = r.nonzero(nb, 0.2, 3.0);
            // Make some comparisons tie.
            if nb > 1 && na > 1 {
                b_raw[0] = a_raw[0];
            }
            let (a, b) = (upload(&a_raw, sa, dtype), upload(&b_raw, sb, dtype));
            let (ar, br) = (rounded(&a_raw, dtype), rounded(&b_raw, dtype));
            let n: usize = out_shape.iter().product();
            for op in BINARY {
                let got = a.binary(&b, op, 0.0).unwrap();
                assert_eq!(got.shape(), out_shape.as_slice());
                let want: Vec<f64> = (0..n)
                    .map(|i| {
                        binary_host(
                            op,
                            ar[broadcast_index(i, &out_shape, sa)],
                            br[broadcast_index(i, &out_shape, sb)],
                        )
                    })
                    .collect();
                let got = got.to_f64_vec().unwrap();
                assert_close(
                    &format!("{op:?} {sa:?}x{sb:?} {dtype}"),
                    &got,
                    &want,
                    rtol,
                    atol,
                );
            }
        }
    }
}

#[test]
fn extrema_propagate_nan_like_pytorch() {
    // torch.relu / clamp / maximum / minimum return NaN when either operand is NaN; the
    // hardware's max / min return the other operand.
    let d = ssm_runtime::testing::device();
    let nan = f64::NAN;
    for dtype in [DType::F32, DType::F64] {
        let a = Tensor::from_f64(&[nan, -2.0, 3.0, nan, 1.5], &[5], dtype, &d).unwrap();
        let b = Tensor::from_f64(&[1.0, nan, 2.0, nan, 1.5], &[5], dtype, &d).unwrap();
        // Exact, NaN only matching NaN.
        let same = |got: Tensor, want: &[f64], what: &str| {
            assert_close(
                &format!("{what} {dtype}"),
                &got.to_f64_vec().unwrap(),
                want,
                0.0,
                0.0,
            )
        };
        same(
            a.unary(UnaryOp::Relu, 0.0).unwrap(),
            &[nan, 0.0, 3.0, nan, 1.5],
            "relu",
        );
        same(
            a.unary(UnaryOp::MaxScalar, 2.0).unwrap(),
            &[nan, 2.0, 3.0, nan, 2.0],
            "max_scalar",
        );
        same(
            a.unary(UnaryOp::MinScalar, 2.0).unwrap(),
            &[nan, -2.0, 2.0, nan, 1.5],
            "min_scalar",
        );
        same(
            a.binary(&b, BinaryOp::Max, 0.0).unwrap(),
            &[nan, nan, 3.0, nan, 1.5],
            "maximum",
        );
        same(
            a.binary(&b, BinaryOp::Min, 0.0).unwrap(),
            &[nan, nan, 2.0, nan, 1.5],
            "minimum",
        );
        // relu's backward (input, gradient): a NaN input passes its gradient on, as
        // PyTorch's threshold_backward does; zero and below give zero.
        let g = Tensor::from_f64(&[0.5, 0.25, 4.0, nan, 2.0], &[5], dtype, &d).unwrap();
        let x = Tensor::from_f64(&[nan, -2.0, 0.0, nan, 1.5], &[5], dtype, &d).unwrap();
        same(
            x.binary(&g, BinaryOp::ReluGrad, 0.0).unwrap(),
            &[0.5, 0.0, 0.0, nan, 2.0],
            "relu backward",
        );
    }
}

#[test]
fn pow_follows_c_conventions_for_negative_bases() {
    for (dtype, rtol, atol) in FLOATS {
        let a = upload(&[-2.0, -2.0, -0.5, 0.0, 0.0, 3.0], &[6], dtype);
        let b = upload(&[3.0, 2.0, 0.5, 2.0, -1.0, 0.0], &[6], dtype);
        let got = a.pow(&b).unwrap().to_f64_vec().unwrap();
        let want = [-8.0, 4.0, f64::NAN, 0.0, f64::INFINITY, 1.0];
        assert_close(&format!("pow {dtype}"), &got, &want, rtol, atol);
    }
}

#[test]
fn where_selects_with_broadcasting() {
    let mut r = rng(4);
    for (dtype, rtol, atol) in FLOATS {
        let c_raw: Vec<f64> = (0..12).map(|_| (r.next_u64() & 1) as f64).collect();
        let a_raw = r.nonzero(4, 0.5, 2.0);
        let b_raw = r.nonzero(12, 0.5, 2.0);
        let c = upload(&c_raw, &[3, 4], dtype);
        let a = upload(&a_raw, &[4], dtype);
        let b = upload(&b_raw, &[3, 4], dtype);
        let got = Tensor::where_cond(&c, &a, &b)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let (ar, br) = (rounded(&a_raw, dtype), rounded(&b_raw, dtype));
        let want: Vec<f64> = (0..12)
            .map(|i| if c_raw[i] != 0.0 { ar[i % 4] } else { br[i] })
            .collect();
        assert_close(&format!("where {dtype}"), &got, &want, rtol, atol);
    }
}

/// The fused unary-backward ops against finite-difference-free closed forms.
#[test]
fn unary_backward_ops_match_closed_forms() {
    let mut r = rng(5);
    type G = fn(f64, f64, f64) -> f64; // (a, dy, p) -> dx
    let phi = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cases: Vec<(BinaryOp, G, bool, f64)> = vec![
        (BinaryOp::ExpGrad, |y, g, _| g * y, false, 0.0),
        (BinaryOp::LogGrad, |x, g, _| g / x, true, 0.0),
        (BinaryOp::SqrtGrad, |y, g, _| g * 0.5 / y, true, 0.0),
        (
            BinaryOp::RsqrtGrad,
            |y, g, _| -0.5 * g * y * y * y,
            true,
            0.0,
        ),
        (BinaryOp::AbsGrad, |x, g, _| g * x.signum(), false, 0.0),
        (BinaryOp::TanhGrad, |y, g, _| g * (1.0 - y * y), false, 0.0),
        (
            BinaryOp::SigmoidGrad,
            |y, g, _| g * y * (1.0 - y),
            false,
            0.0,
        ),
        (
            BinaryOp::SiluGrad,
            |x, g, _| {
                let s = sigmoid(x);
                g * s * (1.0 + x * (1.0 - s))
            },
            false,
            0.0,
        ),
        (
            BinaryOp::SoftplusGrad,
            |x, g, p| if x > p { g } else { g * sigmoid(x) },
            false,
            1.5,
        ),
        (
            BinaryOp::ReluGrad,
            |x, g, _| if x > 0.0 { g } else { 0.0 },
            false,
            0.0,
        ),
        (BinaryOp::RecipGrad, |y, g, _| -g * y * y, false, 0.0),
        (
            BinaryOp::PowScalarGrad,
            |x, g, p| g * p * x.powf(p - 1.0),
            true,
            2.5,
        ),
    ];
    for (dtype, rtol, atol) in FLOATS {
        for (op, f, positive, p) in &cases {
            let a_raw = if *positive {
                r.vec(50, 0.1, 3.0)
            } else {
                r.nonzero(50, 0.05, 3.0)
            };
            let g_raw = r.nonzero(50, 0.1, 2.0);
            let a = upload(&a_raw, &[5, 10], dtype);
            let g = upload(&g_raw, &[5, 10], dtype);
            let got = a.binary(&g, *op, *p).unwrap().to_f64_vec().unwrap();
            let (ar, gr) = (rounded(&a_raw, dtype), rounded(&g_raw, dtype));
            let want: Vec<f64> = (0..50).map(|i| f(ar[i], gr[i], *p)).collect();
            assert_close(&format!("{op:?} {dtype}"), &got, &want, rtol, atol);
        }
        // GELU's derivative: Φ(x) + x φ(x).
        let a_raw = r.nonzero(50, 0.05, 4.0);
        let g_raw = r.nonzero(50, 0.1, 2.0);
        let a = upload(&a_raw, &[50], dtype);
        let g = upload(&g_raw, &[50], dtype);
        let got = a
            .binary(&g, BinaryOp::GeluGrad, 0.0)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let (ar, gr) = (rounded(&a_raw, dtype), rounded(&g_raw, dtype));
        let want: Vec<f64> = (0..50)
            .map(|i| gr[i] * (0.5 * (1.0 + erf(ar[i] / 2f64.sqrt())) + ar[i] * phi(ar[i])))
            .collect();
        assert_close(&format!("GeluGrad {dtype}"), &got, &want, rtol, atol);
    }
}

#[test]
fn vector_widths_cover_every_length() {
    // Lengths 1..=9 exercise vector widths 4, 2 and 1 of the contiguous kernels.
    let mut r = rng(6);
    for n in 1..=9usize {
        let a_raw = r.vec(n, -2.0, 2.0);
        let b_raw = r.vec(n, -2.0, 2.0);
        let a = upload(&a_raw, &[n], DType::F32);
        let b = upload(&b_raw, &[n], DType::F32);
        let got = a.add(&b).unwrap().to_f64_vec().unwrap();
        let want: Vec<f64> = (0..n)
            .map(|i| (a_raw[i] as f32 + b_raw[i] as f32) as f64)
            .collect();
        assert_close(&format!("add n={n}"), &got, &want, 0.0, 0.0);
    }
}
