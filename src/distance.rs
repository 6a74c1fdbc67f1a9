//! Pairwise distances between two sets of embeddings on the GPU.
//!
//! For X (N x D) and Y (M x D), row-major `f32`, the output is the N x M
//! row-major matrix `out[i * M + j] = d(x_i, y_j)` with
//!
//! | [`Distance`] | d(x, y) |
//! |---|---|
//! | `Euclidean` | `‖x − y‖₂` |
//! | `SquaredEuclidean` | `‖x − y‖₂²` |
//! | `Cosine` | `1 − x·y / (‖x‖ ‖y‖)`, 1 where a norm is 0 (cos = 0) |
//! | `Dot` | `x·y` (a similarity: larger is closer) |
//!
//! With [`DistanceOptions::normalize`] every row is first replaced by
//! `x / ‖x‖` (rows of norm 0 stay 0).
//!
//! Accuracy: Euclidean distances accumulate `(x_k − y_k)²` directly, never
//! `‖x‖² + ‖y‖² − 2 x·y`, so identical rows are exactly 0 apart, rows
//! `[512695.0]` and `[512804.0]` are 109 apart (the expansion gives 0 in
//! `f32`), and finite input never gives NaN. The rare pairs whose sum of
//! squares overflows or may underflow `f32` are recomputed with scaling, so
//! Euclidean distances are right from about `1e-38` to `f32::MAX` (only a
//! distance beyond `f32::MAX` gives `+inf`; a squared distance beyond it
//! does too). Cosine distance is computed as `‖u − v‖² / 2` on the
//! normalised rows, equal to `1 − cos` without its cancellation.
//!
//! The kernel is `shaders/distance.wgsl`; its CPU mirror is
//! [`crate::reference::distance`].

use crate::binding::{
    bind_group, bind_group_layout, bytes_of, check_buffer, dispatch, sized_binding, to_u32,
    uniform_buffer, AlignedRange, BYTES_PER_VALUE, MAX_DISPATCH_WORK, READ, READ_WRITE, UNIFORM,
};
use crate::context::{exactly, ChunkLimits, GpuContext};
use crate::error::{Error, Result};
use crate::rows::{meta_bytes, prepared_bytes, PreparedTarget, RowSource};
use crate::workspace::{GrowableBuffer, Locked};

const SHADER: &str = include_str!("../shaders/distance.wgsl");
/// Outputs per side of one workgroup's tile in `pairwise`.
const TILE: usize = 64;

/// A distance (or, for `Dot`, a similarity) between two rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Distance {
    /// `‖x − y‖₂`.
    #[default]
    Euclidean,
    /// `‖x − y‖₂²`.
    SquaredEuclidean,
    /// `1 − x·y / (‖x‖ ‖y‖)`, in `[0, 2]`; 1 where either norm is 0.
    Cosine,
    /// `x·y`, a similarity (larger = closer); for distances and mining only.
    Dot,
}

impl Distance {
    /// Every kind, in shader-code order.
    pub const ALL: [Distance; 4] = [
        Distance::Euclidean,
        Distance::SquaredEuclidean,
        Distance::Cosine,
        Distance::Dot,
    ];

    /// The value of `DISTANCE_KIND` in `shaders/distance.wgsl`.
    pub(crate) const fn shader_code(self) -> u32 {
        match self {
            Distance::Euclidean => 0,
            Distance::SquaredEuclidean => 1,
            Distance::Cosine => 2,
            Distance::Dot => 3,
        }
    }

    /// True for [`Distance::Dot`], where larger means closer.
    pub const fn is_similarity(self) -> bool {
        matches!(self, Distance::Dot)
    }
}

/// Which distance, and whether rows are L2-normalised first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DistanceOptions {
    /// The distance.
    pub distance: Distance,
    /// Replace each row by `x / ‖x‖` first (rows of norm 0 stay 0).
    pub normalize: bool,
}

impl DistanceOptions {
    /// `distance` on the rows as given.
    pub const fn new(distance: Distance) -> Self {
        Self {
            distance,
            normalize: false,
        }
    }

    /// The same distance on L2-normalised rows.
    pub const fn normalized(self) -> Self {
        Self {
            normalize: true,
            ..self
        }
    }

    /// Whether the prepared rows are divided by their norm: cosine distance
    /// always works on normalised rows.
    pub(crate) const fn normalizes_rows(self) -> bool {
        self.normalize || matches!(self.distance, Distance::Cosine)
    }
}

