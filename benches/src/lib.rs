//! Shared helpers of the ssm benchmarks: device selection, problem sizes scaled to the
//! device, and timing that batches launches before one synchronisation.

use std::time::{Duration, Instant};

use ssm_runtime::{Device, DeviceKind};

/// The device under benchmark (printed once).
pub fn device() -> Device {
    let d = Device::from_env().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("ssm benches: device {d}");
    d
}

/// Whether the device is a real GPU (CUDA) rather than Vulkan, which in CI is a CPU.
pub fn is_gpu(d: &Device) -> bool {
    d.kind() == DeviceKind::Cuda
}

/// Time `iters` runs of `f` with one device synchronisation at the end, after a warm-up
/// run (which also compiles the kernels). Device work is asynchronous, so the total over
/// many launches divided by the runs is the per-run time without the sync latency. When
/// criterion asks for only a few runs (it does when its warm-up is slow), at least
/// [`MIN_BATCH`] worth of runs are timed and the result scaled back to `iters`: a single
/// unbatched run would add the launch and sync latency (~0.1 ms on an H200) to the time.
///
/// With `SSM_BENCH_HOST=1` every call also prints the host time per run spent queueing the
/// work (before the final sync) and the kernels launched per run: a host time close to
/// the total means the host, not the device, bounds the measurement.
pub fn time_batched(device: &Device, iters: u64, mut f: impl FnMut()) -> Duration {
    let warm = Instant::now();
    f();
    device.sync().expect("device sync");
    let one = warm.elapsed().max(Duration::from_micros(1));
    let runs = iters
        .max((MIN_BATCH.as_secs_f64() / one.as_secs_f64()).ceil() as u64)
        .min(iters.max(1000));
    let launches = ssm_runtime::launch_count();
    let start = Instant::now();
    for _ in 0..runs {
        f();
    }
    let queued = start.elapsed();
    device.sync().expect("device sync");
    let total = start.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / runs as f64;
    if host_report() {
        eprintln!(
            "ssm benches: {runs} runs, {:.1} us each, host {:.1} us each, {:.1} launches each",
            per(total),
            per(queued),
            (ssm_runtime::launch_count() - launches) as f64 / runs as f64
        );
    }
    Duration::from_secs_f64(total.as_secs_f64() * iters as f64 / runs as f64)
}

/// Device time one timed batch covers at least.
pub const MIN_BATCH: Duration = Duration::from_millis(20);

/// Whether `SSM_BENCH_HOST=1` asks for host-time reports (read once).
fn host_report() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SSM_BENCH_HOST").is_ok_and(|v| v == "1"))
}
