//! Scalar math used inside kernels.
//!
//! Vulkan's GLSL.std.450 instruction set defines `exp`, `log`, `pow`, `tanh`, `sin`, … for
//! 16- and 32-bit floats only; Mesa's lavapipe silently returns garbage for f64 (checked:
//! `exp(0.5)` read back as a denormal). The f64 gradient checks depend on these functions, so
//! for f64 every transcendental here is built from `+ − × ÷`, `floor`, `sqrt` and comparisons,
//! which are exact IEEE operations on every backend. The f64 paths are used on CUDA too, so
//! both devices compute the same f64 functions. f32 uses the native instructions.
//!
//! Accuracy of the f64 paths (checked against the host's `f64` functions in
//! `tests/math.rs`): relative error below 1e-14 over the tested ranges.

// `#[cube]` expands each public function into an undocumented `expand` module.
#![allow(missing_docs)]

use cubecl::prelude::*;

const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const LOG2_E: f64 = core::f64::consts::LOG2_E;
const FRAC_2_SQRT_PI: f64 = core::f64::consts::FRAC_2_SQRT_PI;
const FRAC_1_SQRT_PI: f64 = 0.564_189_583_547_756_3;
const TWO_PI: f64 = core::f64::consts::TAU;

/// True when `F` is a 64-bit float (decided when the kernel is compiled, so the branch not
/// taken is never emitted).
pub fn is_f64<F: Float>() -> bool {
    cubecl::unexpanded!()
}

/// Expansion of [`is_f64()`].
pub mod is_f64 {
    use cubecl::prelude::*;

    /// Resolve the element type registered for `F` in this kernel.
    pub fn expand<F: Float>(scope: &mut Scope) -> NativeExpand<bool> {
        (F::as_type(scope).size() == 8).into()
    }
}

/// +∞, computed at run time from any runtime value `v` as (1 + |v|)·big·big.
///
/// CubeCL 0.10's CUDA code generator cannot emit special floats: infinite and NaN literals
/// come out as `inf`/`NaN` and bit-cast constants as `reinterpret_cast` of an rvalue, both
/// rejected by NVRTC, and its optimiser folds constant expressions such as 1/0 into such
/// literals. Deriving the value from a runtime operand keeps every literal finite.
#[cube]
pub fn infinity_like<F: Float>(v: F) -> F {
    let big = if is_f64::<F>() {
        constant::<F>(1.0e300)
    } else {
        F::new(1.0e30)
    };
    (F::new(1.0) + F::abs(v)) * big * big
}

/// −∞ (see `infinity_like`).
#[cube]
pub fn neg_infinity_like<F: Float>(v: F) -> F {
    -infinity_like::<F>(v)
}

/// A NaN, as the square root of a negative runtime value (see `infinity_like`; ∞ − ∞
/// was seen to come out as −∞ on CUDA after the compiler rearranged it).
#[cube]
pub fn nan_like<F: Float>(v: F) -> F {
    F::sqrt(-(F::new(1.0) + F::abs(v)))
}

/// Whether `x` is NaN: the only value that is neither above nor at-or-below zero.
/// (`x != x` is folded to `false` by CubeCL's optimiser.)
#[cube]
pub fn is_nan<F: Float>(x: F) -> bool {
    let zero = F::new(0.0);
    !(x > zero || x <= zero)
}

/// max(a, b) where a NaN operand wins, as in PyTorch's `maximum`, `clamp` and `relu` (the
/// hardware's `max` returns the other operand).
#[cube]
pub fn max_nan<F: Float>(a: F, b: F) -> F {
    select(a > b || is_nan::<F>(a), a, b)
}

/// min(a, b) where a NaN operand wins (see `max_nan`).
#[cube]
pub fn min_nan<F: Float>(a: F, b: F) -> F {
    select(a < b || is_nan::<F>(a), a, b)
}

/// 2^k for an integer k in [-1100, 1100], exact where the result is representable.
#[cube]
fn pow2i_f64(k: i32) -> f64 {
    let mut e = u32::cast_from(select(k < 0, -k, k));
    let mut base = select(k < 0, 0.5f64, 2.0f64);
    let mut r = f64::new(1.0);
    #[unroll]
    for _ in 0..11 {
        if (e & 1) == 1 {
            r *= base;
        }
        base *= base;
        e >>= 1;
    }
    r
}

