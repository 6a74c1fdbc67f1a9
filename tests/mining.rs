//! GPU miners against their CPU reference on random data with ties and
//! duplicate rows. Distances come from f32 kernels, so where two candidates
//! are closer than the tolerance rule either may win; every check allows
//! exactly that and no more.

mod common;

use common::{gpu, gpu_with_small_chunks};
use contrastive_wgpu::mining::{HardestPair, Neighbor, Progress, NO_INDEX};
use contrastive_wgpu::reference::distance as cpu_distance;
use contrastive_wgpu::reference::mining as cpu;
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::{BankIds, Distance, DistanceOptions, Error, GpuContext, PairwiseShape};

/// Rows with duplicates (every 5th row repeats an earlier one) and values
/// on a coarse grid, so exact distance ties occur.
fn rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut values: Vec<f32> = (0..n * d)
        .map(|_| (rng.below(7) as f32 - 3.0) * 0.5)
        .collect();
    for r in (5..n).step_by(5) {
        let source = rng.below(r as u64) as usize;
        let copy = values[source * d..(source + 1) * d].to_vec();
        values[r * d..(r + 1) * d].copy_from_slice(&copy);
    }
    values
}

fn labels(n: usize, classes: u64, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.below(classes) as u32).collect()
}

fn all_options() -> Vec<DistanceOptions> {
    Distance::ALL
        .iter()
        .flat_map(|&kind| {
            [
                DistanceOptions::new(kind),
                DistanceOptions::new(kind).normalized(),
            ]
        })
        .collect()
}

/// Reference distances and tolerances of every query x bank pair.
struct Matrix {
    values: Vec<f64>,
    tolerances: Vec<f64>,
    m: usize,
}

impl Matrix {
    fn new(x: &[f32], y: &[f32], n: usize, m: usize, d: usize, options: DistanceOptions) -> Self {
        let shape = PairwiseShape::new(n, m, d);
        Self {
            values: cpu_distance::pairwise_distances(x, y, shape, options).unwrap(),
            tolerances: cpu_distance::pairwise_tolerances(x, y, shape, options).unwrap(),
            m,
        }
    }
    fn at(&self, i: usize, j: u32) -> (f64, f64) {
        let k = i * self.m + j as usize;
        (self.values[k], self.tolerances[k])
    }
}

/// Whether rows `a` and `b` of `rows` (width `d`) must come out exactly
/// equally far from any anchor: bitwise identical rows, and arithmetic that
/// is exact in f32 (the grid values of `rows`, not normalised). Normalised
/// rows round, and a backend may fuse multiply-adds differently at different
/// places of a tile, so identical rows can then differ by an ulp and either
/// may win; the tolerance checks cover that case.
fn identical(rows: &[f32], d: usize, options: DistanceOptions) -> impl Fn(u32, u32) -> bool + '_ {
    move |a, b| {
        let row = |r: u32| &rows[r as usize * d..(r as usize + 1) * d];
        !(options.normalize || options.distance == Distance::Cosine)
            && row(a)
                .iter()
                .zip(row(b))
                .all(|(x, y)| x.to_bits() == y.to_bits())
    }
}

/// Checks one mined index against the reference's choice: both absent, or
/// the GPU's choice is as good within tolerance, its reported distance is
/// right, and exact ties went to the smaller index.
fn check_choice(
    what: &str,
    matrix: &Matrix,
    i: usize,
    gpu: (u32, f32),
    reference: (u32, f32),
    same_rows: &dyn Fn(u32, u32) -> bool,
) {
    if reference.0 == NO_INDEX {
        assert_eq!(gpu.0, NO_INDEX, "{what}: anchor {i} should have none");
        assert_eq!(gpu.1, f32::INFINITY, "{what}: anchor {i}");
        return;
    }
    assert_ne!(gpu.0, NO_INDEX, "{what}: anchor {i} found none");
    let (chosen, tol_chosen) = matrix.at(i, gpu.0);
    let (best, tol_best) = matrix.at(i, reference.0);
    assert!(
        (chosen - best).abs() <= tol_chosen + tol_best,
        "{what}: anchor {i} chose {} at {chosen}, best is {} at {best}",
        gpu.0,
        reference.0
    );
    assert!(
        (f64::from(gpu.1) - chosen).abs() <= tol_chosen,
        "{what}: anchor {i} reports {} for a distance of {chosen}",
        gpu.1
    );
    if same_rows(gpu.0, reference.0) {
        assert_eq!(
            gpu.0, reference.0,
            "{what}: anchor {i}: exact tie must go to the smaller index"
        );
    }
}

