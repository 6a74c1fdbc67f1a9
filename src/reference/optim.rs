//! CPU mirror of `shaders/optim.wgsl`: one optimizer step, value by value,
//! in `f64` from the same (`f32` or `f64`) inputs.
//!
//! Each kernel rounds a handful of times per value, so every output is held
//! to [`super::tolerance`] with a length of 1 and, as magnitude, the sum of
//! the absolute values of the terms it adds (e.g. `β₁|m| + (1 − β₁)|g|` for
//! Adam's first moment).

use super::{tolerance, Reference};
use crate::distance::check_len;
use crate::error::{Error, Result};
use crate::optim::{Adam, SgdMomentum};

/// What one Adam step leaves: `p`, `m` and `v`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamReference {
    /// The updated parameters.
    pub parameters: Reference,
    /// The updated first moment `m`.
    pub first_moment: Reference,
    /// The updated second moment `v`.
    pub second_moment: Reference,
}

/// What one SGD step leaves: `p` and the momentum buffer `u` (when `μ > 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdReference {
    /// The updated parameters.
    pub parameters: Reference,
    /// The updated momentum buffer; `None` without momentum.
    pub momentum_buffer: Option<Reference>,
}

fn pair(value: f64, magnitude: f64) -> (f64, f64) {
    (value, tolerance(1, magnitude))
}

fn collect(values: impl Iterator<Item = (f64, f64)>) -> Reference {
    let (values, tolerances) = values.unzip();
    Reference { values, tolerances }
}

/// Mirror of `adam`: step `step` (1 for the first) of Adam with decoupled
/// weight decay, as PyTorch's `AdamW` computes it:
/// `p ← p (1 − lr·wd)`, `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
/// `p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`.
pub fn adam_step<T: Copy + Into<f64>>(
    parameters: &[T],
    gradient: &[T],
    (first_moment, second_moment): (&[T], &[T]),
    adam: &Adam,
    step: u64,
) -> Result<AdamReference> {
    adam.validate()?;
    if step == 0 {
        return Err(Error::InvalidSetting {
            what: "step",
            value: "0".into(),
            expected: "the step count t starts at 1 (the first update)",
        });
    }
    let len = parameters.len();
    check_len("gradient", len, gradient.len())?;
    check_len("first_moment", len, first_moment.len())?;
    check_len("second_moment", len, second_moment.len())?;
    let (beta1, beta2) = (f64::from(adam.beta1), f64::from(adam.beta2));
    let lr = f64::from(adam.learning_rate);
    let t = step as f64;
    let step_size = lr / (1.0 - beta1.powf(t));
    let correction_sqrt = (1.0 - beta2.powf(t)).sqrt();
    let decay = 1.0 - lr * f64::from(adam.weight_decay);
    let (mut p_out, mut m_out, mut v_out) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..len {
        let (p, g) = (parameters[i].into(), gradient[i].into());
        let (m0, v0): (f64, f64) = (first_moment[i].into(), second_moment[i].into());
        let m = beta1 * m0 + (1.0 - beta1) * g;
        let v = beta2 * v0 + (1.0 - beta2) * g * g;
        let m_magnitude = beta1 * m0.abs() + (1.0 - beta1) * g.abs();
        let denominator = v.sqrt() / correction_sqrt + f64::from(adam.epsilon);
        let update = step_size * m / denominator;
        // m's rounding error is relative to its magnitude, not to m itself
        // (the two terms may cancel), and the update carries it along.
        let update_magnitude = step_size * m_magnitude / denominator;
        m_out.push(pair(m, m_magnitude));
        v_out.push(pair(v, v));
        p_out.push(pair(
            p * decay - update,
            (p * decay).abs() + update_magnitude,
        ));
    }
    Ok(AdamReference {
        parameters: collect(p_out.into_iter()),
        first_moment: collect(m_out.into_iter()),
        second_moment: collect(v_out.into_iter()),
    })
}

/// Mirror of `sgd_momentum`: `g' = g + wd·p`; with momentum `u ← μ u + g'`
/// and `p ← p − lr·(nesterov ? g' + μ u : u)`; without, `p ← p − lr·g'`.
pub fn sgd_step<T: Copy + Into<f64>>(
    parameters: &[T],
    gradient: &[T],
    momentum_buffer: Option<&[T]>,
    sgd: &SgdMomentum,
) -> Result<SgdReference> {
    sgd.validate()?;
    let len = parameters.len();
    check_len("gradient", len, gradient.len())?;
    let momentum = f64::from(sgd.momentum);
    let buffer = match momentum_buffer {
        Some(buffer) => {
            check_len("momentum_buffer", len, buffer.len())?;
            Some(buffer)
        }
        None if momentum > 0.0 => {
            return Err(Error::MissingInput {
                what: "momentum_buffer",
                why: "SGD with momentum > 0 keeps its velocity there",
            })
        }
        None => None,
    };
    let (lr, wd) = (f64::from(sgd.learning_rate), f64::from(sgd.weight_decay));
    let (mut p_out, mut u_out) = (Vec::new(), Vec::new());
    for i in 0..len {
        let (p, g): (f64, f64) = (parameters[i].into(), gradient[i].into());
        let decayed = g + wd * p;
        let decayed_magnitude = g.abs() + (wd * p).abs();
        let (direction, direction_magnitude) = match buffer.filter(|_| momentum > 0.0) {
            Some(buffer) => {
                let u0: f64 = buffer[i].into();
                let u = momentum * u0 + decayed;
                let u_magnitude = momentum * u0.abs() + decayed_magnitude;
                u_out.push(pair(u, u_magnitude));
                if sgd.nesterov {
                    (
                        decayed + momentum * u,
                        decayed_magnitude + momentum * u_magnitude,
                    )
                } else {
                    (u, u_magnitude)
                }
            }
            None => (decayed, decayed_magnitude),
        };
        p_out.push(pair(p - lr * direction, p.abs() + lr * direction_magnitude));
    }
    Ok(SgdReference {
        parameters: collect(p_out.into_iter()),
        momentum_buffer: (momentum > 0.0).then(|| collect(u_out.into_iter())),
    })
}

/// Mirror of `add_scaled`: `y + α x`.
pub fn add_scaled<T: Copy + Into<f64>>(x: &[T], y: &[T], alpha: f32) -> Result<Reference> {
    check_len("x", y.len(), x.len())?;
    let alpha = f64::from(alpha);
    Ok(collect(x.iter().zip(y).map(|(&x, &y)| {
        let (x, y): (f64, f64) = (x.into(), y.into());
        pair(y + alpha * x, y.abs() + (alpha * x).abs())
    })))
}