/// Sizes of a pairwise computation: X is `n x d`, Y is `m x d`, the output
/// `n x m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairwiseShape {
    /// Rows of X (output rows).
    pub n: usize,
    /// Rows of Y (output columns).
    pub m: usize,
    /// Values per row.
    pub d: usize,
}

impl PairwiseShape {
    /// X is `n x d`, Y is `m x d`.
    pub const fn new(n: usize, m: usize, d: usize) -> Self {
        Self { n, m, d }
    }

    /// Checks that every dimension is at least 1 and the sizes fit in memory.
    pub fn validate(&self) -> Result<()> {
        for (value, name) in [
            (self.n, "N (rows of X)"),
            (self.m, "M (rows of Y)"),
            (self.d, "D (values per row)"),
        ] {
            if value == 0 {
                return Err(Error::ZeroDimension { name });
            }
        }
        self.x_len()?;
        self.y_len()?;
        self.output_len()?;
        Ok(())
    }

    /// Values in X: `n * d`.
    pub fn x_len(&self) -> Result<usize> {
        self.n
            .checked_mul(self.d)
            .ok_or(Error::SizeOverflow { what: "N * D" })
    }

    /// Values in Y: `m * d`.
    pub fn y_len(&self) -> Result<usize> {
        self.m
            .checked_mul(self.d)
            .ok_or(Error::SizeOverflow { what: "M * D" })
    }

    /// Values in the output: `n * m`.
    pub fn output_len(&self) -> Result<usize> {
        self.n
            .checked_mul(self.m)
            .ok_or(Error::SizeOverflow { what: "N * M" })
    }

    /// Validates the shape and the lengths of `x` and `y` against it.
    pub fn check_slices<T>(&self, x: &[T], y: &[T]) -> Result<()> {
        self.validate()?;
        check_len("X", self.x_len()?, x.len())?;
        check_len("Y", self.y_len()?, y.len())
    }
}

/// `Ok` when `actual == expected`, else [`Error::LengthMismatch`].
pub(crate) fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            what,
            expected,
            actual,
        })
    }
}

/// Caller-owned device buffers for [`GpuContext::record_pairwise_distances`].
///
/// `x` holds `n * d` and `y` holds `m * d` row-major `f32` values from
/// offset 0; `out` receives `n * m` values. All three need
/// `BufferUsages::STORAGE`.
#[derive(Clone, Copy, Debug)]
pub struct DistanceBuffers<'a> {
    /// X, `n x d`.
    pub x: &'a wgpu::Buffer,
    /// Y, `m x d`.
    pub y: &'a wgpu::Buffer,
    /// The `n x m` output.
    pub out: &'a wgpu::Buffer,
}