fn check_hardest(
    what: &str,
    matrix: &Matrix,
    gpu: &[HardestPair],
    reference: &[HardestPair],
    same_rows: &dyn Fn(u32, u32) -> bool,
) {
    assert_eq!(gpu.len(), reference.len());
    for (i, (g, r)) in gpu.iter().zip(reference).enumerate() {
        check_choice(
            &format!("{what} positive"),
            matrix,
            i,
            (g.positive, g.positive_distance),
            (r.positive, r.positive_distance),
            same_rows,
        );
        check_choice(
            &format!("{what} negative"),
            matrix,
            i,
            (g.negative, g.negative_distance),
            (r.negative, r.negative_distance),
            same_rows,
        );
    }
}

#[test]
fn batch_hard_in_batch_matches_the_reference() {
    for (index, options) in all_options().into_iter().enumerate() {
        let (n, d) = [(70, 5), (129, 3), (1, 4), (40, 17)][index % 4];
        let x = rows(n, d, index as u64);
        let batch_labels = labels(n, 4, index as u64);
        let mined = gpu().batch_hard(&x, &batch_labels, d, options).unwrap();
        let expected = cpu::batch_hard(&x, &batch_labels, d, options).unwrap();
        let matrix = Matrix::new(&x, &x, n, n, d, options);
        check_hardest(
            &format!("{options:?}"),
            &matrix,
            &mined,
            &expected,
            &identical(&x, d, options),
        );
    }
}

#[test]
fn batch_hard_marks_anchors_without_positives_or_negatives() {
    let d = 3;
    let x = rows(6, d, 9);
    // Label 7 appears once (no positive); with one class there is no negative.
    let mined = gpu()
        .batch_hard(&x, &[7, 1, 1, 2, 2, 1], d, DistanceOptions::default())
        .unwrap();
    assert_eq!(mined[0].positive, NO_INDEX);
    assert_ne!(mined[0].negative, NO_INDEX);
    let mined = gpu()
        .batch_hard(&x, &[3; 6], d, DistanceOptions::default())
        .unwrap();
    assert!(mined
        .iter()
        .all(|m| m.negative == NO_INDEX && m.positive != NO_INDEX));
}

#[test]
fn batch_hard_against_a_bank_in_many_chunks_matches_the_reference() {
    let (n, m, d) = (50, 300, 6);
    let queries = rows(n, d, 21);
    let bank = rows(m, d, 22);
    let (q_labels, b_labels) = (labels(n, 5, 21), labels(m, 5, 22));
    let query_ids: Vec<u32> = (0..n as u32).map(|i| i * 2).collect();
    let bank_ids: Vec<u32> = (0..m as u32).collect();
    let ids = BankIds {
        queries: &query_ids,
        bank: &bank_ids,
    };
    for gpu in [gpu(), gpu_with_small_chunks()] {
        for options in [
            DistanceOptions::default(),
            DistanceOptions::new(Distance::Dot),
        ] {
            let mined = gpu
                .batch_hard_against_bank(
                    &queries,
                    &q_labels,
                    &bank,
                    &b_labels,
                    Some(ids),
                    d,
                    options,
                )
                .unwrap();
            let expected = cpu::batch_hard_against_bank(
                &queries,
                &q_labels,
                &bank,
                &b_labels,
                Some(ids),
                d,
                options,
            )
            .unwrap();
            let matrix = Matrix::new(&queries, &bank, n, m, d, options);
            check_hardest(
                &format!("bank {options:?}"),
                &matrix,
                &mined,
                &expected,
                &identical(&bank, d, options),
            );
            // Excluded ids never come back.
            for (i, pair) in mined.iter().enumerate() {
                for j in [pair.positive, pair.negative] {
                    assert!(j == NO_INDEX || bank_ids[j as usize] != query_ids[i]);
                }
            }
        }
    }
}

