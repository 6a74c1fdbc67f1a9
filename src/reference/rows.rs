//! CPU mirror of `shaders/rows.wgsl`.

use rayon::prelude::*;

/// Mirror of `prepare_rows`: the rows of `x` (`rows x d`, `f32` or `f64`) in `f64`, divided
/// by their L2 norm when `normalize` is set (rows of norm 0 stay 0), and the
/// norms `‖x_i‖₂`.
///
/// The shader scales by the row's largest magnitude before squaring so its
/// `f32` sum cannot overflow; in `f64` the squares of `f32` values cannot
/// overflow, so the plain sum is exact enough.
pub fn prepare_rows<T: Copy + Into<f64>>(
    x: &[T],
    d: usize,
    normalize: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut prepared: Vec<f64> = x.iter().map(|&v| v.into()).collect();
    let norms: Vec<f64> = prepared
        .par_chunks_mut(d.max(1))
        .map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            if normalize && norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
            norm
        })
        .collect();
    (prepared, norms)
}
