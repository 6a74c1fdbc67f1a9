//! The contrastive (margin) loss of Hadsell, Chopra & LeCun (2006) and its
//! gradient, on the GPU.
//!
//! For a pair of rows at distance `d` with label `y` (1: similar, 0:
//! dissimilar):
//!
//! ```text
//! l(d, y = 1) = s · [d − m_pos]₊^p      pull similar pairs in
//! l(d, y = 0) = s · [m_neg − d]₊^p      push dissimilar pairs out, up to m_neg
//! ```
//!
//! with `p ∈ {1, 2}`, a scale `s` (½ or 1 in the presets) and margins
//! `0 ≤ m_pos < m_neg`. Its slope `g = ∂l/∂d` is `s p [d − m_pos]₊^(p−1)`
//! for similar pairs (0 where `d ≤ m_pos`) and `−s p [m_neg − d]₊^(p−1)`
//! for dissimilar ones (0 where `d ≥ m_neg`), and the gradient on row `x_i`
//! of a pair is `c · (x_i − x_j)` with
//!
//! | distance | c |
//! |---|---|
//! | Euclidean `d = ‖x_i − x_j‖` | `g / d`; at `d = 0` the limit `2s` where it exists (similar pairs, `p = 2`, `m_pos = 0`), else 0 |
//! | SquaredEuclidean `d = ‖x_i − x_j‖²` | `2g` |
//! | Cosine `d = ‖u_i − u_j‖²/2` on `u = x/‖x‖` | `g` on `u` (0 for rows of norm 0) |
//!
//! On normalised rows the gradient goes through the normalisation:
//! `∂L/∂x = (g_u − (g_u·u) u) / ‖x‖`. Gradients are never NaN or infinite.
//!
//! ## Why the margin
//!
//! With `m_neg = 0` the dissimilar term vanishes and mapping every input to
//! one point minimises the loss: the embedding collapses. The margin makes
//! dissimilar pairs cost something until they are at least `m_neg` apart,
//! and nothing beyond, so training spends its effort on the hard pairs
//! inside the margin. It is chosen relative to the scale of the distances
//! (e.g. 1 or 2 on normalised embeddings).
//!
//! ## Presets
//!
//! | preset | distance | p | s | m_pos | m_neg | reduction |
//! |---|---|---|---|---|---|---|
//! | [`ContrastiveLoss::hadsell`] (default, m = 1) | Euclidean | 2 | ½ | 0 | m | mean |
//! | [`ContrastiveLoss::tf_addons`] | Euclidean | 2 | 1 | 0 | m | mean |
//! | [`ContrastiveLoss::pytorch_metric_learning`] | Euclidean on normalised rows | 1 | 1 | 0 | 1 | mean over non-zero, pos and neg separately |
//! | [`ContrastiveLoss::caffe_legacy`] | SquaredEuclidean | 1 | ½ | 0 | m | mean |
//!
//! The kernel is `shaders/loss.wgsl`; its CPU mirror is
//! [`crate::reference::loss`].

use crate::binding::{
    bind_group, bind_group_layout, bytes_of, dispatch, offset_binding, record_split, sized_binding,
    to_u32, uniform_buffer, AlignedRange, Kernel, MAX_DISPATCH_WORK, READ, READ_WRITE, UNIFORM,
};
use crate::context::{exactly, GpuContext};
use crate::distance::Distance;
use crate::error::{Error, Result};
use crate::rows::{meta_bytes, prepared_bytes, PreparedTarget, RowSource};
use crate::workspace::{GrowableBuffer, Locked};

/// The exponent `p` of the hinge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Power {
    /// `p = 1`: `[·]₊`.
    One,
    /// `p = 2`: `[·]₊²`.
    #[default]
    Two,
}

impl Power {
    /// The exponent as a number.
    pub const fn exponent(self) -> u32 {
        match self {
            Power::One => 1,
            Power::Two => 2,
        }
    }
}

/// How per-pair losses become one number (and the gradient follows).
///
/// Counts are of unordered pairs; pytorch-metric-learning counts each pair
/// twice (ordered pairs `i ≠ j`), which leaves every mean unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// `Σ l`.
    Sum,
    /// `Σ l / (number of pairs considered)`.
    #[default]
    Mean,
    /// `Σ_pos l / #pos + Σ_neg l / #neg` (an empty class contributes 0).
    MeanPosNeg,
    /// As `MeanPosNeg`, each mean over the pairs whose loss is `> 0` only
    /// (0 when there are none): pytorch-metric-learning's
    /// `AvgNonZeroReducer`.
    MeanNonzeroPosNeg,
    /// No reduction: the per-pair losses (explicit pairs and index lists
    /// only); the scalar is their sum and the gradient that of the sum.
    None,
}

/// The contrastive loss: distance, margins, power, scale and reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContrastiveLoss {
    /// Euclidean, squared Euclidean or cosine (`Dot` is a similarity and
    /// is rejected).
    pub distance: Distance,
    /// L2-normalise rows before the distance (the gradient goes through it).
    pub normalize: bool,
    /// `m_pos ≥ 0`: similar pairs closer than this cost nothing.
    pub pos_margin: f32,
    /// `m_neg > m_pos`: dissimilar pairs farther than this cost nothing.
    pub neg_margin: f32,
    /// The exponent `p`.
    pub power: Power,
    /// The factor `s > 0` (½ or 1 in the presets).
    pub scale: f32,
    /// How the per-pair losses are combined.
    pub reduction: Reduction,
}

impl Default for ContrastiveLoss {
    /// Hadsell et al. 2006 with margin 1.
    fn default() -> Self {
        Self::hadsell(1.0)
    }
}

impl ContrastiveLoss {
    /// Hadsell, Chopra & LeCun 2006: `½ y d² + ½ (1 − y) max(0, m − d)²`
    /// on Euclidean distances, mean over pairs.
    pub const fn hadsell(margin: f32) -> Self {
        Self {
            distance: Distance::Euclidean,
            normalize: false,
            pos_margin: 0.0,
            neg_margin: margin,
            power: Power::Two,
            scale: 0.5,
            reduction: Reduction::Mean,
        }
    }

    /// TensorFlow Addons `contrastive_loss`: `y d² + (1 − y) max(m − d, 0)²`
    /// (no ½; TF Addons' default margin is 1), mean over pairs.
    pub const fn tf_addons(margin: f32) -> Self {
        Self {
            scale: 1.0,
            ..Self::hadsell(margin)
        }
    }

    /// pytorch-metric-learning `ContrastiveLoss()` with its defaults:
    /// `[d − 0]₊` and `[1 − d]₊` on L2-normalised rows, averaged over the
    /// non-zero losses of positive and negative pairs separately, summed.
    pub const fn pytorch_metric_learning() -> Self {
        Self {
            distance: Distance::Euclidean,
            normalize: true,
            pos_margin: 0.0,
            neg_margin: 1.0,
            power: Power::One,
            scale: 1.0,
            reduction: Reduction::MeanNonzeroPosNeg,
        }
    }

    /// Caffe's legacy `ContrastiveLoss` (`legacy_version: true`):
    /// `½ y d² + ½ (1 − y) max(m − d², 0)` with `d² = ‖x_i − x_j‖²`.
    pub const fn caffe_legacy(margin: f32) -> Self {
        Self {
            distance: Distance::SquaredEuclidean,
            normalize: false,
            pos_margin: 0.0,
            neg_margin: margin,
            power: Power::One,
            scale: 0.5,
            reduction: Reduction::Mean,
        }
    }

    /// The same loss with another reduction.
    pub const fn with_reduction(self, reduction: Reduction) -> Self {
        Self { reduction, ..self }
    }

    /// The same loss on L2-normalised rows.
    pub const fn normalized(self) -> Self {
        Self {
            normalize: true,
            ..self
        }
    }

    /// Checks the parameters: finite margins with `0 ≤ m_pos < m_neg`, a
    /// finite `s > 0`, and a distance (not `Dot`).
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidLoss { reason });
        if self.distance == Distance::Dot {
            return invalid(
                "the contrastive loss needs a distance; Dot is a similarity (use Cosine)".into(),
            );
        }
        if !self.pos_margin.is_finite() || !self.neg_margin.is_finite() {
            return invalid(format!(
                "margins must be finite (m_pos = {}, m_neg = {})",
                self.pos_margin, self.neg_margin
            ));
        }
        if self.pos_margin < 0.0 {
            return invalid(format!("m_pos = {} must be >= 0", self.pos_margin));
        }
        if self.neg_margin <= self.pos_margin {
            return invalid(format!(
                "m_neg = {} must be greater than m_pos = {}",
                self.neg_margin, self.pos_margin
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return invalid(format!(
                "the scale s = {} must be finite and > 0",
                self.scale
            ));
        }
        Ok(())
    }

    /// Whether rows are divided by their norm before the distance.
    pub(crate) const fn normalizes_rows(&self) -> bool {
        self.normalize || matches!(self.distance, Distance::Cosine)
    }

    /// `l(d, y)` in `f64` (the reference's formula).
    pub fn pair_loss(&self, d: f64, similar: bool) -> f64 {
        let hinge = self.hinge(d, similar);
        let s = f64::from(self.scale);
        match self.power {
            Power::One => s * hinge,
            Power::Two => s * hinge * hinge,
        }
    }

    /// `g = ∂l/∂d` in `f64`.
    pub fn pair_slope(&self, d: f64, similar: bool) -> f64 {
        let hinge = self.hinge(d, similar);
        if hinge <= 0.0 {
            return 0.0;
        }
        let s = f64::from(self.scale);
        let magnitude = match self.power {
            Power::One => s,
            Power::Two => 2.0 * s * hinge,
        };
        if similar {
            magnitude
        } else {
            -magnitude
        }
    }

    /// `[d − m_pos]₊` for similar pairs, `[m_neg − d]₊` for dissimilar ones.
    fn hinge(&self, d: f64, similar: bool) -> f64 {
        let t = if similar {
            d - f64::from(self.pos_margin)
        } else {
            f64::from(self.neg_margin) - d
        };
        t.max(0.0)
    }

    /// The coefficient `c` of `(r_i − r_j)` in the gradient on prepared row
    /// `r_i`, for a pair at distance `d` (see the module docs), in `f64`.
    /// `zero_norm`: one of the rows has norm 0 (cosine treats it as
    /// orthogonal to everything, with zero gradient).
    pub fn pair_coefficient(&self, d: f64, similar: bool, zero_norm: bool) -> f64 {
        let g = self.pair_slope(d, similar);
        match self.distance {
            Distance::SquaredEuclidean => 2.0 * g,
            Distance::Cosine | Distance::Dot => {
                if zero_norm {
                    0.0
                } else {
                    g
                }
            }
            Distance::Euclidean => {
                if d > 0.0 {
                    g / d
                } else if similar && self.power == Power::Two && self.pos_margin == 0.0 {
                    // lim_{d→0} g/d = 2s for s d².
                    2.0 * f64::from(self.scale)
                } else {
                    // No limit (p = 1, or the dissimilar term): zero subgradient.
                    0.0
                }
            }
        }
    }
}