/// Checks a GPU top-k list against the reference's full sort.
#[allow(clippy::too_many_arguments)]
fn check_top_k(
    what: &str,
    matrix: &Matrix,
    gpu: &[Neighbor],
    reference: &[Neighbor],
    k: usize,
    is_negative: impl Fn(usize, u32) -> bool,
    similarity: bool,
    same_rows: &dyn Fn(u32, u32) -> bool,
) {
    for (i, (found, expected)) in gpu.chunks(k).zip(reference.chunks(k)).enumerate() {
        let mut seen = std::collections::HashSet::new();
        for t in 0..k {
            let (g, r) = (found[t], expected[t]);
            if r.index == NO_INDEX {
                assert_eq!(
                    g.index, NO_INDEX,
                    "{what}: query {i} slot {t} should be padding"
                );
                let padding = if similarity {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                };
                assert_eq!(g.distance, padding);
                continue;
            }
            assert_ne!(g.index, NO_INDEX, "{what}: query {i} slot {t} missing");
            assert!(
                is_negative(i, g.index),
                "{what}: query {i} got a non-negative"
            );
            assert!(
                seen.insert(g.index),
                "{what}: query {i} repeats {}",
                g.index
            );
            // The t-th best distance agrees with the full sort's, within
            // tolerance, and is what the chosen row is really at.
            let (chosen, tol_chosen) = matrix.at(i, g.index);
            let (best, tol_best) = matrix.at(i, r.index);
            assert!(
                (chosen - best).abs() <= tol_chosen + tol_best,
                "{what}: query {i} slot {t}: {} at {chosen}, sort has {} at {best}",
                g.index,
                r.index
            );
            assert!((f64::from(g.distance) - chosen).abs() <= tol_chosen);
            if t > 0 && found[t - 1].distance == g.distance {
                assert!(
                    found[t - 1].index < g.index,
                    "{what}: query {i}: equal distances by index"
                );
            }
            if same_rows(g.index, r.index) {
                assert_eq!(
                    g.index, r.index,
                    "{what}: query {i} slot {t}: exact ties by index"
                );
            }
        }
    }
}

#[test]
fn top_k_negatives_match_a_full_sort() {
    for (index, options) in all_options().into_iter().enumerate() {
        let (n, m, d, k) = [
            (30, 200, 5, 10),
            (7, 130, 3, 64),
            (65, 90, 9, 1),
            (3, 40, 2, 50),
        ][index % 4];
        let queries = rows(n, d, 100 + index as u64);
        let bank = rows(m, d, 200 + index as u64);
        let (q_labels, b_labels) = (labels(n, 3, index as u64), labels(m, 3, 7 + index as u64));
        let mined = gpu()
            .top_k_negatives(&queries, &q_labels, &bank, &b_labels, None, d, k, options)
            .unwrap();
        let expected =
            cpu::top_k_negatives(&queries, &q_labels, &bank, &b_labels, None, d, k, options)
                .unwrap();
        assert_eq!(mined.len(), n * k);
        let matrix = Matrix::new(&queries, &bank, n, m, d, options);
        check_top_k(
            &format!("{options:?} k={k}"),
            &matrix,
            &mined,
            &expected,
            k,
            |i, j| q_labels[i] != b_labels[j as usize],
            options.distance.is_similarity(),
            &identical(&bank, d, options),
        );
    }
}

#[test]
fn top_k_over_a_bank_in_many_chunks_with_exclusions_and_progress() {
    // 4 KiB bindings: the bank of 3000 rows is streamed 64 rows at a time,
    // each chunk merged into the best k so far.
    let (n, m, d, k) = (9, 3000, 4, 30);
    let queries = rows(n, d, 31);
    let bank = rows(m, d, 32);
    let (q_labels, b_labels) = (labels(n, 3, 31), labels(m, 3, 32));
    let query_ids: Vec<u32> = (0..n as u32).collect();
    let bank_ids: Vec<u32> = (0..m as u32).map(|j| j % 10).collect();
    let ids = BankIds {
        queries: &query_ids,
        bank: &bank_ids,
    };
    let options = DistanceOptions::default();
    let mut reports = Vec::new();
    let mined = gpu_with_small_chunks()
        .top_k_negatives_with_progress(
            &queries,
            &q_labels,
            &bank,
            &b_labels,
            Some(ids),
            (d, k),
            options,
            &mut |p: Progress| reports.push(p),
        )
        .unwrap();
    let expected = cpu::top_k_negatives(
        &queries,
        &q_labels,
        &bank,
        &b_labels,
        Some(ids),
        d,
        k,
        options,
    )
    .unwrap();
    let matrix = Matrix::new(&queries, &bank, n, m, d, options);
    check_top_k(
        "chunked",
        &matrix,
        &mined,
        &expected,
        k,
        |i, j| q_labels[i] != b_labels[j as usize] && bank_ids[j as usize] != query_ids[i],
        false,
        &identical(&bank, d, options),
    );
    // Progress went up to the total, one report per chunk.
    assert!(reports.len() > 10, "{} reports", reports.len());
    assert!(reports.windows(2).all(|w| w[0].done < w[1].done));
    let last = reports.last().unwrap();
    assert_eq!(last.done, last.total);
}

