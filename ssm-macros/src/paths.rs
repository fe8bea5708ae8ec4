//! Scan-path declarations: presets by name, or lists of paths built from `raster(n)` /
//! `order(a, b, …)` with `.rev()`, `.flip(axis)`, `.snake()`, `.scale(s)`. Axes are checked
//! against the path's rank at compile time.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::{Error, Expr, ExprLit, Lit, Result};

/// Presets: name, function in `ssm::runtime::scan::presets`, path count, rank.
const PRESETS: &[(&str, &str, usize, usize)] = &[
    ("forward", "forward_1d", 1, 1),
    ("bidirectional", "bidirectional", 2, 1),
    ("cross2d", "cross2d", 4, 2),
    ("snake", "snake_2d", 1, 2),
    ("tri_orientated", "tri_orientated", 3, 3),
    ("srma_abss", "srma_abss", 12, 3),
    ("six_orders", "six_orders_3d", 12, 3),
];

#[derive(Clone, Debug)]
enum Base {
    Order(Vec<usize>),
    Preset(&'static str, usize),
}

#[derive(Clone, Debug)]
enum Modifier {
    Rev,
    Flip(usize),
    Snake,
    Scale(usize),
}

/// One declared path.
#[derive(Clone, Debug)]
pub struct PathSpec {
    /// Number of grid axes it walks.
    pub rank: usize,
    /// Where it was declared.
    pub span: Span,
    base: Base,
    mods: Vec<Modifier>,
}

impl PathSpec {
    /// Code building the `ScanPath`.
    pub fn tokens(&self, krate: &TokenStream) -> TokenStream {
        let base = match &self.base {
            Base::Order(o) => {
                quote!(#krate::runtime::scan::ScanPath::with_order(&[#(#o),*]).expect("checked at compile time"))
            }
            Base::Preset(f, i) => {
                let f = syn::Ident::new(f, Span::call_site());
                quote!(#krate::runtime::scan::presets::#f()[#i].clone())
            }
        };
        self.mods.iter().fold(base, |acc, m| match m {
            Modifier::Rev => quote!(#acc.rev()),
            Modifier::Flip(a) => quote!(#acc.flip_axis(#a).expect("checked at compile time")),
            Modifier::Snake => quote!(#acc.snake()),
            Modifier::Scale(s) => quote!(#acc.with_scale(#s).expect("checked at compile time")),
        })
    }
}

fn int(e: &Expr) -> Result<usize> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        other => Err(Error::new(other.span(), "expected a whole number")),
    }
}

fn preset_names() -> String {
    PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
}

/// Parse `paths = …`.
pub fn parse_paths(e: &Expr) -> Result<Vec<PathSpec>> {
    match e {
        Expr::Path(p) => {
            let name = p
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let (_, f, n, rank) = PRESETS.iter().find(|x| x.0 == name).ok_or_else(|| {
                Error::new(p.span(), format!("unknown path preset `{name}`; presets: {}; or give a list like [raster(2), order(1, 0).rev()]", preset_names()))
            })?;
            Ok((0..*n)
                .map(|i| PathSpec {
                    rank: *rank,
                    span: p.span(),
                    base: Base::Preset(f, i),
                    mods: vec![],
                })
                .collect())
        }
        Expr::Array(a) => {
            if a.elems.is_empty() {
                return Err(Error::new(a.span(), "the path list is empty"));
            }
            a.elems.iter().map(parse_one).collect()
        }
        other => Err(Error::new(
            other.span(),
            format!("expected a preset ({}) or a list of paths", preset_names()),
        )),
    }
}

fn parse_one(e: &Expr) -> Result<PathSpec> {
    match e {
        Expr::MethodCall(m) => {
            let mut p = parse_one(&m.receiver)?;
            let name = m.method.to_string();
            let arg = |i: usize| {
                m.args.iter().nth(i).ok_or_else(|| {
                    Error::new(m.method.span(), format!("`{name}` needs an argument"))
                })
            };
            let md = match name.as_str() {
                "rev" => Modifier::Rev,
                "snake" => Modifier::Snake,
                "flip" => {
                    let a = int(arg(0)?)?;
                    if a >= p.rank {
                        return Err(Error::new(
                            arg(0)?.span(),
                            format!(
                                "axis {a} is out of range for a path over {} grid axes (0..{})",
                                p.rank, p.rank
                            ),
                        ));
                    }
                    Modifier::Flip(a)
                }
                "scale" => {
                    let s = int(arg(0)?)?;
                    if s == 0 {
                        return Err(Error::new(arg(0)?.span(), "scale must be at least 1"));
                    }
                    Modifier::Scale(s)
                }
                other => {
                    return Err(Error::new(
                        m.method.span(),
                        format!(
                            "unknown path modifier `.{other}()`; expected .rev(), .flip(axis), .snake() or .scale(s)"
                        ),
                    ));
                }
            };
            p.mods.push(md);
            Ok(p)
        }
        Expr::Call(c) => {
            let name = match &*c.func {
                Expr::Path(p) => p
                    .path
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            match name.as_str() {
                "raster" => {
                    let [r] = c.args.iter().collect::<Vec<_>>()[..] else {
                        return Err(Error::new(c.span(), "`raster(n)` takes the grid rank"));
                    };
                    let n = int(r)?;
                    if !(1..=3).contains(&n) {
                        return Err(Error::new(r.span(), "grids have 1 to 3 axes"));
                    }
                    Ok(PathSpec {
                        rank: n,
                        span: c.span(),
                        base: Base::Order((0..n).collect()),
                        mods: vec![],
                    })
                }
                "order" => {
                    let axes: Vec<usize> = c.args.iter().map(int).collect::<Result<_>>()?;
                    let n = axes.len();
                    if !(1..=3).contains(&n) {
                        return Err(Error::new(
                            c.span(),
                            "`order(…)` lists 1 to 3 axes, slowest first",
                        ));
                    }
                    for (i, &a) in axes.iter().enumerate() {
                        let arg = c.args.iter().nth(i).expect("same length");
                        if a >= n {
                            return Err(Error::new(
                                arg.span(),
                                format!(
                                    "axis {a} is out of range for a path over {n} grid axes (0..{n})"
                                ),
                            ));
                        }
                        if axes[..i].contains(&a) {
                            return Err(Error::new(
                                arg.span(),
                                format!(
                                    "axis {a} is listed twice; an order visits every axis once"
                                ),
                            ));
                        }
                    }
                    Ok(PathSpec {
                        rank: n,
                        span: c.span(),
                        base: Base::Order(axes),
                        mods: vec![],
                    })
                }
                other => Err(Error::new(
                    c.func.span(),
                    format!("unknown path `{other}(…)`; expected raster(n) or order(a, b, …)"),
                )),
            }
        }
        Expr::Path(p) => {
            let v = parse_paths(e)?;
            if v.len() != 1 {
                return Err(Error::new(
                    p.span(),
                    "this preset has several paths; use it alone as `paths = name`",
                ));
            }
            Ok(v.into_iter().next().expect("one path"))
        }
        other => Err(Error::new(
            other.span(),
            "expected a path such as raster(2), order(1, 0).rev()",
        )),
    }
}