/// How many pairs a loss saw: unordered pairs, by label and by whether
/// their loss was `> 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairCounts {
    /// Similar pairs considered.
    pub positive: u64,
    /// Dissimilar pairs considered.
    pub negative: u64,
    /// Similar pairs with loss `> 0`.
    pub positive_active: u64,
    /// Dissimilar pairs with loss `> 0`.
    pub negative_active: u64,
}

/// The weights `w_pos`, `w_neg` with `L = w_pos Σ_pos l + w_neg Σ_neg l`.
pub(crate) fn reduction_weights(reduction: Reduction, counts: &PairCounts) -> (f64, f64) {
    let inverse = |n: u64| if n == 0 { 0.0 } else { 1.0 / n as f64 };
    match reduction {
        Reduction::Sum | Reduction::None => (1.0, 1.0),
        Reduction::Mean => {
            let w = inverse(counts.positive + counts.negative);
            (w, w)
        }
        Reduction::MeanPosNeg => (inverse(counts.positive), inverse(counts.negative)),
        Reduction::MeanNonzeroPosNeg => (
            inverse(counts.positive_active),
            inverse(counts.negative_active),
        ),
    }
}

// ---------------------------------------------------------------------------
// The GPU side: pipelines, workspace and the two API levels.
// ---------------------------------------------------------------------------

const SHADER: &str = include_str!("../shaders/loss.wgsl");
/// Rows of X per `all_pairs` workgroup.
const BLOCK_ROWS: usize = 32;
/// vec4s of the gradient per `all_pairs` workgroup.
const CHUNK_VECS: usize = 32;
/// Invocations per workgroup of the per-pair and per-row kernels.
const THREADS: usize = 64;
/// Most rows of Y one `all_pairs` workgroup loops over in one dispatch.
const MAX_COLUMNS_PER_DISPATCH: u64 = 16_384;
/// Bytes of one `Partial` in shaders/loss.wgsl.
const PARTIAL_BYTES: u64 = 32;

/// The reduced loss as the GPU leaves it in a totals buffer
/// ([`LossTotals::SIZE`] bytes), e.g. for a training loop that reads it back
/// only every few steps. Mirrors `Totals` in shaders/loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LossTotals {
    /// The reduced loss.
    pub loss: f32,
    /// `Σ l` over similar pairs.
    pub pos_loss: f32,
    /// `Σ l` over dissimilar pairs.
    pub neg_loss: f32,
    /// The reduction's weight of similar pairs (`L = w_pos Σ_pos + w_neg Σ_neg`).
    pub pos_weight: f32,
    /// The reduction's weight of dissimilar pairs.
    pub neg_weight: f32,
    _pad: [u32; 3],
    /// `(low, high)` 32-bit halves of the similar, dissimilar, active similar
    /// and active dissimilar pair counts.
    pub counts: [[u32; 2]; 4],
}

impl LossTotals {
    /// Bytes of a totals buffer.
    pub const SIZE: u64 = std::mem::size_of::<LossTotals>() as u64;

    /// The pair counts.
    pub fn counts(&self) -> PairCounts {
        let count = |[low, high]: [u32; 2]| u64::from(low) | (u64::from(high) << 32);
        PairCounts {
            positive: count(self.counts[0]),
            negative: count(self.counts[1]),
            positive_active: count(self.counts[2]),
            negative_active: count(self.counts[3]),
        }
    }
}

/// Ids of queries and bank rows for [`GpuContext::contrastive_against_bank`]:
/// pairs with equal ids are skipped (a query that is itself in the bank).
#[derive(Clone, Copy, Debug)]
pub struct BankIds<'a> {
    /// One id per query.
    pub queries: &'a [u32],
    /// One id per bank row.
    pub bank: &'a [u32],
}

/// One `(i, j, y)` triple of an index list: rows `i` and `j` of the batch,
/// `label` 1 similar, 0 dissimilar, or `u32::MAX`: no pair (a miner found
/// none; it counts nowhere). On the device a pair is 4 `u32`:
/// `first, second, label, 0` (see [`IndexPair::to_device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexPair {
    /// First row.
    pub first: u32,
    /// Second row.
    pub second: u32,
    /// 1: similar; 0: dissimilar; `u32::MAX`: no pair.
    pub label: u32,
}

impl IndexPair {
    /// The device layout of a list: `[first, second, label, 0]` per pair.
    pub fn to_device(pairs: &[IndexPair]) -> Vec<[u32; 4]> {
        pairs
            .iter()
            .map(|p| [p.first, p.second, p.label, 0])
            .collect()
    }
}

/// What a loss call computed.
#[derive(Clone, Debug, PartialEq)]
pub struct LossResult {
    /// The reduced loss.
    pub loss: f32,
    /// The pairs it saw.
    pub counts: PairCounts,
    /// `∂L/∂X` (the batch, the queries, or X1), row-major; `None` for a
    /// loss-only call.
    pub gradient: Option<Vec<f32>>,
    /// `∂L/∂X2` (explicit pairs) or `∂L/∂bank`, where asked for.
    pub second_gradient: Option<Vec<f32>>,
    /// The loss of each pair (explicit pairs and index lists).
    pub per_pair: Option<Vec<f32>>,
}

/// Which gradients a loss call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Gradients {
    /// The loss only.
    None,
    /// `∂L/∂X` (batch, queries, X1, or the index list's rows).
    #[default]
    First,
    /// Both sides: also `∂L/∂X2` for explicit pairs or `∂L/∂bank`.
    Both,
}

impl Gradients {
    fn first(self) -> bool {
        self != Gradients::None
    }
    fn second(self) -> bool {
        self == Gradients::Both
    }
}

/// Caller-owned buffers for [`GpuContext::record_contrastive_in_batch`]:
/// `x` (`n x d` `f32`), `labels` (`n` `u32`), the `n x d` gradient output
/// (optional) and a [`LossTotals`] output. Inputs need `STORAGE`; outputs
/// `STORAGE` too.
#[derive(Clone, Copy, Debug)]
pub struct InBatchBuffers<'a> {
    /// The batch, `n x d`.
    pub x: &'a wgpu::Buffer,
    /// One class label per row.
    pub labels: &'a wgpu::Buffer,
    /// Receives `∂L/∂x`; `None` for the loss only.
    pub gradient: Option<&'a wgpu::Buffer>,
    /// Receives the [`LossTotals`].
    pub totals: &'a wgpu::Buffer,
}

/// Caller-owned buffers for [`GpuContext::record_contrastive_against_bank`].
#[derive(Clone, Copy, Debug)]
pub struct BankBuffers<'a> {
    /// Queries, `n x d`.
    pub queries: &'a wgpu::Buffer,
    /// One class label per query.
    pub query_labels: &'a wgpu::Buffer,
    /// Bank rows, `m x d`.
    pub bank: &'a wgpu::Buffer,
    /// One class label per bank row.
    pub bank_labels: &'a wgpu::Buffer,
    /// One id per query and per bank row: pairs with equal ids are skipped.
    pub ids: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    /// Receives `∂L/∂queries`.
    pub query_gradient: Option<&'a wgpu::Buffer>,
    /// Receives `∂L/∂bank`.
    pub bank_gradient: Option<&'a wgpu::Buffer>,
    /// Receives the [`LossTotals`].
    pub totals: &'a wgpu::Buffer,
}

/// Caller-owned buffers for [`GpuContext::record_contrastive_pairs`].
#[derive(Clone, Copy, Debug)]
pub struct PairBuffers<'a> {
    /// First rows, `b x d`.
    pub x1: &'a wgpu::Buffer,
    /// Second rows, `b x d`.
    pub x2: &'a wgpu::Buffer,
    /// `b` pair labels (`u32`): nonzero similar, 0 dissimilar.
    pub labels: &'a wgpu::Buffer,
    /// Receives `∂L/∂x1`.
    pub gradient_x1: Option<&'a wgpu::Buffer>,
    /// Receives `∂L/∂x2`.
    pub gradient_x2: Option<&'a wgpu::Buffer>,
    /// Receives per pair 4 `f32`: loss, coefficient, 1 if similar, distance.
    pub pair_values: Option<&'a wgpu::Buffer>,
    /// Receives the [`LossTotals`].
    pub totals: &'a wgpu::Buffer,
}

