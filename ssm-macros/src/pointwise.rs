//! `#[pointwise]`: a function of tensors written as an arithmetic expression becomes one
//! fused forward kernel and one fused backward kernel whose program is the expression's
//! symbolic reverse-mode derivative.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Error, Expr, FnArg, ItemFn, Lit, Pat, Result, Stmt, Type, UnOp};

use crate::graph::{Graph, Node, Op1, Op2};
use crate::krate::ssm_path;

/// Options of `#[pointwise(...)]`.
#[derive(Default)]
pub struct Options {
    /// Skip the generated gradient-check test.
    pub no_gradcheck: bool,
    /// Explicit path to the ssm crate.
    pub krate: Option<syn::Path>,
    /// Range of the generated gradcheck's random inputs.
    pub test_range: Option<(f64, f64)>,
}

impl Options {
    pub fn parse(attr: TokenStream) -> Result<Options> {
        let mut o = Options::default();
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("no_gradcheck") {
                o.no_gradcheck = true;
                Ok(())
            } else if meta.path.is_ident("crate") {
                o.krate = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("test_range") {
                let content;
                syn::parenthesized!(content in meta.input);
                let lo: syn::LitFloat = content.parse()?;
                content.parse::<syn::Token![,]>()?;
                let hi: syn::LitFloat = content.parse()?;
                o.test_range = Some((lo.base10_parse()?, hi.base10_parse()?));
                Ok(())
            } else {
                Err(meta.error("unknown option of #[pointwise]; expected `no_gradcheck`, `crate = path` or `test_range(lo, hi)`"))
            }
        });
        syn::parse::Parser::parse2(parser, attr)?;
        Ok(o)
    }
}

/// Functions a fused expression may call, by name.
fn unary_op(name: &str) -> Option<Op1> {
    Some(match name {
        "exp" => Op1::Exp,
        "log" | "ln" => Op1::Log,
        "sqrt" => Op1::Sqrt,
        "rsqrt" => Op1::Rsqrt,
        "tanh" => Op1::Tanh,
        "sigmoid" => Op1::Sigmoid,
        "silu" => Op1::Silu,
        "softplus" => Op1::Softplus,
        "gelu" => Op1::Gelu,
        "relu" => Op1::Relu,
        "abs" => Op1::Abs,
        "square" => Op1::Square,
        "recip" => Op1::Recip,
        _ => return None,
    })
}

const SUPPORTED: &str = "exp, log, sqrt, rsqrt, tanh, sigmoid, silu, softplus, gelu, relu, abs, square, recip, \
                         pow(x, <number>), and + - * / with numbers, tensor and f64 parameters";

/// Names that exist but have no useful derivative.
const NON_DIFFERENTIABLE: &[&str] = &[
    "floor", "ceil", "round", "trunc", "sign", "signum", "step", "fract", "max", "min", "clamp",
    "argmax", "argmin",
];

enum Param {
    Tensor(u8),
    Scalar(u8),
}

struct Builder {
    graph: Graph,
    names: HashMap<String, usize>,
    params: HashMap<String, Param>,
}

impl Builder {
    fn expr(&mut self, e: &Expr) -> Result<usize> {
        match e {
            Expr::Paren(p) => self.expr(&p.expr),
            Expr::Group(g) => self.expr(&g.expr),
            Expr::Lit(l) => self.number(&l.lit).map(|v| self.graph.constant(v)),
            Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => {
                let a = self.expr(&u.expr)?;
                Ok(self.graph.neg(a))
            }
            Expr::Binary(b) => {
                let op = match b.op {
                    syn::BinOp::Add(_) => Op2::Add,
                    syn::BinOp::Sub(_) => Op2::Sub,
                    syn::BinOp::Mul(_) => Op2::Mul,
                    syn::BinOp::Div(_) => Op2::Div,
                    other => {
                        return Err(Error::new(
                            other.span(),
                            "this operator is not differentiable or not supported in a fused expression; \
                             use + - * / (comparisons, %, and bit operations have no derivative)",
                        ));
                    }
                };
                let l = self.expr(&b.left)?;
                let r = self.expr(&b.right)?;
                Ok(self.graph.binary(op, l, r))
            }
            Expr::Path(p) => {
                let id = p
                    .path
                    .get_ident()
                    .ok_or_else(|| Error::new(p.span(), "expected a parameter or a `let` name"))?;
                let name = id.to_string();
                if let Some(&n) = self.names.get(&name) {
                    return Ok(n);
                }
                match self.params.get(&name) {
                    Some(Param::Tensor(j)) => Ok(self.graph.input(*j)),
                    Some(Param::Scalar(j)) => Ok(self.graph.scalar(*j)),
                    None => Err(Error::new(
                        id.span(),
                        format!(
                            "unknown name `{name}`: use a parameter of the function or a name bound with `let`"
                        ),
                    )),
                }
            }
            Expr::Call(c) => {
                let Expr::Path(f) = &*c.func else {
                    return Err(Error::new(c.func.span(), "expected a function name"));
                };
                let name = f
                    .path
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                let args: Vec<&Expr> = c.args.iter().collect();
                self.call(&name, f.span(), &args)
            }
            Expr::MethodCall(m) => {
                let mut args = vec![&*m.receiver];
                args.extend(m.args.iter());
                self.call(&m.method.to_string(), m.method.span(), &args)
            }
            other => Err(Error::new(
                other.span(),
                format!("unsupported in a fused expression; supported: {SUPPORTED}"),
            )),
        }
    }