/// e^x in f64 by Cody–Waite reduction x = k·ln2 + r and a degree-13 Taylor polynomial.
#[cube]
pub fn exp_f64(x: f64) -> f64 {
    if is_nan::<f64>(x) {
        x
    } else if x > 709.782_712_893_384 {
        infinity_like::<f64>(x)
    } else if x < -745.2 {
        f64::new(0.0)
    } else {
        let kf = f64::floor(x * LOG2_E + 0.5f64);
        let r = (x - kf * LN2_HI) - kf * LN2_LO;
        // Horner on sum r^n / n!, n = 0..13.
        let mut p = r * (1.0f64 / 6_227_020_800.0f64) + 1.0f64 / 479_001_600.0f64;
        p = p * r + 1.0f64 / 39_916_800.0f64;
        p = p * r + 1.0f64 / 3_628_800.0f64;
        p = p * r + 1.0f64 / 362_880.0f64;
        p = p * r + 1.0f64 / 40_320.0f64;
        p = p * r + 1.0f64 / 5_040.0f64;
        p = p * r + 1.0f64 / 720.0f64;
        p = p * r + 1.0f64 / 120.0f64;
        p = p * r + 1.0f64 / 24.0f64;
        p = p * r + 1.0f64 / 6.0f64;
        p = p * r + 0.5f64;
        p = p * r + 1.0f64;
        p = p * r + 1.0f64;
        let k = i32::cast_from(kf);
        let half = k / 2;
        p * pow2i_f64(k - half) * pow2i_f64(half)
    }
}

/// e^x − 1 in f64, accurate near zero.
#[cube]
pub fn expm1_f64(x: f64) -> f64 {
    if f64::abs(x) < 0.5f64 {
        // Taylor to x^17/17!; the remainder is below 1e-21 on |x| < 0.5.
        let mut p = x * (1.0f64 / 355_687_428_096_000.0f64) + 1.0f64 / 20_922_789_888_000.0f64;
        p = p * x + 1.0f64 / 1_307_674_368_000.0f64;
        p = p * x + 1.0f64 / 87_178_291_200.0f64;
        p = p * x + 1.0f64 / 6_227_020_800.0f64;
        p = p * x + 1.0f64 / 479_001_600.0f64;
        p = p * x + 1.0f64 / 39_916_800.0f64;
        p = p * x + 1.0f64 / 3_628_800.0f64;
        p = p * x + 1.0f64 / 362_880.0f64;
        p = p * x + 1.0f64 / 40_320.0f64;
        p = p * x + 1.0f64 / 5_040.0f64;
        p = p * x + 1.0f64 / 720.0f64;
        p = p * x + 1.0f64 / 120.0f64;
        p = p * x + 1.0f64 / 24.0f64;
        p = p * x + 1.0f64 / 6.0f64;
        p = p * x + 0.5f64;
        p = p * x + 1.0f64;
        p * x
    } else {
        exp_f64(x) - 1.0f64
    }
}

/// ln x in f64: scale into f32 range by exact powers of two, then either an atanh series
/// (near 1) or the f32 logarithm refined by two Newton steps y ← y + x·e^(−y) − 1 (each
/// squares the error: 1e-7 → 1e-14 → 1e-28).
#[cube]
pub fn ln_f64(x: f64) -> f64 {
    if is_nan::<f64>(x) || x < 0.0f64 {
        nan_like::<f64>(x)
    } else if x == 0.0f64 {
        neg_infinity_like::<f64>(x)
    } else if x == infinity_like::<f64>(x) {
        x
    } else {
        let mut m = x;
        let mut shift = f64::new(0.0);
        // 2^±200 is exact; six steps cover the whole f64 range (including subnormals).
        #[unroll]
        for _ in 0..6 {
            if m > 1.0e30f64 {
                m *= 6.223_015_277_861_142e-61f64; // 2^-200
                shift += 200.0f64;
            }
            if m < 1.0e-30f64 {
                m *= 1.606_938_044_258_990_3e60f64; // 2^200
                shift -= 200.0f64;
            }
        }
        let y = if f64::abs(m - 1.0f64) < 0.125f64 {
            // Near 1 the Newton residual m·e^(−y) − 1 cancels; use
            // ln m = 2·atanh(s), s = (m − 1)/(m + 1), |s| < 0.06, to keep relative accuracy.
            atanh_series(m - 1.0f64, m + 1.0f64)
        } else {
            let y0 = f64::cast_from(f32::ln(f32::cast_from(m)));
            let y1 = y0 + m * exp_f64(-y0) - 1.0f64;
            y1 + m * exp_f64(-y1) - 1.0f64
        };
        (y + shift * LN2_LO) + shift * LN2_HI
    }
}

