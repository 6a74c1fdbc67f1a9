//! A training loop that stays on the GPU: an embedding model for handwritten
//! digits trained with the contrastive loss, hard negatives mined on the
//! device every few steps, the loss read back only every few steps.
//!
//! ```text
//! cargo run --release --example train [-- --steps 300 --mine-every 10 --report-every 50]
//! ```
//!
//! - Data: the 1797 UCI digits (8 x 8 pixels, 10 classes) shipped in
//!   `examples/data/`; every third image is held out for testing, the other
//!   1198 are the training batch.
//! - Model: `e = W₂ · relu(W₁ x + b₁) + b₂`, 64 → 128 → 32, trained with
//!   Adam (lr 0.003).
//! - Loss, per step, on L2-normalised embeddings with margin 1
//!   (pytorch-metric-learning's `ContrastiveLoss` defaults):
//!   the fused all-pairs loss over the whole training batch (717,003 pairs,
//!   no N x N matrix), plus the same loss over the hardest positive and
//!   hardest negative of every image, mined on the device every
//!   `--mine-every` steps and fed to the index-list loss without a trip to
//!   the host.
//! - Every step is one command encoder: forward, mining (when due), both
//!   losses, gradient sum, backward, four Adam updates. Nothing is read back
//!   except every `--report-every` steps: the two loss totals, and the test
//!   embeddings for the verification accuracy at the equal-error-rate
//!   threshold (where false accepts equal false rejects; chance is 50%).

use std::sync::mpsc;
use std::time::Instant;

use contrastive_wgpu::mining::BatchHardBuffers;
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::wgpu::{self, util::DeviceExt};
use contrastive_wgpu::{
    npy, Activation, Adam, AdamState, ContrastiveLoss, Distance, DistanceOptions, GpuContext,
    GradientWrite, InBatchBuffers, IndexPairBuffers, LinearBackwardBuffers, LinearForwardBuffers,
    LinearShape, LossTotals,
};

const FEATURES: usize = 64;
const HIDDEN: usize = 128;
const EMBEDDING: usize = 32;
const LEARNING_RATE: f32 = 0.003;
/// Weight of the mined-pairs loss in the total.
const MINED_WEIGHT: f32 = 1.0;

struct Settings {
    steps: usize,
    mine_every: usize,
    report_every: usize,
}

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn parse_settings() -> Result<Settings, String> {
    let mut settings = Settings {
        steps: 300,
        mine_every: 10,
        report_every: 50,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair
            .get(1)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{} needs a positive integer", pair[0]))?;
        match pair[0].as_str() {
            "--steps" => settings.steps = value,
            "--mine-every" => settings.mine_every = value,
            "--report-every" => settings.report_every = value,
            other => {
                return Err(format!(
                    "unknown option {other}; use --steps, --mine-every or --report-every"
                ))
            }
        }
    }
    Ok(settings)
}

/// Images scaled to [0, 1] and their labels, split into (train, test).
type Split = ((Vec<f32>, Vec<u32>), (Vec<f32>, Vec<u32>));

fn load_digits() -> Result<Split, Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data");
    let images = npy::read_f32_matrix(format!("{dir}/digits_images.npy"))?;
    let labels = npy::read_labels(format!("{dir}/digits_labels.npy"))?;
    if images.shape != [labels.len(), FEATURES] {
        return Err(format!(
            "digits: {:?} images for {} labels",
            images.shape,
            labels.len()
        )
        .into());
    }
    let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, (row, &label)) in images
        .values
        .chunks_exact(FEATURES)
        .zip(&labels)
        .enumerate()
    {
        let part = if i % 3 == 0 { &mut test } else { &mut train };
        part.0.extend(row.iter().map(|&p| p / 16.0));
        part.1.push(label);
    }
    Ok((train, test))
}

/// A dense layer's parameters on the device, with their gradients and
/// Adam states.
struct Layer {
    shape_in_out: (usize, usize),
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    weight_gradient: wgpu::Buffer,
    bias_gradient: wgpu::Buffer,
    weight_adam: AdamState,
    bias_adam: AdamState,
}

impl Layer {
    /// He-initialised weights (normal, variance 2 / inputs), zero bias.
    fn new(
        gpu: &GpuContext,
        (inputs, outputs): (usize, usize),
        rng: &mut SplitMix64,
    ) -> contrastive_wgpu::Result<Self> {
        let scale = (2.0 / inputs as f64).sqrt();
        let weight: Vec<f32> = (0..inputs * outputs)
            .map(|_| (rng.normal() * scale) as f32)
            .collect();
        let adam = Adam::new(LEARNING_RATE);
        Ok(Self {
            shape_in_out: (inputs, outputs),
            weight: upload(gpu, &weight),
            bias: upload(gpu, &vec![0.0; outputs]),
            weight_gradient: zeros(gpu, inputs * outputs),
            bias_gradient: zeros(gpu, outputs),
            weight_adam: AdamState::new(gpu, adam, inputs * outputs)?,
            bias_adam: AdamState::new(gpu, adam, outputs)?,
        })
    }

