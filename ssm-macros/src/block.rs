//! `#[ssm_block(...)]`: a Mamba mixer declaration. The options are checked here, at
//! compile time, with errors at the offending option; the expansion is a typed struct over
//! `ssm::dsl::Block` (parameters with official names, `new`, `forward`, save/load) and a
//! generated f64 gradient-check test.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{Error, Expr, ExprLit, ItemStruct, Lit, Result};

use crate::krate::ssm_path;
use crate::paths::{PathSpec, parse_paths};

const OPTIONS: &[&str] = &[
    "d_model",
    "d_state",
    "expand",
    "ssm_ratio",
    "dt_rank",
    "conv",
    "conv_bias",
    "activation",
    "gate",
    "z",
    "out_norm",
    "paths",
    "merge",
    "per_path",
    "names",
    "bias",
    "views",
    "multi_scale",
    "test_grid",
    "no_gradcheck",
    "crate",
];

const PER_PATH: &[&str] = &["conv", "x_proj", "dt_proj", "a", "d"];

#[derive(Clone, Copy, PartialEq)]
enum Conv {
    None,
    Causal(usize),
    Depthwise(usize),
}

#[derive(Default)]
struct Decl {
    d_model: Option<(usize, Span)>,
    d_state: Option<(usize, Span)>,
    expand: Option<(usize, Span)>,
    ssm_ratio: Option<(f64, Span)>,
    dt_rank: Option<usize>,
    conv: Option<(Conv, Span)>,
    conv_bias: bool,
    activation: Option<String>,
    gate: Option<(bool, Span)>,
    z: Option<(bool, Span)>,
    out_norm: Option<bool>,
    paths: Option<(Vec<PathSpec>, Span)>,
    mean: bool,
    per_path: Option<(Vec<String>, Span)>,
    names_mamba: Option<(bool, Span)>,
    bias: Vec<String>,
    abss: Option<Span>,
    multi_scale: Option<((usize, usize, usize), Span)>,
    test_grid: Option<Vec<usize>>,
    no_gradcheck: bool,
    krate: Option<syn::Path>,
    seen: Vec<String>,
}

fn closest(name: &str) -> Option<&'static str> {
    let dist = |a: &str, b: &str| {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut cur = vec![i; b.len() + 1];
            for j in 1..=b.len() {
                cur[j] = (prev[j] + 1)
                    .min(cur[j - 1] + 1)
                    .min(prev[j - 1] + (a[i - 1] != b[j - 1]) as usize);
            }
            prev = cur;
        }
        prev[b.len()]
    };
    OPTIONS
        .iter()
        .copied()
        .filter(|o| dist(name, o) <= 2)
        .min_by_key(|o| dist(name, o))
}

fn int(e: &Expr) -> Result<usize> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        other => Err(Error::new(other.span(), "expected a whole number")),
    }
}

fn ident_list(input: ParseStream) -> Result<Vec<syn::Ident>> {
    let content;
    syn::bracketed!(content in input);
    Ok(content
        .parse_terminated(syn::Ident::parse_any_ident, syn::Token![,])?
        .into_iter()
        .collect())
}

trait AnyIdent {
    fn parse_any_ident(input: ParseStream) -> Result<syn::Ident>;
}
impl AnyIdent for syn::Ident {
    fn parse_any_ident(input: ParseStream) -> Result<syn::Ident> {
        use syn::ext::IdentExt;
        syn::Ident::parse_any(input)
    }
}

