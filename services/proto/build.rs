//! Compiles `proto/dalc/v1` with protox (pure Rust), so building needs no system `protoc`.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let service = proto_root.join("dalc/v1/task_service.proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile([&service], [&proto_root])?;

    // The descriptor set, well-known imports included, serves gRPC server reflection.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("dalc_descriptor.bin"), bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
