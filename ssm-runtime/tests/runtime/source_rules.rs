//! Kernel source rules that the compilers do not enforce but the backends need.
//!
//! CubeCL 0.10's CUDA code generator prints infinite and NaN float literals as `inf` and
//! `NaN`, which NVRTC rejects at run time (only on CUDA, so lavapipe CI would not notice).
//! Kernels must use `kernels::math::{infinity, neg_infinity, nan}` instead, and
//! `kernels::math::is_nan` instead of `x != x` (folded to false by CubeCL's optimiser).

use std::path::Path;

fn kernel_sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            kernel_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
}

#[test]
fn kernels_use_no_special_float_literals() {
    let mut files = Vec::new();
    kernel_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels"),
        &mut files,
    );
    assert!(!files.is_empty());
    let forbidden = [
        "::INFINITY",
        "::NEG_INFINITY",
        "::NAN",
        "f32::MAX",
        "f64::MAX",
    ];
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for f in forbidden {
                assert!(
                    !code.contains(f),
                    "{path}:{}: `{f}` in kernel code (see tests/runtime/source_rules.rs)",
                    n + 1
                );
            }
            let t = code.replace(' ', "");
            for (i, _) in t.match_indices("!=") {
                let (l, r) = (&t[..i], &t[i + 2..]);
                let lhs = l
                    .rsplit(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or("");
                let rhs = r
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or("");
                assert!(
                    lhs.is_empty() || lhs != rhs,
                    "{path}:{}: `x != x` NaN test (use math::is_nan)",
                    n + 1
                );
            }
        }
    }
}
