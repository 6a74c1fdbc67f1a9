//! Hard-negative mining on the GPU, fused with the distance computation so
//! that no N x M distance matrix is ever stored.
//!
//! - Batch-hard ([`GpuContext::batch_hard`], [`GpuContext::batch_hard_against_bank`]):
//!   per anchor, the farthest positive (same label, not itself) and the
//!   nearest negative (another label), with their distances.
//! - Top-k negatives ([`GpuContext::top_k_negatives`]): per query, the `k`
//!   nearest bank rows of another label (optionally not sharing the
//!   query's id), closest first. The bank is streamed in chunks and each
//!   query's best `k` are merged chunk by chunk, so the bank may be far
//!   larger than one storage binding and `k` is limited only by memory.
//!
//! - Pair-distance statistics ([`GpuContext::pair_histograms`]): over all
//!   pairs of a batch or of queries against a bank, histograms of the
//!   distances of similar and of dissimilar pairs in caller-chosen bins,
//!   and from them the equal-error-rate threshold and ROC points
//!   ([`PairHistograms`]): what a user needs to choose a margin and a
//!   verification threshold, without N x M memory.
//!
//! "Nearest" is the smallest distance, or the largest similarity for
//! [`Distance::Dot`]. Ties go to the smaller index,
//! so results are deterministic. Where nothing qualifies the index is
//! [`NO_INDEX`].
//!
//! The kernels are `shaders/mining.wgsl`; their CPU mirrors are
//! [`crate::reference::mining`].

/// The index reported where no row qualifies (`u32::MAX`).
pub const NO_INDEX: u32 = u32::MAX;

/// The hardest positive and negative of one anchor.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HardestPair {
    /// The farthest row of the anchor's label ([`NO_INDEX`] if none).
    pub positive: u32,
    /// Its distance (`+inf` if none).
    pub positive_distance: f32,
    /// The nearest row of another label ([`NO_INDEX`] if none).
    pub negative: u32,
    /// Its distance (`+inf` if none).
    pub negative_distance: f32,
}

/// One mined neighbour: a bank row and its distance to the query.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Neighbor {
    /// The bank row ([`NO_INDEX`] where fewer than `k` negatives exist).
    pub index: u32,
    /// Its distance (`+inf` for padding; `-inf` for a similarity).
    pub distance: f32,
}

use crate::binding::{
    bind_group, bind_group_layout, bytes_of, dispatch, record_split, sized_binding, to_u32,
    uniform_buffer, Kernel, MAX_DISPATCH_WORK, READ, READ_WRITE, UNIFORM,
};
use crate::context::{exactly, GpuContext};
use crate::distance::{check_len, Distance, DistanceOptions};
use crate::error::{Error, Result};
use crate::loss::BankIds;
use crate::rows::{meta_bytes, prepared_bytes, vec_dim, PreparedTarget, RowSource};
use crate::workspace::{GrowableBuffer, Locked};

const SHADER: &str = include_str!("../shaders/mining.wgsl");
/// Rows and columns of one `batch_hard` / `topk_filter` tile.
const TILE: usize = 64;
/// Most bank rows one `batch_hard` workgroup loops over in one dispatch
/// (see `MAX_COLUMNS_PER_DISPATCH` in src/loss.rs for why this is capped).
const MAX_COLUMNS_PER_DISPATCH: usize = 16_384;
/// Bytes of one (key, index) entry.
const ENTRY_BYTES: u64 = 8;

/// Histograms of the distances of similar and dissimilar pairs.
///
/// With bin edges `e_0 < … < e_B`, each histogram has `B + 2` counts: the
/// values below `e_0`, the `B` bins `[e_(t-1), e_t)`, and the values at or
/// above `e_B`; no pair is dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct PairHistograms {
    /// The bin edges.
    pub edges: Vec<f32>,
    /// Counts of similar pairs.
    pub positive: Vec<u64>,
    /// Counts of dissimilar pairs.
    pub negative: Vec<u64>,
    /// Whether the values are similarities ([`Distance::Dot`]): then a pair
    /// is accepted as similar at or above a threshold, not below it.
    pub similarity: bool,
}

/// One point of a ROC curve: accepting pairs closer than `threshold` (or,
/// for a similarity, at least `threshold`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RocPoint {
    /// The threshold (a bin edge).
    pub threshold: f32,
    /// Fraction of dissimilar pairs accepted.
    pub false_accept_rate: f64,
    /// Fraction of similar pairs accepted.
    pub true_accept_rate: f64,
}

impl PairHistograms {
    /// `(threshold, FAR, TAR)` at every edge, from accepting nothing to
    /// accepting all but the outermost slot.
    pub fn curve(&self) -> Vec<RocPoint> {
        let total = |h: &[u64]| h.iter().sum::<u64>().max(1) as f64;
        let (pos_total, neg_total) = (total(&self.positive), total(&self.negative));
        let slots = self.positive.len();
        (0..self.edges.len())
            .map(|t| {
                // Slots accepted at threshold e_t: below it for a distance
                // (slots 0..=t), at or above it for a similarity.
                let accepted = |h: &[u64]| -> u64 {
                    if self.similarity {
                        h[t + 1..slots].iter().sum()
                    } else {
                        h[..=t].iter().sum()
                    }
                };
                RocPoint {
                    threshold: self.edges[t],
                    false_accept_rate: accepted(&self.negative) as f64 / neg_total,
                    true_accept_rate: accepted(&self.positive) as f64 / pos_total,
                }
            })
            .collect()
    }

    /// The equal-error rate and its threshold: where the false-accept rate
    /// meets the false-reject rate `1 - TAR`, interpolated linearly between
    /// the two edges that bracket it. `None` without both kinds of pairs.
    pub fn equal_error_rate(&self) -> Option<(f32, f64)> {
        if self.positive.iter().sum::<u64>() == 0 || self.negative.iter().sum::<u64>() == 0 {
            return None;
        }
        let curve = self.curve();
        let gap = |p: &RocPoint| p.false_accept_rate - (1.0 - p.true_accept_rate);
        let mut previous: Option<&RocPoint> = None;
        for point in &curve {
            // The gap rises (distances) or falls (similarities) through 0.
            if let Some(prev) = previous {
                let (g0, g1) = (gap(prev), gap(point));
                if g0 == 0.0 {
                    return Some((prev.threshold, prev.false_accept_rate));
                }
                if (g0 < 0.0) != (g1 < 0.0) || g1 == 0.0 {
                    let w = g0 / (g0 - g1);
                    let threshold = prev.threshold + (point.threshold - prev.threshold) * w as f32;
                    let rate = prev.false_accept_rate
                        + (point.false_accept_rate - prev.false_accept_rate) * w;
                    return Some((threshold, rate));
                }
            }
            previous = Some(point);
        }
        // The rates never cross inside the edges: report the closest edge.
        curve
            .iter()
            .min_by(|a, b| gap(a).abs().total_cmp(&gap(b).abs()))
            .map(|p| {
                (
                    p.threshold,
                    (p.false_accept_rate + 1.0 - p.true_accept_rate) / 2.0,
                )
            })
    }

    /// For each target false-accept rate, the edge with the highest
    /// true-accept rate whose false-accept rate does not exceed it.
    pub fn roc_points(&self, false_accept_rates: &[f64]) -> Vec<Option<RocPoint>> {
        let curve = self.curve();
        false_accept_rates
            .iter()
            .map(|&target| {
                curve
                    .iter()
                    .filter(|p| p.false_accept_rate <= target)
                    .max_by(|a, b| a.true_accept_rate.total_cmp(&b.true_accept_rate))
                    .copied()
            })
            .collect()
    }
}

/// A semi-hard negative for one anchor-positive pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SemiHardTriplet {
    /// The anchor.
    pub anchor: u32,
    /// A row of the anchor's label.
    pub positive: u32,
    /// The chosen negative ([`NO_INDEX`] if none qualifies).
    pub negative: u32,
    /// Its distance to the anchor (`+inf` if none).
    pub negative_distance: f32,
}

/// The pairs pair-margin mining found.
#[derive(Clone, Debug, PartialEq)]
pub struct MarginPairs {
    /// The qualifying pairs `(i, j)`, `i < j`, in `(i, j)` order, as index
    /// pairs for the loss (label 1 similar, 0 dissimilar); at most the
    /// capacity asked for.
    pub pairs: Vec<crate::loss::IndexPair>,
    /// How many pairs qualified; more than `pairs.len()` when the capacity
    /// was too small (the first ones in order were kept).
    pub total: u64,
}