impl GpuContext {
    /// Computes the `n x m` distance matrix between the rows of `x` and `y`
    /// (see [the module docs](crate::distance) for the formulas) and returns
    /// it row-major.
    ///
    /// Work larger than one storage binding, one buffer or one dispatch is
    /// split into blocks and read back block by block, so the output may
    /// exceed the device's buffer size.
    pub fn pairwise_distances(
        &self,
        x: &[f32],
        y: &[f32],
        shape: PairwiseShape,
        options: DistanceOptions,
    ) -> Result<Vec<f32>> {
        shape.check_slices(x, y)?;
        let kernels = self.distance_kernels()?;
        let limits = self.chunk_limits();
        let plan = BlockPlan::new(shape, limits, OutputLayout::Compact)?;
        let total = shape.output_len()?;
        let mut result = Vec::new();
        result
            .try_reserve_exact(total)
            .map_err(|_| Error::SizeOverflow {
                what: "the N x M output in host memory",
            })?;
        result.resize(total, 0.0f32);

        let mut workspace = kernels.workspace.lock();
        self.with_error_scope("computing pairwise distances", || {
            let device = self.device();
            let queue = self.queue();
            let max_buffer = limits.max_buffer_bytes;
            let d = shape.d;
            let ws = &mut *workspace;
            for block in plan.blocks() {
                let mut encoder = device.create_command_encoder(&Default::default());
                // Only this block's rows travel to the device.
                let upload_x = ws
                    .upload_x
                    .ensure(device, bytes_of(block.rows * d), max_buffer)?;
                let upload_y = ws
                    .upload_y
                    .ensure(device, bytes_of(block.cols * d), max_buffer)?;
                if plan.prepares_y(&block) {
                    let rows = &y[block.col0 * d..(block.col0 + block.cols) * d];
                    queue.write_buffer(&upload_y, 0, bytemuck::cast_slice(rows));
                }
                if plan.prepares_x(&block) {
                    let rows = &x[block.row0 * d..(block.row0 + block.rows) * d];
                    queue.write_buffer(&upload_x, 0, bytemuck::cast_slice(rows));
                }
                let block_values = block.rows * block.cols;
                let out = ws
                    .out_block
                    .ensure(device, bytes_of(block_values), max_buffer)?;
                kernels.record_block(
                    self,
                    &mut encoder,
                    ws,
                    &plan,
                    &block,
                    BlockInputs {
                        x: RowSource::new(&upload_x, 0, block.rows, d),
                        y: RowSource::new(&upload_y, 0, block.cols, d),
                        options,
                    },
                    OutputRange {
                        buffer: &out,
                        first_value: 0,
                        row_stride: block.cols,
                    },
                )?;
                let staging = ws
                    .staging
                    .ensure(device, bytes_of(block_values), max_buffer)?;
                encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes_of(block_values));
                queue.submit([encoder.finish()]);
                let values: Vec<f32> = self.read_back(&staging, bytes_of(block_values))?;
                for (r, row_values) in values.chunks_exact(block.cols).enumerate() {
                    let start = (block.row0 + r) * shape.m + block.col0;
                    result[start..start + block.cols].copy_from_slice(row_values);
                }
            }
            Ok(())
        })?;
        Ok(result)
    }

    /// Records the distance matrix between the rows of `buffers.x` and
    /// `buffers.y` into `buffers.out` (row-major `n x m`) on the caller's
    /// encoder. Nothing is submitted and nothing waits on the device: the
    /// result is there once the caller submits the encoder.
    ///
    /// Work larger than one storage binding or one dispatch is split into
    /// blocks, all recorded here. Each call records its own row preparation
    /// before the distances, so several calls may share one encoder.
    pub fn record_pairwise_distances(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: DistanceBuffers<'_>,
        shape: PairwiseShape,
        options: DistanceOptions,
    ) -> Result<()> {
        shape.validate()?;
        let storage = wgpu::BufferUsages::STORAGE;
        check_buffer("x", buffers.x, shape.x_len()?, storage)?;
        check_buffer("y", buffers.y, shape.y_len()?, storage)?;
        check_buffer("out", buffers.out, shape.output_len()?, storage)?;
        let kernels = self.distance_kernels()?;
        let plan = BlockPlan::new(shape, self.chunk_limits(), OutputLayout::Full)?;
        let mut workspace = kernels.workspace.lock();
        for block in plan.blocks() {
            kernels.record_block(
                self,
                encoder,
                &mut workspace,
                &plan,
                &block,
                BlockInputs {
                    x: RowSource::new(buffers.x, block.row0, block.rows, shape.d),
                    y: RowSource::new(buffers.y, block.col0, block.cols, shape.d),
                    options,
                },
                OutputRange {
                    buffer: buffers.out,
                    first_value: block.row0 as u64 * shape.m as u64 + block.col0 as u64,
                    row_stride: shape.m,
                },
            )?;
        }
        Ok(())
    }
}

/// The rows one block reads and how to compare them.
struct BlockInputs<'a> {
    x: RowSource<'a>,
    y: RowSource<'a>,
    options: DistanceOptions,
}

/// Where the output rows go: the caller's full `n x m` matrix, or a compact
/// block buffer of the crate's own that is read back block by block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputLayout {
    Full,
    Compact,
}

/// How a pairwise computation is split into blocks of output rows and
/// columns so that every binding, buffer and dispatch fits the device.
#[derive(Clone, Copy, Debug)]
struct BlockPlan {
    shape: PairwiseShape,
    /// vec4s per prepared row: `ceil(d / 4)`.
    vec_dim: usize,
    row_chunk: usize,
    col_chunk: usize,
    row_chunks: usize,
}

/// One block of output: rows `row0..row0 + rows`, columns `col0..col0 + cols`.
#[derive(Clone, Copy, Debug)]
struct Block {
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
    /// Y's chunk changes here, so it must be prepared.
    first_of_column_chunk: bool,
}

