//! Validates every WGSL shader in `shaders/` with naga (the version wgpu
//! uses), so a broken shader fails `cargo build` even on a machine without a
//! GPU instead of failing at pipeline creation on the user's device.

use std::path::Path;

fn main() {
    let shader_dir = Path::new("shaders");
    println!("cargo:rerun-if-changed=shaders");
    let mut entries: Vec<_> = match std::fs::read_dir(shader_dir) {
        Ok(dir) => dir.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(err) => fail(&format!("cannot read {}: {err}", shader_dir.display())),
    };
    entries.sort();
    let mut failures = Vec::new();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
    {
        println!("cargo:rerun-if-changed={}", path.display());
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(err) => fail(&format!("cannot read {}: {err}", path.display())),
        };
        let name = path.display().to_string();
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(m) => m,
            Err(err) => {
                failures.push(err.emit_to_string_with_path(&source, &name));
                continue;
            }
        };
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        );
        if let Err(err) = validator.validate(&module) {
            failures.push(err.emit_to_string_with_path(&source, &name));
        }
    }
    if !failures.is_empty() {
        fail(&failures.join("\n"));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("shader validation failed:\n{message}");
    std::process::exit(1);
}
