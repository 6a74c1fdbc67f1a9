//! The GPU context: adapter choice, device creation with the adapter's real
//! limits, the per-device cache of kernel pipelines, and read-back.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::distance::DistanceKernels;
use crate::error::{Error, Result};
use crate::linear::LinearKernels;
use crate::loss::LossKernels;
use crate::mining::MiningKernels;
use crate::optim::OptimKernels;
use crate::rows::RowKernels;

/// What the crate knows about the adapter it runs on; print it next to any
/// figure you report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterDescription {
    /// The adapter's name, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// The graphics API wgpu drives it through.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version, where the backend reports them.
    pub driver: String,
}

impl AdapterDescription {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        let driver = match (info.driver.is_empty(), info.driver_info.is_empty()) {
            (true, true) => String::new(),
            (false, true) => info.driver.clone(),
            (true, false) => info.driver_info.clone(),
            (false, false) => format!("{} {}", info.driver, info.driver_info),
        };
        Self {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver,
        }
    }
}

impl fmt::Display for AdapterDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}",
            self.name, self.backend, self.device_type
        )?;
        if !self.driver.is_empty() {
            write!(f, ", driver {}", self.driver)?;
        }
        write!(f, ")")
    }
}

/// How to choose and configure the device.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Adapter preference when `WGPU_ADAPTER_NAME` is not set; `None` reads
    /// `WGPU_POWER_PREF` and otherwise prefers a discrete GPU.
    pub power_preference: Option<wgpu::PowerPreference>,
    /// Backends to search; `None` reads `WGPU_BACKEND` (all when unset).
    pub backends: Option<wgpu::Backends>,
    /// Caps the size of one storage binding (and so of one chunk of work)
    /// below the device's own limit. Kernels split larger work into pieces;
    /// tests use this to exercise the splitting at small sizes.
    pub max_binding_bytes: Option<u64>,
    /// Caps the workgroups per dispatch dimension below the device's limit,
    /// like `max_binding_bytes`.
    pub max_workgroups_per_dimension: Option<u32>,
}

/// The device limits that decide how work is split into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Bytes one storage binding may span.
    pub max_binding_bytes: u64,
    /// Bytes one buffer may hold.
    pub max_buffer_bytes: u64,
    /// Alignment of a storage binding's offset, in bytes.
    pub storage_offset_alignment: u64,
    /// Workgroups one dispatch may have along each dimension.
    pub max_workgroups_per_dimension: u32,
}

struct ContextInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterDescription,
    chunk_limits: ChunkLimits,
    rows: OnceLock<RowKernels>,
    distance: OnceLock<DistanceKernels>,
    loss: OnceLock<LossKernels>,
    mining: OnceLock<MiningKernels>,
    linear: OnceLock<LinearKernels>,
    optim: OnceLock<OptimKernels>,
}