#[test]
fn top_k_beyond_2048_and_beyond_the_negatives_there_are() {
    // k = 2500 exceeds FAISS's 2048; 1000 of the 20000 bank rows are
    // negatives, so the rest of each list is padding; the bank takes two
    // chunks of 16384 rows.
    let (n, m, d, k) = (3, 20_000, 2, 2500);
    let queries = rows(n, d, 51);
    let bank = rows(m, d, 52);
    let q_labels = vec![0u32; n];
    let b_labels: Vec<u32> = (0..m).map(|j| u32::from(j % 20 == 3)).collect();
    let options = DistanceOptions::new(Distance::SquaredEuclidean);
    let mined = gpu()
        .top_k_negatives(&queries, &q_labels, &bank, &b_labels, None, d, k, options)
        .unwrap();
    let expected =
        cpu::top_k_negatives(&queries, &q_labels, &bank, &b_labels, None, d, k, options).unwrap();
    let matrix = Matrix::new(&queries, &bank, n, m, d, options);
    check_top_k(
        "k = 2500",
        &matrix,
        &mined,
        &expected,
        k,
        |_, j| b_labels[j as usize] == 1,
        false,
        &identical(&bank, d, options),
    );
    assert_eq!(
        mined.iter().filter(|e| e.index == NO_INDEX).count(),
        n * (k - 1000)
    );
}

#[test]
fn mining_is_bitwise_reproducible() {
    let (n, m, d) = (40, 150, 7);
    let queries = rows(n, d, 41);
    let bank = rows(m, d, 42);
    let (q_labels, b_labels) = (labels(n, 4, 41), labels(m, 4, 42));
    let options = DistanceOptions::new(Distance::Cosine);
    let run = |gpu: &GpuContext| {
        let top = gpu
            .top_k_negatives(&queries, &q_labels, &bank, &b_labels, None, d, 20, options)
            .unwrap();
        let hard = gpu.batch_hard(&bank, &b_labels, d, options).unwrap();
        (
            bytemuck::cast_slice::<Neighbor, u32>(&top).to_vec(),
            bytemuck::cast_slice::<HardestPair, u32>(&hard).to_vec(),
        )
    };
    assert_eq!(run(gpu()), run(gpu()));
}

#[test]
fn bad_input_gives_typed_errors() {
    let x = vec![0.0f32; 8];
    let options = DistanceOptions::default();
    assert!(matches!(
        gpu().top_k_negatives(&x, &[0, 1], &x, &[0, 1], None, 4, 0, options),
        Err(Error::ZeroDimension { .. })
    ));
    assert!(matches!(
        gpu().top_k_negatives(&x, &[0, 1, 2], &x, &[0, 1], None, 4, 3, options),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        gpu().batch_hard(&x, &[0, 1], 0, options),
        Err(Error::ZeroDimension { .. })
    ));
    let ids = BankIds {
        queries: &[1],
        bank: &[1, 2],
    };
    assert!(matches!(
        gpu().batch_hard_against_bank(&x, &[0, 1], &x, &[0, 1], Some(ids), 4, options),
        Err(Error::LengthMismatch { .. })
    ));
}

/// Edges halfway (in squared distance) between the distances grid rows can
/// have, so no distance lies within rounding of an edge and GPU and CPU
/// histograms must agree exactly.
fn safe_edges(options: DistanceOptions) -> Vec<f32> {
    (0..60)
        .map(|k| {
            let squared = (k as f64 + 0.5) / 4.0;
            match options.distance {
                Distance::SquaredEuclidean => squared as f32,
                _ => squared.sqrt() as f32,
            }
        })
        .collect()
}

