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

use crate::distance::Distance;
use crate::error::{Error, Result};

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
