//! Fused attention against a host f64 reference (output, log-sum-exp, all three gradients),
//! with partial blocks, strided (permuted) inputs, f32 and f64.

use ssm_runtime::testing::{assert_close, device};
use ssm_runtime::{DType, Tensor};

use crate::{rng, rounded, upload};

struct Host {
    out: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn host(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: &[f64],
    bh: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    s: f64,
) -> Host {
    let mut out = vec![0.0; bh * lq * dv];
    let mut lse = vec![0.0; bh * lq];
    let mut dq = vec![0.0; bh * lq * d];
    let mut dk = vec![0.0; bh * lk * d];
    let mut dvv = vec![0.0; bh * lk * dv];
    for b in 0..bh {
        for i in 0..lq {
            let qi = &q[(b * lq + i) * d..(b * lq + i + 1) * d];
            let sc: Vec<f64> = (0..lk)
                .map(|j| (0..d).map(|e| qi[e] * k[(b * lk + j) * d + e]).sum::<f64>() * s)
                .collect();
            let m = sc.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
            lse[b * lq + i] = m + z.ln();
            let p: Vec<f64> = sc.iter().map(|x| (x - m).exp() / z).collect();
            for e in 0..dv {
                out[(b * lq + i) * dv + e] = (0..lk).map(|j| p[j] * v[(b * lk + j) * dv + e]).sum();
            }
            let gi = &g[(b * lq + i) * dv..(b * lq + i + 1) * dv];
            let dp: Vec<f64> = (0..lk)
                .map(|j| (0..dv).map(|e| gi[e] * v[(b * lk + j) * dv + e]).sum())
                .collect();
            let dsum: f64 = (0..lk).map(|j| p[j] * dp[j]).sum();
            for j in 0..lk {
                let ds = p[j] * (dp[j] - dsum);
                for e in 0..d {
                    dq[(b * lq + i) * d + e] += ds * k[(b * lk + j) * d + e] * s;
                    dk[(b * lk + j) * d + e] += ds * qi[e] * s;
                }
                for e in 0..dv {
                    dvv[(b * lk + j) * dv + e] += p[j] * gi[e];
                }
            }
        }
    }
    Host {
        out,
        lse,
        dq,
        dk,
        dv: dvv,
    }
}

#[test]
fn fused_attention_matches_host() {
    let _ = device();
    let mut r = rng(401);
    for &(b, h, lq, lk, d, dv) in &[
        (2usize, 2usize, 5usize, 7usize, 8usize, 6usize),
        (1, 2, 67, 70, 4, 4),
        (1, 1, 1, 130, 16, 8),
        // More batch·heads than one launch's grid y axis holds (65 535).
        (2, 35_000, 1, 2, 1, 1),
    ] {
        let qv = r.vec(b * h * lq * d, -1.0, 1.0);
        let kv = r.vec(b * h * lk * d, -1.0, 1.0);
        let vv = r.vec(b * h * lk * dv, -1.0, 1.0);
        let gv = r.vec(b * h * lq * dv, -1.0, 1.0);
        for dtype in [DType::F32, DType::F64] {
            let (qr, kr, vr, gr) = (
                rounded(&qv, dtype),
                rounded(&kv, dtype),
                rounded(&vv, dtype),
                rounded(&gv, dtype),
            );
            let s = 1.0 / (d as f64).sqrt();
            let want = host(&qr, &kr, &vr, &gr, b * h, lq, lk, d, dv, s);
            let q = upload(&qv, &[b, h, lq, d], dtype);
            let k = upload(&kv, &[b, h, lk, d], dtype);
            let v = upload(&vv, &[b, h, lk, dv], dtype);
            let g = upload(&gv, &[b, h, lq, dv], dtype);
            let (tr, ta) = if dtype == DType::F32 {
                (2e-5, 2e-5)
            } else {
                (1e-12, 1e-12)
            };
            let what = format!("attention b{b} h{h} lq{lq} lk{lk} d{d} dv{dv} {dtype}");
            let (o, lse) = Tensor::attention(&q, &k, &v, None).unwrap();
            assert_close(
                &format!("{what} out"),
                &o.to_f64_vec().unwrap(),
                &want.out,
                tr,
                ta,
            );
            assert_close(
                &format!("{what} lse"),
                &lse.to_f64_vec().unwrap(),
                &want.lse,
                tr,
                ta,
            );
            let (dq, dk, dvt) = Tensor::attention_backward(&q, &k, &v, &o, &lse, &g, None).unwrap();
            assert_close(
                &format!("{what} dq"),
                &dq.to_f64_vec().unwrap(),
                &want.dq,
                tr * 5.0,
                ta * 5.0,
            );
            assert_close(
                &format!("{what} dk"),
                &dk.to_f64_vec().unwrap(),
                &want.dk,
                tr * 5.0,
                ta * 5.0,
            );
            assert_close(
                &format!("{what} dv"),
                &dvt.to_f64_vec().unwrap(),
                &want.dv,
                tr * 5.0,
                ta * 5.0,
            );
        }
    }
}

#[test]
fn fused_attention_reads_permuted_heads() {
    // Q, K, V stored [B, L, H, D] (as a projection produces them) and viewed [B, H, L, D].
    let mut r = rng(402);
    let (b, l, h, d) = (2usize, 9usize, 3usize, 4usize);
    let qv = r.vec(b * l * h * d, -1.0, 1.0);
    let kv = r.vec(b * l * h * d, -1.0, 1.0);
    let vv = r.vec(b * l * h * d, -1.0, 1.0);
    for dtype in [DType::F32, DType::F64] {
        let load = |v: &[f64]| {
            upload(v, &[b, l, h, d], dtype)
                .permute(&[0, 2, 1, 3])
                .unwrap()
        };
        let (q, k, v) = (load(&qv), load(&kv), load(&vv));
        let (o, _) = Tensor::attention(&q, &k, &v, Some(0.3)).unwrap();
        let (oc, _) = Tensor::attention(
            &q.contiguous().unwrap(),
            &k.contiguous().unwrap(),
            &v.contiguous().unwrap(),
            Some(0.3),
        )
        .unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
        assert_close(
            &format!("permuted {dtype}"),
            &o.to_f64_vec().unwrap(),
            &oc.to_f64_vec().unwrap(),
            tol,
            tol,
        );
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let d = device();
    let q = Tensor::zeros(&[1, 2, 3, 4], DType::F32, &d).unwrap();
    let k = Tensor::zeros(&[1, 2, 5, 3], DType::F32, &d).unwrap();
    let e = Tensor::attention(&q, &k, &k, None).unwrap_err().to_string();
    assert!(e.contains("attention") && e.contains("[1, 2, 5, 3]"), "{e}");
    let big = Tensor::zeros(&[1, 1, 2, 300], DType::F32, &d).unwrap();
    assert!(Tensor::attention(&big, &big, &big, None).is_err());
}

#[test]
fn attention_without_queries_has_zero_key_gradients() {
    let mut r = rng(402);
    let q = upload(&[], &[1, 2, 0, 4], DType::F32);
    let k = upload(&r.vec(2 * 3 * 4, -1.0, 1.0), &[1, 2, 3, 4], DType::F32);
    let v = upload(&r.vec(2 * 3 * 5, -1.0, 1.0), &[1, 2, 3, 5], DType::F32);
    let (o, lse) = Tensor::attention(&q, &k, &v, None).unwrap();
    assert_eq!(
        (o.shape(), lse.shape()),
        (&[1, 2, 0, 5][..], &[1, 2, 0][..])
    );
    let g = upload(&[], &[1, 2, 0, 5], DType::F32);
    let (dq, dk, dv) = Tensor::attention_backward(&q, &k, &v, &o, &lse, &g, None).unwrap();
    assert_eq!(dq.shape(), &[1, 2, 0, 4]);
    assert_eq!(dk.to_f64_vec().unwrap(), vec![0.0; 24]);
    assert_eq!(dv.to_f64_vec().unwrap(), vec![0.0; 30]);
}

#[test]
fn attention_keeps_large_scores_finite() {
    // Scores (scale 1) of a few hundred: e^s overflows f32 past 88 unless the running maximum is
    // subtracted; the result must match the host (which subtracts the row maximum).
    let mut r = rng(403);
    let (b, h, lq, lk, d) = (1usize, 2usize, 9usize, 40usize, 16usize);
    let qv = r.vec(b * h * lq * d, -8.0, 8.0);
    let kv = r.vec(b * h * lk * d, -8.0, 8.0);
    let vv = r.vec(b * h * lk * d, -1.0, 1.0);
    let gv = r.vec(b * h * lq * d, -1.0, 1.0);
    for dtype in [DType::F32, DType::F64] {
        let (qr, kr, vr, gr) = (
            rounded(&qv, dtype),
            rounded(&kv, dtype),
            rounded(&vv, dtype),
            rounded(&gv, dtype),
        );
        let want = host(&qr, &kr, &vr, &gr, b * h, lq, lk, d, d, 1.0);
        let q = upload(&qv, &[b, h, lq, d], dtype);
        let k = upload(&kv, &[b, h, lk, d], dtype);
        let v = upload(&vv, &[b, h, lk, d], dtype);
        let g = upload(&gv, &[b, h, lq, d], dtype);
        // f32 scores of ~250 carry ~3e-5 absolute rounding, which the exponent passes on.
        let tol = if dtype == DType::F32 { 3e-4 } else { 1e-11 };
        let (o, lse) = Tensor::attention(&q, &k, &v, Some(1.0)).unwrap();
        assert_close(
            &format!("large out {dtype}"),
            &o.to_f64_vec().unwrap(),
            &want.out,
            tol,
            tol,
        );
        let lse_v = lse.to_f64_vec().unwrap();
        assert!(
            lse_v.iter().any(|&l| l > 100.0),
            "scores are large: {lse_v:?}"
        );
        assert_close(&format!("large lse {dtype}"), &lse_v, &want.lse, tol, tol);
        let (dq, dk, dvt) =
            Tensor::attention_backward(&q, &k, &v, &o, &lse, &g, Some(1.0)).unwrap();
        for (name, got, w) in [
            ("dq", dq, &want.dq),
            ("dk", dk, &want.dk),
            ("dv", dvt, &want.dv),
        ] {
            let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            assert_close(
                &format!("large {name} {dtype}"),
                &got.to_f64_vec().unwrap(),
                w,
                tol,
                tol * scale,
            );
        }
    }
}