/// How far a long mining run has got: bank rows streamed so far, summed
/// over the blocks of queries, of the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Rows done.
    pub done: u64,
    /// Rows in all.
    pub total: u64,
}

/// Mirrors `TileParams` in shaders/mining.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TileParams {
    rows: u32,
    cols: u32,
    vec_dim: u32,
    x_first: u32,
    y_first: u32,
    skip_same_index: u32,
    skip_same_id: u32,
    extra: u32,
}

/// Which pairs of a tile dispatch count, and the entry point's own value
/// (`TileParams::extra`).
#[derive(Clone, Copy)]
struct TileRule {
    skip_same_index: bool,
    skip_same_id: bool,
    extra: usize,
}

/// What every tile entry point binds first (bindings 0 to 4): its
/// parameters and both sides' prepared rows and metadata.
struct Tile {
    params: wgpu::Buffer,
    x: (wgpu::Buffer, wgpu::Buffer),
    y: (wgpu::Buffer, wgpu::Buffer),
    rows: usize,
    cols: usize,
    vec_dim: usize,
}

impl Tile {
    /// Rows `x0..x0 + rows` of the prepared side `x` against rows
    /// `y0..y0 + cols` of `y`.
    fn new(
        ctx: &GpuContext,
        (x, x0, rows): ((wgpu::Buffer, wgpu::Buffer), usize, usize),
        (y, y0, cols): ((wgpu::Buffer, wgpu::Buffer), usize, usize),
        vec_dim: usize,
        rule: TileRule,
    ) -> Result<Self> {
        let params = TileParams {
            rows: to_u32(rows, "rows")?,
            cols: to_u32(cols, "rows")?,
            vec_dim: to_u32(vec_dim, "D / 4")?,
            x_first: to_u32(x0, "rows")?,
            y_first: to_u32(y0, "rows")?,
            skip_same_index: u32::from(rule.skip_same_index),
            skip_same_id: u32::from(rule.skip_same_id),
            extra: to_u32(rule.extra, "tile parameter")?,
        };
        Ok(Self {
            params: uniform_buffer(ctx.device(), "mining.tile_params", &params),
            x,
            y,
            rows,
            cols,
            vec_dim,
        })
    }

    /// The shared bindings followed by `extra`, the entry point's own.
    fn bindings<'a>(
        &'a self,
        extra: impl IntoIterator<Item = wgpu::BindingResource<'a>>,
    ) -> Vec<wgpu::BindingResource<'a>> {
        [
            self.params.as_entire_binding(),
            sized_binding(&self.x.0, prepared_bytes(self.rows, self.vec_dim)),
            sized_binding(&self.y.0, prepared_bytes(self.cols, self.vec_dim)),
            sized_binding(&self.x.1, meta_bytes(self.rows)),
            sized_binding(&self.y.1, meta_bytes(self.cols)),
        ]
        .into_iter()
        .chain(extra)
        .collect()
    }
}

/// Mirrors `ListParams` in shaders/mining.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ListParams {
    rows: u32,
    k: u32,
    capacity: u32,
    grid_width: u32,
    row_base: u32,
    out_offset: u32,
    similarity: u32,
    _pad: u32,
}

struct MiningWorkspace {
    upload_x: GrowableBuffer,
    upload_x_labels: GrowableBuffer,
    upload_x_ids: GrowableBuffer,
    upload_y: GrowableBuffer,
    upload_y_labels: GrowableBuffer,
    upload_y_ids: GrowableBuffer,
    prepared_x: GrowableBuffer,
    meta_x: GrowableBuffer,
    prepared_y: GrowableBuffer,
    meta_y: GrowableBuffer,
    lists: [GrowableBuffer; 2],
    thresholds: GrowableBuffer,
    counts: GrowableBuffer,
    candidates: GrowableBuffer,
    output: GrowableBuffer,
    staging: GrowableBuffer,
    edges: GrowableBuffer,
    pair_keys: GrowableBuffer,
    sorted_negatives: GrowableBuffer,
    anchor_pairs: GrowableBuffer,
    tile_counts: GrowableBuffer,
    margin_pairs: GrowableBuffer,
    histogram32: GrowableBuffer,
    histogram64: GrowableBuffer,
}

/// The pipelines of shaders/mining.wgsl and their workspace; one per device.
pub(crate) struct MiningKernels {
    hard_layout: wgpu::BindGroupLayout,
    filter_layout: wgpu::BindGroupLayout,
    merge_layout: wgpu::BindGroupLayout,
    init_layout: wgpu::BindGroupLayout,
    finish_layout: wgpu::BindGroupLayout,
    histogram_layout: wgpu::BindGroupLayout,
    accumulate_layout: wgpu::BindGroupLayout,
    convert_layout: wgpu::BindGroupLayout,
    keys_layout: wgpu::BindGroupLayout,
    sort_layout: wgpu::BindGroupLayout,
    select_layout: wgpu::BindGroupLayout,
    margin_layout: wgpu::BindGroupLayout,
    /// Per [`Distance::shader_code`].
    batch_hard: Vec<wgpu::ComputePipeline>,
    topk_filter: Vec<wgpu::ComputePipeline>,
    topk_merge: wgpu::ComputePipeline,
    topk_init: wgpu::ComputePipeline,
    topk_finish: wgpu::ComputePipeline,
    pair_histogram: Vec<wgpu::ComputePipeline>,
    accumulate_histogram: wgpu::ComputePipeline,
    hardest_to_pairs: wgpu::ComputePipeline,
    semi_hard_keys: Vec<wgpu::ComputePipeline>,
    semi_hard_select: Vec<wgpu::ComputePipeline>,
    semi_hard_sort: wgpu::ComputePipeline,
    margin_count: Vec<wgpu::ComputePipeline>,
    margin_fill: Vec<wgpu::ComputePipeline>,
    margin_scan: wgpu::ComputePipeline,
    workspace: Locked<MiningWorkspace>,
}

