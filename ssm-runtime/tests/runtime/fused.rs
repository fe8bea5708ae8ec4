//! Fused programs against host evaluation: broadcasting, several outputs, every op, and
//! exactly one kernel launch per program.

use ssm_runtime::testing::assert_close;
use ssm_runtime::{
    DType, FusedBinary as B, FusedUnary as U, Inst, Program, launch_count, run_fused,
};

use crate::{FLOATS, broadcast_index, rng, rounded, upload};

fn c(v: f64) -> Inst {
    Inst::Const(v.to_bits())
}

fn host(prog: &Program, ins: &[f64], scalars: &[f64]) -> Vec<f64> {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let phi = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = |x: f64| 0.5 * (1.0 + libm::erf(x / 2f64.sqrt()));
    let mut r: Vec<f64> = Vec::new();
    for inst in &prog.insts {
        let v = match *inst {
            Inst::Input(j) => ins[j as usize],
            Inst::Scalar(j) => scalars[j as usize],
            Inst::Const(b) => f64::from_bits(b),
            Inst::PowConst(a, p) => r[a as usize].powf(f64::from_bits(p)),
            Inst::Binary(op, a, b) => {
                let (x, y) = (r[a as usize], r[b as usize]);
                match op {
                    B::Add => x + y,
                    B::Sub => x - y,
                    B::Mul => x * y,
                    B::Div => x / y,
                }
            }
            Inst::Unary(op, a) => {
                let x = r[a as usize];
                match op {
                    U::Neg => -x,
                    U::Exp => x.exp(),
                    U::Log => x.ln(),
                    U::Sqrt => x.sqrt(),
                    U::Rsqrt => 1.0 / x.sqrt(),
                    U::Tanh => x.tanh(),
                    U::Sigmoid => sig(x),
                    U::Silu => x * sig(x),
                    U::Softplus => {
                        if x > 20.0 {
                            x
                        } else {
                            x.exp().ln_1p()
                        }
                    }
                    U::SoftplusGrad => {
                        if x > 20.0 {
                            1.0
                        } else {
                            sig(x)
                        }
                    }
                    U::Gelu => x * cdf(x),
                    U::GeluGrad => cdf(x) + x * phi(x),
                    U::Relu => x.max(0.0),
                    U::Step => {
                        if x <= 0.0 {
                            0.0
                        } else {
                            1.0
                        }
                    }
                    U::Abs => x.abs(),
                    U::Sign => x.signum(),
                    U::Square => x * x,
                    U::Recip => 1.0 / x,
                }
            }
        };
        r.push(v);
    }
    prog.outputs.iter().map(|&o| r[o as usize]).collect()
}

#[test]
fn fused_relu_keeps_nan_like_pytorch() {
    // relu and its derivative (Step): a NaN input stays NaN and passes its gradient on.
    let prog = Program {
        insts: vec![
            Inst::Input(0),
            Inst::Unary(U::Relu, 0),
            Inst::Unary(U::Step, 0),
        ],
        outputs: vec![1, 2],
        inputs: 1,
        scalars: 0,
    };
    for (dtype, _, _) in FLOATS {
        let x = upload(&[f64::NAN, -1.5, 0.0, 2.0], &[4], dtype);
        let y = run_fused(&prog, &[&x], &[]).unwrap();
        for (i, (what, want)) in [
            ("relu", [f64::NAN, 0.0, 0.0, 2.0]),
            ("step", [1.0, 0.0, 0.0, 1.0]),
        ]
        .iter()
        .enumerate()
        {
            assert_close(
                &format!("{what} {dtype}"),
                &y[i].to_f64_vec().unwrap(),
                want,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn fused_programs_match_host_with_broadcasting_in_one_launch() {
    let mut r = rng(71);
    // Every unary op applied to a positive shifted input, summed, plus broadcast inputs and
    // a runtime scalar; three outputs.
    let unaries = [
        U::Neg,
        U::Exp,
        U::Log,
        U::Sqrt,
        U::Rsqrt,
        U::Tanh,
        U::Sigmoid,
        U::Silu,
        U::Softplus,
        U::SoftplusGrad,
        U::Gelu,
        U::GeluGrad,
        U::Relu,
        U::Step,
        U::Abs,
        U::Sign,
        U::Square,
        U::Recip,
    ];
    let mut insts = vec![Inst::Input(0), Inst::Input(1), Inst::Scalar(0), c(0.25)];
    // x' = x·x + 0.25 > 0
    insts.push(Inst::Binary(B::Mul, 0, 0));
    insts.push(Inst::Binary(B::Add, 4, 3));
    let base = insts.len() as u16 - 1;
    let mut acc = None;
    for op in unaries {
        insts.push(Inst::Unary(op, base));
        let u = insts.len() as u16 - 1;
        acc = Some(match acc {
            None => u,
            Some(a) => {
                insts.push(Inst::Binary(B::Add, a, u));
                insts.len() as u16 - 1
            }
        });
    }
    let sum = acc.unwrap();
    insts.push(Inst::Binary(B::Mul, 1, 2)); // y · s
    let ys = insts.len() as u16 - 1;
    insts.push(Inst::Binary(B::Div, ys, base)); // y·s / x'
    let q = insts.len() as u16 - 1;
    insts.push(Inst::PowConst(base, 1.5f64.to_bits()));
    let p = insts.len() as u16 - 1;
    insts.push(Inst::Binary(B::Sub, q, p));
    let last = insts.len() as u16 - 1;
    let prog = Program {
        insts,
        outputs: vec![sum, last, ys],
        inputs: 2,
        scalars: 1,
    };

    for (dtype, rtol, atol) in FLOATS {
        let (sa, sb) = (vec![3usize, 4, 5], vec![4usize, 1]);
        let a_raw = r.nonzero(60, 0.1, 2.0);
        let b_raw = r.vec(4, -1.0, 1.0);
        let (a, b) = (upload(&a_raw, &sa, dtype), upload(&b_raw, &sb, dtype));
        let (ar, br) = (rounded(&a_raw, dtype), rounded(&b_raw, dtype));
        let s = -0.75;
        let before = launch_count();
        let outs = run_fused(&prog, &[&a, &b], &[s]).unwrap();
        assert_eq!(
            launch_count() - before,
            1,
            "a fused program is one kernel launch"
        );
        for (k, out) in outs.iter().enumerate() {
            assert_eq!(out.shape(), &[3, 4, 5]);
            let want: Vec<f64> = (0..60)
                .map(|i| host(&prog, &[ar[i], br[broadcast_index(i, &sa, &sb)]], &[s])[k])
                .collect();
            let tol = if dtype == DType::F32 {
                rtol * 10.0
            } else {
                rtol
            };
            assert_close(
                &format!("fused output {k} {dtype}"),
                &out.to_f64_vec().unwrap(),
                &want,
                tol,
                atol * 10.0,
            );
        }
    }
}

#[test]
fn invalid_programs_are_rejected() {
    let a = upload(&[1.0, 2.0], &[2], DType::F32);
    let bad = Program {
        insts: vec![Inst::Input(0), Inst::Binary(B::Add, 0, 5)],
        outputs: vec![1],
        inputs: 1,
        scalars: 0,
    };
    assert!(
        run_fused(&bad, &[&a], &[])
            .unwrap_err()
            .to_string()
            .contains("refers outside")
    );
    let good = Program {
        insts: vec![Inst::Input(0)],
        outputs: vec![0],
        inputs: 1,
        scalars: 0,
    };
    assert!(
        run_fused(&good, &[&a, &a], &[])
            .unwrap_err()
            .to_string()
            .contains("takes 1 tensors")
    );
}