/// 2·atanh(s) for s = num/den with |s| < 0.07, by its odd series to s^23: equals ln(1 + u)
/// for num = u, den = 2 + u, without ever forming 1 + u (shader compilers may simplify
/// `(1 + u) − 1` to `u`, which breaks the classic correction).
#[cube]
fn atanh_series(num: f64, den: f64) -> f64 {
    let s = num / den;
    let s2 = s * s;
    let mut p = s2 * (1.0f64 / 23.0f64) + 1.0f64 / 21.0f64;
    p = p * s2 + 1.0f64 / 19.0f64;
    p = p * s2 + 1.0f64 / 17.0f64;
    p = p * s2 + 1.0f64 / 15.0f64;
    p = p * s2 + 1.0f64 / 13.0f64;
    p = p * s2 + 1.0f64 / 11.0f64;
    p = p * s2 + 1.0f64 / 9.0f64;
    p = p * s2 + 1.0f64 / 7.0f64;
    p = p * s2 + 1.0f64 / 5.0f64;
    p = p * s2 + 1.0f64 / 3.0f64;
    p = p * s2 + 1.0f64;
    2.0f64 * s * p
}

/// ln(1 + u) in f64, accurate near zero.
#[cube]
pub fn log1p_f64(u: f64) -> f64 {
    if f64::abs(u) < 0.125f64 {
        atanh_series(u, 2.0f64 + u)
    } else {
        ln_f64(1.0f64 + u)
    }
}

/// tanh in f64 through expm1, so small arguments keep their relative accuracy.
#[cube]
pub fn tanh_f64(x: f64) -> f64 {
    let a = f64::abs(x);
    let t = if a < 22.0f64 {
        let e = expm1_f64(2.0f64 * a);
        e / (e + 2.0f64)
    } else {
        f64::new(1.0)
    };
    if is_nan::<f64>(x) {
        x
    } else {
        select(x < 0.0f64, -t, t)
    }
}

/// erf in f64: Maclaurin series below 2.5, Laplace continued fraction for erfc above.
#[cube]
pub fn erf_f64(x: f64) -> f64 {
    let a = f64::abs(x);
    let r = if a < 2.5f64 {
        // sum_n (-1)^n a^(2n+1) / (n! (2n+1)); terms fall below 1e-17 by n = 44 at a = 2.5.
        let a2 = a * a;
        let mut term = a; // (-1)^n a^(2n+1) / n!
        let mut sum = a;
        let mut n = u32::new(1);
        while n < 48u32 {
            let nf = f64::cast_from(n);
            term = -term * a2 / nf;
            sum += term / (2.0f64 * nf + 1.0f64);
            n += 1u32;
        }
        FRAC_2_SQRT_PI * sum
    } else if a < 6.5f64 {
        // erfc(a) = e^(-a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + …)))).
        let mut t = a;
        let mut k = u32::new(90);
        while k > 0u32 {
            t = a + f64::cast_from(k) * 0.5f64 / t;
            k -= 1u32;
        }
        1.0f64 - exp_f64(-a * a) * FRAC_1_SQRT_PI / t
    } else {
        f64::new(1.0)
    };
    if is_nan::<f64>(x) {
        x
    } else {
        select(x < 0.0f64, -r, r)
    }
}

/// cos in f64 for the Box–Muller transform, whose arguments lie in [0, 2π); the reduction to
/// [−π, π] is not split into hi/lo parts, so far larger arguments lose accuracy.
#[cube]
pub fn cos_f64(x: f64) -> f64 {
    let k = f64::floor(x / TWO_PI + 0.5f64);
    let r = x - k * TWO_PI;
    let r2 = r * r;
    // Taylor to r^32/32!; remainder below 1e-19 on |r| ≤ π.
    let mut p = f64::new(1.0);
    let mut n = u32::new(32);
    while n > 0u32 {
        let nf = f64::cast_from(n);
        p = 1.0f64 - r2 / (nf * (nf - 1.0f64)) * p;
        n -= 2u32;
    }
    p
}

/// x^n for |n| ≤ 64 by binary exponentiation (1/x^|n| for negative n).
#[cube]
fn powi_f64(x: f64, n: i32) -> f64 {
    let mut e = u32::cast_from(select(n < 0, -n, n));
    let mut base = x;
    let mut r = f64::new(1.0);
    #[unroll]
    for _ in 0..7 {
        if (e & 1u32) == 1u32 {
            r *= base;
        }
        base *= base;
        e >>= 1u32;
    }
    select(n < 0, 1.0f64 / r, r)
}