/// Caller-owned buffers for [`GpuContext::record_contrastive_index_pairs`].
#[derive(Clone, Copy, Debug)]
pub struct IndexPairBuffers<'a> {
    /// The batch, `n x d`.
    pub x: &'a wgpu::Buffer,
    /// The pairs, 4 `u32` each: first, second, label (nonzero similar), 0.
    pub pairs: &'a wgpu::Buffer,
    /// Receives `∂L/∂x`.
    pub gradient: Option<&'a wgpu::Buffer>,
    /// Receives per pair 4 `f32`: loss, coefficient, 1 if similar, distance.
    pub pair_values: Option<&'a wgpu::Buffer>,
    /// Receives the [`LossTotals`].
    pub totals: &'a wgpu::Buffer,
}

/// Mirrors `LossShape` in shaders/loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ShapeParams {
    pos_margin: f32,
    neg_margin: f32,
    scale: f32,
    power: u32,
}

impl ShapeParams {
    fn new(loss: &ContrastiveLoss) -> Self {
        Self {
            pos_margin: loss.pos_margin,
            neg_margin: loss.neg_margin,
            scale: loss.scale,
            power: loss.power.exponent(),
        }
    }
}

/// Mirrors `AllPairsParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AllPairsParams {
    rows: u32,
    cols: u32,
    vec_dim: u32,
    x_first: u32,
    y_first: u32,
    skip_same_index: u32,
    skip_same_id: u32,
    accumulate: u32,
    want_gradient: u32,
    want_loss: u32,
    partial_offset: u32,
    _pad: u32,
    shape: ShapeParams,
}

/// Mirrors `PairsParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PairsParams {
    pairs: u32,
    vec_dim: u32,
    explicit_pairs: u32,
    grid_width: u32,
    pair_base: u32,
    _pad: [u32; 3],
    shape: ShapeParams,
}

/// Mirrors `CsrParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CsrParams {
    pairs: u32,
    rows: u32,
    grid_width: u32,
    base: u32,
}

/// Mirrors `PairsGradientParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PairsGradientParams {
    rows: u32,
    vec_dim: u32,
    explicit_pairs: u32,
    grid_width: u32,
    row_base: u32,
    _pad: [u32; 3],
}

/// Mirrors `ReduceParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    partials: u32,
    reduction: u32,
    halve: u32,
    _pad: u32,
}

/// Mirrors `FinishParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FinishParams {
    rows: u32,
    dim: u32,
    vec_dim: u32,
    normalize: u32,
    grid_width: u32,
    out_offset: u32,
    row_base: u32,
    _pad: u32,
}

/// The value of `reduction` in shaders/loss.wgsl.
const fn reduction_code(reduction: Reduction) -> u32 {
    match reduction {
        Reduction::Sum | Reduction::None => 0,
        Reduction::Mean => 1,
        Reduction::MeanPosNeg => 2,
        Reduction::MeanNonzeroPosNeg => 3,
    }
}

/// The value of `DISTANCE_KIND` in shaders/loss.wgsl.
fn distance_code(distance: Distance) -> Result<usize> {
    match distance {
        Distance::Euclidean => Ok(0),
        Distance::SquaredEuclidean => Ok(1),
        Distance::Cosine => Ok(2),
        Distance::Dot => Err(Error::InvalidLoss {
            reason: "the contrastive loss needs a distance; Dot is a similarity".into(),
        }),
    }
}

/// One set of rows on the device, with its labels and ids.
#[derive(Clone, Copy)]
struct DeviceSet<'a> {
    rows: &'a wgpu::Buffer,
    labels: Option<&'a wgpu::Buffer>,
    ids: Option<&'a wgpu::Buffer>,
    count: usize,
}

/// A set's prepared rows and metadata in the workspace.
struct PreparedSet {
    rows: wgpu::Buffer,
    meta: wgpu::Buffer,
    count: usize,
}

/// How all-pairs work is split so every binding and dispatch fits.
struct AllPairsPlan {
    vec_dim: usize,
    /// Rows of X per dispatch (a multiple of 32 unless it is all of X).
    row_chunk: usize,
    /// Rows of Y per dispatch (a multiple of 16 unless it is all of Y).
    col_chunk: usize,
}

impl AllPairsPlan {
    fn new(d: usize, limits: crate::context::ChunkLimits) -> Result<Self> {
        let vec_dim = crate::rows::vec_dim(d);
        let binding = limits.max_binding_bytes;
        let max_groups = limits.max_workgroups_per_dimension as usize;
        let gradient_row = 2 * prepared_bytes(1, vec_dim);
        // Each prepared chunk is read from its source with up to one
        // alignment of slack.
        let source_rows = binding.saturating_sub(limits.storage_offset_alignment) / bytes_of(d);
        let row_chunk = (binding / gradient_row)
            .min(source_rows)
            .min((max_groups * BLOCK_ROWS) as u64);
        let row_chunk = (row_chunk as usize / BLOCK_ROWS) * BLOCK_ROWS;
        // Columns per dispatch are capped too: every workgroup loops over all
        // of them, and lavapipe was measured losing results of workgroups
        // that looped over 40000 columns (gradient on) while 8192 at a time
        // was right.
        let col_chunk = ((binding / prepared_bytes(1, vec_dim))
            .min(source_rows)
            .min(MAX_COLUMNS_PER_DISPATCH) as usize
            / 16)
            * 16;
        if row_chunk == 0 || col_chunk == 0 {
            return Err(Error::TooLarge {
                what: format!("32 rows of D = {d} values with their gradient"),
                needed: 32 * gradient_row,
                limit_name: "max_storage_buffer_binding_size",
                limit: binding,
            });
        }
        if vec_dim.div_ceil(CHUNK_VECS) > max_groups {
            return Err(Error::TooLarge {
                what: format!("the gradient of one row of D = {d} values"),
                needed: bytes_of(d),
                limit_name: "max_compute_workgroups_per_dimension (x 128 values)",
                limit: (max_groups * CHUNK_VECS * 4) as u64,
            });
        }
        Ok(Self {
            vec_dim,
            row_chunk,
            col_chunk,
        })
    }
}

/// `(start, len)` of each chunk of `total` items, `chunk` at a time.
fn chunks(total: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..total)
        .step_by(chunk.max(1))
        .map(move |start| (start, chunk.min(total - start)))
}

/// Buffers the loss kernels reuse from call to call.
struct LossWorkspace {
    prepared_x: GrowableBuffer,
    meta_x: GrowableBuffer,
    prepared_y: GrowableBuffer,
    meta_y: GrowableBuffer,
    grad_parts_x: GrowableBuffer,
    grad_parts_y: GrowableBuffer,
    partials: GrowableBuffer,
    pair_values: GrowableBuffer,
    csr_counters: GrowableBuffer,
    csr_offsets: GrowableBuffer,
    csr_entries: GrowableBuffer,
    outputs: [GrowableBuffer; 4],
    staging: GrowableBuffer,
}

impl LossWorkspace {
    fn new() -> Self {
        let storage = wgpu::BufferUsages::STORAGE;
        let copy_dst = wgpu::BufferUsages::COPY_DST;
        let copy_src = wgpu::BufferUsages::COPY_SRC;
        let output = |label| GrowableBuffer::new(label, storage | copy_src);
        Self {
            prepared_x: GrowableBuffer::new("loss.prepared_x", storage),
            meta_x: GrowableBuffer::new("loss.meta_x", storage),
            prepared_y: GrowableBuffer::new("loss.prepared_y", storage),
            meta_y: GrowableBuffer::new("loss.meta_y", storage),
            grad_parts_x: GrowableBuffer::new("loss.grad_parts_x", storage),
            grad_parts_y: GrowableBuffer::new("loss.grad_parts_y", storage),
            partials: GrowableBuffer::new("loss.partials", storage),
            pair_values: output("loss.pair_values"),
            csr_counters: GrowableBuffer::new("loss.csr_counters", storage | copy_dst),
            csr_offsets: GrowableBuffer::new("loss.csr_offsets", storage),
            csr_entries: GrowableBuffer::new("loss.csr_entries", storage),
            outputs: [
                output("loss.totals"),
                output("loss.gradient"),
                output("loss.second_gradient"),
                output("loss.per_pair"),
            ],
            staging: GrowableBuffer::new("loss.staging", wgpu::BufferUsages::MAP_READ | copy_dst),
        }
    }

    /// Output `slot` of the slice API (0 totals, 1 gradient, 2 second
    /// gradient or bank gradient, 3 per-pair values) with room for `bytes`.
    fn output(&mut self, ctx: &GpuContext, slot: usize, bytes: u64) -> Result<wgpu::Buffer> {
        self.outputs[slot].ensure(ctx.device(), bytes, ctx.chunk_limits().max_buffer_bytes)
    }

    /// [`LossWorkspace::output`] where `wanted`, else `None`.
    fn optional_output(
        &mut self,
        ctx: &GpuContext,
        slot: usize,
        wanted: bool,
        bytes: u64,
    ) -> Result<Option<wgpu::Buffer>> {
        wanted.then(|| self.output(ctx, slot, bytes)).transpose()
    }