#[test]
fn pair_histograms_match_the_cpu_histograms_exactly() {
    let (n, d) = (150, 5);
    let x = rows(n, d, 61);
    let batch_labels = labels(n, 4, 61);
    for options in [
        DistanceOptions::new(Distance::SquaredEuclidean),
        DistanceOptions::new(Distance::Euclidean),
    ] {
        let edges = safe_edges(options);
        for gpu in [gpu(), gpu_with_small_chunks()] {
            let found = gpu
                .pair_histograms(&x, &batch_labels, d, options, &edges)
                .unwrap();
            let expected = cpu::pair_histograms(&x, &batch_labels, d, options, &edges).unwrap();
            assert_eq!(found, expected, "{options:?}");
            let pairs: u64 = found.positive.iter().chain(&found.negative).sum();
            assert_eq!(pairs, (n * (n - 1) / 2) as u64, "every unordered pair once");
        }
    }
    // Queries against a bank, skipping equal ids.
    let (m, options) = (230, DistanceOptions::new(Distance::Euclidean));
    let bank = rows(m, d, 62);
    let bank_labels = labels(m, 4, 62);
    let query_ids: Vec<u32> = (0..n as u32).collect();
    let bank_ids: Vec<u32> = (0..m as u32).map(|j| j / 2).collect();
    let ids = BankIds {
        queries: &query_ids,
        bank: &bank_ids,
    };
    let edges = safe_edges(options);
    let found = gpu()
        .pair_histograms_against_bank(
            &x,
            &batch_labels,
            &bank,
            &bank_labels,
            Some(ids),
            d,
            options,
            &edges,
        )
        .unwrap();
    let expected = cpu::pair_histograms_against_bank(
        &x,
        &batch_labels,
        &bank,
        &bank_labels,
        Some(ids),
        d,
        options,
        &edges,
    )
    .unwrap();
    assert_eq!(found, expected);
}

#[test]
fn equal_error_rate_and_roc_points_from_histograms() {
    use contrastive_wgpu::mining::PairHistograms;
    // Similar pairs mostly below 1, dissimilar mostly above.
    let histograms = PairHistograms {
        edges: vec![0.0, 0.5, 1.0, 1.5, 2.0],
        positive: vec![0, 40, 40, 15, 5, 0],
        negative: vec![0, 0, 10, 30, 60, 0],
        similarity: false,
    };
    let curve = histograms.curve();
    assert_eq!(curve[2].true_accept_rate, 0.8); // below 1.0: 40 + 40 of 100
    assert_eq!(curve[2].false_accept_rate, 0.1);
    let (threshold, rate) = histograms.equal_error_rate().unwrap();
    // At 1.0: FAR 0.1 < FRR 0.2; at 1.5: FAR 0.4 > FRR 0.05. Linear: w = 0.1 / 0.45.
    assert!(
        (f64::from(threshold) - (1.0 + 0.5 * 0.1 / 0.45)).abs() < 1e-6,
        "{threshold}"
    );
    assert!((rate - (0.1 + 0.3 * 0.1 / 0.45)).abs() < 1e-9, "{rate}");
    let roc = histograms.roc_points(&[0.0, 0.1, 0.5]);
    assert_eq!(roc[0].unwrap().true_accept_rate, 0.4);
    assert_eq!(roc[1].unwrap().threshold, 1.0);
    assert_eq!(roc[2].unwrap().true_accept_rate, 0.95);
    assert!(histograms.roc_points(&[-1.0])[0].is_none());
}

#[test]
fn bad_bin_edges_are_typed_errors() {
    let x = vec![0.0f32; 8];
    for edges in [
        vec![1.0f32],
        vec![0.0, 0.0],
        vec![0.0, f32::NAN],
        vec![2.0, 1.0],
    ] {
        assert!(matches!(
            gpu().pair_histograms(&x, &[0, 1], 4, DistanceOptions::default(), &edges),
            Err(Error::InvalidValue { what: "edges", .. })
        ));
    }
}

