//! Parameter updates on the GPU: the optimizer step of a training loop that
//! stays on the device (see `examples/train.rs`), value by value.
//!
//! - [`Adam`] (with decoupled weight decay: AdamW), as PyTorch computes it,
//!   for step `t = 1, 2, …`:
//!
//!   ```text
//!   p ← p (1 − lr·wd)
//!   m ← β₁ m + (1 − β₁) g
//!   v ← β₂ v + (1 − β₂) g²
//!   p ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//!   ```
//!
//!   [`AdamState`] owns `m` and `v` for one parameter buffer and counts `t`.
//! - [`SgdMomentum`], PyTorch's SGD without dampening:
//!   `g' = g + wd·p`, `u ← μ u + g'`, `p ← p − lr·(nesterov ? g' + μ u : u)`.
//! - [`GpuContext::record_add_scaled`]: `y ← y + α x`, e.g. to sum the
//!   gradients of two losses before the backward pass.
//!
//! Buffers larger than one storage binding are updated chunk by chunk. The
//! kernels are `shaders/optim.wgsl`; the CPU mirror is
//! [`crate::reference::optim`].

use crate::binding::{
    bind_group_layout, bytes_of, check_buffer, offset_binding, record_split, to_u32, Kernel,
    BYTES_PER_VALUE, READ, READ_WRITE, UNIFORM,
};
use crate::context::{exactly, GpuContext};
use crate::distance::check_len;
use crate::error::{Error, Result};
use crate::workspace::{GrowableBuffer, Locked};

const SHADER: &str = include_str!("../shaders/optim.wgsl");
/// Invocations per workgroup (`THREADS` in the shader).
const THREADS: usize = 64;

/// Adam's settings (PyTorch's names and defaults: `lr = 1e-3`,
/// `betas = (0.9, 0.999)`, `eps = 1e-8`, `weight_decay = 0`). The weight
/// decay is decoupled from the gradient, as in AdamW.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    /// `lr`, ≥ 0.
    pub learning_rate: f32,
    /// `β₁` in `[0, 1)`.
    pub beta1: f32,
    /// `β₂` in `[0, 1)`.
    pub beta2: f32,
    /// `ε` > 0.
    pub epsilon: f32,
    /// `wd` ≥ 0: each step first scales `p` by `1 − lr·wd`.
    pub weight_decay: f32,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        }
    }
}

fn check_setting(what: &'static str, value: f32, ok: bool, expected: &'static str) -> Result<()> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            what,
            value: value.to_string(),
            expected,
        })
    }
}

impl Adam {
    /// PyTorch's defaults with learning rate `learning_rate`.
    pub fn new(learning_rate: f32) -> Self {
        Self {
            learning_rate,
            ..Self::default()
        }
    }

    /// The same with decoupled weight decay `weight_decay` (AdamW).
    pub fn with_weight_decay(self, weight_decay: f32) -> Self {
        Self {
            weight_decay,
            ..self
        }
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<()> {
        let lr = self.learning_rate;
        check_setting("learning_rate", lr, lr >= 0.0, "a finite value >= 0")?;
        for (what, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            check_setting(what, beta, (0.0..1.0).contains(&beta), "in [0, 1)")?;
        }
        let eps = self.epsilon;
        check_setting("epsilon", eps, eps > 0.0, "a finite value > 0")?;
        let wd = self.weight_decay;
        check_setting("weight_decay", wd, wd >= 0.0, "a finite value >= 0")
    }
}

/// SGD's settings (PyTorch's, without dampening).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdMomentum {
    /// `lr`, ≥ 0.
    pub learning_rate: f32,
    /// `μ` in `[0, 1)`; 0 is plain SGD (no momentum buffer needed).
    pub momentum: f32,
    /// `wd` ≥ 0, added to the gradient as `wd·p`.
    pub weight_decay: f32,
    /// Nesterov momentum (needs `μ > 0`).
    pub nesterov: bool,
}

