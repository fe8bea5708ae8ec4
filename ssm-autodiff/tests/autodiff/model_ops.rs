//! f64 gradient checks of the model ops: convolution (direct and implicit-GEMM paths,
//! both layouts), normalisations, softmax, pooling, resizing, attention (fused and plain),
//! dropout / drop-path, pixel shuffle, and the losses.

use ssm_autodiff::loss::{
    CeTarget, DiceActivation, DiceOptions, bce_with_logits, bce_with_logits_pos_weight,
    cross_entropy, cross_entropy_weighted, dice_ce_loss, dice_ce_loss_weighted, dice_loss,
    dice_loss_weighted, masked_l1, masked_mse,
};
use ssm_autodiff::{GradcheckOptions, Var, gradcheck};
use ssm_runtime::testing::{HostRng, device};
use ssm_runtime::{ConvSpec, DType, Layout, Padding, PoolSpec, ResizeMode, ResizeTo, Tensor};

use crate::{rand, rand_nonzero};

fn check(what: &str, f: impl Fn(&[Var]) -> ssm_runtime::Result<Var>, inputs: Vec<Tensor>) {
    let report = gradcheck(f, &inputs, &GradcheckOptions::default()).unwrap();
    report.assert_passed(what);
}

fn rng(salt: u64) -> HostRng {
    HostRng::new(0x70_de1 ^ salt)
}

fn shape_in(layout: Layout, n: usize, c: usize, sp: &[usize]) -> Vec<usize> {
    layout.shape(n, c, sp)
}

#[test]
fn conv_gradients() {
    let mut r = rng(1);
    // (name, c_in, c_out, spatial, kernel, spec)
    type Case = (&'static str, usize, usize, Vec<usize>, Vec<usize>, ConvSpec);
    let cases: Vec<Case> = vec![
        (
            "1d causal depthwise",
            3,
            3,
            vec![7],
            vec![4],
            ConvSpec::new().causal().groups(3),
        ),
        (
            "2d dense same (gemm)",
            8,
            8,
            vec![4, 3],
            vec![3, 3],
            ConvSpec::new().same(),
        ),
        (
            "2d depthwise 7x7 s2",
            2,
            2,
            vec![9, 8],
            vec![7, 7],
            ConvSpec::new().stride(&[2]).pad(&[3]).groups(2),
        ),
        (
            "3d dense s2 (gemm)",
            8,
            9,
            vec![4, 3, 5],
            vec![3, 3, 3],
            ConvSpec::new().stride(&[2]).pad(&[1]),
        ),
        (
            "2d grouped dilated",
            4,
            6,
            vec![6, 5],
            vec![2, 3],
            ConvSpec::new()
                .groups(2)
                .dilation(&[2, 1])
                .padding(Padding::Asymmetric(vec![(1, 0), (1, 1)])),
        ),
    ];
    for (name, ci, co, sp, k, spec) in cases {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let spec = spec.clone().layout(layout);
            let x = rand(&mut r, &shape_in(layout, 2, ci, &sp), -1.0, 1.0);
            let w_shape = [&[co, ci / spec.groups][..], &k].concat();
            let w = rand(&mut r, &w_shape, -0.5, 0.5);
            let b = rand(&mut r, &[co], -0.5, 0.5);
            let s2 = spec.clone();
            check(
                &format!("conv {name} {layout:?}"),
                move |v| v[0].conv(&v[1], Some(&v[2]), &s2),
                vec![x, w, b],
            );
        }
    }
}

#[test]
fn norm_gradients() {
    let mut r = rng(2);
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let x = rand(&mut r, &shape_in(layout, 2, 4, &[3, 2]), -2.0, 2.0);
        let w = rand(&mut r, &[4], 0.5, 1.5);
        let b = rand(&mut r, &[4], -0.5, 0.5);
        check(
            &format!("layer_norm {layout:?}"),
            move |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5, layout),
            vec![x.clone(), w.clone(), b.clone()],
        );
        check(
            &format!("instance_norm {layout:?}"),
            move |v| v[0].instance_norm(1e-5, layout),
            vec![x.clone()],
        );
        check(
            &format!("group_norm {layout:?}"),
            move |v| v[0].group_norm(2, Some(&v[1]), Some(&v[2]), 1e-5, layout),
            vec![x.clone(), w.clone(), b.clone()],
        );
        let d = device();
        let rm = Tensor::zeros(&[4], DType::F64, &d).unwrap();
        let rv = Tensor::ones(&[4], DType::F64, &d).unwrap();
        let (rm2, rv2) = (rm.clone(), rv.clone());
        check(
            &format!("batch_norm train {layout:?}"),
            move |v| {
                v[0].batch_norm(
                    Some(&v[1]),
                    Some(&v[2]),
                    &rm2,
                    &rv2,
                    true,
                    0.1,
                    1e-5,
                    layout,
                )
            },
            vec![x.clone(), w.clone(), b.clone()],
        );
        check(
            &format!("batch_norm eval {layout:?}"),
            move |v| v[0].batch_norm(Some(&v[1]), Some(&v[2]), &rm, &rv, false, 0.1, 1e-5, layout),
            vec![x, w, b],
        );
    }
    // Large groups: the chunked statistics path (2 groups of 4800).
    let x = rand(&mut r, &[1, 2, 20, 20, 12], -1.0, 1.0);
    check(
        "instance_norm chunked",
        |v| v[0].instance_norm(1e-5, Layout::ChannelsFirst),
        vec![x],
    );
}