impl BlockPlan {
    fn new(shape: PairwiseShape, limits: ChunkLimits, layout: OutputLayout) -> Result<Self> {
        let vec_dim = shape.d.div_ceil(4);
        let binding = limits.max_binding_bytes;
        let values_per_binding = binding / BYTES_PER_VALUE;
        let alignment_values = limits.storage_offset_alignment / BYTES_PER_VALUE;
        let prepared_row_bytes = vec_dim as u64 * 16;
        if prepared_row_bytes > binding {
            return Err(Error::TooLarge {
                what: format!(
                    "one row of D = {} values (padded to a multiple of 4)",
                    shape.d
                ),
                needed: prepared_row_bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: binding,
            });
        }
        let source_rows_per_binding =
            values_per_binding.saturating_sub(alignment_values) / shape.d as u64;
        if source_rows_per_binding == 0 {
            return Err(Error::TooLarge {
                what: format!(
                    "one row of D = {} values plus its offset alignment",
                    shape.d
                ),
                needed: bytes_of(shape.d) + limits.storage_offset_alignment,
                limit_name: "max_storage_buffer_binding_size",
                limit: binding,
            });
        }
        // `pairwise` has one workgroup per 64 rows along y; `prepare_rows`
        // one per row on a 2-D grid.
        let max_groups = u64::from(limits.max_workgroups_per_dimension.max(1));
        let rows_per_dispatch = (max_groups * TILE as u64).min(max_groups * max_groups);
        let rows_per_binding = (binding / prepared_row_bytes)
            .min(source_rows_per_binding)
            .min(rows_per_dispatch);
        // An output row of the block must fit one binding after alignment.
        let output_values = values_per_binding.saturating_sub(alignment_values);
        let col_chunk = (shape.m as u64).min(rows_per_binding).min(output_values);
        let output_rows = match layout {
            // (rows - 1) * m + cols values, plus the alignment shift.
            OutputLayout::Full => (output_values - col_chunk) / shape.m as u64 + 1,
            OutputLayout::Compact => values_per_binding / col_chunk,
        };
        // Within the work budget of one dispatch.
        let budget_rows = (MAX_DISPATCH_WORK / (col_chunk * vec_dim as u64)).max(1);
        let row_chunk = (shape.n as u64)
            .min(rows_per_binding)
            .min(output_rows)
            .min(budget_rows);
        // Both are at least 1 and at most n or m, so they fit in usize.
        let row_chunk = row_chunk.max(1) as usize;
        let col_chunk = col_chunk.max(1) as usize;
        Ok(Self {
            shape,
            vec_dim,
            row_chunk,
            col_chunk,
            row_chunks: shape.n.div_ceil(row_chunk),
        })
    }

    /// Whether `block` starts a new chunk of Y, which must be prepared.
    fn prepares_y(&self, block: &Block) -> bool {
        block.first_of_column_chunk
    }

    /// Whether `block` needs X's rows prepared: when its column chunk
    /// starts (the workspace may have been used since) or X has several
    /// chunks.
    fn prepares_x(&self, block: &Block) -> bool {
        block.first_of_column_chunk || self.row_chunks > 1
    }

    /// Blocks in order: column chunks outer, row chunks inner, so each chunk
    /// of Y is prepared once.
    fn blocks(self) -> impl Iterator<Item = Block> {
        let PairwiseShape { n, m, .. } = self.shape;
        (0..m).step_by(self.col_chunk).flat_map(move |col0| {
            (0..n).step_by(self.row_chunk).map(move |row0| Block {
                row0,
                rows: self.row_chunk.min(n - row0),
                col0,
                cols: self.col_chunk.min(m - col0),
                first_of_column_chunk: row0 == 0,
            })
        })
    }
}

/// Where one `pairwise` dispatch writes: value `(r, c)` of the block goes to
/// index `first_value + r * row_stride + c` of `buffer`.
struct OutputRange<'a> {
    buffer: &'a wgpu::Buffer,
    first_value: u64,
    row_stride: usize,
}

/// Mirrors `PairwiseParams` in shaders/distance.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PairwiseParams {
    rows: u32,
    cols: u32,
    vec_dim: u32,
    out_offset: u32,
    out_row_stride: u32,
    _pad: [u32; 3],
}

/// Buffers the distance kernels reuse from call to call.
struct DistanceWorkspace {
    upload_x: GrowableBuffer,
    upload_y: GrowableBuffer,
    prepared_x: GrowableBuffer,
    prepared_y: GrowableBuffer,
    meta_x: GrowableBuffer,
    meta_y: GrowableBuffer,
    out_block: GrowableBuffer,
    staging: GrowableBuffer,
}

