use ssm_runtime::testing::{assert_close, device};
use ssm_runtime::{DType, Tensor};

use crate::{host_view, rng, rounded, upload};

#[test]
fn creation_and_readback_round_trip() {
    let d = device();
    let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25], &[3], &d).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.5, -2.0, 3.25]);
    let t = Tensor::from_slice(&[1.0f64 / 3.0, 2.0], &[2, 1], &d).unwrap();
    assert_eq!(t.to_vec::<f64>().unwrap(), vec![1.0 / 3.0, 2.0]);
    let t = Tensor::from_slice(&[7u32, 0, 4_000_000_000], &[3], &d).unwrap();
    assert_eq!(t.to_vec::<u32>().unwrap(), vec![7, 0, 4_000_000_000]);
    for dtype in [DType::F32, DType::F64] {
        assert_eq!(
            Tensor::zeros(&[2, 3], dtype, &d)
                .unwrap()
                .to_f64_vec()
                .unwrap(),
            vec![0.0; 6]
        );
        assert_eq!(
            Tensor::ones(&[5], dtype, &d).unwrap().to_f64_vec().unwrap(),
            vec![1.0; 5]
        );
        assert_eq!(
            Tensor::full(&[2, 2], -0.5, dtype, &d)
                .unwrap()
                .to_f64_vec()
                .unwrap(),
            vec![-0.5; 4]
        );
        assert_eq!(Tensor::scalar(2.5, dtype, &d).unwrap().item().unwrap(), 2.5);
    }
    // Empty tensors exist and read back as empty.
    let e = Tensor::zeros(&[0, 3], DType::F32, &d).unwrap();
    assert_eq!(e.numel(), 0);
    assert!(e.to_f64_vec().unwrap().is_empty());
}

#[test]
fn permute_narrow_expand_and_contiguous_read_the_right_elements() {
    let mut r = rng(11);
    for dtype in [DType::F32, DType::F64] {
        let raw = r.vec(2 * 3 * 4 * 5, -1.0, 1.0);
        let x = upload(&raw, &[2, 3, 4, 5], dtype);
        let xr = rounded(&raw, dtype);

        let p = x.permute(&[2, 0, 3, 1]).unwrap();
        assert_eq!(p.shape(), &[4, 2, 5, 3]);
        assert!(!p.is_contiguous());
        let want = host_view(&xr, &[4, 2, 5, 3], &[5, 60, 1, 20], 0);
        assert_close(
            "permute",
            &p.contiguous().unwrap().to_f64_vec().unwrap(),
            &want,
            0.0,
            0.0,
        );
        assert_close("permute read", &p.to_f64_vec().unwrap(), &want, 0.0, 0.0);

        let n = x.narrow(1, 1, 2).unwrap().narrow(3, 2, 3).unwrap();
        let want = host_view(&xr, &[2, 2, 4, 3], &[60, 20, 5, 1], 20 + 2);
        assert_close("narrow", &n.to_f64_vec().unwrap(), &want, 0.0, 0.0);

        let s = x.select(2, 3).unwrap();
        assert_eq!(s.shape(), &[2, 3, 5]);
        let want = host_view(&xr, &[2, 3, 5], &[60, 20, 1], 15);
        assert_close("select", &s.to_f64_vec().unwrap(), &want, 0.0, 0.0);

        let v = upload(&raw[..3], &[3, 1], dtype);
        let e = v.expand(&[2, 3, 4]).unwrap();
        let want = host_view(&rounded(&raw[..3], dtype), &[2, 3, 4], &[0, 1, 0], 0);
        assert_close("expand", &e.to_f64_vec().unwrap(), &want, 0.0, 0.0);

        let t = x.transpose(-1, 0).unwrap();
        assert_eq!(t.shape(), &[5, 3, 4, 2]);
        let u = t.unsqueeze(2).unwrap().squeeze(2).unwrap();
        assert_eq!(u.shape(), t.shape());
        // reshape of a non-contiguous view copies, keeping row-major order of the view.
        let rs = t.reshape(&[15, 8]).unwrap();
        assert_close(
            "reshape",
            &rs.to_f64_vec().unwrap(),
            &t.to_f64_vec().unwrap(),
            0.0,
            0.0,
        );
    }
}

