//! The scan engine against the f64 host oracle: paths, then the forward kernel over
//! every preset, state size, path count, grid rank, length regime and option.

use ssm_runtime::scan::reference::{HostScan, selective_scan_ref};
use ssm_runtime::scan::{
    Merge, ScanInputs, ScanOptions, ScanPath, ScanSpec, presets, selective_scan_bwd,
    selective_scan_fwd,
};
use ssm_runtime::testing::{HostRng, assert_close, device, rel_l2};
use ssm_runtime::{DType, DeviceKind, Tensor};

use crate::rng;

#[test]
fn path_orders_are_the_documented_ones() {
    let p = |path: &ScanPath, grid: &[usize]| path.positions(grid).unwrap();
    let c = presets::cross2d();
    assert_eq!(p(&c[0], &[2, 3]), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(p(&c[1], &[2, 3]), vec![0, 3, 1, 4, 2, 5]);
    assert_eq!(p(&c[2], &[2, 3]), vec![5, 4, 3, 2, 1, 0]);
    assert_eq!(p(&c[3], &[2, 3]), vec![5, 2, 4, 1, 3, 0]);
    assert_eq!(
        p(&presets::snake_2d()[0], &[3, 3]),
        vec![0, 1, 2, 5, 4, 3, 6, 7, 8]
    );
    assert_eq!(p(&presets::snake_2d()[0].rev(), &[2, 2]), vec![2, 3, 1, 0]);
    assert_eq!(p(&presets::bidirectional()[1], &[4]), vec![3, 2, 1, 0]);
    // Inter-slice of SegMamba on (d, h, w) = (2, 1, 2): slices fastest.
    assert_eq!(
        p(&presets::tri_orientated()[2], &[2, 1, 2]),
        vec![0, 2, 1, 3]
    );
    // SRMA ABSS on (h, w, d) = (2, 2, 2): sh column-major walks h fastest for each (w, d).
    let abss = presets::srma_abss();
    assert_eq!(abss.len(), 12);
    assert_eq!(p(&abss[1], &[2, 2, 2]), vec![0, 4, 1, 5, 2, 6, 3, 7]);
    // sd row-major: d slowest, then h, then w.
    assert_eq!(p(&abss[8], &[2, 2, 2]), vec![0, 2, 4, 6, 1, 3, 5, 7]);
    assert_eq!(
        abss[9], abss[0],
        "sd column-major is the (h, w, d) raster, as sh row-major"
    );
    assert_eq!(presets::six_orders_3d().len(), 12);
    // Every full-scale path visits every position once.
    let grid = [3, 4, 5];
    for path in presets::srma_abss()
        .iter()
        .chain(&presets::six_orders_3d())
        .chain(&presets::tri_orientated())
    {
        let mut v = p(path, &grid);
        v.sort_unstable();
        assert_eq!(v, (0..60).collect::<Vec<_>>(), "{path:?}");
    }
    // A strided path visits the sub-grid (every second row and column).
    let s = ScanPath::raster(2).with_scale(2).unwrap();
    assert_eq!(p(&s, &[3, 5]), vec![0, 2, 4, 10, 12, 14]);
    assert_eq!(
        p(&s.flip_axis(1).unwrap(), &[3, 5]),
        vec![4, 2, 0, 14, 12, 10]
    );
    assert!(ScanPath::with_order(&[0, 0]).is_err());
    assert!(ScanPath::raster(2).positions(&[3]).is_err());
}

/// One scan problem with fresh random inputs.
pub struct Problem {
    pub host: HostScan,
    pub spec: ScanSpec,
    pub tensors: Vec<Tensor>, // u, delta, a, b, c, d, bias, [z]
}

impl Problem {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        r: &mut HostRng,
        dtype: DType,
        batch: usize,
        channels: usize,
        state: usize,
        groups: usize,
        spec: ScanSpec,
        delta_per_path: bool,
        gate: bool,
    ) -> Problem {
        let l: usize = spec.grid.iter().product();
        let k = spec.paths.len();
        let round = |v: Vec<f64>| -> Vec<f64> {
            if dtype == DType::F32 {
                v.iter().map(|&x| x as f32 as f64).collect()
            } else {
                v
            }
        };
        let n_delta = if delta_per_path {
            batch * k * channels * l
        } else {
            batch * channels * l
        };
        let host = HostScan {
            batch,
            channels,
            state,
            groups,
            u: round(r.vec(batch * channels * l, -1.0, 1.0)),
            delta: round(r.vec(n_delta, -3.0, 0.5)),
            delta_per_path,
            a: round(
                (0..k * channels * state)
                    .map(|_| -r.uniform(-1.0, 1.0).exp())
                    .collect(),
            ),
            b: round(r.vec(batch * k * groups * state * l, -1.0, 1.0)),
            c: round(r.vec(batch * k * groups * state * l, -1.0, 1.0)),
            d: round(r.vec(k * channels, -1.0, 1.0)),
            delta_bias: round(r.vec(k * channels, -1.0, 0.5)),
            z: gate.then(|| round(r.vec(batch * channels * l, -2.0, 2.0))),
        };
        let dev = device();
        let up = |v: &[f64], s: &[usize]| Tensor::from_f64(v, s, dtype, &dev).unwrap();
        let delta_shape = if delta_per_path {
            vec![batch, k, channels, l]
        } else {
            vec![batch, channels, l]
        };
        let mut tensors = vec![
            up(&host.u, &[batch, channels, l]),
            up(&host.delta, &delta_shape),
            up(&host.a, &[k, channels, state]),
            up(&host.b, &[batch, k, groups, state, l]),
            up(&host.c, &[batch, k, groups, state, l]),
            up(&host.d, &[k, channels]),
            up(&host.delta_bias, &[k, channels]),
        ];
        if let Some(z) = &host.z {
            tensors.push(up(z, &[batch, channels, l]));
        }
        Problem {
            host,
            spec,
            tensors,
        }
    }

    pub fn inputs(&self) -> ScanInputs<'_> {
        let t = &self.tensors;
        ScanInputs {
            u: &t[0],
            delta: &t[1],
            a: &t[2],
            b: &t[3],
            c: &t[4],
            d: &t[5],
            delta_bias: &t[6],
            z: t.get(7),
        }
    }

    /// Run the forward and compare with the oracle; returns the relative L2 error.
    pub fn check_forward(&self, opts: &ScanOptions, what: &str) -> f64 {
        let (out, _) = selective_scan_fwd(&self.inputs(), &self.spec, opts).unwrap();
        let got = out.to_f64_vec().unwrap();
        let want = selective_scan_ref(&self.host, &self.spec).unwrap();
        let err = rel_l2(&got, &want);
        let dtype = self.tensors[0].dtype();
        let tol = if dtype == DType::F64 { 1e-12 } else { 2e-6 };
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{what}: non-finite output (unwritten element?)"
        );
        assert!(
            err <= tol,
            "{what} {dtype}: relative L2 error {err:e} > {tol:e}"
        );
        if dtype == DType::F64 {
            assert_close(what, &got, &want, 1e-10, 1e-12);
        }
        err
    }
}

