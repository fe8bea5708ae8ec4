//! Compute devices: selection by `SSM_DEVICE`, the CubeCL client behind each, and the
//! per-thread launch counter.
//!
//! `SSM_DEVICE=cuda|vulkan|auto` (default `auto`: CUDA when a driver loads and reports a
//! GPU, otherwise Vulkan, which on a machine without a GPU is Mesa's lavapipe).

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, OnceLock};

use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

use crate::error::{Error, Result};

/// Which runtime a [`Device`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// NVIDIA GPU through CubeCL's CUDA runtime (kernels compiled by NVRTC).
    Cuda,
    /// Any Vulkan device through wgpu with the SPIR-V compiler (lavapipe on CPU-only hosts).
    Vulkan,
}

/// The CubeCL client of a device. Kernel launch helpers are generic over the runtime and
/// are instantiated once per arm by [`dispatch!`](crate::dispatch).
#[derive(Clone)]
pub enum Backend {
    /// wgpu / Vulkan / SPIR-V.
    Vulkan(ComputeClient<WgpuRuntime>),
    /// CUDA.
    #[cfg(feature = "cuda")]
    Cuda(ComputeClient<cubecl::cuda::CudaRuntime>),
    /// The offline CUDA target: kernels compiled to CUDA C++, never run
    /// ([`crate::codegen`]).
    #[cfg(feature = "cuda-codegen")]
    CudaCodegen(ComputeClient<crate::codegen::CodegenRuntime>),
}

struct DeviceInner {
    backend: Backend,
    kind: DeviceKind,
    name: String,
    plane_ops: bool,
    plane_size: u32,
    caps: Capabilities,
}

/// A compute device. Cheap to clone; clones share the same client.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for Device {}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.inner.name)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.name)
    }
}

const VULKAN_HELP: &str = "install a Vulkan driver (on Debian/Ubuntu without a GPU: \
     `apt-get install mesa-vulkan-drivers libvulkan1`, which provides lavapipe)";

impl Device {
    /// The Vulkan device wgpu ranks first (a GPU if one exists, else lavapipe).
    pub fn vulkan() -> Result<Device> {
        static VULKAN: OnceLock<std::result::Result<Device, Error>> = OnceLock::new();
        VULKAN.get_or_init(init_vulkan).clone()
    }

    /// CUDA device 0.
    pub fn cuda() -> Result<Device> {
        static CUDA: OnceLock<std::result::Result<Device, Error>> = OnceLock::new();
        CUDA.get_or_init(init_cuda).clone()
    }

    /// The offline CUDA target ([`crate::codegen`]): ops choose their kernels as on an
    /// H100 and every kernel they launch is compiled to CUDA C++ and never run, so the
    /// values read back are not results. Its kind is [`DeviceKind::Cuda`], for the ops'
    /// choices; never selected by `SSM_DEVICE`.
    #[cfg(feature = "cuda-codegen")]
    pub fn cuda_codegen() -> Device {
        static CODEGEN: OnceLock<Device> = OnceLock::new();
        CODEGEN
            .get_or_init(|| {
                use crate::codegen::{CodegenDevice, CodegenRuntime};
                let client = CodegenRuntime::client(&CodegenDevice);
                let name = "cuda-codegen (sm_90 properties; kernels compiled, never run)";
                let backend = Backend::CudaCodegen(client.clone());
                device_of(&client, backend, DeviceKind::Cuda, name.into())
            })
            .clone()
    }

