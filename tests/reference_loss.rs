//! The CPU reference of the loss, checked against the peers' own worked
//! values (../shared/reference-values) and against central finite
//! differences in f64.

use contrastive_wgpu::reference::loss::{self as cpu, IndexPair};
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::{ContrastiveLoss, Distance, Error, Power, Reduction};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!(
        "{}/../shared/reference-values/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn matrix(value: &Value) -> (Vec<f64>, usize) {
    let rows = value.as_array().unwrap();
    let d = rows[0].as_array().unwrap().len();
    let flat = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    (flat, d)
}

fn vector(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn labels(value: &Value) -> Vec<u32> {
    vector(value).into_iter().map(|v| v as u32).collect()
}

fn assert_close(what: &str, actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (k, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-12 * e.abs().max(1.0),
            "{what}[{k}]: {a} vs {e}"
        );
    }
}

fn check_explicit_pairs(file: &str, loss: ContrastiveLoss) {
    let case = load(file);
    let (x1, d) = matrix(&case["x1"]);
    let (x2, _) = matrix(&case["x2"]);
    let y = labels(&case["y"]);
    assert_eq!(case["margin"].as_f64().unwrap(), f64::from(loss.neg_margin));
    let result = cpu::explicit_pairs(&x1, &x2, &y, d, &loss).unwrap();
    assert_close(
        "loss",
        &[result.loss.loss],
        &[case["loss"].as_f64().unwrap()],
    );
    assert_close(
        "per-pair loss",
        &result.per_pair,
        &vector(&case["per_pair_loss"]),
    );
    assert_close(
        "grad x1",
        &result.gradient.values,
        &matrix(&case["grad_x1"]).0,
    );
    let second = result.second_gradient.unwrap();
    assert_close("grad x2", &second.values, &matrix(&case["grad_x2"]).0);
}

#[test]
fn hadsell_preset_reproduces_torch_autograd_on_explicit_pairs() {
    check_explicit_pairs("hadsell_pairs.json", ContrastiveLoss::hadsell(2.0));
}

#[test]
fn tf_addons_preset_reproduces_its_formula_on_explicit_pairs() {
    check_explicit_pairs("tfa_pairs.json", ContrastiveLoss::tf_addons(1.0));
}

fn check_in_batch(file: &str, loss: ContrastiveLoss) {
    let case = load(file);
    let (x, d) = matrix(&case["embeddings"]);
    let batch_labels = labels(&case["labels"]);
    let result = cpu::in_batch(&x, &batch_labels, d, &loss).unwrap();
    assert_close(
        "loss",
        &[result.loss.loss],
        &[case["loss"].as_f64().unwrap()],
    );
    assert_close("grad", &result.gradient.values, &matrix(&case["grad"]).0);
}

#[test]
fn pytorch_metric_learning_preset_reproduces_contrastive_loss_defaults() {
    check_in_batch(
        "pml_default.json",
        ContrastiveLoss::pytorch_metric_learning(),
    );
}

#[test]
fn pytorch_metric_learning_margins_on_raw_rows() {
    let loss = ContrastiveLoss {
        normalize: false,
        pos_margin: 0.25,
        neg_margin: 2.5,
        ..ContrastiveLoss::pytorch_metric_learning()
    };
    check_in_batch("pml_margins_unnormalized.json", loss);
}

#[test]
fn pytorch_metric_learning_mean_reducer_is_mean_pos_neg() {
    let loss = ContrastiveLoss {
        normalize: false,
        neg_margin: 2.0,
        reduction: Reduction::MeanPosNeg,
        ..ContrastiveLoss::pytorch_metric_learning()
    };
    check_in_batch("pml_mean_reducer.json", loss);
}

/// Two dissimilar pairs at distances 19 and 1 (rows on a line), margin 10.
fn two_negatives(loss: ContrastiveLoss) -> Vec<f64> {
    let x1 = [0.0f64, 0.0];
    let x2 = [19.0f64, 1.0];
    cpu::explicit_pairs(&x1, &x2, &[0, 0], 1, &loss.with_reduction(Reduction::None))
        .unwrap()
        .per_pair
}

