//! A call's time: one absolute deadline, fixed on arrival from the call's own gRPC deadline,
//! bounds every step (the insert, the publish, every read while waiting), and a sync call's wait
//! ends at the request's `timeout`, the server's maximum or that deadline, whichever comes
//! first. A call never outlives its deadline.

use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::ApiError;

/// Answer this long before the client's deadline, so the response is back in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// A submission's `timeout` field as a [`Duration`]: `None` when unset or zero. It becomes the
/// task's deadline, so past `maximum` (the server's longest task deadline) it is refused, never
/// silently cut.
pub(crate) fn requested_timeout(
    timeout: Option<prost_types::Duration>,
    maximum: Duration,
) -> Result<Option<Duration>, ApiError> {
    let Some(duration) = requested_wait(timeout)? else {
        return Ok(None);
    };
    if duration > maximum {
        return Err(ApiError::InvalidArgument(format!(
            "timeout {} exceeds this server's maximum of {}",
            written(duration),
            written(maximum)
        )));
    }
    Ok(Some(duration))
}

/// `duration` as proto3 JSON writes it (`86400.000000001s`): to the nanosecond, so a timeout
/// just past the maximum never reads as equal to it.
fn written(duration: Duration) -> String {
    dalc_proto::duration_json(&dalc_proto::duration_of(duration)).unwrap_or_default()
}

/// A GetTask's `timeout` field as a [`Duration`]: `None` when unset or zero. Only a wait, which
/// [`CallBudget`] caps at the server's maximum wait: any length is taken.
pub(crate) fn requested_wait(
    timeout: Option<prost_types::Duration>,
) -> Result<Option<Duration>, ApiError> {
    let Some(timeout) = timeout else {
        return Ok(None);
    };
    if !dalc_proto::duration_is_valid(&timeout) {
        return Err(ApiError::InvalidArgument(format!(
            "timeout is not a valid duration: {}s and {}ns (nanos must be under a second and \
             share the sign of the seconds)",
            timeout.seconds, timeout.nanos
        )));
    }
    if timeout.seconds < 0 || timeout.nanos < 0 {
        // Formatted only here: every submission and long poll with a timeout passes above.
        let written = dalc_proto::duration_json(&timeout).unwrap_or_default();
        return Err(ApiError::InvalidArgument(format!(
            "timeout must be a non-negative duration, got {written}"
        )));
    }
    let duration = Duration::new(timeout.seconds.unsigned_abs(), timeout.nanos.unsigned_abs());
    Ok((!duration.is_zero()).then_some(duration))
}

/// When a call must be answered, and until when it waits for its task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallBudget {
    /// The call's own gRPC deadline, less a margin for the answer's trip back; `None` when the
    /// client set none (each step is then bounded by its own timeout only).
    pub(crate) answer_by: Option<Instant>,
    /// Sync calls: when the wait for the task to end is over.
    pub(crate) wait_until: Option<Instant>,
}

impl CallBudget {
    /// Fixed once, on arrival: `wait` for up to the requested timeout (or `default`), never
    /// longer than `maximum` nor past the call's deadline.
    pub(crate) fn on_arrival(
        metadata: &MetadataMap,
        wait: bool,
        requested: Option<Duration>,
        default: Duration,
        maximum: Duration,
    ) -> Self {
        let arrived = Instant::now();
        let answer_by = call_deadline(metadata)
            .map(|deadline| arrived + deadline.saturating_sub(DEADLINE_MARGIN.min(deadline / 10)));
        let wait_until = wait.then(|| {
            let until = arrived + requested.unwrap_or(default).min(maximum);
            answer_by.map_or(until, |answer_by| until.min(answer_by))
        });
        CallBudget {
            answer_by,
            wait_until,
        }
    }

