//! The fused in-batch contrastive loss and gradient (Hadsell 2006), GPU
//! against the CPU reference, N in 1024..16384, D = 128, in unordered pairs
//! per second.
//!
//! `gpu_slices` includes upload and read-back; `gpu_recorded` is the
//! caller-owned-buffer API on resident buffers (what a training step pays);
//! `cpu_reference` is the f64 reference on all cores.
//!
//! ```text
//! cargo bench --bench loss                     # N up to 16384
//! BENCH_MAX_N=4096 cargo bench --bench loss    # stop at 4096 (software GPUs)
//! ```

mod support;

use std::hint::black_box;

use contrastive_wgpu::reference::loss as cpu;
use contrastive_wgpu::wgpu::{self, util::DeviceExt};
use contrastive_wgpu::{
    synthetic, ContrastiveLoss, GpuContext, Gradients, InBatchBuffers, LossTotals,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const D: usize = 128;

fn loss(c: &mut Criterion) {
    support::register_plot_font();
    let gpu = GpuContext::new().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("adapter: {}", gpu.adapter());
    let max_n: usize = std::env::var("BENCH_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16_384);
    let loss = ContrastiveLoss::hadsell(16.0);
    let mut group = c.benchmark_group(format!("in_batch_loss_gradient_d{D}"));
    group.sample_size(10);
    for n in [1024usize, 2048, 4096, 8192, 16_384]
        .into_iter()
        .filter(|&n| n <= max_n)
    {
        let x = synthetic::gaussian(n, D, 1);
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 64).collect();
        group.throughput(Throughput::Elements((n * (n - 1) / 2) as u64));

        group.bench_with_input(BenchmarkId::new("gpu_slices", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    gpu.contrastive_in_batch(&x, &labels, D, &loss, Gradients::First)
                        .unwrap(),
                )
            })
        });

        let device = gpu.device();
        let init = |bytes: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let x_buffer = init(bytemuck::cast_slice(&x));
        let label_buffer = init(bytemuck::cast_slice(&labels));
        let output = |size: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let gradient = output((n * D * 4) as u64);
        let totals = output(LossTotals::SIZE);
        group.bench_with_input(BenchmarkId::new("gpu_recorded", n), &n, |b, _| {
            b.iter(|| {
                let mut encoder = device.create_command_encoder(&Default::default());
                let buffers = InBatchBuffers {
                    x: &x_buffer,
                    labels: &label_buffer,
                    gradient: Some(&gradient),
                    totals: &totals,
                };
                gpu.record_contrastive_in_batch(&mut encoder, buffers, n, D, &loss)
                    .unwrap();
                gpu.queue().submit([encoder.finish()]);
                device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            })
        });

        group.bench_with_input(BenchmarkId::new("cpu_reference", n), &n, |b, _| {
            b.iter(|| black_box(cpu::in_batch(&x, &labels, D, &loss).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, loss);
criterion_main!(benches);
