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
