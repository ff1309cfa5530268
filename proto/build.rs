//! Compiles `aios/v1/*.proto` with protox (pure Rust: no system `protoc`),
//! generates tonic clients and servers, and writes the encoded file
//! descriptor set that the servers expose through gRPC reflection. Also
//! compiles the vendored OTLP trace protos (`vendor/opentelemetry/`) for the
//! control plane's exporter; those stay out of the reflection set.

use std::{fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary may be reused by a checkout
    // in another directory, so a path baked in at compile time can be stale.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let dir = root.join("aios/v1");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    // protox reports errors with file, line and column: surface them as-is.
    let fds = protox::compile(&files, [&root])?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    fs::write(out.join("aios_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // A node's span batch stays a view of the received buffer: the
        // control plane stores it as sent.
        .bytes(".aios.v1.ReportRequest.batch")
        // Services not yet implemented answer UNIMPLEMENTED instead of failing
        // to compile, so the contract can grow ahead of the servers.
        .generate_default_stubs(true)
        .compile_fds(fds)?;

    let vendor = root.join("vendor");
    let otlp = vendor.join("opentelemetry/proto/collector/trace/v1/trace_service.proto");
    println!("cargo:rerun-if-changed={}", vendor.display());
    tonic_prost_build::configure().compile_fds(protox::compile([&otlp], [&vendor])?)?;
    Ok(())
}
