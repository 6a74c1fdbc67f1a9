//! The CPU reference itself, checked against values worked by hand.

use contrastive_wgpu::reference::{self, distance as cpu};
use contrastive_wgpu::{Distance, DistanceOptions, Error, PairwiseShape};

fn distances(x: &[f32], y: &[f32], d: usize, options: DistanceOptions) -> Vec<f64> {
    let shape = PairwiseShape::new(x.len() / d, y.len() / d, d);
    cpu::pairwise_distances(x, y, shape, options).unwrap()
}

#[test]
fn worked_euclidean_values() {
    // (0,0)-(3,4) is the 3-4-5 triangle; (1,1)-(4,5) likewise.
    let x = [0.0, 0.0, 1.0, 1.0];
    let y = [3.0, 4.0, 4.0, 5.0];
    let options = DistanceOptions::new(Distance::Euclidean);
    assert_eq!(
        distances(&x, &y, 2, options),
        vec![5.0, 41f64.sqrt(), 13f64.sqrt(), 5.0]
    );
    let squared = DistanceOptions::new(Distance::SquaredEuclidean);
    assert_eq!(distances(&x, &y, 2, squared), vec![25.0, 41.0, 13.0, 25.0]);
    // Rows that differ only far from zero keep their distance.
    assert_eq!(distances(&[512695.0], &[512804.0], 1, options), vec![109.0]);
}

#[test]
fn worked_cosine_and_dot_values() {
    let x = [1.0, 0.0, 0.0, 0.0];
    // Orthogonal, opposite, parallel (scaled) and a zero row.
    let y = [0.0, 2.0, -3.0, 0.0, 5.0, 0.0, 0.0, 0.0];
    let cosine = DistanceOptions::new(Distance::Cosine);
    let out = distances(&x, &y, 2, cosine);
    assert_eq!(out[..4], [1.0, 2.0, 0.0, 1.0]);
    // The zero row of X: cos = 0 by convention, so distance 1 everywhere.
    assert_eq!(out[4..], [1.0, 1.0, 1.0, 1.0]);
    let dot = DistanceOptions::new(Distance::Dot);
    assert_eq!(distances(&x, &y, 2, dot)[..4], [0.0, -3.0, 5.0, 0.0]);
    // Normalised dot is the cosine similarity.
    assert_eq!(
        distances(&x, &y, 2, dot.normalized())[..4],
        [0.0, -1.0, 1.0, 0.0]
    );
    // 45 degrees: 1 - cos(pi/4).
    let out = distances(&[1.0, 0.0], &[1.0, 1.0], 2, cosine)[0];
    assert!((out - (1.0 - std::f64::consts::FRAC_1_SQRT_2)).abs() < 1e-15);
}

#[test]
fn normalisation_removes_scale() {
    let x = [3.0, 4.0];
    let y = [6.0, 8.0, -4.0, 3.0];
    let options = DistanceOptions::new(Distance::Euclidean).normalized();
    let out = distances(&x, &y, 2, options);
    assert_eq!(out[0], 0.0);
    // (0.6, 0.8) and (-0.8, 0.6) are orthogonal unit vectors.
    assert!((out[1] - 2f64.sqrt()).abs() < 1e-15);
    // A zero row stays zero when normalised.
    let (rows, norms) = reference::rows::prepare_rows(&[0.0, 0.0, 3.0, 4.0], 2, true);
    assert_eq!(rows, vec![0.0, 0.0, 0.6, 0.8]);
    assert_eq!(norms, vec![0.0, 5.0]);
}

#[test]
fn the_tolerance_rule_is_tight_for_exact_results_and_counts_failures() {
    // A magnitude of 0 allows no difference beyond the subnormal floor.
    assert!(reference::tolerance(128, 0.0) < 1e-29);
    // 4 (D + 8) eps relative otherwise.
    let tol = reference::tolerance(8, 1.0);
    assert!((tol - 64.0 * f64::from(f32::EPSILON)).abs() < 1e-20);
    let comparison = reference::compare(&[1.0, 2.0, f32::INFINITY], &[1.0, 2.5, 1e39], &[0.1; 3]);
    assert_eq!(comparison.failures, 1);
    assert_eq!(comparison.worst_index, 1);
    assert_eq!(comparison.max_abs_diff, 0.5);
    // A missing value is a failure, not a silent pass.
    assert_eq!(
        reference::compare(&[1.0], &[1.0, 2.0], &[0.1; 2]).failures,
        1
    );
}

#[test]
fn bad_input_gives_typed_errors() {
    let options = DistanceOptions::default();
    assert!(matches!(
        cpu::pairwise_distances(&[1.0; 3], &[1.0; 4], PairwiseShape::new(1, 2, 2), options),
        Err(Error::LengthMismatch {
            what: "X",
            expected: 2,
            actual: 3
        })
    ));
    assert!(matches!(
        cpu::pairwise_distances::<f32>(&[], &[], PairwiseShape::new(1, 1, 0), options),
        Err(Error::ZeroDimension { .. })
    ));
}
