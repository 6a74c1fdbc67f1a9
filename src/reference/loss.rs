//! CPU mirror of `shaders/loss.wgsl`: the contrastive loss and its
//! gradient for every pair mode, in `f64`, as plain loops.
//!
//! Inputs may be `f32` (to compare with the GPU) or `f64` (to reproduce the
//! peers' worked values exactly). Each result carries the tolerance
//! ([`super::tolerance`]) of each output, from a forward error analysis of
//! the `f32` kernel:
//!
//! - loss: magnitude `Σ w (l + |g| d)` over the pairs (`g d` bounds what a
//!   relative error of the distance does to `l`), accumulation length
//!   `D + 64 + pairs / 8192`;
//! - gradient, per value `k` of row `i`: magnitude
//!   `Σ_j w (2|c| + |∂c/∂d| d) (|r_ik| + |r_jk|)` over the pairs of `i`
//!   (then through the normalisation), accumulation length `D + pairs of
//!   the row`.

use rayon::prelude::*;

use super::distance::pair as pair_distance;
use super::rows::prepare_rows;
use crate::distance::{check_len, Distance, DistanceOptions};
use crate::error::{Error, Result};
use crate::loss::{reduction_weights, ContrastiveLoss, PairCounts, Power, Reduction};
pub use crate::loss::{BankIds, IndexPair};

/// One pair evaluated: distance, loss, and the gradient coefficient.
struct PairEval {
    distance: f64,
    loss: f64,
    slope: f64,
    coefficient: f64,
    /// `|∂c/∂d| · d`, for the tolerance.
    coefficient_sensitivity: f64,
}

fn evaluate(
    loss: &ContrastiveLoss,
    a: &[f64],
    b: &[f64],
    norm_a: f64,
    norm_b: f64,
    similar: bool,
) -> PairEval {
    let options = DistanceOptions {
        distance: loss.distance,
        normalize: loss.normalize,
    };
    let (distance, _) = pair_distance(options, a, b, norm_a, norm_b);
    let zero_norm = norm_a == 0.0 || norm_b == 0.0;
    let slope = loss.pair_slope(distance, similar);
    let coefficient = loss.pair_coefficient(distance, similar, zero_norm);
    // g' = ∂g/∂d: 2s inside the hinge for p = 2, else 0.
    let curvature = if loss.power == Power::Two && slope != 0.0 {
        2.0 * f64::from(loss.scale)
    } else {
        0.0
    };
    let coefficient_sensitivity = match loss.distance {
        Distance::Euclidean if distance > 0.0 => curvature + slope.abs() / distance,
        Distance::SquaredEuclidean => 2.0 * curvature * distance,
        _ => curvature * distance,
    };
    PairEval {
        distance,
        loss: loss.pair_loss(distance, similar),
        slope,
        coefficient,
        coefficient_sensitivity,
    }
}

/// Prepared rows of one set.
struct Prepared {
    rows: Vec<f64>,
    norms: Vec<f64>,
    d: usize,
}

impl Prepared {
    fn new<T: Copy + Into<f64>>(x: &[T], d: usize, loss: &ContrastiveLoss) -> Self {
        let (rows, norms) = prepare_rows(x, d, loss.normalizes_rows());
        Self { rows, norms, d }
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.rows[i * self.d..(i + 1) * self.d]
    }
}

/// Gradient on one prepared row, with its rounding magnitude.
#[derive(Clone)]
struct RowGradient {
    value: Vec<f64>,
    magnitude: Vec<f64>,
    terms: usize,
}

impl RowGradient {
    fn new(d: usize) -> Self {
        Self {
            value: vec![0.0; d],
            magnitude: vec![0.0; d],
            terms: 0,
        }
    }

    /// Adds `weight · c · (a − b)`.
    fn add(&mut self, weight: f64, eval: &PairEval, a: &[f64], b: &[f64]) {
        let c = weight * eval.coefficient;
        let sensitivity = weight * (2.0 * eval.coefficient.abs() + eval.coefficient_sensitivity);
        for k in 0..a.len() {
            self.value[k] += c * (a[k] - b[k]);
            self.magnitude[k] += sensitivity * (a[k].abs() + b[k].abs());
        }
        self.terms += 1;
    }
}

