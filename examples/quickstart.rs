//! The main job in one command: pick the adapter, compute pairwise
//! distances for a synthetic batch on the GPU and on the CPU reference, and
//! print the adapter, both times and the largest difference.
//!
//! ```text
//! cargo run --release --example quickstart [-- N M D]
//! ```

use std::time::Instant;

use contrastive_wgpu::reference;
use contrastive_wgpu::{synthetic, Distance, DistanceOptions, GpuContext, PairwiseShape};

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("usage: quickstart [N M D] (positive integers): {e}"))?;
    let (n, m, d) = match args.as_slice() {
        [] => (2048, 2048, 128),
        [n, m, d] => (*n, *m, *d),
        _ => return Err("usage: quickstart [N M D]".into()),
    };
    let shape = PairwiseShape::new(n, m, d);

    let started = Instant::now();
    let gpu = GpuContext::new()?;
    println!("adapter: {}", gpu.adapter());
    println!("device opened in {:.2?}", started.elapsed());
    println!("batch: X {n} x {d}, Y {m} x {d} (synthetic, standard normal)");

    let x = synthetic::gaussian(n, d, 1);
    let y = synthetic::gaussian(m, d, 2);
    println!(
        "{:<18} {:>10} {:>10} {:>8} {:>14} {:>10}",
        "distance", "GPU", "CPU", "speedup", "max |diff|", "within tol"
    );
    for distance in Distance::ALL {
        let options = DistanceOptions::new(distance);
        // The first call compiles the pipelines; time a second one.
        gpu.pairwise_distances(&x, &y, shape, options)?;
        let t = Instant::now();
        let on_gpu = gpu.pairwise_distances(&x, &y, shape, options)?;
        let gpu_time = t.elapsed();
        let t = Instant::now();
        let on_cpu = reference::distance::pairwise_distances(&x, &y, shape, options)?;
        let cpu_time = t.elapsed();
        let tolerances = reference::distance::pairwise_tolerances(&x, &y, shape, options)?;
        let comparison = reference::compare(&on_gpu, &on_cpu, &tolerances);
        println!(
            "{:<18} {:>10.2?} {:>10.2?} {:>7.1}x {:>14.3e} {:>10}",
            format!("{distance:?}"),
            gpu_time,
            cpu_time,
            cpu_time.as_secs_f64() / gpu_time.as_secs_f64(),
            comparison.max_abs_diff,
            if comparison.passed() { "yes" } else { "NO" },
        );
        if !comparison.passed() {
            return Err(format!(
                "{} of {} values are outside the tolerance",
                comparison.failures, comparison.compared
            )
            .into());
        }
    }
    Ok(())
}
