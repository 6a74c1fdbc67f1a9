//! The GPU contrastive loss and gradients against the CPU reference, for
//! every pair mode, distance, reduction and preset, under the tolerance rule
//! of `contrastive_wgpu::reference::tolerance`.

mod common;

use common::{gpu, gpu_with_small_chunks, mixed_rows};
use contrastive_wgpu::reference::loss::{self as cpu, Gradient, LossValue};
use contrastive_wgpu::reference::{self};
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::wgpu::{self, util::DeviceExt};
use contrastive_wgpu::{
    BankIds, ContrastiveLoss, Distance, Error, GpuContext, Gradients, InBatchBuffers, IndexPair,
    LossResult, LossTotals, Power, Reduction,
};

/// Every preset, and every distance x power x reduction.
fn configurations() -> Vec<ContrastiveLoss> {
    let mut out = vec![
        ContrastiveLoss::hadsell(2.0),
        ContrastiveLoss::tf_addons(1.0),
        ContrastiveLoss::pytorch_metric_learning(),
        ContrastiveLoss::caffe_legacy(30.0),
    ];
    for distance in [
        Distance::Euclidean,
        Distance::SquaredEuclidean,
        Distance::Cosine,
    ] {
        for (power, reduction) in [
            (Power::One, Reduction::Sum),
            (Power::Two, Reduction::Mean),
            (Power::One, Reduction::MeanPosNeg),
            (Power::Two, Reduction::MeanNonzeroPosNeg),
        ] {
            out.push(ContrastiveLoss {
                distance,
                normalize: distance == Distance::Euclidean && power == Power::Two,
                pos_margin: if distance == Distance::Cosine {
                    0.05
                } else {
                    0.5
                },
                neg_margin: if distance == Distance::Cosine {
                    0.8
                } else {
                    3.0
                },
                power,
                scale: 0.5,
                reduction,
            });
        }
    }
    out
}

/// Rows around unit scale (so margins bite) with some duplicated rows.
fn rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut values: Vec<f32> = (0..n * d).map(|_| (rng.normal() * 0.6) as f32).collect();
    if n > 3 {
        let copy: Vec<f32> = values[..d].to_vec();
        values[2 * d..3 * d].copy_from_slice(&copy);
    }
    values
}

fn labels(n: usize, classes: u32, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| rng.below(u64::from(classes)) as u32)
        .collect()
}

fn check_loss(what: &str, gpu: f32, reference: &LossValue) {
    let diff = (f64::from(gpu) - reference.loss).abs();
    assert!(
        diff <= reference.tolerance,
        "{what}: loss gpu {gpu} cpu {} (tol {:e})",
        reference.loss,
        reference.tolerance
    );
}

fn check_gradient(what: &str, gpu: Option<&Vec<f32>>, reference: &Gradient) {
    let gpu = gpu.unwrap_or_else(|| panic!("{what}: no gradient"));
    let comparison = reference::compare(gpu, &reference.values, &reference.tolerances);
    let k = comparison.worst_index;
    assert!(
        comparison.passed(),
        "{what}: {} of {} gradient values outside tolerance; worst [{k}] gpu {} cpu {} tol {:e}",
        comparison.failures,
        comparison.compared,
        gpu[k],
        reference.values[k],
        reference.tolerances[k],
    );
}

fn check_in_batch(gpu: &GpuContext, x: &[f32], labels: &[u32], d: usize, loss: &ContrastiveLoss) {
    let what = format!("in batch n={} d={d} {loss:?}", labels.len());
    let result = gpu
        .contrastive_in_batch(x, labels, d, loss, Gradients::First)
        .unwrap();
    let expected = cpu::in_batch(x, labels, d, loss).unwrap();
    check_loss(&what, result.loss, &expected.loss);
    assert_eq!(result.counts, expected.loss.counts, "{what}");
    check_gradient(&what, result.gradient.as_ref(), &expected.gradient);
}

