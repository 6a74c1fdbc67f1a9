//! Shared by the GPU test binaries: one device per binary, the adapter
//! printed where CI's log shows it, and test data of mixed magnitude.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::sync::OnceLock;

use contrastive_wgpu::reference::Reference;
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::{ContextOptions, GpuContext};

/// Opens a context or fails the test with the crate's explanation of how to
/// get an adapter: a GPU test never skips silently.
pub fn open(options: ContextOptions, what: &str) -> GpuContext {
    match GpuContext::with_options(options) {
        Ok(gpu) => {
            // Written to the process's stderr directly, so the test harness
            // does not capture it and CI's log names the adapter.
            let _ = writeln!(
                std::io::stderr(),
                "[{what}] GPU tests run on: {}",
                gpu.adapter()
            );
            gpu
        }
        Err(error) => panic!("GPU tests need an adapter: {error}"),
    }
}

/// The context this test binary shares.
pub fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| open(ContextOptions::default(), "default limits"))
}

/// A context whose bindings are capped at `1 KiB` and dispatches at 2
/// workgroups per dimension, so small shapes span many chunks.
pub fn gpu_with_tiny_chunks() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| {
        open(
            ContextOptions {
                max_binding_bytes: Some(1024),
                max_workgroups_per_dimension: Some(2),
                ..ContextOptions::default()
            },
            "tiny chunks",
        )
    })
}

/// `rows x d` values of mixed magnitude: each row has its own scale
/// `10^u`, `u` uniform in [-3, 3], and each value a normal sample times
/// that scale; about one row in eight duplicates an earlier one.
pub fn mixed_rows(rows: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut values = Vec::with_capacity(rows * d);
    for row in 0..rows {
        if row > 0 && rng.below(8) == 0 {
            let source = rng.below(row as u64) as usize;
            let copy: Vec<f32> = values[source * d..(source + 1) * d].to_vec();
            values.extend_from_slice(&copy);
            continue;
        }
        let scale = 10f64.powf(rng.next_f64() * 6.0 - 3.0);
        for _ in 0..d {
            values.push((rng.normal() * scale) as f32);
        }
    }
    values
}

/// A context whose bindings are capped at 4 KiB and dispatches at 2
/// workgroups per dimension: the smallest that holds 32 rows of a loss
/// gradient at the test sizes, so loss work spans many chunks.
pub fn gpu_with_small_chunks() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| {
        open(
            ContextOptions {
                max_binding_bytes: Some(4096),
                max_workgroups_per_dimension: Some(2),
                ..ContextOptions::default()
            },
            "small chunks",
        )
    })
}

/// Asserts that every GPU value is within its reference tolerance, naming
/// the worst one otherwise.
pub fn assert_close(what: &str, gpu_values: &[f32], expected: &Reference) {
    let comparison = expected.compare(gpu_values);
    assert!(
        comparison.passed(),
        "{what}: {} of {} outside tolerance; worst at {} (gpu {}, cpu {}, tol {:e})",
        comparison.failures,
        comparison.compared,
        comparison.worst_index,
        gpu_values[comparison.worst_index],
        expected.values[comparison.worst_index],
        expected.tolerances[comparison.worst_index],
    );
}