#[test]
fn softmax_pool_resize_gradients() {
    let mut r = rng(3);
    let x = rand(&mut r, &[3, 4, 5], -2.0, 2.0);
    for axis in [0isize, 1, 2] {
        check(
            &format!("softmax {axis}"),
            move |v| v[0].softmax(axis),
            vec![x.clone()],
        );
        check(
            &format!("log_softmax {axis}"),
            move |v| v[0].log_softmax(axis),
            vec![x.clone()],
        );
    }
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let x = rand(&mut r, &shape_in(layout, 2, 2, &[5, 4]), -2.0, 2.0);
        let spec = PoolSpec::new(&[3, 2])
            .stride(&[2, 1])
            .pad(&[1, 0])
            .layout(layout);
        let s2 = spec.clone();
        check(
            &format!("avg_pool {layout:?}"),
            move |v| v[0].avg_pool(&s2),
            vec![x.clone()],
        );
        let s3 = spec.clone().exclude_pad();
        check(
            &format!("avg_pool excl {layout:?}"),
            move |v| v[0].avg_pool(&s3),
            vec![x.clone()],
        );
        check(
            &format!("max_pool {layout:?}"),
            move |v| v[0].max_pool(&spec),
            vec![x.clone()],
        );
        check(
            &format!("global_avg_pool {layout:?}"),
            move |v| v[0].global_avg_pool(layout, false),
            vec![x.clone()],
        );
        for (to, mode, ac) in [
            (ResizeTo::Size(vec![7, 3]), ResizeMode::Linear, false),
            (ResizeTo::Size(vec![3, 6]), ResizeMode::Linear, true),
            (ResizeTo::Scale(vec![1.5]), ResizeMode::Nearest, false),
        ] {
            check(
                &format!("resize {to:?} {mode:?} {ac} {layout:?}"),
                move |v| v[0].resize(&to, mode, ac, layout),
                vec![x.clone()],
            );
        }
    }
    let x3 = rand(&mut r, &[1, 2, 3, 4, 3], -1.0, 1.0);
    check(
        "trilinear",
        |v| {
            v[0].resize(
                &ResizeTo::Size(vec![5, 3, 6]),
                ResizeMode::Linear,
                false,
                Layout::ChannelsFirst,
            )
        },
        vec![x3],
    );
}

#[test]
fn attention_gradients() {
    let mut r = rng(4);
    let q = rand(&mut r, &[1, 2, 5, 4], -1.0, 1.0);
    let k = rand(&mut r, &[1, 2, 6, 4], -1.0, 1.0);
    let v = rand(&mut r, &[1, 2, 6, 3], -1.0, 1.0);
    check(
        "attention fused",
        |x| Var::attention(&x[0], &x[1], &x[2], None),
        vec![q.clone(), k.clone(), v.clone()],
    );
    check(
        "attention plain",
        |x| Var::attention_plain(&x[0], &x[1], &x[2], Some(0.7)),
        vec![q.clone(), k.clone(), v.clone()],
    );
    // Fused and plain agree.
    let (qv, kv, vv) = (Var::constant(q), Var::constant(k), Var::constant(v));
    let a = Var::attention(&qv, &kv, &vv, Some(0.7))
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    let b = Var::attention_plain(&qv, &kv, &vv, Some(0.7))
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    ssm_runtime::testing::assert_close("fused vs plain", &a, &b, 1e-12, 1e-13);
}

#[test]
fn dropout_drop_path_pixel_shuffle_gradients() {
    let mut r = rng(5);
    let x = rand(&mut r, &[3, 4, 5], -1.0, 1.0);
    check("dropout", |v| v[0].dropout(0.3, 17, true), vec![x.clone()]);
    check(
        "drop_path",
        |v| v[0].drop_path(0.5, 23, true),
        vec![x.clone()],
    );
    // Statistics of the masks.
    let d = device();
    let big = Tensor::ones(&[64, 1000], DType::F64, &d).unwrap();
    let y = Var::constant(big.clone()).dropout(0.25, 5, true).unwrap();
    let vals = y.value().to_f64_vec().unwrap();
    let kept = vals.iter().filter(|&&v| v != 0.0).count() as f64 / vals.len() as f64;
    assert!((kept - 0.75).abs() < 0.01, "dropout keep rate {kept}");
    assert!(
        vals.iter()
            .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-12)
    );
    let y = Var::constant(big)
        .drop_path(0.25, 9, true)
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    for row in y.chunks(1000) {
        assert!(
            row.iter().all(|&v| v == row[0]),
            "drop_path drops whole samples"
        );
    }
    let eval = Var::constant(x.clone()).dropout(0.3, 1, false).unwrap();
    assert_eq!(eval.value().to_f64_vec().unwrap(), x.to_f64_vec().unwrap());
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let x2 = rand_nonzero(&mut r, &shape_in(layout, 1, 8, &[2, 3]), 0.1, 1.0);
        check(
            &format!("pixel_shuffle {layout:?}"),
            move |v| v[0].pixel_shuffle(2, layout),
            vec![x2.clone()],
        );
        let x3 = rand(&mut r, &shape_in(layout, 1, 2, &[4, 6]), -1.0, 1.0);
        check(
            &format!("pixel_unshuffle {layout:?}"),
            move |v| v[0].pixel_unshuffle(2, layout),
            vec![x3],
        );
        // Round trip.
        let y = Var::constant(x2.clone())
            .pixel_shuffle(2, layout)
            .unwrap()
            .pixel_unshuffle(2, layout)
            .unwrap();
        assert_eq!(y.value().to_f64_vec().unwrap(), x2.to_f64_vec().unwrap());
    }
    // PyTorch's channel order: out[0, c, h·r + i, w·r + j] = in[0, c·r² + i·r + j, h, w].
    let x = Tensor::from_f64(
        &(0..8).map(f64::from).collect::<Vec<_>>(),
        &[1, 8, 1, 1],
        DType::F64,
        &d,
    )
    .unwrap();
    let y = Var::constant(x)
        .pixel_shuffle(2, Layout::ChannelsFirst)
        .unwrap();
    assert_eq!(y.shape(), &[1, 2, 2, 2]);
    assert_eq!(
        y.value().to_f64_vec().unwrap(),
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    );
}

