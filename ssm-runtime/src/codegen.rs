//! An offline CUDA target: kernels launched on [`Device::cuda_codegen`](crate::Device::cuda_codegen)
//! are expanded and compiled to CUDA C++ by CubeCL's CUDA compiler for the properties an
//! H100 (sm_90) reports, and never run.
//!
//! Why: the tensor-core kernels run only on CUDA, and their expansion errors (a comptime
//! value used at run time, an instruction the target lacks, shared memory past the limit)
//! used to show only at a launch on a GPU, which this project gets rarely. On this target
//! the ops choose their kernels as on an H100 (the same capabilities, multiprocessor count
//! and shared-memory limit), launch them, and each distinct kernel is compiled here once;
//! [`take_records`] says which compiled and why any did not.
//!
//! What it cannot see: NVRTC does not run in-process (no CUDA toolkit is needed; the
//! sources it records go through NVRTC and ptxas in `scripts/codegen-check.sh` with
//! `NVRTC=1`), and nothing executes: buffers live in host memory that no kernel writes, so
//! values read back are inputs or zeros, never results.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cubecl::cuda::{CudaCompiler, CudaRuntime};
use cubecl::ir::features::{AtomicUsage, Plane, Tma, TypeUsage};
use cubecl::ir::{
    BarrierLevel, DeviceProperties, ElemType, FloatKind, HardwareProperties,
    MemoryDeviceProperties, OpaqueType, SemanticType, StorageType, TargetProperties, Type,
    VectorSize,
};
use cubecl::prelude::*;
use cubecl::server::{
    Binding, ComputeServer, CopyDescriptor, KernelArguments, ProfileError, ProfilingToken,
    ServerCommunication, ServerError, ServerUtilities,
};
use cubecl::zspace::{Shape, Strides};
use cubecl::{CubeTask, MemoryConfiguration};
use cubecl_common::bytes::Bytes;
use cubecl_common::device::{Device as CubeDevice, DeviceId, DeviceService};
use cubecl_common::future::DynFut;
use cubecl_common::profile::{ProfileDuration, TimingMethod};
use cubecl_common::stream_id::StreamId;
use cubecl_cpp::cuda::CudaDialect;
use cubecl_cpp::cuda::arch::CudaArchitecture;
use cubecl_cpp::cuda::mma::CudaWmmaCompiler;
use cubecl_cpp::shared::{
    CompilationOptions, CppSupportedFeatures, register_mma_features, register_scaled_mma_features,
    register_wmma_features,
};
use cubecl_cpp::{DialectWmmaCompiler, register_supported_types};
use cubecl_runtime::allocator::ContiguousMemoryLayoutPolicy;
use cubecl_runtime::id::KernelId;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{
    ManagedMemoryHandle, MemoryAllocationMode, MemoryManagement, MemoryManagementOptions,
    MemoryUsage,
};
use cubecl_runtime::storage::{BytesResource, BytesStorage, ManagedResource};
use cubecl_runtime::timestamp_profiler::TimestampProfiler;

/// The compute capability the kernels are compiled for (H100 and H200: sm_90).
pub const ARCH: u32 = 90;
/// Multiprocessors of an H100 SXM (and an H200), which the tile rules size waves by.
pub const MULTIPROCESSORS: u32 = 132;
/// Shared memory one block may opt into on sm_90, in bytes (227 KiB).
pub const MAX_SHARED: usize = 232_448;

/// One distinct kernel compiled on the codegen target.
#[derive(Debug, Clone)]
pub struct Record {
    /// The kernel's type, short: `conv_pipe::ConvPipe` for
    /// `ssm_runtime::kernels::conv_pipe::conv_pipe::ConvPipe<CodegenRuntime>`.
    pub name: String,
    /// The kernel's id: its type, comptime arguments and cube dimensions.
    pub id: String,
    /// The CUDA C++ source and the shared memory it declares, or why it did not compile.
    pub outcome: std::result::Result<Compiled, String>,
}

/// A kernel that compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// CUDA C++ as NVRTC would receive it.
    pub source: String,
    /// Bytes of shared memory the kernel declares.
    pub shared_bytes: usize,
}

