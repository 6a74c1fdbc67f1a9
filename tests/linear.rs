//! GPU dense layers (forward and gradients) against the CPU reference,
//! under the tolerance rule of `contrastive_wgpu::reference::tolerance`.

mod common;

use common::{assert_close, gpu, gpu_with_small_chunks, gpu_with_tiny_chunks, mixed_rows};
use contrastive_wgpu::reference::{self, linear as cpu};
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::wgpu::{self, util::DeviceExt};
use contrastive_wgpu::{
    Activation, Error, GpuContext, GradientWrite, LinearBackwardBuffers, LinearForwardBuffers,
    LinearShape,
};

/// Shapes at and around the 64-wide tile and the 16-value inner step, plus
/// 1 x 1 x 1 and single rows or columns.
const EDGE_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 1),
    (5, 1, 9),
    (63, 16, 64),
    (64, 17, 63),
    (65, 15, 65),
    (129, 64, 33),
    (200, 130, 128),
    (3, 300, 129),
];

/// Weights of a layer: normal, scaled by 1/sqrt(inputs).
fn weights(inputs: usize, outputs: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let scale = 1.0 / (inputs as f64).sqrt();
    (0..inputs * outputs)
        .map(|_| (rng.normal() * scale) as f32)
        .collect()
}

/// Runs forward and backward on `gpu` and checks both against the mirror.
fn check_layer(gpu: &GpuContext, shape: LinearShape, activation: Activation, seed: u64) {
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = shape;
    let what = format!("{shape:?} {activation:?}");
    let x = mixed_rows(rows, inputs, seed);
    let w = weights(inputs, outputs, seed + 1);
    let b = mixed_rows(1, outputs, seed + 2);
    for bias in [None, Some(b.as_slice())] {
        let y = gpu.linear_forward(&x, &w, bias, shape, activation).unwrap();
        let expected = cpu::linear_forward(&x, &w, bias, shape, activation).unwrap();
        assert_close(
            &format!("{what} forward, bias {}", bias.is_some()),
            &y,
            &expected,
        );
    }
    let y = gpu
        .linear_forward(&x, &w, Some(&b), shape, activation)
        .unwrap();
    let dy = mixed_rows(rows, outputs, seed + 3);
    let grads = gpu
        .linear_backward(&x, &w, Some(&y), &dy, shape, activation)
        .unwrap();
    let expected = cpu::linear_backward(&x, &w, Some(&y), &dy, shape, activation).unwrap();
    assert_close(
        &format!("{what} input gradient"),
        &grads.input,
        &expected.input,
    );
    assert_close(
        &format!("{what} weight gradient"),
        &grads.weight,
        &expected.weight,
    );
    assert_close(
        &format!("{what} bias gradient"),
        &grads.bias,
        &expected.bias,
    );
}

#[test]
fn edge_shapes_match_the_reference() {
    for (seed, &(rows, inputs, outputs)) in EDGE_SHAPES.iter().enumerate() {
        for activation in [Activation::Identity, Activation::Relu] {
            check_layer(
                gpu(),
                LinearShape::new(rows, inputs, outputs),
                activation,
                10 * seed as u64,
            );
        }
    }
}

#[test]
fn random_shapes_match_the_reference() {
    let mut rng = SplitMix64::new(99);
    for case in 0..12 {
        let shape = LinearShape::new(
            1 + rng.below(300) as usize,
            1 + rng.below(140) as usize,
            1 + rng.below(140) as usize,
        );
        let activation = if case % 2 == 0 {
            Activation::Relu
        } else {
            Activation::Identity
        };
        check_layer(gpu(), shape, activation, 1000 + case);
    }
}

#[test]
fn work_split_into_many_chunks_and_dispatches_matches_the_reference() {
    // 1 KiB bindings and 2 workgroups per dimension: a few rows per chunk,
    // and more than 128 columns or rows take several dispatches.
    for (rows, inputs, outputs) in [(300, 20, 12), (70, 3, 5)] {
        for activation in [Activation::Identity, Activation::Relu] {
            check_layer(
                gpu_with_tiny_chunks(),
                LinearShape::new(rows, inputs, outputs),
                activation,
                7,
            );
        }
    }
    for (rows, inputs, outputs) in [(40, 3, 300), (40, 300, 3), (260, 5, 131)] {
        check_layer(
            gpu_with_small_chunks(),
            LinearShape::new(rows, inputs, outputs),
            Activation::Relu,
            8,
        );
    }
}