/// The pipelines of `shaders/distance.wgsl` and the buffers they reuse; one
/// per device, owned by its [`GpuContext`].
pub(crate) struct DistanceKernels {
    layout: wgpu::BindGroupLayout,
    /// Indexed by [`Distance::shader_code`].
    pairwise: Vec<wgpu::ComputePipeline>,
    workspace: Locked<DistanceWorkspace>,
}

impl DistanceKernels {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        let layout = bind_group_layout(
            ctx.device(),
            "distance.pairwise",
            &[UNIFORM, READ, READ, READ, READ, READ_WRITE],
        );
        // One pipeline per kind, indexed by Distance::shader_code.
        let kinds = Distance::ALL.len() as u32;
        let (per_kind, _) = ctx.create_pipeline_set(
            "distance.wgsl",
            SHADER,
            (&[("pairwise", &layout)], kinds),
            &[],
        )?;
        let [pairwise] = exactly(per_kind)?;
        let storage = wgpu::BufferUsages::STORAGE;
        let upload = storage | wgpu::BufferUsages::COPY_DST;
        let workspace = DistanceWorkspace {
            upload_x: GrowableBuffer::new("distance.upload_x", upload),
            upload_y: GrowableBuffer::new("distance.upload_y", upload),
            prepared_x: GrowableBuffer::new("distance.prepared_x", storage),
            prepared_y: GrowableBuffer::new("distance.prepared_y", storage),
            meta_x: GrowableBuffer::new("distance.meta_x", storage),
            meta_y: GrowableBuffer::new("distance.meta_y", storage),
            out_block: GrowableBuffer::new(
                "distance.out_block",
                storage | wgpu::BufferUsages::COPY_SRC,
            ),
            staging: GrowableBuffer::new(
                "distance.staging",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        };
        Ok(Self {
            layout,
            pairwise,
            workspace: Locked::new(workspace),
        })
    }