impl Decl {
    fn parse(attr: TokenStream) -> Result<Decl> {
        let mut d = Decl::default();
        let parser = syn::meta::parser(|meta| {
            let name = meta
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let span = meta.path.span();
            if !OPTIONS.contains(&name.as_str()) {
                let hint = closest(&name)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                return Err(meta.error(format!(
                    "unknown option `{name}` of #[ssm_block]{hint} (options: {})",
                    OPTIONS.join(", ")
                )));
            }
            if d.seen.contains(&name) {
                return Err(meta.error(format!("option `{name}` is given twice")));
            }
            d.seen.push(name.clone());
            match name.as_str() {
                "d_model" => {
                    let v = int(&meta.value()?.parse()?)?;
                    if v == 0 {
                        return Err(Error::new(span, "d_model must be at least 1"));
                    }
                    d.d_model = Some((v, span));
                }
                "d_state" => {
                    let e: Expr = meta.value()?.parse()?;
                    let v = int(&e)?;
                    if v == 0 || v > 64 {
                        return Err(Error::new(
                            e.span(),
                            format!(
                                "d_state = {v} is out of range: the scan engine supports 1 to 64 states"
                            ),
                        ));
                    }
                    d.d_state = Some((v, span));
                }
                "expand" => d.expand = Some((int(&meta.value()?.parse()?)?, span)),
                "ssm_ratio" => {
                    let e: Expr = meta.value()?.parse()?;
                    let v = match &e {
                        Expr::Lit(ExprLit {
                            lit: Lit::Float(f), ..
                        }) => f.base10_parse()?,
                        Expr::Lit(ExprLit {
                            lit: Lit::Int(i), ..
                        }) => i.base10_parse::<usize>()? as f64,
                        other => return Err(Error::new(other.span(), "expected a number")),
                    };
                    d.ssm_ratio = Some((v, span));
                }
                "dt_rank" => {
                    let e: Expr = meta.value()?.parse()?;
                    d.dt_rank = match &e {
                        Expr::Path(p) if p.path.is_ident("auto") => None,
                        other => Some(int(other)?),
                    };
                }
                "conv" => {
                    let e: Expr = meta.value()?.parse()?;
                    let c = match &e {
                        Expr::Path(p) if p.path.is_ident("none") => Conv::None,
                        Expr::Call(c) if c.args.len() == 1 => {
                            let k = int(&c.args[0])?;
                            let f = match &*c.func {
                                Expr::Path(p) => p
                                    .path
                                    .get_ident()
                                    .map(|i| i.to_string())
                                    .unwrap_or_default(),
                                _ => String::new(),
                            };
                            match f.as_str() {
                                "causal" if k > 0 => Conv::Causal(k),
                                "depthwise" if k % 2 == 1 => Conv::Depthwise(k),
                                "depthwise" => {
                                    return Err(Error::new(
                                        c.args[0].span(),
                                        format!(
                                            "a depthwise conv width must be odd (for \"same\" padding), got {k}"
                                        ),
                                    ));
                                }
                                _ => {
                                    return Err(Error::new(
                                        c.func.span(),
                                        "expected `causal(k)` or `depthwise(k)`",
                                    ));
                                }
                            }
                        }
                        other => {
                            return Err(Error::new(
                                other.span(),
                                "expected `none`, `causal(k)` or `depthwise(k)`",
                            ));
                        }
                    };
                    d.conv = Some((c, e.span()));
                }
                "conv_bias" => d.conv_bias = meta.value()?.parse::<syn::LitBool>()?.value,
                "activation" => {
                    let i: syn::Ident = meta.value()?.parse()?;
                    if !["silu", "gelu", "none"].contains(&i.to_string().as_str()) {
                        return Err(Error::new(i.span(), "expected `silu`, `gelu` or `none`"));
                    }
                    d.activation = Some(i.to_string());
                }
                "gate" => {
                    let i: syn::Ident = meta.value()?.parse()?;
                    let on = match i.to_string().as_str() {
                        "silu" => true,
                        "none" => false,
                        _ => {
                            return Err(Error::new(
                                i.span(),
                                "expected `silu` (gate with silu(z)) or `none`",
                            ));
                        }
                    };
                    d.gate = Some((on, span));
                }
                "z" => d.z = Some((meta.value()?.parse::<syn::LitBool>()?.value, span)),
                "out_norm" => {
                    let i: syn::Ident = meta.value()?.parse()?;
                    d.out_norm = Some(match i.to_string().as_str() {
                        "layer_norm" => true,
                        "none" => false,
                        _ => return Err(Error::new(i.span(), "expected `layer_norm` or `none`")),
                    });
                }
                "paths" => {
                    let e: Expr = meta.value()?.parse()?;
                    d.paths = Some((parse_paths(&e)?, e.span()));
                }
                "merge" => {
                    let i: syn::Ident = meta.value()?.parse()?;
                    d.mean = match i.to_string().as_str() {
                        "sum" => false,
                        "mean" => true,
                        _ => return Err(Error::new(i.span(), "expected `sum` or `mean`")),
                    };
                }
                "per_path" => {
                    meta.input.parse::<syn::Token![=]>()?;
                    let list = ident_list(meta.input)?;
                    let mut names = Vec::new();
                    for i in list {
                        let s = i.to_string();
                        if !PER_PATH.contains(&s.as_str()) {
                            return Err(Error::new(
                                i.span(),
                                format!(
                                    "`{s}` cannot be per path; per-path parameters are a subset of {}; in_proj, out_proj and out_norm are always shared",
                                    PER_PATH.join(", ")
                                ),
                            ));
                        }
                        if names.contains(&s) {
                            return Err(Error::new(
                                i.span(),
                                format!(
                                    "`{s}` is listed twice in per_path: it would define its parameters twice"
                                ),
                            ));
                        }
                        names.push(s);
                    }
                    d.per_path = Some((names, span));
                }
                "names" => {
                    let i: syn::Ident = meta.value()?.parse()?;
                    d.names_mamba = Some((
                        match i.to_string().as_str() {
                            "mamba" => true,
                            "vmamba" => false,
                            _ => return Err(Error::new(i.span(), "expected `vmamba` or `mamba`")),
                        },
                        span,
                    ));
                }
                "bias" => {
                    meta.input.parse::<syn::Token![=]>()?;
                    for i in ident_list(meta.input)? {
                        let s = i.to_string();
                        if !["in_proj", "out_proj"].contains(&s.as_str()) {
                            return Err(Error::new(
                                i.span(),
                                "bias can be given to `in_proj` and `out_proj` (use conv_bias for the convolution)",
                            ));
                        }
                        if d.bias.contains(&s) {
                            return Err(Error::new(
                                i.span(),
                                format!("`{s}` is listed twice in bias"),
                            ));
                        }
                        d.bias.push(s);
                    }
                }
                "views" => {
                    let i: syn::Ident = meta.value()?.parse()?;
                    match i.to_string().as_str() {
                        "abss" => d.abss = Some(i.span()),
                        "single" => {}
                        _ => return Err(Error::new(i.span(), "expected `single` or `abss`")),
                    }
                }
                "multi_scale" => {
                    let (mut full, mut stride, mut kernel) = (None, None, None);
                    meta.parse_nested_meta(|m| {
                        let v = int(&m.value()?.parse()?)?;
                        if m.path.is_ident("full") {
                            full = Some(v);
                        } else if m.path.is_ident("stride") {
                            stride = Some(v);
                        } else if m.path.is_ident("kernel") {
                            kernel = Some(v);
                        } else {
                            return Err(m.error("expected `full`, `stride` or `kernel`"));
                        }
                        Ok(())
                    })?;
                    let full = full.ok_or_else(|| {
                        Error::new(
                            span,
                            "multi_scale needs `full = <number of full-resolution paths>`",
                        )
                    })?;
                    d.multi_scale = Some(((full, stride.unwrap_or(2), kernel.unwrap_or(7)), span));
                }
                "test_grid" => {
                    let e: Expr = meta.value()?.parse()?;
                    let Expr::Array(a) = &e else {
                        return Err(Error::new(e.span(), "expected a list like [3, 4]"));
                    };
                    d.test_grid = Some(a.elems.iter().map(int).collect::<Result<_>>()?);
                }
                "no_gradcheck" => d.no_gradcheck = true,
                "crate" => d.krate = Some(meta.value()?.parse()?),
                _ => unreachable!("listed in OPTIONS"),
            }
            Ok(())
        });
        syn::parse::Parser::parse2(parser, attr)?;
        Ok(d)
    }
}