#[test]
fn in_batch_matches_the_reference_for_every_configuration() {
    for (seed, loss) in configurations().iter().enumerate() {
        let seed = seed as u64;
        // Odd sizes around the 32-row block and the 4-value vectors.
        let (n, d) = [(33, 7), (31, 5), (70, 16), (1, 3), (45, 130)][seed as usize % 5];
        let x = rows(n, d, seed);
        check_in_batch(gpu(), &x, &labels(n, 3, seed), d, loss);
    }
}

#[test]
fn in_batch_edge_batches_match_the_reference() {
    let loss = ContrastiveLoss::hadsell(1.5);
    let (n, d) = (40, 9);
    let x = rows(n, d, 5);
    // One class: only similar pairs; all distinct: only dissimilar pairs.
    check_in_batch(gpu(), &x, &vec![7; n], d, &loss);
    let distinct: Vec<u32> = (0..n as u32).collect();
    check_in_batch(
        gpu(),
        &x,
        &distinct,
        d,
        &ContrastiveLoss::pytorch_metric_learning(),
    );
    // Mixed magnitudes.
    let mixed = mixed_rows(n, d, 6);
    check_in_batch(
        gpu(),
        &mixed,
        &labels(n, 4, 6),
        d,
        &ContrastiveLoss::hadsell(100.0),
    );
    // Many chunks of X and Y, tiny dispatch grids.
    let (n, d) = (150, 12);
    let x = rows(n, d, 7);
    for loss in [
        ContrastiveLoss::hadsell(2.0),
        ContrastiveLoss::pytorch_metric_learning(),
    ] {
        check_in_batch(gpu_with_small_chunks(), &x, &labels(n, 5, 7), d, &loss);
    }
}

#[test]
fn queries_against_a_bank_match_the_reference() {
    for (index, loss) in configurations().iter().enumerate() {
        let seed = 100 + index as u64;
        let (n, m, d) = [(17, 90, 6), (40, 33, 20), (5, 129, 3)][index % 3];
        let queries = rows(n, d, seed);
        let bank = rows(m, d, seed + 1);
        let (q_labels, b_labels) = (labels(n, 4, seed), labels(m, 4, seed + 1));
        let query_ids: Vec<u32> = (0..n as u32).map(|i| i * 3).collect();
        let bank_ids: Vec<u32> = (0..m as u32).collect();
        for ids in [
            None,
            Some(BankIds {
                queries: &query_ids,
                bank: &bank_ids,
            }),
        ] {
            let what = format!("bank n={n} m={m} ids={} {loss:?}", ids.is_some());
            let result = gpu()
                .contrastive_against_bank(
                    &queries,
                    &q_labels,
                    &bank,
                    &b_labels,
                    ids,
                    d,
                    loss,
                    Gradients::Both,
                )
                .unwrap();
            let expected =
                cpu::against_bank(&queries, &q_labels, &bank, &b_labels, ids, d, loss, true)
                    .unwrap();
            check_loss(&what, result.loss, &expected.loss);
            assert_eq!(result.counts, expected.loss.counts, "{what}");
            check_gradient(&what, result.gradient.as_ref(), &expected.gradient);
            check_gradient(
                &format!("bank side of {what}"),
                result.second_gradient.as_ref(),
                expected.bank_gradient.as_ref().unwrap(),
            );
        }
    }
}

