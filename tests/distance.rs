//! GPU pairwise distances against the CPU reference, under the tolerance
//! rule of `contrastive_wgpu::reference::tolerance`.

mod common;

use common::{gpu, gpu_with_tiny_chunks, mixed_rows};
use contrastive_wgpu::reference::{self, distance as cpu};
use contrastive_wgpu::wgpu;
use contrastive_wgpu::{
    Distance, DistanceBuffers, DistanceOptions, Error, GpuContext, PairwiseShape,
};
use proptest::prelude::*;
use wgpu::util::DeviceExt;

/// Every distance, on raw and on normalised rows.
fn all_options() -> Vec<DistanceOptions> {
    Distance::ALL
        .iter()
        .flat_map(|&kind| {
            [
                DistanceOptions::new(kind),
                DistanceOptions::new(kind).normalized(),
            ]
        })
        .collect()
}

/// Computes on `gpu` and asserts every value is within the rule.
fn check_against_reference(
    gpu: &GpuContext,
    x: &[f32],
    y: &[f32],
    shape: PairwiseShape,
    options: DistanceOptions,
) {
    let on_gpu = gpu.pairwise_distances(x, y, shape, options).unwrap();
    let expected = cpu::pairwise_distances(x, y, shape, options).unwrap();
    let tolerances = cpu::pairwise_tolerances(x, y, shape, options).unwrap();
    let comparison = reference::compare(&on_gpu, &expected, &tolerances);
    assert!(
        comparison.passed(),
        "{shape:?} {options:?}: {} of {} outside tolerance; worst at {} (gpu {}, cpu {}, tol {:e})",
        comparison.failures,
        comparison.compared,
        comparison.worst_index,
        on_gpu[comparison.worst_index],
        expected[comparison.worst_index],
        tolerances[comparison.worst_index],
    );
}

/// Shapes at and around the 64-row tile and the 4-value vector width,
/// plus 1 x 1 x 1 and D up to 1024.
const EDGE_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 1, 4),
    (1, 7, 5),
    (63, 64, 3),
    (64, 64, 4),
    (65, 63, 7),
    (127, 129, 16),
    (128, 128, 17),
    (3, 200, 1024),
    (129, 2, 1023),
    (200, 191, 130),
];

