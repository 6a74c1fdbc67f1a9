//! Top-k nearest negatives, GPU against the CPU reference: 8192 queries
//! against a 262144-row bank, D = 128, k = 10 and k = 1024, in query x bank
//! pairs per second.
//!
//! On a software adapter these sizes take minutes per iteration; the
//! environment variables `BENCH_QUERIES` and `BENCH_BANK` shrink them.
//!
//! ```text
//! cargo bench --bench mining
//! BENCH_QUERIES=1024 BENCH_BANK=32768 cargo bench --bench mining
//! ```

mod support;

use std::hint::black_box;

use contrastive_wgpu::reference::mining as cpu;
use contrastive_wgpu::{synthetic, DistanceOptions, GpuContext};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const D: usize = 128;

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn top_k(c: &mut Criterion) {
    support::register_plot_font();
    let gpu = GpuContext::new().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("adapter: {}", gpu.adapter());
    let (n, m) = (size("BENCH_QUERIES", 8192), size("BENCH_BANK", 262_144));
    let queries = synthetic::gaussian(n, D, 1);
    let bank = synthetic::gaussian(m, D, 2);
    let query_labels: Vec<u32> = (0..n as u32).map(|i| i % 1000).collect();
    let bank_labels: Vec<u32> = (0..m as u32).map(|i| i % 1000).collect();
    let options = DistanceOptions::default();
    let mut group = c.benchmark_group(format!("top_k_negatives_{n}x{m}_d{D}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements((n * m) as u64));
    for k in [10usize, 1024] {
        group.bench_with_input(BenchmarkId::new("gpu", k), &k, |b, &k| {
            b.iter(|| {
                black_box(
                    gpu.top_k_negatives(
                        &queries,
                        &query_labels,
                        &bank,
                        &bank_labels,
                        None,
                        D,
                        k,
                        options,
                    )
                    .unwrap(),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("cpu_reference", k), &k, |b, &k| {
            b.iter(|| {
                black_box(
                    cpu::top_k_negatives(
                        &queries,
                        &query_labels,
                        &bank,
                        &bank_labels,
                        None,
                        D,
                        k,
                        options,
                    )
                    .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, top_k);
criterion_main!(benches);