    fn call(&mut self, name: &str, span: Span, args: &[&Expr]) -> Result<usize> {
        if NON_DIFFERENTIABLE.contains(&name) {
            return Err(Error::new(
                span,
                format!(
                    "`{name}` is not differentiable, so it cannot appear in a fused expression (its gradient would be zero or undefined); supported: {SUPPORTED}"
                ),
            ));
        }
        if name == "pow" {
            let [base, exp] = args else {
                return Err(Error::new(
                    span,
                    "`pow` takes two arguments: pow(x, <number>)",
                ));
            };
            let Expr::Lit(l) = strip(exp) else {
                return Err(Error::new(
                    exp.span(),
                    "the exponent of `pow` must be a number literal",
                ));
            };
            let p = self.number(&l.lit)?;
            let b = self.expr(base)?;
            return Ok(self.graph.pow(b, p));
        }
        let op = unary_op(name).ok_or_else(|| {
            Error::new(
                span,
                format!("unknown function `{name}`; supported: {SUPPORTED}"),
            )
        })?;
        let [a] = args else {
            return Err(Error::new(span, format!("`{name}` takes one argument")));
        };
        let a = self.expr(a)?;
        Ok(self.graph.unary(op, a))
    }

    fn number(&self, lit: &Lit) -> Result<f64> {
        match lit {
            Lit::Float(f) => f.base10_parse(),
            Lit::Int(i) => i.base10_parse::<i64>().map(|v| v as f64),
            other => Err(Error::new(other.span(), "expected a number")),
        }
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        Expr::Group(g) => strip(&g.expr),
        other => other,
    }
}

fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == name),
        Type::Reference(r) => is_named(&r.elem, name),
        _ => false,
    }
}

