//! Dense layers on the GPU, the building block of a small embedding model
//! trained with the contrastive loss (see `examples/train.rs`).
//!
//! For a batch `X` of `rows x inputs` values, a weight matrix `W`
//! (`inputs x outputs`, row-major) and an optional bias `b` (`outputs`):
//!
//! ```text
//! forward:          Y  = act(X W + b)
//! input gradient:   ∂L/∂X = (∂L/∂Y ⊙ act'(Y)) Wᵀ
//! weight gradient:  ∂L/∂W = Xᵀ (∂L/∂Y ⊙ act'(Y))
//! bias gradient:    ∂L/∂b = Σ_rows ∂L/∂Y ⊙ act'(Y)
//! ```
//!
//! with `act` the identity or ReLU `max(z, 0)`, whose derivative is taken as
//! 1 where `Y > 0` and 0 elsewhere (so the backward pass needs the forward's
//! output, not its pre-activation). Every output is one sequential `f32`
//! sum, so results are bitwise reproducible; batches larger than one
//! storage binding or one dispatch are split into chunks of rows, and the
//! weight and bias gradients are accumulated over the chunks in order.
//!
//! The kernels are `shaders/linear.wgsl`; the CPU mirror is
//! [`crate::reference::linear`].

use crate::binding::{
    bind_group, bind_group_layout, bytes_of, check_buffer, dispatch, sized_binding, to_u32,
    uniform_buffer, AlignedRange, BYTES_PER_VALUE, MAX_DISPATCH_WORK, READ, READ_WRITE, UNIFORM,
};
use crate::context::{exactly, GpuContext};
use crate::distance::check_len;
use crate::error::{Error, Result};
use crate::workspace::{GrowableBuffer, Locked};

const SHADER: &str = include_str!("../shaders/linear.wgsl");
/// Outputs per `gemm` tile side.
const TILE: usize = 64;
/// Columns per `column_sums` workgroup.
const SUM_COLUMNS: usize = 64;

/// The activation applied after a dense layer's affine map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// `act(z) = z`.
    #[default]
    Identity,
    /// `act(z) = max(z, 0)`; its derivative is 1 where the output is `> 0`.
    Relu,
}

/// The shape of a dense layer applied to a batch: `rows` items of `inputs`
/// values each map to `outputs` values each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Items in the batch.
    pub rows: usize,
    /// Values per input row (rows of `W`).
    pub inputs: usize,
    /// Values per output row (columns of `W`).
    pub outputs: usize,
}

impl LinearShape {
    /// A batch of `rows` items, `inputs` values in, `outputs` values out.
    pub fn new(rows: usize, inputs: usize, outputs: usize) -> Self {
        Self {
            rows,
            inputs,
            outputs,
        }
    }

    /// Checks that every dimension is at least 1.
    pub fn validate(&self) -> Result<()> {
        for (value, name) in [
            (self.rows, "rows of the batch"),
            (self.inputs, "inputs per row"),
            (self.outputs, "outputs per row"),
        ] {
            if value == 0 {
                return Err(Error::ZeroDimension { name });
            }
        }
        Ok(())
    }

    fn product(a: usize, b: usize, what: &'static str) -> Result<usize> {
        a.checked_mul(b).ok_or(Error::SizeOverflow { what })
    }

    /// Values of the input batch, `rows * inputs`.
    pub fn input_len(&self) -> Result<usize> {
        Self::product(self.rows, self.inputs, "the input batch")
    }

    /// Values of the weight matrix, `inputs * outputs`.
    pub fn weight_len(&self) -> Result<usize> {
        Self::product(self.inputs, self.outputs, "the weight matrix")
    }

    /// Values of the output batch, `rows * outputs`.
    pub fn output_len(&self) -> Result<usize> {
        Self::product(self.rows, self.outputs, "the output batch")
    }
}

/// Caller-owned buffers for [`GpuContext::record_linear_forward`]; all need
/// `STORAGE` usage and must be distinct buffers.
#[derive(Clone, Copy, Debug)]
pub struct LinearForwardBuffers<'a> {
    /// `X`, `rows x inputs`.
    pub input: &'a wgpu::Buffer,
    /// `W`, `inputs x outputs`.
    pub weight: &'a wgpu::Buffer,
    /// `b`, `outputs` values; `None` for a layer without bias.
    pub bias: Option<&'a wgpu::Buffer>,
    /// Receives `Y`, `rows x outputs`.
    pub output: &'a wgpu::Buffer,
}