fn spec(grid: &[usize], paths: Vec<ScanPath>) -> ScanSpec {
    ScanSpec::new(grid, paths)
}

/// The shared-memory lane scan, plane shuffles where the device has them, and (for
/// 2D/3D grids) the chunked kernels instead of the tiled ones.
fn plane_options() -> Vec<ScanOptions> {
    let mut v = vec![
        ScanOptions {
            plane: Some(false),
            ..Default::default()
        },
        ScanOptions {
            plane: Some(false),
            tiled: Some(false),
            ..Default::default()
        },
    ];
    if device().has_plane_ops() && device().plane_size() == 32 {
        v.push(ScanOptions {
            plane: Some(true),
            ..Default::default()
        });
        v.push(ScanOptions {
            plane: Some(true),
            tiled: Some(false),
            ..Default::default()
        });
    }
    v
}

#[test]
fn forward_matches_oracle_across_state_sizes_and_paths() {
    let mut r = rng(61);
    for dtype in [DType::F32, DType::F64] {
        for (state, grid, paths) in [
            (1, vec![37], presets::forward_1d()),
            (4, vec![53], presets::bidirectional()),
            (16, vec![5, 7], presets::cross2d()),
            (64, vec![3, 4, 5], presets::srma_abss()),
        ] {
            for opts in plane_options() {
                if grid.len() == 1 && opts.tiled == Some(false) {
                    continue;
                }
                let p = Problem::new(
                    &mut r,
                    dtype,
                    2,
                    3,
                    state,
                    1,
                    spec(&grid, paths.clone()),
                    false,
                    false,
                );
                p.check_forward(
                    &opts,
                    &format!("N={state} K={} grid={grid:?} {opts:?}", paths.len()),
                );
            }
        }
    }
}

