//! What does the margin do? Free 2-D embeddings of 4 classes (50 points
//! each, started in one small blob) are trained with the contrastive loss,
//! computed with its gradient on the GPU, once with `m_neg = 0` and once
//! with `m_neg = 2`. Without a margin nothing pushes dissimilar points
//! apart and every input ends up at (nearly) one point; with it the
//! classes separate until they are about the margin apart.
//!
//! It prints, for both runs, the radius of the whole embedding (largest
//! distance of a point from the mean of all points), the mean distance
//! between class centres, the mean spread (distance of a point to its class
//! centre), and the verification accuracy at distance threshold 1 (a pair
//! closer than 1 is called similar; calling every pair similar scores 24.6%
//! here) and at the equal-error-rate threshold.
//!
//! It draws two PNG images into `OUT_DIR` (default `target/margin-plots`):
//! `embeddings.png`, both runs on the same axes (the start, the path of
//! each class centre, the trained points coloured by class), and
//! `distances.png`, the histograms of similar and dissimilar pair distances
//! of both runs in the same bins (computed on the GPU), with the margin and
//! the equal-error-rate threshold marked. In those bins the collapsed run
//! puts every pair into the first one, so its equal-error rate is 50%: at
//! the scale a margin of 2 would give, nothing is told apart. (What order
//! survives inside the 0.004-wide blob is left over from the random start;
//! nothing in the loss keeps it.)
//!
//! ```text
//! cargo run --release --example margin [-- OUT_DIR]
//! ```

use std::path::{Path, PathBuf};

use contrastive_wgpu::mining::PairHistograms;
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::{ContrastiveLoss, DistanceOptions, GpuContext, Gradients, Reduction};
use plotters::coord::Shift;
use plotters::prelude::*;

const CLASSES: usize = 4;
const PER_CLASS: usize = 50;
const D: usize = 2;
const STEPS: usize = 300;
const LEARNING_RATE: f32 = 10.0;

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// One trained run: its name, margin, final embedding, the path of each
/// class centre step by step, and the pair-distance histograms.
struct Run {
    name: &'static str,
    margin: f32,
    embeddings: Vec<f32>,
    centre_paths: Vec<Vec<(f64, f64)>>,
    histograms: Option<PairHistograms>,
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/margin-plots")),
        PathBuf::from,
    );
    let gpu = GpuContext::new()?;
    println!("adapter: {}", gpu.adapter());
    let n = CLASSES * PER_CLASS;
    let labels: Vec<u32> = (0..n).map(|i| (i / PER_CLASS) as u32).collect();
    let mut rng = SplitMix64::new(3);
    let start: Vec<f32> = (0..n * D).map(|_| (0.05 * rng.normal()) as f32).collect();

    // m_neg must exceed m_pos = 0, so "no margin" is the smallest positive
    // f32: the dissimilar term is then 0 at every distance above 1e-38.
    let runs = [("m_neg = 0", f32::MIN_POSITIVE), ("m_neg = 2", 2.0f32)];
    let mut trained = Vec::new();
    for (name, margin) in runs {
        let loss = ContrastiveLoss::hadsell(margin).with_reduction(Reduction::MeanPosNeg);
        let mut embeddings = start.clone();
        let mut centre_paths = vec![Vec::new(); CLASSES];
        println!(
            "\n{name}: Hadsell 2006, mean of similar + mean of dissimilar pairs, {STEPS} SGD steps"
        );
        for step in 0..=STEPS {
            for (path, centre) in centre_paths
                .iter_mut()
                .zip(class_centres(&embeddings, &labels))
            {
                path.push((centre[0], centre[1]));
            }
            let result =
                gpu.contrastive_in_batch(&embeddings, &labels, D, &loss, Gradients::First)?;
            if step % 100 == 0 {
                println!("  step {step:>4}: loss {:.5}", result.loss);
            }
            if step == STEPS {
                break;
            }
            let gradient = result.gradient.ok_or("the GPU returned no gradient")?;
            for (e, g) in embeddings.iter_mut().zip(&gradient) {
                *e -= LEARNING_RATE * g;
            }
        }
        report(&embeddings, &labels);
        trained.push(Run {
            name,
            margin,
            embeddings,
            centre_paths,
            histograms: None,
        });
    }

    // Pair-distance histograms on the GPU, both runs in the same bins (up
    // to the largest distance of either).
    let largest = trained
        .iter()
        .map(|run| largest_distance(&run.embeddings))
        .fold(0.0, f64::max);
    let edges: Vec<f32> = (0..=BINS)
        .map(|b| (largest * 1.0001 * b as f64 / BINS as f64) as f32)
        .collect();
    println!();
    for run in &mut trained {
        let histograms = gpu.pair_histograms(
            &run.embeddings,
            &labels,
            D,
            DistanceOptions::default(),
            &edges,
        )?;
        if let Some((threshold, eer)) = histograms.equal_error_rate() {
            println!(
                "{}: verification accuracy {:.1}% at the equal-error-rate threshold {threshold:.4} \
                 ({BINS} bins of width {:.4}, the same for both runs)",
                run.name,
                100.0 * (1.0 - eer),
                edges[1]
            );
        }
        run.histograms = Some(histograms);
    }

    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    // The bitmap backend draws text with this font: no system fonts needed.
    plotters::style::register_font("sans-serif", FontStyle::Normal, ttf_noto_sans::REGULAR)
        .map_err(|_| "the embedded Noto Sans font did not load")?;
    let embeddings_png = out_dir.join("embeddings.png");
    let distances_png = out_dir.join("distances.png");
    draw_embeddings(&embeddings_png, &trained, &start, &labels)?;
    draw_distances(&distances_png, &trained)?;
    println!(
        "\nwrote {} and {}",
        embeddings_png.display(),
        distances_png.display()
    );
    Ok(())
}