#[test]
fn edge_shapes_match_the_reference_for_every_distance() {
    for (seed, &(n, m, d)) in EDGE_SHAPES.iter().enumerate() {
        let shape = PairwiseShape::new(n, m, d);
        let x = mixed_rows(n, d, 2 * seed as u64);
        let y = mixed_rows(m, d, 2 * seed as u64 + 1);
        for options in all_options() {
            check_against_reference(gpu(), &x, &y, shape, options);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn random_shapes_match_the_reference(
        n in 1usize..160,
        m in 1usize..160,
        d in 1usize..300,
        seed in any::<u64>(),
        option_index in 0usize..8,
    ) {
        let shape = PairwiseShape::new(n, m, d);
        let x = mixed_rows(n, d, seed);
        let y = mixed_rows(m, d, seed ^ 0x5555);
        check_against_reference(gpu(), &x, &y, shape, all_options()[option_index]);
    }
}

#[test]
fn the_comparison_fails_on_a_perturbed_result() {
    let shape = PairwiseShape::new(70, 33, 9);
    let x = mixed_rows(70, 9, 11);
    let y = mixed_rows(33, 9, 12);
    for options in all_options() {
        let mut on_gpu = gpu().pairwise_distances(&x, &y, shape, options).unwrap();
        let expected = cpu::pairwise_distances(&x, &y, shape, options).unwrap();
        let tolerances = cpu::pairwise_tolerances(&x, &y, shape, options).unwrap();
        assert!(reference::compare(&on_gpu, &expected, &tolerances).passed());
        let victim = 1234;
        // Three tolerances away from the reference: must be caught.
        on_gpu[victim] = (expected[victim] + 3.0 * tolerances[victim].max(1e-6)) as f32;
        let comparison = reference::compare(&on_gpu, &expected, &tolerances);
        assert_eq!(comparison.failures, 1, "{options:?}");
        assert_eq!(comparison.worst_index, victim, "{options:?}");
        // A NaN is caught too.
        on_gpu[victim] = f32::NAN;
        assert_eq!(
            reference::compare(&on_gpu, &expected, &tolerances).failures,
            1
        );
    }
}

#[test]
fn results_are_bitwise_identical_run_after_run() {
    let shape = PairwiseShape::new(150, 140, 77);
    let x = mixed_rows(150, 77, 21);
    let y = mixed_rows(140, 77, 22);
    for options in all_options() {
        let first = gpu().pairwise_distances(&x, &y, shape, options).unwrap();
        let second = gpu().pairwise_distances(&x, &y, shape, options).unwrap();
        let first_bits: Vec<u32> = first.iter().map(|v| v.to_bits()).collect();
        let second_bits: Vec<u32> = second.iter().map(|v| v.to_bits()).collect();
        assert_eq!(first_bits, second_bits, "{options:?}");
    }
}

#[test]
fn identical_rows_are_exactly_zero_apart() {
    let d = 37;
    let x = mixed_rows(40, d, 31);
    // Y holds the rows of X in reverse order.
    let y: Vec<f32> = x.chunks(d).rev().flatten().copied().collect();
    let shape = PairwiseShape::new(40, 40, d);
    for distance in [
        Distance::Euclidean,
        Distance::SquaredEuclidean,
        Distance::Cosine,
    ] {
        for options in [
            DistanceOptions::new(distance),
            DistanceOptions::new(distance).normalized(),
        ] {
            let out = gpu().pairwise_distances(&x, &y, shape, options).unwrap();
            for i in 0..40 {
                assert_eq!(out[i * 40 + (39 - i)], 0.0, "{options:?} row {i}");
            }
        }
    }
}

#[test]
fn near_duplicate_rows_keep_their_true_distance() {
    let x = [512695.0f32];
    let y = [512804.0f32];
    // The expansion ||x||^2 + ||y||^2 - 2 x.y loses the answer in f32 (this
    // is what torch.cdist's matrix-multiply path returns).
    let expansion = x[0] * x[0] + y[0] * y[0] - 2.0 * x[0] * y[0];
    assert_ne!(expansion.max(0.0).sqrt(), 109.0);
    let shape = PairwiseShape::new(1, 1, 1);
    let euclidean = gpu()
        .pairwise_distances(&x, &y, shape, DistanceOptions::new(Distance::Euclidean))
        .unwrap();
    assert_eq!(euclidean, vec![109.0]);
    let squared = gpu()
        .pairwise_distances(
            &x,
            &y,
            shape,
            DistanceOptions::new(Distance::SquaredEuclidean),
        )
        .unwrap();
    assert_eq!(squared, vec![109.0 * 109.0]);

    // The same pair inside a 128-dimensional row of large shared values.
    let d = 128;
    let mut a = vec![512695.0f32; d];
    let b = a.clone();
    a[77] = 512804.0;
    let out = gpu()
        .pairwise_distances(
            &a,
            &b,
            PairwiseShape::new(1, 1, d),
            DistanceOptions::default(),
        )
        .unwrap();
    assert_eq!(out, vec![109.0]);

    // Rows ~1e-30 apart, where the squares underflow f32.
    let tiny = [1e-30f32, 0.0, 0.0, 3e-30, -2e-31, 1e-30];
    let shape = PairwiseShape::new(3, 3, 2);
    let out = gpu()
        .pairwise_distances(&tiny, &tiny, shape, DistanceOptions::default())
        .unwrap();
    assert!(
        (out[1] / (1e-30f32 * 10f32.sqrt()) - 1.0).abs() < 1e-5,
        "{out:?}"
    );
    check_against_reference(gpu(), &tiny, &tiny, shape, DistanceOptions::default());
}

#[test]
fn euclidean_distance_is_never_nan_for_finite_input() {
    let extremes = [
        f32::MAX,
        -f32::MAX,
        1e30,
        -1e30,
        1e-30,
        f32::MIN_POSITIVE,
        0.0,
        -0.0,
        1.0,
        3.4e19,
    ];
    let d = 3;
    let rows: Vec<f32> = (0..extremes.len() * d)
        .map(|k| extremes[(k * 7 + k / 3) % extremes.len()])
        .collect();
    let n = extremes.len();
    let shape = PairwiseShape::new(n, n, d);
    for options in [
        DistanceOptions::new(Distance::Euclidean),
        DistanceOptions::new(Distance::SquaredEuclidean),
        DistanceOptions::new(Distance::Euclidean).normalized(),
        DistanceOptions::new(Distance::Cosine),
    ] {
        let out = gpu()
            .pairwise_distances(&rows, &rows, shape, options)
            .unwrap();
        assert!(out.iter().all(|v| !v.is_nan()), "{options:?}: {out:?}");
        for i in 0..n {
            assert_eq!(out[i * n + i], 0.0, "{options:?} diagonal");
        }
        // Distances beyond f32::MAX are +inf, the others match the reference.
        check_against_reference(gpu(), &rows, &rows, shape, options);
    }
}

#[test]
fn work_split_into_many_chunks_matches_the_reference() {
    // 1 KiB bindings and 2 workgroups per dimension force blocks of at most
    // a few rows and columns, several aligned output offsets and many
    // prepare passes.
    let tiny = gpu_with_tiny_chunks();
    for &(n, m, d) in &[(1, 1, 1), (37, 300, 5), (300, 41, 17), (130, 129, 60)] {
        let x = mixed_rows(n, d, 41);
        let y = mixed_rows(m, d, 42);
        for options in all_options() {
            check_against_reference(tiny, &x, &y, PairwiseShape::new(n, m, d), options);
        }
    }
}

fn storage_buffer(gpu: &GpuContext, values: &[f32]) -> wgpu::Buffer {
    gpu.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test input"),
            contents: bytemuck::cast_slice(values),
            usage: wgpu::BufferUsages::STORAGE,
        })
}