#[test]
fn a_bank_spanning_many_bindings_matches_the_reference() {
    // 4 KiB bindings: the bank of 300 rows is processed 80 rows at a time,
    // the queries 32 at a time.
    let (n, m, d) = (70, 300, 9);
    let queries = rows(n, d, 21);
    let bank = rows(m, d, 22);
    let (q_labels, b_labels) = (labels(n, 6, 21), labels(m, 6, 22));
    let loss = ContrastiveLoss::tf_addons(2.0);
    let result = gpu_with_small_chunks()
        .contrastive_against_bank(
            &queries,
            &q_labels,
            &bank,
            &b_labels,
            None,
            d,
            &loss,
            Gradients::Both,
        )
        .unwrap();
    let expected =
        cpu::against_bank(&queries, &q_labels, &bank, &b_labels, None, d, &loss, true).unwrap();
    check_loss("tiny-chunk bank", result.loss, &expected.loss);
    check_gradient(
        "tiny-chunk bank",
        result.gradient.as_ref(),
        &expected.gradient,
    );
    check_gradient(
        "tiny-chunk bank side",
        result.second_gradient.as_ref(),
        expected.bank_gradient.as_ref().unwrap(),
    );
}

fn check_pair_list(what: &str, result: &LossResult, expected: &cpu::PairListResult) {
    check_loss(what, result.loss, &expected.loss);
    assert_eq!(result.counts, expected.loss.counts, "{what}");
    check_gradient(what, result.gradient.as_ref(), &expected.gradient);
    let per_pair = result.per_pair.as_ref().unwrap();
    for (p, (&gpu, &cpu)) in per_pair.iter().zip(&expected.per_pair).enumerate() {
        let tol = reference::tolerance(64, cpu + 1e-3);
        assert!(
            (f64::from(gpu) - cpu).abs() <= tol,
            "{what}: pair {p}: {gpu} vs {cpu}"
        );
    }
}

#[test]
fn explicit_pairs_match_the_reference() {
    for (index, loss) in configurations().iter().enumerate() {
        let (b, d) = [(1, 1), (70, 13), (129, 4)][index % 3];
        let x1 = rows(b, d, 300 + index as u64);
        let mut x2 = rows(b, d, 400 + index as u64);
        // Pair 0 at distance 0.
        x2[..d].copy_from_slice(&x1[..d]);
        let y: Vec<u32> = labels(b, 2, index as u64);
        let loss = if loss.reduction == Reduction::Sum {
            loss.with_reduction(Reduction::None)
        } else {
            *loss
        };
        let what = format!("pairs b={b} d={d} {loss:?}");
        let result = gpu()
            .contrastive_pairs(&x1, &x2, &y, d, &loss, Gradients::Both)
            .unwrap();
        let expected = cpu::explicit_pairs(&x1, &x2, &y, d, &loss).unwrap();
        check_pair_list(&what, &result, &expected);
        check_gradient(
            &format!("x2 of {what}"),
            result.second_gradient.as_ref(),
            expected.second_gradient.as_ref().unwrap(),
        );
    }
}

#[test]
fn index_lists_match_the_reference() {
    for (index, loss) in configurations().iter().enumerate() {
        let (n, d) = [(20, 5), (90, 17)][index % 2];
        let x = rows(n, d, 500 + index as u64);
        let mut rng = SplitMix64::new(index as u64);
        // Many pairs per row (rows 0 and 1 in most), repeats and a self pair.
        let mut pairs: Vec<IndexPair> = (0..3 * n)
            .map(|p| IndexPair {
                first: if p % 2 == 0 {
                    0
                } else {
                    rng.below(n as u64) as u32
                },
                second: if p % 3 == 0 {
                    1
                } else {
                    rng.below(n as u64) as u32
                },
                label: rng.below(2) as u32,
            })
            .collect();
        pairs.push(pairs[4]);
        pairs.push(IndexPair {
            first: 3,
            second: 3,
            label: 1,
        });
        let what = format!("index pairs n={n} {loss:?}");
        let result = gpu()
            .contrastive_index_pairs(&x, n, &pairs, d, loss, Gradients::First)
            .unwrap();
        let expected = cpu::index_pairs(&x, n, &pairs, d, loss).unwrap();
        check_pair_list(&what, &result, &expected);
    }
}

