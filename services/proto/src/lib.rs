//! Generated code for the public API, package `dalc.v1`, and the encoded file descriptor set
//! that gRPC server reflection serves (so `grpcurl` works with no proto files at hand).

/// Types and gRPC client/server for `dalc.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs, missing_debug_implementations)]
    tonic::include_proto!("dalc.v1");
}

/// The encoded `FileDescriptorSet` of `proto/dalc/v1`, including its well-known imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/dalc_descriptor.bin"));