/// x^y with the C `pow` conventions (negative base only for integral exponents).
#[cube]
pub fn pow_f64(x: f64, y: f64) -> f64 {
    let y_int = f64::floor(y) == y;
    let y_odd = y_int && f64::floor(y * 0.5f64) != y * 0.5f64;
    if y == 0.0f64 {
        f64::new(1.0)
    } else if y_int && f64::abs(y) <= 64.0f64 {
        // Small integral exponents by repeated squaring: exact up to a few roundings, where
        // exp(y·ln x) is off by an ulp or two (e.g. 3^1).
        powi_f64(x, i32::cast_from(y))
    } else if x > 0.0f64 {
        exp_f64(y * ln_f64(x))
    } else if x == 0.0f64 {
        select(y > 0.0f64, 0.0f64, infinity_like::<f64>(x))
    } else if y_int {
        let m = exp_f64(y * ln_f64(-x));
        select(y_odd, -m, m)
    } else {
        nan_like::<f64>(x)
    }
}

// ---- dtype-generic entry points used by the kernels -------------------------------------

/// e^x.
#[cube]
pub fn exp<F: Float>(x: F) -> F {
    if is_f64::<F>() {
        F::cast_from(exp_f64(f64::cast_from(x)))
    } else {
        F::exp(x)
    }
}

/// e^x through the device's fast approximate exponential for f32 (CUDA `__expf`:
/// `ex2.approx` of x·log₂e, a few ulp, what the reference Mamba kernels use); f64 goes
/// through `exp`. For arguments that are finite and not NaN.
pub fn exp_fast<F: Float>(_x: F) -> F {
    cubecl::unexpanded!()
}

/// Expansion of [`exp_fast()`].
pub mod exp_fast {
    use cubecl::prelude::*;

    /// Expand `exp(x)` in a scope that allows reduced-precision intrinsics.
    pub fn expand<F: Float>(scope: &mut Scope, x: NativeExpand<F>) -> NativeExpand<F> {
        if F::as_type(scope).size() == 8 {
            super::exp::expand::<F>(scope, x)
        } else {
            cubecl::frontend::fast_math_expand(
                scope,
                FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf,
                |scope| F::__expand_exp(scope, x),
            )
        }
    }
}

/// 1/x through the device's fast reciprocal for f32 (CUDA `__frcp_rn`); f64 divides.
pub fn recip_fast<F: Float>(_x: F) -> F {
    cubecl::unexpanded!()
}

/// Expansion of [`recip_fast()`].
pub mod recip_fast {
    use cubecl::prelude::*;

    /// Expand `1/x` in a scope that allows reciprocals and reduced precision.
    pub fn expand<F: Float>(scope: &mut Scope, x: NativeExpand<F>) -> NativeExpand<F> {
        cubecl::frontend::fast_math_expand(
            scope,
            FastMath::AllowReciprocal
                | FastMath::ReducedPrecision
                | FastMath::UnsignedZero
                | FastMath::NotInf,
            |scope| F::__expand_recip(scope, x),
        )
    }
}

/// Natural logarithm.
#[cube]
pub fn ln<F: Float>(x: F) -> F {
    if is_f64::<F>() {
        F::cast_from(ln_f64(f64::cast_from(x)))
    } else {
        // Vulkan only bounds log's absolute error near 1 (lavapipe: 1e-2 relative at
        // 1 − 5e-6, e.g. the cross-entropy of a confident prediction); x − 1 is exact
        // there, so the log1p series gives it to a few ulp.
        let d = x - F::new(1.0);
        select(F::abs(d) < F::new(0.25), log1p_series::<F>(d), F::ln(x))
    }
}

/// ln(1 + x). f32 below |x| = 1/4: `log1p_series`, because SPIR-V lowers log1p to
/// log(1 + x), whose rounding of 1 + x loses the low digits of small x (Vulkan's softplus
/// of −9.2 came out 1e-4 relative off); CUDA's `log1pf` would not need it, the series
/// costs about as much.
#[cube]
pub fn log1p<F: Float>(x: F) -> F {
    if is_f64::<F>() {
        F::cast_from(log1p_f64(f64::cast_from(x)))
    } else {
        select(F::abs(x) < F::new(0.25), log1p_series::<F>(x), F::log1p(x))
    }
}

