//! CPU mirror of `shaders/mining.wgsl`: the miners as plain loops over
//! distances computed in `f64` (parallel over anchors).
//!
//! "Closer" means a smaller distance, or a larger similarity for
//! [`Distance::Dot`]. Ties are broken by the smaller index everywhere.
//! Where nothing qualifies the index is [`NO_INDEX`] (`u32::MAX`).

use rayon::prelude::*;

use super::distance::pair as pair_distance;
use super::rows::prepare_rows;
use crate::distance::{check_len, Distance, DistanceOptions};
use crate::error::{Error, Result};
use crate::loss::BankIds;
use crate::loss::IndexPair;
use crate::mining::{
    HardestPair, MarginPairs, Neighbor, PairHistograms, SemiHardTriplet, NO_INDEX,
};

/// Prepared rows and norms of one set, for pair distances.
struct Set {
    rows: Vec<f64>,
    norms: Vec<f64>,
    d: usize,
}

impl Set {
    fn new<T: Copy + Into<f64>>(x: &[T], d: usize, options: DistanceOptions) -> Self {
        let (rows, norms) = prepare_rows(x, d, options.normalizes_rows());
        Self { rows, norms, d }
    }

    fn distance(&self, i: usize, other: &Set, j: usize, options: DistanceOptions) -> f64 {
        let a = &self.rows[i * self.d..(i + 1) * self.d];
        let b = &other.rows[j * other.d..(j + 1) * other.d];
        pair_distance(options, a, b, self.norms[i], other.norms[j]).0
    }
}

/// Orders candidates: closer first, then the smaller index.
fn closer(options: DistanceOptions, (d1, i1): (f64, u32), (d2, i2): (f64, u32)) -> bool {
    let (k1, k2) = if options.distance == Distance::Dot {
        (-d1, -d2)
    } else {
        (d1, d2)
    };
    k1 < k2 || (k1 == k2 && i1 < i2)
}

/// Orders candidates: farther first, then the smaller index.
fn farther(options: DistanceOptions, (d1, i1): (f64, u32), (d2, i2): (f64, u32)) -> bool {
    let (k1, k2) = if options.distance == Distance::Dot {
        (-d1, -d2)
    } else {
        (d1, d2)
    };
    k1 > k2 || (k1 == k2 && i1 < i2)
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

/// The hardest pair of one anchor over the candidates `j` that
/// `considered` accepts: farthest same-label row and nearest other-label row.
fn hardest(
    options: DistanceOptions,
    candidates: impl Iterator<Item = (u32, f64, bool)>,
) -> HardestPair {
    let mut best_positive: Option<(f64, u32)> = None;
    let mut best_negative: Option<(f64, u32)> = None;
    for (j, distance, similar) in candidates {
        let candidate = (distance, j);
        if similar {
            if best_positive.is_none_or(|best| farther(options, candidate, best)) {
                best_positive = Some(candidate);
            }
        } else if best_negative.is_none_or(|best| closer(options, candidate, best)) {
            best_negative = Some(candidate);
        }
    }
    let unpack = |best: Option<(f64, u32)>| match best {
        Some((distance, index)) => (index, distance as f32),
        None => (NO_INDEX, f32::INFINITY),
    };
    let (positive, positive_distance) = unpack(best_positive);
    let (negative, negative_distance) = unpack(best_negative);
    HardestPair {
        positive,
        positive_distance,
        negative,
        negative_distance,
    }
}

/// Batch-hard mining in a batch: for each row, the farthest other row of
/// its label and the nearest row of another label.
pub fn batch_hard<T: Copy + Into<f64> + Sync>(
    x: &[T],
    labels: &[u32],
    d: usize,
    options: DistanceOptions,
) -> Result<Vec<HardestPair>> {
    let n = labels.len();
    check_rows("X (the batch)", n, d, x.len())?;
    let set = Set::new(x, d, options);
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let candidates = (0..n).filter(|&j| j != i).map(|j| {
                (
                    j as u32,
                    set.distance(i, &set, j, options),
                    labels[i] == labels[j],
                )
            });
            hardest(options, candidates)
        })
        .collect())
}

