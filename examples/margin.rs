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
//! here).
//!
//! ```text
//! cargo run --release --example margin
//! ```

use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::{ContrastiveLoss, GpuContext, Gradients, Reduction};

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

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = GpuContext::new()?;
    println!("adapter: {}", gpu.adapter());
    let n = CLASSES * PER_CLASS;
    let labels: Vec<u32> = (0..n).map(|i| (i / PER_CLASS) as u32).collect();
    let mut rng = SplitMix64::new(3);
    let start: Vec<f32> = (0..n * D).map(|_| (0.05 * rng.normal()) as f32).collect();

    // m_neg must exceed m_pos = 0, so "no margin" is the smallest positive
    // f32: the dissimilar term is then 0 at every distance above 1e-38.
    let runs = [("m_neg = 0", f32::MIN_POSITIVE), ("m_neg = 2", 2.0f32)];
    for (name, margin) in runs {
        let loss = ContrastiveLoss::hadsell(margin).with_reduction(Reduction::MeanPosNeg);
        let mut embeddings = start.clone();
        println!(
            "\n{name}: Hadsell 2006, mean of similar + mean of dissimilar pairs, {STEPS} SGD steps"
        );
        for step in 0..=STEPS {
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
    }
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
    let mut centres = [[0.0f64; 2]; CLASSES];
    for i in 0..n {
        let p = point(i);
        let c = &mut centres[labels[i] as usize];
        c[0] += p[0] / PER_CLASS as f64;
        c[1] += p[1] / PER_CLASS as f64;
    }
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
    let mean = [0usize, 1].map(|k| {
        embeddings
            .iter()
            .skip(k)
            .step_by(2)
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / n as f64
    });
    let radius = (0..n).map(|i| distance(point(i), mean)).fold(0.0, f64::max);
    println!("  radius of the whole embedding:       {radius:.4}");
    println!("  mean distance between class centres: {centre_distance:.4}");
    println!("  mean spread around the class centre: {spread:.4}");
    println!(
        "  verification accuracy at threshold 1: {:.1}% of {pairs} pairs",
        100.0 * correct as f64 / pairs as f64
    );
}
