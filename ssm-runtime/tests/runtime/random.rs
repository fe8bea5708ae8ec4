use ssm_runtime::kernels::random::{host_uniform, host_uniform_f32};
use ssm_runtime::testing::device;
use ssm_runtime::{DType, Tensor};

#[test]
fn uniform_matches_the_host_generator_bitwise() {
    let d = device();
    let seed = 0x1234_5678_9abc_def0;
    let n = 10_007;
    let u32s = Tensor::rand_uniform(&[n], 0.0, 1.0, seed, DType::F32, &d)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let u64s = Tensor::rand_uniform(&[n], 0.0, 1.0, seed, DType::F64, &d)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    for i in 0..n {
        assert_eq!(u32s[i], host_uniform_f32(seed, i as u32), "f32 element {i}");
        assert_eq!(u64s[i], host_uniform(seed, i as u32), "f64 element {i}");
    }
    // Same seed, same numbers; another seed, other numbers.
    let again = Tensor::rand_uniform(&[n], 0.0, 1.0, seed, DType::F32, &d)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(u32s, again);
    let other = Tensor::rand_uniform(&[n], 0.0, 1.0, seed + 1, DType::F32, &d)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(u32s.iter().zip(&other).filter(|(a, b)| a == b).count() < 10);
}

fn moments(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64;
    (m, var)
}

#[test]
fn distributions_have_the_right_moments() {
    let d = device();
    let n = 200_000;
    let seed = ssm_runtime::testing::base_seed();
    for dtype in [DType::F32, DType::F64] {
        let u = Tensor::rand_uniform(&[n], -2.0, 4.0, seed, dtype, &d)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let (m, v) = moments(&u);
        assert!(
            (m - 1.0).abs() < 0.03 && (v - 3.0).abs() < 0.05,
            "uniform {dtype}: mean {m}, var {v}"
        );
        assert!(u.iter().all(|&x| (-2.0..4.0).contains(&x)));
        let z = Tensor::rand_normal(&[n], 0.5, 2.0, seed, dtype, &d)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let (m, v) = moments(&z);
        assert!(
            (m - 0.5).abs() < 0.03 && (v - 4.0).abs() < 0.08,
            "normal {dtype}: mean {m}, var {v}"
        );
        assert!(z.iter().all(|x| x.is_finite()));
        let tail = z.iter().filter(|&&x| (x - 0.5).abs() > 2.0 * 1.96).count() as f64 / n as f64;
        assert!(
            (tail - 0.05).abs() < 0.005,
            "normal {dtype}: 1.96σ tail {tail}"
        );
        let b = Tensor::bernoulli(&[n], 0.3, seed, dtype, &d)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let p = b.iter().sum::<f64>() / n as f64;
        assert!(
            b.iter().all(|&x| x == 0.0 || x == 1.0) && (p - 0.3).abs() < 0.01,
            "bernoulli {dtype}: {p}"
        );
    }
}
