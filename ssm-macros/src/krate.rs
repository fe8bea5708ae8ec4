//! Which path generated code uses to reach the `ssm` crate.
//!
//! Generated code must work from any crate, whether it depends on `ssm` under its own
//! name or renamed (`my_ssm = { package = "ssm", .. }`). At expansion time the macro reads
//! the calling crate's `Cargo.toml` (`CARGO_MANIFEST_DIR`) and finds the dependency whose
//! package is `ssm`. Inside the `ssm` package it emits `::ssm` too: the library declares
//! `extern crate self as ssm;`, and its binaries and tests depend on the library.

use proc_macro2::TokenStream;
use quote::quote;

/// The path to the `ssm` crate as seen from the crate being compiled.
pub fn ssm_path() -> TokenStream {
    let name = detect().unwrap_or_else(|| "ssm".to_string());
    let ident = syn::Ident::new(&name, proc_macro2::Span::call_site());
    quote!(::#ident)
}

fn detect() -> Option<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join("Cargo.toml")).ok()?;
    dependency_name(&text)
}

/// The local name of the `ssm` package in a manifest (`ssm` for the package itself).
pub fn dependency_name(manifest: &str) -> Option<String> {
    let mut section = String::new();
    let mut table_dep: Option<String> = None;
    for raw in manifest.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            table_dep = section
                .strip_prefix("dependencies.")
                .or_else(|| section.strip_prefix("dev-dependencies."))
                .map(|s| s.trim().to_string());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim().trim_matches('"'), value.trim());
        if section == "package" && key == "name" && value.trim_matches('"') == "ssm" {
            return Some("ssm".into());
        }
        if let Some(dep) = &table_dep {
            if key == "package" && value.trim_matches('"') == "ssm" {
                return Some(dep.replace('-', "_"));
            }
            continue;
        }
        if section == "dependencies" || section == "dev-dependencies" {
            let renamed =
                value.contains("package") && value.contains("\"ssm\"") && package_is_ssm(value);
            if renamed || (key == "ssm" && !value.contains("package")) {
                return Some(key.replace('-', "_"));
            }
        }
    }
    None
}

fn package_is_ssm(inline_table: &str) -> bool {
    inline_table
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .any(|(k, v)| {
            k.trim().trim_start_matches('{').trim() == "package"
                && v.trim().trim_end_matches('}').trim().trim_matches('"') == "ssm"
        })
}

#[cfg(test)]
mod tests {
    use super::dependency_name;

    #[test]
    fn finds_plain_renamed_and_table_dependencies() {
        let find = |m: &str| dependency_name(m);
        assert_eq!(
            find("[dependencies]\nssm = { path = \"../ssm\" }\n").as_deref(),
            Some("ssm")
        );
        assert_eq!(
            find("[dependencies]\nmy-ssm = { package = \"ssm\", path = \"x\" }\n").as_deref(),
            Some("my_ssm")
        );
        assert_eq!(
            find("[dependencies.fast]\npath = \"x\"\npackage = \"ssm\"\n").as_deref(),
            Some("fast")
        );
        assert_eq!(find("[package]\nname = \"ssm\"\n").as_deref(), Some("ssm"));
        assert_eq!(find("[dependencies]\nssmx = \"1\"\n"), None);
    }
}