/// Gradients of one set with respect to the caller's rows, row-major, and
/// the tolerance of each value.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradient {
    /// `∂L/∂x`, same shape as the rows.
    pub values: Vec<f64>,
    /// The tolerance of each value (see the module docs).
    pub tolerances: Vec<f64>,
}

/// Maps gradients on prepared rows to gradients on the caller's rows
/// (through the normalisation when there is one): mirror of
/// `finish_gradient`.
fn finish_gradients(rows: Vec<RowGradient>, prepared: &Prepared, normalized: bool) -> Gradient {
    let d = prepared.d;
    let mut values = Vec::with_capacity(rows.len() * d);
    let mut tolerances = Vec::with_capacity(rows.len() * d);
    for (i, row) in rows.into_iter().enumerate() {
        let terms = d + row.terms;
        if !normalized {
            values.extend_from_slice(&row.value);
            tolerances.extend(row.magnitude.iter().map(|&m| super::tolerance(terms, m)));
            continue;
        }
        // ∂L/∂x = (g − (g·u) u) / ‖x‖; rows of norm 0 get 0.
        let u = prepared.row(i);
        let norm = prepared.norms[i];
        let along: f64 = row.value.iter().zip(u).map(|(g, u)| g * u).sum();
        let along_magnitude: f64 = row
            .value
            .iter()
            .zip(&row.magnitude)
            .zip(u)
            .map(|((g, m), u)| (g.abs() + m) * u.abs())
            .sum();
        for ((&g, &m), &u_k) in row.value.iter().zip(&row.magnitude).zip(u) {
            if norm > 0.0 {
                values.push((g - along * u_k) / norm);
                let magnitude = m + g.abs() + along_magnitude * u_k.abs();
                tolerances.push(super::tolerance(terms + d, magnitude / norm));
            } else {
                values.push(0.0);
                tolerances.push(super::tolerance(terms, 0.0));
            }
        }
    }
    Gradient { values, tolerances }
}

/// The loss, its tolerance, and what it was computed over.
#[derive(Clone, Debug, PartialEq)]
pub struct LossValue {
    /// The reduced loss.
    pub loss: f64,
    /// Its tolerance (see the module docs).
    pub tolerance: f64,
    /// The pairs considered.
    pub counts: PairCounts,
}

/// Sums of the per-pair losses by class, before the reduction.
#[derive(Clone, Copy, Default)]
struct LossSums {
    positive: f64,
    negative: f64,
    magnitude_positive: f64,
    magnitude_negative: f64,
    counts: PairCounts,
}

impl LossSums {
    fn add(&mut self, eval: &PairEval, similar: bool) {
        let magnitude = eval.loss + eval.slope.abs() * eval.distance;
        let active = u64::from(eval.loss > 0.0);
        if similar {
            self.positive += eval.loss;
            self.magnitude_positive += magnitude;
            self.counts.positive += 1;
            self.counts.positive_active += active;
        } else {
            self.negative += eval.loss;
            self.magnitude_negative += magnitude;
            self.counts.negative += 1;
            self.counts.negative_active += active;
        }
    }

    fn merge(mut self, other: Self) -> Self {
        self.positive += other.positive;
        self.negative += other.negative;
        self.magnitude_positive += other.magnitude_positive;
        self.magnitude_negative += other.magnitude_negative;
        self.counts.positive += other.counts.positive;
        self.counts.negative += other.counts.negative;
        self.counts.positive_active += other.counts.positive_active;
        self.counts.negative_active += other.counts.negative_active;
        self
    }