/// Batch-hard mining of queries against a bank, skipping pairs with equal
/// ids when `ids` is given.
pub fn batch_hard_against_bank<T: Copy + Into<f64> + Sync>(
    queries: &[T],
    query_labels: &[u32],
    bank: &[T],
    bank_labels: &[u32],
    ids: Option<BankIds<'_>>,
    d: usize,
    options: DistanceOptions,
) -> Result<Vec<HardestPair>> {
    let (n, m) = (query_labels.len(), bank_labels.len());
    check_rows("queries", n, d, queries.len())?;
    check_rows("bank", m, d, bank.len())?;
    check_ids(ids, n, m)?;
    let q = Set::new(queries, d, options);
    let b = Set::new(bank, d, options);
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let candidates = (0..m)
                .filter(|&j| ids.is_none_or(|ids| ids.queries[i] != ids.bank[j]))
                .map(|j| {
                    (
                        j as u32,
                        q.distance(i, &b, j, options),
                        query_labels[i] == bank_labels[j],
                    )
                });
            hardest(options, candidates)
        })
        .collect())
}

fn check_ids(ids: Option<BankIds<'_>>, n: usize, m: usize) -> Result<()> {
    if let Some(ids) = ids {
        check_len("query ids", n, ids.queries.len())?;
        check_len("bank ids", m, ids.bank.len())?;
    }
    Ok(())
}

/// The `k` nearest negatives of each query in the bank (rows of another
/// label, not excluded by id), closest first, ties by the smaller index, by
/// sorting every candidate; padded with [`NO_INDEX`] (distance `+inf`, or
/// `-inf` for a similarity) when fewer than `k` exist. Row-major `n x k`.
#[allow(clippy::too_many_arguments)]
pub fn top_k_negatives<T: Copy + Into<f64> + Sync>(
    queries: &[T],
    query_labels: &[u32],
    bank: &[T],
    bank_labels: &[u32],
    ids: Option<BankIds<'_>>,
    d: usize,
    k: usize,
    options: DistanceOptions,
) -> Result<Vec<Neighbor>> {
    let (n, m) = (query_labels.len(), bank_labels.len());
    check_rows("queries", n, d, queries.len())?;
    check_rows("bank", m, d, bank.len())?;
    check_ids(ids, n, m)?;
    if k == 0 {
        return Err(Error::ZeroDimension { name: "k" });
    }
    let q = Set::new(queries, d, options);
    let b = Set::new(bank, d, options);
    let padding = Neighbor {
        index: NO_INDEX,
        distance: if options.distance.is_similarity() {
            f32::NEG_INFINITY
        } else {
            f32::INFINITY
        },
    };
    Ok((0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut candidates: Vec<(f64, u32)> = (0..m)
                .filter(|&j| query_labels[i] != bank_labels[j])
                .filter(|&j| ids.is_none_or(|ids| ids.queries[i] != ids.bank[j]))
                .map(|j| (q.distance(i, &b, j, options), j as u32))
                .collect();
            candidates.sort_by(|&a, &b| {
                if closer(options, a, b) {
                    std::cmp::Ordering::Less
                } else if closer(options, b, a) {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            });
            let found: Vec<Neighbor> = candidates
                .into_iter()
                .take(k)
                .map(|(distance, index)| Neighbor {
                    index,
                    distance: distance as f32,
                })
                .collect();
            let missing = k - found.len();
            found
                .into_iter()
                .chain(std::iter::repeat_n(padding, missing))
        })
        .collect())
}

