//! The DSL's block library directly (the macro-generated tests cover the declarations).

use ssm::dsl::block::{BlockConfig, Views};
use ssm::dsl::check_block;
use ssm::dsl::mixer::{LocalConv, MixerConfig, MultiScale, Naming, PerPath};
use ssm::runtime::scan::{ScanPath, presets};

#[test]
fn vmamba_ss2d_gradcheck() {
    let cfg = MixerConfig::new(8, 1, presets::cross2d());
    check_block(
        "ss2d",
        BlockConfig {
            mixer: cfg,
            views: Views::Single,
        },
        &[3, 4],
    );
}

#[test]
fn vim_bidirectional_gradcheck() {
    let mut cfg = MixerConfig::new(8, 4, presets::bidirectional());
    cfg.conv = LocalConv::Causal1d(4);
    cfg.conv_bias = true;
    cfg.gate = true;
    cfg.out_norm = false;
    cfg.naming = Naming::Mamba;
    cfg.per_path = PerPath {
        conv: true,
        x_proj: true,
        dt_proj: true,
        a: true,
        d: true,
    };
    check_block(
        "vim",
        BlockConfig {
            mixer: cfg,
            views: Views::Single,
        },
        &[7],
    );
}

#[test]
fn abss_gradcheck() {
    let cfg = MixerConfig::new(4, 1, presets::cross2d());
    check_block(
        "abss",
        BlockConfig {
            mixer: cfg,
            views: Views::Abss,
        },
        &[2, 3, 2],
    );
}

#[test]
fn dms_gradcheck() {
    let mut cfg = MixerConfig::new(4, 1, {
        let row = ScanPath::raster(2);
        let col = ScanPath::with_order(&[1, 0]).unwrap();
        vec![row.clone(), row.rev(), col.clone(), col.rev()]
    });
    cfg.multi_scale = Some(MultiScale {
        full_paths: 1,
        stride: 2,
        kernel: 7,
    });
    check_block(
        "dms",
        BlockConfig {
            mixer: cfg,
            views: Views::Single,
        },
        &[4, 5],
    );
}

#[test]
fn abss_parameters_match_the_official_srma_checkpoint() {
    // `attention1.st_block1.1.op.*` of the official SRMA-Mamba state dict (embed width 16,
    // Di = 32), from shared/reference/srma-state-dict.md.
    let official: &[(&str, &[usize])] = &[
        ("A_logs", &[128, 1]),
        ("Ds", &[128]),
        ("conv2d.weight", &[32, 1, 3, 3]),
        ("dt_projs_bias", &[4, 32]),
        ("dt_projs_weight", &[4, 32, 1]),
        ("in_proj.weight", &[32, 16]),
        ("out_norm.bias", &[32]),
        ("out_norm.weight", &[32]),
        ("out_proj.weight", &[16, 32]),
        ("x_proj_weight", &[4, 3, 32]),
    ];
    let cfg = BlockConfig {
        mixer: MixerConfig::new(16, 1, presets::cross2d()),
        views: Views::Abss,
    };
    let block =
        ssm::dsl::Block::new(cfg, &ssm::runtime::testing::device(), ssm::DType::F32, 1).unwrap();
    let mut ours: Vec<(String, Vec<usize>)> = block
        .params()
        .iter()
        .map(|p| (p.name().to_string(), p.value().shape().to_vec()))
        .collect();
    ours.sort();
    let mut want: Vec<(String, Vec<usize>)> = ["sd", "sh", "sw"]
        .iter()
        .flat_map(|v| {
            official
                .iter()
                .map(move |(n, s)| (format!("{v}.{n}"), s.to_vec()))
        })
        .collect();
    want.sort();
    assert_eq!(ours, want);
}

#[test]
fn parameters_round_trip_through_safetensors() {
    let d = ssm::runtime::testing::device();
    let cfg = BlockConfig {
        mixer: MixerConfig::new(8, 2, presets::cross2d()),
        views: Views::Single,
    };
    let a = ssm::dsl::Block::new(cfg.clone(), &d, ssm::DType::F32, 1).unwrap();
    let b = ssm::dsl::Block::new(cfg, &d, ssm::DType::F32, 2).unwrap();
    let dir = std::env::temp_dir().join(format!("ssm-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    a.params().save(&path).unwrap();
    assert!(b.params().load(&path).unwrap().is_empty());
    for (pa, pb) in a.params().iter().zip(b.params().iter()) {
        assert_eq!(
            pa.value().to_f64_vec().unwrap(),
            pb.value().to_f64_vec().unwrap(),
            "{}",
            pa.name()
        );
    }
    // A shape mismatch is an error naming the parameter.
    let other = ssm::dsl::Block::new(
        BlockConfig {
            mixer: MixerConfig::new(4, 2, presets::cross2d()),
            views: Views::Single,
        },
        &d,
        ssm::DType::F32,
        1,
    )
    .unwrap();
    let e = other.params().load(&path).unwrap_err().to_string();
    assert!(e.contains("in_proj.weight") && e.contains("shape"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