/// Caller-owned buffers for [`GpuContext::record_linear_backward`]; all need
/// `STORAGE` usage and must be distinct buffers.
#[derive(Clone, Copy, Debug)]
pub struct LinearBackwardBuffers<'a> {
    /// `X`, `rows x inputs`, as the forward read it.
    pub input: &'a wgpu::Buffer,
    /// `W`, `inputs x outputs`.
    pub weight: &'a wgpu::Buffer,
    /// The forward's output `Y`: needed for [`Activation::Relu`] (its
    /// derivative), ignored for [`Activation::Identity`].
    pub output: Option<&'a wgpu::Buffer>,
    /// `∂L/∂Y`, `rows x outputs`.
    pub output_gradient: &'a wgpu::Buffer,
    /// Receives `∂L/∂X` (`rows x inputs`); `None` for a first layer.
    pub input_gradient: Option<&'a wgpu::Buffer>,
    /// Receives `∂L/∂W` (`inputs x outputs`).
    pub weight_gradient: Option<&'a wgpu::Buffer>,
    /// Receives `∂L/∂b` (`outputs`).
    pub bias_gradient: Option<&'a wgpu::Buffer>,
}

/// The gradients [`GpuContext::linear_backward`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGradients {
    /// `∂L/∂X`, `rows x inputs`.
    pub input: Vec<f32>,
    /// `∂L/∂W`, `inputs x outputs`.
    pub weight: Vec<f32>,
    /// `∂L/∂b`, `outputs`.
    pub bias: Vec<f32>,
}

/// Whether the gradients a backward call writes replace what their buffers
/// hold or are added to it (gradient accumulation over several batches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradientWrite {
    /// Overwrite the gradient buffers.
    #[default]
    Replace,
    /// Add to what the gradient buffers hold.
    Accumulate,
}

/// Mirrors `GemmParams` in shaders/linear.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    rows: u32,
    cols: u32,
    inner: u32,
    flags: u32,
    a_offset: u32,
    a_row_stride: u32,
    a_inner_stride: u32,
    mask_offset: u32,
    b_offset: u32,
    b_inner_stride: u32,
    b_col_stride: u32,
    bias_offset: u32,
    out_offset: u32,
    out_row_stride: u32,
    _pad: [u32; 2],
}

const FLAG_BIAS: u32 = 1;
const FLAG_RELU: u32 = 2;
const FLAG_ACCUMULATE: u32 = 4;
const FLAG_MASK_A: u32 = 8;
const FLAG_MASK_B: u32 = 16;

/// A matrix inside a buffer: element `(r, c)` is value
/// `first + r * strides.0 + c * strides.1`, and the matrix lies within
/// `span` values from `first`.
#[derive(Clone, Copy)]
struct StridedMatrix<'a> {
    buffer: &'a wgpu::Buffer,
    first: u64,
    span: u64,
    strides: (u32, u32),
}

/// Which operand of a product reads the ReLU mask.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Masked {
    A,
    B,
}

/// One product `out (+)= A B` (+ bias, ReLU), `rows x inner` by
/// `inner x cols`.
struct GemmJob<'a> {
    rows: usize,
    cols: usize,
    inner: usize,
    a: StridedMatrix<'a>,
    b: StridedMatrix<'a>,
    /// The mask buffer, laid out like the masked operand.
    mask: Option<(Masked, &'a wgpu::Buffer)>,
    bias: Option<&'a wgpu::Buffer>,
    out: StridedMatrix<'a>,
    relu: bool,
    accumulate: bool,
}

/// Buffers the slice API reuses from call to call.
struct LinearWorkspace {
    input: GrowableBuffer,
    weight: GrowableBuffer,
    bias: GrowableBuffer,
    output: GrowableBuffer,
    output_gradient: GrowableBuffer,
    input_gradient: GrowableBuffer,
    weight_gradient: GrowableBuffer,
    bias_gradient: GrowableBuffer,
    staging: GrowableBuffer,
}

