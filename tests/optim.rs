//! GPU optimizer steps against the CPU reference, under the tolerance rule
//! of `contrastive_wgpu::reference::tolerance`, and the reference itself on
//! worked values.

mod common;

use common::{assert_close, gpu, gpu_with_small_chunks, gpu_with_tiny_chunks, mixed_rows};
use contrastive_wgpu::reference::optim as cpu;
use contrastive_wgpu::wgpu::{self, util::DeviceExt};
use contrastive_wgpu::{Adam, AdamState, Error, GpuContext, SgdBuffers, SgdMomentum};

/// Sizes around the 64-value workgroup and the 1 KiB / 4 KiB test
/// bindings, and one large enough for several full-size dispatches.
const SIZES: &[usize] = &[1, 63, 64, 65, 255, 257, 1025, 70_001];

fn run_adam(gpu: &GpuContext, len: usize, adam: &Adam, steps: u64, seed: u64) {
    let mut p = mixed_rows(1, len, seed);
    let (mut m, mut v) = (vec![0.0f32; len], vec![0.0f32; len]);
    for step in 1..=steps {
        // A new gradient each step; each step starts from the GPU's state.
        let g = mixed_rows(1, len, seed + step);
        let expected = cpu::adam_step(&p, &g, (&m, &v), adam, step).unwrap();
        gpu.adam_step(&mut p, &g, (&mut m, &mut v), adam, step)
            .unwrap();
        let what = format!("adam len {len} step {step} {adam:?}");
        assert_close(&format!("{what} parameters"), &p, &expected.parameters);
        assert_close(&format!("{what} m"), &m, &expected.first_moment);
        assert_close(&format!("{what} v"), &v, &expected.second_moment);
    }
}

fn run_sgd(gpu: &GpuContext, len: usize, sgd: &SgdMomentum, steps: u64, seed: u64) {
    let mut p = mixed_rows(1, len, seed);
    let mut u = vec![0.0f32; len];
    for step in 1..=steps {
        let g = mixed_rows(1, len, seed + step);
        let with_buffer = sgd.momentum > 0.0;
        let expected = cpu::sgd_step(&p, &g, with_buffer.then_some(&u[..]), sgd).unwrap();
        gpu.sgd_step(&mut p, &g, with_buffer.then_some(&mut u[..]), sgd)
            .unwrap();
        let what = format!("sgd len {len} step {step} {sgd:?}");
        assert_close(&format!("{what} parameters"), &p, &expected.parameters);
        if let Some(expected_u) = &expected.momentum_buffer {
            assert_close(&format!("{what} momentum"), &u, expected_u);
        }
    }
}

#[test]
fn adam_matches_the_reference_over_several_steps() {
    for (seed, &len) in SIZES.iter().enumerate() {
        let seed = 100 * seed as u64;
        run_adam(gpu(), len, &Adam::new(0.01), 4, seed);
        run_adam(
            gpu(),
            len,
            &Adam::new(0.003).with_weight_decay(0.1),
            3,
            seed + 50,
        );
    }
}

#[test]
fn sgd_matches_the_reference_with_and_without_momentum() {
    let nesterov = SgdMomentum {
        nesterov: true,
        weight_decay: 0.01,
        ..SgdMomentum::new(0.05, 0.9)
    };
    for (seed, &len) in SIZES.iter().enumerate() {
        let seed = 100 * seed as u64;
        run_sgd(gpu(), len, &SgdMomentum::new(0.1, 0.0), 2, seed);
        run_sgd(gpu(), len, &SgdMomentum::new(0.1, 0.9), 3, seed + 10);
        run_sgd(gpu(), len, &nesterov, 3, seed + 20);
    }
}

#[test]
fn add_scaled_matches_the_reference() {
    for (seed, &len) in SIZES.iter().enumerate() {
        let x = mixed_rows(1, len, 7 + seed as u64);
        let mut y = mixed_rows(1, len, 8 + seed as u64);
        let expected = cpu::add_scaled(&x, &y, -0.75).unwrap();
        gpu().add_scaled(&x, &mut y, -0.75).unwrap();
        assert_close(&format!("add_scaled len {len}"), &y, &expected);
    }
}

#[test]
fn buffers_larger_than_a_binding_are_updated_chunk_by_chunk() {
    // 1 KiB and 4 KiB bindings with 2 x 2 workgroups per dispatch: many
    // chunks, and several dispatches per chunk.
    for gpu in [gpu_with_tiny_chunks(), gpu_with_small_chunks()] {
        for len in [255, 1000, 5003] {
            run_adam(gpu, len, &Adam::new(0.01), 2, len as u64);
            run_sgd(gpu, len, &SgdMomentum::new(0.1, 0.9), 2, len as u64);
            let x = mixed_rows(1, len, 3);
            let mut y = mixed_rows(1, len, 4);
            let expected = cpu::add_scaled(&x, &y, 2.0).unwrap();
            gpu.add_scaled(&x, &mut y, 2.0).unwrap();
            assert_close("add_scaled in chunks", &y, &expected);
        }
    }
}