fn program_tokens(
    krate: &TokenStream,
    nodes: &[Node],
    outputs: &[usize],
    inputs: u8,
    scalars: u8,
) -> TokenStream {
    let insts = nodes.iter().map(|n| match *n {
        Node::Input(j) => quote!(#krate::runtime::Inst::Input(#j)),
        Node::Scalar(j) => quote!(#krate::runtime::Inst::Scalar(#j)),
        Node::Const(b) => quote!(#krate::runtime::Inst::Const(#b)),
        Node::Pow(a, p) => {
            let a = a as u16;
            quote!(#krate::runtime::Inst::PowConst(#a, #p))
        }
        Node::Un(op, a) => {
            let v = format_ident!("{}", op.variant());
            let a = a as u16;
            quote!(#krate::runtime::Inst::Unary(#krate::runtime::FusedUnary::#v, #a))
        }
        Node::Bin(op, a, b) => {
            let v = format_ident!("{}", op.variant());
            let (a, b) = (a as u16, b as u16);
            quote!(#krate::runtime::Inst::Binary(#krate::runtime::FusedBinary::#v, #a, #b))
        }
    });
    let outs = outputs.iter().map(|&o| o as u16);
    quote!(#krate::runtime::Program { insts: vec![#(#insts),*], outputs: vec![#(#outs),*], inputs: #inputs, scalars: #scalars })
}

/// Expand `#[pointwise]` on `func`.
pub fn expand(opts: Options, func: ItemFn) -> Result<TokenStream> {
    let krate = opts
        .krate
        .as_ref()
        .map(|p| quote!(#p))
        .unwrap_or_else(ssm_path);
    let sig = &func.sig;
    if !sig.generics.params.is_empty() || sig.asyncness.is_some() {
        return Err(Error::new(
            sig.span(),
            "a #[pointwise] function takes no generics and is not async",
        ));
    }
    let mut params = HashMap::new();
    let (mut tensors, mut scalars) = (Vec::new(), Vec::new());
    for arg in &sig.inputs {
        let FnArg::Typed(pt) = arg else {
            return Err(Error::new(
                arg.span(),
                "a #[pointwise] function takes no `self`",
            ));
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return Err(Error::new(pt.pat.span(), "parameters must be plain names"));
        };
        let name = pi.ident.clone();
        if is_named(&pt.ty, "Tensor") || is_named(&pt.ty, "Var") {
            params.insert(name.to_string(), Param::Tensor(tensors.len() as u8));
            tensors.push(name);
        } else if is_named(&pt.ty, "f64") {
            params.insert(name.to_string(), Param::Scalar(scalars.len() as u8));
            scalars.push(name);
        } else {
            return Err(Error::new(
                pt.ty.span(),
                "parameters must be `Tensor` (differentiated) or `f64` (a runtime constant)",
            ));
        }
    }
    if tensors.is_empty() {
        return Err(Error::new(
            sig.inputs.span(),
            "a #[pointwise] function needs at least one `Tensor` parameter",
        ));
    }
    if tensors.len() > 200 || scalars.len() > 200 {
        return Err(Error::new(sig.inputs.span(), "too many parameters"));
    }
    let mut b = Builder {
        graph: Graph::default(),
        names: HashMap::new(),
        params,
    };
    let mut result = None;
    for (i, stmt) in func.block.stmts.iter().enumerate() {
        let last = i + 1 == func.block.stmts.len();
        match stmt {
            Stmt::Local(local) => {
                let Pat::Ident(pi) = &local.pat else {
                    return Err(Error::new(local.pat.span(), "`let` must bind a plain name"));
                };
                let init = local
                    .init
                    .as_ref()
                    .ok_or_else(|| Error::new(local.span(), "`let` needs a value"))?;
                let n = b.expr(&init.expr)?;
                b.names.insert(pi.ident.to_string(), n);
            }
            Stmt::Expr(e, None) if last => result = Some(b.expr(e)?),
            other => {
                return Err(Error::new(
                    other.span(),
                    "the body must be `let` bindings followed by one expression (no `;` after it)",
                ));
            }
        }
    }
    let out = result.ok_or_else(|| {
        Error::new(
            func.block.span(),
            "the body must end with the expression to compute",
        )
    })?;
    let n_in = tensors.len() as u8;
    let n_sc = scalars.len() as u8;
    let (fwd_nodes, fwd_out) = b.graph.lower(&[out]);
    let seed = b.graph.input(n_in);
    let grads = b.graph.gradients(out, seed, n_in);
    let (bwd_nodes, bwd_out) = b.graph.lower(&grads);
    let fwd = program_tokens(&krate, &fwd_nodes, &fwd_out, n_in, n_sc);
    let bwd = program_tokens(&krate, &bwd_nodes, &bwd_out, n_in + 1, n_sc);

    let vis = &func.vis;
    let name = &sig.ident;
    let attrs = &func.attrs;
    let name_str = name.to_string();
    let gen_test = if opts.no_gradcheck {
        quote!()
    } else {
        let test_mod = format_ident!("__ssm_gradcheck_{}", name);
        let (lo, hi) = opts.test_range.unwrap_or((0.3, 1.5));
        let idx = (0..tensors.len()).map(syn::Index::from);
        let scalar_vals = (0..scalars.len()).map(|i| 0.7 + 0.1 * i as f64);
        quote! {
            #[cfg(test)]
            #[allow(non_snake_case)]
            mod #test_mod {
                /// Generated f64 gradient check of the fused expression.
                #[test]
                fn gradcheck() {
                    #krate::dsl::check_pointwise(#name_str, #n_in as usize, (#lo, #hi), |v| super::#name(#(&v[#idx]),*, #(#scalar_vals),*));
                }
            }
        }
    };
    Ok(quote! {
        #(#attrs)*
        #[allow(clippy::too_many_arguments)]
        #vis fn #name(#(#tensors: &#krate::Var,)* #(#scalars: f64,)*) -> #krate::Result<#krate::Var> {
            static PROGRAMS: ::std::sync::OnceLock<(#krate::runtime::Program, #krate::runtime::Program)> = ::std::sync::OnceLock::new();
            let (fwd, bwd) = PROGRAMS.get_or_init(|| (#fwd, #bwd));
            #krate::Var::fused(#name_str, fwd, bwd, &[#(#tensors),*], &[#(#scalars),*])
        }
        #gen_test
    })
}