    /// The device named by `SSM_DEVICE` (`cuda`, `vulkan` or `auto`, default `auto`).
    /// Created once per process; later calls return the same device.
    pub fn from_env() -> Result<Device> {
        static DEFAULT: OnceLock<std::result::Result<Device, Error>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                let choice = std::env::var("SSM_DEVICE").unwrap_or_else(|_| "auto".into());
                match choice.trim().to_ascii_lowercase().as_str() {
                    "cuda" => Device::cuda(),
                    "vulkan" => Device::vulkan(),
                    "auto" | "" => Device::cuda().or_else(|cuda_err| {
                        Device::vulkan().map_err(|vk_err| {
                            Error::NoDevice(format!("CUDA: {cuda_err}; Vulkan: {vk_err}"))
                        })
                    }),
                    other => Err(Error::NoDevice(format!(
                        "SSM_DEVICE={other:?} is not one of cuda, vulkan, auto"
                    ))),
                }
            })
            .clone()
    }

    /// Runtime kind.
    pub fn kind(&self) -> DeviceKind {
        self.inner.kind
    }

    /// Human-readable name, e.g. `cuda:0 (NVIDIA H100 80GB HBM3)` or `vulkan (llvmpipe …)`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether kernels may use plane (warp/subgroup) operations on this device.
    pub fn has_plane_ops(&self) -> bool {
        self.inner.plane_ops
    }

    /// Plane (warp) width when [`has_plane_ops`](Self::has_plane_ops) is true.
    pub fn plane_size(&self) -> u32 {
        self.inner.plane_size
    }

    /// Whether kernels may use plane operations over planes of exactly `width` lanes (the
    /// kernels' shuffle patterns assume one width).
    pub fn has_planes_of(&self, width: u32) -> bool {
        self.has_plane_ops() && self.plane_size() == width
    }

    /// Whether kernels may atomically add floats of `dtype` in global memory.
    pub fn has_float_atomic_add(&self, dtype: crate::dtype::DType) -> bool {
        match dtype {
            crate::dtype::DType::F32 => self.inner.caps.atomic_add_f32,
            crate::dtype::DType::F64 => self.inner.caps.atomic_add_f64,
            _ => false,
        }
    }

    /// Whether kernels may load and store bf16 and convert it to and from f32 (CUDA;
    /// Vulkan only with `VK_KHR_shader_bfloat16`, which lavapipe lacks).
    pub fn has_bf16(&self) -> bool {
        self.inner.caps.bf16
    }

    /// Whether tensor-core fragments (CubeCL `cmma`) exist for operands of `dtype` with f32
    /// accumulators: 16×16×16 bf16 for [`DType::BF16`](crate::DType::BF16), 16×16×8 TF32 for
    /// [`DType::F32`](crate::DType::F32) (CUDA from sm_80; lavapipe has none).
    pub fn has_tensor_cores(&self, dtype: crate::dtype::DType) -> bool {
        match dtype {
            crate::dtype::DType::BF16 => self.inner.caps.mma_bf16,
            crate::dtype::DType::F32 => self.inner.caps.mma_tf32,
            _ => false,
        }
    }

    /// Whether the pipelined tensor-core kernels may run for operands of `dtype`: warp-level
    /// `mma.sync` on registers (16×8×16 bf16, 16×8×8 TF32) fed by asynchronous global →
    /// shared copies (`cp.async`), as CUDA has from sm_80.
    pub fn has_pipelined_mma(&self, dtype: crate::dtype::DType) -> bool {
        self.inner.caps.copy_async
            && match dtype {
                crate::dtype::DType::BF16 => self.inner.caps.mma_sync_bf16,
                crate::dtype::DType::F32 => self.inner.caps.mma_sync_tf32,
                _ => false,
            }
    }

    /// Most shared memory one cube may use, in bytes.
    pub fn max_shared_memory(&self) -> usize {
        self.inner.caps.max_shared
    }

    /// Streaming multiprocessors, where the backend reports them (CUDA does, Vulkan not).
    pub fn multiprocessors(&self) -> Option<usize> {
        self.inner.caps.multiprocessors
    }

    /// The CubeCL client, for launch helpers.
    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// Wait for all queued work and report deferred kernel failures.
    pub fn sync(&self) -> Result<()> {
        let res = crate::dispatch!(self, c => cubecl::future::block_on(c.sync()));
        res.map_err(|e| Error::kernel("sync", format!("{e:?}")))
    }
}

/// What kernels may use on a client, beyond the basics every device has.
struct Capabilities {
    atomic_add_f32: bool,
    atomic_add_f64: bool,
    max_shared: usize,
    multiprocessors: Option<usize>,
    bf16: bool,
    mma_bf16: bool,
    mma_tf32: bool,
    mma_sync_bf16: bool,
    mma_sync_tf32: bool,
    copy_async: bool,
}

fn capabilities<R: Runtime>(client: &ComputeClient<R>) -> Capabilities {
    use cubecl::ir::features::MmaConfig;
    use cubecl::ir::features::{AtomicUsage, TypeUsage};
    use cubecl::ir::{ElemType, FloatKind};
    let props = client.properties();
    let add = |kind| {
        props
            .atomic_type_usage(Type::new(StorageType::Atomic(ElemType::Float(kind))))
            .contains(AtomicUsage::Add)
    };
    let float = |kind| StorageType::Scalar(ElemType::Float(kind));
    let config = |kind, n, k| MmaConfig {
        a_type: float(kind),
        b_type: float(kind),
        cd_type: float(FloatKind::F32),
        m: 16,
        n,
        k,
    };
    let mma = |kind, k| props.features.matmul.cmma.contains(&config(kind, 16, k));
    let mma_sync = |kind, k| props.features.matmul.mma.contains(&config(kind, 8, k));
    Capabilities {
        atomic_add_f32: add(FloatKind::F32),
        atomic_add_f64: add(FloatKind::F64),
        max_shared: props.hardware.max_shared_memory_size,
        multiprocessors: props
            .hardware
            .num_streaming_multiprocessors
            .map(|n| n as usize),
        bf16: props
            .type_usage(float(FloatKind::BF16))
            .is_superset(TypeUsage::Conversion | TypeUsage::Buffer),
        mma_bf16: mma(FloatKind::BF16, 16),
        mma_tf32: mma(FloatKind::TF32, 8),
        mma_sync_bf16: mma_sync(FloatKind::BF16, 16),
        mma_sync_tf32: mma_sync(FloatKind::TF32, 8),
        copy_async: props.features.copy_async,
    }
}

