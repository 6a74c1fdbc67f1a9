//! Device buffers that kernels reuse from call to call, grown on demand.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::context::GpuContext;
use crate::error::{Error, Result};

/// A buffer that is reallocated only when a call needs more room than it has.
///
/// Commands already recorded keep the old buffer alive (wgpu reference-counts
/// it), so growing never disturbs work that has not run yet.
pub(crate) struct GrowableBuffer {
    label: &'static str,
    usage: wgpu::BufferUsages,
    buffer: Option<wgpu::Buffer>,
}

impl GrowableBuffer {
    pub(crate) fn new(label: &'static str, usage: wgpu::BufferUsages) -> Self {
        Self {
            label,
            usage,
            buffer: None,
        }
    }

    /// Bytes allocated now (0 before first use).
    pub(crate) fn size(&self) -> u64 {
        self.buffer.as_ref().map_or(0, wgpu::Buffer::size)
    }

    /// A handle to a buffer of at least `bytes` bytes (rounded up to 16 so vec4 bindings
    /// fit); grows by at least half its size to avoid reallocating on every
    /// slightly larger call.
    pub(crate) fn ensure(
        &mut self,
        device: &wgpu::Device,
        bytes: u64,
        max_buffer_bytes: u64,
    ) -> Result<wgpu::Buffer> {
        let needed = bytes.max(16).div_ceil(16) * 16;
        if needed > max_buffer_bytes {
            return Err(Error::TooLarge {
                what: format!("workspace buffer `{}`", self.label),
                needed,
                limit_name: "max_buffer_size",
                limit: max_buffer_bytes,
            });
        }
        let current = self.buffer.as_ref().map_or(0, wgpu::Buffer::size);
        if current < needed {
            let grown = (current + current / 2).div_ceil(16) * 16;
            let size = needed
                .max(grown)
                .min(max_buffer_bytes - max_buffer_bytes % 16);
            self.buffer = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(self.label),
                size,
                usage: self.usage,
                mapped_at_creation: false,
            }));
        }
        // Just ensured above; `ok_or` keeps library code free of panics.
        self.buffer.clone().ok_or(Error::Device {
            during: "allocating a workspace buffer",
            message: "buffer missing after allocation".into(),
        })
    }

    /// A buffer of at least `values`' size (see [`GrowableBuffer::ensure`])
    /// with `values` written at its start; the buffer needs `COPY_DST`.
    pub(crate) fn upload<T: bytemuck::Pod>(
        &mut self,
        ctx: &GpuContext,
        values: &[T],
    ) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let buffer = self.ensure(
            ctx.device(),
            bytes.len() as u64,
            ctx.chunk_limits().max_buffer_bytes,
        )?;
        ctx.queue().write_buffer(&buffer, 0, bytes);
        Ok(buffer)
    }
}

/// A kernel family's reusable buffers behind a lock. A panic while it was
/// held cannot leave them in a state that matters (every call sizes and
/// writes what it reads), so a poisoned lock is simply taken over.
pub(crate) struct Locked<T>(Mutex<T>);

impl<T> Locked<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