/// The pipelines of `shaders/linear.wgsl` and the slice API's buffers; one
/// per device, owned by its [`GpuContext`].
pub(crate) struct LinearKernels {
    gemm_layout: wgpu::BindGroupLayout,
    sums_layout: wgpu::BindGroupLayout,
    gemm: wgpu::ComputePipeline,
    column_sums: wgpu::ComputePipeline,
    /// Bound in place of an absent bias or mask.
    placeholder: wgpu::Buffer,
    workspace: Locked<LinearWorkspace>,
}

impl LinearKernels {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        let device = ctx.device();
        let gemm_layout = bind_group_layout(
            device,
            "linear.gemm",
            &[UNIFORM, READ, READ, READ, READ, READ_WRITE],
        );
        let sums_layout = bind_group_layout(
            device,
            "linear.column_sums",
            &[UNIFORM, READ, READ, READ_WRITE],
        );
        let (_, plain) = ctx.create_pipeline_set(
            "linear.wgsl",
            SHADER,
            (&[], 0),
            &[("gemm", &gemm_layout), ("column_sums", &sums_layout)],
        )?;
        let [gemm, column_sums] = exactly(plain)?;
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("linear.placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let upload = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let result = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let workspace = LinearWorkspace {
            input: GrowableBuffer::new("linear.input", upload),
            weight: GrowableBuffer::new("linear.weight", upload),
            bias: GrowableBuffer::new("linear.bias", upload),
            output: GrowableBuffer::new("linear.output", upload | result),
            output_gradient: GrowableBuffer::new("linear.output_gradient", upload),
            input_gradient: GrowableBuffer::new("linear.input_gradient", result),
            weight_gradient: GrowableBuffer::new("linear.weight_gradient", result),
            bias_gradient: GrowableBuffer::new("linear.bias_gradient", result),
            staging: GrowableBuffer::new(
                "linear.staging",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        };
        Ok(Self {
            gemm_layout,
            sums_layout,
            gemm,
            column_sums,
            placeholder,
            workspace: Locked::new(workspace),
        })
    }

    /// Records `job` as dispatches of at most the device's workgroups per
    /// dimension.
    fn record_gemm(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        job: &GemmJob<'_>,
    ) -> Result<()> {
        let limits = ctx.chunk_limits();
        let alignment = limits.storage_offset_alignment;
        let a_range = AlignedRange::new(job.a.first, job.a.span, alignment)?;
        let b_range = AlignedRange::new(job.b.first, job.b.span, alignment)?;
        let out_range = AlignedRange::new(job.out.first, job.out.span, alignment)?;
        let mask_range = match job.mask {
            Some((Masked::A, _)) => Some(AlignedRange::new(job.a.first, job.a.span, alignment)?),
            Some((Masked::B, _)) => Some(AlignedRange::new(job.b.first, job.b.span, alignment)?),
            None => None,
        };
        let device = ctx.device();
        let mask_binding = match (job.mask, &mask_range) {
            (Some((_, buffer)), Some(range)) => range.binding(buffer),
            _ => self.placeholder.as_entire_binding(),
        };
        let bias_binding = job.bias.map_or(self.placeholder.as_entire_binding(), |b| {
            sized_binding(b, bytes_of(job.cols))
        });
        let block = limits.max_workgroups_per_dimension as usize * TILE;
        let mut flags = 0;
        for (set, flag) in [
            (job.bias.is_some(), FLAG_BIAS),
            (job.relu, FLAG_RELU),
            (job.accumulate, FLAG_ACCUMULATE),
            (matches!(job.mask, Some((Masked::A, _))), FLAG_MASK_A),
            (matches!(job.mask, Some((Masked::B, _))), FLAG_MASK_B),
        ] {
            if set {
                flags |= flag;
            }
        }
        let index = |value: u64| -> Result<u32> {
            u32::try_from(value).map_err(|_| Error::SizeOverflow {
                what: "an index within one binding",
            })
        };
        for r0 in (0..job.rows).step_by(block) {
            let rows = block.min(job.rows - r0);
            for c0 in (0..job.cols).step_by(block) {
                let cols = block.min(job.cols - c0);
                let a_shift = r0 as u64 * u64::from(job.a.strides.0);
                let b_shift = c0 as u64 * u64::from(job.b.strides.1);
                let mask_offset = match (job.mask, &mask_range) {
                    (Some((Masked::A, _)), Some(range)) => u64::from(range.shift) + a_shift,
                    (Some((Masked::B, _)), Some(range)) => u64::from(range.shift) + b_shift,
                    _ => 0,
                };
                let params = GemmParams {
                    rows: to_u32(rows, "rows of one product")?,
                    cols: to_u32(cols, "columns of one product")?,
                    inner: to_u32(job.inner, "the inner dimension of one product")?,
                    flags,
                    a_offset: index(u64::from(a_range.shift) + a_shift)?,
                    a_row_stride: job.a.strides.0,
                    a_inner_stride: job.a.strides.1,
                    mask_offset: index(mask_offset)?,
                    b_offset: index(u64::from(b_range.shift) + b_shift)?,
                    b_inner_stride: job.b.strides.0,
                    b_col_stride: job.b.strides.1,
                    bias_offset: to_u32(c0, "columns of one product")?,
                    out_offset: index(
                        u64::from(out_range.shift)
                            + r0 as u64 * u64::from(job.out.strides.0)
                            + c0 as u64,
                    )?,
                    out_row_stride: job.out.strides.0,
                    _pad: [0; 2],
                };
                let params_buffer = uniform_buffer(device, "linear.gemm_params", &params);
                let group = bind_group(
                    device,
                    "linear.gemm",
                    &self.gemm_layout,
                    vec![
                        params_buffer.as_entire_binding(),
                        a_range.binding(job.a.buffer),
                        b_range.binding(job.b.buffer),
                        mask_binding.clone(),
                        bias_binding.clone(),
                        out_range.binding(job.out.buffer),
                    ],
                );
                let groups = (
                    to_u32(cols.div_ceil(TILE), "workgroups")?,
                    to_u32(rows.div_ceil(TILE), "workgroups")?,
                );
                dispatch(encoder, "linear.gemm", &self.gemm, &group, groups);
            }
        }
        Ok(())
    }