    fn all(&self) -> impl Iterator<Item = &GrowableBuffer> {
        [
            &self.prepared_x,
            &self.meta_x,
            &self.prepared_y,
            &self.meta_y,
            &self.grad_parts_x,
            &self.grad_parts_y,
            &self.partials,
            &self.pair_values,
            &self.csr_counters,
            &self.csr_offsets,
            &self.csr_entries,
            &self.staging,
        ]
        .into_iter()
        .chain(self.outputs.iter())
    }
}

/// Pipelines of shaders/loss.wgsl (per distance where the kernel computes
/// distances) and their workspace; one per device.
pub(crate) struct LossKernels {
    all_pairs_layout: wgpu::BindGroupLayout,
    pairs_forward_layout: wgpu::BindGroupLayout,
    csr_layout: wgpu::BindGroupLayout,
    pairs_gradient_layout: wgpu::BindGroupLayout,
    reduce_layout: wgpu::BindGroupLayout,
    finish_layout: wgpu::BindGroupLayout,
    /// Indexed by [`distance_code`].
    all_pairs: Vec<wgpu::ComputePipeline>,
    pairs_forward: Vec<wgpu::ComputePipeline>,
    count_rows: wgpu::ComputePipeline,
    scan_offsets: wgpu::ComputePipeline,
    fill_entries: wgpu::ComputePipeline,
    sort_entries: wgpu::ComputePipeline,
    pairs_gradient: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    workspace: Locked<LossWorkspace>,
    /// The slice API's copies of its inputs on the device.
    uploads: Locked<Uploads>,
}

impl LossKernels {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        let device = ctx.device();
        let all_pairs_layout = bind_group_layout(
            device,
            "loss.all_pairs",
            &[UNIFORM, READ, READ, READ, READ, READ_WRITE, READ_WRITE],
        );
        let pairs_forward_layout = bind_group_layout(
            device,
            "loss.pairs_forward",
            &[
                UNIFORM, READ, READ, READ, READ, READ, READ_WRITE, READ_WRITE,
            ],
        );
        let csr_layout = bind_group_layout(
            device,
            "loss.csr",
            &[UNIFORM, READ, READ_WRITE, READ_WRITE, READ_WRITE],
        );
        let pairs_gradient_layout = bind_group_layout(
            device,
            "loss.pairs_gradient",
            &[UNIFORM, READ, READ, READ, READ, READ, READ, READ_WRITE],
        );
        let reduce_layout =
            bind_group_layout(device, "loss.reduce_loss", &[UNIFORM, READ, READ_WRITE]);
        let finish_layout = bind_group_layout(
            device,
            "loss.finish_gradient",
            &[UNIFORM, READ, READ, READ, READ, READ_WRITE],
        );
        // Euclidean, squared Euclidean and cosine (Dot is no distance).
        let (per_kind, plain) = ctx.create_pipeline_set(
            "loss.wgsl",
            SHADER,
            (
                &[
                    ("all_pairs", &all_pairs_layout),
                    ("pairs_forward", &pairs_forward_layout),
                ],
                3,
            ),
            &[
                ("count_rows", &csr_layout),
                ("scan_offsets", &csr_layout),
                ("fill_entries", &csr_layout),
                ("sort_entries", &csr_layout),
                ("pairs_gradient", &pairs_gradient_layout),
                ("reduce_loss", &reduce_layout),
                ("finish_gradient", &finish_layout),
            ],
        )?;
        let [all_pairs, pairs_forward] = exactly(per_kind)?;
        let [count_rows, scan_offsets, fill_entries, sort_entries, pairs_gradient, reduce, finish] =
            exactly(plain)?;
        Ok(Self {
            count_rows,
            scan_offsets,
            fill_entries,
            sort_entries,
            pairs_gradient,
            reduce,
            finish,
            all_pairs,
            pairs_forward,
            all_pairs_layout,
            pairs_forward_layout,
            csr_layout,
            pairs_gradient_layout,
            reduce_layout,
            finish_layout,
            workspace: Locked::new(LossWorkspace::new()),
            uploads: Locked::new(Uploads::new()),
        })
    }

    /// Bytes the workspace holds on the device now.
    pub(crate) fn workspace_bytes(&self) -> u64 {
        let uploads = self.uploads.lock();
        let upload_bytes: u64 = uploads.buffers.iter().map(GrowableBuffer::size).sum();
        self.workspace
            .lock()
            .all()
            .map(GrowableBuffer::size)
            .sum::<u64>()
            + upload_bytes
    }
}

/// Called between long dispatches. The slice API submits what is recorded
/// so far and waits, so no single submission runs for long (lavapipe was
/// measured returning wrong results from submissions of about a minute); the
/// record API passes `None` and leaves submission to the caller.
type Flush<'a> = Option<&'a dyn Fn(&mut wgpu::CommandEncoder) -> Result<()>>;

/// All-pairs work as the kernels see it.
struct AllPairsJob<'a> {
    x: DeviceSet<'a>,
    /// `None`: in batch (Y is X, pairs `i = j` skipped, each unordered pair
    /// counted once).
    y: Option<DeviceSet<'a>>,
    skip_same_id: bool,
    d: usize,
    loss: &'a ContrastiveLoss,
    x_gradient: Option<&'a wgpu::Buffer>,
    y_gradient: Option<&'a wgpu::Buffer>,
    totals: &'a wgpu::Buffer,
    flush: Flush<'a>,
}

/// Pair-list work as the kernels see it.
struct PairListJob<'a> {
    /// X1 (labels: the pair labels) or the index list's rows.
    first: DeviceSet<'a>,
    /// X2 for explicit pairs; `None` for index lists.
    second: Option<DeviceSet<'a>>,
    /// The index list (4 `u32` per pair); `None` for explicit pairs.
    list: Option<&'a wgpu::Buffer>,
    pairs: usize,
    d: usize,
    loss: &'a ContrastiveLoss,
    first_gradient: Option<&'a wgpu::Buffer>,
    second_gradient: Option<&'a wgpu::Buffer>,
    pair_values: Option<&'a wgpu::Buffer>,
    totals: &'a wgpu::Buffer,
}

impl LossKernels {
    /// Prepares all rows of `set` into the workspace buffers, in chunks.
    #[allow(clippy::too_many_arguments)]
    fn prepare_set(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        set: DeviceSet<'_>,
        d: usize,
        normalize: bool,
        chunk: usize,
        (rows_buffer, meta_buffer): (&mut GrowableBuffer, &mut GrowableBuffer),
    ) -> Result<PreparedSet> {
        let device = ctx.device();
        let max_buffer = ctx.chunk_limits().max_buffer_bytes;
        let vec_dim = crate::rows::vec_dim(d);
        let rows = rows_buffer.ensure(device, prepared_bytes(set.count, vec_dim), max_buffer)?;
        let meta = meta_buffer.ensure(device, meta_bytes(set.count), max_buffer)?;
        let row_kernels = ctx.row_kernels()?;
        for (start, len) in chunks(set.count, chunk) {
            let source = RowSource {
                buffer: set.rows,
                first_row: start,
                rows: len,
                dim: d,
                labels: set.labels,
                ids: set.ids,
            };
            let target = PreparedTarget {
                rows: &rows,
                meta: &meta,
                first_row: start,
            };
            row_kernels.record(ctx, encoder, source, normalize, target)?;
        }
        Ok(PreparedSet {
            rows,
            meta,
            count: set.count,
        })
    }

    /// Records `all_pairs` for every chunk of X against every chunk of Y.
    #[allow(clippy::too_many_arguments)]
    fn record_all_pairs_pass(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        plan: &AllPairsPlan,
        (x, y): (&PreparedSet, &PreparedSet),
        (in_batch, skip_same_id): (bool, bool),
        grad_parts: Option<&wgpu::Buffer>,
        (partials, want_loss): (&wgpu::Buffer, bool),
        loss: &ContrastiveLoss,
        flush: Flush<'_>,
    ) -> Result<()> {
        let device = ctx.device();
        let vec_dim = plan.vec_dim;
        let pipeline = &self.all_pairs[distance_code(loss.distance)?];
        let placeholder = ctx.row_kernels()?.placeholder();
        let gradient_groups = if grad_parts.is_some() {
            vec_dim.div_ceil(CHUNK_VECS)
        } else {
            1
        };
        // Rows of X per dispatch: a multiple of the block, within the work
        // budget of one dispatch.
        let cols_per_dispatch = y.count.min(plan.col_chunk) as u64;
        let work_per_row =
            cols_per_dispatch * (vec_dim + CHUNK_VECS) as u64 * gradient_groups as u64;
        let budget_rows = (MAX_DISPATCH_WORK / work_per_row.max(1)) as usize;
        let rows_per_dispatch = plan
            .row_chunk
            .min((budget_rows / BLOCK_ROWS).max(1) * BLOCK_ROWS);
        for (x0, rows) in chunks(x.count, rows_per_dispatch) {
            for (index, (y0, cols)) in chunks(y.count, plan.col_chunk).enumerate() {
                let params = AllPairsParams {
                    rows: to_u32(rows, "rows")?,
                    cols: to_u32(cols, "rows")?,
                    vec_dim: to_u32(vec_dim, "D / 4")?,
                    x_first: to_u32(x0, "rows")?,
                    y_first: to_u32(y0, "rows")?,
                    skip_same_index: u32::from(in_batch),
                    skip_same_id: u32::from(skip_same_id),
                    accumulate: u32::from(index > 0),
                    want_gradient: u32::from(grad_parts.is_some()),
                    want_loss: u32::from(want_loss),
                    partial_offset: to_u32(x0 / BLOCK_ROWS, "partials")?,
                    _pad: 0,
                    shape: ShapeParams::new(loss),
                };
                let params_buffer = uniform_buffer(device, "loss.all_pairs_params", &params);
                let grad_binding = match grad_parts {
                    Some(parts) => offset_binding(
                        parts,
                        2 * prepared_bytes(x0, vec_dim),
                        2 * prepared_bytes(rows, vec_dim),
                    ),
                    None => placeholder.as_entire_binding(),
                };
                let group = bind_group(
                    device,
                    "loss.all_pairs",
                    &self.all_pairs_layout,
                    vec![
                        params_buffer.as_entire_binding(),
                        offset_binding(
                            &x.rows,
                            prepared_bytes(x0, vec_dim),
                            prepared_bytes(rows, vec_dim),
                        ),
                        offset_binding(
                            &y.rows,
                            prepared_bytes(y0, vec_dim),
                            prepared_bytes(cols, vec_dim),
                        ),
                        offset_binding(&x.meta, meta_bytes(x0), meta_bytes(rows)),
                        offset_binding(&y.meta, meta_bytes(y0), meta_bytes(cols)),
                        grad_binding,
                        partials.as_entire_binding(),
                    ],
                );
                let groups = (
                    to_u32(rows.div_ceil(BLOCK_ROWS), "workgroups")?,
                    to_u32(gradient_groups, "workgroups")?,
                );
                dispatch(encoder, "loss.all_pairs", pipeline, &group, groups);
                if let Some(flush) = flush {
                    flush(encoder)?;
                }
            }
        }
        Ok(())
    }

