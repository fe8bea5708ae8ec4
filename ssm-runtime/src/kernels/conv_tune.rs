//! `SSM_CONV_TUNE`: overrides of the pipelined convolution kernels' tile rules, for tuning
//! sweeps on a GPU without a build per setting.
//!
//! The value is a comma-separated list of `key=value` (whole numbers), read once:
//!
//! | key | overrides | rule it replaces |
//! | --- | --- | --- |
//! | `fwd.warps_m` | warps along the positions (forward / backward-data) | `tile_for` |
//! | `fwd.frags_m` | segments a warp | `balanced` |
//! | `fwd.warps_n` | warps along the dst channels (at most 32 warps a cube in all) | `pipe_tile` |
//! | `fwd.frags_n` | 8-channel accumulator blocks a warp | `pipe_tile` |
//! | `fwd.slots` | stage slots | `stage_slots` |
//! | `fwd.bk` | reduced channels a stage (16, 32, 48 or 64) | `reduce_depth` |
//! | `fwd.split_target` | cubes below which the taps split | `split_target` |
//! | `fwd.h_loop` | 1: a rows halo's taps along h in a run-time loop; 0: unrolled | `h_tap_loop` |
//! | `fwd.h_taps` | taps along h a stage holds: 1, or the kernel height (one halo of the src rows all of them read) where the tile allows | `rows_halo_taps` |
//! | `fwd.producers` | warps of the cube that only copy (0: every warp copies and multiplies; at most 8) | `producer_warps` |
//! | `fwd.copies` | how a thread's copies of a stage are issued: 0 each decoded from its index and guarded; 1 weight rows stepped and only a partial last round guarded; 2 as 1, and no zero-fill form for the weights where the tile covers them whole (else as 1); 3 as 2, each weight row placed at compile time where the tile's dst channels are a multiple of the step (else as 2) | `gemm`: 2 with producer warps, else 0 |
//! | `wgrad.ks` | segments a weight-gradient stage | `stage_segments` |
//! | `wgrad.warps_m` | warps along the dst channels of a weight-gradient tile (its 16-row blocks spread over them) | `wgrad_tile` |
//! | `wgrad.frags_m` | 16-row blocks a weight-gradient warp (after `wgrad.warps_m`: the tile then spans `warps_m · frags_m · 16` dst channels; at most 3) | `wgrad_tile` |
//! | `wgrad.cc` | input channels a weight-gradient tile (16, 32, 48 or 64) | `wgrad_tile` |
//! | `wgrad.slots` | weight-gradient stage slots | `stage_slots` |
//! | `wgrad.producers` | weight-gradient warps of the cube that only copy (0: every warp copies and multiplies; at most 8) | `conv_pipe_wgrad::producer_warps` |
//! | `wgrad.target` | cubes the row splits aim for | `wave_filling_cubes` (512 on Vulkan) |
//! | `wgrad.h_taps` | taps along h a weight-gradient cube takes: 1, or the kernel height (a stage's x rows serve all of them) where the tile allows (`conv_pipe_wgrad::h_taps_fit`) | `conv_pipe_wgrad::h_taps_stage_rows` |
//!
//! e.g. `SSM_CONV_TUNE=wgrad.ks=4,wgrad.target=256`. Unset, the rules hold. A tile the
//! device cannot hold is refused with a panic rather than left to another kernel, so a
//! sweep never times something other than it asked for. Settings outside the rules are
//! not covered by the GPU tests: adopt one as a rule, with its tests, before relying on it.
//!
//! `SSM_CONV_PROBE` bounds what a faster half of the pipelined kernels could buy, and makes
//! their results **wrong**: `no_copies` leaves out the global → shared copies (the
//! products read whatever the stage slots hold; what is left is the consumer and the
//! barriers), `no_mma` the fragment loads and products (the producer and the barriers).
//! A timing tool for sweeps only; the process says so on stderr once.

use std::sync::OnceLock;