    /// Mirror of `reduce_loss`: the reduced loss and the class weights.
    fn reduce(&self, reduction: Reduction, d: usize) -> (LossValue, (f64, f64)) {
        let (w_pos, w_neg) = reduction_weights(reduction, &self.counts);
        let loss = w_pos * self.positive + w_neg * self.negative;
        let magnitude = w_pos * self.magnitude_positive + w_neg * self.magnitude_negative;
        let pairs = self.counts.positive + self.counts.negative;
        let terms = d + 64 + (pairs / 8192) as usize;
        let value = LossValue {
            loss,
            tolerance: super::tolerance(terms, magnitude),
            counts: self.counts,
        };
        (value, (w_pos, w_neg))
    }
}

/// Result of the all-pairs modes (in batch, queries against a bank).
#[derive(Clone, Debug, PartialEq)]
pub struct AllPairsResult {
    /// The loss.
    pub loss: LossValue,
    /// `∂L/∂X` (the batch, or the queries).
    pub gradient: Gradient,
    /// `∂L/∂Y` for the bank, when asked for.
    pub bank_gradient: Option<Gradient>,
}

/// Result of the pair-list modes (explicit pairs, index lists).
#[derive(Clone, Debug, PartialEq)]
pub struct PairListResult {
    /// The loss.
    pub loss: LossValue,
    /// `l` of each pair, unreduced.
    pub per_pair: Vec<f64>,
    /// `∂L/∂X1` (explicit pairs) or `∂L/∂X` (index lists).
    pub gradient: Gradient,
    /// `∂L/∂X2` for explicit pairs; `None` for index lists.
    pub second_gradient: Option<Gradient>,
}

fn check_rows(what: &'static str, rows: usize, d: usize, values: usize) -> Result<()> {
    if d == 0 {
        return Err(Error::ZeroDimension {
            name: "D (values per row)",
        });
    }
    if rows == 0 {
        return Err(Error::ZeroDimension { name: what });
    }
    check_len(what, rows * d, values)
}

/// Similar (true) or dissimilar from a pair label: 1 or 0.
fn pair_label(what: &'static str, index: usize, y: u32) -> Result<bool> {
    match y {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(Error::InvalidValue {
            what,
            index,
            value: other.to_string(),
            expected: "pair labels must be 1 (similar) or 0 (dissimilar)",
        }),
    }
}

/// Every unordered pair `i < j` of the `n x d` batch `x`, positive when
/// `labels` match: the loss and `∂L/∂x`.
pub fn in_batch<T: Copy + Into<f64> + Sync>(
    x: &[T],
    labels: &[u32],
    d: usize,
    loss: &ContrastiveLoss,
) -> Result<AllPairsResult> {
    loss.validate()?;
    reject_none(loss)?;
    let n = labels.len();
    check_rows("X (the batch)", n, d, x.len())?;
    let prepared = Prepared::new(x, d, loss);
    let sides = Sides {
        x: &prepared,
        y: &prepared,
        x_labels: labels,
        y_labels: labels,
    };
    // Each unordered pair once for the loss; every j != i for the gradient.
    let sums = sides.loss_sums(loss, |i, j| j > i);
    let (value, weights) = sums.reduce(loss.reduction, d);
    let rows = sides.row_gradients(loss, weights, |i, j| j != i);
    Ok(AllPairsResult {
        loss: value,
        gradient: finish_gradients(rows, &prepared, loss.normalizes_rows()),
        bank_gradient: None,
    })
}

