//! Parameter initialisers, as in the papers' reference code. Random draws use the
//! runtime's counter-based RNG, so a seed gives the same weights on every device.

use ssm_runtime::{DType, Device, Result, Tensor};

/// A per-parameter seed derived from the block seed and a salt (the parameter's name).
pub fn derive_seed(seed: u64, salt: &str) -> u64 {
    salt.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Uniform on [−bound, bound).
pub fn uniform(
    shape: &[usize],
    bound: f64,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Tensor::rand_uniform(shape, -bound, bound, seed, dtype, device)
}

/// PyTorch's default `Linear`/`Conv` weight (and bias) init: U(±1/√fan_in), with
/// fan_in = in_channels/groups · kernel size (shape `[out, in/groups, k…]` or `[out, in]`).
pub fn fan_in_uniform(shape: &[usize], seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
    uniform(shape, 1.0 / (fan_in as f64).sqrt(), seed, dtype, device)
}

/// Mamba's Δ bias: Δ drawn log-uniform in [dt_min, dt_max], floored at `floor`, stored
/// as its inverse softplus (see [`inverse_softplus`]) so that softplus(bias) = Δ.
pub fn dt_bias(
    shape: &[usize],
    dt_min: f64,
    dt_max: f64,
    floor: f64,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let u = Tensor::rand_uniform(shape, dt_min.ln(), dt_max.ln(), seed, dtype, device)?;
    inverse_softplus(&u.exp()?.max_scalar(floor)?)
}

/// x + ln(−expm1(−x)), Mamba's inverse softplus, on the host in f64 (once per
/// initialisation): in f32, 1 − e^(−x) loses most of its digits for the smallest Δ
/// (1e-4: a relative error near 1e-3 in the Δ the bias reproduces).
pub fn inverse_softplus(x: &Tensor) -> Result<Tensor> {
    let v: Vec<f64> = x
        .to_f64_vec()?
        .iter()
        .map(|&d| d + (-(-d).exp_m1()).ln())
        .collect();
    Tensor::from_f64(&v, x.shape(), x.dtype(), x.device())
}

/// Mamba's A_log: ln(1), …, ln(N) in every row (`rows × N`).
pub fn a_log(rows: usize, n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f64> = (0..rows)
        .flat_map(|_| (1..=n).map(|i| (i as f64).ln()))
        .collect();
    Tensor::from_f64(&v, &[rows, n], dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_runtime::testing::device;

    #[test]
    fn inverse_softplus_reproduces_small_steps_in_f32() {
        let dt = [1e-4, 3e-4, 1e-3, 1e-2, 0.1];
        let d = device();
        let x = Tensor::from_f64(&dt, &[5], DType::F32, &d).unwrap();
        let back = inverse_softplus(&x).unwrap().softplus().unwrap();
        for (got, want) in back.to_f64_vec().unwrap().iter().zip(&dt) {
            let rel = (got - want).abs() / want;
            assert!(
                rel < 1e-6,
                "softplus(bias) = {got} for Δ = {want} ({rel:e})"
            );
        }
    }

    #[test]
    fn mamba_inits_stay_in_their_ranges() {
        let d = device();
        // Δ log-uniform in [1e-3, 0.1] (the floor 1e-4 below it does not bind).
        let bias = dt_bias(&[4096], 1e-3, 0.1, 1e-4, 7, DType::F32, &d).unwrap();
        let dt = bias.softplus().unwrap().to_f64_vec().unwrap();
        assert!(
            dt.iter()
                .all(|&v| (1e-3 * 0.999..=0.1 * 1.001).contains(&v))
        );
        // Log-uniform: about half the draws below the geometric mean 1e-2.
        let below = dt.iter().filter(|&&v| v < 1e-2).count();
        assert!((1800..2300).contains(&below), "{below} of 4096 below 1e-2");
        // The floor binds when the range starts below it.
        let floored = dt_bias(&[256], 1e-6, 1e-5, 1e-4, 8, DType::F64, &d).unwrap();
        for v in floored.softplus().unwrap().to_f64_vec().unwrap() {
            assert!((v - 1e-4).abs() < 1e-12, "{v}");
        }
        let a = a_log(3, 4, DType::F64, &d).unwrap().to_f64_vec().unwrap();
        let row: Vec<f64> = (1..=4).map(|i| (i as f64).ln()).collect();
        assert_eq!(a, [row.clone(), row.clone(), row].concat());
        // PyTorch's default bound 1/√fan_in, fan_in = 3·5 (in/groups × kernel).
        let w = fan_in_uniform(&[8, 3, 5], 9, DType::F64, &d).unwrap();
        let bound = 1.0 / 15f64.sqrt();
        let v = w.to_f64_vec().unwrap();
        assert!(v.iter().all(|x| x.abs() <= bound));
        assert!(
            v.iter().any(|x| x.abs() > 0.8 * bound),
            "spread over the range"
        );
    }
}