#[test]
fn forward_presets_options_and_edge_lengths() {
    let mut r = rng(62);
    let dtype = DType::F64;
    let cases: Vec<(&str, Vec<usize>, Vec<ScanPath>)> = vec![
        ("L=1", vec![1], presets::bidirectional()),
        ("tri-orientated", vec![3, 2, 5], presets::tri_orientated()),
        ("six orders", vec![2, 3, 3], presets::six_orders_3d()),
        ("snake", vec![4, 5], presets::snake_2d()),
        (
            "snake reversed",
            vec![5, 3],
            vec![ScanPath::raster(2).snake().rev()],
        ),
        (
            "strided + full",
            vec![7, 9],
            vec![
                ScanPath::raster(2),
                ScanPath::raster(2).with_scale(2).unwrap().rev(),
            ],
        ),
        (
            "flipped axis",
            vec![4, 6],
            vec![ScanPath::with_order(&[1, 0]).unwrap().flip_axis(0).unwrap()],
        ),
    ];
    for (name, grid, paths) in cases {
        let p = Problem::new(&mut r, dtype, 2, 2, 4, 1, spec(&grid, paths), false, false);
        p.check_forward(&ScanOptions::default(), name);
        if grid.len() > 1 {
            let chunked = ScanOptions {
                tiled: Some(false),
                ..Default::default()
            };
            p.check_forward(&chunked, &format!("{name} chunked"));
        }
    }
    // Gate, mean merge, per-path delta, B/C groups, several segments, small chunks.
    let mut s = spec(&[6, 11], presets::cross2d()).mean();
    s.merge = Merge::Mean;
    let p = Problem::new(&mut r, dtype, 3, 4, 4, 2, s, true, true);
    for opts in [
        ScanOptions::default(),
        ScanOptions {
            items: Some(1),
            segment_len: Some(32),
            tiled: Some(false),
            ..Default::default()
        },
        ScanOptions {
            items: Some(2),
            warps: Some(1),
            segment_len: Some(70),
            tiled: Some(false),
            ..Default::default()
        },
    ] {
        p.check_forward(&opts, &format!("gate+mean+per-path delta+groups {opts:?}"));
    }
}

#[test]
fn forward_long_sequences_cross_many_chunks() {
    let mut r = rng(63);
    let gpu = device().kind() == DeviceKind::Cuda;
    // Not a multiple of any chunk size; 100 000+ steps on the GPU.
    let l = if gpu { 100_003 } else { 6_007 };
    for dtype in [DType::F32, DType::F64] {
        let p = Problem::new(
            &mut r,
            dtype,
            1,
            2,
            4,
            1,
            spec(&[l], presets::bidirectional()),
            false,
            true,
        );
        p.check_forward(&ScanOptions::default(), &format!("L={l}"));
        p.check_forward(
            &ScanOptions {
                segment_len: Some(l / 7),
                ..Default::default()
            },
            &format!("L={l} segmented"),
        );
        // One path: the kernel writes the (gated) output itself, across segments.
        let one = Problem::new(
            &mut r,
            dtype,
            1,
            2,
            4,
            1,
            spec(&[l], presets::forward_1d()),
            false,
            true,
        );
        one.check_forward(
            &ScanOptions {
                segment_len: Some(l / 5),
                ..Default::default()
            },
            &format!("L={l} one path, gated, segmented"),
        );
    }
}