/// Every pair of a query (`queries`, `n x d`) and a bank row (`bank`,
/// `m x d`), positive when the labels match, skipping pairs with equal ids
/// when `ids` is given: the loss, `∂L/∂queries`, and `∂L/∂bank` when
/// `bank_gradient` is set.
#[allow(clippy::too_many_arguments)]
pub fn against_bank<T: Copy + Into<f64> + Sync>(
    queries: &[T],
    query_labels: &[u32],
    bank: &[T],
    bank_labels: &[u32],
    ids: Option<BankIds<'_>>,
    d: usize,
    loss: &ContrastiveLoss,
    bank_gradient: bool,
) -> Result<AllPairsResult> {
    loss.validate()?;
    reject_none(loss)?;
    let (n, m) = (query_labels.len(), bank_labels.len());
    check_rows("queries", n, d, queries.len())?;
    check_rows("bank", m, d, bank.len())?;
    if let Some(ids) = ids {
        check_len("query ids", n, ids.queries.len())?;
        check_len("bank ids", m, ids.bank.len())?;
    }
    let considered = |i: usize, j: usize| ids.is_none_or(|ids| ids.queries[i] != ids.bank[j]);
    let x = Prepared::new(queries, d, loss);
    let y = Prepared::new(bank, d, loss);
    let sides = Sides {
        x: &x,
        y: &y,
        x_labels: query_labels,
        y_labels: bank_labels,
    };
    let sums = sides.loss_sums(loss, considered);
    let (value, weights) = sums.reduce(loss.reduction, d);
    let rows = sides.row_gradients(loss, weights, considered);
    let gradient = finish_gradients(rows, &x, loss.normalizes_rows());
    let bank_gradient = bank_gradient.then(|| {
        let swapped = Sides {
            x: &y,
            y: &x,
            x_labels: bank_labels,
            y_labels: query_labels,
        };
        let rows = swapped.row_gradients(loss, weights, |j, i| considered(i, j));
        finish_gradients(rows, &y, loss.normalizes_rows())
    });
    Ok(AllPairsResult {
        loss: value,
        gradient,
        bank_gradient,
    })
}

/// Explicit pairs: row `b` of `x1` with row `b` of `x2` (both `B x d`),
/// similar where `y[b] = 1`, dissimilar where `y[b] = 0`: the loss, the
/// per-pair losses, `∂L/∂x1` and `∂L/∂x2`.
pub fn explicit_pairs<T: Copy + Into<f64> + Sync>(
    x1: &[T],
    x2: &[T],
    y: &[u32],
    d: usize,
    loss: &ContrastiveLoss,
) -> Result<PairListResult> {
    loss.validate()?;
    let b = y.len();
    check_rows("X1", b, d, x1.len())?;
    check_rows("X2", b, d, x2.len())?;
    let similar = y
        .iter()
        .enumerate()
        .map(|(p, &label)| pair_label("y", p, label))
        .collect::<Result<Vec<bool>>>()?;
    let first = Prepared::new(x1, d, loss);
    let second = Prepared::new(x2, d, loss);
    let pairs: Vec<(usize, usize, bool)> = (0..b).map(|p| (p, p, similar[p])).collect();
    pair_list(loss, &first, Some(&second), &pairs)
}

/// Index lists (e.g. from a miner) over the rows of the `n x d` batch `x`:
/// the loss, the per-pair losses and `∂L/∂x` (each pair contributes to both
/// of its rows).
pub fn index_pairs<T: Copy + Into<f64> + Sync>(
    x: &[T],
    n: usize,
    pairs: &[IndexPair],
    d: usize,
    loss: &ContrastiveLoss,
) -> Result<PairListResult> {
    loss.validate()?;
    check_rows("X (the batch)", n, d, x.len())?;
    if pairs.is_empty() {
        return Err(Error::ZeroDimension {
            name: "the number of index pairs",
        });
    }
    let mut list = Vec::with_capacity(pairs.len());
    // Label u32::MAX marks "no pair": it counts nowhere.
    for (p, pair) in pairs
        .iter()
        .enumerate()
        .filter(|(_, pair)| pair.label != crate::mining::NO_INDEX)
    {
        for row in [pair.first, pair.second] {
            if row as usize >= n {
                return Err(Error::InvalidValue {
                    what: "pairs",
                    index: p,
                    value: row.to_string(),
                    expected: "row indices must be below the number of rows",
                });
            }
        }
        let similar = pair_label("pairs.label", p, pair.label)?;
        list.push((pair.first as usize, pair.second as usize, similar));
    }
    let prepared = Prepared::new(x, d, loss);
    pair_list(loss, &prepared, None, &list)
}