    /// Records `reduce_loss` over `count` partials into `totals`.
    #[allow(clippy::too_many_arguments)]
    fn record_reduce(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        partials: &wgpu::Buffer,
        count: usize,
        reduction: Reduction,
        halve: bool,
        totals: &wgpu::Buffer,
    ) -> Result<()> {
        let device = ctx.device();
        let params = ReduceParams {
            partials: to_u32(count, "partials")?,
            reduction: reduction_code(reduction),
            halve: u32::from(halve),
            _pad: 0,
        };
        let params_buffer = uniform_buffer(device, "loss.reduce_params", &params);
        let group = bind_group(
            device,
            "loss.reduce_loss",
            &self.reduce_layout,
            vec![
                params_buffer.as_entire_binding(),
                sized_binding(partials, count as u64 * PARTIAL_BYTES),
                sized_binding(totals, LossTotals::SIZE),
            ],
        );
        dispatch(encoder, "loss.reduce_loss", &self.reduce, &group, (1, 1));
        Ok(())
    }

    /// Records `finish_gradient` for every row of `set` into `out`.
    #[allow(clippy::too_many_arguments)]
    fn record_finish(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        (set, d, normalize): (&PreparedSet, usize, bool),
        chunk: usize,
        grad_parts: &wgpu::Buffer,
        totals: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let device = ctx.device();
        let limits = ctx.chunk_limits();
        let vec_dim = crate::rows::vec_dim(d);
        for (x0, rows) in chunks(set.count, chunk) {
            let range = AlignedRange::new(
                x0 as u64 * d as u64,
                rows as u64 * d as u64,
                limits.storage_offset_alignment,
            )?;
            let parts_binding = offset_binding(
                grad_parts,
                2 * prepared_bytes(x0, vec_dim),
                2 * prepared_bytes(rows, vec_dim),
            );
            let rows_binding = offset_binding(
                &set.rows,
                prepared_bytes(x0, vec_dim),
                prepared_bytes(rows, vec_dim),
            );
            let meta_binding = offset_binding(&set.meta, meta_bytes(x0), meta_bytes(rows));
            record_split(
                device,
                encoder,
                Kernel {
                    label: "loss.finish_gradient",
                    pipeline: &self.finish,
                    layout: &self.finish_layout,
                },
                (rows, 1, limits.max_workgroups_per_dimension),
                &[
                    parts_binding,
                    rows_binding,
                    meta_binding,
                    sized_binding(totals, LossTotals::SIZE),
                    range.binding(out),
                ],
                |row_base, _, grid| {
                    Ok(FinishParams {
                        rows: to_u32(rows, "rows")?,
                        dim: to_u32(d, "D")?,
                        vec_dim: to_u32(vec_dim, "D / 4")?,
                        normalize: u32::from(normalize),
                        grid_width: grid.0,
                        out_offset: range.shift,
                        row_base: to_u32(row_base, "rows")?,
                        _pad: 0,
                    })
                },
            )?;
        }
        Ok(())
    }

    /// Records a whole all-pairs loss (and gradients) computation.
    fn record_all_pairs(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        ws: &mut LossWorkspace,
        job: AllPairsJob<'_>,
    ) -> Result<()> {
        let loss = job.loss;
        loss.validate()?;
        reject_none_for_all_pairs(loss)?;
        let device = ctx.device();
        let limits = ctx.chunk_limits();
        let max_buffer = limits.max_buffer_bytes;
        let plan = AllPairsPlan::new(job.d, limits)?;
        let normalize = loss.normalizes_rows();
        let x = self.prepare_set(
            ctx,
            encoder,
            job.x,
            job.d,
            normalize,
            plan.row_chunk,
            (&mut ws.prepared_x, &mut ws.meta_x),
        )?;
        let y = match job.y {
            Some(set) => self.prepare_set(
                ctx,
                encoder,
                set,
                job.d,
                normalize,
                plan.row_chunk,
                (&mut ws.prepared_y, &mut ws.meta_y),
            )?,
            None => PreparedSet {
                rows: x.rows.clone(),
                meta: x.meta.clone(),
                count: x.count,
            },
        };
        let in_batch = job.y.is_none();
        let partial_count = x.count.div_ceil(BLOCK_ROWS);
        let partials =
            ws.partials
                .ensure(device, partial_count as u64 * PARTIAL_BYTES, max_buffer)?;
        let gradient_bytes = |count: usize| 2 * prepared_bytes(count, plan.vec_dim);
        let x_parts = match job.x_gradient {
            Some(_) => Some(
                ws.grad_parts_x
                    .ensure(device, gradient_bytes(x.count), max_buffer)?,
            ),
            None => None,
        };
        self.record_all_pairs_pass(
            ctx,
            encoder,
            &plan,
            (&x, &y),
            (in_batch, job.skip_same_id),
            x_parts.as_ref(),
            (&partials, true),
            loss,
            job.flush,
        )?;
        let y_parts = match job.y_gradient {
            Some(_) => {
                let parts = ws
                    .grad_parts_y
                    .ensure(device, gradient_bytes(y.count), max_buffer)?;
                // The bank's side: the same pairs seen from Y.
                self.record_all_pairs_pass(
                    ctx,
                    encoder,
                    &plan,
                    (&y, &x),
                    (in_batch, job.skip_same_id),
                    Some(&parts),
                    (&partials, false),
                    loss,
                    job.flush,
                )?;
                Some(parts)
            }
            None => None,
        };
        self.record_reduce(
            ctx,
            encoder,
            &partials,
            partial_count,
            loss.reduction,
            in_batch,
            job.totals,
        )?;
        for (set, parts, out) in [(&x, x_parts, job.x_gradient), (&y, y_parts, job.y_gradient)] {
            if let (Some(parts), Some(out)) = (parts, out) {
                self.record_finish(
                    ctx,
                    encoder,
                    (set, job.d, normalize),
                    plan.row_chunk,
                    &parts,
                    job.totals,
                    out,
                )?;
            }
        }
        Ok(())
    }