impl SgdMomentum {
    /// SGD with learning rate `learning_rate` and momentum `momentum`.
    pub fn new(learning_rate: f32, momentum: f32) -> Self {
        Self {
            learning_rate,
            momentum,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<()> {
        let lr = self.learning_rate;
        check_setting("learning_rate", lr, lr >= 0.0, "a finite value >= 0")?;
        let mu = self.momentum;
        check_setting("momentum", mu, (0.0..1.0).contains(&mu), "in [0, 1)")?;
        let wd = self.weight_decay;
        check_setting("weight_decay", wd, wd >= 0.0, "a finite value >= 0")?;
        check_setting(
            "momentum",
            mu,
            !self.nesterov || mu > 0.0,
            "> 0 for Nesterov momentum",
        )
    }
}

/// Caller-owned buffers for [`GpuContext::record_adam_step`], `len` values
/// each, all with `STORAGE` usage.
#[derive(Clone, Copy, Debug)]
pub struct AdamBuffers<'a> {
    /// `p`, updated in place.
    pub parameters: &'a wgpu::Buffer,
    /// `g`.
    pub gradient: &'a wgpu::Buffer,
    /// `m`, zero before the first step.
    pub first_moment: &'a wgpu::Buffer,
    /// `v`, zero before the first step.
    pub second_moment: &'a wgpu::Buffer,
}

/// Caller-owned buffers for [`GpuContext::record_sgd_step`], `len` values
/// each, all with `STORAGE` usage.
#[derive(Clone, Copy, Debug)]
pub struct SgdBuffers<'a> {
    /// `p`, updated in place.
    pub parameters: &'a wgpu::Buffer,
    /// `g`.
    pub gradient: &'a wgpu::Buffer,
    /// `u`, zero before the first step; needed when `μ > 0`.
    pub momentum_buffer: Option<&'a wgpu::Buffer>,
}

/// Adam's state for one parameter buffer of `len` values: the moments `m`
/// and `v` on the device (zero at creation) and the step count `t`.
#[derive(Debug)]
pub struct AdamState {
    config: Adam,
    len: usize,
    first_moment: wgpu::Buffer,
    second_moment: wgpu::Buffer,
    steps: u64,
}

impl AdamState {
    /// Zeroed moments for `len` parameters, on `gpu`'s device.
    pub fn new(gpu: &GpuContext, config: Adam, len: usize) -> Result<Self> {
        config.validate()?;
        if len == 0 {
            return Err(Error::ZeroDimension {
                name: "parameters to optimize",
            });
        }
        let bytes = bytes_of(len);
        let max_buffer = gpu.chunk_limits().max_buffer_bytes;
        if bytes > max_buffer {
            return Err(Error::TooLarge {
                what: format!("Adam's moments for {len} parameters"),
                needed: bytes,
                limit_name: "max_buffer_size",
                limit: max_buffer,
            });
        }
        let moment = |label| {
            // wgpu zero-initialises new buffers.
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        Ok(Self {
            config,
            len,
            first_moment: moment("optim.adam_first_moment"),
            second_moment: moment("optim.adam_second_moment"),
            steps: 0,
        })
    }

    /// Records the next step (`t = steps() + 1`) on `parameters` with
    /// `gradient` (`len` values each) into the caller's encoder.
    pub fn record_step(
        &mut self,
        gpu: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        parameters: &wgpu::Buffer,
        gradient: &wgpu::Buffer,
    ) -> Result<()> {
        gpu.record_adam_step(
            encoder,
            AdamBuffers {
                parameters,
                gradient,
                first_moment: &self.first_moment,
                second_moment: &self.second_moment,
            },
            self.len,
            &self.config,
            self.steps + 1,
        )?;
        self.steps += 1;
        Ok(())
    }

    /// Steps recorded so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The settings the next step uses.
    pub fn config(&self) -> &Adam {
        &self.config
    }

    /// Changes the learning rate from the next step on (a schedule).
    pub fn set_learning_rate(&mut self, learning_rate: f32) -> Result<()> {
        let config = Adam {
            learning_rate,
            ..self.config
        };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// `m`, `len` values.
    pub fn first_moment(&self) -> &wgpu::Buffer {
        &self.first_moment
    }

    /// `v`, `len` values.
    pub fn second_moment(&self) -> &wgpu::Buffer {
        &self.second_moment
    }
}

/// Mirrors `AdamParams` in shaders/optim.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamParams {
    end: u32,
    grid_width: u32,
    base: u32,
    _pad0: u32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    decay_factor: f32,
    step_size: f32,
    inverse_sqrt_correction: f32,
    _pad1: [f32; 2],
}

/// Mirrors `SgdParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SgdParams {
    end: u32,
    grid_width: u32,
    base: u32,
    nesterov: u32,
    learning_rate: f32,
    momentum: f32,
    weight_decay: f32,
    _pad0: f32,
}