#[test]
fn presets_state_the_numbers_they_reproduce() {
    // TF Addons: max(10 - d, 0)^2, no 1/2: 0 and 81.
    assert_eq!(
        two_negatives(ContrastiveLoss::tf_addons(10.0)),
        vec![0.0, 81.0]
    );
    // Hadsell 2006: the same with 1/2: 0 and 40.5.
    assert_eq!(
        two_negatives(ContrastiveLoss::hadsell(10.0)),
        vec![0.0, 40.5]
    );
    // Caffe legacy: 1/2 max(m - d^2, 0) with m = 10: d^2 = 361 and 1: 0 and 4.5.
    assert_eq!(
        two_negatives(ContrastiveLoss::caffe_legacy(10.0)),
        vec![0.0, 4.5]
    );
    // Similar pairs: Hadsell 1/2 d^2, TF Addons d^2, Caffe 1/2 d^2.
    let similar = |loss: ContrastiveLoss| {
        cpu::explicit_pairs(&[0.0f64], &[3.0f64], &[1], 1, &loss)
            .unwrap()
            .loss
            .loss
    };
    assert_eq!(similar(ContrastiveLoss::hadsell(1.0)), 4.5);
    assert_eq!(similar(ContrastiveLoss::tf_addons(1.0)), 9.0);
    assert_eq!(similar(ContrastiveLoss::caffe_legacy(1.0)), 4.5);
    // pytorch-metric-learning: [d]_+ and [1 - d]_+ on normalised rows:
    // (1,0)-(0,1) are sqrt(2) apart: a similar pair costs sqrt(2), a
    // dissimilar one 0; (1,0)-(1,0.5) is 0.4472 apart.
    let pml = ContrastiveLoss::pytorch_metric_learning().with_reduction(Reduction::None);
    let out = cpu::explicit_pairs(
        &[1.0f64, 0.0, 1.0, 0.0],
        &[0.0, 1.0, 1.0, 0.5],
        &[1, 0],
        2,
        &pml,
    )
    .unwrap()
    .per_pair;
    assert!((out[0] - 2f64.sqrt()).abs() < 1e-15);
    let d = ((1.0 - 2.0 / 5f64.sqrt()).powi(2) + (1.0 / 5f64.sqrt()).powi(2)).sqrt();
    assert!((out[1] - (1.0 - d)).abs() < 1e-15);
}

#[test]
fn the_default_is_hadsell_with_margin_one() {
    assert_eq!(ContrastiveLoss::default(), ContrastiveLoss::hadsell(1.0));
}

/// Every configuration the finite-difference test covers.
fn configurations() -> Vec<ContrastiveLoss> {
    let mut out = vec![
        ContrastiveLoss::hadsell(2.0),
        ContrastiveLoss::tf_addons(1.5),
        ContrastiveLoss::pytorch_metric_learning(),
        ContrastiveLoss::caffe_legacy(4.0),
    ];
    for distance in [
        Distance::Euclidean,
        Distance::SquaredEuclidean,
        Distance::Cosine,
    ] {
        for power in [Power::One, Power::Two] {
            for reduction in [
                Reduction::Sum,
                Reduction::Mean,
                Reduction::MeanPosNeg,
                Reduction::MeanNonzeroPosNeg,
            ] {
                out.push(ContrastiveLoss {
                    distance,
                    normalize: distance == Distance::Euclidean && power == Power::One,
                    pos_margin: 0.3,
                    neg_margin: if distance == Distance::Cosine {
                        0.9
                    } else {
                        2.5
                    },
                    power,
                    scale: 0.5,
                    reduction,
                });
            }
        }
    }
    out
}

fn random(len: usize, rng: &mut SplitMix64) -> Vec<f64> {
    (0..len).map(|_| rng.normal()).collect()
}

/// Central differences of `loss_of` at `x` against `analytic`.
fn check_finite_differences(
    what: &str,
    x: &[f64],
    analytic: &[f64],
    loss_of: impl Fn(&[f64]) -> f64,
) {
    let h = 1e-6;
    for k in 0..x.len() {
        let mut plus = x.to_vec();
        let mut minus = x.to_vec();
        plus[k] += h;
        minus[k] -= h;
        let numeric = (loss_of(&plus) - loss_of(&minus)) / (2.0 * h);
        assert!(
            (numeric - analytic[k]).abs() <= 1e-6 * analytic[k].abs().max(1.0),
            "{what}: d/dx[{k}] analytic {} numeric {numeric}",
            analytic[k]
        );
    }
}

