//! Pairwise Euclidean distances, GPU against the CPU reference, N = M in
//! 1024..8192, D = 128, in output elements (pairs) per second.
//!
//! `gpu_slices` includes upload and read-back of the N x M result;
//! `gpu_recorded` is the caller-owned-buffer API on resident buffers (what a
//! training loop pays); `cpu_reference` is the f64 reference on all cores.
//!
//! ```text
//! cargo bench --bench distances            # all sizes
//! cargo bench --bench distances -- /2048   # one size
//! ```

mod support;

use std::hint::black_box;

use contrastive_wgpu::reference::distance as cpu;
use contrastive_wgpu::wgpu::{self, util::DeviceExt};
use contrastive_wgpu::{synthetic, DistanceBuffers, DistanceOptions, GpuContext, PairwiseShape};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const D: usize = 128;
const SIZES: [usize; 4] = [1024, 2048, 4096, 8192];

fn distances(c: &mut Criterion) {
    support::register_plot_font();
    let gpu = GpuContext::new().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("adapter: {}", gpu.adapter());
    let options = DistanceOptions::default();
    let mut group = c.benchmark_group(format!("distances_euclidean_d{D}"));
    group.sample_size(10);
    for n in SIZES {
        let shape = PairwiseShape::new(n, n, D);
        let x = synthetic::gaussian(n, D, 1);
        let y = synthetic::gaussian(n, D, 2);
        group.throughput(Throughput::Elements((n * n) as u64));

        group.bench_with_input(BenchmarkId::new("gpu_slices", n), &n, |b, _| {
            b.iter(|| black_box(gpu.pairwise_distances(&x, &y, shape, options).unwrap()))
        });

        let device = gpu.device();
        let input = |values: &[f32]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(values),
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let (x_buffer, y_buffer) = (input(&x), input(&y));
        let out = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (n * n * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        group.bench_with_input(BenchmarkId::new("gpu_recorded", n), &n, |b, _| {
            b.iter(|| {
                let mut encoder = device.create_command_encoder(&Default::default());
                let buffers = DistanceBuffers {
                    x: &x_buffer,
                    y: &y_buffer,
                    out: &out,
                };
                gpu.record_pairwise_distances(&mut encoder, buffers, shape, options)
                    .unwrap();
                gpu.queue().submit([encoder.finish()]);
                device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            })
        });

        group.bench_with_input(BenchmarkId::new("cpu_reference", n), &n, |b, _| {
            b.iter(|| black_box(cpu::pairwise_distances(&x, &y, shape, options).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, distances);
criterion_main!(benches);