#[test]
fn forward_f32_error_against_f64_oracle_at_moderate_size() {
    // The accuracy bar: f32 within 2e-6 (relative L2) of the f64 oracle.
    let mut r = rng(64);
    let p = Problem::new(
        &mut r,
        DType::F32,
        2,
        8,
        16,
        1,
        spec(&[700], presets::forward_1d()),
        false,
        true,
    );
    let err = p.check_forward(&ScanOptions::default(), "f32 accuracy");
    let precise = ScanOptions {
        fast_exp: Some(false),
        ..Default::default()
    };
    let err_precise = p.check_forward(&precise, "f32 accuracy, precise exp");
    eprintln!(
        "scan f32 forward relative L2 error vs f64 oracle: {err:e} (precise exp: {err_precise:e})"
    );
    // 2D paths through the tiled kernels.
    let p2 = Problem::new(
        &mut r,
        DType::F32,
        2,
        8,
        16,
        1,
        spec(&[20, 35], presets::cross2d()),
        true,
        true,
    );
    let err2 = p2.check_forward(&ScanOptions::default(), "f32 accuracy, tiled cross2d");
    eprintln!("scan f32 tiled cross2d forward relative L2 error vs f64 oracle: {err2:e}");
}

/// Forward through the tiled kernels, checking that they ran.
fn check_tiled(p: &Problem, opts: &ScanOptions, what: &str) {
    let (_, saved) = selective_scan_fwd(&p.inputs(), &p.spec, opts).unwrap();
    assert!(saved.plan().uses_tiles(), "{what}: tiled kernels not used");
    p.check_forward(opts, what);
}