/// The distance between query `i` and bank row `j`, as the reference
/// computes it (for checking mined results).
pub fn distance_of<T: Copy + Into<f64> + Sync>(
    queries: &[T],
    bank: &[T],
    d: usize,
    (i, j): (usize, usize),
    options: DistanceOptions,
) -> f64 {
    let q = Set::new(&queries[i * d..(i + 1) * d], d, options);
    let b = Set::new(&bank[j * d..(j + 1) * d], d, options);
    q.distance(0, &b, 0, options)
}

/// The slot of `value` in a histogram over `edges`: the number of edges at
/// or below it (mirror of `bin_of`).
fn bin_of(edges: &[f32], value: f64) -> usize {
    edges.partition_point(|&e| f64::from(e) <= value)
}

/// Mirror of `pair_histogram` in a batch: every unordered pair `i < j`.
pub fn pair_histograms<T: Copy + Into<f64> + Sync>(
    x: &[T],
    labels: &[u32],
    d: usize,
    options: DistanceOptions,
    edges: &[f32],
) -> Result<PairHistograms> {
    let n = labels.len();
    check_rows("X (the batch)", n, d, x.len())?;
    let set = Set::new(x, d, options);
    histograms(options, edges, n, |i| {
        ((i + 1)..n)
            .map(|j| (set.distance(i, &set, j, options), labels[i] == labels[j]))
            .collect()
    })
}

/// Mirror of `pair_histogram` for queries against a bank.
#[allow(clippy::too_many_arguments)]
pub fn pair_histograms_against_bank<T: Copy + Into<f64> + Sync>(
    queries: &[T],
    query_labels: &[u32],
    bank: &[T],
    bank_labels: &[u32],
    ids: Option<BankIds<'_>>,
    d: usize,
    options: DistanceOptions,
    edges: &[f32],
) -> Result<PairHistograms> {
    let (n, m) = (query_labels.len(), bank_labels.len());
    check_rows("queries", n, d, queries.len())?;
    check_rows("bank", m, d, bank.len())?;
    check_ids(ids, n, m)?;
    let q = Set::new(queries, d, options);
    let b = Set::new(bank, d, options);
    histograms(options, edges, n, |i| {
        (0..m)
            .filter(|&j| ids.is_none_or(|ids| ids.queries[i] != ids.bank[j]))
            .map(|j| {
                (
                    q.distance(i, &b, j, options),
                    query_labels[i] == bank_labels[j],
                )
            })
            .collect()
    })
}

fn histograms(
    options: DistanceOptions,
    edges: &[f32],
    n: usize,
    pairs_of: impl Fn(usize) -> Vec<(f64, bool)> + Sync,
) -> Result<PairHistograms> {
    crate::mining::check_edges(edges)?;
    let slots = edges.len() + 1;
    let rows: Vec<(Vec<u64>, Vec<u64>)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut positive = vec![0u64; slots];
            let mut negative = vec![0u64; slots];
            for (distance, similar) in pairs_of(i) {
                let slot = bin_of(edges, distance);
                if similar {
                    positive[slot] += 1;
                } else {
                    negative[slot] += 1;
                }
            }
            (positive, negative)
        })
        .collect();
    let mut positive = vec![0u64; slots];
    let mut negative = vec![0u64; slots];
    for (p, q) in rows {
        positive.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        negative.iter_mut().zip(q).for_each(|(a, b)| *a += b);
    }
    Ok(PairHistograms {
        edges: edges.to_vec(),
        positive,
        negative,
        similarity: options.distance.is_similarity(),
    })
}