#[test]
fn the_comparison_fails_on_a_perturbed_result() {
    let shape = LinearShape::new(70, 33, 9);
    let x = mixed_rows(70, 33, 11);
    let w = weights(33, 9, 12);
    let mut y = gpu()
        .linear_forward(&x, &w, None, shape, Activation::Identity)
        .unwrap();
    let expected = cpu::linear_forward(&x, &w, None, shape, Activation::Identity).unwrap();
    assert!(reference::compare(&y, &expected.values, &expected.tolerances).passed());
    let victim = 321;
    y[victim] = (expected.values[victim] + 3.0 * expected.tolerances[victim].max(1e-6)) as f32;
    let comparison = reference::compare(&y, &expected.values, &expected.tolerances);
    assert_eq!(comparison.failures, 1);
    assert_eq!(comparison.worst_index, victim);
}

#[test]
fn results_are_bitwise_identical_run_after_run() {
    let shape = LinearShape::new(333, 70, 45);
    let x = mixed_rows(333, 70, 31);
    let w = weights(70, 45, 32);
    let dy = mixed_rows(333, 45, 33);
    let run = || {
        let y = gpu()
            .linear_forward(&x, &w, Some(&w[..45]), shape, Activation::Relu)
            .unwrap();
        let g = gpu()
            .linear_backward(&x, &w, Some(&y), &dy, shape, Activation::Relu)
            .unwrap();
        (y, g)
    };
    let (y1, g1) = run();
    let (y2, g2) = run();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y1), bits(&y2));
    assert_eq!(bits(&g1.input), bits(&g2.input));
    assert_eq!(bits(&g1.weight), bits(&g2.weight));
    assert_eq!(bits(&g1.bias), bits(&g2.bias));
}

fn storage(gpu: &GpuContext, values: &[f32]) -> wgpu::Buffer {
    gpu.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(values),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

fn read(gpu: &GpuContext, buffer: &wgpu::Buffer) -> Vec<f32> {
    let device = gpu.device();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    gpu.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let values = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    values
}

#[test]
fn caller_owned_buffers_on_the_callers_encoder_match_the_slice_api_and_accumulate() {
    let gpu = gpu();
    let shape = LinearShape::new(150, 40, 24);
    let x = mixed_rows(150, 40, 41);
    let w = weights(40, 24, 42);
    let b = mixed_rows(1, 24, 43);
    let dy = mixed_rows(150, 24, 44);
    let y_slices = gpu
        .linear_forward(&x, &w, Some(&b), shape, Activation::Relu)
        .unwrap();
    let g_slices = gpu
        .linear_backward(&x, &w, Some(&y_slices), &dy, shape, Activation::Relu)
        .unwrap();

    let (x_buf, w_buf, b_buf, dy_buf) = (
        storage(gpu, &x),
        storage(gpu, &w),
        storage(gpu, &b),
        storage(gpu, &dy),
    );
    let zeros = |n: usize| storage(gpu, &vec![0.0; n]);
    let (y_buf, dx_buf, dw_buf, db_buf) =
        (zeros(150 * 24), zeros(150 * 40), zeros(40 * 24), zeros(24));
    // Forward, then the gradients twice: replaced, then accumulated onto.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    gpu.record_linear_forward(
        &mut encoder,
        LinearForwardBuffers {
            input: &x_buf,
            weight: &w_buf,
            bias: Some(&b_buf),
            output: &y_buf,
        },
        shape,
        Activation::Relu,
    )
    .unwrap();
    for write in [GradientWrite::Replace, GradientWrite::Accumulate] {
        gpu.record_linear_backward(
            &mut encoder,
            LinearBackwardBuffers {
                input: &x_buf,
                weight: &w_buf,
                output: Some(&y_buf),
                output_gradient: &dy_buf,
                input_gradient: Some(&dx_buf),
                weight_gradient: Some(&dw_buf),
                bias_gradient: Some(&db_buf),
            },
            shape,
            Activation::Relu,
            write,
        )
        .unwrap();
    }
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(read(gpu, &y_buf), y_slices);
    // g + g is exact, so accumulating the same gradient twice doubles it.
    let doubled = |v: &[f32]| v.iter().map(|g| 2.0 * g).collect::<Vec<_>>();
    assert_eq!(read(gpu, &dx_buf), doubled(&g_slices.input));
    assert_eq!(read(gpu, &dw_buf), doubled(&g_slices.weight));
    assert_eq!(read(gpu, &db_buf), doubled(&g_slices.bias));
}