    /// Records a whole pair-list loss (and gradients) computation.
    fn record_pair_list(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        ws: &mut LossWorkspace,
        job: PairListJob<'_>,
    ) -> Result<()> {
        let loss = job.loss;
        loss.validate()?;
        let device = ctx.device();
        let limits = ctx.chunk_limits();
        let max_buffer = limits.max_buffer_bytes;
        let binding = limits.max_binding_bytes;
        let plan = AllPairsPlan::new(job.d, limits)?;
        let vec_dim = plan.vec_dim;
        let normalize = loss.normalizes_rows();
        // The pair kernels bind each set whole.
        let rows = job.first.count.max(job.second.map_or(0, |s| s.count));
        for (what, needed) in [
            ("the rows of a pair list", 2 * prepared_bytes(rows, vec_dim)),
            ("the pairs of a pair list", prepared_bytes(job.pairs, 1)),
        ] {
            if needed > binding {
                return Err(Error::TooLarge {
                    what: what.into(),
                    needed,
                    limit_name: "max_storage_buffer_binding_size",
                    limit: binding,
                });
            }
        }
        let first = self.prepare_set(
            ctx,
            encoder,
            job.first,
            job.d,
            normalize,
            plan.row_chunk,
            (&mut ws.prepared_x, &mut ws.meta_x),
        )?;
        let second = match job.second {
            Some(set) => Some(self.prepare_set(
                ctx,
                encoder,
                set,
                job.d,
                normalize,
                plan.row_chunk,
                (&mut ws.prepared_y, &mut ws.meta_y),
            )?),
            None => None,
        };
        let other = second.as_ref().unwrap_or(&first);
        let pair_values = match job.pair_values {
            Some(buffer) => buffer.clone(),
            None => ws
                .pair_values
                .ensure(device, prepared_bytes(job.pairs, 1), max_buffer)?,
        };
        let partial_count = job.pairs.div_ceil(THREADS);
        let partials =
            ws.partials
                .ensure(device, partial_count as u64 * PARTIAL_BYTES, max_buffer)?;
        let placeholder = ctx.row_kernels()?.placeholder().clone();
        let list = job.list.unwrap_or(&placeholder);
        // The caller's list may be larger than one binding: bind its pairs.
        let list_bytes = match job.list {
            Some(_) => prepared_bytes(job.pairs, 1),
            None => placeholder.size(),
        };
        let pipeline = &self.pairs_forward[distance_code(loss.distance)?];
        record_split(
            device,
            encoder,
            Kernel {
                label: "loss.pairs_forward",
                pipeline,
                layout: &self.pairs_forward_layout,
            },
            (job.pairs, THREADS, limits.max_workgroups_per_dimension),
            &[
                sized_binding(&first.rows, prepared_bytes(first.count, vec_dim)),
                sized_binding(&other.rows, prepared_bytes(other.count, vec_dim)),
                sized_binding(&first.meta, meta_bytes(first.count)),
                sized_binding(&other.meta, meta_bytes(other.count)),
                sized_binding(list, list_bytes),
                sized_binding(&pair_values, prepared_bytes(job.pairs, 1)),
                partials.as_entire_binding(),
            ],
            |pair_base, _, grid| {
                Ok(PairsParams {
                    pairs: to_u32(job.pairs, "pairs")?,
                    vec_dim: to_u32(vec_dim, "D / 4")?,
                    explicit_pairs: u32::from(job.list.is_none()),
                    grid_width: grid.0,
                    pair_base: to_u32(pair_base, "pairs")?,
                    _pad: [0; 3],
                    shape: ShapeParams::new(loss),
                })
            },
        )?;
        self.record_reduce(
            ctx,
            encoder,
            &partials,
            partial_count,
            loss.reduction,
            false,
            job.totals,
        )?;
        if job.first_gradient.is_none() && job.second_gradient.is_none() {
            return Ok(());
        }
        let csr = match job.list {
            Some(list) => Some(self.record_csr(ctx, encoder, ws, list, job.pairs, first.count)?),
            None => None,
        };
        let gradient_bytes = |count: usize| 2 * prepared_bytes(count, vec_dim);
        let sides = [
            (&first, other, job.first_gradient, &mut ws.grad_parts_x),
            (other, &first, job.second_gradient, &mut ws.grad_parts_y),
        ];
        for (own, partner, out, parts_buffer) in sides {
            let Some(out) = out else { continue };
            let parts = parts_buffer.ensure(device, gradient_bytes(own.count), max_buffer)?;
            let (offsets, entries) = match &csr {
                Some((offsets, entries)) => (offsets.clone(), entries.clone()),
                None => (placeholder.clone(), placeholder.clone()),
            };
            record_split(
                device,
                encoder,
                Kernel {
                    label: "loss.pairs_gradient",
                    pipeline: &self.pairs_gradient,
                    layout: &self.pairs_gradient_layout,
                },
                (own.count, 1, limits.max_workgroups_per_dimension),
                &[
                    sized_binding(&own.rows, prepared_bytes(own.count, vec_dim)),
                    sized_binding(&partner.rows, prepared_bytes(partner.count, vec_dim)),
                    offsets.as_entire_binding(),
                    entries.as_entire_binding(),
                    sized_binding(list, list_bytes),
                    sized_binding(&pair_values, prepared_bytes(job.pairs, 1)),
                    sized_binding(&parts, gradient_bytes(own.count)),
                ],
                |row_base, _, grid| {
                    Ok(PairsGradientParams {
                        rows: to_u32(own.count, "rows")?,
                        vec_dim: to_u32(vec_dim, "D / 4")?,
                        explicit_pairs: u32::from(job.list.is_none()),
                        grid_width: grid.0,
                        row_base: to_u32(row_base, "rows")?,
                        _pad: [0; 3],
                    })
                },
            )?;
            self.record_finish(
                ctx,
                encoder,
                (own, job.d, normalize),
                plan.row_chunk,
                &parts,
                job.totals,
                out,
            )?;
        }
        Ok(())
    }

    /// Records the construction of each row's pair list (CSR, pairs in
    /// ascending order) for an index list over `rows` rows.
    fn record_csr(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        ws: &mut LossWorkspace,
        list: &wgpu::Buffer,
        pairs: usize,
        rows: usize,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let device = ctx.device();
        let limits = ctx.chunk_limits();
        let max_buffer = limits.max_buffer_bytes;
        let counters = ws.csr_counters.ensure(device, bytes_of(rows), max_buffer)?;
        let offsets = ws
            .csr_offsets
            .ensure(device, bytes_of(rows + 1), max_buffer)?;
        let entries = ws
            .csr_entries
            .ensure(device, bytes_of(2 * pairs), max_buffer)?;
        let bindings = [
            sized_binding(list, prepared_bytes(pairs, 1)),
            sized_binding(&counters, bytes_of(rows)),
            sized_binding(&offsets, bytes_of(rows + 1)),
            sized_binding(&entries, bytes_of(2 * pairs)),
        ];
        // scan_offsets is one item: one workgroup scans every row.
        let record = |encoder: &mut wgpu::CommandEncoder,
                      label: &'static str,
                      pipeline: &wgpu::ComputePipeline,
                      items: usize|
         -> Result<()> {
            record_split(
                device,
                encoder,
                Kernel {
                    label,
                    pipeline,
                    layout: &self.csr_layout,
                },
                (items, THREADS, limits.max_workgroups_per_dimension),
                &bindings,
                |base, _, grid| {
                    Ok(CsrParams {
                        pairs: to_u32(pairs, "pairs")?,
                        rows: to_u32(rows, "rows")?,
                        grid_width: grid.0,
                        base: to_u32(base, "pairs")?,
                    })
                },
            )
        };
        encoder.clear_buffer(&counters, 0, Some(bytes_of(rows)));
        record(encoder, "loss.count_rows", &self.count_rows, pairs)?;
        record(encoder, "loss.scan_offsets", &self.scan_offsets, 1)?;
        encoder.clear_buffer(&counters, 0, Some(bytes_of(rows)));
        record(encoder, "loss.fill_entries", &self.fill_entries, pairs)?;
        record(encoder, "loss.sort_entries", &self.sort_entries, rows)?;
        Ok((offsets, entries))
    }
}

fn reject_none_for_all_pairs(loss: &ContrastiveLoss) -> Result<()> {
    if loss.reduction == Reduction::None {
        return Err(Error::InvalidLoss {
            reason: "Reduction::None (per-pair losses) applies to explicit pairs and index \
                     lists; the all-pairs modes need Sum, Mean, MeanPosNeg or \
                     MeanNonzeroPosNeg"
                .into(),
        });
    }
    Ok(())
}

/// Checks a caller-owned input or output buffer.
fn check_storage(what: &'static str, buffer: &wgpu::Buffer, values: usize) -> Result<()> {
    crate::binding::check_buffer(what, buffer, values, wgpu::BufferUsages::STORAGE)
}

fn check_optional(what: &'static str, buffer: Option<&wgpu::Buffer>, values: usize) -> Result<()> {
    buffer.map_or(Ok(()), |b| check_storage(what, b, values))
}

fn check_totals(totals: &wgpu::Buffer) -> Result<()> {
    check_storage("totals", totals, (LossTotals::SIZE / 4) as usize)
}

/// `rows * d`, or the error that says which input is empty or too large.
fn set_values(what: &'static str, rows: usize, d: usize) -> Result<usize> {
    if d == 0 {
        return Err(Error::ZeroDimension {
            name: "D (values per row)",
        });
    }
    if rows == 0 {
        return Err(Error::ZeroDimension { name: what });
    }
    rows.checked_mul(d)
        .ok_or(Error::SizeOverflow { what: "rows * D" })
}

fn check_pair_labels(what: &'static str, labels: impl Iterator<Item = u32>) -> Result<()> {
    for (index, label) in labels.enumerate() {
        if label > 1 {
            return Err(Error::InvalidValue {
                what,
                index,
                value: label.to_string(),
                expected: "pair labels must be 1 (similar) or 0 (dissimilar)",
            });
        }
    }
    Ok(())
}

impl GpuContext {
    /// The contrastive loss over every unordered pair `i < j` of the batch
    /// `x` (`n x d`, `n = labels.len()`), similar when the class labels
    /// match, and `∂L/∂x` unless `gradients` is [`Gradients::None`].
    ///
    /// Fused: distances, losses and the gradient are computed tile by tile
    /// and no `n x n` matrix is ever stored; device memory is `O(n d)`.
    pub fn contrastive_in_batch(
        &self,
        x: &[f32],
        labels: &[u32],
        d: usize,
        loss: &ContrastiveLoss,
        gradients: Gradients,
    ) -> Result<LossResult> {
        let n = labels.len();
        crate::distance::check_len(
            "X (the batch)",
            set_values("N (rows of the batch)", n, d)?,
            x.len(),
        )?;
        self.run_loss(|kernels, ws, encoder, uploads, flush| {
            let x = uploads.upload(self, 0, x)?;
            let labels = uploads.upload(self, 1, labels)?;
            let totals = ws.output(self, 0, LossTotals::SIZE)?;
            let gradient = ws.optional_output(self, 1, gradients.first(), bytes_of(n * d))?;
            let job = AllPairsJob {
                x: DeviceSet {
                    rows: &x,
                    labels: Some(&labels),
                    ids: None,
                    count: n,
                },
                y: None,
                skip_same_id: false,
                d,
                loss,
                x_gradient: gradient.as_ref(),
                y_gradient: None,
                totals: &totals,
                flush: Some(flush),
            };
            kernels.record_all_pairs(self, encoder, ws, job)?;
            Ok((
                totals,
                ReadbackOwned {
                    gradient: gradient.map(|g| (g, n * d)),
                    second_gradient: None,
                    pair_values: None,
                },
            ))
        })
    }