#[test]
fn the_comparison_fails_on_a_perturbed_result() {
    let len = 500;
    let (mut p, g) = (mixed_rows(1, len, 1), mixed_rows(1, len, 2));
    let (mut m, mut v) = (vec![0.0f32; len], vec![0.0f32; len]);
    let adam = Adam::new(0.01);
    let expected = cpu::adam_step(&p, &g, (&m, &v), &adam, 1).unwrap();
    gpu()
        .adam_step(&mut p, &g, (&mut m, &mut v), &adam, 1)
        .unwrap();
    assert!(expected.parameters.compare(&p).passed());
    let victim = 123;
    p[victim] = (expected.parameters.values[victim]
        + 3.0 * expected.parameters.tolerances[victim].max(1e-6)) as f32;
    let comparison = expected.parameters.compare(&p);
    assert_eq!(comparison.failures, 1);
    assert_eq!(comparison.worst_index, victim);
}

#[test]
fn the_reference_reproduces_worked_steps() {
    // Adam's first step from zero moments moves each parameter by about lr
    // against the gradient's sign: m = (1 - b1) g, v = (1 - b2) g², and the
    // bias corrections (1 - b1) and (1 - b2) undo the betas. The settings are
    // f32, so the worked numbers use their f32 values.
    let adam = Adam::new(0.1);
    let (lr, b1, b2) = (f64::from(0.1f32), f64::from(0.9f32), f64::from(0.999f32));
    let eps = f64::from(1e-8f32);
    let r = cpu::adam_step(
        &[1.0f64, -2.0],
        &[0.5, -4.0],
        (&[0.0, 0.0], &[0.0, 0.0]),
        &adam,
        1,
    )
    .unwrap();
    assert!((r.first_moment.values[0] - (1.0 - b1) * 0.5).abs() < 1e-15);
    assert!((r.second_moment.values[1] - (1.0 - b2) * 16.0).abs() < 1e-15);
    // p - lr g / (|g| + eps)
    let expected = [1.0 - lr * 0.5 / (0.5 + eps), -2.0 + lr * 4.0 / (4.0 + eps)];
    for (got, want) in r.parameters.values.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
    assert!((r.parameters.values[0] - 0.9).abs() < 1e-7);
    // AdamW's decay: p (1 - lr wd) before the step; g = 0 moves nothing else.
    let adamw = Adam::new(0.1).with_weight_decay(0.5);
    let r = cpu::adam_step(&[2.0f64], &[0.0], (&[0.0], &[0.0]), &adamw, 3).unwrap();
    assert!((r.parameters.values[0] - 2.0 * (1.0 - lr * f64::from(0.5f32))).abs() < 1e-15);

    // SGD with momentum 0.9 over two steps of g = 1 from p = 0: u = 1, then
    // 1.9; p = -0.1, then -0.29. Nesterov steps along g + 0.9 u instead.
    // (Again with the f32 settings' values: lr and mu are not 0.1 and 0.9
    // exactly.)
    let sgd = SgdMomentum::new(0.1, 0.9);
    let mu = f64::from(0.9f32);
    let first = cpu::sgd_step(&[0.0f64], &[1.0], Some(&[0.0]), &sgd).unwrap();
    let u1 = first.momentum_buffer.unwrap().values;
    assert_eq!(u1, vec![1.0]);
    let p1 = first.parameters.values;
    assert!((p1[0] + lr).abs() < 1e-15);
    let second = cpu::sgd_step(&p1, &[1.0], Some(&u1), &sgd).unwrap();
    assert!((second.momentum_buffer.unwrap().values[0] - (1.0 + mu)).abs() < 1e-15);
    assert!((second.parameters.values[0] + lr * (2.0 + mu)).abs() < 1e-15);
    let nesterov = SgdMomentum {
        nesterov: true,
        ..sgd
    };
    let n = cpu::sgd_step(&[0.0f64], &[1.0], Some(&[0.0]), &nesterov).unwrap();
    assert!((n.parameters.values[0] + lr * (1.0 + mu)).abs() < 1e-15);
    let plain = cpu::sgd_step(&[1.0f64], &[2.0], None, &SgdMomentum::new(0.25, 0.0)).unwrap();
    assert_eq!(plain.parameters.values, vec![0.5]);
    assert!(plain.momentum_buffer.is_none());
}

