//! The selective scan on the tape.

use ssm_runtime::Result;
use ssm_runtime::scan::{
    ScanInputs, ScanOptions, ScanSpec, selective_scan_bwd, selective_scan_fwd,
};

use crate::var::Var;

/// The inputs of [`selective_scan`] as variables (shapes as in
/// [`ssm_runtime::scan::ScanInputs`]).
#[derive(Debug, Clone, Copy)]
pub struct ScanVars<'a> {
    /// `(B, Di, L)`.
    pub u: &'a Var,
    /// `(B, Di, L)` or `(B, K, Di, L)`, before softplus.
    pub delta: &'a Var,
    /// `(K, Di, N)`.
    pub a: &'a Var,
    /// `(B, K, G, N, L)`.
    pub b: &'a Var,
    /// `(B, K, G, N, L)`.
    pub c: &'a Var,
    /// `(K, Di)`.
    pub d: &'a Var,
    /// `(K, Di)`.
    pub delta_bias: &'a Var,
    /// Optional gate `(B, Di, L)`.
    pub z: Option<&'a Var>,
}

/// Fused selective scan along every path of `spec`, merged (and gated), as one op on the
/// tape. Its backward runs the fused backward kernels and returns gradients for every
/// input. Shape, dtype and device mistakes are errors naming the input.
pub fn selective_scan(x: ScanVars, spec: &ScanSpec) -> Result<Var> {
    selective_scan_with(x, spec, &ScanOptions::default())
}

/// [`selective_scan`] with explicit kernel options.
pub fn selective_scan_with(x: ScanVars, spec: &ScanSpec, opts: &ScanOptions) -> Result<Var> {
    let t = |v: &Var| v.value().clone();
    let (u, delta, a, b, c, d, bias) = (
        t(x.u),
        t(x.delta),
        t(x.a),
        t(x.b),
        t(x.c),
        t(x.d),
        t(x.delta_bias),
    );
    let z = x.z.map(t);
    let inputs = ScanInputs {
        u: &u,
        delta: &delta,
        a: &a,
        b: &b,
        c: &c,
        d: &d,
        delta_bias: &bias,
        z: z.as_ref(),
    };
    let (out, saved) = selective_scan_fwd(&inputs, spec, opts)?;
    let mut vars = vec![x.u, x.delta, x.a, x.b, x.c, x.d, x.delta_bias];
    if let Some(zv) = x.z {
        vars.push(zv);
    }
    let spec = spec.clone();
    Ok(Var::from_op("selective_scan", out, &vars, move |g| {
        let inputs = ScanInputs {
            u: &u,
            delta: &delta,
            a: &a,
            b: &b,
            c: &c,
            d: &d,
            delta_bias: &bias,
            z: z.as_ref(),
        };
        let gr = selective_scan_bwd(&inputs, &spec, &saved, g)?;
        let mut out = vec![
            Some(gr.u),
            Some(gr.delta),
            Some(gr.a),
            Some(gr.b),
            Some(gr.c),
            Some(gr.d),
            Some(gr.delta_bias),
        ];
        if z.is_some() {
            out.push(gr.z);
        }
        Ok(out)
    }))
}
