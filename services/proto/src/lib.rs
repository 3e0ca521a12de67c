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

/// A task status as people write it: `TASK_STATUS_PENDING`, or `PENDING`, in any case.
pub fn status_by_name(text: &str) -> Option<v1::TaskStatus> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("TASK_STATUS_") {
        upper
    } else {
        format!("TASK_STATUS_{upper}")
    };
    v1::TaskStatus::from_str_name(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_long_or_short_in_any_case() {
        assert_eq!(status_by_name("pending"), Some(v1::TaskStatus::Pending));
        assert_eq!(
            status_by_name("TASK_STATUS_EXPIRED"),
            Some(v1::TaskStatus::Expired)
        );
        assert_eq!(
            status_by_name(" Succeeded "),
            Some(v1::TaskStatus::Succeeded)
        );
        assert_eq!(
            status_by_name("unspecified"),
            Some(v1::TaskStatus::Unspecified)
        );
        assert_eq!(status_by_name("DONE"), None);
    }
}