impl MiningKernels {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        let device = ctx.device();
        let tile = [UNIFORM, READ, READ, READ, READ];
        let hard_layout = bind_group_layout(
            device,
            "mining.batch_hard",
            &[&tile[..], &[READ_WRITE]].concat(),
        );
        let filter_layout = bind_group_layout(
            device,
            "mining.topk_filter",
            &[&tile[..], &[READ, READ_WRITE, READ_WRITE]].concat(),
        );
        let merge_layout = bind_group_layout(
            device,
            "mining.topk_merge",
            &[
                UNIFORM, READ_WRITE, READ_WRITE, READ, READ_WRITE, READ_WRITE,
            ],
        );
        let init_layout = bind_group_layout(
            device,
            "mining.topk_init",
            &[UNIFORM, READ_WRITE, READ_WRITE, READ_WRITE],
        );
        let finish_layout =
            bind_group_layout(device, "mining.topk_finish", &[UNIFORM, READ, READ_WRITE]);
        let histogram_layout = bind_group_layout(
            device,
            "mining.pair_histogram",
            &[&tile[..], &[READ, READ_WRITE]].concat(),
        );
        let keys_layout = bind_group_layout(
            device,
            "mining.semi_hard_keys",
            &[&tile[..], &[READ_WRITE]].concat(),
        );
        let sort_layout = bind_group_layout(
            device,
            "mining.semi_hard_sort",
            &[UNIFORM, READ, READ_WRITE, READ, READ],
        );
        let select_layout = bind_group_layout(
            device,
            "mining.semi_hard_select",
            &[UNIFORM, READ, READ_WRITE, READ, READ, READ, READ_WRITE],
        );
        let margin_layout = bind_group_layout(
            device,
            "mining.pair_margin",
            &[&tile[..], &[UNIFORM, READ_WRITE, READ_WRITE]].concat(),
        );
        let convert_layout = bind_group_layout(
            device,
            "mining.hardest_to_pairs",
            &[UNIFORM, READ, READ_WRITE],
        );
        let accumulate_layout = bind_group_layout(
            device,
            "mining.accumulate_histogram",
            &[UNIFORM, READ_WRITE, READ_WRITE],
        );
        // Per-kind pipelines are indexed by Distance::shader_code.
        let (per_kind, plain) = ctx.create_pipeline_set(
            "mining.wgsl",
            SHADER,
            (
                &[
                    ("batch_hard", &hard_layout),
                    ("topk_filter", &filter_layout),
                    ("pair_histogram", &histogram_layout),
                    ("semi_hard_keys", &keys_layout),
                    ("semi_hard_select", &select_layout),
                    ("margin_count", &margin_layout),
                    ("margin_fill", &margin_layout),
                ],
                Distance::ALL.len() as u32,
            ),
            &[
                ("topk_merge", &merge_layout),
                ("topk_init", &init_layout),
                ("topk_finish", &finish_layout),
                ("accumulate_histogram", &accumulate_layout),
                ("hardest_to_pairs", &convert_layout),
                ("semi_hard_sort", &sort_layout),
                ("margin_scan", &margin_layout),
            ],
        )?;
        let [batch_hard, topk_filter, pair_histogram, semi_hard_keys, semi_hard_select, margin_count, margin_fill] =
            exactly(per_kind)?;
        let [topk_merge, topk_init, topk_finish, accumulate_histogram, hardest_to_pairs, semi_hard_sort, margin_scan] =
            exactly(plain)?;
        let storage = wgpu::BufferUsages::STORAGE;
        let upload = |label| GrowableBuffer::new(label, storage | wgpu::BufferUsages::COPY_DST);
        let plain = |label| GrowableBuffer::new(label, storage);
        Ok(Self {
            topk_merge,
            topk_init,
            topk_finish,
            accumulate_histogram,
            hardest_to_pairs,
            semi_hard_sort,
            margin_scan,
            margin_count,
            margin_fill,
            margin_layout,
            semi_hard_keys,
            semi_hard_select,
            keys_layout,
            sort_layout,
            select_layout,
            convert_layout,
            pair_histogram,
            histogram_layout,
            accumulate_layout,
            batch_hard,
            topk_filter,
            hard_layout,
            filter_layout,
            merge_layout,
            init_layout,
            finish_layout,
            workspace: Locked::new(MiningWorkspace {
                upload_x: upload("mining.upload_x"),
                upload_x_labels: upload("mining.upload_x_labels"),
                upload_x_ids: upload("mining.upload_x_ids"),
                upload_y: upload("mining.upload_y"),
                upload_y_labels: upload("mining.upload_y_labels"),
                upload_y_ids: upload("mining.upload_y_ids"),
                prepared_x: plain("mining.prepared_x"),
                meta_x: plain("mining.meta_x"),
                prepared_y: plain("mining.prepared_y"),
                meta_y: plain("mining.meta_y"),
                lists: [plain("mining.list_a"), plain("mining.list_b")],
                thresholds: plain("mining.thresholds"),
                counts: plain("mining.counts"),
                candidates: plain("mining.candidates"),
                output: GrowableBuffer::new(
                    "mining.output",
                    storage | wgpu::BufferUsages::COPY_SRC,
                ),
                staging: GrowableBuffer::new(
                    "mining.staging",
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
                edges: upload("mining.edges"),
                pair_keys: plain("mining.pair_keys"),
                sorted_negatives: plain("mining.sorted_negatives"),
                anchor_pairs: upload("mining.anchor_pairs"),
                tile_counts: GrowableBuffer::new(
                    "mining.tile_counts",
                    storage | wgpu::BufferUsages::COPY_SRC,
                ),
                margin_pairs: GrowableBuffer::new(
                    "mining.margin_pairs",
                    storage | wgpu::BufferUsages::COPY_SRC,
                ),
                histogram32: upload("mining.histogram32"),
                histogram64: GrowableBuffer::new(
                    "mining.histogram64",
                    storage | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                ),
            }),
        })
    }
}

/// Rows, labels and ids of one side, on the host.
#[derive(Clone, Copy)]
struct HostSet<'a> {
    rows: &'a [f32],
    labels: &'a [u32],
    ids: Option<&'a [u32]>,
}

/// Which side of a tile computation a set of rows is prepared for.
#[derive(Clone, Copy)]
enum Slot {
    X,
    Y,
}

impl MiningWorkspace {
    /// Prepares rows `first..first + count` of `side` into `slot`'s
    /// buffers (uploading them first when they are on the host).
    fn prepare(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        slot: Slot,
        side: Side<'_>,
        range: (usize, usize, usize),
        options: DistanceOptions,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let (uploads, targets) = match slot {
            Slot::X => (
                [
                    &mut self.upload_x,
                    &mut self.upload_x_labels,
                    &mut self.upload_x_ids,
                ],
                (&mut self.prepared_x, &mut self.meta_x),
            ),
            Slot::Y => (
                [
                    &mut self.upload_y,
                    &mut self.upload_y_labels,
                    &mut self.upload_y_ids,
                ],
                (&mut self.prepared_y, &mut self.meta_y),
            ),
        };
        prepare_side(ctx, encoder, side, range, options, uploads, targets)
    }

    /// Prepares rows `x0..x0 + rows` of `x` and `y0..y0 + cols` of `y`
    /// (`d` values each) and makes the tile of the one against the other.
    fn prepare_tile(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        ((x, x0, rows), (y, y0, cols)): ((Side<'_>, usize, usize), (Side<'_>, usize, usize)),
        (d, options): (usize, DistanceOptions),
        rule: TileRule,
    ) -> Result<Tile> {
        let prepared_x = self.prepare(ctx, encoder, Slot::X, x, (x0, rows, d), options)?;
        let prepared_y = self.prepare(ctx, encoder, Slot::Y, y, (y0, cols, d), options)?;
        Tile::new(
            ctx,
            (prepared_x, x0, rows),
            (prepared_y, y0, cols),
            vec_dim(d),
            rule,
        )
    }
}

/// Where one side's rows come from.
#[derive(Clone, Copy)]
enum Side<'a> {
    /// Host slices, uploaded chunk by chunk.
    Host(HostSet<'a>),
    /// Caller-owned device buffers: rows, labels, optional ids.
    Device(&'a wgpu::Buffer, &'a wgpu::Buffer, Option<&'a wgpu::Buffer>),
}

/// Prepares rows `first..first + count` of `side` into `prepared`/`meta`
/// from row 0, uploading them first when they are on the host.
#[allow(clippy::too_many_arguments)]
fn prepare_side(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    side: Side<'_>,
    (first, count, d): (usize, usize, usize),
    options: DistanceOptions,
    uploads: [&mut GrowableBuffer; 3],
    targets: (&mut GrowableBuffer, &mut GrowableBuffer),
) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    match side {
        Side::Host(set) => upload_and_prepare(
            ctx,
            encoder,
            set,
            (first, count, d),
            options,
            uploads,
            targets,
        ),
        Side::Device(rows, labels, ids) => {
            let max_buffer = ctx.chunk_limits().max_buffer_bytes;
            let device = ctx.device();
            let prepared =
                targets
                    .0
                    .ensure(device, prepared_bytes(count, vec_dim(d)), max_buffer)?;
            let meta = targets.1.ensure(device, meta_bytes(count), max_buffer)?;
            let source = RowSource {
                buffer: rows,
                first_row: first,
                rows: count,
                dim: d,
                labels: Some(labels),
                ids,
            };
            let target = PreparedTarget {
                rows: &prepared,
                meta: &meta,
                first_row: 0,
            };
            ctx.row_kernels()?
                .record(ctx, encoder, source, options.normalizes_rows(), target)?;
            Ok((prepared, meta))
        }
    }
}

/// Uploads rows `first..first + count` of `set` and prepares them into
/// `prepared`/`meta` from row 0.
fn upload_and_prepare(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    set: HostSet<'_>,
    (first, count, d): (usize, usize, usize),
    options: DistanceOptions,
    uploads: [&mut GrowableBuffer; 3],
    (prepared, meta): (&mut GrowableBuffer, &mut GrowableBuffer),
) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    let device = ctx.device();
    let queue = ctx.queue();
    let max_buffer = ctx.chunk_limits().max_buffer_bytes;
    let [rows_upload, labels_upload, ids_upload] = uploads;
    let rows = rows_upload.ensure(device, bytes_of(count * d), max_buffer)?;
    queue.write_buffer(
        &rows,
        0,
        bytemuck::cast_slice(&set.rows[first * d..(first + count) * d]),
    );
    let labels = labels_upload.ensure(device, bytes_of(count), max_buffer)?;
    queue.write_buffer(
        &labels,
        0,
        bytemuck::cast_slice(&set.labels[first..first + count]),
    );
    let ids = match set.ids {
        Some(ids) => {
            let buffer = ids_upload.ensure(device, bytes_of(count), max_buffer)?;
            queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&ids[first..first + count]));
            Some(buffer)
        }
        None => None,
    };
    let prepared = prepared.ensure(device, prepared_bytes(count, vec_dim(d)), max_buffer)?;
    let meta = meta.ensure(device, meta_bytes(count), max_buffer)?;
    let source = RowSource {
        buffer: &rows,
        first_row: 0,
        rows: count,
        dim: d,
        labels: Some(&labels),
        ids: ids.as_ref(),
    };
    let target = PreparedTarget {
        rows: &prepared,
        meta: &meta,
        first_row: 0,
    };
    ctx.row_kernels()?
        .record(ctx, encoder, source, options.normalizes_rows(), target)?;
    Ok((prepared, meta))
}