/// Mirrors `AddScaledParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AddScaledParams {
    end: u32,
    grid_width: u32,
    base: u32,
    _pad0: u32,
    alpha: f32,
    _pad1: [f32; 3],
}

/// Where one dispatch of an elementwise kernel works: values `base..end`
/// of its chunk, on a grid `grid_width` workgroups wide.
#[derive(Clone, Copy)]
struct DispatchRange {
    end: u32,
    grid_width: u32,
    base: u32,
}

/// Buffers the slice API reuses from call to call.
struct OptimWorkspace {
    parameters: GrowableBuffer,
    gradient: GrowableBuffer,
    first_state: GrowableBuffer,
    second_state: GrowableBuffer,
    staging: GrowableBuffer,
}

/// The pipelines of `shaders/optim.wgsl` and the slice API's buffers; one
/// per device, owned by its [`GpuContext`].
pub(crate) struct OptimKernels {
    adam_layout: wgpu::BindGroupLayout,
    sgd_layout: wgpu::BindGroupLayout,
    add_layout: wgpu::BindGroupLayout,
    adam: wgpu::ComputePipeline,
    sgd: wgpu::ComputePipeline,
    add_scaled: wgpu::ComputePipeline,
    /// Bound in place of an absent momentum buffer.
    placeholder: wgpu::Buffer,
    workspace: Locked<OptimWorkspace>,
}

impl OptimKernels {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        let device = ctx.device();
        let adam_layout = bind_group_layout(
            device,
            "optim.adam",
            &[UNIFORM, READ_WRITE, READ, READ_WRITE, READ_WRITE],
        );
        let sgd_layout = bind_group_layout(
            device,
            "optim.sgd_momentum",
            &[UNIFORM, READ_WRITE, READ, READ_WRITE],
        );
        let add_layout =
            bind_group_layout(device, "optim.add_scaled", &[UNIFORM, READ, READ_WRITE]);
        let (_, plain) = ctx.create_pipeline_set(
            "optim.wgsl",
            SHADER,
            (&[], 0),
            &[
                ("adam", &adam_layout),
                ("sgd_momentum", &sgd_layout),
                ("add_scaled", &add_layout),
            ],
        )?;
        let [adam, sgd, add_scaled] = exactly(plain)?;
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("optim.placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let upload = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let workspace = OptimWorkspace {
            parameters: GrowableBuffer::new("optim.parameters", upload),
            gradient: GrowableBuffer::new("optim.gradient", upload),
            first_state: GrowableBuffer::new("optim.first_state", upload),
            second_state: GrowableBuffer::new("optim.second_state", upload),
            staging: GrowableBuffer::new(
                "optim.staging",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        };
        Ok(Self {
            adam_layout,
            sgd_layout,
            add_layout,
            adam,
            sgd,
            add_scaled,
            placeholder,
            workspace: Locked::new(workspace),
        })
    }