#[test]
fn the_peers_worked_values_are_reproduced_on_the_gpu() {
    // pytorch-metric-learning's ContrastiveLoss() defaults, in f32.
    // The peers' values live in the project's shared folder beside the
    // checkout (CI lays it there too).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/reference-values/pml_default.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let case: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(case["embeddings"].clone()).unwrap();
    let d = rows[0].len();
    let x: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    let batch_labels: Vec<u32> = serde_json::from_value(case["labels"].clone()).unwrap();
    let grad: Vec<Vec<f64>> = serde_json::from_value(case["grad"].clone()).unwrap();
    let loss = ContrastiveLoss::pytorch_metric_learning();
    let result = gpu()
        .contrastive_in_batch(&x, &batch_labels, d, &loss, Gradients::First)
        .unwrap();
    let expected = cpu::in_batch(&x, &batch_labels, d, &loss).unwrap();
    let peer_loss = case["loss"].as_f64().unwrap();
    // f32 inputs move the peer's value by about 1e-7; the rule covers both.
    assert!((f64::from(result.loss) - peer_loss).abs() <= expected.loss.tolerance + 1e-6);
    let peer_grad: Vec<f64> = grad.into_iter().flatten().collect();
    for (k, (&g, &p)) in result.gradient.unwrap().iter().zip(&peer_grad).enumerate() {
        assert!(
            (f64::from(g) - p).abs() <= expected.gradient.tolerances[k] + 1e-6,
            "grad[{k}]: {g} vs {p}"
        );
    }
}

#[test]
fn gradients_at_distance_zero_are_finite_on_the_gpu() {
    let d = 6;
    let mut x = rows(12, d, 9);
    // Rows 0, 1, 2 identical.
    let first: Vec<f32> = x[..d].to_vec();
    x[d..2 * d].copy_from_slice(&first);
    let batch_labels = [0, 0, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2];
    // Row 3 all zeros too (norm 0). Its normalised distance to any unit row
    // is 1, exactly at some margins, where one rounding flips a hinge: so
    // this batch is only checked for finiteness.
    let mut with_zero_row = x.clone();
    with_zero_row[3 * d..4 * d]
        .iter_mut()
        .for_each(|v| *v = 0.0);
    for loss in configurations() {
        for batch in [&x, &with_zero_row] {
            let result = gpu()
                .contrastive_in_batch(batch, &batch_labels, d, &loss, Gradients::First)
                .unwrap();
            assert!(result.loss.is_finite(), "{loss:?}");
            assert!(
                result
                    .gradient
                    .as_ref()
                    .unwrap()
                    .iter()
                    .all(|g| g.is_finite()),
                "{loss:?}"
            );
        }
        check_in_batch(gpu(), &x, &batch_labels, d, &loss);
    }
}

#[test]
fn loss_and_gradients_are_bitwise_identical_run_after_run() {
    let (n, d) = (90, 24);
    let x = rows(n, d, 11);
    let batch_labels = labels(n, 4, 11);
    let pairs: Vec<IndexPair> = (0..200u32)
        .map(|p| IndexPair {
            first: p % 7,
            second: (p * 13) % n as u32,
            label: p % 2,
        })
        .collect();
    for loss in [
        ContrastiveLoss::hadsell(2.0),
        ContrastiveLoss::pytorch_metric_learning(),
    ] {
        let bits = |r: LossResult| {
            let mut out = vec![r.loss.to_bits()];
            out.extend(r.gradient.unwrap().iter().map(|g| g.to_bits()));
            out
        };
        let batch = || {
            gpu()
                .contrastive_in_batch(&x, &batch_labels, d, &loss, Gradients::First)
                .unwrap()
        };
        assert_eq!(bits(batch()), bits(batch()));
        let list = || {
            gpu()
                .contrastive_index_pairs(&x, n, &pairs, d, &loss, Gradients::First)
                .unwrap()
        };
        assert_eq!(bits(list()), bits(list()));
    }
}