#[test]
fn loss_gradients() {
    let mut r = rng(6);
    let d = device();
    let logits = rand(&mut r, &[2, 3, 4, 3], -2.0, 2.0);
    let probs_t = {
        let labels: Vec<f64> = (0..24).map(|_| (r.next_u64() % 3) as f64).collect();
        Tensor::from_f64(&labels, &[2, 4, 3], DType::F64, &d).unwrap()
    };
    let onehot = Tensor::one_hot(&probs_t, 3, Layout::ChannelsFirst).unwrap();
    let bin = rand(&mut r, &[2, 3, 4, 3], 0.0, 1.0);
    let (b2, l2, o2) = (bin.clone(), probs_t.clone(), onehot.clone());
    check(
        "bce_with_logits",
        move |v| bce_with_logits(&v[0], &b2),
        vec![logits.clone()],
    );
    check(
        "cross_entropy labels",
        move |v| cross_entropy(&v[0], CeTarget::Labels(&l2), 0.0, Layout::ChannelsFirst),
        vec![logits.clone()],
    );
    check(
        "cross_entropy probs smoothed",
        move |v| cross_entropy(&v[0], CeTarget::Probs(&o2), 0.1, Layout::ChannelsFirst),
        vec![logits.clone()],
    );
    for (name, opts) in [
        ("dice sigmoid", DiceOptions::sigmoid()),
        ("dice softmax", DiceOptions::softmax()),
        (
            "dice softmax no bg",
            DiceOptions {
                include_background: false,
                ..DiceOptions::softmax()
            },
        ),
        (
            "dice sigmoid batch squared",
            DiceOptions {
                batch: true,
                squared_pred: true,
                ..DiceOptions::sigmoid()
            },
        ),
    ] {
        let t = onehot.clone();
        check(
            name,
            move |v| dice_loss(&v[0], &t, &opts),
            vec![logits.clone()],
        );
    }
    let t = onehot.clone();
    check(
        "dice_ce softmax",
        move |v| dice_ce_loss(&v[0], &t, &DiceOptions::softmax(), 1.0, 1.0, 0.0),
        vec![logits.clone()],
    );
    let one = rand(&mut r, &[2, 1, 4, 3], -2.0, 2.0);
    let tgt = Tensor::from_f64(
        &(0..24).map(|i| f64::from(i % 3 == 0)).collect::<Vec<_>>(),
        &[2, 1, 4, 3],
        DType::F64,
        &d,
    )
    .unwrap();
    check(
        "dice_ce one channel (bce)",
        move |v| dice_ce_loss(&v[0], &tgt, &DiceOptions::sigmoid(), 1.0, 1.0, 0.0),
        vec![one],
    );
    let pred = rand(&mut r, &[2, 3, 4, 4], -1.0, 1.0);
    let target = rand(&mut r, &[2, 3, 4, 4], -1.0, 1.0);
    let mask = Tensor::from_f64(
        &(0..32).map(|i| f64::from(i % 3 != 0)).collect::<Vec<_>>(),
        &[2, 1, 4, 4],
        DType::F64,
        &d,
    )
    .unwrap();
    let (t2, m2) = (target.clone(), mask.clone());
    check(
        "masked_mse",
        move |v| masked_mse(&v[0], &t2, &m2),
        vec![pred.clone()],
    );
    check(
        "masked_l1",
        move |v| masked_l1(&v[0], &target, &mask),
        vec![pred],
    );
    let _ = DiceActivation::None;
}

/// Host Dice (MONAI semantics) on channels-first probabilities and targets `[N, C, S]`.
fn host_dice(p: &[f64], g: &[f64], n: usize, c: usize, s: usize, skip_bg: bool) -> f64 {
    host_weighted_dice(p, g, n, c, s, skip_bg, &vec![1.0; c])
}

/// MONAI `DiceLoss(weight=w)`: each (sample, channel) term times the weight of its channel
/// (`w` indexed from the first channel kept), then the plain mean.
fn host_weighted_dice(
    p: &[f64],
    g: &[f64],
    n: usize,
    c: usize,
    s: usize,
    skip_bg: bool,
    w: &[f64],
) -> f64 {
    let first = usize::from(skip_bg);
    let mut total = 0.0;
    let mut count = 0.0;
    for b in 0..n {
        for ch in first..c {
            let (mut i, mut ps, mut gs) = (0.0, 0.0, 0.0);
            for k in 0..s {
                let idx = (b * c + ch) * s + k;
                i += p[idx] * g[idx];
                ps += p[idx];
                gs += g[idx];
            }
            total += w[ch - first] * (1.0 - (2.0 * i + 1e-5) / (ps + gs + 1e-5));
            count += 1.0;
        }
    }
    total / count
}

#[test]
fn loss_values_match_host() {
    let mut r = rng(7);
    let d = device();
    let (n, c, s) = (2usize, 3usize, 5usize);
    let xv = r.vec(n * c * s, -3.0, 3.0);
    let labels: Vec<f64> = (0..n * s)
        .map(|_| (r.next_u64() % c as u64) as f64)
        .collect();
    let x = Tensor::from_f64(&xv, &[n, c, s], DType::F64, &d).unwrap();
    let lab = Tensor::from_f64(&labels, &[n, s], DType::F64, &d).unwrap();
    let oh = Tensor::one_hot(&lab, c, Layout::ChannelsFirst).unwrap();
    let ohv = oh.to_f64_vec().unwrap();
    let lsm = host_log_softmax_all(&xv, c, s);
    let sm: Vec<f64> = lsm.iter().map(|v| v.exp()).collect();
    let xvar = Var::constant(x.clone());
    let eps = 0.1;
    let ce_want: f64 = -(0..xv.len())
        .map(|i| ((1.0 - eps) * ohv[i] + eps / c as f64) * lsm[i])
        .sum::<f64>()
        / (n * s) as f64;
    let ce = cross_entropy(&xvar, CeTarget::Labels(&lab), eps, Layout::ChannelsFirst).unwrap();
    assert!(
        (ce.value().item().unwrap() - ce_want).abs() < 1e-12,
        "cross entropy"
    );
    let dice = dice_loss(&xvar, &lab, &DiceOptions::softmax()).unwrap();
    assert!(
        (dice.value().item().unwrap() - host_dice(&sm, &ohv, n, c, s, false)).abs() < 1e-12,
        "dice"
    );
    let dice_nb = dice_loss(
        &xvar,
        &oh,
        &DiceOptions {
            include_background: false,
            ..DiceOptions::softmax()
        },
    )
    .unwrap();
    assert!(
        (dice_nb.value().item().unwrap() - host_dice(&sm, &ohv, n, c, s, true)).abs() < 1e-12,
        "dice no bg"
    );
    let sig: Vec<f64> = xv.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let dsig = dice_loss(&xvar, &oh, &DiceOptions::sigmoid()).unwrap();
    assert!(
        (dsig.value().item().unwrap() - host_dice(&sig, &ohv, n, c, s, false)).abs() < 1e-12,
        "dice sigmoid"
    );
    let dce = dice_ce_loss(&xvar, &oh, &DiceOptions::softmax(), 1.0, 1.0, 0.0).unwrap();
    let ce0: f64 = -(0..xv.len()).map(|i| ohv[i] * lsm[i]).sum::<f64>() / (n * s) as f64;
    assert!(
        (dce.value().item().unwrap() - host_dice(&sm, &ohv, n, c, s, false) - ce0).abs() < 1e-12,
        "dice_ce"
    );
    let bce = bce_with_logits(&xvar, &oh).unwrap();
    let bce_want: f64 = xv
        .iter()
        .zip(&ohv)
        .map(|(&x, &t)| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p())
        .sum::<f64>()
        / xv.len() as f64;
    assert!(
        (bce.value().item().unwrap() - bce_want).abs() < 1e-12,
        "bce"
    );
    let mask = Tensor::from_f64(&[1.0, 0.0, 1.0, 1.0, 0.0], &[1, 1, 5], DType::F64, &d).unwrap();
    let zero = Tensor::zeros(&[n, c, s], DType::F64, &d).unwrap();
    let mse = masked_mse(&xvar, &zero, &mask)
        .unwrap()
        .value()
        .item()
        .unwrap();
    let mut want = 0.0;
    for (i, v) in xv.iter().enumerate() {
        if [0usize, 2, 3].contains(&(i % s)) {
            want += v * v;
        }
    }
    assert!(
        (mse - want / (n * c * 3) as f64).abs() < 1e-12,
        "masked mse"
    );
}