    /// Records `kernel` over `len` values of `buffers` (`None`: the
    /// placeholder), chunk by chunk at aligned offsets so that value `i` of
    /// a chunk is index `i` of every binding; `params` makes each
    /// dispatch's uniform.
    #[allow(clippy::too_many_arguments)]
    fn record_elementwise<T: bytemuck::Pod>(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel<'_>,
        len: usize,
        buffers: &[Option<&wgpu::Buffer>],
        params: impl Fn(DispatchRange) -> T,
    ) -> Result<()> {
        let limits = ctx.chunk_limits();
        let alignment_values = (limits.storage_offset_alignment / BYTES_PER_VALUE).max(1);
        let binding_values = (limits.max_binding_bytes / BYTES_PER_VALUE).min(u64::from(u32::MAX));
        let chunk = (binding_values / alignment_values * alignment_values).max(alignment_values);
        let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
        let device = ctx.device();
        for first in (0..len).step_by(chunk) {
            let count = chunk.min(len - first);
            let bytes = bytes_of(count);
            let offset = bytes_of(first);
            let bindings: Vec<wgpu::BindingResource<'_>> = buffers
                .iter()
                .map(|buffer| match buffer {
                    Some(buffer) => offset_binding(buffer, offset, bytes),
                    None => self.placeholder.as_entire_binding(),
                })
                .collect();
            record_split(
                device,
                encoder,
                kernel,
                (count, THREADS, limits.max_workgroups_per_dimension),
                &bindings,
                |base, items, (grid_width, _)| {
                    Ok(params(DispatchRange {
                        end: to_u32(base + items, "values in one chunk")?,
                        grid_width,
                        base: to_u32(base, "values in one chunk")?,
                    }))
                },
            )?;
        }
        Ok(())
    }
}

fn check_values(len: usize) -> Result<()> {
    if len == 0 {
        Err(Error::ZeroDimension {
            name: "values to update",
        })
    } else {
        Ok(())
    }
}

fn check_storage(what: &'static str, buffer: &wgpu::Buffer, values: usize) -> Result<()> {
    check_buffer(what, buffer, values, wgpu::BufferUsages::STORAGE)
}

impl GpuContext {
    /// Records Adam's step `step` (1 for the first) on `len` values of the
    /// caller's buffers (see [the module docs](crate::optim) for the
    /// formula). Nothing is submitted and nothing waits on the device.
    pub fn record_adam_step(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: AdamBuffers<'_>,
        len: usize,
        adam: &Adam,
        step: u64,
    ) -> Result<()> {
        adam.validate()?;
        check_values(len)?;
        if step == 0 {
            return Err(Error::InvalidSetting {
                what: "step",
                value: "0".into(),
                expected: "the step count t starts at 1 (the first update)",
            });
        }
        check_storage("parameters", buffers.parameters, len)?;
        check_storage("gradient", buffers.gradient, len)?;
        check_storage("first_moment", buffers.first_moment, len)?;
        check_storage("second_moment", buffers.second_moment, len)?;
        let kernels = self.optim_kernels()?;
        // The bias corrections in f64: β^t for t up to 2^53 without overflow.
        let t = step as f64;
        let correction1 = 1.0 - f64::from(adam.beta1).powf(t);
        let correction2 = 1.0 - f64::from(adam.beta2).powf(t);
        let lr = f64::from(adam.learning_rate);
        let constants = AdamParams {
            end: 0,
            grid_width: 0,
            base: 0,
            _pad0: 0,
            beta1: adam.beta1,
            beta2: adam.beta2,
            epsilon: adam.epsilon,
            decay_factor: (1.0 - lr * f64::from(adam.weight_decay)) as f32,
            step_size: (lr / correction1) as f32,
            inverse_sqrt_correction: (1.0 / correction2.sqrt()) as f32,
            _pad1: [0.0; 2],
        };
        kernels.record_elementwise(
            self,
            encoder,
            Kernel {
                label: "optim.adam",
                pipeline: &kernels.adam,
                layout: &kernels.adam_layout,
            },
            len,
            &[
                Some(buffers.parameters),
                Some(buffers.gradient),
                Some(buffers.first_moment),
                Some(buffers.second_moment),
            ],
            |range| AdamParams {
                end: range.end,
                grid_width: range.grid_width,
                base: range.base,
                ..constants
            },
        )
    }

