//! # contrastive-wgpu
//!
//! WGSL compute kernels, run through [wgpu], for margin-based metric
//! learning: pairwise distances between sets of embeddings ([`distance`])
//! and the contrastive loss of Hadsell, Chopra & LeCun with its gradients
//! ([`loss`], where the formulas, presets and the role of the margin are
//! explained), hard-negative mining and pair-distance statistics
//! ([`mining`]), and what a training loop on the GPU needs around them:
//! dense layers with their gradients ([`linear`]) and optimizer steps
//! ([`optim`]: Adam/AdamW, SGD with momentum). A CPU reference path
//! ([`mod@reference`]) mirrors every kernel, and the tests hold each kernel
//! to it under one tolerance rule.
//!
//! ## Conventions
//!
//! - Embeddings are row-major `f32`, one row per item: X is `N x D`, Y is
//!   `M x D`; any `N, M, D ≥ 1`.
//! - Outputs are row-major: the distance between row `i` of X and row `j`
//!   of Y is at index `i * M + j`.
//! - Distances ([`Distance`]): Euclidean `‖x − y‖₂`, squared Euclidean
//!   `‖x − y‖₂²`, cosine `1 − x·y / (‖x‖ ‖y‖)` (1 where a norm is 0) and
//!   the dot-product similarity `x·y`, optionally on L2-normalised rows
//!   `x / ‖x‖`.
//! - Identical rows are exactly 0 apart and Euclidean distances of finite
//!   input are never NaN: differences are accumulated directly, never
//!   through `‖x‖² + ‖y‖² − 2 x·y` (see [`distance`]).
//!
//! ## Two API levels
//!
//! Slices in, values out:
//!
//! ```no_run
//! use contrastive_wgpu::{Distance, DistanceOptions, GpuContext, PairwiseShape};
//! # fn main() -> Result<(), contrastive_wgpu::Error> {
//! let gpu = GpuContext::new()?;
//! let x = vec![0.0f32, 0.0, 3.0, 4.0]; // 2 rows of D = 2
//! let y = vec![0.0f32, 0.0]; // 1 row
//! let d = gpu.pairwise_distances(&x, &y, PairwiseShape::new(2, 1, 2),
//!                                DistanceOptions::new(Distance::Euclidean))?;
//! assert_eq!(d, vec![0.0, 5.0]);
//! # Ok(()) }
//! ```
//!
//! Buffers the caller owns, recorded into the caller's encoder (nothing is
//! submitted, nothing waits):
//!
//! ```no_run
//! # use contrastive_wgpu::{DistanceBuffers, DistanceOptions, GpuContext, PairwiseShape};
//! # fn run(gpu: &GpuContext, x: &wgpu::Buffer, y: &wgpu::Buffer, out: &wgpu::Buffer)
//! #     -> Result<(), contrastive_wgpu::Error> {
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! gpu.record_pairwise_distances(&mut encoder, DistanceBuffers { x, y, out },
//!                               PairwiseShape::new(4096, 4096, 128),
//!                               DistanceOptions::default())?;
//! gpu.queue().submit([encoder.finish()]);
//! # Ok(()) }
//! ```
//!
//! A training loop that already owns a device wraps it with
//! [`GpuContext::from_device`].
//!
//! ## A training step in one encoder
//!
//! Every `record_*` call only records: a whole step (forward through
//! [`GpuContext::record_linear_forward`], mining with
//! [`GpuContext::record_batch_hard`] and
//! [`GpuContext::record_hardest_pairs`], the loss and its gradient with
//! [`GpuContext::record_contrastive_in_batch`] or
//! [`GpuContext::record_contrastive_index_pairs`], backward with
//! [`GpuContext::record_linear_backward`], the update with
//! [`AdamState::record_step`]) goes into one `CommandEncoder` and one
//! submission, and the loss stays on the device in a [`LossTotals`] buffer
//! until the loop copies it out. `examples/train.rs` is such a loop; its
//! core, for one dense layer `e = x W + b` trained on the in-batch loss:
//!
//! ```no_run
//! # use contrastive_wgpu::*;
//! # fn step(gpu: &GpuContext, [x, labels, w, b, e, de, dw, db, totals]: [&wgpu::Buffer; 9],
//! #         (w_adam, b_adam): (&mut AdamState, &mut AdamState), (n, inputs, d): (usize, usize, usize))
//! #         -> Result<()> {
//! let shape = LinearShape::new(n, inputs, d);
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! gpu.record_linear_forward(&mut encoder,
//!     LinearForwardBuffers { input: x, weight: w, bias: Some(b), output: e },
//!     shape, Activation::Identity)?;
//! gpu.record_contrastive_in_batch(&mut encoder,
//!     InBatchBuffers { x: e, labels, gradient: Some(de), totals },
//!     n, d, &ContrastiveLoss::pytorch_metric_learning())?;
//! gpu.record_linear_backward(&mut encoder,
//!     LinearBackwardBuffers { input: x, weight: w, output: None, output_gradient: de,
//!                             input_gradient: None, weight_gradient: Some(dw),
//!                             bias_gradient: Some(db) },
//!     shape, Activation::Identity, GradientWrite::Replace)?;
//! w_adam.record_step(gpu, &mut encoder, w, dw)?;
//! b_adam.record_step(gpu, &mut encoder, b, db)?;
//! gpu.queue().submit([encoder.finish()]);
//! # Ok(()) }
//! ```

mod binding;
pub mod context;
pub mod distance;
pub mod error;
pub mod linear;
pub mod loss;
pub mod mining;
pub mod npy;
pub mod optim;
pub mod reference;
mod rows;
pub mod synthetic;
mod workspace;

pub use context::{AdapterDescription, ChunkLimits, ContextOptions, GpuContext};
pub use distance::{Distance, DistanceBuffers, DistanceOptions, PairwiseShape};
pub use error::{Error, Result};
pub use linear::{
    Activation, GradientWrite, LinearBackwardBuffers, LinearForwardBuffers, LinearGradients,
    LinearShape,
};
pub use loss::{
    BankBuffers, BankIds, ContrastiveLoss, Gradients, InBatchBuffers, IndexPair, IndexPairBuffers,
    LossResult, LossTotals, PairBuffers, PairCounts, Power, Reduction,
};
pub use optim::{Adam, AdamBuffers, AdamState, SgdBuffers, SgdMomentum};
pub use wgpu;