fn check_set(what: &'static str, rows: usize, d: usize, set: HostSet<'_>) -> Result<()> {
    if d == 0 {
        return Err(Error::ZeroDimension {
            name: "D (values per row)",
        });
    }
    if rows == 0 {
        return Err(Error::ZeroDimension { name: what });
    }
    check_len(what, rows * d, set.rows.len())?;
    if let Some(ids) = set.ids {
        check_len("ids", rows, ids.len())?;
    }
    Ok(())
}

/// Rows of one side per dispatch: the tile grid, one binding of prepared
/// rows, and (for the other side) the work budget.
fn rows_per_dispatch(ctx: &GpuContext, d: usize) -> Result<usize> {
    let limits = ctx.chunk_limits();
    let row_bytes = prepared_bytes(1, vec_dim(d));
    let source_rows = limits
        .max_binding_bytes
        .saturating_sub(limits.storage_offset_alignment)
        / bytes_of(d);
    let rows = (limits.max_binding_bytes / row_bytes)
        .min(source_rows)
        .min(limits.max_workgroups_per_dimension as u64 * TILE as u64) as usize;
    if rows == 0 {
        return Err(Error::TooLarge {
            what: format!("one row of D = {d} values"),
            needed: row_bytes,
            limit_name: "max_storage_buffer_binding_size",
            limit: limits.max_binding_bytes,
        });
    }
    Ok(rows)
}

impl GpuContext {
    /// Batch-hard mining in a batch (`x`, `n x d`, `n = labels.len()`): for
    /// each row, the farthest other row of its label and the nearest row of
    /// another label, with their distances ([`NO_INDEX`] where none).
    pub fn batch_hard(
        &self,
        x: &[f32],
        labels: &[u32],
        d: usize,
        options: DistanceOptions,
    ) -> Result<Vec<HardestPair>> {
        let set = HostSet {
            rows: x,
            labels,
            ids: None,
        };
        self.batch_hard_impl(set, None, d, options)
    }