/// ln(1 + x) for |x| ≤ 1/4 (f32): 2·atanh(s) with s = x/(2 + x), odd powers to s⁹
/// (truncation below 1e-9 relative).
#[cube]
fn log1p_series<F: Float>(x: F) -> F {
    let s = x / (F::new(2.0) + x);
    let s2 = s * s;
    let mut p = F::new(1.0 / 9.0);
    p = p * s2 + F::new(1.0 / 7.0);
    p = p * s2 + F::new(1.0 / 5.0);
    p = p * s2 + F::new(1.0 / 3.0);
    p = p * s2 + F::new(1.0);
    F::new(2.0) * s * p
}

/// Hyperbolic tangent.
#[cube]
pub fn tanh<F: Float>(x: F) -> F {
    if is_f64::<F>() {
        F::cast_from(tanh_f64(f64::cast_from(x)))
    } else {
        // Vulkan lowers tanh through exponentials, (e^2x − 1)/(e^2x + 1): below |x| ~ 1e-3
        // the subtraction cancels (lavapipe: 1e-2 relative at 4e-6). Below 0.3 the Taylor
        // series to x¹¹ (2e-9 relative); above, 1 − 2/(e^2|x| + 1), which is at least 0.29.
        let a = F::abs(x);
        let x2 = x * x;
        let mut p = F::new(-1382.0 / 155925.0);
        p = p * x2 + F::new(62.0 / 2835.0);
        p = p * x2 + F::new(-17.0 / 315.0);
        p = p * x2 + F::new(2.0 / 15.0);
        p = p * x2 + F::new(-1.0 / 3.0);
        let series = x + x * x2 * p;
        let t = F::new(1.0) - F::new(2.0) / (exp::<F>(F::new(2.0) * a) + F::new(1.0));
        let wide = select(x < F::new(0.0), -t, t);
        select(a < F::new(0.3), series, wide)
    }
}

/// Error function.
#[cube]
pub fn erf<F: Float>(x: F) -> F {
    if is_f64::<F>() {
        F::cast_from(erf_f64(f64::cast_from(x)))
    } else {
        F::erf(x)
    }
}

/// Cosine.
#[cube]
pub fn cos<F: Float>(x: F) -> F {
    if is_f64::<F>() {
        F::cast_from(cos_f64(f64::cast_from(x)))
    } else {
        F::cos(x)
    }
}

/// x^y with C `pow` semantics on every backend (GLSL leaves negative bases undefined).
#[cube]
pub fn pow<F: Float>(x: F, y: F) -> F {
    if is_f64::<F>() {
        F::cast_from(pow_f64(f64::cast_from(x), f64::cast_from(y)))
    } else {
        let zero = F::new(0.0);
        if y == zero {
            F::new(1.0)
        } else if x > zero {
            F::powf(x, y)
        } else if x == zero {
            select(y > zero, zero, infinity_like::<F>(y))
        } else if F::floor(y) == y {
            let m = F::powf(-x, y);
            select(F::floor(y * F::new(0.5)) == y * F::new(0.5), m, -m)
        } else {
            nan_like::<F>(x)
        }
    }
}

/// Logistic sigmoid 1 / (1 + e^(−x)), without overflow for large |x|.
#[cube]
pub fn sigmoid<F: Float>(x: F) -> F {
    // e^(−|x|)/(1 + e^(−|x|)) for x < 0 keeps relative accuracy in the lower tail.
    let one = F::new(1.0);
    let e = exp::<F>(-F::abs(x));
    let s = one / (one + e);
    select(x >= F::new(0.0), s, e * s)
}

/// softplus(x) = ln(1 + e^x), returning x above `threshold` (PyTorch's default is 20).
#[cube]
pub fn softplus<F: Float>(x: F, threshold: F) -> F {
    if x <= threshold {
        // ln(1 + e^x) = max(x, 0) + ln(1 + e^(−|x|)) avoids overflow and keeps precision.
        F::max(x, F::new(0.0)) + log1p::<F>(exp::<F>(-F::abs(x)))
    } else {
        x
    }
}

/// Exact GELU: x · Φ(x) = x/2 · (1 + erf(x/√2)).
#[cube]
pub fn gelu<F: Float>(x: F) -> F {
    x * F::new(0.5) * (F::new(1.0) + erf::<F>(x * constant::<F>(core::f64::consts::FRAC_1_SQRT_2)))
}

/// A constant at the kernel's precision (an f32 literal would cost f64 kernels 29 bits).
#[cube]
pub fn constant<F: Float>(#[comptime] v: f64) -> F {
    if is_f64::<F>() {
        F::cast_from(v.runtime())
    } else {
        F::new(comptime!(v as f32))
    }
}
