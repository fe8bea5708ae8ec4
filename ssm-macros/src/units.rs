//! `#[lpr(...)]` (local perception residual) and `#[reverse_attention(...)]` declarations.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Error, Expr, ExprLit, ItemStruct, Lit, Result};

use crate::krate::ssm_path;

fn int(e: &Expr) -> Result<usize> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        other => Err(Error::new(other.span(), "expected a whole number")),
    }
}

fn unit_struct(item: &ItemStruct) -> Result<()> {
    if !matches!(item.fields, syn::Fields::Unit) {
        return Err(Error::new(
            item.fields.span(),
            "declare it as a unit struct (`pub struct Name;`): the macro generates its fields",
        ));
    }
    Ok(())
}

fn test_mod(name: &syn::Ident, skip: bool, body: TokenStream) -> TokenStream {
    if skip {
        return quote!();
    }
    let m = format_ident!("__ssm_gradcheck_{}", name.to_string().to_lowercase());
    quote! {
        #[cfg(test)]
        mod #m {
            /// Generated f64 gradient check of the declaration.
            #[test]
            fn gradcheck() {
                #body
            }
        }
    }
}

/// Expand `#[lpr(channels = C, kernel = k, rank = r, norm = none|layer_norm, activation = none|gelu|silu|relu)]`.
pub fn expand_lpr(attr: TokenStream, item: ItemStruct) -> Result<TokenStream> {
    unit_struct(&item)?;
    let (mut channels, mut kernel, mut rank) = (None, 3usize, 2usize);
    let (mut norm, mut act, mut skip, mut krate_opt) =
        (false, "none".to_string(), false, None::<syn::Path>);
    let parser = syn::meta::parser(|meta| {
        let span = meta.path.span();
        let name = meta
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        match name.as_str() {
            "channels" => channels = Some(int(&meta.value()?.parse()?)?),
            "kernel" => {
                let e: Expr = meta.value()?.parse()?;
                kernel = int(&e)?;
                if kernel % 2 == 0 {
                    return Err(Error::new(
                        e.span(),
                        format!("the LPR conv width must be odd (\"same\" padding), got {kernel}"),
                    ));
                }
            }
            "rank" => {
                let e: Expr = meta.value()?.parse()?;
                rank = int(&e)?;
                if !(1..=3).contains(&rank) {
                    return Err(Error::new(
                        e.span(),
                        "rank is the number of grid axes: 1, 2 or 3",
                    ));
                }
            }
            "norm" => {
                let i: syn::Ident = meta.value()?.parse()?;
                norm = match i.to_string().as_str() {
                    "layer_norm" => true,
                    "none" => false,
                    "batch_norm" => {
                        return Err(Error::new(
                            i.span(),
                            "`batch_norm` in an LPR unit is not supported yet: its running statistics need a training/eval switch; use `layer_norm` or `none`",
                        ));
                    }
                    _ => return Err(Error::new(i.span(), "expected `layer_norm` or `none`")),
                };
            }
            "activation" => {
                let i: syn::Ident = meta.value()?.parse()?;
                if !["none", "gelu", "silu", "relu"].contains(&i.to_string().as_str()) {
                    return Err(Error::new(
                        i.span(),
                        "expected `none`, `gelu`, `silu` or `relu`",
                    ));
                }
                act = i.to_string();
            }
            "no_gradcheck" => skip = true,
            "crate" => krate_opt = Some(meta.value()?.parse()?),
            other => {
                return Err(Error::new(
                    span,
                    format!(
                        "unknown option `{other}` of #[lpr]; options: channels, kernel, rank, norm, activation, no_gradcheck, crate"
                    ),
                ));
            }
        }
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attr)?;
    let channels =
        channels.ok_or_else(|| Error::new(Span::call_site(), "#[lpr] needs `channels = <C>`"))?;
    let krate = krate_opt.map(|p| quote!(#p)).unwrap_or_else(ssm_path);
    let (activation, relu) = match act.as_str() {
        "gelu" => (quote!(Gelu), false),
        "silu" => (quote!(Silu), false),
        "relu" => (quote!(None), true),
        _ => (quote!(None), false),
    };
    let (name, vis, attrs) = (&item.ident, &item.vis, &item.attrs);
    let name_str = name.to_string();
    let test = test_mod(
        name,
        skip,
        quote!(#krate::dsl::check_lpr(#name_str, super::#name::config());),
    );
    Ok(quote! {
        #(#attrs)*
        #[derive(Debug, Clone)]
        #vis struct #name {
            unit: #krate::dsl::Lpr,
        }

        impl #name {
            /// The declaration as a configuration.
            pub fn config() -> #krate::dsl::LprConfig {
                #krate::dsl::LprConfig {
                    channels: #channels,
                    kernel: #kernel,
                    rank: #rank,
                    layer_norm: #norm,
                    activation: #krate::dsl::mixer::Activation::#activation,
                    relu: #relu,
                }
            }

            /// A unit with freshly initialised parameters (deterministic in `seed`).
            pub fn new(device: &#krate::Device, dtype: #krate::DType, seed: u64) -> #krate::Result<Self> {
                Ok(Self { unit: #krate::dsl::Lpr::new(Self::config(), device, dtype, seed)? })
            }

            /// `x + act(norm(dwconv(x)))` on channels-last `(B, *grid, C)`.
            pub fn forward(&self, x: &#krate::Var) -> #krate::Result<#krate::Var> {
                self.unit.forward(x)
            }

            /// Parameters (`proj.weight`, `proj.bias`, `norm.*`).
            pub fn params(&self) -> &#krate::dsl::ParamSet {
                self.unit.params()
            }
        }

        #test
    })
}

/// Expand `#[reverse_attention(mode = bilinear|trilinear|linear, align_corners = false)]`.
pub fn expand_reverse_attention(attr: TokenStream, item: ItemStruct) -> Result<TokenStream> {
    unit_struct(&item)?;
    let (mut rank, mut skip, mut krate_opt) = (None, false, None::<syn::Path>);
    let parser = syn::meta::parser(|meta| {
        let span = meta.path.span();
        let name = meta
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        match name.as_str() {
            "mode" => {
                let i: syn::Ident = meta.value()?.parse()?;
                rank = Some(match i.to_string().as_str() {
                    "linear" => 1usize,
                    "bilinear" => 2,
                    "trilinear" => 3,
                    "nearest" => {
                        return Err(Error::new(
                            i.span(),
                            "reverse attention resizes with a linear mode; `nearest` has no useful gradient for the map; use linear, bilinear or trilinear",
                        ));
                    }
                    _ => {
                        return Err(Error::new(
                            i.span(),
                            "expected `linear`, `bilinear` or `trilinear`",
                        ));
                    }
                });
            }
            "align_corners" => {
                let b: syn::LitBool = meta.value()?.parse()?;
                if b.value {
                    return Err(Error::new(
                        b.span(),
                        "only `align_corners = false` is fused (it is what SRMA-Mamba uses)",
                    ));
                }
            }
            "no_gradcheck" => skip = true,
            "crate" => krate_opt = Some(meta.value()?.parse()?),
            other => {
                return Err(Error::new(
                    span,
                    format!(
                        "unknown option `{other}` of #[reverse_attention]; options: mode, align_corners, no_gradcheck, crate"
                    ),
                ));
            }
        }
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attr)?;
    let rank = rank.ok_or_else(|| {
        Error::new(
            Span::call_site(),
            "#[reverse_attention] needs `mode = bilinear | trilinear | linear`",
        )
    })?;
    let krate = krate_opt.map(|p| quote!(#p)).unwrap_or_else(ssm_path);
    let (name, vis, attrs) = (&item.ident, &item.vis, &item.attrs);
    let name_str = name.to_string();
    let full_rank = rank + 2;
    let test = test_mod(
        name,
        skip,
        quote!(#krate::dsl::check_reverse_attention(#name_str, #rank);),
    );
    Ok(quote! {
        #(#attrs)*
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #name;

        impl #name {
            /// `(1 − σ(resize(m))) ⊙ f`: `m` is `(B, 1, *coarse)`, `f` is `(B, C, *fine)`; the
            /// resize is fused into the kernel (forward gather, transposed gather backward).
            pub fn apply(m: &#krate::Var, f: &#krate::Var) -> #krate::Result<#krate::Var> {
                if f.shape().len() != #full_rank {
                    return Err(#krate::Error::Shape {
                        op: #name_str,
                        msg: format!("declared for {} spatial axes, got f of shape {:?}", #rank, f.shape()),
                    });
                }
                #krate::Var::reverse_attention(m, f)
            }
        }

        #test
    })
}
