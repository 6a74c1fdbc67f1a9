//! Small helpers every host module uses to bind buffers and size dispatches.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// The most work one dispatch may carry, in pair x vec4 steps. Larger work
/// is split into several dispatches: a dispatch that runs for seconds trips
/// GPU watchdogs (Windows resets the device after about 2 s), and lavapipe
/// was measured returning wrong results for one all-pairs dispatch of 1.6e9
/// pairs (about a minute), while the same work split in 8192-row dispatches
/// was right.
pub(crate) const MAX_DISPATCH_WORK: u64 = 1 << 30;

/// Bytes per `f32` or `u32` value.
pub(crate) const BYTES_PER_VALUE: u64 = 4;
/// Bytes per `vec4`.
pub(crate) const BYTES_PER_VEC4: u64 = 16;

pub(crate) const UNIFORM: wgpu::BufferBindingType = wgpu::BufferBindingType::Uniform;
pub(crate) const READ: wgpu::BufferBindingType =
    wgpu::BufferBindingType::Storage { read_only: true };
pub(crate) const READ_WRITE: wgpu::BufferBindingType =
    wgpu::BufferBindingType::Storage { read_only: false };

pub(crate) fn bytes_of(values: usize) -> u64 {
    values as u64 * BYTES_PER_VALUE
}

/// A bind group layout whose binding `i` has type `types[i]`, for compute.
pub(crate) fn bind_group_layout(
    device: &wgpu::Device,
    label: &'static str,
    types: &[wgpu::BufferBindingType],
) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = types
        .iter()
        .zip(0u32..)
        .map(|(&ty, binding)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

/// A bind group whose binding `i` is `resources[i]`.
pub(crate) fn bind_group(
    device: &wgpu::Device,
    label: &'static str,
    layout: &wgpu::BindGroupLayout,
    resources: Vec<wgpu::BindingResource<'_>>,
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
        .into_iter()
        .zip(0u32..)
        .map(|(resource, binding)| wgpu::BindGroupEntry { binding, resource })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &entries,
    })
}

/// A uniform buffer holding `params`. Each recorded dispatch gets its own,
/// so several recordings into one encoder never overwrite each other's
/// parameters before the encoder is submitted.
pub(crate) fn uniform_buffer<T: bytemuck::Pod>(
    device: &wgpu::Device,
    label: &'static str,
    params: &T,
) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::bytes_of(params),
        usage: wgpu::BufferUsages::UNIFORM,
    })
}

/// The first `bytes` bytes of `buffer` (at least 4, the smallest binding).
pub(crate) fn sized_binding(buffer: &wgpu::Buffer, bytes: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: wgpu::BufferSize::new(bytes.max(BYTES_PER_VALUE)),
    })
}

/// `bytes` bytes of `buffer` from `offset`, which the caller has aligned.
pub(crate) fn offset_binding(
    buffer: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(bytes.max(BYTES_PER_VALUE)),
    })
}

/// A binding that starts at the aligned offset at or before `first_value`
/// and spans `values` values from there; `shift` is `first_value`'s index
/// within the binding.
pub(crate) struct AlignedRange {
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) shift: u32,
}

impl AlignedRange {
    pub(crate) fn new(first_value: u64, values: u64, alignment: u64) -> Result<Self> {
        let start = first_value * BYTES_PER_VALUE;
        let offset = start - start % alignment;
        let shift_values = (start - offset) / BYTES_PER_VALUE;
        let shift = u32::try_from(shift_values).map_err(|_| Error::SizeOverflow {
            what: "a binding's offset alignment",
        })?;
        Ok(Self {
            offset,
            size: (shift_values + values.max(1)) * BYTES_PER_VALUE,
            shift,
        })
    }

    pub(crate) fn binding<'b>(&self, buffer: &'b wgpu::Buffer) -> wgpu::BindingResource<'b> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

/// Converts a size the caller has already bounded by a device limit.
pub(crate) fn to_u32(value: usize, what: &'static str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::SizeOverflow { what })
}

/// `groups` workgroups laid out on a 2-D grid no wider than `max_width`:
/// `(width, height)`, with group index `x + y * width`.
pub(crate) fn grid_2d(groups: usize, max_width: u32) -> Result<(u32, u32)> {
    let width = groups.clamp(1, max_width.max(1) as usize);
    Ok((
        to_u32(width, "workgroups")?,
        to_u32(groups.div_ceil(width), "workgroups")?,
    ))
}