/// Every kernel compiled since the last call, in launch order (each distinct kernel once
/// per process: a later launch of the same kernel is not compiled again).
pub fn take_records() -> Vec<Record> {
    std::mem::take(&mut *RECORDS.lock().unwrap_or_else(|e| e.into_inner()))
}

static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// The codegen target's device (one; its id type keeps it apart from CUDA's devices).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CodegenDevice;

impl CubeDevice for CodegenDevice {
    fn from_id(_: DeviceId) -> Self {
        CodegenDevice
    }

    fn to_id(&self) -> DeviceId {
        DeviceId {
            type_id: 0xc0de,
            index_id: 0,
        }
    }
}

/// The CubeCL runtime of the codegen target: CUDA's compiler, a server that compiles.
#[derive(Debug, Clone)]
pub struct CodegenRuntime;

impl Runtime for CodegenRuntime {
    type Compiler = CudaCompiler;
    type Server = CodegenServer;
    type Device = CodegenDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_: &ComputeClient<Self>) -> &'static str {
        "cuda-codegen"
    }

    // What CUDA says, so kernels expand as they would for it.
    fn require_array_lengths() -> bool {
        CudaRuntime::require_array_lengths()
    }

    fn max_cube_count() -> (u32, u32, u32) {
        CudaRuntime::max_cube_count()
    }

    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        CudaRuntime::can_read_tensor(shape, strides)
    }

    fn target_properties() -> TargetProperties {
        CudaRuntime::target_properties()
    }

    fn enumerate_devices(_: u16, _: &()) -> Vec<DeviceId> {
        vec![CodegenDevice.to_id()]
    }
}

/// The server: host memory for buffers, CUDA C++ for kernels.
#[derive(Debug)]
pub struct CodegenServer {
    memory: MemoryManagement<BytesStorage>,
    timestamps: TimestampProfiler,
    utilities: Arc<ServerUtilities<Self>>,
    options: CompilationOptions,
    compiled: HashSet<KernelId>,
}

impl DeviceService for CodegenServer {
    fn init(_: DeviceId) -> Self {
        let (properties, options) = h100_properties();
        let logger = Arc::new(ServerLogger::default());
        let memory = MemoryManagement::from_configuration(
            BytesStorage::default(),
            &properties.memory,
            MemoryConfiguration::default(),
            logger.clone(),
            MemoryManagementOptions::new("cuda-codegen host memory"),
        );
        let alignment = properties.memory.alignment as usize;
        let utilities = Arc::new(ServerUtilities::new(
            properties,
            logger,
            (),
            ContiguousMemoryLayoutPolicy::new(alignment),
        ));
        CodegenServer {
            memory,
            timestamps: TimestampProfiler::default(),
            utilities,
            options,
            compiled: HashSet::new(),
        }
    }

    fn utilities(&self) -> cubecl::device::ServerUtilitiesHandle {
        ComputeServer::utilities(self)
    }
}

impl ServerCommunication for CodegenServer {
    const SERVER_COMM_ENABLED: bool = false;
}

impl CodegenServer {
    fn compile(&self, kernel: &<Self as ComputeServer>::Kernel, mode: ExecutionMode) -> Record {
        let address = kernel.address_type();
        let compiled = catch_unwind(AssertUnwindSafe(|| {
            kernel.compile(&mut CudaCompiler::default(), &self.options, mode, address)
        }));
        let outcome = match compiled {
            Ok(Ok(k)) => {
                let shared_bytes = k.repr.as_ref().map_or(0, |r| r.shared_memory_size());
                if shared_bytes > MAX_SHARED {
                    Err(format!(
                        "declares {shared_bytes} bytes of shared memory; sm_90 allows {MAX_SHARED}"
                    ))
                } else {
                    Ok(Compiled {
                        source: k.source,
                        shared_bytes,
                    })
                }
            }
            Ok(Err(e)) => Err(format!("compilation error: {e}")),
            Err(panic) => Err(format!("expansion panicked: {}", panic_text(&*panic))),
        };
        Record {
            name: short_name(kernel.name()),
            id: format!("{}", kernel.id()),
            outcome,
        }
    }
}