    /// Records one SGD step on `len` values of the caller's buffers.
    pub fn record_sgd_step(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: SgdBuffers<'_>,
        len: usize,
        sgd: &SgdMomentum,
    ) -> Result<()> {
        sgd.validate()?;
        check_values(len)?;
        check_storage("parameters", buffers.parameters, len)?;
        check_storage("gradient", buffers.gradient, len)?;
        match buffers.momentum_buffer {
            Some(buffer) => check_storage("momentum_buffer", buffer, len)?,
            None if sgd.momentum > 0.0 => {
                return Err(Error::MissingInput {
                    what: "momentum_buffer",
                    why: "SGD with momentum > 0 keeps its velocity there",
                })
            }
            None => {}
        }
        let kernels = self.optim_kernels()?;
        kernels.record_elementwise(
            self,
            encoder,
            Kernel {
                label: "optim.sgd_momentum",
                pipeline: &kernels.sgd,
                layout: &kernels.sgd_layout,
            },
            len,
            &[
                Some(buffers.parameters),
                Some(buffers.gradient),
                buffers.momentum_buffer.filter(|_| sgd.momentum > 0.0),
            ],
            |range| SgdParams {
                end: range.end,
                grid_width: range.grid_width,
                base: range.base,
                nesterov: u32::from(sgd.nesterov),
                learning_rate: sgd.learning_rate,
                momentum: sgd.momentum,
                weight_decay: sgd.weight_decay,
                _pad0: 0.0,
            },
        )
    }

    /// Records `y ← y + α x` on `len` values of the caller's buffers (`x`
    /// and `y` distinct, both with `STORAGE` usage).
    pub fn record_add_scaled(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        len: usize,
        alpha: f32,
    ) -> Result<()> {
        check_setting("alpha", alpha, true, "a finite value")?;
        check_values(len)?;
        check_storage("x", x, len)?;
        check_storage("y", y, len)?;
        let kernels = self.optim_kernels()?;
        kernels.record_elementwise(
            self,
            encoder,
            Kernel {
                label: "optim.add_scaled",
                pipeline: &kernels.add_scaled,
                layout: &kernels.add_layout,
            },
            len,
            &[Some(x), Some(y)],
            |range| AddScaledParams {
                end: range.end,
                grid_width: range.grid_width,
                base: range.base,
                _pad0: 0,
                alpha,
                _pad1: [0.0; 3],
            },
        )
    }

    /// Adam's step `step` on host slices: updates `parameters`,
    /// `first_moment` and `second_moment` in place from `gradient`.
    pub fn adam_step(
        &self,
        parameters: &mut [f32],
        gradient: &[f32],
        (first_moment, second_moment): (&mut [f32], &mut [f32]),
        adam: &Adam,
        step: u64,
    ) -> Result<()> {
        let len = parameters.len();
        check_len("gradient", len, gradient.len())?;
        check_len("first_moment", len, first_moment.len())?;
        check_len("second_moment", len, second_moment.len())?;
        self.run_elementwise(
            [
                Some(&mut *parameters),
                None,
                Some(first_moment),
                Some(second_moment),
            ],
            gradient,
            |gpu, encoder, [p, g, m, v]| {
                gpu.record_adam_step(
                    encoder,
                    AdamBuffers {
                        parameters: p,
                        gradient: g,
                        first_moment: m,
                        second_moment: v,
                    },
                    len,
                    adam,
                    step,
                )
            },
        )
    }