/// Expand `#[ssm_block]` on `item`.
pub fn expand(attr: TokenStream, item: ItemStruct) -> Result<TokenStream> {
    let all = Span::call_site();
    let d = Decl::parse(attr)?;
    let (d_model, _) = d
        .d_model
        .ok_or_else(|| Error::new(all, "#[ssm_block] needs `d_model = <width>`"))?;
    let (d_state, _) = d
        .d_state
        .ok_or_else(|| Error::new(all, "#[ssm_block] needs `d_state = <state size>`"))?;
    let (paths, paths_span) = d
        .paths
        .clone()
        .ok_or_else(|| Error::new(all, "#[ssm_block] needs `paths = <preset or list>`"))?;
    if let (Some(_), Some((_, s))) = (d.expand, d.ssm_ratio) {
        return Err(Error::new(
            s,
            "`expand` and `ssm_ratio` both set the inner width: give one of them",
        ));
    }
    let d_inner = match (d.expand, d.ssm_ratio) {
        (Some((e, _)), _) => d_model * e,
        (_, Some((r, s))) => {
            let v = d_model as f64 * r;
            if v.fract() != 0.0 || v < 1.0 {
                return Err(Error::new(
                    s,
                    format!(
                        "ssm_ratio {r} times d_model {d_model} is not a whole number of channels"
                    ),
                ));
            }
            v as usize
        }
        _ => 2 * d_model,
    };
    let rank = paths[0].rank;
    if let Some(p) = paths.iter().find(|p| p.rank != rank) {
        return Err(Error::new(
            p.span,
            format!(
                "all paths must walk grids of one rank: this path walks a {}D grid, the first a {rank}D grid",
                p.rank
            ),
        ));
    }
    let gate = d.gate.map(|g| g.0).unwrap_or(false);
    if let (Some((true, gspan)), Some((false, _))) = (d.gate, d.z) {
        return Err(Error::new(
            gspan,
            "`gate = silu` needs the z branch of in_proj, but this block is declared with `z = false`; remove `z = false` or use `gate = none`",
        ));
    }
    if let (Some((true, zspan)), false) = (d.z, gate) {
        return Err(Error::new(
            zspan,
            "`z = true` without a gate: z would be computed and never used; add `gate = silu`",
        ));
    }
    let conv = d.conv.map(|c| c.0).unwrap_or(Conv::Depthwise(3));
    if let (Conv::Causal(_), true) = (conv, rank != 1) {
        return Err(Error::new(
            d.conv.map(|c| c.1).unwrap_or(all),
            format!("a causal conv is 1D but the paths walk a {rank}D grid; use `depthwise(k)`"),
        ));
    }
    let mamba = d.names_mamba.map(|n| n.0).unwrap_or(false);
    let per_path: Vec<String> = d
        .per_path
        .clone()
        .map(|p| p.0)
        .unwrap_or_else(|| vec!["x_proj".into(), "dt_proj".into(), "a".into(), "d".into()]);
    let pp = |s: &str| per_path.iter().any(|p| p == s);
    if pp("conv") && !mamba {
        return Err(Error::new(
            d.per_path.map(|p| p.1).unwrap_or(all),
            "per-path convolutions are named like Vim's (`conv1d`, `conv1d_b`): add `names = mamba`",
        ));
    }
    if mamba && paths.len() > 2 {
        return Err(Error::new(
            d.names_mamba.map(|n| n.1).unwrap_or(all),
            format!(
                "`names = mamba` covers one or two paths (suffix `_b` for the second), got {}",
                paths.len()
            ),
        ));
    }
    if let Some(s) = d.abss
        && rank != 2
    {
        return Err(Error::new(
            s,
            format!(
                "`views = abss` presents each of three 2D views to the mixer, so the paths must be 2D (e.g. cross2d), got {rank}D"
            ),
        ));
    }
    if let Some(((full, stride, kernel), s)) = d.multi_scale {
        if full == 0 || full >= paths.len() {
            return Err(Error::new(
                s,
                format!(
                    "multi_scale: `full = {full}` must leave paths for the low-resolution branch (there are {} paths)",
                    paths.len()
                ),
            ));
        }
        if stride < 2 || kernel % 2 == 0 {
            return Err(Error::new(
                s,
                "multi_scale needs stride >= 2 and an odd kernel",
            ));
        }
    }
    if let Some(g) = &d.test_grid {
        let want = if d.abss.is_some() { 3 } else { rank };
        if g.len() != want {
            return Err(Error::new(
                all,
                format!(
                    "test_grid has {} axes, the block's input grid has {want}",
                    g.len()
                ),
            ));
        }
    }

    let krate = d
        .krate
        .as_ref()
        .map(|p| quote!(#p))
        .unwrap_or_else(ssm_path);
    let path_exprs: Vec<TokenStream> = paths.iter().map(|p| p.tokens(&krate)).collect();
    let dt_rank = d.dt_rank.unwrap_or(d_model.div_ceil(16));
    let conv_tokens = match conv {
        Conv::None => quote!(#krate::dsl::mixer::LocalConv::None),
        Conv::Causal(k) => quote!(#krate::dsl::mixer::LocalConv::Causal1d(#k)),
        Conv::Depthwise(k) => quote!(#krate::dsl::mixer::LocalConv::Depthwise(#k)),
    };
    let act = match d.activation.as_deref().unwrap_or("silu") {
        "gelu" => quote!(Gelu),
        "none" => quote!(None),
        _ => quote!(Silu),
    };
    let out_norm = d.out_norm.unwrap_or(true);
    let merge = if d.mean { quote!(Mean) } else { quote!(Sum) };
    let naming = if mamba { quote!(Mamba) } else { quote!(VMamba) };
    let (ppc, ppx, ppt, ppa, ppd) = (pp("conv"), pp("x_proj"), pp("dt_proj"), pp("a"), pp("d"));
    let in_bias = d.bias.iter().any(|b| b == "in_proj");
    let out_bias = d.bias.iter().any(|b| b == "out_proj");
    let conv_bias = d.conv_bias;
    let multi = match d.multi_scale {
        Some(((f, s, k), _)) => {
            quote!(Some(#krate::dsl::mixer::MultiScale { full_paths: #f, stride: #s, kernel: #k }))
        }
        None => quote!(None),
    };
    let views = if d.abss.is_some() {
        quote!(Abss)
    } else {
        quote!(Single)
    };
    let test_grid = d.test_grid.clone().unwrap_or_else(|| {
        match (d.abss.is_some(), d.multi_scale.is_some(), rank) {
            (true, _, _) => vec![2, 3, 2],
            (_, true, _) => vec![4, 5],
            (_, _, 1) => vec![7],
            (_, _, 2) => vec![3, 4],
            _ => vec![2, 3, 2],
        }
    });
    let _ = paths_span;

    let name = &item.ident;
    let vis = &item.vis;
    let attrs = &item.attrs;
    if !matches!(item.fields, syn::Fields::Unit) {
        return Err(Error::new(
            item.fields.span(),
            "declare the block as a unit struct (`pub struct Name;`): the macro generates its fields",
        ));
    }
    let name_str = name.to_string();
    let test = if d.no_gradcheck {
        quote!()
    } else {
        let m = format_ident!("__ssm_gradcheck_{}", name_str.to_lowercase());
        quote! {
            #[cfg(test)]
            mod #m {
                /// Generated f64 gradient check of the declared block (input and every parameter).
                #[test]
                fn gradcheck() {
                    #krate::dsl::check_block(#name_str, super::#name::config(), &[#(#test_grid),*]);
                }
            }
        }
    };
    Ok(quote! {
        #(#attrs)*
        #[derive(Debug, Clone)]
        #vis struct #name {
            block: #krate::dsl::Block,
        }

        impl #name {
            /// The declaration as a configuration.
            pub fn config() -> #krate::dsl::BlockConfig {
                let mut m = #krate::dsl::mixer::MixerConfig::new(#d_model, #d_state, vec![#(#path_exprs),*]);
                m.d_inner = #d_inner;
                m.dt_rank = #dt_rank;
                m.conv = #conv_tokens;
                m.conv_bias = #conv_bias;
                m.activation = #krate::dsl::mixer::Activation::#act;
                m.gate = #gate;
                m.out_norm = #out_norm;
                m.merge = #krate::runtime::scan::Merge::#merge;
                m.per_path = #krate::dsl::mixer::PerPath { conv: #ppc, x_proj: #ppx, dt_proj: #ppt, a: #ppa, d: #ppd };
                m.in_proj_bias = #in_bias;
                m.out_proj_bias = #out_bias;
                m.naming = #krate::dsl::mixer::Naming::#naming;
                m.multi_scale = #multi;
                #krate::dsl::BlockConfig { mixer: m, views: #krate::dsl::Views::#views }
            }

            /// A block with freshly initialised parameters (deterministic in `seed`).
            pub fn new(device: &#krate::Device, dtype: #krate::DType, seed: u64) -> #krate::Result<Self> {
                Ok(Self { block: #krate::dsl::Block::new(Self::config(), device, dtype, seed)? })
            }

            /// Forward pass on the tape; the input is channels-last `(B, *grid, d_model)`.
            pub fn forward(&self, x: &#krate::Var) -> #krate::Result<#krate::Var> {
                self.block.forward(x)
            }

            /// Parameters with their official names.
            pub fn params(&self) -> &#krate::dsl::ParamSet {
                self.block.params()
            }

            /// Save the parameters as safetensors (atomically).
            pub fn save(&self, path: impl AsRef<::std::path::Path>) -> #krate::Result<()> {
                self.block.params().save(path.as_ref())
            }

            /// Load parameters from safetensors; returns the file's unused names.
            pub fn load(&self, path: impl AsRef<::std::path::Path>) -> #krate::Result<Vec<String>> {
                self.block.params().load(path.as_ref())
            }

            /// The underlying block.
            pub fn block(&self) -> &#krate::dsl::Block {
                &self.block
            }
        }

        #test
    })
}
