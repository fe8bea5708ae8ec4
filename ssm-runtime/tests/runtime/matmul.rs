use ssm_runtime::testing::assert_close;
use ssm_runtime::{DType, MatmulImpl, Tensor};

use crate::{rng, rounded, upload};

#[allow(clippy::too_many_arguments)]
fn host_matmul(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a_batched: bool,
    b_batched: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for z in 0..batch {
        let ao = if a_batched { z * m * k } else { 0 };
        let bo = if b_batched { z * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                out[z * m * n + i * n + j] =
                    (0..k).map(|p| a[ao + i * k + p] * b[bo + p * n + j]).sum();
            }
        }
    }
    out
}

#[test]
fn matmul_both_implementations_with_transposes_and_broadcast() {
    let mut r = rng(41);
    let shapes = [
        (1, 1, 1, 1),
        (3, 17, 33, 9),
        (2, 64, 48, 40),
        (1, 5, 130, 3),
    ];
    for (dtype, rtol, atol) in [(DType::F32, 1e-5, 1e-5), (DType::F64, 1e-12, 1e-12)] {
        for &(batch, m, k, n) in &shapes {
            let a_raw = r.vec(batch * m * k, -1.0, 1.0);
            let b_raw = r.vec(k * n, -1.0, 1.0);
            let (ar, br) = (rounded(&a_raw, dtype), rounded(&b_raw, dtype));
            let a = upload(&a_raw, &[batch, m, k], dtype);
            let b = upload(&b_raw, &[k, n], dtype); // broadcast over batch
            let want = host_matmul(&ar, &br, batch, m, k, n, true, false);
            for which in [MatmulImpl::Auto, MatmulImpl::Tiled] {
                let (got, ran) = a.matmul_with(&b, which).unwrap();
                assert_eq!(got.shape(), &[batch, m, n]);
                if which == MatmulImpl::Tiled {
                    assert_eq!(ran, MatmulImpl::Tiled);
                }
                assert_close(
                    &format!("matmul {which:?}->{ran:?} ({batch},{m},{k},{n}) {dtype}"),
                    &got.to_f64_vec().unwrap(),
                    &want,
                    rtol,
                    atol * k as f64,
                );
                // Transposed operands: (bᵀ)ᵀ and (aᵀ)ᵀ as strided views.
                let bt = upload(&host_t(&b_raw, k, n), &[n, k], dtype)
                    .transpose(0, 1)
                    .unwrap();
                let at = upload(
                    &(0..batch)
                        .flat_map(|z| host_t(&a_raw[z * m * k..(z + 1) * m * k], m, k))
                        .collect::<Vec<_>>(),
                    &[batch, k, m],
                    dtype,
                )
                .transpose(1, 2)
                .unwrap();
                let (got_t, _) = at.matmul_with(&bt, which).unwrap();
                assert_close(
                    &format!("matmul^T {which:?} ({batch},{m},{k},{n}) {dtype}"),
                    &got_t.to_f64_vec().unwrap(),
                    &want,
                    rtol,
                    atol * k as f64,
                );
            }
        }
    }
}

fn host_t(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols)
        .flat_map(|j| (0..rows).map(move |i| x[i * cols + j]))
        .collect()
}

#[test]
fn cubek_runs_where_available() {
    // On every device we test, cubek's unit strategy accepts a plain f32 product; if a
    // device refuses it, this test names the refusal instead of silently falling back.
    let mut r = rng(42);
    let a = upload(&r.vec(32 * 24, -1.0, 1.0), &[32, 24], DType::F32);
    let b = upload(&r.vec(24 * 16, -1.0, 1.0), &[24, 16], DType::F32);
    let (c, ran) = a.matmul_with(&b, MatmulImpl::Cubek).expect("cubek matmul");
    assert_eq!(ran, MatmulImpl::Cubek);
    let (t, _) = a.matmul_with(&b, MatmulImpl::Tiled).unwrap();
    assert_close(
        "cubek vs tiled",
        &c.to_f64_vec().unwrap(),
        &t.to_f64_vec().unwrap(),
        1e-5,
        1e-5,
    );
}

#[test]
fn matmul_shape_errors_name_the_operands() {
    let d = ssm_runtime::testing::device();
    let a = Tensor::zeros(&[2, 3], DType::F32, &d).unwrap();
    let b = Tensor::zeros(&[4, 5], DType::F32, &d).unwrap();
    let e = a.matmul(&b).unwrap_err().to_string();
    assert!(
        e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"),
        "{e}"
    );
    let v = Tensor::zeros(&[3], DType::F32, &d).unwrap();
    assert!(a.matmul(&v).unwrap_err().to_string().contains("rank"));
}

/// The `mma.sync` probe does every product it claims (its throughput bench divides by
/// that count): each lane's accumulators sum to `CHAINS · 4 · reps · k · one²`, with
/// `one` chosen so the sums are exact in f32 and differ per run. Refused cleanly where
/// the device has no `mma.sync` for the type.
#[test]
fn mma_probe_counts_every_product() {
    use ssm_runtime::kernels::mma_probe::{CHAINS, mma_peak, mma_peak_flops};
    let d = ssm_runtime::testing::device();
    let mut r = rng(811);
    for (dtype, k) in [(DType::BF16, 16usize), (DType::F32, 8)] {
        // A power of two in [1/4, 2): exact in bf16 and TF32, and so is its square.
        let one = 2f64.powi((r.uniform(-2.0, 1.0)).floor() as i32) as f32;
        let (cubes, reps) = (3, 5 + (r.uniform(0.0, 10.0) as usize));
        match mma_peak(&d, dtype, cubes, reps, one) {
            Ok(out) => {
                let want = (CHAINS * 4 * reps * k) as f64 * (one as f64).powi(2);
                let got = out.to_f64_vec().unwrap();
                assert_eq!(got.len(), cubes * 256);
                for (i, v) in got.iter().enumerate() {
                    assert_eq!(*v, want, "{dtype} lane {i}");
                }
                let per_warp = (CHAINS * reps * 2 * 16 * 8 * k) as u64;
                assert_eq!(
                    mma_peak_flops(dtype, cubes, reps),
                    cubes as u64 * 8 * per_warp
                );
            }
            Err(e) => {
                assert!(!d.has_pipelined_mma(dtype), "{dtype}: {e}");
                assert!(e.to_string().contains("no mma.sync"), "{e}");
                crate::skip("mma_probe_counts_every_product", &format!("{dtype}: {e}"));
            }
        }
    }
    let e = mma_peak(&d, DType::F64, 1, 1, 1.0).unwrap_err();
    assert!(e.to_string().contains("mma_peak"), "{e}");
}