/// Views whose axes form two swapped runs (NCDHW ↔ NDHWC, `[B, D, L]` ↔ `[B, L, D]`) copy
/// through shared-memory tiles; sides that are not multiples of the tile, a batch, a source
/// offset and a destination offset (`assign` into a narrowed tensor) all land exactly.
#[test]
fn swapped_axis_runs_copy_exactly() {
    let d = device();
    let mut r = rng(14);
    let mut dtypes = vec![DType::F32, DType::F64];
    if d.has_bf16() {
        dtypes.push(DType::BF16);
    }
    for dtype in dtypes {
        // (shape, permutation): channels to last and back, a plain 2-D transpose, one with a
        // size-1 axis inside a run; sides that are multiples of 4 and odd ones.
        let cases: [(&[usize], &[usize]); 8] = [
            (&[2, 40, 5, 6, 7], &[0, 2, 3, 4, 1]),
            (&[2, 5, 6, 7, 40], &[0, 4, 1, 2, 3]),
            (&[2, 48, 4, 6, 8], &[0, 2, 3, 4, 1]),
            (&[2, 4, 6, 8, 48], &[0, 4, 1, 2, 3]),
            (&[3, 37, 70], &[0, 2, 1]),
            (&[33, 1, 65], &[2, 1, 0]),
            // Several tiles each way, both sides ending in partial tiles.
            (&[2, 130, 67], &[0, 2, 1]),
            (&[2, 136, 72], &[0, 2, 1]),
        ];
        for (shape, perm) in cases {
            let n: usize = shape.iter().product();
            // One extra leading block, narrowed away: the view starts at an offset.
            let mut padded = shape.to_vec();
            padded[0] += 1;
            let raw = r.vec(n + n / shape[0], -1.0, 1.0);
            let x = upload(&raw, &padded, dtype).narrow(0, 1, shape[0]).unwrap();
            let p = x.permute(perm).unwrap();
            let xr = rounded(&raw, dtype);
            let strides: Vec<usize> = (0..padded.len())
                .map(|a| padded[a + 1..].iter().product())
                .collect();
            let view_strides: Vec<usize> = perm.iter().map(|&a| strides[a]).collect();
            let want = host_view(&xr, p.shape(), &view_strides, strides[0]);
            let what = format!("{dtype} {shape:?} permuted {perm:?}");
            assert_close(
                &what,
                &p.contiguous().unwrap().to_f64_vec().unwrap(),
                &want,
                0.0,
                0.0,
            );
            // Into the second half of a larger tensor, first half untouched.
            let mut dst_shape = p.shape().to_vec();
            dst_shape[0] *= 2;
            let dst = Tensor::full(&dst_shape, 7.0, dtype, &d).unwrap();
            let half = p.shape()[0];
            dst.narrow(0, half, half).unwrap().assign(&p).unwrap();
            let got = dst.to_f64_vec().unwrap();
            assert!(
                got[..n].iter().all(|&v| v == 7.0),
                "{what}: assign wrote outside its view"
            );
            assert_close(&format!("{what} assigned"), &got[n..], &want, 0.0, 0.0);
        }
    }
}

#[test]
fn concat_and_assign() {
    let mut r = rng(12);
    for dtype in [DType::F32, DType::F64] {
        let a_raw = r.vec(2 * 3, -1.0, 1.0);
        let b_raw = r.vec(2 * 4, -1.0, 1.0);
        let a = upload(&a_raw, &[2, 3], dtype);
        let b = upload(&b_raw, &[2, 4], dtype);
        let c = Tensor::concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.shape(), &[2, 7]);
        let (ar, br) = (rounded(&a_raw, dtype), rounded(&b_raw, dtype));
        let want: Vec<f64> = (0..2)
            .flat_map(|i| {
                ar[i * 3..i * 3 + 3]
                    .iter()
                    .chain(&br[i * 4..i * 4 + 4])
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_close("concat", &c.to_f64_vec().unwrap(), &want, 0.0, 0.0);
        // Concat of transposed views along axis 0.
        let ct = Tensor::concat(
            &[&a.transpose(0, 1).unwrap(), &b.transpose(0, 1).unwrap()],
            0,
        )
        .unwrap();
        assert_close(
            "concat^T",
            &ct.to_f64_vec().unwrap(),
            &c.transpose(0, 1).unwrap().to_f64_vec().unwrap(),
            0.0,
            0.0,
        );

        // assign into a strided window of a fresh tensor.
        let z = Tensor::zeros(&[4, 5], dtype, &device()).unwrap();
        z.narrow(0, 1, 2)
            .unwrap()
            .narrow(1, 1, 3)
            .unwrap()
            .assign(&a)
            .unwrap();
        let got = z.to_f64_vec().unwrap();
        for i in 0..4 {
            for j in 0..5 {
                let want = if (1..3).contains(&i) && (1..4).contains(&j) {
                    ar[(i - 1) * 3 + j - 1]
                } else {
                    0.0
                };
                assert_eq!(got[i * 5 + j], want, "assign at ({i},{j})");
            }
        }
    }
}