    /// Records `out (+)= Σ_r source(r, ·)` (masked) for the `rows x cols`
    /// row-major matrix `source`.
    #[allow(clippy::too_many_arguments)]
    fn record_column_sums(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        source: StridedMatrix<'_>,
        (rows, cols): (usize, usize),
        mask: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
        accumulate: bool,
    ) -> Result<()> {
        let limits = ctx.chunk_limits();
        let range = AlignedRange::new(source.first, source.span, limits.storage_offset_alignment)?;
        let device = ctx.device();
        let block = limits.max_workgroups_per_dimension as usize * SUM_COLUMNS;
        for c0 in (0..cols).step_by(block) {
            let block_cols = block.min(cols - c0);
            let mut flags = 0;
            if accumulate {
                flags |= FLAG_ACCUMULATE;
            }
            if mask.is_some() {
                flags |= FLAG_MASK_A;
            }
            let offset = to_u32(range.shift as usize + c0, "an index within one binding")?;
            let params = GemmParams {
                rows: to_u32(rows, "rows of one chunk")?,
                cols: to_u32(block_cols, "columns")?,
                flags,
                a_offset: offset,
                a_row_stride: source.strides.0,
                mask_offset: offset,
                out_offset: to_u32(c0, "columns")?,
                ..GemmParams::default()
            };
            let params_buffer = uniform_buffer(device, "linear.sum_params", &params);
            let group = bind_group(
                device,
                "linear.column_sums",
                &self.sums_layout,
                vec![
                    params_buffer.as_entire_binding(),
                    range.binding(source.buffer),
                    mask.map_or(self.placeholder.as_entire_binding(), |m| range.binding(m)),
                    sized_binding(out, bytes_of(cols)),
                ],
            );
            let groups = (to_u32(block_cols.div_ceil(SUM_COLUMNS), "workgroups")?, 1);
            dispatch(
                encoder,
                "linear.column_sums",
                &self.column_sums,
                &group,
                groups,
            );
        }
        Ok(())
    }
}

