//! One f64 gradient check per op (and per broadcasting pattern for binary ops).

use ssm_autodiff::{GradcheckOptions, Var, gradcheck};
use ssm_runtime::Tensor;
use ssm_runtime::testing::HostRng;

use crate::{rand, rand_nonzero};

fn check(what: &str, f: impl Fn(&[Var]) -> ssm_runtime::Result<Var>, inputs: Vec<Tensor>) {
    let report = gradcheck(f, &inputs, &GradcheckOptions::default()).unwrap();
    report.assert_passed(what);
}

fn rng(salt: u64) -> HostRng {
    HostRng::new(0xad ^ salt)
}

#[test]
fn unary_ops() {
    let mut r = rng(1);
    let shape = [3, 4];
    type U = fn(&Var) -> ssm_runtime::Result<Var>;
    let general: [(&str, U); 15] = [
        ("exp", |x| x.exp()),
        ("tanh", |x| x.tanh()),
        ("sigmoid", |x| x.sigmoid()),
        ("silu", |x| x.silu()),
        ("softplus", |x| x.softplus()),
        ("gelu", |x| x.gelu()),
        ("neg", |x| x.neg()),
        ("square", |x| x.square()),
        ("abs", |x| x.abs()),
        ("relu", |x| x.relu()),
        ("recip", |x| x.recip()),
        ("add_scalar", |x| x.add_scalar(0.7)),
        ("mul_scalar", |x| x.mul_scalar(-1.3)),
        ("rsub_scalar", |x| x.rsub_scalar(2.0)),
        ("rdiv_scalar", |x| x.rdiv_scalar(1.5)),
    ];
    for (name, f) in general {
        // Away from 0 so abs/relu/recip are smooth at every sample.
        let x = rand_nonzero(&mut r, &shape, 0.2, 2.0);
        check(name, |v| f(&v[0]), vec![x]);
    }
    let positive: [(&str, U); 4] = [
        ("log", |x| x.log()),
        ("sqrt", |x| x.sqrt()),
        ("rsqrt", |x| x.rsqrt()),
        ("pow_scalar", |x| x.pow_scalar(2.3)),
    ];
    for (name, f) in positive {
        let x = rand(&mut r, &shape, 0.3, 2.5);
        check(name, |v| f(&v[0]), vec![x]);
    }
    // Clamps: keep samples away from the threshold.
    let x = rand_nonzero(&mut r, &shape, 0.3, 2.0);
    check("max_scalar", |v| v[0].max_scalar(0.0), vec![x.clone()]);
    check("min_scalar", |v| v[0].min_scalar(0.0), vec![x]);
    // softplus above its threshold passes x through.
    let x = rand(&mut r, &shape, 21.0, 25.0);
    check("softplus>20", |v| v[0].softplus(), vec![x]);
}

#[test]
fn binary_ops_with_broadcasting() {
    let mut r = rng(2);
    let patterns: [(&[usize], &[usize]); 4] = [
        (&[3, 4], &[3, 4]),
        (&[2, 3, 4], &[4]),
        (&[3, 1], &[1, 5]),
        (&[2, 3], &[]),
    ];
    type B = fn(&Var, &Var) -> ssm_runtime::Result<Var>;
    let ops: [(&str, B); 6] = [
        ("add", |a, b| a.add(b)),
        ("sub", |a, b| a.sub(b)),
        ("mul", |a, b| a.mul(b)),
        ("div", |a, b| a.div(b)),
        ("maximum", |a, b| a.maximum(b)),
        ("minimum", |a, b| a.minimum(b)),
    ];
    for (sa, sb) in patterns {
        for (name, f) in ops {
            let a = rand_nonzero(&mut r, sa, 0.3, 2.0);
            let b = rand_nonzero(&mut r, sb, 0.3, 2.0);
            check(
                &format!("{name} {sa:?} {sb:?}"),
                |v| f(&v[0], &v[1]),
                vec![a, b],
            );
        }
        let a = rand(&mut r, sa, 0.5, 2.0);
        let b = rand(&mut r, sb, -1.5, 1.5);
        check(
            &format!("pow {sa:?} {sb:?}"),
            |v| v[0].pow(&v[1]),
            vec![a, b],
        );
    }
}

#[test]
fn where_routes_gradients() {
    let mut r = rng(3);
    let d = ssm_runtime::testing::device();
    let mask: Vec<f64> = (0..12).map(|i| (i % 3 == 0) as u8 as f64).collect();
    let cond = Tensor::from_f64(&mask, &[3, 4], ssm_runtime::DType::F64, &d).unwrap();
    let a = rand(&mut r, &[3, 4], -1.0, 1.0);
    let b = rand(&mut r, &[4], -1.0, 1.0);
    check(
        "where",
        |v| Var::where_cond(&cond, &v[0], &v[1]),
        vec![a, b],
    );
}