/// The largest distance of a point from the mean of all points.
fn embedding_radius(embeddings: &[f32]) -> f64 {
    let n = (embeddings.len() / 2) as f64;
    let mean = [0usize, 1].map(|k| {
        embeddings
            .iter()
            .skip(k)
            .step_by(2)
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / n
    });
    embeddings
        .chunks_exact(2)
        .map(|p| (f64::from(p[0]) - mean[0]).hypot(f64::from(p[1]) - mean[1]))
        .fold(0.0, f64::max)
}

/// The mean of each class's points.
fn class_centres(embeddings: &[f32], labels: &[u32]) -> [[f64; 2]; CLASSES] {
    let mut centres = [[0.0f64; 2]; CLASSES];
    for (p, &label) in embeddings.chunks_exact(2).zip(labels) {
        let c = &mut centres[label as usize];
        c[0] += f64::from(p[0]) / PER_CLASS as f64;
        c[1] += f64::from(p[1]) / PER_CLASS as f64;
    }
    centres
}

/// Histogram bins over [0, the largest distance of either run].
const BINS: usize = 60;
/// One colour per class.
const CLASS_COLOURS: [RGBColor; CLASSES] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn largest_distance(embeddings: &[f32]) -> f64 {
    let points: Vec<[f64; 2]> = embeddings
        .chunks_exact(2)
        .map(|p| [f64::from(p[0]), f64::from(p[1])])
        .collect();
    let mut largest = 0.0f64;
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            largest = largest.max(((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt());
        }
    }
    largest.max(f64::from(f32::MIN_POSITIVE))
}

/// A panel's range: `values` with 8% room on each side (never empty).
fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    let pad = ((high - low) * 0.08).max(1e-9);
    (low - pad)..(high + pad)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The points of each run, one panel per run on the same axes: the start
/// (grey), the path of each class centre, and the trained points.
fn draw_embeddings(path: &Path, runs: &[Run], start: &[f32], labels: &[u32]) -> DrawResult {
    let all: Vec<f32> = runs
        .iter()
        .flat_map(|run| run.embeddings.iter().copied())
        .chain(start.iter().copied())
        .collect();
    let x_range = padded_range(all.iter().step_by(2).map(|&v| f64::from(v)));
    let y_range = padded_range(all.iter().skip(1).step_by(2).map(|&v| f64::from(v)));
    let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, runs.len()));
    for (panel, run) in panels.iter().zip(runs) {
        draw_embedding_panel(
            panel,
            run,
            start,
            labels,
            (x_range.clone(), y_range.clone()),
        )?;
    }
    root.present()?;
    Ok(())
}

