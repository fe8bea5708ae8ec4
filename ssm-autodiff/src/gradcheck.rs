//! Gradient checks: analytic gradients against f64 central differences.
//!
//! For a function `f` of tensors, the check draws a random cotangent `r` (shape of the
//! output) and compares, for the scalar `L(x) = Σ f(x)·r`:
//! - along `directions` random directions `v` per input: the central difference
//!   `(L(x + εv) − L(x − εv)) / 2ε` with the analytic `⟨∂L/∂x, v⟩`;
//! - for inputs of at most `elementwise_max` elements, additionally every partial
//!   derivative `∂L/∂x_j` by perturbing one element at a time.
//!
//! A pair passes when `|numeric − analytic|` is at most `atol + noise` or at most
//! `rtol·max(|numeric|, |analytic|)` (`approx::relative_eq!`). Defaults: ε = 1e-6,
//! rtol = 1e-5, atol = 1e-8. In f64 the central difference has truncation error
//! ~ε²·|L'''| ≈ 1e-12 and rounding error ~u·Σ|f·r|/ε, where u = 2.2e-16 and `Σ|f·r|` is
//! the magnitude of the terms summed into `L`: a deep forward loses a few units of
//! roundoff of that magnitude, which `ε` divides. `noise = rounding_units · u · Σ|f·r| / ε`
//! bounds it, so a directional derivative that happens to be tiny (1e-5 against an `L`
//! of 10) is not judged below the resolution of the difference, while any wrong term of
//! an O(1) derivative still shows.

use approx::relative_eq;
use ssm_runtime::testing::HostRng;
use ssm_runtime::{DType, Error, Result, Tensor};

use crate::var::{Var, no_grad};

/// Settings of [`gradcheck`].
#[derive(Debug, Clone)]
pub struct GradcheckOptions {
    /// Central-difference step.
    pub eps: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Random directions per input.
    pub directions: usize,
    /// Inputs up to this many elements are also checked element by element.
    pub elementwise_max: usize,
    /// Units of roundoff of `Σ|f·r|` the forward may lose in computing `L`; sets the
    /// allowance for the central difference's rounding noise (see the module docs).
    pub rounding_units: f64,
    /// Salt for the random cotangent and directions (mixed with the test run's seed).
    pub salt: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-8,
            directions: 3,
            elementwise_max: 64,
            rounding_units: 16.0,
            salt: 0,
        }
    }
}

/// What a check compared, and what failed.
#[derive(Debug, Clone, Default)]
pub struct GradcheckReport {
    /// Number of (numeric, analytic) pairs compared.
    pub comparisons: usize,
    /// Human-readable description of each failed pair.
    pub failures: Vec<String>,
}

impl GradcheckReport {
    /// Whether every pair agreed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Panic with the failures (for tests).
    #[track_caller]
    pub fn assert_passed(&self, what: &str) {
        assert!(
            self.comparisons > 0,
            "gradcheck {what}: nothing was compared"
        );
        assert!(
            self.passed(),
            "gradcheck {what}: {} of {} comparisons failed (replay with SSM_TEST_SEED={}):\n{}",
            self.failures.len(),
            self.comparisons,
            ssm_runtime::testing::base_seed(),
            self.failures.join("\n")
        );
    }
}

/// Check the gradients of `f` at `inputs` (all f64). See the module docs.
pub fn gradcheck<F>(f: F, inputs: &[Tensor], opts: &GradcheckOptions) -> Result<GradcheckReport>
where
    F: Fn(&[Var]) -> Result<Var>,
{
    for (i, x) in inputs.iter().enumerate() {
        if x.dtype() != DType::F64 {
            return Err(Error::DType {
                op: "gradcheck",
                msg: format!("input {i} is {}; gradient checks run in f64", x.dtype()),
            });
        }
    }
    let device = inputs
        .first()
        .ok_or_else(|| Error::Argument {
            op: "gradcheck",
            msg: "no inputs".into(),
        })?
        .device()
        .clone();
    let mut rng = HostRng::new(0x6ad_c4ec ^ opts.salt);
    let host: Vec<Vec<f64>> = inputs
        .iter()
        .map(|x| x.to_f64_vec())
        .collect::<Result<_>>()?;

    // Analytic pass with a random cotangent.
    let leaves: Vec<Var> = inputs
        .iter()
        .map(|x| Var::leaf(x.contiguous().unwrap_or_else(|_| x.clone())))
        .collect();
    let y = f(&leaves)?;
    let r: Vec<f64> = (0..y.value().numel()).map(|_| rng.normal()).collect();
    let r_t = Tensor::from_f64(&r, y.shape(), DType::F64, &device)?;
    let grads = y.backward_with(&r_t)?;
    let terms: f64 = y
        .value()
        .to_f64_vec()?
        .iter()
        .zip(&r)
        .map(|(a, b)| (a * b).abs())
        .sum();
    let atol = opts.atol + opts.rounding_units * f64::EPSILON * terms / opts.eps;
    let analytic: Vec<Vec<f64>> = leaves
        .iter()
        .zip(inputs)
        .map(|(l, x)| match grads.get(l) {
            Some(g) => g.to_f64_vec(),
            None => Ok(vec![0.0; x.numel()]),
        })
        .collect::<Result<_>>()?;

    // L(x) with input `which` replaced by `values`.
    let loss = |which: usize, values: &[f64]| -> Result<f64> {
        no_grad(|| {
            let vars: Vec<Var> = inputs
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    if i == which {
                        Tensor::from_f64(values, x.shape(), DType::F64, &device).map(Var::constant)
                    } else {
                        Ok(Var::constant(x.clone()))
                    }
                })
                .collect::<Result<_>>()?;
            let out = f(&vars)?.value().to_f64_vec()?;
            Ok(out.iter().zip(&r).map(|(a, b)| a * b).sum())
        })
    };

    let mut report = GradcheckReport::default();
    let compare = |report: &mut GradcheckReport, what: String, num: f64, ana: f64| {
        report.comparisons += 1;
        let ok = num.is_finite()
            && ana.is_finite()
            && relative_eq!(num, ana, epsilon = atol, max_relative = opts.rtol);
        if !ok {
            let tol = atol.max(opts.rtol * num.abs().max(ana.abs()));
            report.failures.push(format!(
                "{what}: numeric {num:.12e} vs analytic {ana:.12e} (off by {:.2e}, allowed {tol:.2e})",
                (num - ana).abs()
            ));
        }
    };
    let eps = opts.eps;
    for (i, x) in host.iter().enumerate() {
        for d in 0..opts.directions {
            let v: Vec<f64> = (0..x.len()).map(|_| rng.normal()).collect();
            let plus: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + eps * b).collect();
            let minus: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a - eps * b).collect();
            let num = (loss(i, &plus)? - loss(i, &minus)?) / (2.0 * eps);
            let ana: f64 = analytic[i].iter().zip(&v).map(|(a, b)| a * b).sum();
            compare(&mut report, format!("input {i}, direction {d}"), num, ana);
        }
        if x.len() <= opts.elementwise_max {
            for j in 0..x.len() {
                let mut p = x.clone();
                p[j] += eps;
                let lp = loss(i, &p)?;
                p[j] -= 2.0 * eps;
                let lm = loss(i, &p)?;
                compare(
                    &mut report,
                    format!("input {i}, element {j}"),
                    (lp - lm) / (2.0 * eps),
                    analytic[i][j],
                );
            }
        }
    }
    Ok(report)
}
