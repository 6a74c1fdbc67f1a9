// Parameter updates of a training loop, one invocation per value:
//
//   adam          Adam with decoupled weight decay (AdamW), as PyTorch
//                 computes it:
//                   p <- p (1 - lr wd)
//                   m <- b1 m + (1 - b1) g
//                   v <- b2 v + (1 - b2) g^2
//                   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//   sgd_momentum  SGD with momentum (PyTorch's, no dampening):
//                   g' <- g + wd p
//                   u  <- mu u + g'
//                   p  <- p - lr (nesterov ? g' + mu u : u)
//   add_scaled    y <- y + alpha x (e.g. summing the gradients of two losses)
//
// The host binds each chunk of values at an aligned offset, so index i of
// the chunk is index i of every binding. The bias corrections of Adam are
// computed on the host in f64 for the step t.
//
// The CPU mirror is `src/reference/optim.rs`; the host side is
// `src/optim.rs`.

struct AdamParams {
    // This dispatch updates values base..end of the chunk: value = base +
    // the invocation's index on a grid `grid_width` workgroups wide (the
    // grid may overshoot `end`; those invocations do nothing, so no value
    // is updated twice).
    end: u32,
    grid_width: u32,
    base: u32,
    _pad0: u32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    // 1 - lr wd
    decay_factor: f32,
    // lr / (1 - b1^t)
    step_size: f32,
    // 1 / sqrt(1 - b2^t)
    inverse_sqrt_correction: f32,
    _pad1: f32,
    _pad2: f32,
}

struct SgdParams {
    end: u32,
    grid_width: u32,
    base: u32,
    // 1: Nesterov momentum.
    nesterov: u32,
    learning_rate: f32,
    momentum: f32,
    weight_decay: f32,
    _pad0: f32,
}

struct AddScaledParams {
    end: u32,
    grid_width: u32,
    base: u32,
    _pad0: u32,
    alpha: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
}

const THREADS: u32 = 64u;

fn value_index(wid: vec3<u32>, lid: vec3<u32>, grid_width: u32, base: u32) -> u32 {
    return base + (wid.x + wid.y * grid_width) * THREADS + lid.x;
}

// ---------------------------------------------------------------------------
// adam
// ---------------------------------------------------------------------------

@group(0) @binding(0) var<uniform> adam_params: AdamParams;
@group(0) @binding(1) var<storage, read_write> adam_parameters: array<f32>;
@group(0) @binding(2) var<storage, read> adam_gradient: array<f32>;
@group(0) @binding(3) var<storage, read_write> adam_first_moment: array<f32>;
@group(0) @binding(4) var<storage, read_write> adam_second_moment: array<f32>;

@compute @workgroup_size(64)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = adam_params;
    let i = value_index(wid, lid, p.grid_width, p.base);
    if (i >= p.end) {
        return;
    }
    let g = adam_gradient[i];
    let m = p.beta1 * adam_first_moment[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * adam_second_moment[i] + (1.0 - p.beta2) * (g * g);
    adam_first_moment[i] = m;
    adam_second_moment[i] = v;
    let denominator = sqrt(v) * p.inverse_sqrt_correction + p.epsilon;
    adam_parameters[i] = adam_parameters[i] * p.decay_factor - p.step_size * (m / denominator);
}

// ---------------------------------------------------------------------------
// sgd_momentum
// ---------------------------------------------------------------------------

@group(0) @binding(0) var<uniform> sgd_params: SgdParams;
@group(0) @binding(1) var<storage, read_write> sgd_parameters: array<f32>;
@group(0) @binding(2) var<storage, read> sgd_gradient: array<f32>;
@group(0) @binding(3) var<storage, read_write> sgd_momentum_buffer: array<f32>;

@compute @workgroup_size(64)
fn sgd_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = sgd_params;
    let i = value_index(wid, lid, p.grid_width, p.base);
    if (i >= p.end) {
        return;
    }
    let parameter = sgd_parameters[i];
    let g = sgd_gradient[i] + p.weight_decay * parameter;
    var direction = g;
    // Without momentum the buffer is not bound (a placeholder is) and
    // never touched.
    if (p.momentum != 0.0) {
        let u = p.momentum * sgd_momentum_buffer[i] + g;
        sgd_momentum_buffer[i] = u;
        direction = select(u, g + p.momentum * u, p.nesterov != 0u);
    }
    sgd_parameters[i] = parameter - p.learning_rate * direction;
}

// ---------------------------------------------------------------------------
// add_scaled
// ---------------------------------------------------------------------------

@group(0) @binding(0) var<uniform> add_params: AddScaledParams;
@group(0) @binding(1) var<storage, read> add_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> add_y: array<f32>;

@compute @workgroup_size(64)
fn add_scaled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = add_params;
    let i = value_index(wid, lid, p.grid_width, p.base);
    if (i >= p.end) {
        return;
    }
    add_y[i] = add_y[i] + p.alpha * add_x[i];
}