#[test]
fn a_loss_only_call_gives_the_same_loss() {
    let (n, d) = (50, 8);
    let x = rows(n, d, 12);
    let batch_labels = labels(n, 3, 12);
    let loss = ContrastiveLoss::hadsell(2.0);
    let with = gpu()
        .contrastive_in_batch(&x, &batch_labels, d, &loss, Gradients::First)
        .unwrap();
    let without = gpu()
        .contrastive_in_batch(&x, &batch_labels, d, &loss, Gradients::None)
        .unwrap();
    assert_eq!(with.loss.to_bits(), without.loss.to_bits());
    assert!(without.gradient.is_none());
}

#[test]
fn caller_owned_buffers_on_the_callers_encoder_match_the_slice_api() {
    let gpu = gpu();
    let (n, d) = (77, 10);
    let x = rows(n, d, 13);
    let batch_labels = labels(n, 3, 13);
    let loss = ContrastiveLoss::tf_addons(1.5);
    let device = gpu.device();
    let init = |bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let output = |size: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    let x_buffer = init(bytemuck::cast_slice(&x));
    let label_buffer = init(bytemuck::cast_slice(&batch_labels));
    let gradient = output((n * d * 4) as u64);
    let totals = output(LossTotals::SIZE);
    let mut encoder = device.create_command_encoder(&Default::default());
    let buffers = InBatchBuffers {
        x: &x_buffer,
        labels: &label_buffer,
        gradient: Some(&gradient),
        totals: &totals,
    };
    gpu.record_contrastive_in_batch(&mut encoder, buffers, n, d, &loss)
        .unwrap();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: LossTotals::SIZE + (n * d * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(&totals, 0, &staging, 0, LossTotals::SIZE);
    encoder.copy_buffer_to_buffer(&gradient, 0, &staging, LossTotals::SIZE, (n * d * 4) as u64);
    gpu.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let bytes = staging.slice(..).get_mapped_range().unwrap().to_vec();
    let recorded_totals: LossTotals =
        bytemuck::pod_read_unaligned(&bytes[..LossTotals::SIZE as usize]);
    let recorded_gradient: Vec<f32> =
        bytemuck::pod_collect_to_vec(&bytes[LossTotals::SIZE as usize..]);
    let sliced = gpu
        .contrastive_in_batch(&x, &batch_labels, d, &loss, Gradients::First)
        .unwrap();
    assert_eq!(recorded_totals.loss.to_bits(), sliced.loss.to_bits());
    assert_eq!(recorded_totals.counts(), sliced.counts);
    assert_eq!(Some(recorded_gradient), sliced.gradient);
}

#[test]
fn in_batch_device_memory_stays_linear_in_n() {
    // A fresh context, so the workspace holds what these calls needed.
    let gpu = common::open(Default::default(), "memory test");
    let d = 32;
    let loss = ContrastiveLoss::hadsell(1.0);
    let mut bytes = Vec::new();
    for n in [256usize, 1024] {
        let x = rows(n, d, 14);
        gpu.contrastive_in_batch(&x, &labels(n, 8, 14), d, &loss, Gradients::First)
            .unwrap();
        bytes.push(gpu.loss_workspace_bytes().unwrap());
    }
    // Linear: at most a few hundred bytes per value of X, independent of N.
    for (&b, n) in bytes.iter().zip([256u64, 1024]) {
        assert!(b <= 200 * n * d as u64, "{b} bytes for n = {n}");
    }
    // An N x N matrix of f32 at N = 1024 would be 4 MiB alone.
    assert!(bytes[1] < 1024 * 1024 * 4, "{bytes:?}");
    assert!(bytes[1] < 5 * bytes[0], "grows faster than N: {bytes:?}");
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let x = vec![0.5f32; 12];
    let loss = ContrastiveLoss::default();
    assert!(matches!(
        gpu.contrastive_in_batch(&x, &[0, 1], 4, &loss, Gradients::First),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        gpu.contrastive_in_batch(&[], &[], 4, &loss, Gradients::First),
        Err(Error::ZeroDimension { .. })
    ));
    assert!(matches!(
        gpu.contrastive_in_batch(&x, &[0, 1, 0], 0, &loss, Gradients::First),
        Err(Error::ZeroDimension { .. })
    ));
    let inverted = ContrastiveLoss {
        pos_margin: 2.0,
        neg_margin: 1.0,
        ..loss
    };
    assert!(matches!(
        gpu.contrastive_in_batch(&x, &[0, 1, 0], 4, &inverted, Gradients::First),
        Err(Error::InvalidLoss { .. })
    ));
    assert!(matches!(
        gpu.contrastive_in_batch(
            &x,
            &[0, 1, 0],
            4,
            &loss.with_reduction(Reduction::None),
            Gradients::First
        ),
        Err(Error::InvalidLoss { .. })
    ));
    assert!(matches!(
        gpu.contrastive_pairs(&x, &x, &[1, 0, 5], 4, &loss, Gradients::First),
        Err(Error::InvalidValue { index: 2, .. })
    ));
    let out_of_range = [IndexPair {
        first: 0,
        second: 3,
        label: 1,
    }];
    assert!(matches!(
        gpu.contrastive_index_pairs(&x, 3, &out_of_range, 4, &loss, Gradients::First),
        Err(Error::InvalidValue { .. })
    ));
    let ids = BankIds {
        queries: &[1, 2],
        bank: &[1, 2, 3],
    };
    assert!(matches!(
        gpu.contrastive_against_bank(
            &x,
            &[0, 1, 0],
            &x,
            &[0, 1, 0],
            Some(ids),
            4,
            &loss,
            Gradients::First
        ),
        Err(Error::LengthMismatch { .. })
    ));
}

/// Buffers for the record-API tests.
struct Buffers<'a> {
    gpu: &'a GpuContext,
}

