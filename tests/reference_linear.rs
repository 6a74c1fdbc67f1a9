//! The CPU reference of dense layers, checked on worked values and its
//! gradients against central finite differences in `f64`.

use contrastive_wgpu::reference::linear as cpu;
use contrastive_wgpu::synthetic::SplitMix64;
use contrastive_wgpu::{Activation, LinearShape};

#[test]
fn worked_values() {
    // X = [[1, 2], [3, -4]], W = [[1, 0, -1], [2, 1, 0]], b = [0.5, -1, 0]
    let x = [1.0f64, 2.0, 3.0, -4.0];
    let w = [1.0f64, 0.0, -1.0, 2.0, 1.0, 0.0];
    let b = [0.5f64, -1.0, 0.0];
    let shape = LinearShape::new(2, 2, 3);
    let y = cpu::linear_forward(&x, &w, Some(&b), shape, Activation::Identity).unwrap();
    assert_eq!(y.values, vec![5.5, 1.0, -1.0, -4.5, -5.0, -3.0]);
    let y = cpu::linear_forward(&x, &w, Some(&b), shape, Activation::Relu).unwrap();
    assert_eq!(y.values, vec![5.5, 1.0, 0.0, 0.0, 0.0, 0.0]);
    // ∂L/∂Y = 1 everywhere; ReLU keeps rows/columns where Y > 0.
    let ones = [1.0f64; 6];
    let g = cpu::linear_backward(&x, &w, Some(&y.values), &ones, shape, Activation::Relu).unwrap();
    // G = [[1, 1, 0], [0, 0, 0]]: ∂L/∂X = G Wᵀ, ∂L/∂W = Xᵀ G, ∂L/∂b = Σ G.
    assert_eq!(g.input.values, vec![1.0, 3.0, 0.0, 0.0]);
    assert_eq!(g.weight.values, vec![1.0, 1.0, 0.0, 2.0, 2.0, 0.0]);
    assert_eq!(g.bias.values, vec![1.0, 1.0, 0.0]);
}

/// `L = Σ G ⊙ act(X W + b)` in f64.
fn objective(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    g: &[f64],
    shape: LinearShape,
    activation: Activation,
) -> f64 {
    let y = cpu::linear_forward(x, w, Some(b), shape, activation).unwrap();
    y.values.iter().zip(g).map(|(y, g)| y * g).sum()
}

#[test]
fn gradients_match_central_finite_differences() {
    let shape = LinearShape::new(5, 4, 3);
    let mut rng = SplitMix64::new(5);
    let mut sample = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
    let (x, w, b, g) = (sample(20), sample(12), sample(3), sample(15));
    for activation in [Activation::Identity, Activation::Relu] {
        let y = cpu::linear_forward(&x, &w, Some(&b), shape, activation).unwrap();
        // Keep away from ReLU's kink, where the derivative jumps.
        let pre = cpu::linear_forward(&x, &w, Some(&b), shape, Activation::Identity).unwrap();
        assert!(pre.values.iter().all(|z| z.abs() > 1e-3));
        let grads = cpu::linear_backward(&x, &w, Some(&y.values), &g, shape, activation).unwrap();
        let h = 1e-6;
        let check = |analytic: &[f64], which: usize| {
            let len = analytic.len();
            for index in 0..len {
                let mut inputs = [x.clone(), w.clone(), b.clone()];
                inputs[which][index] += h;
                let up = objective(&inputs[0], &inputs[1], &inputs[2], &g, shape, activation);
                inputs[which][index] -= 2.0 * h;
                let down = objective(&inputs[0], &inputs[1], &inputs[2], &g, shape, activation);
                let numeric = (up - down) / (2.0 * h);
                assert!(
                    (numeric - analytic[index]).abs() <= 1e-7 * (1.0 + numeric.abs()),
                    "{activation:?} input {which} [{index}]: analytic {} numeric {numeric}",
                    analytic[index]
                );
            }
        };
        check(&grads.input.values, 0);
        check(&grads.weight.values, 1);
        check(&grads.bias.values, 2);
    }
}