fn draw_embedding_panel(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    run: &Run,
    start: &[f32],
    labels: &[u32],
    (x_range, y_range): (std::ops::Range<f64>, std::ops::Range<f64>),
) -> DrawResult {
    let radius = embedding_radius(&run.embeddings);
    let mut chart = ChartBuilder::on(panel)
        .caption(
            format!(
                "{}: every point ends within {radius:.3} of the mean",
                run.name
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .label_style(("sans-serif", 14))
        .draw()?;
    let grey = RGBColor(150, 150, 150);
    chart
        .draw_series(
            start
                .chunks_exact(2)
                .map(|p| Circle::new((f64::from(p[0]), f64::from(p[1])), 2, grey.filled())),
        )?
        .label("start (all classes)")
        .legend(move |(x, y)| Circle::new((x, y), 3, grey.filled()));
    for (class, colour) in CLASS_COLOURS.iter().enumerate() {
        chart.draw_series(LineSeries::new(
            run.centre_paths[class].iter().copied(),
            colour.mix(0.6).stroke_width(2),
        ))?;
        let points = run
            .embeddings
            .chunks_exact(2)
            .zip(labels)
            .filter(|(_, &l)| l as usize == class)
            .map(|(p, _)| Circle::new((f64::from(p[0]), f64::from(p[1])), 6, colour.filled()));
        chart
            .draw_series(points)?
            .label(format!("class {class}: trained, and its centre's path"))
            .legend(move |(x, y)| Circle::new((x, y), 5, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Similar and dissimilar pair-distance histograms of each run (fractions
/// of each kind of pair per bin), with the margin and the EER threshold.
fn draw_distances(path: &Path, runs: &[Run]) -> DrawResult {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, runs.len()));
    for (panel, run) in panels.iter().zip(runs) {
        draw_distance_panel(panel, run)?;
    }
    root.present()?;
    Ok(())
}

fn draw_distance_panel(panel: &DrawingArea<BitMapBackend<'_>, Shift>, run: &Run) -> DrawResult {
    let h = run
        .histograms
        .as_ref()
        .ok_or("the histograms are computed before drawing")?;
    let fractions = |counts: &[u64]| -> Vec<f64> {
        let total = counts.iter().sum::<u64>().max(1) as f64;
        counts.iter().map(|&c| c as f64 / total).collect()
    };
    let (pos, neg) = (fractions(&h.positive), fractions(&h.negative));
    let top = pos.iter().chain(&neg).fold(0.0f64, |a, &b| a.max(b)) * 1.1;
    let right = f64::from(h.edges[h.edges.len() - 1]);
    let mut chart = ChartBuilder::on(panel)
        .caption(
            format!("{}: pair distances after training", run.name),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..right, 0.0..top.max(1e-9))?;
    chart
        .configure_mesh()
        .x_desc("distance")
        .y_desc("fraction of pairs")
        .x_labels(6)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    // Slot b + 1 holds the bin [edges[b], edges[b + 1]).
    let bars = |values: &[f64], colour: RGBColor| -> Vec<Rectangle<(f64, f64)>> {
        (0..BINS)
            .map(|b| {
                Rectangle::new(
                    [
                        (f64::from(h.edges[b]), 0.0),
                        (f64::from(h.edges[b + 1]), values[b + 1]),
                    ],
                    colour.mix(0.55).filled(),
                )
            })
            .collect()
    };
    let (blue, red) = (RGBColor(31, 119, 180), RGBColor(214, 39, 40));
    chart
        .draw_series(bars(&pos, blue))?
        .label("similar pairs")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], blue.filled()));
    chart
        .draw_series(bars(&neg, red))?
        .label("dissimilar pairs")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], red.filled()));
    let mut marks = Vec::new();
    if f64::from(run.margin) <= right {
        marks.push((f64::from(run.margin), "margin m_neg", BLACK));
    }
    if let Some((threshold, _)) = h.equal_error_rate() {
        marks.push((f64::from(threshold), "EER threshold", RGBColor(44, 160, 44)));
    }
    for (x, name, colour) in marks {
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, top)],
                colour.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(lx, ly)| {
                PathElement::new([(lx, ly), (lx + 14, ly)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Prints the separation figures of a trained embedding.
fn report(embeddings: &[f32], labels: &[u32]) {
    let point = |i: usize| {
        [
            f64::from(embeddings[2 * i]),
            f64::from(embeddings[2 * i + 1]),
        ]
    };
    let distance =
        |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let n = labels.len();
    let centres = class_centres(embeddings, labels);
    let mut centre_distance = 0.0;
    let mut centre_pairs = 0.0;
    for a in 0..CLASSES {
        for b in a + 1..CLASSES {
            centre_distance += distance(centres[a], centres[b]);
            centre_pairs += 1.0;
        }
    }
    centre_distance /= centre_pairs;
    let spread = (0..n)
        .map(|i| distance(point(i), centres[labels[i] as usize]))
        .sum::<f64>()
        / n as f64;
    let mut correct = 0usize;
    let mut pairs = 0usize;
    for i in 0..n {
        for j in i + 1..n {
            let similar = labels[i] == labels[j];
            correct += usize::from((distance(point(i), point(j)) < 1.0) == similar);
            pairs += 1;
        }
    }
    let radius = embedding_radius(embeddings);
    println!("  radius of the whole embedding:       {radius:.4}");
    println!("  mean distance between class centres: {centre_distance:.4}");
    println!("  mean spread around the class centre: {spread:.4}");
    println!(
        "  verification accuracy at threshold 1: {:.1}% of {pairs} pairs",
        100.0 * correct as f64 / pairs as f64
    );
}