    /// Batch-hard mining of queries against a bank, skipping pairs with
    /// equal ids when `ids` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_hard_against_bank(
        &self,
        queries: &[f32],
        query_labels: &[u32],
        bank: &[f32],
        bank_labels: &[u32],
        ids: Option<BankIds<'_>>,
        d: usize,
        options: DistanceOptions,
    ) -> Result<Vec<HardestPair>> {
        let x = HostSet {
            rows: queries,
            labels: query_labels,
            ids: ids.map(|i| i.queries),
        };
        let y = HostSet {
            rows: bank,
            labels: bank_labels,
            ids: ids.map(|i| i.bank),
        };
        self.batch_hard_impl(x, Some(y), d, options)
    }

    fn batch_hard_impl(
        &self,
        x: HostSet<'_>,
        y: Option<HostSet<'_>>,
        d: usize,
        options: DistanceOptions,
    ) -> Result<Vec<HardestPair>> {
        let n = x.labels.len();
        check_set("anchors", n, d, x)?;
        let in_batch = y.is_none();
        let y = y.unwrap_or(x);
        let m = y.labels.len();
        check_set("bank", m, d, y)?;
        let kernels = self.mining_kernels()?;
        let plan = HardPlan::new(self, d, m)?;
        let max_buffer = self.chunk_limits().max_buffer_bytes;
        let mut ws = kernels.workspace.lock();
        let mut result = Vec::with_capacity(n);
        self.with_error_scope("mining batch-hard pairs", || {
            let device = self.device();
            let ws = &mut *ws;
            for x0 in (0..n).step_by(plan.row_chunk) {
                let rows = plan.row_chunk.min(n - x0);
                let bytes = hardest_bytes(rows);
                let out = ws.output.ensure(device, bytes, max_buffer)?;
                for (index, y0) in (0..m).step_by(plan.col_chunk).enumerate() {
                    let mut encoder = device.create_command_encoder(&Default::default());
                    let block = HardBlock {
                        x: (x0, rows),
                        y: (y0, plan.col_chunk.min(m - y0)),
                        first_of_row: index == 0,
                        in_batch,
                        skip_same_id: x.ids.is_some(),
                    };
                    kernels.record_batch_hard_block(
                        self,
                        &mut encoder,
                        ws,
                        (Side::Host(x), Side::Host(y)),
                        (block, d, options),
                        (&out, 0),
                    )?;
                    self.queue().submit([encoder.finish()]);
                    self.wait_idle()?;
                }
                let staging = ws.staging.ensure(device, bytes, max_buffer)?;
                let mut encoder = device.create_command_encoder(&Default::default());
                encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes);
                self.queue().submit([encoder.finish()]);
                result.extend(self.read_back::<HardestPair>(&staging, bytes)?);
            }
            Ok(())
        })?;
        Ok(result)
    }

    /// Records the conversion of `n` batch-hard results (`hardest`, as
    /// [`GpuContext::record_batch_hard`] leaves them) into `2 n` index pairs
    /// for [`GpuContext::record_contrastive_index_pairs`]: per anchor `a`,
    /// `(a, positive, 1)` and `(a, negative, 0)`, with label `u32::MAX` (no
    /// pair: it counts nowhere) where the miner found none. The mined pairs
    /// never leave the device.
    pub fn record_hardest_pairs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        hardest: &wgpu::Buffer,
        pairs: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        if n == 0 {
            return Err(Error::ZeroDimension { name: "anchors" });
        }
        let storage = wgpu::BufferUsages::STORAGE;
        crate::binding::check_buffer("hardest", hardest, 4 * n, storage)?;
        crate::binding::check_buffer("pairs", pairs, 8 * n, storage)?;
        let kernels = self.mining_kernels()?;
        let device = self.device();
        record_split(
            device,
            encoder,
            Kernel {
                label: "mining.hardest_to_pairs",
                pipeline: &kernels.hardest_to_pairs,
                layout: &kernels.convert_layout,
            },
            (n, 64, self.chunk_limits().max_workgroups_per_dimension),
            &[
                sized_binding(hardest, hardest_bytes(n)),
                sized_binding(pairs, 2 * hardest_bytes(n)),
            ],
            |base, _, grid| Ok([to_u32(n, "rows")?, grid.0, to_u32(base, "rows")?, 0]),
        )
    }

    /// Records batch-hard mining in a batch on the caller's buffers: `x`
    /// (`n x d` `f32`), `labels` (`n` `u32`), and `out`, which receives one
    /// [`HardestPair`] (16 bytes) per row. Nothing is submitted.
    pub fn record_batch_hard(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: BatchHardBuffers<'_>,
        (n, d): (usize, usize),
        options: DistanceOptions,
    ) -> Result<()> {
        if d == 0 {
            return Err(Error::ZeroDimension {
                name: "D (values per row)",
            });
        }
        if n == 0 {
            return Err(Error::ZeroDimension { name: "anchors" });
        }
        let storage = wgpu::BufferUsages::STORAGE;
        crate::binding::check_buffer("x", buffers.x, n * d, storage)?;
        crate::binding::check_buffer("labels", buffers.labels, n, storage)?;
        crate::binding::check_buffer("out", buffers.out, 4 * n, storage)?;
        let kernels = self.mining_kernels()?;
        let plan = HardPlan::new(self, d, n)?;
        let mut ws = kernels.workspace.lock();
        let side = Side::Device(buffers.x, buffers.labels, None);
        for x0 in (0..n).step_by(plan.row_chunk) {
            for (index, y0) in (0..n).step_by(plan.col_chunk).enumerate() {
                let block = HardBlock {
                    x: (x0, plan.row_chunk.min(n - x0)),
                    y: (y0, plan.col_chunk.min(n - y0)),
                    first_of_row: index == 0,
                    in_batch: true,
                    skip_same_id: false,
                };
                kernels.record_batch_hard_block(
                    self,
                    encoder,
                    &mut ws,
                    (side, side),
                    (block, d, options),
                    (buffers.out, hardest_bytes(x0)),
                )?;
            }
        }
        Ok(())
    }

    /// The `k` nearest negatives of each query (rows of `bank` with another
    /// label, and another id when `ids` is given), closest first, ties to
    /// the smaller index; row-major `n x k`, padded with [`NO_INDEX`] where
    /// fewer than `k` exist.
    #[allow(clippy::too_many_arguments)]
    pub fn top_k_negatives(
        &self,
        queries: &[f32],
        query_labels: &[u32],
        bank: &[f32],
        bank_labels: &[u32],
        ids: Option<BankIds<'_>>,
        d: usize,
        k: usize,
        options: DistanceOptions,
    ) -> Result<Vec<Neighbor>> {
        self.top_k_negatives_with_progress(
            queries,
            query_labels,
            bank,
            bank_labels,
            ids,
            (d, k),
            options,
            &mut |_| {},
        )
    }

    /// [`GpuContext::top_k_negatives`], calling `progress` after each chunk
    /// of the bank (e.g. to draw a progress bar).
    #[allow(clippy::too_many_arguments)]
    pub fn top_k_negatives_with_progress(
        &self,
        queries: &[f32],
        query_labels: &[u32],
        bank: &[f32],
        bank_labels: &[u32],
        ids: Option<BankIds<'_>>,
        (d, k): (usize, usize),
        options: DistanceOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<Neighbor>> {
        let x = HostSet {
            rows: queries,
            labels: query_labels,
            ids: ids.map(|i| i.queries),
        };
        let y = HostSet {
            rows: bank,
            labels: bank_labels,
            ids: ids.map(|i| i.bank),
        };
        let (n, m) = (query_labels.len(), bank_labels.len());
        check_set("queries", n, d, x)?;
        check_set("bank", m, d, y)?;
        if k == 0 {
            return Err(Error::ZeroDimension { name: "k" });
        }
        let kernels = self.mining_kernels()?;
        let limits = self.chunk_limits();
        let binding = limits.max_binding_bytes;
        let max_groups = limits.max_workgroups_per_dimension as usize;
        let vd = vec_dim(d);
        let max_rows = rows_per_dispatch(self, d)?;
        // Bank rows per chunk: a power of two (the candidate lists hold one
        // chunk each and are sorted bitonically), small enough that each
        // query's k-th best is known early and prunes the later chunks (a
        // first chunk of 16384 rows made every query sort 16384 candidates),
        // large enough to keep the number of merges down.
        let col_chunk = prev_power_of_two(
            max_rows
                .min(MAX_COLUMNS_PER_DISPATCH)
                .min((4 * k).max(1024)),
        );
        let capacity = col_chunk;
        let row_chunk = (binding / (capacity as u64 * ENTRY_BYTES))
            .min(binding / (k as u64 * ENTRY_BYTES))
            .min(MAX_DISPATCH_WORK / (col_chunk as u64 * vd as u64))
            .min(max_rows as u64) as usize;
        if row_chunk == 0 {
            return Err(Error::TooLarge {
                what: format!("the best k = {k} of one query"),
                needed: k as u64 * ENTRY_BYTES,
                limit_name: "max_storage_buffer_binding_size",
                limit: binding,
            });
        }
        let total = n.div_ceil(row_chunk) as u64 * m as u64;
        let mut done = 0u64;
        let mut result = Vec::new();
        result
            .try_reserve_exact(n.saturating_mul(k))
            .map_err(|_| Error::SizeOverflow { what: "N * k" })?;
        let mut ws = kernels.workspace.lock();
        self.with_error_scope("mining top-k negatives", || {
            let device = self.device();
            let ws = &mut *ws;
            let max_buffer = limits.max_buffer_bytes;
            for x0 in (0..n).step_by(row_chunk) {
                let rows = row_chunk.min(n - x0);
                let list_bytes = rows as u64 * k as u64 * ENTRY_BYTES;
                let lists = [
                    ws.lists[0].ensure(device, list_bytes, max_buffer)?,
                    ws.lists[1].ensure(device, list_bytes, max_buffer)?,
                ];
                let thresholds =
                    ws.thresholds
                        .ensure(device, rows as u64 * ENTRY_BYTES, max_buffer)?;
                let counts = ws.counts.ensure(device, bytes_of(rows), max_buffer)?;
                let candidates = ws.candidates.ensure(
                    device,
                    rows as u64 * capacity as u64 * ENTRY_BYTES,
                    max_buffer,
                )?;
                // Workspace buffers may have grown past one binding: bind
                // what this block uses.
                let counts_binding = sized_binding(&counts, bytes_of(rows));
                let thresholds_binding = sized_binding(&thresholds, rows as u64 * ENTRY_BYTES);
                let candidates_binding =
                    sized_binding(&candidates, rows as u64 * capacity as u64 * ENTRY_BYTES);
                let list_bindings = [
                    sized_binding(&lists[0], list_bytes),
                    sized_binding(&lists[1], list_bytes),
                ];
                let list_params = |row_base: usize, grid: (u32, u32)| -> Result<ListParams> {
                    Ok(ListParams {
                        rows: to_u32(rows, "rows")?,
                        k: to_u32(k, "k")?,
                        capacity: to_u32(capacity, "capacity")?,
                        grid_width: grid.0,
                        row_base: to_u32(row_base, "rows")?,
                        out_offset: 0,
                        similarity: u32::from(options.distance.is_similarity()),
                        _pad: 0,
                    })
                };
                let mut encoder = device.create_command_encoder(&Default::default());
                let prepared_x = ws.prepare(
                    self,
                    &mut encoder,
                    Slot::X,
                    Side::Host(x),
                    (x0, rows, d),
                    options,
                )?;
                record_split(
                    device,
                    &mut encoder,
                    Kernel {
                        label: "mining.topk_init",
                        pipeline: &kernels.topk_init,
                        layout: &kernels.init_layout,
                    },
                    (rows, 1, limits.max_workgroups_per_dimension),
                    &[
                        counts_binding.clone(),
                        list_bindings[0].clone(),
                        thresholds_binding.clone(),
                    ],
                    |base, _, grid| list_params(base, grid),
                )?;
                let mut current = 0;
                for y0 in (0..m).step_by(col_chunk) {
                    let cols = col_chunk.min(m - y0);
                    let prepared_y = ws.prepare(
                        self,
                        &mut encoder,
                        Slot::Y,
                        Side::Host(y),
                        (y0, cols, d),
                        options,
                    )?;
                    let tile = Tile::new(
                        self,
                        (prepared_x.clone(), x0, rows),
                        (prepared_y, y0, cols),
                        vd,
                        TileRule {
                            skip_same_index: false,
                            skip_same_id: x.ids.is_some(),
                            extra: capacity,
                        },
                    )?;
                    let group = bind_group(
                        device,
                        "mining.topk_filter",
                        &kernels.filter_layout,
                        tile.bindings([
                            thresholds_binding.clone(),
                            counts_binding.clone(),
                            candidates_binding.clone(),
                        ]),
                    );
                    let groups = (
                        to_u32(cols.div_ceil(TILE).min(max_groups), "workgroups")?,
                        to_u32(rows.div_ceil(TILE), "workgroups")?,
                    );
                    let pipeline = &kernels.topk_filter[options.distance.shader_code() as usize];
                    dispatch(&mut encoder, "mining.topk_filter", pipeline, &group, groups);
                    let (input, output) = (&list_bindings[current], &list_bindings[1 - current]);
                    record_split(
                        device,
                        &mut encoder,
                        Kernel {
                            label: "mining.topk_merge",
                            pipeline: &kernels.topk_merge,
                            layout: &kernels.merge_layout,
                        },
                        (rows, 1, limits.max_workgroups_per_dimension),
                        &[
                            counts_binding.clone(),
                            candidates_binding.clone(),
                            input.clone(),
                            output.clone(),
                            thresholds_binding.clone(),
                        ],
                        |base, _, grid| list_params(base, grid),
                    )?;
                    current = 1 - current;
                    self.queue().submit([std::mem::replace(
                        &mut encoder,
                        device.create_command_encoder(&Default::default()),
                    )
                    .finish()]);
                    self.wait_idle()?;
                    done += cols as u64;
                    progress(Progress { done, total });
                }
                let out_bytes = rows as u64 * k as u64 * ENTRY_BYTES;
                let out = ws.output.ensure(device, out_bytes, max_buffer)?;
                record_split(
                    device,
                    &mut encoder,
                    Kernel {
                        label: "mining.topk_finish",
                        pipeline: &kernels.topk_finish,
                        layout: &kernels.finish_layout,
                    },
                    (rows, 1, limits.max_workgroups_per_dimension),
                    &[
                        list_bindings[current].clone(),
                        sized_binding(&out, out_bytes),
                    ],
                    |base, _, grid| list_params(base, grid),
                )?;
                let staging = ws.staging.ensure(device, out_bytes, max_buffer)?;
                encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, out_bytes);
                self.queue().submit([encoder.finish()]);
                result.extend(self.read_back::<Neighbor>(&staging, out_bytes)?);
            }
            Ok(())
        })?;
        Ok(result)
    }
}

