//! f64 gradient checks of the fused selective scan for every input, across path sets,
//! gates, merges, groups, per-path Δ, segments and chunk sizes.

use ssm_autodiff::{GradcheckOptions, ScanVars, Var, gradcheck, selective_scan_with};
use ssm_runtime::scan::{ScanOptions, ScanPath, ScanSpec, presets};
use ssm_runtime::testing::{HostRng, device};
use ssm_runtime::{DType, Tensor};

struct Case {
    name: &'static str,
    batch: usize,
    channels: usize,
    state: usize,
    groups: usize,
    spec: ScanSpec,
    delta_per_path: bool,
    gate: bool,
    opts: ScanOptions,
}

fn inputs(r: &mut HostRng, c: &Case) -> Vec<Tensor> {
    let l: usize = c.spec.grid.iter().product();
    let k = c.spec.paths.len();
    let dev = device();
    let t = |v: Vec<f64>, s: &[usize]| Tensor::from_f64(&v, s, DType::F64, &dev).unwrap();
    let (b, di, n, g) = (c.batch, c.channels, c.state, c.groups);
    let delta_shape = if c.delta_per_path {
        vec![b, k, di, l]
    } else {
        vec![b, di, l]
    };
    let nd: usize = delta_shape.iter().product();
    let mut v = vec![
        t(r.vec(b * di * l, -1.0, 1.0), &[b, di, l]),
        t(r.vec(nd, -2.0, 0.5), &delta_shape),
        t(
            (0..k * di * n)
                .map(|_| -r.uniform(-1.0, 0.5).exp())
                .collect(),
            &[k, di, n],
        ),
        t(r.vec(b * k * g * n * l, -1.0, 1.0), &[b, k, g, n, l]),
        t(r.vec(b * k * g * n * l, -1.0, 1.0), &[b, k, g, n, l]),
        t(r.vec(k * di, -1.0, 1.0), &[k, di]),
        t(r.vec(k * di, -1.0, 0.5), &[k, di]),
    ];
    if c.gate {
        v.push(t(r.vec(b * di * l, -2.0, 2.0), &[b, di, l]));
    }
    v
}

fn check(c: &Case, salt: u64) {
    let mut r = HostRng::new(0x5ca0 ^ salt);
    let xs = inputs(&mut r, c);
    let f = |v: &[Var]| {
        let x = ScanVars {
            u: &v[0],
            delta: &v[1],
            a: &v[2],
            b: &v[3],
            c: &v[4],
            d: &v[5],
            delta_bias: &v[6],
            z: v.get(7),
        };
        selective_scan_with(x, &c.spec, &c.opts)
    };
    let opts = GradcheckOptions {
        elementwise_max: 48,
        directions: 2,
        salt,
        ..Default::default()
    };
    gradcheck(f, &xs, &opts).unwrap().assert_passed(c.name);
}

fn spec(grid: &[usize], paths: Vec<ScanPath>) -> ScanSpec {
    ScanSpec::new(grid, paths)
}

#[test]
fn gradcheck_bidirectional_gated_per_path_delta() {
    let c = Case {
        name: "1D bidirectional, N=2, gate, per-path delta",
        batch: 2,
        channels: 2,
        state: 2,
        groups: 1,
        spec: spec(&[9], presets::bidirectional()),
        delta_per_path: true,
        gate: true,
        opts: ScanOptions::default(),
    };
    check(&c, 1);
}

#[test]
fn gradcheck_cross2d_mean_groups() {
    let c = Case {
        name: "cross2d 3x4, N=1, mean, 2 groups",
        batch: 1,
        channels: 4,
        state: 1,
        groups: 2,
        spec: spec(&[3, 4], presets::cross2d()).mean(),
        delta_per_path: false,
        gate: false,
        opts: ScanOptions::default(),
    };
    check(&c, 2);
}

#[test]
fn gradcheck_3d_paths_with_segments_and_small_chunks() {
    // items = 1 gives 32-step chunks; segments of 32 steps split the 45-step sequence.
    let paths = vec![
        presets::srma_abss()[1].clone(),
        presets::srma_abss()[10].clone(),
        presets::six_orders_3d()[7].clone(),
    ];
    let c = Case {
        name: "3D paths, N=3, segments, items=1",
        batch: 1,
        channels: 2,
        state: 3,
        groups: 1,
        spec: spec(&[3, 5, 3], paths),
        delta_per_path: false,
        gate: true,
        opts: ScanOptions {
            items: Some(1),
            segment_len: Some(32),
            warps: Some(1),
            tiled: Some(false),
            ..Default::default()
        },
    };
    check(&c, 3);
}

#[test]
fn gradcheck_strided_and_snake_paths() {
    let paths = vec![
        ScanPath::raster(2).with_scale(2).unwrap(),
        ScanPath::raster(2).snake().rev(),
    ];
    let c = Case {
        name: "strided + snake",
        batch: 1,
        channels: 2,
        state: 2,
        groups: 1,
        spec: spec(&[5, 4], paths),
        delta_per_path: true,
        gate: false,
        opts: ScanOptions::default(),
    };
    check(&c, 4);
}

