//! CPU mirror of `shaders/distance.wgsl`: every pair of rows prepared by
//! [`super::rows::prepare_rows`], in `f64`, as plain loops (parallel over
//! output rows).

use rayon::prelude::*;

use super::rows::prepare_rows;

/// `f32::EPSILON` in `f64`.
const EPS32: f64 = f32::EPSILON as f64;

use crate::distance::{Distance, DistanceOptions, PairwiseShape};
use crate::error::Result;

/// Mirror of `pairwise` for one pair of prepared rows: the distance and the
/// magnitude that bounds its `f32` rounding error (see
/// [`pairwise_tolerances`]).
pub(crate) fn pair(
    options: DistanceOptions,
    a: &[f64],
    b: &[f64],
    norm_a: f64,
    norm_b: f64,
) -> (f64, f64) {
    let normalized = options.normalizes_rows();
    match options.distance {
        Distance::Dot => {
            let value = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let magnitude = a.iter().zip(b).map(|(p, q)| (p * q).abs()).sum();
            (value, magnitude)
        }
        kind => {
            let squared: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
            match kind {
                Distance::Euclidean => {
                    let value = squared.sqrt();
                    // Normalising in f32 leaves an absolute error of a few
                    // eps per row, independent of the distance.
                    (value, value + if normalized { 1.0 } else { 0.0 })
                }
                Distance::SquaredEuclidean => {
                    // On normalised rows the rounding of u and v leaves
                    // |u - v| off by a few eps, whose square is a floor.
                    let extra = if normalized {
                        squared.sqrt() + EPS32
                    } else {
                        0.0
                    };
                    (squared, squared + extra)
                }
                _ => {
                    // Cosine: 1 - cos = ‖u − v‖² / 2 on normalised rows; cos
                    // is 0 (distance 1) where a norm is 0.
                    if norm_a == 0.0 || norm_b == 0.0 {
                        (1.0, 0.0)
                    } else {
                        let value = (0.5 * squared).min(2.0);
                        (value, value + value.sqrt() + EPS32)
                    }
                }
            }
        }
    }
}

fn for_each_pair<T: Copy + Into<f64> + Sync>(
    x: &[T],
    y: &[T],
    shape: PairwiseShape,
    options: DistanceOptions,
    pick: fn((f64, f64)) -> f64,
) -> Result<Vec<f64>> {
    shape.check_slices(x, y)?;
    let PairwiseShape { m, d, .. } = shape;
    let (xs, norms_x) = prepare_rows(x, d, options.normalizes_rows());
    let (ys, norms_y) = prepare_rows(y, d, options.normalizes_rows());
    let mut out = vec![0.0f64; shape.output_len()?];
    out.par_chunks_mut(m).enumerate().for_each(|(i, row)| {
        let a = &xs[i * d..(i + 1) * d];
        for (j, value) in row.iter_mut().enumerate() {
            let b = &ys[j * d..(j + 1) * d];
            *value = pick(pair(options, a, b, norms_x[i], norms_y[j]));
        }
    });
    Ok(out)
}

/// The `n x m` distance matrix between the rows of `x` and `y`, row-major,
/// computed in `f64`; same definitions as
/// [`GpuContext::pairwise_distances`](crate::GpuContext::pairwise_distances).
pub fn pairwise_distances<T: Copy + Into<f64> + Sync>(
    x: &[T],
    y: &[T],
    shape: PairwiseShape,
    options: DistanceOptions,
) -> Result<Vec<f64>> {
    for_each_pair(x, y, shape, options, |(value, _)| value)
}

/// The tolerance ([`super::tolerance`]) of each output of
/// [`pairwise_distances`]: `4 (D + 8) ε₃₂ · magnitude` with magnitude
///
/// | distance | magnitude |
/// |---|---|
/// | Euclidean | `d` (`d + 1` on normalised rows) |
/// | SquaredEuclidean | `d` (`d + √d + ε₃₂` on normalised rows) |
/// | Cosine | `c + √c + ε₃₂` (0 where a norm is 0: the result is exactly 1) |
/// | Dot | `Σ_k |x_k y_k|` |
///
/// Differences are accumulated directly, so Euclidean errors are relative
/// to the distance itself: identical rows must come out exactly 0.
pub fn pairwise_tolerances<T: Copy + Into<f64> + Sync>(
    x: &[T],
    y: &[T],
    shape: PairwiseShape,
    options: DistanceOptions,
) -> Result<Vec<f64>> {
    let d = shape.d;
    let values = for_each_pair(x, y, shape, options, |(_, magnitude)| magnitude)?;
    Ok(values
        .into_iter()
        .map(|magnitude| super::tolerance(d, magnitude))
        .collect())
}