    /// The contrastive loss over every pair of a query (`queries`,
    /// `n x d`) and a bank row (`bank`, `m x d`), similar when the labels
    /// match, skipping pairs with equal ids when `ids` is given;
    /// `∂L/∂queries` ([`Gradients::First`]) and `∂L/∂bank` too
    /// ([`Gradients::Both`]).
    ///
    /// No `n x m` matrix is stored; the bank is processed in chunks, so it
    /// may be larger than one storage binding.
    #[allow(clippy::too_many_arguments)]
    pub fn contrastive_against_bank(
        &self,
        queries: &[f32],
        query_labels: &[u32],
        bank: &[f32],
        bank_labels: &[u32],
        ids: Option<BankIds<'_>>,
        d: usize,
        loss: &ContrastiveLoss,
        gradients: Gradients,
    ) -> Result<LossResult> {
        let (n, m) = (query_labels.len(), bank_labels.len());
        crate::distance::check_len("queries", set_values("N (queries)", n, d)?, queries.len())?;
        crate::distance::check_len("bank", set_values("M (bank rows)", m, d)?, bank.len())?;
        if let Some(ids) = ids {
            crate::distance::check_len("query ids", n, ids.queries.len())?;
            crate::distance::check_len("bank ids", m, ids.bank.len())?;
        }
        self.run_loss(|kernels, ws, encoder, uploads, flush| {
            let q = uploads.upload(self, 0, queries)?;
            let q_labels = uploads.upload(self, 1, query_labels)?;
            let b = uploads.upload(self, 3, bank)?;
            let b_labels = uploads.upload(self, 4, bank_labels)?;
            let (q_ids, b_ids) = match ids {
                Some(ids) => (
                    Some(uploads.upload(self, 2, ids.queries)?),
                    Some(uploads.upload(self, 5, ids.bank)?),
                ),
                None => (None, None),
            };
            let totals = ws.output(self, 0, LossTotals::SIZE)?;
            let gradient = ws.optional_output(self, 1, gradients.first(), bytes_of(n * d))?;
            let bank_gradient = ws.optional_output(self, 2, gradients.second(), bytes_of(m * d))?;
            let job = AllPairsJob {
                x: DeviceSet {
                    rows: &q,
                    labels: Some(&q_labels),
                    ids: q_ids.as_ref(),
                    count: n,
                },
                y: Some(DeviceSet {
                    rows: &b,
                    labels: Some(&b_labels),
                    ids: b_ids.as_ref(),
                    count: m,
                }),
                skip_same_id: ids.is_some(),
                d,
                loss,
                x_gradient: gradient.as_ref(),
                y_gradient: bank_gradient.as_ref(),
                totals: &totals,
                flush: Some(flush),
            };
            kernels.record_all_pairs(self, encoder, ws, job)?;
            Ok((
                totals,
                ReadbackOwned {
                    gradient: gradient.map(|g| (g, n * d)),
                    second_gradient: bank_gradient.map(|g| (g, m * d)),
                    pair_values: None,
                },
            ))
        })
    }

    /// The contrastive loss of explicit pairs: row `b` of `x1` with row `b`
    /// of `x2` (both `B x d`, `B = y.len()`), similar where `y[b] = 1`,
    /// dissimilar where `y[b] = 0`; the per-pair losses, `∂L/∂x1`
    /// ([`Gradients::First`]) and `∂L/∂x2` ([`Gradients::Both`]).
    pub fn contrastive_pairs(
        &self,
        x1: &[f32],
        x2: &[f32],
        y: &[u32],
        d: usize,
        loss: &ContrastiveLoss,
        gradients: Gradients,
    ) -> Result<LossResult> {
        let b = y.len();
        let values = set_values("B (pairs)", b, d)?;
        crate::distance::check_len("X1", values, x1.len())?;
        crate::distance::check_len("X2", values, x2.len())?;
        check_pair_labels("y", y.iter().copied())?;
        self.run_loss(|kernels, ws, encoder, uploads, _flush| {
            let first = uploads.upload(self, 0, x1)?;
            let labels = uploads.upload(self, 1, y)?;
            let second = uploads.upload(self, 3, x2)?;
            let totals = ws.output(self, 0, LossTotals::SIZE)?;
            let gradient = ws.optional_output(self, 1, gradients.first(), bytes_of(b * d))?;
            let second_gradient =
                ws.optional_output(self, 2, gradients.second(), bytes_of(b * d))?;
            let pair_values = ws.output(self, 3, prepared_bytes(b, 1))?;
            let job = PairListJob {
                first: DeviceSet {
                    rows: &first,
                    labels: Some(&labels),
                    ids: None,
                    count: b,
                },
                second: Some(DeviceSet {
                    rows: &second,
                    labels: None,
                    ids: None,
                    count: b,
                }),
                list: None,
                pairs: b,
                d,
                loss,
                first_gradient: gradient.as_ref(),
                second_gradient: second_gradient.as_ref(),
                pair_values: Some(&pair_values),
                totals: &totals,
            };
            kernels.record_pair_list(self, encoder, ws, job)?;
            Ok((
                totals,
                ReadbackOwned {
                    gradient: gradient.map(|g| (g, b * d)),
                    second_gradient: second_gradient.map(|g| (g, b * d)),
                    pair_values: Some((pair_values, b)),
                },
            ))
        })
    }

    /// The contrastive loss of an index list (e.g. from a miner) over the
    /// rows of `x` (`n x d`): each [`IndexPair`] names two rows and whether
    /// they are similar. Returns the per-pair losses and `∂L/∂x` unless
    /// `gradients` is [`Gradients::None`]; a row in several pairs gets the
    /// sum of their contributions, in pair order, without float atomics.
    pub fn contrastive_index_pairs(
        &self,
        x: &[f32],
        n: usize,
        pairs: &[IndexPair],
        d: usize,
        loss: &ContrastiveLoss,
        gradients: Gradients,
    ) -> Result<LossResult> {
        crate::distance::check_len("X (the batch)", set_values("N (rows)", n, d)?, x.len())?;
        if pairs.is_empty() {
            return Err(Error::ZeroDimension {
                name: "the number of index pairs",
            });
        }
        check_index_pairs(pairs, n)?;
        let count = pairs.len();
        let device_pairs = IndexPair::to_device(pairs);
        self.run_loss(|kernels, ws, encoder, uploads, _flush| {
            let rows = uploads.upload(self, 0, x)?;
            let list = uploads.upload(self, 1, &device_pairs)?;
            let totals = ws.output(self, 0, LossTotals::SIZE)?;
            let gradient = ws.optional_output(self, 1, gradients.first(), bytes_of(n * d))?;
            let pair_values = ws.output(self, 3, prepared_bytes(count, 1))?;
            let job = PairListJob {
                first: DeviceSet {
                    rows: &rows,
                    labels: None,
                    ids: None,
                    count: n,
                },
                second: None,
                list: Some(&list),
                pairs: count,
                d,
                loss,
                first_gradient: gradient.as_ref(),
                second_gradient: None,
                pair_values: Some(&pair_values),
                totals: &totals,
            };
            kernels.record_pair_list(self, encoder, ws, job)?;
            Ok((
                totals,
                ReadbackOwned {
                    gradient: gradient.map(|g| (g, n * d)),
                    second_gradient: None,
                    pair_values: Some((pair_values, count)),
                },
            ))
        })
    }