#[test]
fn gradcheck_plane_path_where_available() {
    let d = device();
    if !(d.has_plane_ops() && d.plane_size() == 32) {
        eprintln!(
            "skipping the plane-shuffle gradcheck: {d} has no 32-wide plane operations (the shared-memory path is checked above)"
        );
        return;
    }
    let c = Case {
        name: "plane shuffles, cross2d, N=4, gate",
        batch: 2,
        channels: 2,
        state: 4,
        groups: 1,
        spec: spec(&[4, 5], presets::cross2d()),
        delta_per_path: true,
        gate: true,
        opts: ScanOptions {
            plane: Some(true),
            segment_len: Some(64),
            items: Some(1),
            tiled: Some(false),
            ..Default::default()
        },
    };
    check(&c, 5);
    let t = Case {
        name: "plane shuffles, tiled cross2d, N=2, gate",
        state: 2,
        opts: ScanOptions {
            plane: Some(true),
            tiled: Some(true),
            tile: Some([1, 2, 4]),
            ..Default::default()
        },
        ..c
    };
    check(&t, 6);
}

/// Float atomics where the device has them for f64, and the partial sums.
fn atomic_choices() -> Vec<Option<bool>> {
    let mut v = vec![Some(false)];
    if device().has_float_atomic_add(DType::F64) {
        v.push(Some(true));
    }
    v
}

#[test]
fn gradcheck_cross2d_chunked() {
    let c = Case {
        name: "cross2d 3x4 chunked, N=2, mean, 2 groups",
        batch: 1,
        channels: 4,
        state: 2,
        groups: 2,
        spec: spec(&[3, 4], presets::cross2d()).mean(),
        delta_per_path: true,
        gate: true,
        opts: ScanOptions {
            tiled: Some(false),
            ..Default::default()
        },
    };
    check(&c, 7);
}

#[test]
fn gradcheck_tiled_per_path_delta_gate() {
    for (i, atomics) in atomic_choices().into_iter().enumerate() {
        let c = Case {
            name: "tiled cross2d 3x5, N=2, per-path delta, gate, mean, 2 warps",
            batch: 2,
            channels: 2,
            state: 2,
            groups: 1,
            spec: spec(&[3, 5], presets::cross2d()).mean(),
            delta_per_path: true,
            gate: true,
            opts: ScanOptions {
                tiled: Some(true),
                tile: Some([1, 2, 4]),
                warps: Some(2),
                atomics,
                ..Default::default()
            },
        };
        check(&c, 8 + i as u64);
    }
}

#[test]
fn gradcheck_tiled_3d_shared_delta() {
    let paths = vec![
        presets::srma_abss()[1].clone(),
        presets::srma_abss()[6].clone(),
        presets::tri_orientated()[2].clone(),
        ScanPath::with_order(&[2, 0, 1])
            .unwrap()
            .snake()
            .flip_axis(0)
            .unwrap()
            .rev(),
    ];
    let c = Case {
        name: "tiled 3D paths, N=3, shared delta, groups, partial tiles",
        batch: 1,
        channels: 4,
        state: 3,
        groups: 2,
        spec: spec(&[3, 2, 5], paths),
        delta_per_path: false,
        gate: false,
        opts: ScanOptions {
            tiled: Some(true),
            tile: Some([2, 2, 2]),
            warps: Some(2),
            atomics: Some(false),
            ..Default::default()
        },
    };
    check(&c, 10);
}

#[test]
fn gradcheck_one_path_fused_gate_segments() {
    for (i, atomics) in atomic_choices().into_iter().enumerate() {
        let c = Case {
            name: "1D one path, N=2, gate fused, 2 segments, precise exp",
            batch: 2,
            channels: 2,
            state: 2,
            groups: 1,
            spec: spec(&[45], presets::forward_1d()),
            delta_per_path: false,
            gate: true,
            opts: ScanOptions {
                items: Some(1),
                segment_len: Some(32),
                atomics,
                fast_exp: Some(false),
                ..Default::default()
            },
        };
        check(&c, 11 + i as u64);
    }
    let strided = Case {
        name: "one strided path, gate",
        batch: 1,
        channels: 2,
        state: 1,
        groups: 1,
        spec: spec(
            &[5, 4],
            vec![ScanPath::raster(2).with_scale(2).unwrap().rev()],
        ),
        delta_per_path: true,
        gate: true,
        opts: ScanOptions::default(),
    };
    check(&strided, 13);
}

#[test]
fn gradcheck_single_path() {
    for (per_path, gate) in [(false, false), (true, false), (true, true)] {
        let c = Case {
            name: "1D single path",
            batch: 1,
            channels: 2,
            state: 4,
            groups: 1,
            spec: spec(&[7], presets::forward_1d()),
            delta_per_path: per_path,
            gate,
            opts: ScanOptions::default(),
        };
        check(&c, 6);
    }
}