    /// Runs one step of the call, cut off at the call's deadline: then `what` is reported as
    /// not answering in time (`UNAVAILABLE`), before the client gives up on us.
    pub(crate) async fn bound<T>(
        &self,
        what: &str,
        step: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        match self.answer_by {
            None => step.await,
            Some(answer_by) => tokio::time::timeout_at(answer_by, step)
                .await
                .unwrap_or_else(|_| {
                    Err(ApiError::Unavailable(format!(
                        "{what} did not answer before the call's deadline"
                    )))
                }),
        }
    }
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
    fn a_negative_timeout_is_refused_in_the_words_a_client_wrote_it() {
        let refusal =
            |seconds, nanos| match requested_wait(Some(prost_types::Duration { seconds, nanos })) {
                Err(ApiError::InvalidArgument(message)) => message,
                other => panic!("{other:?}"),
            };
        assert!(refusal(-1, 0).ends_with("got -1s"));
        assert!(refusal(0, -250_000_000).ends_with("got -0.250s"));
        assert!(refusal(i64::MIN, -999_999_999).ends_with("got -9223372036854775808.999999999s"));
        assert!(refusal(1, 1_000_000_000).contains("not a valid duration"));
        assert!(refusal(0, i32::MIN).contains("not a valid duration"));
        assert!(refusal(1, -1).contains("not a valid duration"));
        assert_eq!(
            requested_wait(Some(prost_types::Duration::default())).ok(),
            Some(None)
        );
    }

    #[tokio::test]
    async fn the_shortest_limit_wins() {
        let mut metadata = MetadataMap::new();
        let secs = Duration::from_secs;
        let waits = |metadata: &MetadataMap, requested| {
            let budget = CallBudget::on_arrival(metadata, true, requested, secs(30), secs(60));
            budget.wait_until.unwrap() - Instant::now()
        };
        let close = |got: Duration, want: Duration| {
            assert!(
                got <= want && want - got < Duration::from_millis(50),
                "{got:?} vs {want:?}"
            )
        };
        close(waits(&metadata, None), secs(30));
        close(waits(&metadata, Some(secs(5))), secs(5));
        close(waits(&metadata, Some(secs(500))), secs(60));
        metadata.insert("grpc-timeout", "2S".parse().unwrap());
        close(waits(&metadata, None), Duration::from_millis(1900));
        let async_call = CallBudget::on_arrival(&metadata, false, None, secs(30), secs(60));
        assert!(async_call.wait_until.is_none() && async_call.answer_by.is_some());
    }

    #[tokio::test]
    async fn a_step_is_cut_off_at_the_calls_deadline() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "300m".parse().unwrap());
        let budget = CallBudget::on_arrival(&metadata, false, None, Duration::ZERO, Duration::ZERO);
        let started = Instant::now();
        let never = std::future::pending::<Result<(), ApiError>>();
        let err = budget.bound("the broker", never).await.unwrap_err();
        assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(300));
    }

    #[test]
    fn timeouts_past_the_maximum_are_refused() {
        let hours = |h: i64| prost_types::Duration {
            seconds: h * 3600,
            nanos: 0,
        };
        let max = Duration::from_secs(24 * 3600);
        assert!(requested_timeout(Some(hours(2000)), max).is_err());
        let huge = prost_types::Duration {
            seconds: 10_000_000_000_000,
            nanos: 0,
        };
        assert!(requested_timeout(Some(huge), max).is_err());
        let extreme = prost_types::Duration {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        assert!(requested_timeout(Some(extreme), max).is_err());
        assert_eq!(requested_timeout(Some(hours(24)), max).unwrap(), Some(max));
        // Said to the nanosecond: it read "86400s exceeds ... of 86400s".
        let just_past = prost_types::Duration {
            seconds: 24 * 3600,
            nanos: 1,
        };
        let refused = requested_timeout(Some(just_past), max).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "timeout 86400.000000001s exceeds this server's maximum of 86400s"
        );
    }

    #[test]
    fn timeouts_must_be_non_negative() {
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(requested_timeout(Some(negative), Duration::MAX).is_err());
        let zero = prost_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(requested_timeout(Some(zero), Duration::MAX).unwrap(), None);
        let half = prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        };
        assert_eq!(
            requested_timeout(Some(half), Duration::MAX).unwrap(),
            Some(Duration::from_millis(500))
        );
    }
}
