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
/// many launches divided by `iters` is the per-run time without the sync latency.
pub fn time_batched(device: &Device, iters: u64, mut f: impl FnMut()) -> Duration {
    f();
    device.sync().expect("device sync");
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    device.sync().expect("device sync");
    start.elapsed()
}