#[test]
fn mined_pairs_go_into_the_loss_without_leaving_the_device() {
    use contrastive_wgpu::mining::BatchHardBuffers;
    use contrastive_wgpu::reference::loss as cpu_loss;
    use contrastive_wgpu::wgpu::{self, util::DeviceExt};
    use contrastive_wgpu::{ContrastiveLoss, Gradients, IndexPair, IndexPairBuffers, LossTotals};
    let gpu = gpu();
    let device = gpu.device();
    let (n, d) = (90, 6);
    let mut rng = SplitMix64::new(71);
    let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
    // Label 9 appears once: that anchor has no positive.
    let mut batch_labels = labels(n, 4, 71);
    batch_labels[5] = 9;
    let options = DistanceOptions::default();
    let loss = ContrastiveLoss::hadsell(2.0);

    let storage = |bytes: &[u8], extra: wgpu::BufferUsages| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | extra,
        })
    };
    let empty = |size: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: size as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    let x_buffer = storage(bytemuck::cast_slice(&x), wgpu::BufferUsages::empty());
    let label_buffer = storage(
        bytemuck::cast_slice(&batch_labels),
        wgpu::BufferUsages::empty(),
    );
    let (hardest, pairs, gradient, totals) = (
        empty(16 * n),
        empty(32 * n),
        empty(4 * n * d),
        empty(LossTotals::SIZE as usize),
    );
    // Mine, convert and compute the loss in one encoder, one submission.
    let mut encoder = device.create_command_encoder(&Default::default());
    gpu.record_batch_hard(
        &mut encoder,
        BatchHardBuffers {
            x: &x_buffer,
            labels: &label_buffer,
            out: &hardest,
        },
        (n, d),
        options,
    )
    .unwrap();
    gpu.record_hardest_pairs(&mut encoder, &hardest, &pairs, n)
        .unwrap();
    gpu.record_contrastive_index_pairs(
        &mut encoder,
        IndexPairBuffers {
            x: &x_buffer,
            pairs: &pairs,
            gradient: Some(&gradient),
            pair_values: None,
            totals: &totals,
        },
        (n, 2 * n, d),
        &loss,
    )
    .unwrap();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: LossTotals::SIZE + (4 * n * d) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(&totals, 0, &staging, 0, LossTotals::SIZE);
    encoder.copy_buffer_to_buffer(&gradient, 0, &staging, LossTotals::SIZE, (4 * n * d) as u64);
    gpu.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let bytes = staging.slice(..).get_mapped_range().unwrap().to_vec();
    let device_totals: LossTotals = bytemuck::pod_read_unaligned(&bytes[..64]);
    let device_gradient: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[64..]);

    // The same through the host: mine, build the list, compute the loss.
    let mined = gpu.batch_hard(&x, &batch_labels, d, options).unwrap();
    assert_eq!(mined[5].positive, NO_INDEX);
    let host_pairs: Vec<IndexPair> = mined
        .iter()
        .enumerate()
        .flat_map(|(a, m)| {
            let a = a as u32;
            let pick = |j: u32, label: u32| {
                if j == NO_INDEX {
                    IndexPair {
                        first: a,
                        second: a,
                        label: NO_INDEX,
                    }
                } else {
                    IndexPair {
                        first: a,
                        second: j,
                        label,
                    }
                }
            };
            [pick(m.positive, 1), pick(m.negative, 0)]
        })
        .collect();
    let host = gpu
        .contrastive_index_pairs(&x, n, &host_pairs, d, &loss, Gradients::First)
        .unwrap();
    assert_eq!(device_totals.loss.to_bits(), host.loss.to_bits());
    assert_eq!(device_totals.counts(), host.counts);
    assert_eq!(
        host.counts.positive,
        (n - 1) as u64,
        "the anchor without a positive is skipped"
    );
    assert_eq!(Some(device_gradient), host.gradient);
    // And against the CPU reference.
    let expected = cpu_loss::index_pairs(&x, n, &host_pairs, d, &loss).unwrap();
    assert!((f64::from(host.loss) - expected.loss.loss).abs() <= expected.loss.tolerance);
}

