//! Tape semantics: accumulation, no_grad, consumption, and freeing of saved state.

use std::sync::Arc;

use ssm_autodiff::{Var, no_grad};
use ssm_runtime::testing::{assert_close, device};
use ssm_runtime::{DType, Tensor};

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64(v, shape, DType::F64, &device()).unwrap()
}

#[test]
fn gradients_accumulate_over_reuse() {
    // y = x·x + 3x  →  dy/dx = 2x + 3
    let x = Var::leaf(t(&[1.0, -2.0, 0.5], &[3]));
    let y = x
        .mul(&x)
        .unwrap()
        .add(&x.mul_scalar(3.0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    assert_close(
        "reuse",
        &g.get(&x).unwrap().to_f64_vec().unwrap(),
        &[5.0, -1.0, 4.0],
        1e-12,
        0.0,
    );
}

#[test]
fn broadcast_gradients_sum_to_operand_shape() {
    let a = Var::leaf(t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]));
    let b = Var::leaf(t(&[10.0, 20.0, 30.0], &[3]));
    let y = a.mul(&b).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    assert_eq!(g.get(&b).unwrap().shape(), &[3]);
    assert_close(
        "db",
        &g.get(&b).unwrap().to_f64_vec().unwrap(),
        &[5.0, 7.0, 9.0],
        1e-12,
        0.0,
    );
    assert_close(
        "da",
        &g.get(&a).unwrap().to_f64_vec().unwrap(),
        &[10.0, 20.0, 30.0, 10.0, 20.0, 30.0],
        1e-12,
        0.0,
    );
}

#[test]
fn no_grad_records_nothing_and_constants_get_no_gradient() {
    let x = Var::leaf(t(&[1.0, 2.0], &[2]));
    let y = no_grad(|| x.exp().unwrap());
    assert!(!y.requires_grad());
    let c = Var::constant(t(&[3.0, 4.0], &[2]));
    let z = x.mul(&c).unwrap().sum_all().unwrap();
    let g = z.backward().unwrap();
    assert!(g.get(&c).is_none());
    assert_eq!(g.len(), 1);
    // A value without any leaf cannot be differentiated.
    assert!(c.sum_all().unwrap().backward().is_err());
}

#[test]
fn backward_consumes_the_graph_and_frees_saved_state() {
    let x = Var::leaf(t(&[1.0, 2.0], &[2]));
    let saved = Arc::new(());
    let probe = saved.clone();
    let y = Var::from_op(
        "probe",
        x.value().mul_scalar(2.0).unwrap(),
        &[&x],
        move |g| {
            let _keep = &probe;
            Ok(vec![Some(g.mul_scalar(2.0)?)])
        },
    );
    let loss = y.sum_all().unwrap();
    assert_eq!(
        Arc::strong_count(&saved),
        2,
        "the closure holds its saved state until backward"
    );
    let g = loss.backward().unwrap();
    assert_close(
        "probe grad",
        &g.get(&x).unwrap().to_f64_vec().unwrap(),
        &[2.0, 2.0],
        0.0,
        0.0,
    );
    assert_eq!(
        Arc::strong_count(&saved),
        1,
        "saved state is freed once its backward ran"
    );
    let again = loss.backward().unwrap_err().to_string();
    assert!(again.contains("already used"), "{again}");
}

#[test]
fn seed_shape_and_scalar_checks() {
    let x = Var::leaf(t(&[1.0, 2.0], &[2]));
    let y = x.exp().unwrap();
    assert!(
        y.backward()
            .unwrap_err()
            .to_string()
            .contains("one-element")
    );
    let wrong = t(&[1.0], &[1]);
    assert!(y.backward_with(&wrong).is_err());
    let seed = t(&[1.0, 0.5], &[2]);
    let g = y.backward_with(&seed).unwrap();
    let e = [1f64.exp(), 0.5 * 2f64.exp()];
    assert_close(
        "seeded",
        &g.get(&x).unwrap().to_f64_vec().unwrap(),
        &e,
        1e-12,
        0.0,
    );
}

#[test]
fn micro_batch_accumulation_equals_full_batch() {
    let w = Var::leaf(t(&[0.5, -1.0, 2.0], &[3, 1]));
    let data = t(
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.5, 2.5, 3.5],
        &[4, 3],
    );
    let loss = |x: &Tensor| {
        Var::constant(x.clone())
            .matmul(&w)
            .unwrap()
            .square()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let full = loss(&data).backward().unwrap();
    let mut acc = loss(&data.narrow(0, 0, 2).unwrap()).backward().unwrap();
    acc.accumulate(loss(&data.narrow(0, 2, 2).unwrap()).backward().unwrap())
        .unwrap();
    assert_close(
        "accumulated",
        &acc.get(&w).unwrap().to_f64_vec().unwrap(),
        &full.get(&w).unwrap().to_f64_vec().unwrap(),
        1e-12,
        1e-12,
    );
}