/// Rows of the batch per chunk: each chunk's rows of `X`, `Y` and `∂L/∂Y`
/// fit one storage binding (after its offset alignment), each index fits
/// `u32`, and one product's work stays within [`MAX_DISPATCH_WORK`].
fn rows_per_chunk(ctx: &GpuContext, shape: LinearShape) -> Result<usize> {
    let limits = ctx.chunk_limits();
    let binding_values = (limits.max_binding_bytes / BYTES_PER_VALUE).min(u64::from(u32::MAX));
    let alignment_values = limits.storage_offset_alignment / BYTES_PER_VALUE;
    let weight_values = shape.weight_len()? as u64;
    if weight_values > binding_values {
        return Err(Error::TooLarge {
            what: format!("the {} x {} weight matrix", shape.inputs, shape.outputs),
            needed: bytes_of(shape.weight_len()?),
            limit_name: "max_storage_buffer_binding_size",
            limit: limits.max_binding_bytes,
        });
    }
    let widest = shape.inputs.max(shape.outputs) as u64;
    let by_binding = binding_values.saturating_sub(alignment_values) / widest;
    if by_binding == 0 {
        return Err(Error::TooLarge {
            what: format!("one row of {widest} values plus its offset alignment"),
            needed: (widest + alignment_values) * BYTES_PER_VALUE,
            limit_name: "max_storage_buffer_binding_size",
            limit: limits.max_binding_bytes,
        });
    }
    // The work unit of MAX_DISPATCH_WORK is a pair x vec4: 4 multiply-adds.
    let by_work = (4 * MAX_DISPATCH_WORK / weight_values).max(1);
    Ok((shape.rows as u64).min(by_binding).min(by_work) as usize)
}

/// The rows `r0..r0 + rows` of a row-major matrix of width `width`, read
/// row by row (`transposed`: column by column, as `Mᵀ`).
fn row_block(
    buffer: &wgpu::Buffer,
    (r0, rows): (usize, usize),
    width: usize,
    transposed: bool,
) -> Result<StridedMatrix<'_>> {
    let width32 = to_u32(width, "values per row")?;
    Ok(StridedMatrix {
        buffer,
        first: r0 as u64 * width as u64,
        span: rows as u64 * width as u64,
        strides: if transposed {
            (1, width32)
        } else {
            (width32, 1)
        },
    })
}

fn check_storage(what: &'static str, buffer: &wgpu::Buffer, values: usize) -> Result<()> {
    check_buffer(what, buffer, values, wgpu::BufferUsages::STORAGE)
}

impl GpuContext {
    /// Computes `Y = act(X W + b)` for the `rows x inputs` batch `input`,
    /// the `inputs x outputs` weight matrix `weight` (row-major) and the
    /// optional bias (`outputs` values); returns `Y`, row-major
    /// `rows x outputs`.
    pub fn linear_forward(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        shape: LinearShape,
        activation: Activation,
    ) -> Result<Vec<f32>> {
        shape.validate()?;
        check_len("input", shape.input_len()?, input.len())?;
        check_len("weight", shape.weight_len()?, weight.len())?;
        if let Some(bias) = bias {
            check_len("bias", shape.outputs, bias.len())?;
        }
        let kernels = self.linear_kernels()?;
        let mut guard = kernels.workspace.lock();
        self.with_error_scope("computing a dense layer", || {
            let ws = &mut *guard;
            let device = self.device();
            let max_buffer = self.chunk_limits().max_buffer_bytes;
            let input_buffer = ws.input.upload(self, input)?;
            let weight_buffer = ws.weight.upload(self, weight)?;
            let bias_buffer = bias.map(|b| ws.bias.upload(self, b)).transpose()?;
            let out_bytes = bytes_of(shape.output_len()?);
            let output = ws.output.ensure(device, out_bytes, max_buffer)?;
            let mut encoder = device.create_command_encoder(&Default::default());
            self.record_linear_forward(
                &mut encoder,
                LinearForwardBuffers {
                    input: &input_buffer,
                    weight: &weight_buffer,
                    bias: bias_buffer.as_ref(),
                    output: &output,
                },
                shape,
                activation,
            )?;
            let staging = ws.staging.ensure(device, out_bytes, max_buffer)?;
            encoder.copy_buffer_to_buffer(&output, 0, &staging, 0, out_bytes);
            self.queue().submit([encoder.finish()]);
            self.read_back(&staging, out_bytes)
        })
    }