#[test]
fn semi_hard_negatives_match_the_reference() {
    for (index, options) in [
        DistanceOptions::default(),
        DistanceOptions::new(Distance::SquaredEuclidean),
        DistanceOptions::new(Distance::Dot),
        DistanceOptions::new(Distance::Cosine),
    ]
    .into_iter()
    .enumerate()
    {
        let (n, d) = [(60, 4), (37, 3), (70, 5), (45, 6)][index];
        let x = rows(n, d, 80 + index as u64);
        let batch_labels = labels(n, 3, 80 + index as u64);
        let matrix = Matrix::new(&x, &x, n, n, d, options);
        for margin in [None, Some(1.0f32)] {
            let what = format!("{options:?} margin {margin:?}");
            let mined = gpu()
                .semi_hard_negatives(&x, &batch_labels, d, options, margin)
                .unwrap();
            let expected = cpu::semi_hard_negatives(&x, &batch_labels, d, options, margin).unwrap();
            assert_eq!(mined.len(), expected.len(), "{what}");
            // On grid rows the distances are exact in f32 (no normalisation):
            // then every choice, ties included, must be the reference's.
            if options.distance != Distance::Cosine {
                let chosen = |t: &[contrastive_wgpu::mining::SemiHardTriplet]| {
                    t.iter()
                        .map(|t| (t.anchor, t.positive, t.negative))
                        .collect::<Vec<_>>()
                };
                let (found, wanted) = (chosen(&mined), chosen(&expected));
                let first = found.iter().zip(&wanted).position(|(f, w)| f != w);
                assert!(
                    first.is_none(),
                    "{what}: first difference {:?} vs {:?}",
                    first.map(|k| (mined[k], expected[k])),
                    first.map(|k| wanted[k])
                );
            }
            for (g, r) in mined.iter().zip(&expected) {
                assert_eq!((g.anchor, g.positive), (r.anchor, r.positive), "{what}");
                let a = g.anchor as usize;
                // Where the GPU and CPU disagree, the two choices (and the
                // band edges) must be within rounding of each other.
                if g.negative != r.negative {
                    let (ap, tol_ap) = matrix.at(a, g.positive);
                    let close = |j: u32| {
                        j != NO_INDEX && {
                            let (v, tol) = matrix.at(a, j);
                            (v - ap).abs() <= tol + tol_ap
                                || margin.is_some_and(|m| {
                                    let (v, tol) = matrix.at(a, j);
                                    let edge = if options.distance == Distance::Dot {
                                        ap - f64::from(m)
                                    } else {
                                        ap + f64::from(m)
                                    };
                                    (v - edge).abs() <= tol + tol_ap
                                })
                        }
                    };
                    let same_value = g.negative != NO_INDEX
                        && r.negative != NO_INDEX
                        && (matrix.at(a, g.negative).0 - matrix.at(a, r.negative).0).abs()
                            <= matrix.at(a, g.negative).1 + matrix.at(a, r.negative).1;
                    assert!(
                        close(g.negative) || close(r.negative) || same_value,
                        "{what}: ({a}, {}) gpu {} cpu {}",
                        g.positive,
                        g.negative,
                        r.negative
                    );
                } else if g.negative != NO_INDEX {
                    let (v, tol) = matrix.at(a, g.negative);
                    assert!((f64::from(g.negative_distance) - v).abs() <= tol, "{what}");
                }
            }
        }
    }
}

#[test]
fn pair_margin_mining_matches_the_reference_in_order_and_reports_overflow() {
    let (n, d) = (170, 4);
    let x = rows(n, d, 91);
    let batch_labels = labels(n, 3, 91);
    // Thresholds halfway between the squared distances grid rows can have.
    let cases = [
        (
            DistanceOptions::new(Distance::SquaredEuclidean),
            (2.125f32, 1.125f32),
        ),
        (
            DistanceOptions::new(Distance::Euclidean),
            (1.125f32.sqrt(), 0.625f32.sqrt()),
        ),
        (DistanceOptions::new(Distance::Dot), (-0.125f32, 0.375f32)),
    ];
    for (options, thresholds) in cases {
        let expected =
            cpu::pair_margin_pairs(&x, &batch_labels, d, options, thresholds, usize::MAX).unwrap();
        assert!(expected.total > 100, "{options:?}: the test needs pairs");
        let mined = gpu()
            .pair_margin_pairs(&x, &batch_labels, d, options, thresholds, 1 << 20)
            .unwrap();
        assert_eq!(mined, expected, "{options:?}");
        // Many small blocks (a batch of 120 fits the 2-workgroup grids).
        let m = 120;
        let small = gpu_with_small_chunks()
            .pair_margin_pairs(
                &x[..m * d],
                &batch_labels[..m],
                d,
                options,
                thresholds,
                1 << 20,
            )
            .unwrap();
        let expected_small = cpu::pair_margin_pairs(
            &x[..m * d],
            &batch_labels[..m],
            d,
            options,
            thresholds,
            1 << 20,
        )
        .unwrap();
        assert_eq!(small, expected_small, "{options:?} in small blocks");
        // Too small a capacity: the first pairs in order, and the true total.
        let capacity = (expected.total / 3) as usize;
        let mined = gpu()
            .pair_margin_pairs(&x, &batch_labels, d, options, thresholds, capacity)
            .unwrap();
        assert_eq!(mined.total, expected.total);
        assert_eq!(mined.pairs, expected.pairs[..capacity]);
    }
}