/// The overrides (`None`: the rule decides).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvTune {
    pub fwd_warps_m: Option<usize>,
    pub fwd_frags_m: Option<usize>,
    pub fwd_warps_n: Option<usize>,
    pub fwd_frags_n: Option<usize>,
    pub fwd_slots: Option<usize>,
    pub fwd_bk: Option<usize>,
    pub fwd_split_target: Option<usize>,
    pub fwd_h_taps: Option<usize>,
    pub fwd_h_loop: Option<usize>,
    pub fwd_producers: Option<usize>,
    pub fwd_copies: Option<usize>,
    pub wgrad_ks: Option<usize>,
    pub wgrad_warps_m: Option<usize>,
    pub wgrad_frags_m: Option<usize>,
    pub wgrad_cc: Option<usize>,
    pub wgrad_slots: Option<usize>,
    pub wgrad_target: Option<usize>,
    pub wgrad_producers: Option<usize>,
    pub wgrad_h_taps: Option<usize>,
}

const KEYS: &str = "fwd.warps_m, fwd.frags_m, fwd.warps_n, fwd.frags_n, fwd.slots, fwd.bk, fwd.split_target, \
                    fwd.h_taps, fwd.h_loop, fwd.producers, fwd.copies, wgrad.ks, wgrad.warps_m, wgrad.frags_m, wgrad.cc, wgrad.slots, wgrad.target, wgrad.producers, wgrad.h_taps";

impl ConvTune {
    /// Parse `key=value,...`; an empty string overrides nothing.
    pub(crate) fn parse(text: &str) -> Result<ConvTune, String> {
        let mut t = ConvTune::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not key=value"))?;
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("`{item}`: the value must be a whole number"))?;
            // The kernels' limits: four slot barriers (one slot cannot overlap a copy with
            // its reads), 32 warps a cube ([`check_warps`] checks the product), registers
            // for four 16-row or twelve 8-channel accumulator blocks a warp.
            let (slot, max) = match key.trim() {
                "fwd.warps_m" => (&mut t.fwd_warps_m, 16),
                "fwd.frags_m" => (&mut t.fwd_frags_m, 4),
                "fwd.warps_n" => (&mut t.fwd_warps_n, 8),
                "fwd.frags_n" => (&mut t.fwd_frags_n, 12),
                "fwd.slots" => (&mut t.fwd_slots, 4),
                "fwd.bk" => (&mut t.fwd_bk, 64),
                "fwd.split_target" => (&mut t.fwd_split_target, usize::MAX),
                "fwd.h_taps" => (&mut t.fwd_h_taps, 7),
                "fwd.h_loop" => (&mut t.fwd_h_loop, 1),
                "fwd.producers" => (&mut t.fwd_producers, 8),
                "fwd.copies" => (&mut t.fwd_copies, 3),
                "wgrad.ks" => (&mut t.wgrad_ks, 16),
                "wgrad.warps_m" => (&mut t.wgrad_warps_m, 8),
                "wgrad.frags_m" => (&mut t.wgrad_frags_m, 3),
                "wgrad.cc" => (&mut t.wgrad_cc, 64),
                "wgrad.slots" => (&mut t.wgrad_slots, 4),
                "wgrad.target" => (&mut t.wgrad_target, usize::MAX),
                "wgrad.producers" => (&mut t.wgrad_producers, 8),
                "wgrad.h_taps" => (&mut t.wgrad_h_taps, 7),
                other => return Err(format!("unknown key `{other}` (known: {KEYS})")),
            };
            let min = match key.trim() {
                k if k.ends_with(".slots") => 2,
                "fwd.h_loop" | "fwd.producers" | "fwd.copies" | "wgrad.producers" => 0,
                _ => 1,
            };
            if !(min..=max).contains(&n) {
                return Err(format!("`{item}`: the value must lie in {min}..={max}"));
            }
            if matches!(key.trim(), "wgrad.cc" | "fwd.bk") && !n.is_multiple_of(16) {
                return Err(format!("`{item}`: the value must be a multiple of 16"));
            }
            *slot = Some(n);
        }
        Ok(t)
    }

    /// Whether anything is overridden.
    pub(crate) fn active(&self) -> bool {
        *self != ConvTune::default()
    }
}