    /// The gradients of a dense layer (see [the module docs](crate::linear)):
    /// `∂L/∂X`, `∂L/∂W` and `∂L/∂b` from the layer's input, weights, the
    /// forward's output `Y` (needed for [`Activation::Relu`]; `None` for
    /// [`Activation::Identity`]) and `∂L/∂Y`.
    pub fn linear_backward(
        &self,
        input: &[f32],
        weight: &[f32],
        output: Option<&[f32]>,
        output_gradient: &[f32],
        shape: LinearShape,
        activation: Activation,
    ) -> Result<LinearGradients> {
        shape.validate()?;
        let (input_len, weight_len, output_len) =
            (shape.input_len()?, shape.weight_len()?, shape.output_len()?);
        check_len("input", input_len, input.len())?;
        check_len("weight", weight_len, weight.len())?;
        check_len("output_gradient", output_len, output_gradient.len())?;
        if let Some(output) = output {
            check_len("output", output_len, output.len())?;
        }
        let kernels = self.linear_kernels()?;
        let mut guard = kernels.workspace.lock();
        self.with_error_scope("computing a dense layer's gradients", || {
            let ws = &mut *guard;
            let device = self.device();
            let max_buffer = self.chunk_limits().max_buffer_bytes;
            let input_buffer = ws.input.upload(self, input)?;
            let weight_buffer = ws.weight.upload(self, weight)?;
            let output_buffer = output.map(|o| ws.output.upload(self, o)).transpose()?;
            let output_gradient_buffer = ws.output_gradient.upload(self, output_gradient)?;
            let sizes = [input_len, weight_len, shape.outputs].map(bytes_of);
            let input_gradient = ws.input_gradient.ensure(device, sizes[0], max_buffer)?;
            let weight_gradient = ws.weight_gradient.ensure(device, sizes[1], max_buffer)?;
            let bias_gradient = ws.bias_gradient.ensure(device, sizes[2], max_buffer)?;
            let mut encoder = device.create_command_encoder(&Default::default());
            self.record_linear_backward(
                &mut encoder,
                LinearBackwardBuffers {
                    input: &input_buffer,
                    weight: &weight_buffer,
                    output: output_buffer.as_ref(),
                    output_gradient: &output_gradient_buffer,
                    input_gradient: Some(&input_gradient),
                    weight_gradient: Some(&weight_gradient),
                    bias_gradient: Some(&bias_gradient),
                },
                shape,
                activation,
                GradientWrite::Replace,
            )?;
            let total: u64 = sizes.iter().sum();
            let staging = ws.staging.ensure(device, total, max_buffer)?;
            let mut at = 0;
            for (buffer, bytes) in [&input_gradient, &weight_gradient, &bias_gradient]
                .into_iter()
                .zip(sizes)
            {
                encoder.copy_buffer_to_buffer(buffer, 0, &staging, at, bytes);
                at += bytes;
            }
            self.queue().submit([encoder.finish()]);
            let mut values: Vec<f32> = self.read_back(&staging, total)?;
            let bias = values.split_off(input_len + weight_len);
            let weight = values.split_off(input_len);
            Ok(LinearGradients {
                input: values,
                weight,
                bias,
            })
        })
    }