    /// One SGD step on host slices: updates `parameters` (and the momentum
    /// buffer, needed when `μ > 0`) in place from `gradient`.
    pub fn sgd_step(
        &self,
        parameters: &mut [f32],
        gradient: &[f32],
        momentum_buffer: Option<&mut [f32]>,
        sgd: &SgdMomentum,
    ) -> Result<()> {
        let len = parameters.len();
        check_len("gradient", len, gradient.len())?;
        if let Some(buffer) = &momentum_buffer {
            check_len("momentum_buffer", len, buffer.len())?;
        }
        let has_momentum = momentum_buffer.is_some();
        self.run_elementwise(
            [Some(&mut *parameters), None, momentum_buffer, None],
            gradient,
            |gpu, encoder, [p, g, u, _]| {
                gpu.record_sgd_step(
                    encoder,
                    SgdBuffers {
                        parameters: p,
                        gradient: g,
                        momentum_buffer: has_momentum.then_some(u),
                    },
                    len,
                    sgd,
                )
            },
        )
    }

    /// `y ← y + α x` on host slices.
    pub fn add_scaled(&self, x: &[f32], y: &mut [f32], alpha: f32) -> Result<()> {
        let len = y.len();
        check_len("x", len, x.len())?;
        self.run_elementwise(
            [Some(y), None, None, None],
            x,
            |gpu, encoder, [y, x, _, _]| gpu.record_add_scaled(encoder, x, y, len, alpha),
        )
    }

    /// Runs one slice-level update: `state` (parameters, —, first and
    /// second state) and `input` (the gradient or `x`) are uploaded to the
    /// workspace, `record` records the kernel on the workspace buffers
    /// (parameters, input, first, second), and the state slices that were
    /// given are read back in place.
    fn run_elementwise(
        &self,
        mut state: [Option<&mut [f32]>; 4],
        input: &[f32],
        record: impl FnOnce(&GpuContext, &mut wgpu::CommandEncoder, [&wgpu::Buffer; 4]) -> Result<()>,
    ) -> Result<()> {
        let len = input.len();
        check_values(len)?;
        let kernels = self.optim_kernels()?;
        let mut guard = kernels.workspace.lock();
        self.with_error_scope("updating parameters", || {
            let ws = &mut *guard;
            let device = self.device();
            let queue = self.queue();
            let max_buffer = self.chunk_limits().max_buffer_bytes;
            let bytes = bytes_of(len);
            // The given state slices and the input are uploaded; absent
            // state gets a buffer the kernel does not read.
            let slot = |buffer: &mut GrowableBuffer, values: Option<&[f32]>| match values {
                Some(values) => buffer.upload(self, values),
                None => buffer.ensure(device, bytes, max_buffer),
            };
            let buffers = [
                slot(&mut ws.parameters, state[0].as_deref())?,
                slot(&mut ws.gradient, Some(input))?,
                slot(&mut ws.first_state, state[2].as_deref())?,
                slot(&mut ws.second_state, state[3].as_deref())?,
            ];
            let mut encoder = device.create_command_encoder(&Default::default());
            let [p, g, m, v] = &buffers;
            record(self, &mut encoder, [p, g, m, v])?;
            let given: Vec<usize> = (0..4).filter(|&i| state[i].is_some()).collect();
            let staging = ws
                .staging
                .ensure(device, bytes * given.len() as u64, max_buffer)?;
            for (slot, &i) in given.iter().enumerate() {
                encoder.copy_buffer_to_buffer(&buffers[i], 0, &staging, slot as u64 * bytes, bytes);
            }
            queue.submit([encoder.finish()]);
            let values: Vec<f32> = self.read_back(&staging, bytes * given.len() as u64)?;
            for (&i, chunk) in given.iter().zip(values.chunks_exact(len)) {
                if let Some(target) = state[i].as_deref_mut() {
                    target.copy_from_slice(chunk);
                }
            }
            Ok(())
        })
    }
}