#[test]
fn gradients_match_central_finite_differences_in_every_mode() {
    let mut rng = SplitMix64::new(7);
    let d = 3;
    for loss in configurations() {
        let what = format!("{loss:?}");
        // In batch: 6 rows of 3 classes.
        let x = random(6 * d, &mut rng);
        let batch_labels = [0, 1, 2, 0, 1, 0];
        let result = cpu::in_batch(&x, &batch_labels, d, &loss).unwrap();
        check_finite_differences(
            &format!("in batch {what}"),
            &x,
            &result.gradient.values,
            |x| cpu::in_batch(x, &batch_labels, d, &loss).unwrap().loss.loss,
        );

        // Against a bank, skipping equal ids, both gradients.
        let queries = random(3 * d, &mut rng);
        let bank = random(5 * d, &mut rng);
        let (q_labels, b_labels) = ([0, 1, 1], [1, 0, 1, 2, 0]);
        let ids = cpu::BankIds {
            queries: &[10, 11, 12],
            bank: &[11, 20, 21, 22, 10],
        };
        let bank_loss = |q: &[f64], b: &[f64]| {
            cpu::against_bank(q, &q_labels, b, &b_labels, Some(ids), d, &loss, true).unwrap()
        };
        let result = bank_loss(&queries, &bank);
        check_finite_differences(
            &format!("queries {what}"),
            &queries,
            &result.gradient.values,
            |q| bank_loss(q, &bank).loss.loss,
        );
        check_finite_differences(
            &format!("bank {what}"),
            &bank,
            &result.bank_gradient.unwrap().values,
            |b| bank_loss(&queries, b).loss.loss,
        );

        // Index lists, with a row in several pairs.
        let pairs = [
            IndexPair {
                first: 0,
                second: 1,
                label: 1,
            },
            IndexPair {
                first: 2,
                second: 0,
                label: 0,
            },
            IndexPair {
                first: 3,
                second: 4,
                label: 0,
            },
            IndexPair {
                first: 0,
                second: 4,
                label: 1,
            },
        ];
        let loss_none = if loss.reduction == Reduction::Sum {
            loss.with_reduction(Reduction::None)
        } else {
            loss
        };
        let result = cpu::index_pairs(&x, 6, &pairs, d, &loss_none).unwrap();
        check_finite_differences(
            &format!("index pairs {what}"),
            &x,
            &result.gradient.values,
            |x| {
                cpu::index_pairs(x, 6, &pairs, d, &loss_none)
                    .unwrap()
                    .loss
                    .loss
            },
        );

        // Explicit pairs.
        let x1 = random(4 * d, &mut rng);
        let x2 = random(4 * d, &mut rng);
        let y = [1, 0, 0, 1];
        let result = cpu::explicit_pairs(&x1, &x2, &y, d, &loss).unwrap();
        check_finite_differences(&format!("x1 {what}"), &x1, &result.gradient.values, |x1| {
            cpu::explicit_pairs(x1, &x2, &y, d, &loss)
                .unwrap()
                .loss
                .loss
        });
        check_finite_differences(
            &format!("x2 {what}"),
            &x2,
            &result.second_gradient.unwrap().values,
            |x2| {
                cpu::explicit_pairs(&x1, x2, &y, d, &loss)
                    .unwrap()
                    .loss
                    .loss
            },
        );
    }
}

#[test]
fn gradients_at_distance_zero_are_finite() {
    // Identical rows in every pair: the limit (2s) or the zero subgradient,
    // never NaN or inf, for every configuration.
    let x = [0.5f64, -1.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0];
    for loss in configurations() {
        let result = cpu::in_batch(&x, &[0, 1, 0, 0], 2, &loss).unwrap();
        assert!(result.loss.loss.is_finite());
        assert!(
            result.gradient.values.iter().all(|g| g.is_finite()),
            "{loss:?}"
        );
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let x = [0.0f32; 6];
    let loss = ContrastiveLoss::default();
    assert!(matches!(
        cpu::in_batch(&x, &[0, 1], 2, &loss),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        cpu::in_batch(&x, &[], 2, &loss),
        Err(Error::ZeroDimension { .. })
    ));
    for bad in [
        ContrastiveLoss {
            neg_margin: 0.0,
            ..loss
        },
        ContrastiveLoss {
            pos_margin: 1.0,
            neg_margin: 1.0,
            ..loss
        },
        ContrastiveLoss {
            pos_margin: -0.1,
            ..loss
        },
        ContrastiveLoss { scale: 0.0, ..loss },
        ContrastiveLoss {
            neg_margin: f32::NAN,
            ..loss
        },
        ContrastiveLoss {
            distance: Distance::Dot,
            ..loss
        },
    ] {
        let error = cpu::in_batch(&x, &[0, 1, 0], 2, &bad).unwrap_err();
        assert!(
            matches!(error, Error::InvalidLoss { .. }),
            "{bad:?}: {error:?}"
        );
    }
    assert!(matches!(
        cpu::in_batch(&x, &[0, 1, 0], 2, &loss.with_reduction(Reduction::None)),
        Err(Error::InvalidLoss { .. })
    ));
    assert!(matches!(
        cpu::explicit_pairs(&x, &x, &[0, 2, 1], 2, &loss),
        Err(Error::InvalidValue { index: 1, .. })
    ));
    let out_of_range = [IndexPair {
        first: 0,
        second: 3,
        label: 1,
    }];
    assert!(matches!(
        cpu::index_pairs(&x, 3, &out_of_range, 2, &loss),
        Err(Error::InvalidValue { .. })
    ));
}
