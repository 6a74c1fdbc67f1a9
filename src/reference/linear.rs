//! CPU mirror of `shaders/linear.wgsl`: a dense layer `Y = act(X W + b)`
//! and its gradients, in `f64`, as plain loops (parallel over output rows).
//!
//! Each output carries its tolerance ([`super::tolerance`]): a sum of `K`
//! products in `f32` is off by at most about `K · ε₃₂ · Σ |products|`, so
//! the magnitude of an output is the sum of the absolute values of its
//! terms (plus `|b|` for the forward) and `K` is the length of the sum.

use rayon::prelude::*;

use super::{tolerance, Reference};
use crate::distance::check_len;
use crate::error::{Error, Result};
use crate::linear::{Activation, LinearShape};

/// The gradients [`linear_backward`] computes.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGradientsReference {
    /// `∂L/∂X`, `rows x inputs`.
    pub input: Reference,
    /// `∂L/∂W`, `inputs x outputs`.
    pub weight: Reference,
    /// `∂L/∂b`, `outputs`.
    pub bias: Reference,
}

fn to_f64<T: Copy + Into<f64>>(values: &[T]) -> Vec<f64> {
    values.iter().map(|&v| v.into()).collect()
}

/// Mirror of the forward `gemm`: `Y[r][c] = act(Σ_k X[r][k] W[k][c] + b[c])`.
pub fn linear_forward<T: Copy + Into<f64> + Sync>(
    input: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    shape: LinearShape,
    activation: Activation,
) -> Result<Reference> {
    shape.validate()?;
    check_len("input", shape.input_len()?, input.len())?;
    check_len("weight", shape.weight_len()?, weight.len())?;
    if let Some(bias) = bias {
        check_len("bias", shape.outputs, bias.len())?;
    }
    let LinearShape {
        inputs, outputs, ..
    } = shape;
    let (x, w) = (to_f64(input), to_f64(weight));
    let b = bias.map_or_else(|| vec![0.0; outputs], to_f64);
    let mut values = vec![0.0; shape.output_len()?];
    let mut tolerances = vec![0.0; values.len()];
    values
        .par_chunks_mut(outputs)
        .zip(tolerances.par_chunks_mut(outputs))
        .enumerate()
        .for_each(|(r, (row, row_tolerances))| {
            let x_row = &x[r * inputs..(r + 1) * inputs];
            for c in 0..outputs {
                let mut sum = 0.0;
                let mut magnitude = b[c].abs();
                for (k, &x_value) in x_row.iter().enumerate() {
                    let term = x_value * w[k * outputs + c];
                    sum += term;
                    magnitude += term.abs();
                }
                let z = sum + b[c];
                row[c] = match activation {
                    Activation::Identity => z,
                    Activation::Relu => z.max(0.0),
                };
                row_tolerances[c] = tolerance(inputs, magnitude);
            }
        });
    Ok(Reference { values, tolerances })
}

/// Mirror of the backward `gemm`s and `column_sums`: with
/// `G = ∂L/∂Y ⊙ act'(Y)` (`act'` is 1 where `Y > 0` for ReLU),
/// `∂L/∂X = G Wᵀ`, `∂L/∂W = Xᵀ G`, `∂L/∂b = Σ_rows G`. `output` (the
/// forward's `Y`) is needed for ReLU.
pub fn linear_backward<T: Copy + Into<f64> + Sync>(
    input: &[T],
    weight: &[T],
    output: Option<&[T]>,
    output_gradient: &[T],
    shape: LinearShape,
    activation: Activation,
) -> Result<LinearGradientsReference> {
    shape.validate()?;
    let output_len = shape.output_len()?;
    check_len("input", shape.input_len()?, input.len())?;
    check_len("weight", shape.weight_len()?, weight.len())?;
    check_len("output_gradient", output_len, output_gradient.len())?;
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = shape;
    let (x, w) = (to_f64(input), to_f64(weight));
    // G = ∂L/∂Y ⊙ act'(Y)
    let mut g = to_f64(output_gradient);
    if activation == Activation::Relu {
        let output = output.ok_or(Error::MissingInput {
            what: "output",
            why: "the ReLU's derivative is read from the forward's output Y",
        })?;
        check_len("output", output_len, output.len())?;
        // Where Y is 0 (or NaN) the ReLU passes nothing back.
        for (value, &y) in g.iter_mut().zip(output) {
            if y.into().partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                *value = 0.0;
            }
        }
    }

    let mut input_values = vec![0.0; shape.input_len()?];
    let mut input_tolerances = vec![0.0; input_values.len()];
    input_values
        .par_chunks_mut(inputs)
        .zip(input_tolerances.par_chunks_mut(inputs))
        .enumerate()
        .for_each(|(r, (row, row_tolerances))| {
            let g_row = &g[r * outputs..(r + 1) * outputs];
            for i in 0..inputs {
                let w_row = &w[i * outputs..(i + 1) * outputs];
                let (sum, magnitude) = g_row
                    .iter()
                    .zip(w_row)
                    .fold((0.0, 0.0), |(s, m), (a, b)| (s + a * b, m + (a * b).abs()));
                row[i] = sum;
                row_tolerances[i] = tolerance(outputs, magnitude);
            }
        });

    let mut weight_values = vec![0.0; shape.weight_len()?];
    let mut weight_tolerances = vec![0.0; weight_values.len()];
    weight_values
        .par_chunks_mut(outputs)
        .zip(weight_tolerances.par_chunks_mut(outputs))
        .enumerate()
        .for_each(|(i, (row, row_tolerances))| {
            for c in 0..outputs {
                let mut sum = 0.0;
                let mut magnitude = 0.0;
                for r in 0..rows {
                    let term = x[r * inputs + i] * g[r * outputs + c];
                    sum += term;
                    magnitude += term.abs();
                }
                row[c] = sum;
                row_tolerances[c] = tolerance(rows, magnitude);
            }
        });

    let mut bias_values = vec![0.0; outputs];
    let mut bias_tolerances = vec![0.0; outputs];
    for c in 0..outputs {
        let column = (0..rows).map(|r| g[r * outputs + c]);
        bias_values[c] = column.clone().sum();
        bias_tolerances[c] = tolerance(rows, column.map(f64::abs).sum());
    }
    Ok(LinearGradientsReference {
        input: Reference {
            values: input_values,
            tolerances: input_tolerances,
        },
        weight: Reference {
            values: weight_values,
            tolerances: weight_tolerances,
        },
        bias: Reference {
            values: bias_values,
            tolerances: bias_tolerances,
        },
    })
}