    fn shape(&self, rows: usize) -> LinearShape {
        LinearShape::new(rows, self.shape_in_out.0, self.shape_in_out.1)
    }

    fn record_forward(
        &self,
        gpu: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        (input, output): (&wgpu::Buffer, &wgpu::Buffer),
        rows: usize,
        activation: Activation,
    ) -> contrastive_wgpu::Result<()> {
        gpu.record_linear_forward(
            encoder,
            LinearForwardBuffers {
                input,
                weight: &self.weight,
                bias: Some(&self.bias),
                output,
            },
            self.shape(rows),
            activation,
        )
    }

    /// Records ∂L/∂W and ∂L/∂b into the layer's gradient buffers (and
    /// ∂L/∂input where `input_gradient` is given) from ∂L/∂output.
    #[allow(clippy::too_many_arguments)]
    fn record_backward(
        &self,
        gpu: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        (input, output): (&wgpu::Buffer, Option<&wgpu::Buffer>),
        (output_gradient, input_gradient): (&wgpu::Buffer, Option<&wgpu::Buffer>),
        rows: usize,
        activation: Activation,
    ) -> contrastive_wgpu::Result<()> {
        gpu.record_linear_backward(
            encoder,
            LinearBackwardBuffers {
                input,
                weight: &self.weight,
                output,
                output_gradient,
                input_gradient,
                weight_gradient: Some(&self.weight_gradient),
                bias_gradient: Some(&self.bias_gradient),
            },
            self.shape(rows),
            activation,
            GradientWrite::Replace,
        )
    }

    fn record_update(
        &mut self,
        gpu: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
    ) -> contrastive_wgpu::Result<()> {
        self.weight_adam
            .record_step(gpu, encoder, &self.weight, &self.weight_gradient)?;
        self.bias_adam
            .record_step(gpu, encoder, &self.bias, &self.bias_gradient)
    }
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

fn upload<T: bytemuck::Pod>(gpu: &GpuContext, values: &[T]) -> wgpu::Buffer {
    gpu.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(values),
            usage: STORAGE,
        })
}

fn zeros(gpu: &GpuContext, values: usize) -> wgpu::Buffer {
    bytes(gpu, 4 * values as u64)
}

fn bytes(gpu: &GpuContext, size: u64) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: STORAGE,
        mapped_at_creation: false,
    })
}

/// Maps `staging` (its copy already submitted) and returns its values.
fn read_staging<T: bytemuck::Pod>(
    gpu: &GpuContext,
    staging: &wgpu::Buffer,
) -> Result<Vec<T>, Box<dyn std::error::Error>> {
    let (sender, receiver) = mpsc::channel();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
    gpu.device().poll(wgpu::PollType::wait_indefinitely())?;
    receiver.recv()??;
    let values = bytemuck::pod_collect_to_vec(&staging.slice(..).get_mapped_range()?);
    staging.unmap();
    Ok(values)
}