/// The process's overrides from `SSM_CONV_TUNE` (read once; a malformed value panics with
/// what is wrong, since a sweep must not run on a setting it did not ask for).
pub(crate) fn conv_tune() -> &'static ConvTune {
    static TUNE: OnceLock<ConvTune> = OnceLock::new();
    TUNE.get_or_init(|| match std::env::var("SSM_CONV_TUNE") {
        Ok(v) => ConvTune::parse(&v).unwrap_or_else(|e| panic!("SSM_CONV_TUNE: {e}")),
        Err(_) => ConvTune::default(),
    })
}

/// [`conv_probe`]: the pipelined kernels as built.
pub(crate) const PROBE_OFF: u32 = 0;
/// [`conv_probe`]: no global → shared copies.
pub(crate) const PROBE_NO_COPIES: u32 = 1;
/// [`conv_probe`]: no fragment loads or products.
pub(crate) const PROBE_NO_MMA: u32 = 2;

/// Parse an `SSM_CONV_PROBE` value.
fn parse_probe(text: &str) -> Result<u32, String> {
    match text.trim() {
        "" | "off" => Ok(PROBE_OFF),
        "no_copies" => Ok(PROBE_NO_COPIES),
        "no_mma" => Ok(PROBE_NO_MMA),
        other => Err(format!("`{other}` (known: off, no_copies, no_mma)")),
    }
}

/// The process's `SSM_CONV_PROBE` (read once, see the module docs; a malformed value
/// panics, an active one is announced on stderr).
pub(crate) fn conv_probe() -> u32 {
    static PROBE: OnceLock<u32> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let Ok(v) = std::env::var("SSM_CONV_PROBE") else {
            return PROBE_OFF;
        };
        let probe = parse_probe(&v).unwrap_or_else(|e| panic!("SSM_CONV_PROBE: {e}"));
        if probe != PROBE_OFF {
            eprintln!(
                "SSM_CONV_PROBE={}: the pipelined convolution kernels return wrong results \
                 (a timing bound)",
                v.trim()
            );
        }
        probe
    })
}

/// Refuse an overridden tile that needs `bytes` of shared memory where the device has
/// `max`: with the rules' tiles the caller would quietly take another kernel.
pub(crate) fn check_fits(what: &str, bytes: usize, max: usize) {
    if conv_tune().active() && bytes > max {
        panic!(
            "SSM_CONV_TUNE: the {what} tile needs {bytes} bytes of shared memory, the device \
             has {max}"
        );
    }
}