/// Splits `items` (rows or pairs, `per_group` to a workgroup) into
/// dispatches whose 2-D grids fit `max_groups` per dimension: calls `each`
/// with the first item, the item count and the grid of every dispatch.
pub(crate) fn for_each_dispatch(
    items: usize,
    per_group: usize,
    max_groups: u32,
    mut each: impl FnMut(usize, usize, (u32, u32)) -> Result<()>,
) -> Result<()> {
    let max_groups = max_groups.max(1) as usize;
    let per_dispatch = max_groups
        .saturating_mul(max_groups)
        .saturating_mul(per_group);
    let mut base = 0;
    while base < items {
        let count = per_dispatch.min(items - base);
        let grid = grid_2d(count.div_ceil(per_group), max_groups as u32)?;
        each(base, count, grid)?;
        base += count;
    }
    Ok(())
}

/// A compute pipeline with its bind-group layout, and the label its passes
/// and uniforms carry.
#[derive(Clone, Copy)]
pub(crate) struct Kernel<'a> {
    pub(crate) label: &'static str,
    pub(crate) pipeline: &'a wgpu::ComputePipeline,
    pub(crate) layout: &'a wgpu::BindGroupLayout,
}

/// Records `kernel` over `items` items (`per_group` to a workgroup) in the
/// dispatches [`for_each_dispatch`] splits them into. Each dispatch binds
/// its own uniform, `params(first item, items, grid)`, at binding 0 and
/// `bindings` after it.
pub(crate) fn record_split<T: bytemuck::Pod>(
    device: &wgpu::Device,
    encoder: &mut wgpu::CommandEncoder,
    kernel: Kernel<'_>,
    (items, per_group, max_groups): (usize, usize, u32),
    bindings: &[wgpu::BindingResource<'_>],
    mut params: impl FnMut(usize, usize, (u32, u32)) -> Result<T>,
) -> Result<()> {
    for_each_dispatch(items, per_group, max_groups, |base, count, grid| {
        let params_buffer = uniform_buffer(device, kernel.label, &params(base, count, grid)?);
        let mut entries = Vec::with_capacity(bindings.len() + 1);
        entries.push(params_buffer.as_entire_binding());
        entries.extend(bindings.iter().cloned());
        let group = bind_group(device, kernel.label, kernel.layout, entries);
        dispatch(encoder, kernel.label, kernel.pipeline, &group, grid);
        Ok(())
    })
}

/// Records one compute pass with one dispatch.
pub(crate) fn dispatch(
    encoder: &mut wgpu::CommandEncoder,
    label: &'static str,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    groups: (u32, u32),
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(groups.0, groups.1, 1);
}

/// Checks a caller-owned buffer's usage and size.
pub(crate) fn check_buffer(
    what: &'static str,
    buffer: &wgpu::Buffer,
    values: usize,
    usage: wgpu::BufferUsages,
) -> Result<()> {
    let missing = usage - buffer.usage();
    if !missing.is_empty() {
        return Err(Error::BufferUsage { what, missing });
    }
    let needed = bytes_of(values);
    if buffer.size() < needed {
        return Err(Error::BufferTooSmall {
            what,
            needed,
            actual: buffer.size(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_ranges_start_at_or_before_the_value() -> Result<()> {
        for first in [0u64, 1, 63, 64, 65, 1000] {
            let range = AlignedRange::new(first, 10, 256)?;
            assert_eq!(range.offset % 256, 0);
            assert_eq!(range.offset / 4 + u64::from(range.shift), first);
            assert_eq!(range.size, (u64::from(range.shift) + 10) * 4);
        }
        Ok(())
    }

    #[test]
    fn dispatches_cover_every_item_once() -> Result<()> {
        let mut seen = Vec::new();
        for_each_dispatch(1000, 64, 2, |base, count, (w, h)| {
            assert!(w <= 2 && h <= 2);
            assert!(count <= (w * h) as usize * 64);
            seen.push((base, count));
            Ok(())
        })?;
        assert_eq!(seen, vec![(0, 256), (256, 256), (512, 256), (768, 232)]);
        Ok(())
    }

    #[test]
    fn grids_stay_within_the_width() -> Result<()> {
        assert_eq!(grid_2d(1, 65535)?, (1, 1));
        assert_eq!(grid_2d(70000, 65535)?, (65535, 2));
        assert_eq!(grid_2d(5, 2)?, (2, 3));
        Ok(())
    }
}
