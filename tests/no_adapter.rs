//! Without an adapter the crate fails with a message that says how to get
//! one; this is the error every GPU test reports on a machine without one.

use contrastive_wgpu::wgpu;
use contrastive_wgpu::{ContextOptions, Error, GpuContext};

#[test]
fn no_adapter_is_a_typed_error_that_says_how_to_get_one() {
    // No native adapter exists for the browser's WebGPU backend.
    let options = ContextOptions {
        backends: Some(wgpu::Backends::BROWSER_WEBGPU),
        ..ContextOptions::default()
    };
    let error = GpuContext::with_options(options).unwrap_err();
    assert!(matches!(error, Error::NoAdapter { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("apt-get install -y mesa-vulkan-drivers"),
        "{message}"
    );
    assert!(message.contains("WGPU_BACKEND=gl"), "{message}");
}
