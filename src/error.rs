//! The crate's error type: every failure says what was wrong and what to do.

/// What can go wrong in this crate. Every variant's message names the
/// offending value and, where there is one, the remedy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No wgpu adapter could be found.
    #[error(
        "no GPU adapter found (backends tried: {backends}). On a headless Linux machine install \
         a software Vulkan driver with `apt-get install -y mesa-vulkan-drivers` (lavapipe), or \
         use Mesa's OpenGL driver (llvmpipe) with WGPU_BACKEND=gl; WGPU_BACKEND and \
         WGPU_ADAPTER_NAME choose among several adapters"
    )]
    NoAdapter {
        /// The backends that were searched.
        backends: String,
    },

    /// `WGPU_ADAPTER_NAME` named an adapter that does not exist.
    #[error(
        "WGPU_ADAPTER_NAME={wanted:?} matches no adapter; available: {available}. Unset it or \
         use part of one of these names"
    )]
    AdapterNotFound {
        /// The requested name (a case-insensitive substring).
        wanted: String,
        /// The adapters that were found.
        available: String,
    },

    /// The adapter refused to create a device.
    #[error("the adapter could not create a device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// A dimension that must be at least 1 was 0.
    #[error("{name} is 0; it must be at least 1")]
    ZeroDimension {
        /// Which dimension (e.g. "D (values per row)").
        name: &'static str,
    },

    /// A slice's length does not match the shape it was given with.
    #[error("{what} has {actual} values, but the shape needs {expected}")]
    LengthMismatch {
        /// Which input.
        what: &'static str,
        /// Values the shape implies.
        expected: usize,
        /// Values provided.
        actual: usize,
    },

    /// A size does not fit in the address space or in the device.
    #[error(
        "{what} needs {needed} bytes, more than the device's {limit_name} of {limit} bytes; \
         split the work into smaller calls or use a device with larger limits"
    )]
    TooLarge {
        /// What could not be held.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// The wgpu limit that was exceeded.
        limit_name: &'static str,
        /// That limit's value on this device.
        limit: u64,
    },

    /// A size computation overflowed (e.g. N * M on a 32-bit host).
    #[error("{what} overflows this machine's address space")]
    SizeOverflow {
        /// What was being sized.
        what: &'static str,
    },

    /// The loss parameters are inconsistent.
    #[error("invalid contrastive loss: {reason}")]
    InvalidLoss {
        /// What is wrong and what is expected.
        reason: String,
    },

    /// An input holds a value outside its allowed range.
    #[error("{what}[{index}] = {value}, but {expected}")]
    InvalidValue {
        /// Which input.
        what: &'static str,
        /// Where.
        index: usize,
        /// The offending value.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },

    /// A `.npy` file could not be read or written, or holds the wrong kind
    /// of array.
    #[error("{path}: {reason}")]
    Npy {
        /// The file.
        path: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A setting (an optimizer's learning rate, a step count, …) is out of
    /// its range.
    #[error("{what} = {value}, but it must be {expected}")]
    InvalidSetting {
        /// Which setting.
        what: &'static str,
        /// The offending value.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },

    /// An input the computation needs was not given.
    #[error("`{what}` is missing: {why}")]
    MissingInput {
        /// Which input.
        what: &'static str,
        /// Why the computation needs it.
        why: &'static str,
    },

    /// A caller-owned buffer is smaller than the shape needs.
    #[error("buffer `{what}` holds {actual} bytes, but the shape needs {needed}")]
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// The buffer's size.
        actual: u64,
    },

    /// A caller-owned buffer lacks a usage flag the kernel needs.
    #[error("buffer `{what}` was created without {missing:?}; add it to the buffer's usage")]
    BufferUsage {
        /// Which buffer.
        what: &'static str,
        /// The missing usage flags.
        missing: wgpu::BufferUsages,
    },

    /// The device reported an error (validation, out of memory, lost device)
    /// or a read-back failed.
    #[error("the GPU device reported an error while {during}: {message}")]
    Device {
        /// What the crate was doing.
        during: &'static str,
        /// The device's message.
        message: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
