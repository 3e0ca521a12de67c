//! How long a call may wait: the request's `timeout`, the server's maximum and the call's own
//! gRPC deadline, whichever is shortest. A sync call never outlives its deadline.

use std::time::Duration;

use tonic::metadata::MetadataMap;

use crate::ApiError;

/// Answer this long before the client's deadline, so the response is back in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// The request's `timeout` field as a [`Duration`]: `None` when unset or zero.
pub(crate) fn requested_timeout(
    timeout: Option<prost_types::Duration>,
) -> Result<Option<Duration>, ApiError> {
    let Some(timeout) = timeout else {
        return Ok(None);
    };
    if timeout.seconds < 0 || timeout.nanos < 0 || timeout.nanos >= 1_000_000_000 {
        return Err(ApiError::InvalidArgument(format!(
            "timeout must be a non-negative duration, got {}s {}ns",
            timeout.seconds, timeout.nanos
        )));
    }
    let duration = Duration::new(timeout.seconds.unsigned_abs(), timeout.nanos.unsigned_abs());
    Ok((!duration.is_zero()).then_some(duration))
}

/// How long this call may wait for the task to end.
pub(crate) fn wait_budget(
    requested: Option<Duration>,
    default: Duration,
    maximum: Duration,
    metadata: &MetadataMap,
) -> Duration {
    let mut budget = requested.unwrap_or(default).min(maximum);
    if let Some(deadline) = call_deadline(metadata) {
        budget = budget.min(deadline.saturating_sub(DEADLINE_MARGIN.min(deadline / 10)));
    }
    budget
}

/// The call's own deadline, from the `grpc-timeout` header (e.g. `30S`, `250m`, `100000u`).
pub(crate) fn call_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "S", "10", "10x", "-1S", "1234567890S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shortest_limit_wins() {
        let mut metadata = MetadataMap::new();
        let secs = Duration::from_secs;
        assert_eq!(wait_budget(None, secs(30), secs(60), &metadata), secs(30));
        assert_eq!(
            wait_budget(Some(secs(5)), secs(30), secs(60), &metadata),
            secs(5)
        );
        assert_eq!(
            wait_budget(Some(secs(500)), secs(30), secs(60), &metadata),
            secs(60)
        );
        metadata.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(
            wait_budget(None, secs(30), secs(60), &metadata),
            Duration::from_millis(1900)
        );
    }

    #[test]
    fn timeouts_must_be_non_negative() {
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(requested_timeout(Some(negative)).is_err());
        let zero = prost_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(requested_timeout(Some(zero)).unwrap(), None);
        let half = prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        };
        assert_eq!(
            requested_timeout(Some(half)).unwrap(),
            Some(Duration::from_millis(500))
        );
    }
}