    /// Records one block: the row preparation it needs (Y when its chunk
    /// changes, X when its chunk changes), then `pairwise` into `output`.
    #[allow(clippy::too_many_arguments)]
    fn record_block(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        ws: &mut DistanceWorkspace,
        plan: &BlockPlan,
        block: &Block,
        inputs: BlockInputs<'_>,
        output: OutputRange<'_>,
    ) -> Result<()> {
        let device = ctx.device();
        let limits = ctx.chunk_limits();
        let max_buffer = limits.max_buffer_bytes;
        let vec_dim = plan.vec_dim;
        let rows_kernels = ctx.row_kernels()?;
        let normalize = inputs.options.normalizes_rows();
        let prepared_x =
            ws.prepared_x
                .ensure(device, prepared_bytes(block.rows, vec_dim), max_buffer)?;
        let meta_x = ws
            .meta_x
            .ensure(device, meta_bytes(block.rows), max_buffer)?;
        let prepared_y =
            ws.prepared_y
                .ensure(device, prepared_bytes(block.cols, vec_dim), max_buffer)?;
        let meta_y = ws
            .meta_y
            .ensure(device, meta_bytes(block.cols), max_buffer)?;
        if plan.prepares_y(block) {
            let target = PreparedTarget {
                rows: &prepared_y,
                meta: &meta_y,
                first_row: 0,
            };
            rows_kernels.record(ctx, encoder, inputs.y, normalize, target)?;
        }
        if plan.prepares_x(block) {
            let target = PreparedTarget {
                rows: &prepared_x,
                meta: &meta_x,
                first_row: 0,
            };
            rows_kernels.record(ctx, encoder, inputs.x, normalize, target)?;
        }

        let span = (block.rows as u64 - 1) * output.row_stride as u64 + block.cols as u64;
        let range = AlignedRange::new(output.first_value, span, limits.storage_offset_alignment)?;
        let params = PairwiseParams {
            rows: to_u32(block.rows, "rows in one block")?,
            cols: to_u32(block.cols, "columns in one block")?,
            vec_dim: to_u32(vec_dim, "D / 4")?,
            out_offset: range.shift,
            out_row_stride: to_u32(output.row_stride, "M")?,
            _pad: [0; 3],
        };
        let params_buffer = uniform_buffer(device, "distance.pairwise_params", &params);
        let group = bind_group(
            device,
            "distance.pairwise",
            &self.layout,
            vec![
                params_buffer.as_entire_binding(),
                sized_binding(&prepared_x, prepared_bytes(block.rows, vec_dim)),
                sized_binding(&prepared_y, prepared_bytes(block.cols, vec_dim)),
                sized_binding(&meta_x, meta_bytes(block.rows)),
                sized_binding(&meta_y, meta_bytes(block.cols)),
                range.binding(output.buffer),
            ],
        );
        let distance = inputs.options.distance;
        let pipeline = self
            .pairwise
            .get(distance.shader_code() as usize)
            .ok_or(Error::Device {
                during: "recording pairwise distances",
                message: format!("no pipeline for {distance:?}"),
            })?;
        let groups = (
            to_u32(block.cols.div_ceil(TILE), "workgroups")?,
            to_u32(block.rows.div_ceil(TILE), "workgroups")?,
        );
        dispatch(encoder, "distance.pairwise", pipeline, &group, groups);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(binding: u64, alignment: u64, max_groups: u32) -> ChunkLimits {
        ChunkLimits {
            max_binding_bytes: binding,
            max_buffer_bytes: binding,
            storage_offset_alignment: alignment,
            max_workgroups_per_dimension: max_groups,
        }
    }

    /// Every output is in exactly one block, and every binding and dispatch
    /// of every block fits the limits: nothing is truncated.
    fn check_plan(
        shape: PairwiseShape,
        limits: ChunkLimits,
        layout: OutputLayout,
    ) -> Result<(), TestCaseError> {
        let plan = match BlockPlan::new(shape, limits, layout) {
            Ok(plan) => plan,
            Err(Error::TooLarge { .. }) => {
                // Only when one row cannot fit a binding.
                let row = (shape.d.div_ceil(4) * 16) as u64;
                prop_assert!(
                    row > limits.max_binding_bytes
                        || shape.d as u64 * 4 + limits.storage_offset_alignment
                            > limits.max_binding_bytes
                );
                return Ok(());
            }
            Err(other) => return Err(TestCaseError::fail(other.to_string())),
        };
        let PairwiseShape { n, m, d } = shape;
        let mut covered = vec![0u8; n * m];
        let binding = limits.max_binding_bytes;
        let groups = u64::from(limits.max_workgroups_per_dimension);
        let worst_shift = limits.storage_offset_alignment / 4 - 1;
        for block in plan.blocks() {
            prop_assert!(block.rows >= 1 && block.cols >= 1);
            for i in block.row0..block.row0 + block.rows {
                for j in block.col0..block.col0 + block.cols {
                    covered[i * m + j] += 1;
                }
            }
            for rows in [block.rows as u64, block.cols as u64] {
                prop_assert!(rows * plan.vec_dim as u64 * 16 <= binding, "prepared rows");
                prop_assert!(
                    (worst_shift + rows * d as u64) * 4 <= binding,
                    "source rows"
                );
                prop_assert!(rows.div_ceil(64) <= groups, "pairwise grid");
                let width = rows.min(groups);
                prop_assert!(rows.div_ceil(width) <= groups, "prepare grid");
            }
            let out_values = match layout {
                OutputLayout::Full => {
                    (block.rows as u64 - 1) * m as u64 + block.cols as u64 + worst_shift
                }
                OutputLayout::Compact => (block.rows * block.cols) as u64,
            };
            prop_assert!(out_values * 4 <= binding, "output block");
        }
        prop_assert!(covered.iter().all(|&c| c == 1), "every output exactly once");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn plans_cover_every_output_once_within_limits(
            n in 1usize..300,
            m in 1usize..300,
            d in 1usize..200,
            binding_vec4s in 64u64..4096,
            alignment in prop::sample::select(vec![16u64, 64, 256]),
            max_groups in 1u32..6,
            full in any::<bool>(),
        ) {
            let layout = if full { OutputLayout::Full } else { OutputLayout::Compact };
            check_plan(
                PairwiseShape::new(n, m, d),
                limits(binding_vec4s * 16, alignment, max_groups),
                layout,
            )?;
        }
    }

    #[test]
    fn a_row_larger_than_a_binding_is_an_error_naming_the_limit() {
        let error = BlockPlan::new(
            PairwiseShape::new(4, 4, 1000),
            limits(1024, 256, 65535),
            OutputLayout::Full,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(error.contains("max_storage_buffer_binding_size"), "{error}");
        assert!(error.contains("D = 1000"), "{error}");
    }
}
