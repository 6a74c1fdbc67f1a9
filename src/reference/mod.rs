//! The CPU reference path: every GPU kernel has a mirror here with the same
//! name, written as plain loops in `f64` to be read beside its shader.
//!
//! The tests check each kernel against its mirror under one tolerance rule,
//! [`tolerance`]:
//!
//! ```text
//! |gpu − reference| ≤ 4 · (D + 8) · ε₃₂ · magnitude + 1e-30
//! ```
//!
//! where `ε₃₂ = f32::EPSILON`, `D` is the number of values per row, and
//! `magnitude` is the scale that bounds the rounding error of the `f32`
//! computation for that output (a forward error analysis of the kernel: a
//! sum of `D` terms in `f32` is off by at most about `D · ε₃₂` times the sum
//! of the terms' absolute values). Each mirror documents the magnitude of
//! its outputs; for distances see [`distance::pairwise_tolerances`]. The
//! `1e-30` floor allows for GPUs that flush subnormal results to zero. A
//! reference value beyond `f32::MAX` expects the GPU's `±inf`.

pub mod distance;
pub mod linear;
pub mod loss;
pub mod mining;
pub mod optim;
pub mod rows;

/// Reference values with the tolerance each GPU value is held to (from
/// [`tolerance`]), for comparison with [`compare`].
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// The values, row-major.
    pub values: Vec<f64>,
    /// `|gpu − value|` may be at most this, value by value.
    pub tolerances: Vec<f64>,
}

impl Reference {
    /// Compares `gpu` with these values under their tolerances.
    pub fn compare(&self, gpu: &[f32]) -> Comparison {
        compare(gpu, &self.values, &self.tolerances)
    }
}

/// The tolerance rule shared by every GPU-against-CPU comparison: the
/// largest acceptable `|gpu − reference|` for an output of the given
/// `magnitude` computed from rows of `d` values.
pub fn tolerance(d: usize, magnitude: f64) -> f64 {
    4.0 * (d as f64 + 8.0) * f64::from(f32::EPSILON) * magnitude + 1e-30
}

/// The outcome of comparing GPU output with the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Values compared.
    pub compared: usize,
    /// Values outside their tolerance (NaN where the reference is not NaN
    /// counts as outside).
    pub failures: usize,
    /// Largest `|gpu − reference|` over the finite pairs.
    pub max_abs_diff: f64,
    /// Largest `|gpu − reference| / tolerance`; at most 1 when all pass.
    pub worst_ratio: f64,
    /// Index of the value with the worst ratio.
    pub worst_index: usize,
}

impl Comparison {
    /// True when every value is within its tolerance.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

/// Compares `gpu` with `reference` value by value, each against its own
/// tolerance (from [`tolerance`]).
///
/// # Panics
///
/// Never; slices of different lengths compare their common prefix and count
/// every missing value as a failure.
pub fn compare(gpu: &[f32], reference: &[f64], tolerances: &[f64]) -> Comparison {
    let mut comparison = Comparison {
        compared: reference.len(),
        failures: reference.len().abs_diff(gpu.len()),
        max_abs_diff: 0.0,
        worst_ratio: 0.0,
        worst_index: 0,
    };
    for (index, ((&g, &r), &tol)) in gpu.iter().zip(reference).zip(tolerances).enumerate() {
        let g = f64::from(g);
        let ratio = if r.abs() > f64::from(f32::MAX) {
            // The f32 result overflows: the GPU must give the same infinity.
            if g == r.signum() * f64::INFINITY {
                0.0
            } else {
                f64::INFINITY
            }
        } else if r.is_nan() {
            if g.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            let diff = (g - r).abs();
            if diff.is_finite() {
                comparison.max_abs_diff = comparison.max_abs_diff.max(diff);
            }
            if diff.is_nan() {
                f64::INFINITY
            } else {
                diff / tol
            }
        };
        if ratio > 1.0 {
            comparison.failures += 1;
        }
        if ratio > comparison.worst_ratio {
            comparison.worst_ratio = ratio;
            comparison.worst_index = index;
        }
    }
    comparison
}