    /// Records `Y = act(X W + b)` on the caller's buffers and encoder;
    /// nothing is submitted and nothing waits on the device.
    pub fn record_linear_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: LinearForwardBuffers<'_>,
        shape: LinearShape,
        activation: Activation,
    ) -> Result<()> {
        shape.validate()?;
        check_storage("input", buffers.input, shape.input_len()?)?;
        check_storage("weight", buffers.weight, shape.weight_len()?)?;
        if let Some(bias) = buffers.bias {
            check_storage("bias", bias, shape.outputs)?;
        }
        check_storage("output", buffers.output, shape.output_len()?)?;
        let kernels = self.linear_kernels()?;
        let chunk = rows_per_chunk(self, shape)?;
        let LinearShape {
            rows,
            inputs,
            outputs,
        } = shape;
        let weight = row_block(buffers.weight, (0, inputs), outputs, false)?;
        for r0 in (0..rows).step_by(chunk) {
            let chunk_rows = (r0, chunk.min(rows - r0));
            kernels.record_gemm(
                self,
                encoder,
                &GemmJob {
                    rows: chunk_rows.1,
                    cols: outputs,
                    inner: inputs,
                    a: row_block(buffers.input, chunk_rows, inputs, false)?,
                    b: weight,
                    mask: None,
                    bias: buffers.bias,
                    out: row_block(buffers.output, chunk_rows, outputs, false)?,
                    relu: activation == Activation::Relu,
                    accumulate: false,
                },
            )?;
        }
        Ok(())
    }

    /// Records the gradients of a dense layer on the caller's buffers and
    /// encoder: `∂L/∂X`, `∂L/∂W` and `∂L/∂b`, each where a buffer is given,
    /// replacing or added to what the buffers hold (`write`). Nothing is
    /// submitted and nothing waits on the device.
    pub fn record_linear_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: LinearBackwardBuffers<'_>,
        shape: LinearShape,
        activation: Activation,
        write: GradientWrite,
    ) -> Result<()> {
        shape.validate()?;
        let (input_len, weight_len, output_len) =
            (shape.input_len()?, shape.weight_len()?, shape.output_len()?);
        check_storage("input", buffers.input, input_len)?;
        check_storage("weight", buffers.weight, weight_len)?;
        check_storage("output_gradient", buffers.output_gradient, output_len)?;
        let mask = match (activation, buffers.output) {
            (Activation::Identity, _) => None,
            (Activation::Relu, Some(output)) => {
                check_storage("output", output, output_len)?;
                Some(output)
            }
            (Activation::Relu, None) => {
                return Err(Error::MissingInput {
                    what: "output",
                    why: "the ReLU's derivative is read from the forward's output Y",
                })
            }
        };
        if let Some(b) = buffers.input_gradient {
            check_storage("input_gradient", b, input_len)?;
        }
        if let Some(b) = buffers.weight_gradient {
            check_storage("weight_gradient", b, weight_len)?;
        }
        if let Some(b) = buffers.bias_gradient {
            check_storage("bias_gradient", b, shape.outputs)?;
        }
        let kernels = self.linear_kernels()?;
        let chunk = rows_per_chunk(self, shape)?;
        let LinearShape {
            rows,
            inputs,
            outputs,
        } = shape;
        let accumulate = write == GradientWrite::Accumulate;
        for (index, r0) in (0..rows).step_by(chunk).enumerate() {
            let chunk_rows = (r0, chunk.min(rows - r0));
            let output_gradient = row_block(buffers.output_gradient, chunk_rows, outputs, false)?;
            if let Some(input_gradient) = buffers.input_gradient {
                // ∂L/∂X = (∂L/∂Y ⊙ act') Wᵀ
                kernels.record_gemm(
                    self,
                    encoder,
                    &GemmJob {
                        rows: chunk_rows.1,
                        cols: inputs,
                        inner: outputs,
                        a: output_gradient,
                        b: row_block(buffers.weight, (0, inputs), outputs, true)?,
                        mask: mask.map(|m| (Masked::A, m)),
                        bias: None,
                        out: row_block(input_gradient, chunk_rows, inputs, false)?,
                        relu: false,
                        accumulate,
                    },
                )?;
            }
            // Later chunks add to what the first wrote.
            let accumulate = accumulate || index > 0;
            if let Some(weight_gradient) = buffers.weight_gradient {
                // ∂L/∂W = Xᵀ (∂L/∂Y ⊙ act')
                kernels.record_gemm(
                    self,
                    encoder,
                    &GemmJob {
                        rows: inputs,
                        cols: outputs,
                        inner: chunk_rows.1,
                        a: row_block(buffers.input, chunk_rows, inputs, true)?,
                        b: output_gradient,
                        mask: mask.map(|m| (Masked::B, m)),
                        bias: None,
                        out: row_block(weight_gradient, (0, inputs), outputs, false)?,
                        relu: false,
                        accumulate,
                    },
                )?;
            }
            if let Some(bias_gradient) = buffers.bias_gradient {
                kernels.record_column_sums(
                    self,
                    encoder,
                    output_gradient,
                    (chunk_rows.1, outputs),
                    mask,
                    bias_gradient,
                    accumulate,
                )?;
            }
        }
        Ok(())
    }
}
