//! User mistakes are `Err`s that name the op and the operands, never panics.

use ssm_runtime::testing::device;
use ssm_runtime::{DType, Error, Tensor};

#[test]
fn shape_dtype_and_argument_errors() {
    let d = device();
    let a = Tensor::zeros(&[2, 3], DType::F32, &d).unwrap();
    let b = Tensor::zeros(&[4], DType::F32, &d).unwrap();
    let e = a.add(&b).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "add", .. }), "{e}");
    assert!(
        e.to_string().contains("[2, 3]") && e.to_string().contains("[4]"),
        "{e}"
    );

    let c = Tensor::zeros(&[2, 3], DType::F64, &d).unwrap();
    assert!(matches!(
        a.mul(&c).unwrap_err(),
        Error::DType { op: "mul", .. }
    ));

    let idx = Tensor::from_slice(&[1u32, 2], &[2], &d).unwrap();
    assert!(matches!(idx.exp().unwrap_err(), Error::DType { .. }));
    assert!(matches!(
        a.to_vec::<f64>().unwrap_err(),
        Error::DType { .. }
    ));

    assert!(
        Tensor::from_slice(&[1.0f32, 2.0], &[3], &d)
            .unwrap_err()
            .to_string()
            .contains("2 values")
    );
    assert!(a.reshape(&[5]).unwrap_err().to_string().contains("reshape"));
    assert!(a.permute(&[0, 0]).is_err());
    assert!(
        a.transpose(0, 5)
            .unwrap_err()
            .to_string()
            .contains("axis 5")
    );
    assert!(
        a.narrow(1, 2, 2)
            .unwrap_err()
            .to_string()
            .contains("exceeds")
    );
    assert!(a.expand(&[2, 4]).is_err());
    assert!(a.squeeze(0).is_err());
    assert!(
        a.sum(&[0, 0], false)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
    assert!(a.item().is_err());
    assert!(Tensor::concat(&[], 0).is_err());
    assert!(Tensor::concat(&[&a, &b], 0).is_err());
    assert!(
        a.var(&[0], 2, false)
            .unwrap_err()
            .to_string()
            .contains("degrees of freedom")
    );
    assert!(Tensor::bernoulli(&[2], 1.5, 0, DType::F32, &d).is_err());
    assert!(Tensor::rand_uniform(&[2], 0.0, 1.0, 0, DType::U32, &d).is_err());
}