/// A wgpu device and queue with the crate's kernels.
///
/// Cheap to clone (the clones share the device, the pipelines and the
/// workspaces). Pipelines are created the first time a kernel family is used
/// and reused for every later call on this device.
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<ContextInner>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.inner.adapter)
            .field("chunk_limits", &self.inner.chunk_limits)
            .finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Opens the best adapter: the one whose name contains
    /// `WGPU_ADAPTER_NAME` (case-insensitive) if that is set, otherwise the
    /// highest-performance one, among the backends in `WGPU_BACKEND`
    /// (e.g. `vulkan`, `gl`; all when unset).
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default())
    }

    /// Like [`GpuContext::new`], with options.
    pub fn with_options(options: ContextOptions) -> Result<Self> {
        let mut instance_descriptor =
            wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(backends) = options.backends {
            instance_descriptor.backends = backends;
        }
        let backends = instance_descriptor.backends;
        let instance = wgpu::Instance::new(instance_descriptor);
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(wanted) if !wanted.trim().is_empty() => {
                let adapters = pollster::block_on(instance.enumerate_adapters(backends));
                let needle = wanted.trim().to_lowercase();
                let found = adapters
                    .iter()
                    .position(|a| a.get_info().name.to_lowercase().contains(&needle));
                match found {
                    Some(index) => adapters.into_iter().nth(index),
                    None if adapters.is_empty() => None,
                    None => {
                        let available = adapters
                            .iter()
                            .map(|a| AdapterDescription::from_info(&a.get_info()).to_string())
                            .collect::<Vec<_>>()
                            .join("; ");
                        return Err(Error::AdapterNotFound { wanted, available });
                    }
                }
            }
            _ => {
                let power_preference = options
                    .power_preference
                    .or_else(wgpu::PowerPreference::from_env)
                    .unwrap_or(wgpu::PowerPreference::HighPerformance);
                pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                }))
                .ok()
            }
        };
        let adapter = adapter.ok_or_else(|| Error::NoAdapter {
            backends: format!("{backends:?}"),
        })?;
        Self::from_adapter(&adapter, &options)
    }

    /// Creates a device on `adapter`, requesting the adapter's own limits
    /// (not wgpu's conservative defaults, which cap a binding at 128 MiB).
    pub fn from_adapter(adapter: &wgpu::Adapter, options: &ContextOptions) -> Result<Self> {
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("contrastive-wgpu"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))?;
        Ok(Self::build(
            device,
            queue,
            AdapterDescription::from_info(&adapter.get_info()),
            options,
        ))
    }

    /// Wraps a device and queue the caller already has (e.g. a training
    /// loop's), so kernels run on the caller's buffers without copies. The
    /// limits are the ones the device was created with.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let adapter = AdapterDescription::from_info(&device.adapter_info());
        Self::build(device, queue, adapter, &ContextOptions::default())
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: AdapterDescription,
        options: &ContextOptions,
    ) -> Self {
        let limits = device.limits();
        let mut max_binding_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(cap) = options.max_binding_bytes {
            max_binding_bytes = max_binding_bytes.min(cap.max(1024));
        }
        // Bindings are sized in whole f32/vec4 values.
        max_binding_bytes -= max_binding_bytes % 16;
        let chunk_limits = ChunkLimits {
            max_binding_bytes,
            max_buffer_bytes: limits.max_buffer_size,
            storage_offset_alignment: u64::from(limits.min_storage_buffer_offset_alignment),
            max_workgroups_per_dimension: options
                .max_workgroups_per_dimension
                .map_or(limits.max_compute_workgroups_per_dimension, |cap| {
                    cap.clamp(1, limits.max_compute_workgroups_per_dimension)
                }),
        };
        Self {
            inner: Arc::new(ContextInner {
                device,
                queue,
                adapter,
                chunk_limits,
                rows: OnceLock::new(),
                distance: OnceLock::new(),
                loss: OnceLock::new(),
                mining: OnceLock::new(),
                linear: OnceLock::new(),
                optim: OnceLock::new(),
            }),
        }
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterDescription {
        &self.inner.adapter
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The limits that decide how work is split.
    pub fn chunk_limits(&self) -> ChunkLimits {
        self.inner.chunk_limits
    }

    pub(crate) fn row_kernels(&self) -> Result<&RowKernels> {
        cached(&self.inner.rows, || RowKernels::new(self))
    }

    pub(crate) fn loss_kernels(&self) -> Result<&LossKernels> {
        cached(&self.inner.loss, || LossKernels::new(self))
    }

    pub(crate) fn mining_kernels(&self) -> Result<&MiningKernels> {
        cached(&self.inner.mining, || MiningKernels::new(self))
    }

    pub(crate) fn distance_kernels(&self) -> Result<&DistanceKernels> {
        cached(&self.inner.distance, || DistanceKernels::new(self))
    }

    pub(crate) fn linear_kernels(&self) -> Result<&LinearKernels> {
        cached(&self.inner.linear, || LinearKernels::new(self))
    }

    pub(crate) fn optim_kernels(&self) -> Result<&OptimKernels> {
        cached(&self.inner.optim, || OptimKernels::new(self))
    }

    /// Compiles `source` once and builds its compute pipelines: each entry
    /// of `per_kind` once per distance kind `0..kinds` (the shader's
    /// `DISTANCE_KIND` override, so inner loops carry no branch), and each
    /// entry of `plain` once. Device errors (e.g. a backend that rejects the
    /// shader) become [`Error::Device`].
    pub(crate) fn create_pipeline_set(
        &self,
        label: &'static str,
        source: &'static str,
        (per_kind, kinds): (&[(&str, &wgpu::BindGroupLayout)], u32),
        plain: &[(&str, &wgpu::BindGroupLayout)],
    ) -> Result<(Vec<Vec<wgpu::ComputePipeline>>, Vec<wgpu::ComputePipeline>)> {
        self.with_error_scope("creating compute pipelines", || {
            let device = self.device();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let build =
                |entry_point: &str, layout: &wgpu::BindGroupLayout, constants: &[(&str, f64)]| {
                    let pipeline_layout =
                        device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                            label: Some(label),
                            bind_group_layouts: &[Some(layout)],
                            immediate_size: 0,
                        });
                    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(label),
                        layout: Some(&pipeline_layout),
                        module: &module,
                        entry_point: Some(entry_point),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
                };
            let per_kind = per_kind
                .iter()
                .map(|&(entry_point, layout)| {
                    (0..kinds)
                        .map(|kind| {
                            build(entry_point, layout, &[("DISTANCE_KIND", f64::from(kind))])
                        })
                        .collect()
                })
                .collect();
            let plain = plain
                .iter()
                .map(|&(entry_point, layout)| build(entry_point, layout, &[]))
                .collect();
            Ok((per_kind, plain))
        })
    }

    /// Runs `work`, turning validation and out-of-memory errors the device
    /// raises meanwhile into [`Error::Device`] instead of wgpu's default
    /// panic.
    pub(crate) fn with_error_scope<T>(
        &self,
        during: &'static str,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let device = self.device();
        let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = work();
        let validation_error = pollster::block_on(validation.pop());
        let memory_error = pollster::block_on(out_of_memory.pop());
        if let Some(error) = validation_error.or(memory_error) {
            return Err(Error::Device {
                during,
                message: error.to_string(),
            });
        }
        result
    }

    /// Waits until the device has finished all submitted work.
    pub(crate) fn wait_idle(&self) -> Result<()> {
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device {
                during: "waiting for the device",
                message: e.to_string(),
            })
    }

    /// Maps `staging` (a `MAP_READ` buffer whose copy has been submitted),
    /// waits for the device, and returns its first `bytes` bytes as values.
    pub(crate) fn read_back<T: bytemuck::Pod>(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<T>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = staging.slice(..bytes);
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            // The receiver only disappears if read_back already returned.
            let _ = sender.send(result);
        });
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device {
                during: "waiting for the device",
                message: e.to_string(),
            })?;
        let mapped = pollster::block_on(receiver.receive()).ok_or(Error::Device {
            during: "reading results back",
            message: "the map callback never ran".into(),
        })?;
        mapped.map_err(|e| Error::Device {
            during: "reading results back",
            message: e.to_string(),
        })?;
        let values = {
            let view = slice.get_mapped_range().map_err(|e| Error::Device {
                during: "reading results back",
                message: e.to_string(),
            })?;
            bytemuck::pod_collect_to_vec::<u8, T>(&view)
        };
        staging.unmap();
        Ok(values)
    }
}

/// `items` as an array of exactly `N`, for unpacking a pipeline set.
pub(crate) fn exactly<T, const N: usize>(items: Vec<T>) -> Result<[T; N]> {
    items.try_into().map_err(|_| Error::Device {
        during: "creating compute pipelines",
        message: "a pipeline is missing".into(),
    })
}

/// `cell`'s value, created by `make` on first use. Two threads racing here
/// may both build the value; one is kept, which is harmless for pipelines.
fn cached<T>(cell: &OnceLock<T>, make: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let value = make()?;
    Ok(cell.get_or_init(|| value))
}
