//! bf16 storage: host rounding against an independent nearest-value search, upload and
//! read-back, the device cast (`to_dtype`) bit for bit against the host, and the error
//! every non-convolution op gives a bf16 operand. Device casts need bf16 support (CUDA);
//! elsewhere those tests check the refusal and print a skip line.

use ssm_runtime::ops::PoolSpec;
use ssm_runtime::testing::{device, rel_l2};
use ssm_runtime::{DType, Element, Error, Layout, Tensor, bf16};

use crate::{rng, rounded, skip, upload};

fn value(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

/// The bf16 nearest to `v`, ties to even, by binary search over the ordered positive bit
/// patterns (independent of the library's scaling method).
fn nearest(v: f64) -> u16 {
    let sign: u16 = if v.is_sign_negative() { 0x8000 } else { 0 };
    let a = v.abs();
    const MAX: u16 = 0x7F7F;
    // Largest pattern whose value is ≤ a.
    let lo = if a >= value(MAX) {
        MAX
    } else {
        let (mut l, mut h) = (0u16, MAX);
        while h - l > 1 {
            let m = l + (h - l) / 2;
            if value(m) <= a { l = m } else { h = m }
        }
        l
    };
    // One step past the largest finite value rounds to infinity (0x7F80).
    let above = if lo == MAX {
        2f64.powi(128)
    } else {
        value(lo + 1)
    };
    let (down, up) = (a - value(lo), above - a);
    let bits = if down < up || (down == up && lo % 2 == 0) {
        lo
    } else {
        lo + 1
    };
    sign | bits
}

/// Finite values that stress rounding: random magnitudes over the whole range (subnormal
/// to overflow), exact ties between neighbours and values a hair off a tie (which a
/// double rounding through f32 gets wrong), the overflow threshold and signed zeros.
fn hard_values(salt: u64, n: usize) -> Vec<f64> {
    let mut r = rng(salt);
    let mut v = Vec::new();
    for _ in 0..n {
        let sign = if r.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        v.push(sign * 2f64.powf(r.uniform(-140.0, 128.5)));
        let b = (r.next_u64() % 0x7F7F) as u16;
        let tie = (value(b) + value(b + 1)) / 2.0;
        v.push(sign * tie);
        v.push(sign * tie * (1.0 + 2f64.powi(-40)));
        v.push(sign * tie * (1.0 - 2f64.powi(-40)));
        v.push(sign * r.uniform(-1.0, 1.0));
    }
    let max = value(0x7F7F);
    let half_ulp = 2f64.powi(127 - 8);
    v.extend([
        0.0,
        -0.0,
        max,
        max + half_ulp,
        max + half_ulp * 0.999,
        2f64.powi(-133),
    ]);
    v.extend([
        2f64.powi(-134),
        2f64.powi(-134) * 1.0001,
        3.0 * 2f64.powi(-134),
    ]);
    v
}

fn bits_of(v: &[f64]) -> Vec<u16> {
    v.iter()
        .map(|&x| <bf16 as Element>::from_f64(x).to_bits())
        .collect()
}

#[test]
fn bf16_host_rounding_is_nearest_even() {
    for &x in &hard_values(301, 4000) {
        let got = <bf16 as Element>::from_f64(x).to_bits();
        assert_eq!(got, nearest(x), "from_f64({x:e}) gave {got:#06x}");
        // f32 inputs use the same conversion (f32 → f64 is exact).
        let f = x as f32;
        if f.is_finite() {
            let g = <bf16 as Element>::from_f64(f64::from(f)).to_bits();
            assert_eq!(g, nearest(f64::from(f)), "from f32 {f:e}");
        }
    }
    assert_eq!(<bf16 as Element>::from_f64(f64::INFINITY).to_bits(), 0x7F80);
    assert_eq!(
        <bf16 as Element>::from_f64(f64::NEG_INFINITY).to_bits(),
        0xFF80
    );
    assert!(<bf16 as Element>::from_f64(f64::NAN).is_nan());
}

#[test]
fn bf16_upload_and_read_back() {
    let d = device();
    let v = hard_values(302, 50);
    let want = rounded(&v, DType::BF16);
    let t = Tensor::from_f64(&v, &[v.len()], DType::BF16, &d).unwrap();
    assert_eq!(t.dtype(), DType::BF16);
    let got = t.to_f64_vec().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "element {i}: {} → {g:e}", v[i]);
    }
    let host: Vec<bf16> = bits_of(&v).into_iter().map(bf16::from_bits).collect();
    let t2 = Tensor::from_slice(&host, &[v.len()], &d).unwrap();
    let back: Vec<u16> = t2
        .to_vec::<bf16>()
        .unwrap()
        .iter()
        .map(|b| b.to_bits())
        .collect();
    assert_eq!(back, bits_of(&v));
    assert!(matches!(t.to_vec::<f32>(), Err(Error::DType { .. })));
    // A contiguous view at an offset reads without a kernel on every device.
    let tail = t.narrow(0, 3, 5).unwrap().to_f64_vec().unwrap();
    assert_eq!(tail, want[3..8].to_vec());
}

/// Whether the device runs bf16 kernels; otherwise check that kernel-backed bf16 work is
/// refused with the device named, and say that the numeric checks are skipped.
pub fn bf16_device_or_skip(test: &str) -> bool {
    let d = device();
    if d.has_bf16() {
        return true;
    }
    let x = Tensor::from_f64(&[1.0, 2.0], &[2], DType::F32, &d).unwrap();
    let e = x.to_dtype(DType::BF16).unwrap_err().to_string();
    assert!(
        e.contains("to_dtype") && e.contains("no bf16 support"),
        "{e}"
    );
    let e = Tensor::zeros(&[2], DType::BF16, &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("full") && e.contains("no bf16 support"), "{e}");
    skip(
        test,
        &format!("{d} has no bf16 support (its refusal was checked)"),
    );
    false
}

