//! Counter-based random numbers: element `i` of a draw is a pure function of
//! `(seed, i)`, so results do not depend on the launch shape or the device.
//!
//! Bits come from a 32-bit integer hash (three xor-shift/multiply rounds) keyed by the
//! seed. Uniforms use 24 (f32) or 53 (f64) hash bits and are **bitwise identical** on every
//! device and to [`host_uniform`]. Normals use Box–Muller (`√(−2 ln u₁)·cos 2πu₂`); f32
//! normals go through the device's native `ln`/`cos`, so they agree across devices to a
//! few ulps, not bitwise. Not for cryptography.

use cubecl::prelude::*;

use crate::device::record_launch;
use crate::dispatch;
use crate::kernels::launch::elemwise_grid;
use crate::kernels::math;
use crate::tensor::Tensor as SsmTensor;

/// Distribution of a draw.
#[derive(CubeType, Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Distribution {
    /// Uniform on [a, b).
    Uniform,
    /// Normal with mean a and standard deviation b.
    Normal,
    /// 1 with probability a, else 0.
    Bernoulli,
}

const M1: u32 = 0x7feb_352d;
const M2: u32 = 0x846c_a68b;
const GOLDEN: u32 = 0x9e37_79b9;

/// The 32-bit mixing function (same constants as the device code).
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(M1);
    x ^= x >> 15;
    x = x.wrapping_mul(M2);
    x ^= x >> 16;
    x
}

/// Two 32-bit keys derived from a 64-bit seed.
pub fn seed_keys(seed: u64) -> (u32, u32) {
    let lo = seed as u32;
    let hi = (seed >> 32) as u32;
    (
        hash32(lo ^ 0x5bd1_e995),
        hash32(hi.wrapping_add(GOLDEN) ^ hash32(lo)),
    )
}

/// Random bits for element `i`, stream `s` (host replica of the device function).
pub fn host_bits(i: u32, s: u32, k0: u32, k1: u32) -> u32 {
    let h = hash32(i.wrapping_add(k0));
    let h = hash32(h ^ k1.wrapping_add(s.wrapping_mul(GOLDEN)));
    hash32(h.wrapping_add(k0 ^ s))
}

/// The uniform in [0, 1) that element `i` of a draw with `seed` gets, in f64 (exact for
/// `f64` draws; an `f32` draw holds `host_uniform_f32`).
pub fn host_uniform(seed: u64, i: u32) -> f64 {
    let (k0, k1) = seed_keys(seed);
    let b1 = host_bits(i, 0, k0, k1);
    let b2 = host_bits(i, 1, k0, k1);
    (f64::from(b1 >> 6) * 134_217_728.0 + f64::from(b2 >> 5)) * 2f64.powi(-53)
}

/// f32 counterpart of [`host_uniform`].
pub fn host_uniform_f32(seed: u64, i: u32) -> f32 {
    let (k0, k1) = seed_keys(seed);
    (host_bits(i, 0, k0, k1) >> 8) as f32 * 2f32.powi(-24)
}

#[cube]
fn mix(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h *= M1;
    h ^= h >> 15;
    h *= M2;
    h ^= h >> 16;
    h
}

#[cube]
fn bits(i: u32, #[comptime] s: u32, k0: u32, k1: u32) -> u32 {
    let h = mix(i + k0);
    let h = mix(h ^ (k1 + comptime!(s.wrapping_mul(GOLDEN))));
    mix(h + (k0 ^ s))
}

/// Uniform in [0, 1) from streams `s` and `s + 1`.
#[cube]
fn uniform01<F: Float>(i: u32, #[comptime] s: u32, k0: u32, k1: u32) -> F {
    if math::is_f64::<F>() {
        let b1 = bits(i, s, k0, k1) >> 6;
        let b2 = bits(i, comptime!(s + 1), k0, k1) >> 5;
        (F::cast_from(b1) * F::new(134_217_728.0) + F::cast_from(b2))
            * math::constant::<F>(1.110_223_024_625_156_5e-16)
    } else {
        // 2^-24, exact in f32.
        F::cast_from(bits(i, s, k0, k1) >> 8) * F::new(5.960_464_5e-8)
    }
}

#[cube(launch_unchecked)]
fn random_kernel<F: Float>(
    out: &mut Array<F>,
    n: usize,
    k0: u32,
    k1: u32,
    a: InputScalar,
    b: InputScalar,
    #[comptime] dist: Distribution,
    #[define(F)] _d: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < n {
        let iu = i as u32;
        let a = a.get::<F>();
        let b = b.get::<F>();
        let u = uniform01::<F>(iu, 0u32, k0, k1);
        out[i] = match dist {
            Distribution::Uniform => a + (b - a) * u,
            Distribution::Bernoulli => select(u < a, F::new(1.0), F::new(0.0)),
            Distribution::Normal => {
                let u2 = uniform01::<F>(iu, 2u32, k0, k1);
                let r = F::sqrt(F::new(-2.0) * math::ln::<F>(F::new(1.0) - u));
                let z = r * math::cos::<F>(math::constant::<F>(core::f64::consts::TAU) * u2);
                a + b * z
            }
        };
    }
}

/// Fill the fresh contiguous tensor `out` with a draw.
pub(crate) fn random(out: &SsmTensor, dist: Distribution, a: f64, b: f64, seed: u64) {
    let n = out.numel();
    if n == 0 {
        return;
    }
    let (k0, k1) = seed_keys(seed);
    let dtype = out.dtype.storage();
    dispatch!(out.device, c => {
        let (count, dim) = elemwise_grid(c, n);
        record_launch();
        unsafe {
            random_kernel::launch_unchecked(
                c, count, dim, out.array_arg(n), n, k0, k1,
                InputScalar::new(a, dtype), InputScalar::new(b, dtype), dist, dtype,
            )
        }
    })
}