/// Caller-owned buffers for [`GpuContext::record_batch_hard`].
#[derive(Clone, Copy, Debug)]
pub struct BatchHardBuffers<'a> {
    /// The batch, `n x d` `f32`.
    pub x: &'a wgpu::Buffer,
    /// One class label per row.
    pub labels: &'a wgpu::Buffer,
    /// Receives one [`HardestPair`] per row.
    pub out: &'a wgpu::Buffer,
}

fn hardest_bytes(rows: usize) -> u64 {
    (std::mem::size_of::<HardestPair>() * rows) as u64
}

/// Rows and columns per batch-hard dispatch.
struct HardPlan {
    row_chunk: usize,
    col_chunk: usize,
}

impl HardPlan {
    fn new(ctx: &GpuContext, d: usize, m: usize) -> Result<Self> {
        let max_rows = rows_per_dispatch(ctx, d)?;
        let col_chunk = max_rows.min(MAX_COLUMNS_PER_DISPATCH);
        let budget_rows =
            (MAX_DISPATCH_WORK / (col_chunk.min(m) as u64 * vec_dim(d) as u64)).max(1) as usize;
        // A multiple of the tile, so a caller's output is bound at aligned
        // offsets (16 bytes per row, 64 rows).
        let row_chunk = max_rows.min(budget_rows);
        let row_chunk = if row_chunk >= TILE {
            row_chunk / TILE * TILE
        } else {
            row_chunk
        };
        Ok(Self {
            row_chunk,
            col_chunk,
        })
    }
}

/// One batch-hard dispatch: anchors `x.0..x.0 + x.1` against rows
/// `y.0..y.0 + y.1`.
#[derive(Clone, Copy)]
struct HardBlock {
    x: (usize, usize),
    y: (usize, usize),
    first_of_row: bool,
    in_batch: bool,
    skip_same_id: bool,
}

impl MiningKernels {
    /// Records one batch-hard block into `out` from byte `offset` (merging
    /// with what earlier blocks of the same anchors left there).
    #[allow(clippy::too_many_arguments)]
    fn record_batch_hard_block(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        ws: &mut MiningWorkspace,
        (x, y): (Side<'_>, Side<'_>),
        (block, d, options): (HardBlock, usize, DistanceOptions),
        (out, offset): (&wgpu::Buffer, u64),
    ) -> Result<()> {
        let device = ctx.device();
        let ((x0, rows), (y0, cols)) = (block.x, block.y);
        let tile = ws.prepare_tile(
            ctx,
            encoder,
            ((x, x0, rows), (y, y0, cols)),
            (d, options),
            TileRule {
                skip_same_index: block.in_batch,
                skip_same_id: block.skip_same_id,
                extra: usize::from(!block.first_of_row),
            },
        )?;
        let group = bind_group(
            device,
            "mining.batch_hard",
            &self.hard_layout,
            tile.bindings([crate::binding::offset_binding(
                out,
                offset,
                hardest_bytes(rows),
            )]),
        );
        let pipeline = &self.batch_hard[options.distance.shader_code() as usize];
        let groups = (to_u32(rows.div_ceil(TILE), "workgroups")?, 1);
        dispatch(encoder, "mining.batch_hard", pipeline, &group, groups);
        Ok(())
    }
}

/// Mirrors `SemiHardParams` in shaders/mining.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SemiHardParams {
    rows: u32,
    cols: u32,
    stride: u32,
    grid_width: u32,
    row_base: u32,
    pairs: u32,
    use_margin: u32,
    margin: f32,
    anchor_first: u32,
    _pad: [u32; 3],
}

impl GpuContext {
    /// Semi-hard negatives with TensorFlow Addons' semantics: for every
    /// anchor-positive pair `(a, p)` of the batch (same label, `p != a`),
    /// the nearest negative farther from `a` than `p` is, or, if there is
    /// none, the farthest negative. With `margin`, only negatives with
    /// `d_ap < d_an < d_ap + margin` qualify, and [`NO_INDEX`] marks pairs
    /// without one. Ties go to the smaller index.
    ///
    /// Memory is `O(block x N)` for a block of anchors at a time, never the
    /// `B^3` of TF Addons' masks. Output: anchors ascending, then positives.
    pub fn semi_hard_negatives(
        &self,
        x: &[f32],
        labels: &[u32],
        d: usize,
        options: DistanceOptions,
        margin: Option<f32>,
    ) -> Result<Vec<SemiHardTriplet>> {
        let n = labels.len();
        let set = HostSet {
            rows: x,
            labels,
            ids: None,
        };
        check_set("X (the batch)", n, d, set)?;
        if let Some(m) = margin {
            if !(m.is_finite() && m > 0.0) {
                return Err(Error::InvalidValue {
                    what: "margin",
                    index: 0,
                    value: m.to_string(),
                    expected: "the semi-hard margin must be finite and > 0",
                });
            }
        }
        let kernels = self.mining_kernels()?;
        let limits = self.chunk_limits();
        let binding = limits.max_binding_bytes;
        let max_groups = limits.max_workgroups_per_dimension as usize;
        let vd = vec_dim(d);
        let stride = n.next_power_of_two();
        check_whole_batch(self, n, d, "semi-hard mining")?;
        let block = (binding / (stride as u64 * ENTRY_BYTES))
            .min(MAX_DISPATCH_WORK / (n as u64 * vd as u64))
            .min((max_groups * TILE) as u64)
            .max(1) as usize;
        let block = block.min(n);
        let mut ws = kernels.workspace.lock();
        let mut result = Vec::new();
        self.with_error_scope("mining semi-hard negatives", || {
            let device = self.device();
            let queue = self.queue();
            let ws = &mut *ws;
            let max_buffer = limits.max_buffer_bytes;
            for a0 in (0..n).step_by(block) {
                let rows = block.min(n - a0);
                let pairs: Vec<[u32; 2]> = (0..rows)
                    .flat_map(|a| {
                        (0..n)
                            .filter(move |&p| p != a0 + a && labels[p] == labels[a0 + a])
                            .map(move |p| [a as u32, p as u32])
                    })
                    .collect();
                if pairs.is_empty() {
                    continue;
                }
                let mut encoder = device.create_command_encoder(&Default::default());
                let prepared_x = ws.prepare(
                    self,
                    &mut encoder,
                    Slot::X,
                    Side::Host(set),
                    (a0, rows, d),
                    options,
                )?;
                let prepared_y = ws.prepare(
                    self,
                    &mut encoder,
                    Slot::Y,
                    Side::Host(set),
                    (0, n, d),
                    options,
                )?;
                let meta_x = prepared_x.1.clone();
                let meta_y = prepared_y.1.clone();
                let keys = ws
                    .pair_keys
                    .ensure(device, bytes_of(rows * n), max_buffer)?;
                let sorted = ws.sorted_negatives.ensure(
                    device,
                    rows as u64 * stride as u64 * ENTRY_BYTES,
                    max_buffer,
                )?;
                let pair_list =
                    ws.anchor_pairs
                        .ensure(device, pairs.len() as u64 * ENTRY_BYTES, max_buffer)?;
                queue.write_buffer(&pair_list, 0, bytemuck::cast_slice(&pairs));
                let out_bytes = (pairs.len() * std::mem::size_of::<SemiHardTriplet>()) as u64;
                let out = ws.output.ensure(device, out_bytes, max_buffer)?;
                let kind = options.distance.shader_code() as usize;
                let tile = Tile::new(
                    self,
                    (prepared_x, a0, rows),
                    (prepared_y, 0, n),
                    vd,
                    TileRule {
                        skip_same_index: true,
                        skip_same_id: false,
                        extra: 0,
                    },
                )?;
                let group = bind_group(
                    device,
                    "mining.semi_hard_keys",
                    &kernels.keys_layout,
                    tile.bindings([sized_binding(&keys, bytes_of(rows * n))]),
                );
                let groups = (
                    to_u32(n.div_ceil(TILE), "workgroups")?,
                    to_u32(rows.div_ceil(TILE), "workgroups")?,
                );
                dispatch(
                    &mut encoder,
                    "mining.semi_hard_keys",
                    &kernels.semi_hard_keys[kind],
                    &group,
                    groups,
                );
                let params = |row_base: usize, grid: (u32, u32)| -> Result<SemiHardParams> {
                    Ok(SemiHardParams {
                        rows: to_u32(rows, "rows")?,
                        cols: to_u32(n, "rows")?,
                        stride: to_u32(stride, "rows")?,
                        grid_width: grid.0,
                        row_base: to_u32(row_base, "pairs")?,
                        pairs: to_u32(pairs.len(), "pairs")?,
                        use_margin: u32::from(margin.is_some()),
                        margin: margin.unwrap_or(0.0),
                        anchor_first: to_u32(a0, "rows")?,
                        _pad: [0; 3],
                    })
                };
                let shared = [
                    sized_binding(&keys, bytes_of(rows * n)),
                    sized_binding(&sorted, rows as u64 * stride as u64 * ENTRY_BYTES),
                    sized_binding(&meta_x, meta_bytes(rows)),
                    sized_binding(&meta_y, meta_bytes(n)),
                ];
                record_split(
                    device,
                    &mut encoder,
                    Kernel {
                        label: "mining.semi_hard_sort",
                        pipeline: &kernels.semi_hard_sort,
                        layout: &kernels.sort_layout,
                    },
                    (rows, 1, limits.max_workgroups_per_dimension),
                    &shared,
                    |base, _, grid| params(base, grid),
                )?;
                let mut select_bindings = shared.to_vec();
                select_bindings.extend([
                    sized_binding(&pair_list, pairs.len() as u64 * ENTRY_BYTES),
                    sized_binding(&out, out_bytes),
                ]);
                record_split(
                    device,
                    &mut encoder,
                    Kernel {
                        label: "mining.semi_hard_select",
                        pipeline: &kernels.semi_hard_select[kind],
                        layout: &kernels.select_layout,
                    },
                    (pairs.len(), 64, limits.max_workgroups_per_dimension),
                    &select_bindings,
                    |base, _, grid| params(base, grid),
                )?;
                let staging = ws.staging.ensure(device, out_bytes, max_buffer)?;
                encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, out_bytes);
                queue.submit([encoder.finish()]);
                result.extend(self.read_back::<SemiHardTriplet>(&staging, out_bytes)?);
            }
            Ok(())
        })?;
        Ok(result)
    }
}