/// The last two path segments of a kernel's type name, without its generic arguments.
fn short_name(type_name: &str) -> String {
    let path = type_name.split('<').next().unwrap_or(type_name);
    let segments: Vec<&str> = path.rsplit("::").take(2).collect();
    segments.into_iter().rev().collect::<Vec<_>>().join("::")
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

impl ComputeServer for CodegenServer {
    type Kernel = Box<dyn CubeTask<CudaCompiler>>;
    type Storage = BytesStorage;
    type MemoryLayoutPolicy = ContiguousMemoryLayoutPolicy;
    type Info = ();

    fn logger(&self) -> Arc<ServerLogger> {
        self.utilities.logger.clone()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn initialize_memory(&mut self, memory: ManagedMemoryHandle, size: u64, _: StreamId) {
        // Host allocations only fail when the host is out of memory, as a GPU's would.
        let reserved = self
            .memory
            .reserve(size)
            .expect("cuda-codegen: out of host memory");
        self.memory
            .bind(reserved, memory, 0)
            .expect("cuda-codegen: binding a fresh allocation");
    }

    fn read(
        &mut self,
        descriptors: Vec<CopyDescriptor>,
        _: StreamId,
    ) -> DynFut<std::result::Result<Vec<Bytes>, ServerError>> {
        let resources: std::result::Result<Vec<_>, ServerError> = descriptors
            .into_iter()
            .map(|d| {
                let size = d.handle.size_in_used() as usize;
                let resource = self.memory.get_resource(
                    d.handle.memory.clone(),
                    d.handle.offset_start,
                    d.handle.offset_end,
                )?;
                Ok((resource, size, d.handle.memory))
            })
            .collect();
        Box::pin(async move {
            Ok(resources?
                .into_iter()
                .map(|(r, size, _keep_alive)| Bytes::from_bytes_vec(r.read()[..size].to_vec()))
                .collect())
        })
    }

    fn write(&mut self, descriptors: Vec<(CopyDescriptor, Bytes)>, _: StreamId) {
        for (descriptor, data) in descriptors {
            let mut resource = self
                .memory
                .get_resource(
                    descriptor.handle.memory.clone(),
                    descriptor.handle.offset_start,
                    descriptor.handle.offset_end,
                )
                .expect("cuda-codegen: writing to a buffer that exists");
            resource.write()[..data.len()].copy_from_slice(&data);
        }
    }

    fn sync(&mut self, _: StreamId) -> DynFut<std::result::Result<(), ServerError>> {
        Box::pin(async { Ok(()) })
    }

    fn get_resource(
        &mut self,
        binding: Binding,
        _: StreamId,
    ) -> std::result::Result<ManagedResource<BytesResource>, ServerError> {
        let resource = self.memory.get_resource(
            binding.memory.clone(),
            binding.offset_start,
            binding.offset_end,
        )?;
        Ok(ManagedResource::new(binding.memory, resource))
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        _: CubeCount,
        _: KernelArguments,
        mode: ExecutionMode,
        _: StreamId,
    ) {
        if self.compiled.insert(kernel.id()) {
            let record = self.compile(&kernel, mode);
            RECORDS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record);
        }
    }

    fn flush(&mut self, _: StreamId) -> std::result::Result<(), ServerError> {
        Ok(())
    }

    fn memory_usage(&mut self, _: StreamId) -> std::result::Result<MemoryUsage, ServerError> {
        Ok(self.memory.memory_usage())
    }

    fn memory_cleanup(&mut self, _: StreamId) {
        self.memory.cleanup(true);
    }

    fn start_profile(&mut self, _: StreamId) -> std::result::Result<ProfilingToken, ServerError> {
        Ok(self.timestamps.start())
    }

    fn end_profile(
        &mut self,
        _: StreamId,
        token: ProfilingToken,
    ) -> std::result::Result<ProfileDuration, ProfileError> {
        self.timestamps.stop(token)
    }

    fn allocation_mode(&mut self, mode: MemoryAllocationMode, _: StreamId) {
        self.memory.mode(mode)
    }
}

/// What CubeCL's CUDA runtime registers for an sm_90 device (its `init`, with the values an
/// H100 reports in place of the driver's answers), and the compiler options it uses.
fn h100_properties() -> (DeviceProperties, CompilationOptions) {
    type Wmma = CudaWmmaCompiler;
    type Dialect = CudaDialect<CudaWmmaCompiler>;
    let arch = CudaArchitecture { version: ARCH };
    let wmma = <Wmma as DialectWmmaCompiler<Dialect>>::supported_wmma_combinations(&arch);
    let mma = <Wmma as DialectWmmaCompiler<Dialect>>::supported_mma_combinations(&arch);
    let scaled = <Wmma as DialectWmmaCompiler<Dialect>>::supported_scaled_mma_combinations(&arch);

    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: cubecl::cuda::CUDA_MAX_BINDINGS,
        max_shared_memory_size: MAX_SHARED,
        max_cube_count: (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(MULTIPROCESSORS),
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: (!wmma.is_empty()).then_some(8),
        num_cpu_cores: None,
        max_vector_size: VectorSize::MAX,
    };
    // Host memory in pages of 512 MiB (a GPU's would be a quarter of its memory).
    let memory = MemoryDeviceProperties {
        max_page_size: 512 << 20,
        alignment: 512,
    };
    let mut p = DeviceProperties::new(Default::default(), memory, hardware, TimingMethod::System);
    let float = |kind| ElemType::Float(kind);
    let atomic = |kind, width| Type::new(StorageType::Atomic(float(kind))).with_vector_size(width);
    register_supported_types(&mut p);
    p.register_type_usage(float(FloatKind::TF32), TypeUsage::Conversion);
    // sm_60 and up
    p.register_atomic_type_usage(
        atomic(FloatKind::F64, 1),
        AtomicUsage::Add | AtomicUsage::LoadStore,
    );
    // sm_70 and up
    for width in [1, 2] {
        p.register_atomic_type_usage(
            atomic(FloatKind::F16, width),
            AtomicUsage::Add | AtomicUsage::LoadStore,
        );
    }
    p.register_semantic_type(SemanticType::Pipeline);
    p.register_type_usage(OpaqueType::Barrier(BarrierLevel::Unit), TypeUsage::Buffer);
    p.register_type_usage(OpaqueType::Barrier(BarrierLevel::Cube), TypeUsage::Buffer);
    p.features.plane.insert(Plane::Sync);
    // sm_75 and up
    for kind in [FloatKind::F16, FloatKind::BF16] {
        p.features.matmul.ldmatrix.insert(float(kind).into());
    }
    // sm_80 and up
    p.features.copy_async = true;
    // sm_89 and up
    for kind in [FloatKind::E4M3, FloatKind::E5M2] {
        p.register_type_usage(float(kind), TypeUsage::Conversion | TypeUsage::Buffer);
    }
    // sm_90 and up
    p.features.tma.insert(Tma::Base);
    p.register_semantic_type(SemanticType::TensorMap);
    p.features.cube_cluster = true;
    for kind in [FloatKind::F16, FloatKind::BF16] {
        p.features.matmul.stmatrix.insert(float(kind).into());
    }
    for width in [2, 4] {
        p.register_atomic_type_usage(
            atomic(FloatKind::F32, width),
            AtomicUsage::LoadStore | AtomicUsage::Add,
        );
    }
    // every architecture
    p.features.memory_reinterpret = true;
    p.features.alignment = true;
    p.features.plane.insert(Plane::Ops);
    p.features.plane.insert(Plane::NonUniformControlFlow);
    register_wmma_features(wmma, &mut p);
    register_mma_features(mma, &mut p);
    register_scaled_mma_features(scaled, &mut p);

    let options = CompilationOptions {
        warp_size: 32,
        supports_features: CppSupportedFeatures {
            fast_math: true,
            grid_constants: true,
            clusters: true,
            elect_sync: true,
            fast_tanh: cudarc::driver::sys::CUDA_VERSION >= 12080,
        },
    };
    (p, options)
}
