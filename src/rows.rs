//! Row preparation on the GPU (`shaders/rows.wgsl`): the first step of every
//! kernel family that reads embeddings.
//!
//! Rows of `D` values are copied into rows padded with zeros to a multiple
//! of 4 (so kernels use `vec4` loads for any `D`), divided by their L2 norm
//! `‖x‖₂` when asked (rows of norm 0 stay 0), with a `vec4<u32>` of
//! metadata beside each row: `(bits of ‖x‖₂, label, id, 0)`. The CPU mirror
//! is [`crate::reference::rows`].

use crate::binding::{
    bind_group_layout, offset_binding, record_split, to_u32, AlignedRange, Kernel, BYTES_PER_VEC4,
    READ, READ_WRITE, UNIFORM,
};
use crate::context::{exactly, GpuContext};
use crate::error::{Error, Result};

const SHADER: &str = include_str!("../shaders/rows.wgsl");

/// Bytes of `rows` prepared rows of `vec_dim` vec4s.
pub(crate) fn prepared_bytes(rows: usize, vec_dim: usize) -> u64 {
    rows as u64 * vec_dim as u64 * BYTES_PER_VEC4
}

/// Bytes of the metadata of `rows` rows.
pub(crate) fn meta_bytes(rows: usize) -> u64 {
    rows as u64 * BYTES_PER_VEC4
}

/// vec4s per prepared row of `d` values.
pub(crate) const fn vec_dim(d: usize) -> usize {
    d.div_ceil(4)
}

/// Rows `first_row..first_row + rows` of a row-major `f32` buffer of width
/// `dim`, with the labels and ids of the same rows where there are any.
#[derive(Clone, Copy)]
pub(crate) struct RowSource<'a> {
    pub(crate) buffer: &'a wgpu::Buffer,
    pub(crate) first_row: usize,
    pub(crate) rows: usize,
    pub(crate) dim: usize,
    pub(crate) labels: Option<&'a wgpu::Buffer>,
    pub(crate) ids: Option<&'a wgpu::Buffer>,
}

impl<'a> RowSource<'a> {
    pub(crate) fn new(buffer: &'a wgpu::Buffer, first_row: usize, rows: usize, dim: usize) -> Self {
        Self {
            buffer,
            first_row,
            rows,
            dim,
            labels: None,
            ids: None,
        }
    }
}

/// Where prepared rows go: rows `first_row..` of `rows` and `meta`.
#[derive(Clone, Copy)]
pub(crate) struct PreparedTarget<'a> {
    pub(crate) rows: &'a wgpu::Buffer,
    pub(crate) meta: &'a wgpu::Buffer,
    pub(crate) first_row: usize,
}

/// Mirrors `PrepareParams` in shaders/rows.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PrepareParams {
    rows: u32,
    dim: u32,
    source_offset: u32,
    vec_dim: u32,
    normalize: u32,
    grid_width: u32,
    label_offset: u32,
    id_offset: u32,
    has_labels: u32,
    has_ids: u32,
    row_base: u32,
    _pad: u32,
}

/// The `prepare_rows` pipeline; one per device, owned by its [`GpuContext`].
pub(crate) struct RowKernels {
    layout: wgpu::BindGroupLayout,
    prepare: wgpu::ComputePipeline,
    /// Bound in place of absent labels or ids.
    placeholder: wgpu::Buffer,
}

impl RowKernels {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        let device = ctx.device();
        let layout = bind_group_layout(
            device,
            "rows.prepare_rows",
            &[UNIFORM, READ, READ, READ, READ_WRITE, READ_WRITE],
        );
        let (_, plain) =
            ctx.create_pipeline_set("rows.wgsl", SHADER, (&[], 0), &[("prepare_rows", &layout)])?;
        let [prepare] = exactly(plain)?;
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("rows.placeholder"),
            size: BYTES_PER_VEC4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Self {
            layout,
            prepare,
            placeholder,
        })
    }

    /// `buffer`'s range of this chunk's rows, or the placeholder.
    fn optional_binding<'b>(
        &'b self,
        range: &AlignedRange,
        buffer: Option<&'b wgpu::Buffer>,
    ) -> wgpu::BindingResource<'b> {
        match buffer {
            Some(buffer) => range.binding(buffer),
            None => self.placeholder.as_entire_binding(),
        }
    }

    /// A storage buffer to bind where an optional input is absent.
    pub(crate) fn placeholder(&self) -> &wgpu::Buffer {
        &self.placeholder
    }

    /// Records `prepare_rows` for `source` into rows `first_row..` of
    /// `target` (padded rows and metadata). `first_row` must put both at
    /// aligned offsets (any multiple of 16 rows does).
    pub(crate) fn record(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        source: RowSource<'_>,
        normalize: bool,
        target: PreparedTarget<'_>,
    ) -> Result<()> {
        let limits = ctx.chunk_limits();
        let alignment = limits.storage_offset_alignment;
        let vec_dim = vec_dim(source.dim);
        let rows_offset = prepared_bytes(target.first_row, vec_dim);
        let meta_offset = meta_bytes(target.first_row);
        if rows_offset % alignment != 0 || meta_offset % alignment != 0 {
            return Err(Error::Device {
                during: "recording row preparation",
                message: format!("row {} is not at an aligned offset", target.first_row),
            });
        }
        let values = AlignedRange::new(
            source.first_row as u64 * source.dim as u64,
            source.rows as u64 * source.dim as u64,
            alignment,
        )?;
        let per_row = AlignedRange::new(source.first_row as u64, source.rows as u64, alignment)?;
        let device = ctx.device();
        let source_binding = values.binding(source.buffer);
        let label_binding = self.optional_binding(&per_row, source.labels);
        let id_binding = self.optional_binding(&per_row, source.ids);
        let rows_binding = offset_binding(
            target.rows,
            rows_offset,
            prepared_bytes(source.rows, vec_dim),
        );
        let meta_binding = offset_binding(target.meta, meta_offset, meta_bytes(source.rows));
        record_split(
            device,
            encoder,
            Kernel {
                label: "rows.prepare_rows",
                pipeline: &self.prepare,
                layout: &self.layout,
            },
            (source.rows, 1, limits.max_workgroups_per_dimension),
            &[
                source_binding,
                label_binding,
                id_binding,
                rows_binding,
                meta_binding,
            ],
            |row_base, _, (grid_width, _)| {
                Ok(PrepareParams {
                    rows: to_u32(source.rows, "rows in one chunk")?,
                    dim: to_u32(source.dim, "D")?,
                    source_offset: values.shift,
                    vec_dim: to_u32(vec_dim, "D / 4")?,
                    normalize: u32::from(normalize),
                    grid_width,
                    label_offset: per_row.shift,
                    id_offset: per_row.shift,
                    has_labels: u32::from(source.labels.is_some()),
                    has_ids: u32::from(source.ids.is_some()),
                    row_base: to_u32(row_base, "rows in one chunk")?,
                    _pad: 0,
                })
            },
        )
    }
}
