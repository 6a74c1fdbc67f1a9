//! One table, GPU against the CPU reference, for distances, the fused
//! in-batch loss and gradient, and top-k negative mining across sizes:
//! times (median of 3 after a warm-up), speedup, pairs per second and the
//! largest difference from the reference, with the adapter named.
//!
//! ```text
//! cargo run --release --example bench             # sizes a software adapter finishes in minutes
//! cargo run --release --example bench -- large    # sizes for a real GPU
//! ```

use std::time::{Duration, Instant};

use contrastive_wgpu::reference::{
    self, distance as cpu_distance, loss as cpu_loss, mining as cpu_mining,
};
use contrastive_wgpu::{
    synthetic, ContrastiveLoss, DistanceOptions, GpuContext, Gradients, PairwiseShape,
};

const D: usize = 128;

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// The median of 3 timed runs of `work`, after one untimed warm-up run.
fn median_time<T>(
    mut work: impl FnMut() -> Result<T, contrastive_wgpu::Error>,
) -> Result<(Duration, T), contrastive_wgpu::Error> {
    work()?;
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let started = Instant::now();
        let value = work()?;
        times.push(started.elapsed());
        last = Some(value);
    }
    times.sort();
    match last {
        Some(value) => Ok((times[1], value)),
        None => Err(contrastive_wgpu::Error::ZeroDimension { name: "timed runs" }),
    }
}

struct Row {
    operation: &'static str,
    size: String,
    pairs: f64,
    gpu: Duration,
    cpu: Duration,
    max_diff: f64,
    within: bool,
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let large = std::env::args().nth(1).is_some_and(|a| a == "large");
    let gpu = GpuContext::new()?;
    println!("adapter: {}", gpu.adapter());
    let (distance_sizes, loss_sizes, bank_sizes, queries): (&[usize], &[usize], &[usize], usize) =
        if large {
            (&[2048, 8192], &[4096, 16384], &[262_144, 1_048_576], 8192)
        } else {
            (&[512, 1024, 2048], &[512, 1024, 2048], &[4096, 16384], 256)
        };
    let mut rows = Vec::new();

    for &n in distance_sizes {
        let shape = PairwiseShape::new(n, n, D);
        let (x, y) = (synthetic::gaussian(n, D, 1), synthetic::gaussian(n, D, 2));
        let options = DistanceOptions::default();
        let (gpu_time, on_gpu) = median_time(|| gpu.pairwise_distances(&x, &y, shape, options))?;
        let started = Instant::now();
        let on_cpu = cpu_distance::pairwise_distances(&x, &y, shape, options)?;
        let cpu_time = started.elapsed();
        let tolerances = cpu_distance::pairwise_tolerances(&x, &y, shape, options)?;
        let comparison = reference::compare(&on_gpu, &on_cpu, &tolerances);
        rows.push(Row {
            operation: "Euclidean distances",
            size: format!("{n} x {n}"),
            pairs: (n * n) as f64,
            gpu: gpu_time,
            cpu: cpu_time,
            max_diff: comparison.max_abs_diff,
            within: comparison.passed(),
        });
    }

    for &n in loss_sizes {
        let x = synthetic::gaussian(n, D, 3);
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 64).collect();
        let loss = ContrastiveLoss::hadsell(16.0);
        let (gpu_time, on_gpu) =
            median_time(|| gpu.contrastive_in_batch(&x, &labels, D, &loss, Gradients::First))?;
        let started = Instant::now();
        let on_cpu = cpu_loss::in_batch(&x, &labels, D, &loss)?;
        let cpu_time = started.elapsed();
        let gradient = on_gpu.gradient.unwrap_or_default();
        let comparison = reference::compare(
            &gradient,
            &on_cpu.gradient.values,
            &on_cpu.gradient.tolerances,
        );
        let loss_diff = (f64::from(on_gpu.loss) - on_cpu.loss.loss).abs();
        rows.push(Row {
            operation: "in-batch loss + gradient",
            size: format!("N = {n}"),
            pairs: (n * (n - 1) / 2) as f64,
            gpu: gpu_time,
            cpu: cpu_time,
            max_diff: comparison.max_abs_diff.max(loss_diff),
            within: comparison.passed() && loss_diff <= on_cpu.loss.tolerance,
        });
    }

    for &m in bank_sizes {
        let q = synthetic::gaussian(queries, D, 4);
        let bank = synthetic::gaussian(m, D, 5);
        let q_labels: Vec<u32> = (0..queries as u32).map(|i| i % 1000).collect();
        let b_labels: Vec<u32> = (0..m as u32).map(|i| i % 1000).collect();
        let options = DistanceOptions::default();
        let k = 10;
        let (gpu_time, on_gpu) = median_time(|| {
            gpu.top_k_negatives(&q, &q_labels, &bank, &b_labels, None, D, k, options)
        })?;
        let started = Instant::now();
        let on_cpu =
            cpu_mining::top_k_negatives(&q, &q_labels, &bank, &b_labels, None, D, k, options)?;
        let cpu_time = started.elapsed();
        // The k-th best distances must agree within the distance rule.
        let mut max_diff = 0.0f64;
        let mut within = true;
        for (g, c) in on_gpu.iter().zip(&on_cpu) {
            let diff = (f64::from(g.distance) - f64::from(c.distance)).abs();
            max_diff = max_diff.max(diff);
            within &= diff <= reference::tolerance(D, 2.0 * f64::from(c.distance)) + 1e-6;
        }
        rows.push(Row {
            operation: "top-10 negatives",
            size: format!("{queries} x {m}"),
            pairs: (queries * m) as f64,
            gpu: gpu_time,
            cpu: cpu_time,
            max_diff,
            within,
        });
    }

    println!();
    println!("| operation | size (D = {D}) | GPU | CPU reference | speedup | GPU pairs/s | max abs diff | within tolerance |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    for row in &rows {
        println!(
            "| {} | {} | {:.3?} | {:.3?} | {:.2}x | {:.3e} | {:.2e} | {} |",
            row.operation,
            row.size,
            row.gpu,
            row.cpu,
            row.cpu.as_secs_f64() / row.gpu.as_secs_f64(),
            row.pairs / row.gpu.as_secs_f64(),
            row.max_diff,
            if row.within { "yes" } else { "NO" },
        );
    }
    if rows.iter().any(|r| !r.within) {
        return Err("some GPU results are outside the tolerance".into());
    }
    Ok(())
}