/// Mirrors `MarginParams` in shaders/mining.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MarginParams {
    pos_key: u32,
    neg_key: u32,
    col_tiles: u32,
    out_base: u32,
    capacity: u32,
    _pad: [u32; 3],
}

/// The key of a distance (or, for a similarity, of minus it) that sorts
/// like the value: mirror of `closeness_key`.
fn closeness_key(value: f32, similarity: bool) -> u32 {
    let v = if similarity { -value } else { value };
    let v = if v == 0.0 { 0.0 } else { v };
    let bits = v.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

impl GpuContext {
    /// Pair-margin mining in a batch: every unordered pair `i < j` whose
    /// rows share a label and are farther apart than `positive_threshold`,
    /// or differ in label and are closer than `negative_threshold` (for a
    /// similarity: less similar, and more similar, than the thresholds), in
    /// `(i, j)` order, at most `capacity` of them; [`MarginPairs::total`]
    /// says how many qualified.
    pub fn pair_margin_pairs(
        &self,
        x: &[f32],
        labels: &[u32],
        d: usize,
        options: DistanceOptions,
        (positive_threshold, negative_threshold): (f32, f32),
        capacity: usize,
    ) -> Result<MarginPairs> {
        let n = labels.len();
        let set = HostSet {
            rows: x,
            labels,
            ids: None,
        };
        check_set("X (the batch)", n, d, set)?;
        for (value, what) in [
            (positive_threshold, "positive threshold"),
            (negative_threshold, "negative threshold"),
        ] {
            if !value.is_finite() {
                return Err(Error::InvalidValue {
                    what,
                    index: 0,
                    value: value.to_string(),
                    expected: "thresholds must be finite",
                });
            }
        }
        let kernels = self.mining_kernels()?;
        let limits = self.chunk_limits();
        let binding = limits.max_binding_bytes;
        let max_groups = limits.max_workgroups_per_dimension as usize;
        let vd = vec_dim(d);
        let col_tiles = n.div_ceil(TILE);
        check_whole_batch(self, n, d, "pair-margin mining")?;
        let block = ((binding / 4 - 1) / col_tiles as u64)
            .min(MAX_DISPATCH_WORK / (n as u64 * vd as u64))
            .min((max_groups * TILE) as u64)
            .max(1) as usize;
        let block = if block >= TILE {
            block / TILE * TILE
        } else {
            block
        }
        .min(n);
        let similarity = options.distance.is_similarity();
        let out_capacity = capacity.max(1);
        let kind = options.distance.shader_code() as usize;
        let mut ws = kernels.workspace.lock();
        let mut total = 0u64;
        let mut pairs_out = Vec::new();
        self.with_error_scope("mining pair-margin pairs", || {
            let device = self.device();
            let queue = self.queue();
            let ws = &mut *ws;
            let max_buffer = limits.max_buffer_bytes;
            let out = ws
                .margin_pairs
                .ensure(device, out_capacity as u64 * 16, max_buffer)?;
            for a0 in (0..n).step_by(block) {
                let rows = block.min(n - a0);
                // Only columns from a0 on can pair with these anchors (j > i).
                let cols = n - a0;
                let block_tiles = cols.div_ceil(TILE);
                let entries = rows * block_tiles;
                let counts = ws
                    .tile_counts
                    .ensure(device, bytes_of(entries + 1), max_buffer)?;
                let mut encoder = device.create_command_encoder(&Default::default());
                let tile = ws.prepare_tile(
                    self,
                    &mut encoder,
                    ((Side::Host(set), a0, rows), (Side::Host(set), a0, cols)),
                    (d, options),
                    TileRule {
                        skip_same_index: true,
                        skip_same_id: false,
                        extra: 0,
                    },
                )?;
                let record = |encoder: &mut wgpu::CommandEncoder,
                              label: &'static str,
                              pipeline: &wgpu::ComputePipeline,
                              out_base: u64,
                              groups: (u32, u32)|
                 -> Result<()> {
                    let params = MarginParams {
                        pos_key: closeness_key(positive_threshold, similarity),
                        neg_key: closeness_key(negative_threshold, similarity),
                        col_tiles: to_u32(block_tiles, "tiles")?,
                        out_base: u32::try_from(out_base.min(u64::from(u32::MAX)))
                            .unwrap_or(u32::MAX),
                        capacity: to_u32(capacity, "capacity")?,
                        _pad: [0; 3],
                    };
                    let params_buffer = uniform_buffer(device, "mining.margin_params", &params);
                    let group = bind_group(
                        device,
                        label,
                        &kernels.margin_layout,
                        tile.bindings([
                            params_buffer.as_entire_binding(),
                            sized_binding(&counts, bytes_of(entries + 1)),
                            sized_binding(&out, out_capacity as u64 * 16),
                        ]),
                    );
                    dispatch(encoder, label, pipeline, &group, groups);
                    Ok(())
                };
                let tiles = (
                    to_u32(block_tiles, "workgroups")?,
                    to_u32(rows.div_ceil(TILE), "workgroups")?,
                );
                record(
                    &mut encoder,
                    "mining.margin_count",
                    &kernels.margin_count[kind],
                    0,
                    tiles,
                )?;
                record(
                    &mut encoder,
                    "mining.margin_scan",
                    &kernels.margin_scan,
                    0,
                    (1, 1),
                )?;
                record(
                    &mut encoder,
                    "mining.margin_fill",
                    &kernels.margin_fill[kind],
                    total,
                    tiles,
                )?;
                let staging = ws.staging.ensure(device, 4, max_buffer)?;
                encoder.copy_buffer_to_buffer(&counts, bytes_of(entries), &staging, 0, 4);
                queue.submit([encoder.finish()]);
                let block_total: Vec<u32> = self.read_back(&staging, 4)?;
                total += u64::from(block_total.first().copied().unwrap_or(0));
            }
            let kept = total.min(capacity as u64) as usize;
            if kept > 0 {
                let bytes = kept as u64 * 16;
                let staging = ws.staging.ensure(device, bytes, max_buffer)?;
                let mut encoder = device.create_command_encoder(&Default::default());
                encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes);
                queue.submit([encoder.finish()]);
                let words: Vec<[u32; 4]> = self.read_back(&staging, bytes)?;
                pairs_out = words
                    .into_iter()
                    .map(|[first, second, label, _]| crate::loss::IndexPair {
                        first,
                        second,
                        label,
                    })
                    .collect();
            }
            Ok(())
        })?;
        Ok(MarginPairs {
            pairs: pairs_out,
            total,
        })
    }
}