#[test]
fn tiled_forward_matches_oracle() {
    let mut r = rng(67);
    let dev = device();
    eprintln!(
        "{dev}: f32 atomic add {}, f64 atomic add {}, {} bytes of shared memory per cube",
        dev.has_float_atomic_add(DType::F32),
        dev.has_float_atomic_add(DType::F64),
        dev.max_shared_memory()
    );
    let flipped = ScanPath::with_order(&[1, 0]).unwrap().flip_axis(1).unwrap();
    // (name, dtype, channels, N, groups, grid, paths, per-path Δ, gate, mean, tile, warps)
    type Case = (
        &'static str,
        DType,
        usize,
        usize,
        usize,
        Vec<usize>,
        Vec<ScanPath>,
        bool,
        bool,
        bool,
        [usize; 3],
        usize,
    );
    let cases: Vec<Case> = vec![
        (
            "cross2d N=1, partial tiles",
            DType::F32,
            4,
            1,
            1,
            vec![7, 11],
            presets::cross2d(),
            true,
            false,
            false,
            [1, 4, 8],
            2,
        ),
        (
            "cross2d N=4, gate, mean, groups",
            DType::F64,
            4,
            4,
            2,
            vec![6, 9],
            presets::cross2d(),
            false,
            true,
            true,
            [1, 2, 4],
            1,
        ),
        (
            "ABSS N=2",
            DType::F64,
            2,
            2,
            1,
            vec![3, 5, 4],
            presets::srma_abss(),
            true,
            false,
            false,
            [2, 2, 4],
            2,
        ),
        (
            "six orders N=16, gate",
            DType::F32,
            2,
            16,
            1,
            vec![3, 4, 5],
            presets::six_orders_3d(),
            false,
            true,
            false,
            [2, 2, 2],
            1,
        ),
        (
            "tri-orientated N=3",
            DType::F64,
            3,
            3,
            1,
            vec![4, 3, 5],
            presets::tri_orientated(),
            true,
            true,
            false,
            [1, 4, 2],
            1,
        ),
        (
            "snake and flips",
            DType::F64,
            2,
            1,
            1,
            vec![5, 6],
            vec![
                presets::snake_2d()[0].clone(),
                presets::snake_2d()[0].rev(),
                flipped.clone(),
                flipped.rev(),
            ],
            false,
            false,
            false,
            [1, 2, 8],
            2,
        ),
        (
            "tile larger than the grid",
            DType::F64,
            2,
            2,
            1,
            vec![3, 3],
            presets::cross2d(),
            true,
            false,
            false,
            [1, 8, 8],
            2,
        ),
        (
            "one-position tiles",
            DType::F64,
            2,
            2,
            1,
            vec![2, 3, 2],
            presets::six_orders_3d(),
            true,
            false,
            false,
            [1, 1, 1],
            2,
        ),
    ];
    for (name, dtype, channels, state, groups, grid, paths, dpp, gate, mean, tile, warps) in cases {
        let mut sp = spec(&grid, paths);
        if mean {
            sp = sp.mean();
        }
        let p = Problem::new(&mut r, dtype, 2, channels, state, groups, sp, dpp, gate);
        for plane in [false, true] {
            if plane && !(dev.has_plane_ops() && dev.plane_size() == 32) {
                continue;
            }
            let opts = ScanOptions {
                tiled: Some(true),
                tile: Some(tile),
                warps: Some(warps),
                plane: Some(plane),
                ..Default::default()
            };
            check_tiled(
                &p,
                &opts,
                &format!("{name} {dtype} tile {tile:?} plane={plane}"),
            );
        }
    }
    // Default tiles on a view of a 3D grid.
    let p = Problem::new(
        &mut r,
        DType::F32,
        1,
        4,
        1,
        1,
        spec(&[5, 6, 7], presets::cross2d_view([&[0], &[1, 2]])),
        true,
        false,
    );
    check_tiled(&p, &ScanOptions::default(), "cross2d view, default tiles");
    // The tiled kernels refuse what they cannot do.
    let p1 = Problem::new(
        &mut r,
        DType::F32,
        1,
        2,
        2,
        1,
        spec(&[9], presets::bidirectional()),
        false,
        false,
    );
    let forced = ScanOptions {
        tiled: Some(true),
        ..Default::default()
    };
    let e = selective_scan_fwd(&p1.inputs(), &p1.spec, &forced)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1D"), "{e}");
}