#[test]
fn reductions() {
    let mut r = rng(4);
    let shape = [2, 3, 4];
    let x = rand(&mut r, &shape, -1.0, 1.0);
    for axes in [&[][..], &[0][..], &[2][..], &[0, 2][..], &[-1, -2][..]] {
        for keep in [false, true] {
            check(
                &format!("sum {axes:?} {keep}"),
                |v| v[0].sum(axes, keep),
                vec![x.clone()],
            );
            check(
                &format!("mean {axes:?} {keep}"),
                |v| v[0].mean(axes, keep),
                vec![x.clone()],
            );
            check(
                &format!("max {axes:?} {keep}"),
                |v| v[0].max(axes, keep),
                vec![x.clone()],
            );
            check(
                &format!("min {axes:?} {keep}"),
                |v| v[0].min(axes, keep),
                vec![x.clone()],
            );
            check(
                &format!("var {axes:?} {keep}"),
                |v| v[0].var(axes, 1, keep),
                vec![x.clone()],
            );
        }
    }
    check("var population", |v| v[0].var(&[1], 0, false), vec![x]);
}

#[test]
fn layout_ops() {
    let mut r = rng(5);
    let x = rand(&mut r, &[2, 3, 4], -1.0, 1.0);
    check("reshape", |v| v[0].reshape(&[4, 6]), vec![x.clone()]);
    check("permute", |v| v[0].permute(&[2, 0, 1]), vec![x.clone()]);
    check("transpose", |v| v[0].transpose(0, 2), vec![x.clone()]);
    check("narrow", |v| v[0].narrow(2, 1, 2), vec![x.clone()]);
    check("select", |v| v[0].select(1, 2), vec![x.clone()]);
    check(
        "unsqueeze+expand",
        |v| v[0].unsqueeze(0)?.expand(&[3, 2, 3, 4]),
        vec![x.clone()],
    );
    check(
        "squeeze",
        |v| v[0].narrow(1, 1, 1)?.squeeze(1),
        vec![x.clone()],
    );
    check(
        "contiguous",
        |v| v[0].permute(&[1, 2, 0])?.contiguous(),
        vec![x.clone()],
    );
    let y = rand(&mut r, &[2, 5, 4], -1.0, 1.0);
    check("concat", |v| Var::concat(&[&v[0], &v[1]], 1), vec![x, y]);
}

#[test]
fn matmul_with_transposes_and_broadcast() {
    let mut r = rng(6);
    let a = rand(&mut r, &[2, 3, 5], -1.0, 1.0);
    let b = rand(&mut r, &[5, 4], -1.0, 1.0);
    check(
        "matmul batch-broadcast",
        |v| v[0].matmul(&v[1]),
        vec![a.clone(), b],
    );
    let bt = rand(&mut r, &[2, 4, 5], -1.0, 1.0);
    check(
        "matmul with transposed rhs",
        |v| v[0].matmul(&v[1].transpose(-1, -2)?),
        vec![a, bt],
    );
}

#[test]
fn composite_expression() {
    // A small network-like expression exercises accumulation across many ops.
    let mut r = rng(7);
    let x = rand(&mut r, &[4, 3], -1.0, 1.0);
    let w = rand(&mut r, &[3, 5], -1.0, 1.0);
    let b = rand(&mut r, &[5], -0.5, 0.5);
    check(
        "mlp",
        |v| {
            let h = v[0].matmul(&v[1])?.add(&v[2])?.gelu()?;
            let s = h.mul(&h.sigmoid()?)?.sum(&[1], false)?;
            s.mul(&v[0].sum(&[1], false)?)?.mean(&[], false)
        },
        vec![x, w, b],
    );
}

#[test]
fn gradcheck_catches_a_wrong_derivative() {
    // d/dx x³ is 3x², not 2.9x²: both the projected and the elementwise checks must notice.
    let mut r = rng(8);
    let x = rand(&mut r, &[5], 0.5, 1.5);
    let cube = |v: &[Var]| -> ssm_runtime::Result<Var> {
        let x = v[0].value().clone();
        let y = x.pow_scalar(3.0)?;
        Ok(Var::from_op("bad_cube", y, &[&v[0]], move |g| {
            Ok(vec![Some(g.mul(&x.square()?.mul_scalar(2.9)?)?)])
        }))
    };
    let report = gradcheck(cube, &[x], &GradcheckOptions::default()).unwrap();
    assert!(!report.passed());
    assert_eq!(
        report.failures.len(),
        report.comparisons,
        "every comparison should fail: {report:?}"
    );
}
