//! Test support shared by every crate's tests: the device under test, fresh random host
//! data, and tolerance checks with useful failure messages.
//!
//! Every test calls [`device`], which selects the device from `SSM_DEVICE`, prints it
//! once, and turns on output poisoning ([`set_poison_outputs`](crate::set_poison_outputs))
//! so that an element a kernel forgets to write fails the comparison.
//!
//! Random inputs are fresh on every run: the seed comes from the clock unless
//! `SSM_TEST_SEED` is set, and every failure message includes the seed to replay it.

use std::sync::OnceLock;

use crate::device::Device;

/// The device under test (panics with the selection error: tests cannot run without one).
pub fn device() -> Device {
    static ONCE: OnceLock<Device> = OnceLock::new();
    ONCE.get_or_init(|| {
        let d = Device::from_env().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("ssm tests: device {d} (plane ops: {})", d.has_plane_ops());
        crate::set_poison_outputs(true);
        d
    })
    .clone()
}

/// The run's base seed (`SSM_TEST_SEED` or the clock), printed once.
pub fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("SSM_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x5eed)
            });
        eprintln!("ssm tests: SSM_TEST_SEED={s}");
        s
    })
}

/// A small deterministic host generator (SplitMix64) for test inputs.
#[derive(Debug, Clone)]
pub struct HostRng(u64);

impl HostRng {
    /// A generator for one test: the run's base seed mixed with a per-test salt.
    pub fn new(salt: u64) -> Self {
        HostRng(base_seed() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 * 2f64.powi(-53))
    }

    /// `n` uniforms in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// `n` values with |v| in [lo, hi) and random sign: never zero.
    pub fn nonzero(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = self.uniform(lo, hi);
                if self.next_u64() & 1 == 0 { v } else { -v }
            })
            .collect()
    }

    /// A standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(0.0, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Assert `|got − want| ≤ atol + rtol·|want|` elementwise (NaN only matches NaN).
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs expected {}",
        got.len(),
        want.len()
    );
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        if !ok {
            panic!(
                "{what}: element {i}: got {g:e}, expected {w:e} (rtol {rtol:e}, atol {atol:e}); \
                 replay with SSM_TEST_SEED={}",
                base_seed()
            );
        }
    }
}

/// Relative L2 error ‖got − want‖ / ‖want‖.
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// One convolution the tensor-core tests check: (channels-first input shape, output
/// channels, kernel size, spec without layout or TF32 switch).
pub type ConvCase = (Vec<usize>, usize, Vec<usize>, crate::ConvSpec);

/// The convolutions `conv_tensor_cores_match_host` checks on a GPU and
/// `tests/cuda_codegen.rs` compiles offline: the model's 3×3×3 C→C block (several stages
/// per tap, taps split across cubes), a strided 2-D case with C_in ≠ C_out and partial
/// tiles, a grouped dilated one, a causal 1-D one with a channel count off the 16 grid, a
/// pointwise one (one tap: no split, the bias added in the only pass), one with more dst
/// channels than one tile holds and dst rows of partial 16-position segments, a
/// 64-channel one (bf16 stages then reduce 32 channels, two per tap group), one of rows
/// shorter than a segment in an odd count (the weight gradient's two-row stages end half
/// past the rows), a grouped stride-1 one (TF32 takes rows halos there, each group's
/// src rows from its own channels), and a grouped one of rows of 16 dilated along w (the
/// bf16 weight gradient's cubes take all taps along h).
pub fn tensor_core_conv_cases() -> Vec<ConvCase> {
    use crate::ConvSpec;
    vec![
        (
            vec![2, 48, 6, 7, 5],
            48,
            vec![3, 3, 3],
            ConvSpec::new().same(),
        ),
        (
            vec![1, 40, 9, 8],
            24,
            vec![3, 3],
            ConvSpec::new().pad(&[1]).stride(&[2]),
        ),
        (
            vec![2, 32, 10, 9],
            32,
            vec![3, 3],
            ConvSpec::new().pad(&[2]).dilation(&[2]).groups(2),
        ),
        (vec![1, 20, 37], 72, vec![4], ConvSpec::new().causal()),
        (vec![2, 16, 5, 6], 32, vec![1, 1], ConvSpec::new()),
        (vec![1, 24, 5, 18], 112, vec![3, 3], ConvSpec::new().same()),
        (
            vec![1, 64, 3, 4, 20],
            64,
            vec![3, 3, 3],
            ConvSpec::new().same(),
        ),
        (
            vec![1, 32, 3, 5, 12],
            32,
            vec![3, 3, 3],
            ConvSpec::new().same(),
        ),
        (
            vec![2, 32, 4, 6, 8],
            32,
            vec![3, 3, 3],
            ConvSpec::new().same().groups(2),
        ),
        // Rows of 16: the bf16 weight gradient's cubes take all taps along h (stages of
        // the 6 rows of a plane and their 2 halo rows; x rows of 16 + 4 at w dilation 2),
        // groups of 40 dst channels (a 48-channel tile, partly masked).
        (
            vec![2, 96, 6, 16],
            80,
            vec![3, 3],
            ConvSpec::new().same().dilation(&[1, 2]).groups(2),
        ),
    ]
}
