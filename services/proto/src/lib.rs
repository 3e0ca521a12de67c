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

/// `value` as a proto Duration (saturating at the largest, far past any duration dalc uses).
pub fn duration_of(value: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(value.subsec_nanos()).unwrap_or(0),
    }
}

/// Whether `value` is a Duration proto3 allows: nanos under a second, with the sign of the
/// seconds.
pub fn duration_is_valid(value: &prost_types::Duration) -> bool {
    let (seconds, nanos) = (value.seconds, value.nanos);
    nanos.unsigned_abs() < 1_000_000_000
        && !(seconds > 0 && nanos < 0)
        && !(seconds < 0 && nanos > 0)
}

/// A Duration as proto3 JSON writes it: seconds with 0, 3, 6 or 9 fractional digits and `s`.
/// `None` for an invalid value (see [`duration_is_valid`]).
pub fn duration_json(value: &prost_types::Duration) -> Option<String> {
    if !duration_is_valid(value) {
        return None;
    }
    let (seconds, nanos) = (value.seconds, value.nanos);
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    let (seconds, nanos) = (seconds.unsigned_abs(), nanos.unsigned_abs());
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    Some(format!("{sign}{seconds}{fraction}s"))
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

    #[test]
    fn durations_use_three_six_or_nine_digits() {
        let d = |seconds, nanos| duration_json(&prost_types::Duration { seconds, nanos });
        assert_eq!(d(10, 0).as_deref(), Some("10s"));
        assert_eq!(d(1, 500_000_000).as_deref(), Some("1.500s"));
        assert_eq!(d(0, 1_500).as_deref(), Some("0.000001500s"));
        assert_eq!(d(0, 25_000).as_deref(), Some("0.000025s"));
        assert_eq!(d(-1, -500_000_000).as_deref(), Some("-1.500s"));
        assert_eq!(d(0, -1_000_000).as_deref(), Some("-0.001s"));
        assert_eq!(
            d(i64::MIN, -999_999_999).as_deref(),
            Some("-9223372036854775808.999999999s")
        );
        assert_eq!(d(1, -1), None);
        assert_eq!(d(0, 1_000_000_000), None);
        assert_eq!(d(0, i32::MIN), None);
    }
}