#[test]
fn scan_shape_errors_are_clear() {
    let mut r = rng(65);
    let p = Problem::new(
        &mut r,
        DType::F32,
        1,
        2,
        2,
        1,
        spec(&[8], presets::forward_1d()),
        false,
        false,
    );
    let mut x = p.inputs();
    let wrong = Tensor::zeros(&[1, 2, 9], DType::F32, &device()).unwrap();
    x.u = &wrong;
    let e = selective_scan_fwd(&x, &p.spec, &ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("u has shape [1, 2, 9]"), "{e}");
    let bad_spec = spec(&[2, 4], presets::forward_1d());
    let e = selective_scan_fwd(&p.inputs(), &bad_spec, &ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("path 0"), "{e}");
    let e = selective_scan_fwd(&p.inputs(), &spec(&[8], vec![]), &ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no scan paths"), "{e}");
}

#[test]
fn inputs_may_be_offset_views() {
    // A contiguous view that does not start at element 0 of its buffer (here B and C cut
    // out of one bigger tensor with size-1 leading axes) must be read from its offset.
    let mut r = rng(66);
    let p = Problem::new(
        &mut r,
        DType::F64,
        1,
        2,
        3,
        1,
        spec(&[9], presets::forward_1d()),
        true,
        false,
    );
    let want = selective_scan_ref(&p.host, &p.spec).unwrap();
    let l = 9;
    let mut packed = p.host.u.iter().take(3).copied().collect::<Vec<f64>>(); // padding in front
    packed.extend(&p.host.b);
    packed.extend(&p.host.c);
    let big = Tensor::from_f64(&packed, &[packed.len()], DType::F64, &device()).unwrap();
    let n = 3 * l;
    let b = big
        .narrow(0, 3, n)
        .unwrap()
        .reshape(&[1, 1, 1, 3, l])
        .unwrap();
    let c = big
        .narrow(0, 3 + n, n)
        .unwrap()
        .reshape(&[1, 1, 1, 3, l])
        .unwrap();
    assert!(b.offset() > 0 && b.is_contiguous());
    let mut x = p.inputs();
    x.b = &b;
    x.c = &c;
    let (out, _) = selective_scan_fwd(&x, &p.spec, &ScanOptions::default()).unwrap();
    assert_close(
        "offset views",
        &out.to_f64_vec().unwrap(),
        &want,
        1e-10,
        1e-12,
    );
}

/// All gradients of one backward, as host vectors (u, Δ, A, B, C, D, bias, [z]).
fn grads_of(p: &Problem, tensors: &[Tensor], opts: &ScanOptions) -> Vec<Vec<f64>> {
    let x = ScanInputs {
        u: &tensors[0],
        delta: &tensors[1],
        a: &tensors[2],
        b: &tensors[3],
        c: &tensors[4],
        d: &tensors[5],
        delta_bias: &tensors[6],
        z: tensors.get(7),
    };
    let (out, saved) = selective_scan_fwd(&x, &p.spec, opts).unwrap();
    let dout = out.ones_like().unwrap();
    let g = selective_scan_bwd(&x, &p.spec, &saved, &dout).unwrap();
    let mut v = vec![g.u, g.delta, g.a, g.b, g.c, g.d, g.delta_bias];
    v.extend(g.z);
    v.iter().map(|t| t.to_f64_vec().unwrap()).collect()
}

#[test]
fn backward_f32_matches_f64_with_and_without_atomics() {
    // The f64 gradchecks cover the math; this covers the f32 kernels, in particular the
    // float-atomic dB/dC sums where the device has them only for f32 (lavapipe).
    let mut r = rng(68);
    let dev = device();
    let cases: Vec<(&str, Vec<usize>, Vec<ScanPath>, ScanOptions)> = vec![
        (
            "1D one path, gated",
            vec![300],
            presets::forward_1d(),
            ScanOptions::default(),
        ),
        (
            "2D chunked",
            vec![6, 7],
            presets::cross2d(),
            ScanOptions {
                tiled: Some(false),
                ..Default::default()
            },
        ),
        (
            "2D tiled",
            vec![6, 7],
            presets::cross2d(),
            ScanOptions {
                tiled: Some(true),
                tile: Some([1, 4, 4]),
                ..Default::default()
            },
        ),
    ];
    for (name, grid, paths, opts) in cases {
        let p = Problem::new(
            &mut r,
            DType::F32,
            2,
            4,
            4,
            2,
            spec(&grid, paths),
            true,
            true,
        );
        let h = &p.host;
        let l: usize = grid.iter().product();
        let k = p.spec.paths.len();
        let up = |v: &[f64], s: &[usize]| Tensor::from_f64(v, s, DType::F64, &dev).unwrap();
        let t64 = vec![
            up(&h.u, &[2, 4, l]),
            up(&h.delta, &[2, k, 4, l]),
            up(&h.a, &[k, 4, 4]),
            up(&h.b, &[2, k, 2, 4, l]),
            up(&h.c, &[2, k, 2, 4, l]),
            up(&h.d, &[k, 4]),
            up(&h.delta_bias, &[k, 4]),
            up(h.z.as_ref().unwrap(), &[2, 4, l]),
        ];
        let want = grads_of(
            &p,
            &t64,
            &ScanOptions {
                atomics: Some(false),
                ..opts
            },
        );
        let mut choices = vec![Some(false)];
        if dev.has_float_atomic_add(DType::F32) {
            choices.push(Some(true));
        }
        for atomics in choices {
            let o = ScanOptions { atomics, ..opts };
            let got = grads_of(&p, &p.tensors, &o);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = rel_l2(g, w);
                assert!(
                    g.iter().all(|v| v.is_finite()) && err <= 2e-5,
                    "{name} atomics={atomics:?}: gradient {i} relative L2 error {err:e}"
                );
            }
        }
    }
}