fn output_buffer(gpu: &GpuContext, values: usize) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test output"),
        size: (values * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

fn read_buffer(gpu: &GpuContext, buffer: &wgpu::Buffer) -> Vec<f32> {
    let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test staging"),
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    gpu.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    gpu.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let values = bytemuck::pod_collect_to_vec(&staging.slice(..).get_mapped_range().unwrap());
    staging.unmap();
    values
}

#[test]
fn caller_owned_buffers_on_the_callers_encoder_match_the_slice_api() {
    for gpu in [gpu(), gpu_with_tiny_chunks()] {
        let (n, m, d) = (130, 67, 21);
        let shape = PairwiseShape::new(n, m, d);
        let x = mixed_rows(n, d, 51);
        let y = mixed_rows(m, d, 52);
        let x_buffer = storage_buffer(gpu, &x);
        let y_buffer = storage_buffer(gpu, &y);
        let euclidean_out = output_buffer(gpu, n * m);
        let cosine_out = output_buffer(gpu, n * m);
        let euclidean = DistanceOptions::new(Distance::Euclidean);
        let cosine = DistanceOptions::new(Distance::Cosine);
        // Two computations recorded into one encoder share the workspace.
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for (out, options) in [(&euclidean_out, euclidean), (&cosine_out, cosine)] {
            let buffers = DistanceBuffers {
                x: &x_buffer,
                y: &y_buffer,
                out,
            };
            gpu.record_pairwise_distances(&mut encoder, buffers, shape, options)
                .unwrap();
        }
        gpu.queue().submit([encoder.finish()]);
        for (out, options) in [(&euclidean_out, euclidean), (&cosine_out, cosine)] {
            let recorded = read_buffer(gpu, out);
            let sliced = gpu.pairwise_distances(&x, &y, shape, options).unwrap();
            assert_eq!(recorded, sliced, "{options:?}");
            check_against_reference(gpu, &x, &y, shape, options);
        }
    }
}

#[test]
fn a_device_the_caller_already_has_can_be_wrapped() {
    let device = gpu().device().clone();
    let queue = gpu().queue().clone();
    let wrapped = GpuContext::from_device(device, queue);
    assert_eq!(wrapped.adapter(), gpu().adapter());
    let x = mixed_rows(5, 3, 61);
    check_against_reference(
        &wrapped,
        &x,
        &x,
        PairwiseShape::new(5, 5, 3),
        DistanceOptions::default(),
    );
}

#[test]
fn bad_slices_give_typed_errors() {
    let options = DistanceOptions::default();
    let x = vec![0.0f32; 6];
    let cases = [
        (PairwiseShape::new(2, 2, 3), &x[..6], &x[..5], "Y"),
        (PairwiseShape::new(3, 2, 3), &x[..6], &x[..6], "X"),
    ];
    for (shape, a, b, which) in cases {
        match gpu().pairwise_distances(a, b, shape, options) {
            Err(Error::LengthMismatch { what, .. }) => assert_eq!(what, which),
            other => panic!("expected a length mismatch for {which}, got {other:?}"),
        }
        assert!(matches!(
            cpu::pairwise_distances(a, b, shape, options),
            Err(Error::LengthMismatch { .. })
        ));
    }
    for (shape, name) in [
        (PairwiseShape::new(2, 2, 0), "D"),
        (PairwiseShape::new(0, 2, 3), "N"),
        (PairwiseShape::new(2, 0, 3), "M"),
    ] {
        let error = gpu()
            .pairwise_distances(&[], &[], shape, options)
            .unwrap_err();
        assert!(matches!(error, Error::ZeroDimension { .. }), "{error:?}");
        assert!(error.to_string().starts_with(name), "{error}");
        assert!(cpu::pairwise_distances::<f32>(&[], &[], shape, options).is_err());
    }
    let huge = PairwiseShape::new(usize::MAX / 2, 4, 1);
    assert!(matches!(
        gpu().pairwise_distances(&x, &x, huge, options),
        Err(Error::SizeOverflow { .. })
    ));
}

#[test]
fn bad_buffers_give_typed_errors() {
    let gpu = gpu();
    let shape = PairwiseShape::new(4, 4, 2);
    let good = storage_buffer(gpu, &[0.0; 8]);
    let short = storage_buffer(gpu, &[0.0; 7]);
    let out = output_buffer(gpu, 16);
    let short_out = output_buffer(gpu, 15);
    let not_storage = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let mut record = |x, y, out| {
        gpu.record_pairwise_distances(
            &mut encoder,
            DistanceBuffers { x, y, out },
            shape,
            DistanceOptions::default(),
        )
    };
    assert!(matches!(
        record(&short, &good, &out),
        Err(Error::BufferTooSmall { what: "x", .. })
    ));
    assert!(matches!(
        record(&good, &short, &out),
        Err(Error::BufferTooSmall { what: "y", .. })
    ));
    assert!(matches!(
        record(&good, &good, &short_out),
        Err(Error::BufferTooSmall { what: "out", .. })
    ));
    assert!(matches!(
        record(&good, &not_storage, &out),
        Err(Error::BufferUsage { what: "y", .. })
    ));
    assert!(record(&good, &good, &out).is_ok());
}

#[test]
fn a_row_the_device_cannot_bind_is_a_clear_error() {
    // Bindings capped at 1 KiB cannot hold one row of 300 values.
    let d = 300;
    let x = vec![1.0f32; d];
    let error = gpu_with_tiny_chunks()
        .pairwise_distances(
            &x,
            &x,
            PairwiseShape::new(1, 1, d),
            DistanceOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(error, Error::TooLarge { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("max_storage_buffer_binding_size"),
        "{error}"
    );
}