/// Mirrors `AccumulateParams` in shaders/mining.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AccumulateParams {
    entries: u32,
    _pad: [u32; 3],
}

/// Checks that a batch of `n` rows of `d` values fits one binding and one
/// dispatch of tiles, as the miners that bind the whole batch need.
fn check_whole_batch(ctx: &GpuContext, n: usize, d: usize, miner: &str) -> Result<()> {
    let max_groups = ctx.chunk_limits().max_workgroups_per_dimension as usize;
    if n > rows_per_dispatch(ctx, d)?.min(max_groups * TILE) {
        return Err(Error::TooLarge {
            what: format!("a batch of {n} rows for {miner}"),
            needed: prepared_bytes(n, vec_dim(d)),
            limit_name: "max_storage_buffer_binding_size",
            limit: ctx.chunk_limits().max_binding_bytes,
        });
    }
    Ok(())
}

/// Checks that bin edges are finite and strictly increasing, at least two.
pub(crate) fn check_edges(edges: &[f32]) -> Result<()> {
    if edges.len() < 2 {
        return Err(Error::InvalidValue {
            what: "edges",
            index: edges.len(),
            value: format!("{} edges", edges.len()),
            expected: "at least 2 bin edges are needed",
        });
    }
    for (index, pair) in edges.windows(2).enumerate() {
        if !(pair[0].is_finite() && pair[1].is_finite() && pair[0] < pair[1]) {
            return Err(Error::InvalidValue {
                what: "edges",
                index: index + 1,
                value: pair[1].to_string(),
                expected: "bin edges must be finite and strictly increasing",
            });
        }
    }
    Ok(())
}

impl GpuContext {
    /// Histograms of the distances of all unordered pairs `i < j` of the
    /// batch `x` (`n x d`), similar pairs (equal labels) and dissimilar pairs
    /// apart, over the bins between `edges`.
    pub fn pair_histograms(
        &self,
        x: &[f32],
        labels: &[u32],
        d: usize,
        options: DistanceOptions,
        edges: &[f32],
    ) -> Result<PairHistograms> {
        let set = HostSet {
            rows: x,
            labels,
            ids: None,
        };
        self.histograms_impl(set, None, d, options, edges)
    }

    /// Histograms of the distances of every query x bank pair (skipping
    /// equal ids when `ids` is given), similar and dissimilar apart.
    #[allow(clippy::too_many_arguments)]
    pub fn pair_histograms_against_bank(
        &self,
        queries: &[f32],
        query_labels: &[u32],
        bank: &[f32],
        bank_labels: &[u32],
        ids: Option<BankIds<'_>>,
        d: usize,
        options: DistanceOptions,
        edges: &[f32],
    ) -> Result<PairHistograms> {
        let x = HostSet {
            rows: queries,
            labels: query_labels,
            ids: ids.map(|i| i.queries),
        };
        let y = HostSet {
            rows: bank,
            labels: bank_labels,
            ids: ids.map(|i| i.bank),
        };
        self.histograms_impl(x, Some(y), d, options, edges)
    }

    fn histograms_impl(
        &self,
        x: HostSet<'_>,
        y: Option<HostSet<'_>>,
        d: usize,
        options: DistanceOptions,
        edges: &[f32],
    ) -> Result<PairHistograms> {
        check_edges(edges)?;
        let n = x.labels.len();
        check_set("anchors", n, d, x)?;
        let in_batch = y.is_none();
        let y = y.unwrap_or(x);
        let m = y.labels.len();
        check_set("bank", m, d, y)?;
        let kernels = self.mining_kernels()?;
        let limits = self.chunk_limits();
        let max_groups = limits.max_workgroups_per_dimension as usize;
        let vd = vec_dim(d);
        let max_rows = rows_per_dispatch(self, d)?;
        let col_chunk = max_rows.min(max_groups * TILE);
        let budget_rows = (MAX_DISPATCH_WORK / (col_chunk.min(m) as u64 * vd as u64)).max(1);
        let row_chunk = max_rows
            .min(budget_rows as usize)
            .min(max_groups * TILE)
            .max(1);
        let bins = edges.len() - 1;
        let entries = 2 * (bins + 2);
        let pipeline = &kernels.pair_histogram[options.distance.shader_code() as usize];
        let mut ws = kernels.workspace.lock();
        let mut totals = Vec::new();
        self.with_error_scope("computing pair-distance histograms", || {
            let device = self.device();
            let queue = self.queue();
            let ws = &mut *ws;
            let max_buffer = limits.max_buffer_bytes;
            let edge_buffer = ws.edges.ensure(device, bytes_of(edges.len()), max_buffer)?;
            queue.write_buffer(&edge_buffer, 0, bytemuck::cast_slice(edges));
            let counts32 = ws
                .histogram32
                .ensure(device, bytes_of(entries), max_buffer)?;
            let counts64 = ws
                .histogram64
                .ensure(device, bytes_of(2 * entries), max_buffer)?;
            let mut encoder = device.create_command_encoder(&Default::default());
            encoder.clear_buffer(&counts32, 0, Some(bytes_of(entries)));
            encoder.clear_buffer(&counts64, 0, Some(bytes_of(2 * entries)));
            for x0 in (0..n).step_by(row_chunk) {
                let rows = row_chunk.min(n - x0);
                for y0 in (0..m).step_by(col_chunk) {
                    let cols = col_chunk.min(m - y0);
                    if in_batch && y0 + cols <= x0 {
                        continue; // every pair here has j < i
                    }
                    let tile = ws.prepare_tile(
                        self,
                        &mut encoder,
                        ((Side::Host(x), x0, rows), (Side::Host(y), y0, cols)),
                        (d, options),
                        TileRule {
                            skip_same_index: in_batch,
                            skip_same_id: x.ids.is_some(),
                            extra: bins,
                        },
                    )?;
                    let group = bind_group(
                        device,
                        "mining.pair_histogram",
                        &kernels.histogram_layout,
                        tile.bindings([
                            sized_binding(&edge_buffer, bytes_of(edges.len())),
                            sized_binding(&counts32, bytes_of(entries)),
                        ]),
                    );
                    let groups = (
                        to_u32(cols.div_ceil(TILE), "workgroups")?,
                        to_u32(rows.div_ceil(TILE), "workgroups")?,
                    );
                    dispatch(
                        &mut encoder,
                        "mining.pair_histogram",
                        pipeline,
                        &group,
                        groups,
                    );
                    let params = AccumulateParams {
                        entries: to_u32(entries, "bins")?,
                        _pad: [0; 3],
                    };
                    let params_buffer = uniform_buffer(device, "mining.accumulate_params", &params);
                    let group = bind_group(
                        device,
                        "mining.accumulate_histogram",
                        &kernels.accumulate_layout,
                        vec![
                            params_buffer.as_entire_binding(),
                            sized_binding(&counts32, bytes_of(entries)),
                            sized_binding(&counts64, bytes_of(2 * entries)),
                        ],
                    );
                    let groups = (to_u32(entries.div_ceil(64), "workgroups")?, 1);
                    dispatch(
                        &mut encoder,
                        "mining.accumulate_histogram",
                        &kernels.accumulate_histogram,
                        &group,
                        groups,
                    );
                    let done = std::mem::replace(
                        &mut encoder,
                        device.create_command_encoder(&Default::default()),
                    );
                    queue.submit([done.finish()]);
                    self.wait_idle()?;
                }
            }
            let staging = ws
                .staging
                .ensure(device, bytes_of(2 * entries), max_buffer)?;
            encoder.copy_buffer_to_buffer(&counts64, 0, &staging, 0, bytes_of(2 * entries));
            queue.submit([encoder.finish()]);
            totals = self.read_back::<[u32; 2]>(&staging, bytes_of(2 * entries))?;
            Ok(())
        })?;
        let counts: Vec<u64> = totals
            .iter()
            .map(|&[low, high]| u64::from(low) | (u64::from(high) << 32))
            .collect();
        Ok(PairHistograms {
            edges: edges.to_vec(),
            positive: counts[..bins + 2].to_vec(),
            negative: counts[bins + 2..].to_vec(),
            similarity: options.distance.is_similarity(),
        })
    }
}

/// The largest power of two at most `value` (at least 1).
fn prev_power_of_two(value: usize) -> usize {
    if value <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - value.leading_zeros())
    }
}