#[test]
fn reverse_attention_matches_composition_and_gradchecks() {
    use ssm_runtime::{Layout, ResizeMode, ResizeTo};
    let mut r = ssm_runtime::testing::HostRng::new(0x4a);
    for (m_shape, f_shape) in [
        (vec![2, 1, 2, 3, 2], vec![2, 3, 4, 5, 4]),
        (vec![1, 1, 3, 3], vec![1, 2, 7, 5]),
        (vec![1, 1, 4], vec![1, 3, 9]),
    ] {
        let m = crate::rand(&mut r, &m_shape, -2.0, 2.0);
        let f = crate::rand(&mut r, &f_shape, -1.0, 1.0);
        let fused = ssm_runtime::Tensor::reverse_attention(&m, &f).unwrap();
        let up = m
            .resize(
                &ResizeTo::Size(f_shape[2..].to_vec()),
                ResizeMode::Linear,
                false,
                Layout::ChannelsFirst,
            )
            .unwrap();
        let plain = up
            .sigmoid()
            .unwrap()
            .rsub_scalar(1.0)
            .unwrap()
            .mul(&f)
            .unwrap();
        ssm_runtime::testing::assert_close(
            "reverse attention",
            &fused.to_f64_vec().unwrap(),
            &plain.to_f64_vec().unwrap(),
            1e-12,
            1e-12,
        );
        let rep = ssm_autodiff::gradcheck(
            |v| Var::reverse_attention(&v[0], &v[1]),
            &[m, f],
            &Default::default(),
        )
        .unwrap();
        rep.assert_passed(&format!("reverse attention {m_shape:?} -> {f_shape:?}"));
    }
}

#[test]
fn dropout_masks_match_the_host_generator_and_pixel_shuffle_matches_host() {
    use ssm_runtime::kernels::random::{host_uniform, host_uniform_f32};
    let d = device();
    let mut r = rng(8);
    let xv = r.vec(3 * 50, -1.0, 1.0);
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_f64(&xv, &[3, 50], dtype, &d).unwrap();
        let (p, seed) = (0.3, 4242u64);
        let y = Var::constant(x.clone()).dropout(p, seed, true).unwrap();
        let xr = x.to_f64_vec().unwrap();
        let want: Vec<f64> = (0..xr.len())
            .map(|i| {
                let u = if dtype == DType::F32 {
                    f64::from(host_uniform_f32(seed, i as u32))
                } else {
                    host_uniform(seed, i as u32)
                };
                if u < 1.0 - p { xr[i] / (1.0 - p) } else { 0.0 }
            })
            .collect();
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-15 };
        ssm_runtime::testing::assert_close(
            &format!("dropout {dtype}"),
            &y.value().to_f64_vec().unwrap(),
            &want,
            tol,
            tol,
        );
        // p = 1 drops everything (no division by the zero keep probability).
        for y in [
            Var::constant(x.clone()).dropout(1.0, seed, true).unwrap(),
            Var::constant(x.clone()).drop_path(1.0, seed, true).unwrap(),
        ] {
            assert!(y.value().to_f64_vec().unwrap().iter().all(|&v| v == 0.0));
        }
        // Drop-path: one draw per sample.
        let y = Var::constant(x.clone()).drop_path(0.5, seed, true).unwrap();
        let yv = y.value().to_f64_vec().unwrap();
        for s in 0..3 {
            let u = if dtype == DType::F32 {
                f64::from(host_uniform_f32(seed, s as u32))
            } else {
                host_uniform(seed, s as u32)
            };
            let scale = if u < 0.5 { 2.0 } else { 0.0 };
            for k in 0..50 {
                assert!(
                    (yv[s * 50 + k] - xr[s * 50 + k] * scale).abs() <= tol,
                    "drop_path {dtype}"
                );
            }
        }
    }
    // Pixel shuffle against PyTorch's definition, 2-D and 3-D, channels-first.
    for (shape, r2) in [(vec![2usize, 12, 3, 2], 2usize), (vec![1, 16, 2, 1, 3], 2)] {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let x = Tensor::from_f64(&v, &shape, DType::F64, &d).unwrap();
        let y = Var::constant(x.clone())
            .pixel_shuffle(r2, Layout::ChannelsFirst)
            .unwrap();
        // Channels-last: the same values in channels-last order.
        let r = shape.len();
        let to_cl: Vec<usize> = [0].into_iter().chain(2..r).chain([1]).collect();
        let to_cf: Vec<usize> = [0, r - 1].into_iter().chain(1..r - 1).collect();
        let x_cl = x.permute(&to_cl).unwrap().contiguous().unwrap();
        let y_cl = Var::constant(x_cl)
            .pixel_shuffle(r2, Layout::ChannelsLast)
            .unwrap();
        assert_eq!(
            y_cl.value().permute(&to_cf).unwrap().to_f64_vec().unwrap(),
            y.value().to_f64_vec().unwrap(),
            "pixel shuffle channels-last {shape:?}"
        );
        let nd = shape.len() - 2;
        let rd = r2.pow(nd as u32);
        let co = shape[1] / rd;
        let sp = &shape[2..];
        let out_sp: Vec<usize> = sp.iter().map(|s| s * r2).collect();
        let got = y.value().to_f64_vec().unwrap();
        let mut k = 0;
        for b in 0..shape[0] {
            for c in 0..co {
                let total: usize = out_sp.iter().product();
                for o in 0..total {
                    // coordinates of o in out_sp
                    let mut rem = o;
                    let mut oc = vec![0; nd];
                    for a in (0..nd).rev() {
                        oc[a] = rem % out_sp[a];
                        rem /= out_sp[a];
                    }
                    let mut sub = 0;
                    let mut pos = 0;
                    for a in 0..nd {
                        sub = sub * r2 + oc[a] % r2;
                        pos = pos * sp[a] + oc[a] / r2;
                    }
                    let ci = c * rd + sub;
                    let want = ((b * shape[1] + ci) * sp.iter().product::<usize>() + pos) as f64;
                    assert_eq!(got[k], want, "pixel shuffle {shape:?} at {k}");
                    k += 1;
                }
            }
        }
    }
}