fn staging_buffer(gpu: &GpuContext, size: u64) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("train.staging"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Verification accuracy at the equal-error-rate threshold over all pairs
/// of `embeddings` (`1 − EER`), and the threshold.
fn verification(
    gpu: &GpuContext,
    embeddings: &[f32],
    labels: &[u32],
    d: usize,
    options: DistanceOptions,
) -> Result<(f64, f32), Box<dyn std::error::Error>> {
    // Normalised rows are at most 2 apart.
    let edges: Vec<f32> = (0..=800).map(|i| i as f32 * 2.0 / 800.0).collect();
    let histograms = gpu.pair_histograms(embeddings, labels, d, options, &edges)?;
    let (threshold, eer) = histograms
        .equal_error_rate()
        .ok_or("the test set needs similar and dissimilar pairs")?;
    Ok((1.0 - eer, threshold))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = parse_settings()?;
    let ((train_x, train_labels), (test_x, test_labels)) = load_digits()?;
    let (n, n_test) = (train_labels.len(), test_labels.len());
    let gpu = GpuContext::new()?;
    println!("adapter: {}", gpu.adapter());
    println!(
        "data: {n} training and {n_test} test digits of {FEATURES} pixels; model {FEATURES} -> \
         {HIDDEN} (ReLU) -> {EMBEDDING}, Adam lr {LEARNING_RATE}"
    );
    let loss = ContrastiveLoss::pytorch_metric_learning();
    let options = DistanceOptions::new(Distance::Euclidean).normalized();
    let (raw_accuracy, _) = verification(&gpu, &test_x, &test_labels, FEATURES, options)?;
    println!(
        "baseline, raw pixels: test verification accuracy {:.1}% at the EER threshold",
        100.0 * raw_accuracy
    );

    let mut rng = SplitMix64::new(2006);
    let mut hidden_layer = Layer::new(&gpu, (FEATURES, HIDDEN), &mut rng)?;
    let mut output_layer = Layer::new(&gpu, (HIDDEN, EMBEDDING), &mut rng)?;
    let x = upload(&gpu, &train_x);
    let labels = upload(&gpu, &train_labels);
    let hidden = zeros(&gpu, n * HIDDEN);
    let embeddings = zeros(&gpu, n * EMBEDDING);
    let embedding_gradient = zeros(&gpu, n * EMBEDDING);
    let mined_gradient = zeros(&gpu, n * EMBEDDING);
    let hidden_gradient = zeros(&gpu, n * HIDDEN);
    let hardest = bytes(&gpu, 16 * n as u64);
    let mined_pairs = bytes(&gpu, 32 * n as u64);
    let totals_staging = staging_buffer(&gpu, 2 * LossTotals::SIZE);
    let test_input = upload(&gpu, &test_x);
    let test_hidden = zeros(&gpu, n_test * HIDDEN);
    let test_embeddings = zeros(&gpu, n_test * EMBEDDING);
    let test_staging = staging_buffer(&gpu, 4 * (n_test * EMBEDDING) as u64);
    let all_totals_buffer = bytes(&gpu, LossTotals::SIZE);
    let mined_totals_buffer = bytes(&gpu, LossTotals::SIZE);

    println!(
        "{:>6}  {:>10}  {:>10}  {:>12}  {:>9}",
        "step", "all pairs", "mined", "test acc", "threshold"
    );
    let started = Instant::now();
    for step in 0..=settings.steps {
        let device = gpu.device();
        let mut encoder = device.create_command_encoder(&Default::default());
        hidden_layer.record_forward(&gpu, &mut encoder, (&x, &hidden), n, Activation::Relu)?;
        output_layer.record_forward(
            &gpu,
            &mut encoder,
            (&hidden, &embeddings),
            n,
            Activation::Identity,
        )?;
        let report = step % settings.report_every == 0 || step == settings.steps;
        if report {
            hidden_layer.record_forward(
                &gpu,
                &mut encoder,
                (&test_input, &test_hidden),
                n_test,
                Activation::Relu,
            )?;
            output_layer.record_forward(
                &gpu,
                &mut encoder,
                (&test_hidden, &test_embeddings),
                n_test,
                Activation::Identity,
            )?;
            encoder.copy_buffer_to_buffer(
                &test_embeddings,
                0,
                &test_staging,
                0,
                test_staging.size(),
            );
        }
        if step % settings.mine_every == 0 {
            // Per image: its farthest positive and nearest negative, turned
            // into 2 n index pairs on the device.
            gpu.record_batch_hard(
                &mut encoder,
                BatchHardBuffers {
                    x: &embeddings,
                    labels: &labels,
                    out: &hardest,
                },
                (n, EMBEDDING),
                options,
            )?;
            gpu.record_hardest_pairs(&mut encoder, &hardest, &mined_pairs, n)?;
        }
        gpu.record_contrastive_in_batch(
            &mut encoder,
            InBatchBuffers {
                x: &embeddings,
                labels: &labels,
                gradient: Some(&embedding_gradient),
                totals: &all_totals_buffer,
            },
            n,
            EMBEDDING,
            &loss,
        )?;
        gpu.record_contrastive_index_pairs(
            &mut encoder,
            IndexPairBuffers {
                x: &embeddings,
                pairs: &mined_pairs,
                gradient: Some(&mined_gradient),
                pair_values: None,
                totals: &mined_totals_buffer,
            },
            (n, 2 * n, EMBEDDING),
            &loss,
        )?;
        if report {
            encoder.copy_buffer_to_buffer(
                &all_totals_buffer,
                0,
                &totals_staging,
                0,
                LossTotals::SIZE,
            );
            encoder.copy_buffer_to_buffer(
                &mined_totals_buffer,
                0,
                &totals_staging,
                LossTotals::SIZE,
                LossTotals::SIZE,
            );
        }
        if step < settings.steps {
            gpu.record_add_scaled(
                &mut encoder,
                &mined_gradient,
                &embedding_gradient,
                n * EMBEDDING,
                MINED_WEIGHT,
            )?;
            output_layer.record_backward(
                &gpu,
                &mut encoder,
                (&hidden, None),
                (&embedding_gradient, Some(&hidden_gradient)),
                n,
                Activation::Identity,
            )?;
            hidden_layer.record_backward(
                &gpu,
                &mut encoder,
                (&x, Some(&hidden)),
                (&hidden_gradient, None),
                n,
                Activation::Relu,
            )?;
            hidden_layer.record_update(&gpu, &mut encoder)?;
            output_layer.record_update(&gpu, &mut encoder)?;
        }
        gpu.queue().submit([encoder.finish()]);
        if report {
            let totals: Vec<LossTotals> = read_staging(&gpu, &totals_staging)?;
            let test: Vec<f32> = read_staging(&gpu, &test_staging)?;
            let (accuracy, threshold) =
                verification(&gpu, &test, &test_labels, EMBEDDING, options)?;
            println!(
                "{step:>6}  {:>10.4}  {:>10.4}  {:>11.1}%  {threshold:>9.3}",
                totals[0].loss,
                totals[1].loss,
                100.0 * accuracy
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} steps in {seconds:.1} s ({:.1} ms per step, evaluation included); all-pairs loss \
         over {} pairs per step",
        settings.steps,
        1000.0 * seconds / settings.steps as f64,
        n * (n - 1) / 2
    );
    Ok(())
}