/// Shared by explicit pairs (two sets) and index lists (`second` = `None`:
/// both rows from `first`). Pairs are applied in list order, as the GPU's
/// row-by-row gather does.
fn pair_list(
    loss: &ContrastiveLoss,
    first: &Prepared,
    second: Option<&Prepared>,
    pairs: &[(usize, usize, bool)],
) -> Result<PairListResult> {
    let other = second.unwrap_or(first);
    let d = first.d;
    let evals: Vec<PairEval> = pairs
        .iter()
        .map(|&(i, j, similar)| {
            evaluate(
                loss,
                first.row(i),
                other.row(j),
                first.norms[i],
                other.norms[j],
                similar,
            )
        })
        .collect();
    let mut sums = LossSums::default();
    for (eval, &(_, _, similar)) in evals.iter().zip(pairs) {
        sums.add(eval, similar);
    }
    let (value, (w_pos, w_neg)) = sums.reduce(loss.reduction, d);
    let rows_of = |set: &Prepared| vec![RowGradient::new(d); set.rows.len() / d];
    let mut first_rows = rows_of(first);
    let mut second_rows = second.map(rows_of);
    for (eval, &(i, j, similar)) in evals.iter().zip(pairs) {
        let weight = if similar { w_pos } else { w_neg };
        let (a, b) = (first.row(i), other.row(j));
        first_rows[i].add(weight, eval, a, b);
        match second_rows.as_mut() {
            Some(rows) => rows[j].add(weight, eval, b, a),
            None => first_rows[j].add(weight, eval, b, a),
        }
    }
    let normalized = loss.normalizes_rows();
    Ok(PairListResult {
        loss: value,
        per_pair: evals.iter().map(|e| e.loss).collect(),
        gradient: finish_gradients(first_rows, first, normalized),
        second_gradient: second
            .zip(second_rows)
            .map(|(set, rows)| finish_gradients(rows, set, normalized)),
    })
}

/// The two sets of an all-pairs mode.
struct Sides<'a> {
    x: &'a Prepared,
    y: &'a Prepared,
    x_labels: &'a [u32],
    y_labels: &'a [u32],
}

impl Sides<'_> {
    fn eval(&self, loss: &ContrastiveLoss, i: usize, j: usize) -> (PairEval, bool) {
        let similar = self.x_labels[i] == self.y_labels[j];
        let eval = evaluate(
            loss,
            self.x.row(i),
            self.y.row(j),
            self.x.norms[i],
            self.y.norms[j],
            similar,
        );
        (eval, similar)
    }

    /// Loss sums over the pairs `(i, j)` that `considered` accepts.
    fn loss_sums(
        &self,
        loss: &ContrastiveLoss,
        considered: impl Fn(usize, usize) -> bool + Sync,
    ) -> LossSums {
        let m = self.y_labels.len();
        (0..self.x_labels.len())
            .into_par_iter()
            .map(|i| {
                let mut sums = LossSums::default();
                for j in (0..m).filter(|&j| considered(i, j)) {
                    let (eval, similar) = self.eval(loss, i, j);
                    sums.add(&eval, similar);
                }
                sums
            })
            .collect::<Vec<_>>()
            .into_iter()
            .fold(LossSums::default(), LossSums::merge)
    }

    /// `Σ_j w c_ij (r_i − r_j)` for every row `i` of `x`, over the `j` that
    /// `considered` accepts: mirror of `all_pairs`'s gradient phase.
    fn row_gradients(
        &self,
        loss: &ContrastiveLoss,
        (w_pos, w_neg): (f64, f64),
        considered: impl Fn(usize, usize) -> bool + Sync,
    ) -> Vec<RowGradient> {
        let m = self.y_labels.len();
        (0..self.x_labels.len())
            .into_par_iter()
            .map(|i| {
                let mut gradient = RowGradient::new(self.x.d);
                for j in (0..m).filter(|&j| considered(i, j)) {
                    let (eval, similar) = self.eval(loss, i, j);
                    let weight = if similar { w_pos } else { w_neg };
                    gradient.add(weight, &eval, self.x.row(i), self.y.row(j));
                }
                gradient
            })
            .collect()
    }
}

fn reject_none(loss: &ContrastiveLoss) -> Result<()> {
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
