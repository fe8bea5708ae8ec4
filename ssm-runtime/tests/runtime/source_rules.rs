//! Kernel source rules that the compilers do not enforce but the backends need.
//!
//! CubeCL 0.10's CUDA code generator prints infinite and NaN float literals as `inf` and
//! `NaN`, which NVRTC rejects at run time (only on CUDA, so lavapipe CI would not notice).
//! Bit casts of constants fail too (`reinterpret_cast` of an rvalue; a bit cast of a
//! variable or an array element, which is all a kernel's expressions lower to, compiles).
//! Kernels use `kernels::math::{infinity_like, neg_infinity_like, nan_like}` or take such
//! values as runtime scalars, and `kernels::math::is_nan` instead of `x != x` (folded to
//! false).

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

/// Lines of `#[cube]` items (attribute through the closing brace of the body).
fn cube_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut inside, mut depth, mut opened) = (false, 0i64, false);
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if !inside && code.trim_start().starts_with("#[cube") {
            (inside, depth, opened) = (true, 0, false);
        }
        if inside {
            out.push((n + 1, code));
            for ch in code.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth == 0 {
                inside = false;
            }
        }
    }
    out
}

#[test]
fn kernels_use_no_special_float_literals() {
    let mut files = Vec::new();
    kernel_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels"),
        &mut files,
    );
    assert!(!files.is_empty());
    let forbidden = ["::INFINITY", "::NEG_INFINITY", "::NAN"];
    let mut checked = 0;
    for (path, text) in &files {
        for (line, code) in cube_lines(text) {
            checked += 1;
            for f in forbidden {
                assert!(
                    !code.contains(f),
                    "{path}:{line}: `{f}` in kernel code (see tests/runtime/source_rules.rs)"
                );
            }
            let t = code.replace(' ', "");
            for (i, _) in t.match_indices("::reinterpret(") {
                assert!(
                    !bit_cast_of_constant(&t[i + "::reinterpret(".len()..]),
                    "{path}:{line}: bit cast of a constant in kernel code (see tests/runtime/source_rules.rs)"
                );
            }
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
                    "{path}:{line}: `x != x` NaN test (use math::is_nan)"
                );
            }
        }
    }
    assert!(
        checked > 500,
        "only {checked} kernel lines found: the scanner is broken"
    );
}

/// Whether the argument of a bit cast (the text after `reinterpret(`, spaces removed) is a
/// constant: a literal, a `T::new(..)` of one, or an upper-case constant item.
fn bit_cast_of_constant(arg: &str) -> bool {
    let first = arg
        .split(|c: char| !c.is_alphanumeric() && c != '_' && c != ':')
        .next()
        .unwrap_or("");
    let last_name = first.rsplit("::").next().unwrap_or("");
    arg.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        || first.ends_with("::new")
        || (!last_name.is_empty()
            && last_name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
}

#[test]
fn bit_casts_of_constants_are_told_from_those_of_values() {
    for constant in [
        "0x7f80_0000u32)",
        "-1i32)",
        "u32::new(5))",
        "MASK)",
        "f32::NAN)",
    ] {
        assert!(bit_cast_of_constant(constant), "{constant}");
    }
    for value in ["a_s[a_k+i*16])", "v)", "x.bits)", "lo[e])"] {
        assert!(!bit_cast_of_constant(value), "{value}");
    }
}