    /// Records [`GpuContext::contrastive_in_batch`] on the caller's buffers
    /// and encoder; nothing is submitted and nothing waits. The loss lands
    /// in `buffers.totals` ([`LossTotals`]), the gradient in
    /// `buffers.gradient`.
    pub fn record_contrastive_in_batch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: InBatchBuffers<'_>,
        n: usize,
        d: usize,
        loss: &ContrastiveLoss,
    ) -> Result<()> {
        let values = set_values("N (rows of the batch)", n, d)?;
        check_storage("x", buffers.x, values)?;
        check_storage("labels", buffers.labels, n)?;
        check_optional("gradient", buffers.gradient, values)?;
        check_totals(buffers.totals)?;
        let kernels = self.loss_kernels()?;
        let mut ws = kernels.workspace.lock();
        let job = AllPairsJob {
            x: DeviceSet {
                rows: buffers.x,
                labels: Some(buffers.labels),
                ids: None,
                count: n,
            },
            y: None,
            skip_same_id: false,
            d,
            loss,
            x_gradient: buffers.gradient,
            y_gradient: None,
            totals: buffers.totals,
            flush: None,
        };
        kernels.record_all_pairs(self, encoder, &mut ws, job)
    }

    /// Records [`GpuContext::contrastive_against_bank`] on the caller's
    /// buffers and encoder (`n` queries, `m` bank rows).
    pub fn record_contrastive_against_bank(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: BankBuffers<'_>,
        (n, m, d): (usize, usize, usize),
        loss: &ContrastiveLoss,
    ) -> Result<()> {
        let query_values = set_values("N (queries)", n, d)?;
        let bank_values = set_values("M (bank rows)", m, d)?;
        check_storage("queries", buffers.queries, query_values)?;
        check_storage("query_labels", buffers.query_labels, n)?;
        check_storage("bank", buffers.bank, bank_values)?;
        check_storage("bank_labels", buffers.bank_labels, m)?;
        if let Some((query_ids, bank_ids)) = buffers.ids {
            check_storage("query ids", query_ids, n)?;
            check_storage("bank ids", bank_ids, m)?;
        }
        check_optional("query_gradient", buffers.query_gradient, query_values)?;
        check_optional("bank_gradient", buffers.bank_gradient, bank_values)?;
        check_totals(buffers.totals)?;
        let kernels = self.loss_kernels()?;
        let mut ws = kernels.workspace.lock();
        let job = AllPairsJob {
            x: DeviceSet {
                rows: buffers.queries,
                labels: Some(buffers.query_labels),
                ids: buffers.ids.map(|(q, _)| q),
                count: n,
            },
            y: Some(DeviceSet {
                rows: buffers.bank,
                labels: Some(buffers.bank_labels),
                ids: buffers.ids.map(|(_, b)| b),
                count: m,
            }),
            skip_same_id: buffers.ids.is_some(),
            d,
            loss,
            x_gradient: buffers.query_gradient,
            y_gradient: buffers.bank_gradient,
            totals: buffers.totals,
            flush: None,
        };
        kernels.record_all_pairs(self, encoder, &mut ws, job)
    }

    /// Records [`GpuContext::contrastive_pairs`] on the caller's buffers
    /// and encoder (`b` pairs).
    pub fn record_contrastive_pairs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: PairBuffers<'_>,
        b: usize,
        d: usize,
        loss: &ContrastiveLoss,
    ) -> Result<()> {
        let values = set_values("B (pairs)", b, d)?;
        check_storage("x1", buffers.x1, values)?;
        check_storage("x2", buffers.x2, values)?;
        check_storage("labels", buffers.labels, b)?;
        check_optional("gradient_x1", buffers.gradient_x1, values)?;
        check_optional("gradient_x2", buffers.gradient_x2, values)?;
        check_optional("pair_values", buffers.pair_values, 4 * b)?;
        check_totals(buffers.totals)?;
        let kernels = self.loss_kernels()?;
        let mut ws = kernels.workspace.lock();
        let job = PairListJob {
            first: DeviceSet {
                rows: buffers.x1,
                labels: Some(buffers.labels),
                ids: None,
                count: b,
            },
            second: Some(DeviceSet {
                rows: buffers.x2,
                labels: None,
                ids: None,
                count: b,
            }),
            list: None,
            pairs: b,
            d,
            loss,
            first_gradient: buffers.gradient_x1,
            second_gradient: buffers.gradient_x2,
            pair_values: buffers.pair_values,
            totals: buffers.totals,
        };
        kernels.record_pair_list(self, encoder, &mut ws, job)
    }

    /// Records [`GpuContext::contrastive_index_pairs`] on the caller's
    /// buffers and encoder: `pairs` index pairs over `n` rows. Indices must
    /// be below `n` (the caller's miner guarantees it; out-of-range reads
    /// are clamped by wgpu's bounds checks, not detected).
    pub fn record_contrastive_index_pairs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: IndexPairBuffers<'_>,
        (n, pairs, d): (usize, usize, usize),
        loss: &ContrastiveLoss,
    ) -> Result<()> {
        let values = set_values("N (rows)", n, d)?;
        if pairs == 0 {
            return Err(Error::ZeroDimension {
                name: "the number of index pairs",
            });
        }
        check_storage("x", buffers.x, values)?;
        check_storage("pairs", buffers.pairs, 4 * pairs)?;
        check_optional("gradient", buffers.gradient, values)?;
        check_optional("pair_values", buffers.pair_values, 4 * pairs)?;
        check_totals(buffers.totals)?;
        let kernels = self.loss_kernels()?;
        let mut ws = kernels.workspace.lock();
        let job = PairListJob {
            first: DeviceSet {
                rows: buffers.x,
                labels: None,
                ids: None,
                count: n,
            },
            second: None,
            list: Some(buffers.pairs),
            pairs,
            d,
            loss,
            first_gradient: buffers.gradient,
            second_gradient: None,
            pair_values: buffers.pair_values,
            totals: buffers.totals,
        };
        kernels.record_pair_list(self, encoder, &mut ws, job)
    }

    /// Bytes the loss kernels' reusable workspace holds on the device now
    /// (prepared rows, gradient accumulators, partial sums, uploads of the
    /// slice API): `O((N + M) D)`, never `O(N M)`.
    pub fn loss_workspace_bytes(&self) -> Result<u64> {
        Ok(self.loss_kernels()?.workspace_bytes())
    }

    /// Runs one slice-level loss call: `record` uploads and records; then
    /// the outputs are copied to staging, submitted and read back.
    fn run_loss(
        &self,
        record: impl FnOnce(
            &LossKernels,
            &mut LossWorkspace,
            &mut wgpu::CommandEncoder,
            &mut Uploads,
            &dyn Fn(&mut wgpu::CommandEncoder) -> Result<()>,
        ) -> Result<(wgpu::Buffer, ReadbackOwned)>,
    ) -> Result<LossResult> {
        let kernels = self.loss_kernels()?;
        let mut guard = kernels.workspace.lock();
        let mut uploads = kernels.uploads.lock();
        self.with_error_scope("computing the contrastive loss", || {
            let ws = &mut *guard;
            let device = self.device();
            let mut encoder = device.create_command_encoder(&Default::default());
            let flush = |encoder: &mut wgpu::CommandEncoder| -> Result<()> {
                let recorded =
                    std::mem::replace(encoder, device.create_command_encoder(&Default::default()));
                self.queue().submit([recorded.finish()]);
                self.wait_idle()
            };
            let (totals, readback) = record(kernels, ws, &mut encoder, &mut uploads, &flush)?;
            let pieces: Vec<(&wgpu::Buffer, u64)> = std::iter::once((&totals, LossTotals::SIZE))
                .chain(readback.gradient.as_ref().map(|(b, n)| (b, bytes_of(*n))))
                .chain(
                    readback
                        .second_gradient
                        .as_ref()
                        .map(|(b, n)| (b, bytes_of(*n))),
                )
                .chain(
                    readback
                        .pair_values
                        .as_ref()
                        .map(|(b, n)| (b, prepared_bytes(*n, 1))),
                )
                .collect();
            let total: u64 = pieces.iter().map(|(_, bytes)| bytes).sum();
            let staging = ws
                .staging
                .ensure(device, total, self.chunk_limits().max_buffer_bytes)?;
            let mut offset = 0;
            for (buffer, bytes) in &pieces {
                encoder.copy_buffer_to_buffer(buffer, 0, &staging, offset, *bytes);
                offset += bytes;
            }
            self.queue().submit([encoder.finish()]);
            let words: Vec<u32> = self.read_back(&staging, total)?;
            let mut cursor = words.as_slice();
            let mut take = |values: usize| {
                let (head, rest) = cursor.split_at(values.min(cursor.len()));
                cursor = rest;
                head
            };
            let totals: LossTotals = bytemuck::pod_read_unaligned(bytemuck::cast_slice(take(
                (LossTotals::SIZE / 4) as usize,
            )));
            let as_f32 = |words: &[u32]| words.iter().map(|&w| f32::from_bits(w)).collect();
            let gradient = readback.gradient.as_ref().map(|(_, n)| as_f32(take(*n)));
            let second_gradient = readback
                .second_gradient
                .as_ref()
                .map(|(_, n)| as_f32(take(*n)));
            let per_pair = readback.pair_values.as_ref().map(|(_, n)| {
                take(4 * n)
                    .chunks_exact(4)
                    .map(|v| f32::from_bits(v[0]))
                    .collect()
            });
            Ok(LossResult {
                loss: totals.loss,
                counts: totals.counts(),
                gradient,
                second_gradient,
                per_pair,
            })
        })
    }
}

/// Outputs of a slice call to read back: buffer and value count.
struct ReadbackOwned {
    gradient: Option<(wgpu::Buffer, usize)>,
    second_gradient: Option<(wgpu::Buffer, usize)>,
    pair_values: Option<(wgpu::Buffer, usize)>,
}

/// The slice API's input buffers, reused from call to call.
struct Uploads {
    buffers: [GrowableBuffer; 6],
}

impl Uploads {
    fn new() -> Self {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Self {
            buffers: [
                "loss.upload_x",
                "loss.upload_x_labels",
                "loss.upload_x_ids",
                "loss.upload_y",
                "loss.upload_y_labels",
                "loss.upload_y_ids",
            ]
            .map(|label| GrowableBuffer::new(label, usage)),
        }
    }

    /// Writes `values` into upload buffer `slot` and returns it.
    fn upload<T: bytemuck::Pod>(
        &mut self,
        ctx: &GpuContext,
        slot: usize,
        values: &[T],
    ) -> Result<wgpu::Buffer> {
        self.buffers[slot].upload(ctx, values)
    }
}

fn check_index_pairs(pairs: &[IndexPair], n: usize) -> Result<()> {
    for (index, pair) in pairs.iter().enumerate() {
        if pair.label == crate::mining::NO_INDEX {
            continue;
        }
        for row in [pair.first, pair.second] {
            if row as usize >= n {
                return Err(Error::InvalidValue {
                    what: "pairs",
                    index,
                    value: row.to_string(),
                    expected: "row indices must be below the number of rows",
                });
            }
        }
    }
    check_pair_labels(
        "pairs.label",
        pairs
            .iter()
            .map(|p| p.label)
            .filter(|&l| l != crate::mining::NO_INDEX),
    )
}