fn init_vulkan() -> Result<Device> {
    let adapters = vulkan_adapters();
    if adapters.is_empty() {
        return Err(Error::NoDevice(format!(
            "no Vulkan adapter found; {VULKAN_HELP}"
        )));
    }
    let client = WgpuRuntime::client(&WgpuDevice::DefaultDevice);
    let name = format!("vulkan ({})", adapters.join(", "));
    Ok(device_of(
        &client,
        Backend::Vulkan(client.clone()),
        DeviceKind::Vulkan,
        name,
    ))
}

/// The device of `client` (held in `backend`): its plane width and capabilities as the
/// client reports them.
fn device_of<R: Runtime>(
    client: &ComputeClient<R>,
    backend: Backend,
    kind: DeviceKind,
    name: String,
) -> Device {
    let plane_ops = client
        .features()
        .plane
        .contains(cubecl::ir::features::Plane::Ops);
    Device {
        inner: Arc::new(DeviceInner {
            backend,
            kind,
            name,
            plane_ops,
            plane_size: client.properties().hardware.plane_size_max,
            caps: capabilities(client),
        }),
    }
}

fn vulkan_adapters() -> Vec<String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    adapters.iter().map(|a| a.get_info().name).collect()
}

#[cfg(feature = "cuda")]
fn init_cuda() -> Result<Device> {
    use cubecl::cuda::{CudaDevice, CudaRuntime};
    // SAFETY: probing for the driver library has no preconditions.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::NoDevice(
            "the CUDA driver library (libcuda.so) was not found; install the NVIDIA driver".into(),
        ));
    }
    cudarc::driver::result::init()
        .map_err(|e| Error::NoDevice(format!("the CUDA driver failed to initialise: {e:?}")))?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| Error::NoDevice(format!("cannot count CUDA devices: {e:?}")))?;
    if count < 1 {
        return Err(Error::NoDevice("the CUDA driver reports no GPU".into()));
    }
    let client = CudaRuntime::client(&CudaDevice::new(0));
    let gpu = cudarc::driver::result::device::get(0)
        .ok()
        .and_then(|d| cudarc::driver::result::device::get_name(d).ok())
        .unwrap_or_else(|| "unknown GPU".into());
    let name = format!("cuda:0 ({gpu})");
    Ok(device_of(
        &client,
        Backend::Cuda(client.clone()),
        DeviceKind::Cuda,
        name,
    ))
}

#[cfg(not(feature = "cuda"))]
fn init_cuda() -> Result<Device> {
    Err(Error::NoDevice(
        "this build has no CUDA support; rebuild with `--features cuda`".into(),
    ))
}

/// Run `$body` with `$client` bound to the device's CubeCL client; the body is compiled
/// once per runtime, so it may call helpers generic over `R: Runtime`.
#[macro_export]
macro_rules! dispatch {
    ($device:expr, $client:ident => $body:expr) => {
        match $device.backend() {
            $crate::device::Backend::Vulkan($client) => $body,
            #[cfg(feature = "cuda")]
            $crate::device::Backend::Cuda($client) => $body,
            #[cfg(feature = "cuda-codegen")]
            $crate::device::Backend::CudaCodegen($client) => $body,
        }
    };
}

thread_local! {
    static LAUNCHES: Cell<u64> = const { Cell::new(0) };
    static COPIED: Cell<u64> = const { Cell::new(0) };
}

/// Record one kernel launch issued by this thread (called by every launch helper).
pub fn record_launch() {
    LAUNCHES.with(|c| c.set(c.get() + 1));
}

/// Number of kernel launches this thread has issued so far. Tests take the difference
/// around a call to prove how many kernels it launched.
pub fn launch_count() -> u64 {
    LAUNCHES.with(|c| c.get())
}

/// Record `n` elements written by a copy between layouts (called by the copy kernels).
pub(crate) fn record_copy(n: usize) {
    COPIED.with(|c| c.set(c.get() + n as u64));
}

/// Number of elements this thread's copies between layouts (`contiguous`, `assign`,
/// `concat`, the convolutions' operand conversions) have written so far. Tests take the
/// difference around a call to prove what it copied, however the copies were batched
/// into launches.
pub fn copied_elements() -> u64 {
    COPIED.with(|c| c.get())
}