impl Buffers<'_> {
    fn input<T: bytemuck::Pod>(&self, values: &[T]) -> wgpu::Buffer {
        self.gpu
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(values),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    fn output(&self, bytes: u64) -> wgpu::Buffer {
        self.gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Submits `encoder` after copying `outputs` out, and returns their words.
    fn read(&self, mut encoder: wgpu::CommandEncoder, outputs: &[&wgpu::Buffer]) -> Vec<Vec<u32>> {
        let device = self.gpu.device();
        let staging: Vec<wgpu::Buffer> = outputs
            .iter()
            .map(|b| {
                let s = device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: b.size(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(b, 0, &s, 0, b.size());
                s
            })
            .collect();
        self.gpu.queue().submit([encoder.finish()]);
        for s in &staging {
            s.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
        }
        device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        staging
            .iter()
            .map(|s| bytemuck::pod_collect_to_vec(&s.slice(..).get_mapped_range().unwrap()))
            .collect()
    }
}

fn floats(words: &[u32]) -> Vec<f32> {
    words.iter().map(|&w| f32::from_bits(w)).collect()
}

#[test]
fn bank_pairs_and_index_lists_recorded_on_caller_buffers_match_the_slice_api() {
    let gpu = gpu();
    let b = Buffers { gpu };
    let loss = ContrastiveLoss::pytorch_metric_learning();
    let d = 7;

    // Queries against a bank, ids skipping, both gradients.
    let (n, m) = (21, 50);
    let (q, bank) = (rows(n, d, 31), rows(m, d, 32));
    let (ql, bl) = (labels(n, 3, 31), labels(m, 3, 32));
    let (qi, bi): (Vec<u32>, Vec<u32>) = ((0..n as u32).collect(), (10..10 + m as u32).collect());
    let (q_buf, ql_buf, bank_buf, bl_buf) =
        (b.input(&q), b.input(&ql), b.input(&bank), b.input(&bl));
    let (qi_buf, bi_buf) = (b.input(&qi), b.input(&bi));
    let (qg, bg, totals) = (
        b.output((n * d * 4) as u64),
        b.output((m * d * 4) as u64),
        b.output(LossTotals::SIZE),
    );
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_contrastive_against_bank(
        &mut encoder,
        contrastive_wgpu::BankBuffers {
            queries: &q_buf,
            query_labels: &ql_buf,
            bank: &bank_buf,
            bank_labels: &bl_buf,
            ids: Some((&qi_buf, &bi_buf)),
            query_gradient: Some(&qg),
            bank_gradient: Some(&bg),
            totals: &totals,
        },
        (n, m, d),
        &loss,
    )
    .unwrap();
    let out = b.read(encoder, &[&totals, &qg, &bg]);
    let ids = BankIds {
        queries: &qi,
        bank: &bi,
    };
    let sliced = gpu
        .contrastive_against_bank(&q, &ql, &bank, &bl, Some(ids), d, &loss, Gradients::Both)
        .unwrap();
    assert_eq!(out[0][0], sliced.loss.to_bits());
    assert_eq!(Some(floats(&out[1])), sliced.gradient);
    assert_eq!(Some(floats(&out[2])), sliced.second_gradient);

    // Explicit pairs.
    let pairs = 30;
    let (x1, x2, y) = (rows(pairs, d, 33), rows(pairs, d, 34), labels(pairs, 2, 33));
    let (x1_buf, x2_buf, y_buf) = (b.input(&x1), b.input(&x2), b.input(&y));
    let (g1, g2, values, totals) = (
        b.output((pairs * d * 4) as u64),
        b.output((pairs * d * 4) as u64),
        b.output((pairs * 16) as u64),
        b.output(LossTotals::SIZE),
    );
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_contrastive_pairs(
        &mut encoder,
        contrastive_wgpu::PairBuffers {
            x1: &x1_buf,
            x2: &x2_buf,
            labels: &y_buf,
            gradient_x1: Some(&g1),
            gradient_x2: Some(&g2),
            pair_values: Some(&values),
            totals: &totals,
        },
        pairs,
        d,
        &loss,
    )
    .unwrap();
    let out = b.read(encoder, &[&totals, &g1, &g2, &values]);
    let sliced = gpu
        .contrastive_pairs(&x1, &x2, &y, d, &loss, Gradients::Both)
        .unwrap();
    assert_eq!(out[0][0], sliced.loss.to_bits());
    assert_eq!(Some(floats(&out[1])), sliced.gradient);
    assert_eq!(Some(floats(&out[2])), sliced.second_gradient);
    let per_pair: Vec<f32> = floats(&out[3]).chunks(4).map(|v| v[0]).collect();
    assert_eq!(Some(per_pair), sliced.per_pair);

    // An index list already on the device (as a miner leaves it).
    let x = rows(n, d, 35);
    let list: Vec<IndexPair> = (0..40u32)
        .map(|p| IndexPair {
            first: p % 5,
            second: (p * 7) % n as u32,
            label: p % 2,
        })
        .collect();
    let (x_buf, list_buf) = (b.input(&x), b.input(&IndexPair::to_device(&list)));
    let (g, totals) = (b.output((n * d * 4) as u64), b.output(LossTotals::SIZE));
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_contrastive_index_pairs(
        &mut encoder,
        contrastive_wgpu::IndexPairBuffers {
            x: &x_buf,
            pairs: &list_buf,
            gradient: Some(&g),
            pair_values: None,
            totals: &totals,
        },
        (n, list.len(), d),
        &loss,
    )
    .unwrap();
    let out = b.read(encoder, &[&totals, &g]);
    let sliced = gpu
        .contrastive_index_pairs(&x, n, &list, d, &loss, Gradients::First)
        .unwrap();
    assert_eq!(out[0][0], sliced.loss.to_bits());
    assert_eq!(Some(floats(&out[1])), sliced.gradient);
}