/// Semi-hard negatives with TF Addons' semantics (see
/// [`GpuContext::semi_hard_negatives`](crate::GpuContext::semi_hard_negatives)),
/// by direct search over each anchor's negatives.
pub fn semi_hard_negatives<T: Copy + Into<f64> + Sync>(
    x: &[T],
    labels: &[u32],
    d: usize,
    options: DistanceOptions,
    margin: Option<f32>,
) -> Result<Vec<SemiHardTriplet>> {
    let n = labels.len();
    check_rows("X (the batch)", n, d, x.len())?;
    let set = Set::new(x, d, options);
    // Work in "value" space: the distance, or minus the similarity, so that
    // larger is always farther.
    let value = |i: usize, j: usize| {
        let v = set.distance(i, &set, j, options);
        if options.distance == Distance::Dot {
            -v
        } else {
            v
        }
    };
    let shown = |v: f64| {
        (if options.distance == Distance::Dot {
            -v
        } else {
            v
        }) as f32
    };
    Ok((0..n)
        .into_par_iter()
        .flat_map_iter(|a| {
            let negatives: Vec<(f64, usize)> = (0..n)
                .filter(|&j| labels[j] != labels[a])
                .map(|j| (value(a, j), j))
                .collect();
            let positives: Vec<usize> = (0..n)
                .filter(|&p| p != a && labels[p] == labels[a])
                .collect();
            let value = &value;
            positives.into_iter().map(move |p| {
                let ap = value(a, p);
                let nearer =
                    |x: &(f64, usize), y: &(f64, usize)| x.0 < y.0 || (x.0 == y.0 && x.1 < y.1);
                let outside = negatives
                    .iter()
                    .filter(|(v, _)| *v > ap)
                    .filter(|(v, _)| margin.is_none_or(|m| *v < ap + f64::from(m)))
                    .fold(None, |best: Option<&(f64, usize)>, c| match best {
                        Some(b) if !nearer(c, b) => Some(b),
                        _ => Some(c),
                    });
                let chosen = match (outside, margin) {
                    (Some(c), _) => Some(*c),
                    (None, Some(_)) => None,
                    (None, None) => {
                        negatives
                            .iter()
                            .fold(None, |best: Option<(f64, usize)>, &c| match best {
                                Some(b) if !(c.0 > b.0 || (c.0 == b.0 && c.1 < b.1)) => Some(b),
                                _ => Some(c),
                            })
                    }
                };
                let (negative, negative_distance) = match chosen {
                    Some((v, j)) => (j as u32, shown(v)),
                    None => (NO_INDEX, f32::INFINITY),
                };
                SemiHardTriplet {
                    anchor: a as u32,
                    positive: p as u32,
                    negative,
                    negative_distance,
                }
            })
        })
        .collect())
}

/// Mirror of pair-margin mining: the unordered pairs `i < j` of the batch
/// that are similar and farther than `positive_threshold`, or dissimilar and
/// closer than `negative_threshold`, in `(i, j)` order, at most `capacity`.
pub fn pair_margin_pairs<T: Copy + Into<f64> + Sync>(
    x: &[T],
    labels: &[u32],
    d: usize,
    options: DistanceOptions,
    (positive_threshold, negative_threshold): (f32, f32),
    capacity: usize,
) -> Result<MarginPairs> {
    let n = labels.len();
    check_rows("X (the batch)", n, d, x.len())?;
    let set = Set::new(x, d, options);
    let flip = if options.distance == Distance::Dot {
        -1.0
    } else {
        1.0
    };
    let rows: Vec<Vec<IndexPair>> = (0..n)
        .into_par_iter()
        .map(|i| {
            ((i + 1)..n)
                .filter_map(|j| {
                    // Farther is larger in "value" space (minus a similarity).
                    let v = flip * set.distance(i, &set, j, options);
                    let similar = labels[i] == labels[j];
                    let qualifies = if similar {
                        v > flip * f64::from(positive_threshold)
                    } else {
                        v < flip * f64::from(negative_threshold)
                    };
                    qualifies.then_some(IndexPair {
                        first: i as u32,
                        second: j as u32,
                        label: u32::from(similar),
                    })
                })
                .collect()
        })
        .collect();
    let all: Vec<IndexPair> = rows.into_iter().flatten().collect();
    Ok(MarginPairs {
        total: all.len() as u64,
        pairs: all.into_iter().take(capacity).collect(),
    })
}