/// Refuse an overridden tile of more than 32 warps (1024 threads, a cube's limit).
pub(crate) fn check_warps(what: &str, warps: usize) {
    if warps > 32 {
        panic!("SSM_CONV_TUNE: the {what} tile has {warps} warps, a cube holds at most 32");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_by_name() {
        assert_eq!(parse_probe(""), Ok(PROBE_OFF));
        assert_eq!(parse_probe("off"), Ok(PROBE_OFF));
        assert_eq!(parse_probe(" no_copies "), Ok(PROBE_NO_COPIES));
        assert_eq!(parse_probe("no_mma"), Ok(PROBE_NO_MMA));
        let e = parse_probe("1").unwrap_err();
        assert!(e.contains("no_copies") && e.contains("`1`"), "{e}");
    }

    #[test]
    fn parses_overrides_and_refuses_what_it_cannot_use() {
        assert_eq!(ConvTune::parse("").unwrap(), ConvTune::default());
        assert!(!ConvTune::parse(" , ").unwrap().active());
        let t = ConvTune::parse("wgrad.ks=4, wgrad.target=256,fwd.frags_m=3").unwrap();
        assert_eq!(
            t,
            ConvTune {
                wgrad_ks: Some(4),
                wgrad_target: Some(256),
                fwd_frags_m: Some(3),
                ..ConvTune::default()
            }
        );
        assert!(t.active());
        let e = ConvTune::parse("wgrad.kz=4").unwrap_err();
        assert!(
            e.contains("unknown key `wgrad.kz`") && e.contains("wgrad.ks"),
            "{e}"
        );
        let e = ConvTune::parse("wgrad.cc=24").unwrap_err();
        assert!(e.contains("multiple of 16"), "{e}");
        assert_eq!(ConvTune::parse("wgrad.cc=48").unwrap().wgrad_cc, Some(48));
        assert_eq!(ConvTune::parse("fwd.h_taps=3").unwrap().fwd_h_taps, Some(3));
        assert_eq!(ConvTune::parse("fwd.h_loop=1").unwrap().fwd_h_loop, Some(1));
        assert_eq!(
            ConvTune::parse("wgrad.warps_m=4").unwrap().wgrad_warps_m,
            Some(4)
        );
        let t = ConvTune::parse("wgrad.warps_m=3,wgrad.frags_m=2").unwrap();
        assert_eq!((t.wgrad_warps_m, t.wgrad_frags_m), (Some(3), Some(2)));
        assert_eq!(ConvTune::parse("fwd.bk=16").unwrap().fwd_bk, Some(16));
        let t = ConvTune::parse("fwd.warps_n=4,fwd.frags_n=3").unwrap();
        assert_eq!((t.fwd_warps_n, t.fwd_frags_n), (Some(4), Some(3)));
        let e = ConvTune::parse("fwd.bk=8").unwrap_err();
        assert!(e.contains("multiple of 16"), "{e}");
        let e = ConvTune::parse("fwd.slots").unwrap_err();
        assert!(e.contains("not key=value"), "{e}");
        for bad in ["fwd.slots=-1", "fwd.slots=two", "fwd.h_loop=yes"] {
            let e = ConvTune::parse(bad).unwrap_err();
            assert!(e.contains("whole number"), "{bad}: {e}");
        }
        assert_eq!(ConvTune::parse("fwd.h_loop=0").unwrap().fwd_h_loop, Some(0));
        assert_eq!(
            ConvTune::parse("fwd.producers=4").unwrap().fwd_producers,
            Some(4)
        );
        assert!(ConvTune::parse("fwd.producers=9").is_err());
        assert_eq!(ConvTune::parse("fwd.copies=0").unwrap().fwd_copies, Some(0));
        assert!(ConvTune::parse("fwd.copies=4").is_err());
        assert_eq!(
            ConvTune::parse("wgrad.producers=2")
                .unwrap()
                .wgrad_producers,
            Some(2)
        );
        assert!(ConvTune::parse("wgrad.producers=9").is_err());
        assert_eq!(
            ConvTune::parse("wgrad.h_taps=3").unwrap().wgrad_h_taps,
            Some(3)
        );
        assert!(ConvTune::parse("wgrad.h_taps=0").is_err());
        for bad in [
            "fwd.slots=0",
            "fwd.bk=0",
            "fwd.slots=1",
            "wgrad.slots=5",
            "fwd.frags_m=5",
            "fwd.warps_m=17",
            "fwd.warps_n=9",
            "fwd.frags_n=13",
            "fwd.h_taps=8",
            "fwd.h_loop=2",
            "wgrad.warps_m=9",
            "wgrad.frags_m=4",
            "wgrad.frags_m=0",
        ] {
            let e = ConvTune::parse(bad).unwrap_err();
            assert!(e.contains("must lie in"), "{bad}: {e}");
        }
        assert_eq!(
            ConvTune::parse("wgrad.slots=2,fwd.warps_m=16").unwrap(),
            ConvTune {
                wgrad_slots: Some(2),
                fwd_warps_m: Some(16),
                ..ConvTune::default()
            }
        );
    }
}