#[test]
fn steps_are_bitwise_reproducible_and_adam_state_matches_the_slice_api() {
    let len = 3000;
    let start = mixed_rows(1, len, 61);
    let grads: Vec<Vec<f32>> = (0..3).map(|s| mixed_rows(1, len, 62 + s)).collect();
    let adam = Adam::new(0.02).with_weight_decay(0.01);
    let slices = || {
        let mut p = start.clone();
        let (mut m, mut v) = (vec![0.0f32; len], vec![0.0f32; len]);
        for (step, g) in (1..).zip(&grads) {
            gpu()
                .adam_step(&mut p, g, (&mut m, &mut v), &adam, step)
                .unwrap();
        }
        p
    };
    let first = slices();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&first), bits(&slices()));

    // The same three steps recorded through AdamState into one encoder.
    let gpu = gpu();
    let device = gpu.device();
    let buffer = |values: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(values),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let parameters = buffer(&start);
    let gradients: Vec<wgpu::Buffer> = grads.iter().map(|g| buffer(g)).collect();
    let mut state = AdamState::new(gpu, adam, len).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    for g in &gradients {
        state
            .record_step(gpu, &mut encoder, &parameters, g)
            .unwrap();
    }
    assert_eq!(state.steps(), 3);
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: parameters.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(&parameters, 0, &staging, 0, parameters.size());
    gpu.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let recorded: Vec<f32> =
        bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    assert_eq!(bits(&recorded), bits(&first));
}

#[test]
fn bad_settings_and_input_give_typed_errors() {
    let gpu = gpu();
    let (mut p, g) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    let (mut m, mut v) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    let setting = |result: Result<(), Error>| match result {
        Err(Error::InvalidSetting { what, .. }) => what,
        other => panic!("expected an invalid setting, got {other:?}"),
    };
    let mut adam_with = |adam: Adam, step| gpu.adam_step(&mut p, &g, (&mut m, &mut v), &adam, step);
    assert_eq!(setting(adam_with(Adam::new(-1.0), 1)), "learning_rate");
    assert_eq!(setting(adam_with(Adam::new(f32::NAN), 1)), "learning_rate");
    assert_eq!(
        setting(adam_with(
            Adam {
                beta1: 1.0,
                ..Adam::default()
            },
            1
        )),
        "beta1"
    );
    assert_eq!(
        setting(adam_with(
            Adam {
                beta2: -0.1,
                ..Adam::default()
            },
            1
        )),
        "beta2"
    );
    assert_eq!(
        setting(adam_with(
            Adam {
                epsilon: 0.0,
                ..Adam::default()
            },
            1
        )),
        "epsilon"
    );
    assert_eq!(
        setting(adam_with(Adam::new(0.1).with_weight_decay(-1.0), 1)),
        "weight_decay"
    );
    let error = adam_with(Adam::default(), 0).unwrap_err();
    assert!(error.to_string().contains("starts at 1"), "{error}");
    assert!(matches!(
        gpu.adam_step(&mut p, &g[..3], (&mut m, &mut v), &Adam::default(), 1),
        Err(Error::LengthMismatch {
            what: "gradient",
            expected: 4,
            actual: 3
        })
    ));
    assert!(matches!(
        gpu.adam_step(&mut [], &[], (&mut [], &mut []), &Adam::default(), 1),
        Err(Error::ZeroDimension { .. })
    ));
    let mut p = vec![0.0f32; 4];
    assert_eq!(
        setting(gpu.sgd_step(&mut p, &g, None, &SgdMomentum::new(0.1, 1.0))),
        "momentum"
    );
    let nesterov_without_momentum = SgdMomentum {
        nesterov: true,
        ..SgdMomentum::new(0.1, 0.0)
    };
    assert_eq!(
        setting(gpu.sgd_step(&mut p, &g, None, &nesterov_without_momentum)),
        "momentum"
    );
    assert!(matches!(
        gpu.sgd_step(&mut p, &g, None, &SgdMomentum::new(0.1, 0.5)),
        Err(Error::MissingInput {
            what: "momentum_buffer",
            ..
        })
    ));
    assert!(matches!(
        gpu.add_scaled(&g[..2], &mut p, 1.0),
        Err(Error::LengthMismatch { what: "x", .. })
    ));
    assert_eq!(setting(gpu.add_scaled(&g, &mut p, f32::INFINITY)), "alpha");
    assert!(matches!(
        AdamState::new(gpu, Adam::default(), 0),
        Err(Error::ZeroDimension { .. })
    ));
    // Caller buffers: too small, or without STORAGE.
    let device = gpu.device();
    let small = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 8,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let plain = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    assert!(matches!(
        gpu.record_sgd_step(
            &mut encoder,
            SgdBuffers {
                parameters: &small,
                gradient: &small,
                momentum_buffer: None
            },
            4,
            &SgdMomentum::new(0.1, 0.0)
        ),
        Err(Error::BufferTooSmall {
            what: "parameters",
            needed: 16,
            actual: 8
        })
    ));
    assert!(matches!(
        gpu.record_add_scaled(&mut encoder, &plain, &plain, 4, 1.0),
        Err(Error::BufferUsage { what: "x", .. })
    ));
}