/// Host cross-entropy over `[N, C, S]` logits with labels `[N, S]`: positions labelled
/// `ignore` are skipped (neither summed nor counted), as PyTorch's `ignore_index`.
fn host_ce(x: &[f64], labels: &[f64], c: usize, s: usize, eps: f64, ignore: f64) -> f64 {
    host_weighted_ce(x, labels, &vec![1.0; c], s, eps, ignore)
}

/// Log-softmax of `[N, C, S]` logits at position `p` (batch-major) over the `c` channels.
fn host_log_softmax(x: &[f64], c: usize, s: usize, p: usize) -> Vec<f64> {
    let (b, k) = (p / s, p % s);
    let row: Vec<f64> = (0..c).map(|ch| x[(b * c + ch) * s + k]).collect();
    let m = row.iter().cloned().fold(f64::MIN, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

/// Log-softmax over the channels of `[N, C, S]` logits, in their layout.
fn host_log_softmax_all(x: &[f64], c: usize, s: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for p in 0..x.len() / c {
        for (ch, v) in host_log_softmax(x, c, s, p).into_iter().enumerate() {
            out[((p / s) * c + ch) * s + p % s] = v;
        }
    }
    out
}

/// PyTorch's `cross_entropy(x, probs, weight=w, label_smoothing=eps)` on `[N, C, S]`
/// probabilities: the weighted terms averaged over the positions (not over the weights).
fn host_weighted_ce_probs(x: &[f64], probs: &[f64], w: &[f64], s: usize, eps: f64) -> f64 {
    let c = w.len();
    let lsm = host_log_softmax_all(x, c, s);
    let total: f64 = (0..x.len())
        .map(|i| {
            let ch = (i / s) % c;
            -w[ch] * ((1.0 - eps) * probs[i] + eps / c as f64) * lsm[i]
        })
        .sum();
    total / (x.len() / c) as f64
}

/// PyTorch's `cross_entropy(x, labels, weight=w, ignore_index, label_smoothing=eps)`, as
/// its source computes it: `(1 − ε)·Σ w_y·nll / Σ w_y + ε/C · Σ Σ_c w_c·(−log p_c) / Σ w_y`
/// over the positions not ignored.
fn host_weighted_ce(x: &[f64], labels: &[f64], w: &[f64], s: usize, eps: f64, ignore: f64) -> f64 {
    let c = w.len();
    let (mut nll, mut smooth, mut norm) = (0.0, 0.0, 0.0);
    for (p, &l) in labels.iter().enumerate() {
        if l == ignore {
            continue;
        }
        let lsm = host_log_softmax(x, c, s, p);
        nll -= w[l as usize] * lsm[l as usize];
        smooth -= (0..c).map(|ch| w[ch] * lsm[ch]).sum::<f64>();
        norm += w[l as usize];
    }
    (1.0 - eps) * nll / norm + eps / c as f64 * smooth / norm
}

#[test]
fn dice_class_weights_follow_monai() {
    let mut r = rng(11);
    let d = device();
    let (n, c, s) = (2usize, 3usize, 5usize);
    let xv = r.vec(n * c * s, -3.0, 3.0);
    let labels: Vec<f64> = (0..n * s).map(|i| (i % c) as f64).collect();
    let x = Tensor::from_f64(&xv, &[n, c, s], DType::F64, &d).unwrap();
    let lab = Tensor::from_f64(&labels, &[n, s], DType::F64, &d).unwrap();
    let gv = Tensor::one_hot(&lab, c, Layout::ChannelsFirst)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let sig: Vec<f64> = xv.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let value = |opts: &DiceOptions, w: &[f64]| {
        dice_loss_weighted(&Var::constant(x.clone()), &lab, opts, w)
            .unwrap()
            .value()
            .item()
            .unwrap()
    };
    let w3 = [0.5, 2.0, 0.0];
    let got = value(&DiceOptions::sigmoid(), &w3);
    let want = host_weighted_dice(&sig, &gv, n, c, s, false, &w3);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // Without the background the weights start at channel 1.
    let no_bg = DiceOptions {
        include_background: false,
        ..DiceOptions::sigmoid()
    };
    let got = value(&no_bg, &[3.0, 0.25]);
    let want = host_weighted_dice(&sig, &gv, n, c, s, true, &[3.0, 0.25]);
    assert!((got - want).abs() < 1e-12, "no background: {got} vs {want}");
    // With `batch`, one term a channel (sums over the batch too), weighted the same way.
    let batch = DiceOptions {
        batch: true,
        ..DiceOptions::sigmoid()
    };
    let want = (0..c)
        .map(|ch| {
            let (mut i, mut ps, mut gs) = (0.0, 0.0, 0.0);
            for b in 0..n {
                for k in 0..s {
                    let idx = (b * c + ch) * s + k;
                    (i, ps, gs) = (i + sig[idx] * gv[idx], ps + sig[idx], gs + gv[idx]);
                }
            }
            w3[ch] * (1.0 - (2.0 * i + 1e-5) / (ps + gs + 1e-5))
        })
        .sum::<f64>()
        / c as f64;
    let got = value(&batch, &w3);
    assert!((got - want).abs() < 1e-12, "batch: {got} vs {want}");
    // Unit weights are the plain loss.
    let plain = dice_loss(&Var::constant(x.clone()), &lab, &no_bg)
        .unwrap()
        .value()
        .item()
        .unwrap();
    assert!((value(&no_bg, &[1.0, 1.0]) - plain).abs() < 1e-12);
    // Gradient.
    let lab2 = lab.clone();
    check(
        "dice weighted",
        move |v| dice_loss_weighted(&v[0], &lab2, &DiceOptions::softmax(), &[0.5, 2.0, 1.5]),
        vec![x.clone()],
    );
    // Refusals: a weight per kept channel, none negative or NaN.
    let xv_ = Var::constant(x.clone());
    for (opts, w, says) in [
        (
            DiceOptions::sigmoid(),
            &[1.0, 1.0][..],
            "2 class weights for 3 channels",
        ),
        (
            no_bg,
            &[1.0, 1.0, 1.0][..],
            "3 class weights for 2 channels",
        ),
        (
            DiceOptions::sigmoid(),
            &[1.0, -0.5, 1.0][..],
            "class weight -0.5",
        ),
        (
            DiceOptions::sigmoid(),
            &[1.0, f64::NAN, 1.0][..],
            "class weight NaN",
        ),
    ] {
        let err = dice_loss_weighted(&xv_, &lab, &opts, w)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn dice_ce_weights_go_to_both_terms_as_in_monai() {
    let mut r = rng(12);
    let d = device();
    let (n, c, s) = (2usize, 3usize, 5usize);
    let xv = r.vec(n * c * s, -3.0, 3.0);
    let labels: Vec<f64> = (0..n * s).map(|i| ((i * 7) % c) as f64).collect();
    let x = Tensor::from_f64(&xv, &[n, c, s], DType::F64, &d).unwrap();
    let lab = Tensor::from_f64(&labels, &[n, s], DType::F64, &d).unwrap();
    let onehot = Tensor::one_hot(&lab, c, Layout::ChannelsFirst).unwrap();
    let gv = onehot.to_f64_vec().unwrap();
    let sm: Vec<f64> = host_log_softmax_all(&xv, c, s)
        .iter()
        .map(|v| v.exp())
        .collect();
    let w = [0.25, 2.0, 1.5];
    let (ld, lc, eps) = (0.7, 1.3, 0.1);
    let no_bg = DiceOptions {
        include_background: false,
        ..DiceOptions::softmax()
    };
    let value = |target: &Tensor, opts: &DiceOptions, w: &[f64]| {
        dice_ce_loss_weighted(&Var::constant(x.clone()), target, opts, ld, lc, eps, w)
            .unwrap()
            .value()
            .item()
            .unwrap()
    };
    // Labels: Dice without the background takes w[1..]; CE is the class-index loss,
    // normalised by the labels' weights.
    let dice = host_weighted_dice(&sm, &gv, n, c, s, true, &w[1..]);
    let ce = host_weighted_ce(&xv, &labels, &w, s, eps, f64::NAN);
    let got = value(&lab, &no_bg, &w);
    assert!((got - (ld * dice + lc * ce)).abs() < 1e-12, "labels: {got}");
    // One-hot: CE on probabilities, averaged over the positions.
    let ce_probs = host_weighted_ce_probs(&xv, &gv, &w, s, eps);
    let dice_all = host_weighted_dice(&sm, &gv, n, c, s, false, &w);
    let got = value(&onehot, &DiceOptions::softmax(), &w);
    assert!(
        (got - (ld * dice_all + lc * ce_probs)).abs() < 1e-12,
        "one-hot: {got}"
    );
    // One channel: BCE with the weight as pos_weight; Dice unweighted (MONAI applies no
    // weight to a single channel).
    let x1 = Tensor::from_f64(&xv[..n * s], &[n, 1, s], DType::F64, &d).unwrap();
    let t1v: Vec<f64> = (0..n * s).map(|i| (i % 2) as f64).collect();
    let t1 = Tensor::from_f64(&t1v, &[n, 1, s], DType::F64, &d).unwrap();
    let got = dice_ce_loss_weighted(
        &Var::constant(x1.clone()),
        &t1,
        &DiceOptions::sigmoid(),
        ld,
        lc,
        0.0,
        &[4.0],
    )
    .unwrap()
    .value()
    .item()
    .unwrap();
    let sig: Vec<f64> = xv[..n * s]
        .iter()
        .map(|v| 1.0 / (1.0 + (-v).exp()))
        .collect();
    let dice1 = host_dice(&sig, &t1v, n, 1, s, false);
    let bce1 = (0..n * s)
        .map(|i| {
            let (x, t) = (xv[i], t1v[i]);
            (1.0 - t) * x + (1.0 + 3.0 * t) * ((-x).max(0.0) + (-x.abs()).exp().ln_1p())
        })
        .sum::<f64>()
        / (n * s) as f64;
    assert!(
        (got - (ld * dice1 + lc * bce1)).abs() < 1e-12,
        "one channel: {got}"
    );
    // Gradient; a weight per logit channel, none negative.
    let lab2 = lab.clone();
    check(
        "dice_ce weighted",
        move |v| dice_ce_loss_weighted(&v[0], &lab2, &no_bg, ld, lc, eps, &w),
        vec![x.clone()],
    );
    let xv_ = Var::constant(x.clone());
    for (w, says) in [
        (&[1.0, 1.0][..], "2 class weights for logits of 3 channels"),
        (&[-1.0, 1.0, 1.0][..], "class weight -1"),
    ] {
        let err = dice_ce_loss_weighted(&xv_, &lab, &no_bg, 1.0, 1.0, 0.0, w)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn bce_pos_weight_follows_pytorch() {
    let mut r = rng(10);
    let d = device();
    let (n, c, s) = (2usize, 3usize, 4usize);
    // Logits far out on both sides too, where the naive form overflows.
    let mut xv = r.vec(n * c * s, -4.0, 4.0);
    xv[0] = 40.0;
    xv[5] = -40.0;
    let tv = r.vec(n * c * s, 0.0, 1.0);
    let wv = [0.5, 2.0, 7.0];
    let x = Tensor::from_f64(&xv, &[n, c, s], DType::F64, &d).unwrap();
    let t = Tensor::from_f64(&tv, &[n, c, s], DType::F64, &d).unwrap();
    // Per channel: [C, 1], broadcast by trailing axes as in PyTorch.
    let w = Tensor::from_f64(&wv, &[c, 1], DType::F64, &d).unwrap();
    let value = |w: &Tensor| {
        bce_with_logits_pos_weight(&Var::constant(x.clone()), &t, w)
            .unwrap()
            .value()
            .item()
            .unwrap()
    };
    // PyTorch's binary_cross_entropy_with_logits: (1 − t)·x + (1 + (w − 1)·t)·ln(1 + e^(−x)).
    let want: f64 = (0..xv.len())
        .map(|i| {
            let (x, t, w) = (xv[i], tv[i], wv[(i / s) % c]);
            let log1pexp_neg = (-x).max(0.0) + (-x.abs()).exp().ln_1p();
            (1.0 - t) * x + (1.0 + (w - 1.0) * t) * log1pexp_neg
        })
        .sum::<f64>()
        / xv.len() as f64;
    let got = value(&w);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // Weight 1 is the plain loss.
    let ones = Tensor::from_f64(&[1.0], &[1], DType::F64, &d).unwrap();
    let plain = bce_with_logits(&Var::constant(x.clone()), &t)
        .unwrap()
        .value()
        .item()
        .unwrap();
    assert!((value(&ones) - plain).abs() < 1e-12);
    // Gradient (away from the far logits, where central differences see nothing).
    let xs = rand(&mut r, &[n, c, s], -3.0, 3.0);
    let (t2, w2) = (t.clone(), w.clone());
    check(
        "bce_with_logits pos_weight",
        move |v| bce_with_logits_pos_weight(&v[0], &t2, &w2),
        vec![xs],
    );
    // [C] against [N, C, S] broadcasts along S (PyTorch's rule): refused when C ≠ S.
    let flat = Tensor::from_f64(&wv, &[c], DType::F64, &d).unwrap();
    let err = bce_with_logits_pos_weight(&Var::constant(x.clone()), &t, &flat)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bce_with_logits_pos_weight") && err.contains("do not broadcast"),
        "{err}"
    );
    // A weight that would grow the logits' shape is refused too.
    let wide = Tensor::from_f64(&[1.0; 8], &[2, 1, 1, 4], DType::F64, &d).unwrap();
    let err = bce_with_logits_pos_weight(&Var::constant(x.clone()), &t, &wide)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not broadcast to logits"), "{err}");
}

#[test]
fn cross_entropy_class_weights_follow_pytorch() {
    let mut r = rng(9);
    let d = device();
    let (n, c, s) = (2usize, 3usize, 6usize);
    let xv = r.vec(n * c * s, -3.0, 3.0);
    let wv = [0.2, 1.5, 3.0];
    let x = Tensor::from_f64(&xv, &[n, c, s], DType::F64, &d).unwrap();
    let w = Tensor::from_f64(&wv, &[c], DType::F64, &d).unwrap();
    let labels = [
        2.0, -100.0, 0.0, 1.0, 1.0, 2.0, 1.0, 1.0, -100.0, 0.0, 2.0, 0.0,
    ];
    let lab = Tensor::from_f64(&labels, &[n, s], DType::F64, &d).unwrap();
    let plain: Vec<f64> = labels.iter().map(|&v| v.max(0.0)).collect();
    let lab_plain = Tensor::from_f64(&plain, &[n, s], DType::F64, &d).unwrap();
    // The same logits channels-last ([N, S, C]).
    let x_cl = x.permute(&[0, 2, 1]).unwrap().contiguous().unwrap();
    let value = |x: &Tensor, t: CeTarget<'_>, eps: f64, layout: Layout| {
        cross_entropy_weighted(&Var::constant(x.clone()), t, eps, &w, layout)
            .unwrap()
            .value()
            .item()
            .unwrap()
    };
    for eps in [0.0, 0.1] {
        let want = host_weighted_ce(&xv, &plain, &wv, s, eps, f64::NAN);
        let want_ignoring = host_weighted_ce(&xv, &labels, &wv, s, eps, -100.0);
        for (x, layout) in [(&x, Layout::ChannelsFirst), (&x_cl, Layout::ChannelsLast)] {
            let got = value(x, CeTarget::Labels(&lab_plain), eps, layout);
            assert!(
                (got - want).abs() < 1e-12,
                "{layout:?} eps {eps}: {got} vs {want}"
            );
            let got = value(x, CeTarget::LabelsIgnoring(&lab, -100.0), eps, layout);
            assert!(
                (got - want_ignoring).abs() < 1e-12,
                "{layout:?} eps {eps}, ignoring: {got} vs {want_ignoring}"
            );
        }
        // Probabilities: the weighted terms averaged over the positions (not over the
        // weights), PyTorch's rule for probability targets.
        let pv = r.vec(n * c * s, 0.0, 1.0);
        let probs = Tensor::from_f64(&pv, &[n, c, s], DType::F64, &d).unwrap();
        let want = host_weighted_ce_probs(&xv, &pv, &wv, s, eps);
        let got = value(&x, CeTarget::Probs(&probs), eps, Layout::ChannelsFirst);
        assert!(
            (got - want).abs() < 1e-12,
            "probs eps {eps}: {got} vs {want}"
        );
    }
    // Unit weights are the unweighted loss.
    let ones = Tensor::from_f64(&[1.0; 3], &[c], DType::F64, &d).unwrap();
    let unit = cross_entropy_weighted(
        &Var::constant(x.clone()),
        CeTarget::LabelsIgnoring(&lab, -100.0),
        0.1,
        &ones,
        Layout::ChannelsFirst,
    )
    .unwrap()
    .value()
    .item()
    .unwrap();
    let want = host_ce(&xv, &labels, c, s, 0.1, -100.0);
    assert!((unit - want).abs() < 1e-12, "{unit} vs {want}");
    // Gradients, both target kinds.
    let (l2, w2) = (lab.clone(), w.clone());
    check(
        "cross_entropy weighted, ignoring, smoothed",
        move |v| {
            cross_entropy_weighted(
                &v[0],
                CeTarget::LabelsIgnoring(&l2, -100.0),
                0.1,
                &w2,
                Layout::ChannelsFirst,
            )
        },
        vec![x.clone()],
    );
    let probs = Tensor::from_f64(&r.vec(n * c * s, 0.0, 1.0), &[n, c, s], DType::F64, &d).unwrap();
    let w3 = w.clone();
    check(
        "cross_entropy weighted, probs",
        move |v| {
            cross_entropy_weighted(
                &v[0],
                CeTarget::Probs(&probs),
                0.0,
                &w3,
                Layout::ChannelsFirst,
            )
        },
        vec![x.clone()],
    );
    // One weight per channel, or a clear error.
    let three = Var::constant(x.clone());
    let bad = Tensor::from_f64(&[1.0; 4], &[4], DType::F64, &d).unwrap();
    let err = cross_entropy_weighted(
        &three,
        CeTarget::Labels(&lab_plain),
        0.0,
        &bad,
        Layout::ChannelsFirst,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("class weights [4] must be [3]"), "{err}");
}

#[test]
fn cross_entropy_ignores_marked_labels_and_poisons_bad_ones() {
    let mut r = rng(8);
    let d = device();
    let (n, c, s) = (2usize, 3usize, 6usize);
    let xv = r.vec(n * c * s, -3.0, 3.0);
    let x = Tensor::from_f64(&xv, &[n, c, s], DType::F64, &d).unwrap();
    let labels_of = |l: &[f64]| Tensor::from_f64(l, &[n, s], DType::F64, &d).unwrap();
    let value = |t: CeTarget<'_>, eps: f64| {
        cross_entropy(&Var::constant(x.clone()), t, eps, Layout::ChannelsFirst)
            .unwrap()
            .value()
            .item()
            .unwrap()
    };
    // −100 ignored (PyTorch's default ignore_index); a class (0) as the ignore label too.
    let with_ignored = [
        2.0, -100.0, 0.0, 1.0, -100.0, 2.0, 1.0, 1.0, -100.0, 0.0, 2.0, 0.0,
    ];
    let lab = labels_of(&with_ignored);
    for eps in [0.0, 0.1] {
        for ignore in [-100.0, 0.0] {
            let got = if ignore == 0.0 {
                // Relabel −100 as 1 so every label is a class and 0 is the one ignored.
                let l: Vec<f64> = with_ignored.iter().map(|&v| v.max(1.0)).collect();
                let want = host_ce(&xv, &l, c, s, eps, ignore);
                (
                    value(CeTarget::LabelsIgnoring(&labels_of(&l), ignore), eps),
                    want,
                )
            } else {
                let want = host_ce(&xv, &with_ignored, c, s, eps, ignore);
                (value(CeTarget::LabelsIgnoring(&lab, ignore), eps), want)
            };
            assert!(
                (got.0 - got.1).abs() < 1e-12,
                "ignore {ignore}, eps {eps}: {} vs host {}",
                got.0,
                got.1
            );
        }
    }
    // Gradients through the ignored positions are zero; the rest gradcheck.
    let l2 = lab.clone();
    check(
        "cross_entropy ignoring",
        move |v| {
            cross_entropy(
                &v[0],
                CeTarget::LabelsIgnoring(&l2, -100.0),
                0.1,
                Layout::ChannelsFirst,
            )
        },
        vec![x.clone()],
    );
    let xvar = Var::leaf(x.clone());
    let loss = cross_entropy(
        &xvar,
        CeTarget::LabelsIgnoring(&lab, -100.0),
        0.1,
        Layout::ChannelsFirst,
    )
    .unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(&xvar)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    for (p, &l) in with_ignored.iter().enumerate() {
        let (b, k) = (p / s, p % s);
        for ch in 0..c {
            let gi = g[(b * c + ch) * s + k];
            assert_eq!(l == -100.0, gi == 0.0, "position {p} channel {ch}: {gi}");
        }
    }
    // A label that is neither a class nor the ignore label makes the loss NaN, with or
    // without an ignore label (PyTorch stops with an error).
    for bad in [3.0, -1.0, 1.5, 255.0] {
        let mut l = with_ignored;
        l[3] = bad;
        let lab = labels_of(&l);
        assert!(
            value(CeTarget::LabelsIgnoring(&lab, -100.0), 0.0).is_nan(),
            "{bad}"
        );
        let plain: Vec<f64> = l
            .iter()
            .map(|&v| if v == -100.0 { 0.0 } else { v })
            .collect();
        assert!(
            value(CeTarget::Labels(&labels_of(&plain)), 0.1).is_nan(),
            "{bad}"
        );
    }
    // Every position ignored: 0/0, as PyTorch.
    let all = labels_of(&[-100.0; 12]);
    assert!(value(CeTarget::LabelsIgnoring(&all, -100.0), 0.0).is_nan());
}

#[test]
fn dice_refuses_softmax_over_one_channel() {
    let mut r = rng(9);
    let x = Var::constant(rand(&mut r, &[2, 1, 4], -1.0, 1.0));
    let t = Tensor::ones(&[2, 1, 4], DType::F64, &device()).unwrap();
    for f in [
        dice_loss(&x, &t, &DiceOptions::softmax()),
        dice_ce_loss(&x, &t, &DiceOptions::softmax(), 1.0, 1.0, 0.0),
    ] {
        let err = f.expect_err("softmax over one channel must be refused");
        assert!(err.to_string().contains("Sigmoid"), "{err}");
    }
    assert!(dice_loss(&x, &t, &DiceOptions::sigmoid()).is_ok());
    // MONAI refuses negative weights too.
    let e = dice_ce_loss(&x, &t, &DiceOptions::sigmoid(), -1.0, 1.0, 0.0)
        .expect_err("a negative weight must be refused");
    assert!(e.to_string().contains("non-negative"), "{e}");
}

#[test]
fn masked_losses_divide_by_the_mask_and_check_its_rank() {
    let mut r = rng(10);
    let d = device();
    let (n, l, p) = (2usize, 3usize, 4usize);
    let pv = r.vec(n * l * p, -1.0, 1.0);
    let tv = r.vec(n * l * p, -1.0, 1.0);
    let pred = Tensor::from_f64(&pv, &[n, l, p], DType::F64, &d).unwrap();
    let target = Tensor::from_f64(&tv, &[n, l, p], DType::F64, &d).unwrap();
    // A soft mask per patch whose total is below 1.
    let mv = [0.2, 0.0, 0.3, 0.0, 0.1, 0.0];
    let mask = Tensor::from_f64(&mv, &[n, l, 1], DType::F64, &d).unwrap();
    for squared in [true, false] {
        let f = if squared { masked_mse } else { masked_l1 };
        let got = f(&Var::constant(pred.clone()), &target, &mask)
            .unwrap()
            .value()
            .item()
            .unwrap();
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..n * l * p {
            let e = pv[i] - tv[i];
            let m = mv[i / p];
            num += m * if squared { e * e } else { e.abs() };
            den += m;
        }
        assert!((got - num / den).abs() < 1e-12, "{got} vs {}", num / den);
    }
    // An empty mask: loss 0, gradient 0.
    let empty = Tensor::zeros(&[n, l, 1], DType::F64, &d).unwrap();
    let xv = Var::leaf(pred.clone());
    let loss = masked_mse(&xv, &target, &empty).unwrap();
    assert_eq!(loss.value().item().unwrap(), 0.0);
    let g = loss
        .backward()
        .unwrap()
        .get(&xv)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    assert!(g.iter().all(|&v| v == 0.0));
    // MAE's [N, L] mask against [N, L, P] would broadcast along P when L == P: refused.
    let square = Tensor::from_f64(&pv[..n * l * l], &[n, l, l], DType::F64, &d).unwrap();
    let flat = Tensor::ones(&[n, l], DType::F64, &d).unwrap();
    let err = masked_l1(&Var::constant(square.clone()), &square, &flat)
        .expect_err("a lower-rank mask must be refused");
    assert!(err.to_string().contains("same rank"), "{err}");
}
