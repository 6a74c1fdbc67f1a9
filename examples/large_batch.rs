//! The fused in-batch loss and gradient on a large batch: every unordered
//! pair of N rows, without ever storing the N x N matrix. Prints the time
//! and the device memory used (inputs, outputs and the loss workspace), and
//! what an N x N matrix of f32 would have needed.
//!
//! ```text
//! cargo run --release --example large_batch [-- N D]   # default 65536 128
//! ```

use std::time::Instant;

use contrastive_wgpu::{synthetic, ContrastiveLoss, GpuContext, Gradients};

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
        .map_err(|e| format!("usage: large_batch [N D] (positive integers): {e}"))?;
    let (n, d) = match args.as_slice() {
        [] => (65_536, 128),
        [n, d] => (*n, *d),
        _ => return Err("usage: large_batch [N D]".into()),
    };
    let gpu = GpuContext::new()?;
    println!("adapter: {}", gpu.adapter());
    let x = synthetic::gaussian(n, d, 1);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 100).collect();
    let loss = ContrastiveLoss::hadsell(16.0);
    println!(
        "batch: N = {n}, D = {d}, 100 classes; {} unordered pairs",
        n * (n - 1) / 2
    );

    let started = Instant::now();
    let result = gpu.contrastive_in_batch(&x, &labels, d, &loss, Gradients::First)?;
    let elapsed = started.elapsed();
    let pairs = (n * (n - 1) / 2) as f64;
    println!(
        "loss {:.6} over {} similar + {} dissimilar pairs",
        result.loss, result.counts.positive, result.counts.negative
    );
    println!(
        "time: {elapsed:.2?} for loss + gradient ({:.3e} pairs/s)",
        pairs / elapsed.as_secs_f64()
    );
    let inputs = (n * d * 4 + n * 4) as u64;
    let gradient = (n * d * 4) as u64;
    let workspace = gpu.loss_workspace_bytes()?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "device memory: {:.1} MiB workspace (incl. {:.1} MiB uploaded inputs, {:.1} MiB gradient), \
         versus {:.1} MiB for one N x N f32 matrix",
        mib(workspace),
        mib(inputs),
        mib(gradient),
        mib((n * n * 4) as u64),
    );
    let finite = result
        .gradient
        .as_ref()
        .is_some_and(|g| g.iter().all(|v| v.is_finite()));
    println!("gradient finite: {finite}");
    Ok(())
}