#[test]
fn bf16_casts_match_host_bit_for_bit() {
    if !bf16_device_or_skip("bf16_casts_match_host_bit_for_bit") {
        return;
    }
    let v = hard_values(303, 2000);
    let n = v.len();
    let want = bits_of(&v);
    let check = |what: &str, t: &Tensor, want: &[u16]| {
        assert_eq!(t.dtype(), DType::BF16, "{what}");
        let got = t.to_vec::<bf16>().unwrap();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), *w, "{what}: element {i} ({:e})", v[i]);
        }
    };
    // f64 → bf16 rounds once (a tie nudged by 2^-40 must not round as the tie).
    let x64 = upload(&v, &[n], DType::F64);
    let b = x64.to_dtype(DType::BF16).unwrap();
    check("f64 → bf16", &b, &want);
    // f32 → bf16 (values first rounded to f32, as stored).
    let v32 = rounded(&v, DType::F32);
    let b32 = upload(&v32, &[n], DType::F32)
        .to_dtype(DType::BF16)
        .unwrap();
    check("f32 → bf16", &b32, &bits_of(&v32));
    // Widening is exact.
    let wide = rounded(&v, DType::BF16);
    for dt in [DType::F32, DType::F64] {
        let w = b.to_dtype(dt).unwrap();
        assert_eq!(w.dtype(), dt);
        assert_eq!(w.to_f64_vec().unwrap(), wide, "bf16 → {dt}");
    }
    // Non-finite values.
    let special = upload(&[f64::NAN, f64::INFINITY, -f64::INFINITY], &[3], DType::F32)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    assert!(special[0].is_nan() && special[1] == f64::INFINITY && special[2] == -f64::INFINITY);
    // A strided (permuted) source is read in place; bf16 views copy with `contiguous`.
    let mut r = rng(304);
    let m = r.vec(6 * 7, -3.0, 3.0);
    let src = upload(&m, &[6, 7], DType::F64);
    let t = src.transpose(0, 1).unwrap().to_dtype(DType::BF16).unwrap();
    let host_t: Vec<f64> = (0..42).map(|i| m[(i % 6) * 7 + i / 6]).collect();
    check("transposed f64 → bf16", &t, &bits_of(&host_t));
    let back = t.transpose(0, 1).unwrap().contiguous().unwrap();
    assert_eq!(back.to_f64_vec().unwrap(), rounded(&m, DType::BF16));
    // A fresh bf16 fill.
    let z = Tensor::full(&[5], 1.5, DType::BF16, &device()).unwrap();
    assert_eq!(z.to_f64_vec().unwrap(), vec![1.5; 5]);
}

#[test]
fn to_dtype_between_f32_and_f64_and_refusals() {
    // Runs on every device: the same cast kernel without bf16.
    let d = device();
    let mut r = rng(305);
    let v = r.vec(1000, -1e3, 1e3);
    let x = upload(&v, &[10, 100], DType::F64);
    let f = x.narrow(1, 7, 50).unwrap().to_dtype(DType::F32).unwrap();
    let host: Vec<f64> = (0..500).map(|i| v[(i / 50) * 100 + 7 + i % 50]).collect();
    assert_eq!(f.to_f64_vec().unwrap(), rounded(&host, DType::F32));
    let back = f.to_dtype(DType::F64).unwrap();
    assert!(rel_l2(&back.to_f64_vec().unwrap(), &host) < 1e-7);
    // Same dtype: the tensor itself.
    assert_eq!(x.to_dtype(DType::F64).unwrap().to_f64_vec().unwrap(), v);
    let idx = Tensor::from_slice(&[1u32, 2], &[2], &d).unwrap();
    let e = idx.to_dtype(DType::F32).unwrap_err().to_string();
    assert!(e.contains("to_dtype") && e.contains("u32"), "{e}");
    let e = x.to_dtype(DType::U32).unwrap_err().to_string();
    assert!(e.contains("cannot convert f64 to u32"), "{e}");
}

#[test]
fn bf16_operands_are_refused_by_non_conv_ops() {
    let d = device();
    let b = Tensor::from_f64(&[0.5; 24], &[1, 2, 3, 4], DType::BF16, &d).unwrap();
    let m = Tensor::from_f64(&[0.5; 16], &[4, 4], DType::BF16, &d).unwrap();
    let results: Vec<(&str, Result<Tensor, Error>)> = vec![
        ("add", b.add(&b)),
        ("unary", b.exp()),
        ("sum", b.sum(&[1], false)),
        ("matmul", m.matmul(&m)),
        ("softmax", b.softmax(-1)),
        (
            "layer_norm",
            b.layer_norm(None, None, 1e-5, Layout::ChannelsLast),
        ),
        ("avg_pool", b.avg_pool(&PoolSpec::new(&[2, 2]))),
        (
            "conv_backward_bias",
            Tensor::conv_backward_bias(&b, Layout::ChannelsFirst),
        ),
        (
            "rand_uniform",
            Tensor::rand_uniform(&[4], 0.0, 1.0, 7, DType::BF16, &d),
        ),
    ];
    for (op, r) in results {
        let e = r.expect_err(op);
        assert!(matches!(e, Error::DType { .. }), "{op}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("does not support bf16") && msg.contains("to_dtype"),
            "{op}: {msg}"
        );
    }
}