#[test]
fn bad_input_gives_typed_errors() {
    let gpu = gpu();
    let shape = LinearShape::new(4, 3, 2);
    let (x, w, y) = (vec![0.0f32; 12], vec![0.0f32; 6], vec![0.0f32; 8]);
    let id = Activation::Identity;
    assert!(matches!(
        gpu.linear_forward(&x, &w, None, LinearShape::new(4, 0, 2), id),
        Err(Error::ZeroDimension { .. })
    ));
    assert!(matches!(
        gpu.linear_forward(&x, &w, None, LinearShape::new(0, 3, 2), id),
        Err(Error::ZeroDimension { .. })
    ));
    assert!(matches!(
        gpu.linear_forward(&x[..11], &w, None, shape, id),
        Err(Error::LengthMismatch {
            what: "input",
            expected: 12,
            actual: 11
        })
    ));
    assert!(matches!(
        gpu.linear_forward(&x, &w[..5], None, shape, id),
        Err(Error::LengthMismatch { what: "weight", .. })
    ));
    assert!(matches!(
        gpu.linear_forward(&x, &w, Some(&[1.0]), shape, id),
        Err(Error::LengthMismatch { what: "bias", .. })
    ));
    assert!(matches!(
        gpu.linear_backward(&x, &w, None, &y[..7], shape, id),
        Err(Error::LengthMismatch {
            what: "output_gradient",
            ..
        })
    ));
    let missing = gpu.linear_backward(&x, &w, None, &y, shape, Activation::Relu);
    match missing {
        Err(error @ Error::MissingInput { what: "output", .. }) => {
            assert!(error.to_string().contains("ReLU"), "{error}");
        }
        other => panic!("expected a missing-output error, got {other:?}"),
    }
    assert!(matches!(
        cpu::linear_backward(&x, &w, None, &y, shape, Activation::Relu),
        Err(Error::MissingInput { .. })
    ));
    // A weight matrix larger than one binding (1 KiB here) cannot be split.
    let big = LinearShape::new(2, 20, 20);
    let error = gpu_with_tiny_chunks()
        .linear_forward(&[0.0; 40], &[0.0; 400], None, big, id)
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::TooLarge {
                limit_name: "max_storage_buffer_binding_size",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("20 x 20 weight matrix"),
        "{error}"
    );
    // A caller buffer without STORAGE, or too small.
    let device = gpu.device();
    let plain = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 48,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let small = storage(gpu, &[0.0; 5]);
    let (x_buf, w_buf, y_buf) = (storage(gpu, &x), storage(gpu, &w), storage(gpu, &y));
    let mut encoder = device.create_command_encoder(&Default::default());
    let forward = |input, weight, output, encoder: &mut wgpu::CommandEncoder| {
        gpu.record_linear_forward(
            encoder,
            LinearForwardBuffers {
                input,
                weight,
                bias: None,
                output,
            },
            shape,
            id,
        )
    };
    assert!(matches!(
        forward(&plain, &w_buf, &y_buf, &mut encoder),
        Err(Error::BufferUsage { what: "input", .. })
    ));
    assert!(matches!(
        forward(&x_buf, &small, &y_buf, &mut encoder),
        Err(Error::BufferTooSmall {
            what: "weight",
            needed: 24,
            actual: 20
        })
    ));
    assert!(matches!(
        gpu.record_linear_backward(
            &mut encoder,
            LinearBackwardBuffers {
                input: &x_buf,
                weight: &w_buf,
                output: None,
                output_gradient: &y_buf,
                input_gradient: None,
                weight_gradient: Some(&small),
                bias_gradient: None,
            },
            shape,
            id,
            GradientWrite::Replace,
        ),
        Err(Error::BufferTooSmall {
            what: "weight_gradient",
            ..
        })
    ));
}
