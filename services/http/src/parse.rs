//! Reading requests into proto messages: JSON bodies in the proto3 JSON mapping (lowerCamelCase
//! or the original snake_case names, Durations as `"10s"`, integers as whole numbers in any
//! JSON notation or the same in strings), query parameters (Durations also Go-style,
//! `"500ms"`, `"2m"`), status names.
//! Anything that does not translate is an `INVALID_ARGUMENT` naming what was wrong.

use std::fmt;

use crate::error::ApiError;
use dalc_proto::v1::TaskStatus;
use serde::de::{self, Deserializer};
use serde::{Deserialize, de::DeserializeOwned};

/// The largest Duration proto3 allows, ±10,000 years.
const MAX_DURATION_SECONDS: i128 = 315_576_000_000;
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The POST /tasks body (SubmitTaskRequest).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitTaskBody {
    pub expression: Option<String>,
    pub wait: Option<bool>,
    pub timeout: Option<String>,
    #[serde(deserialize_with = "uint32")]
    pub priority: Option<u32>,
    #[serde(rename = "idempotencyKey", alias = "idempotency_key")]
    pub idempotency_key: Option<String>,
}

/// The POST /batches body (SubmitBatchRequest).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitBatchBody {
    pub expressions: Option<Vec<String>>,
    pub timeout: Option<String>,
    #[serde(deserialize_with = "uint32")]
    pub priority: Option<u32>,
    #[serde(rename = "idempotencyKey", alias = "idempotency_key")]
    pub idempotency_key: Option<String>,
}

/// Parses a JSON body into `T`. An empty body reads as `{}`: proto3 has no required fields,
/// and `curl -X POST` with no data is a natural way to send an all-defaults request.
pub fn body<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    let Some(first) = bytes.iter().find(|byte| !byte.is_ascii_whitespace()) else {
        return Ok(T::default());
    };
    // A message is a JSON object in proto3 JSON. serde would also read an array, field by
    // field in order, which no client means.
    if *first != b'{' {
        return Err(ApiError::invalid(
            "the request body must be a JSON object: the request in the proto3 JSON mapping, \
             e.g. {\"expression\": \"1 + 1\"}",
        ));
    }
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::invalid(format!("the request body is not a valid request: {error}"))
    })
}

/// A uint32 in proto3 JSON: a whole number in any JSON notation (`5`, `5.0`, `5e0`), or the
/// same in a string; `null` is the default.
fn uint32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    deserializer.deserialize_option(Uint32)
}

struct Uint32;

impl<'de> de::Visitor<'de> for Uint32 {
    type Value = Option<u32>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a whole number from 0 to 4294967295, or one in a string")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        u32::try_from(value)
            .map(Some)
            .map_err(|_| E::custom(format!("{value} is out of range for a uint32")))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        u64::try_from(value)
            .map_err(|_| E::custom(format!("{value} is out of range for a uint32")))
            .and_then(|value| self.visit_u64(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        if value.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&value) {
            return Err(E::custom(format!("{value} is not a uint32")));
        }
        // Whole and in range (checked above), so the conversion is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Some(value as u32))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let not_a_uint32 = || E::custom(format!("{text:?} is not a uint32"));
        if let Ok(value) = text.parse::<u64>() {
            return self.visit_u64(value);
        }
        // Rust also reads "inf" and "NaN" as floats; JSON has no such numbers.
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => {
                self.visit_f64::<E>(value).map_err(|_| not_a_uint32())
            }
            _ => Err(not_a_uint32()),
        }
    }
}

/// A Duration in the proto3 JSON form: decimal seconds with at most 9 fractional digits and
/// the suffix `s`, e.g. `"10s"`, `"0.5s"`, `"-1.25s"`.
pub fn proto_duration(text: &str) -> Result<prost_types::Duration, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "bad duration {text:?}: expected seconds with an \"s\" suffix, e.g. \"10s\" or \"0.5s\""
        ))
    };
    let number = text.strip_suffix('s').ok_or_else(bad)?;
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && (!digits(fraction) || fraction.len() > 9)) {
        return Err(bad());
    }
    let seconds: i128 = whole.parse().map_err(|_| bad())?;
    let nanos: i128 = format!("{fraction:0<9}").parse().map_err(|_| bad())?;
    let total = seconds
        .checked_mul(NANOS_PER_SECOND)
        .and_then(|s| s.checked_add(nanos))
        .ok_or_else(bad)?;
    from_nanos(if negative { -total } else { total }, text)
}

/// A Duration in a query string: the proto3 form, or Go's `time.ParseDuration` form
/// (`"500ms"`, `"2m"`, `"1h30m"`, `"1.5s"`; units ns, us, µs, ms, s, m, h).
pub fn query_duration(text: &str) -> Result<prost_types::Duration, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "bad duration {text:?}: expected e.g. \"10s\", \"0.5s\", \"500ms\" or \"2m\""
        ))
    };
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return from_nanos(0, text);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => 3_600 * NANOS_PER_SECOND,
            _ => return Err(bad()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty())
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || whole.len() > 30
        {
            return Err(bad());
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        // Digits past the ninth cannot matter at nanosecond resolution for any unit >= 1 ns
        // once scaled; keeping 18 bounds the arithmetic below.
        let fraction = &fraction[..fraction.len().min(18)];
        let mut part = whole.checked_mul(unit_nanos).ok_or_else(bad)?;
        if !fraction.is_empty() {
            let scale = 10_i128.pow(u32::try_from(fraction.len()).map_err(|_| bad())?);
            let digits: i128 = fraction.parse().map_err(|_| bad())?;
            part = part
                .checked_add(digits.checked_mul(unit_nanos).ok_or_else(bad)? / scale)
                .ok_or_else(bad)?;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        if total > MAX_DURATION_SECONDS * NANOS_PER_SECOND {
            return Err(bad());
        }
        rest = tail;
    }
    from_nanos(if negative { -total } else { total }, text)
}

fn from_nanos(total: i128, text: &str) -> Result<prost_types::Duration, ApiError> {
    if total.abs() > MAX_DURATION_SECONDS * NANOS_PER_SECOND {
        return Err(ApiError::invalid(format!(
            "duration {text:?} is out of range (at most 315576000000s)"
        )));
    }
    let out_of_range = || ApiError::invalid(format!("duration {text:?} is out of range"));
    Ok(prost_types::Duration {
        seconds: i64::try_from(total / NANOS_PER_SECOND).map_err(|_| out_of_range())?,
        nanos: i32::try_from(total % NANOS_PER_SECOND).map_err(|_| out_of_range())?,
    })
}

/// A status filter: `TASK_STATUS_PENDING`, `PENDING` or `pending` (any case), or the enum
/// number; empty means every status.
pub fn status(text: &str) -> Result<TaskStatus, ApiError> {
    if text.is_empty() {
        return Ok(TaskStatus::Unspecified);
    }
    if let Ok(number) = text.parse::<i32>()
        && let Ok(status) = TaskStatus::try_from(number)
    {
        return Ok(status);
    }
    dalc_proto::status_by_name(text).ok_or_else(|| {
        ApiError::invalid(format!(
            "unknown status {text:?}: expected one of PENDING, RUNNING, SUCCEEDED, FAILED, \
             CANCELLED, EXPIRED (or TASK_STATUS_...)"
        ))
    })
}

/// A boolean query parameter: `true`/`false` (any case), `1`/`0`; empty reads as `true`, so
/// `?wait` alone asks to wait.
pub fn boolean(name: &str, text: &str) -> Result<bool, ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid(format!(
            "bad {name} {text:?}: expected true or false"
        ))),
    }
}

/// A uint32 query parameter.
pub fn uint32_param(name: &str, text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::invalid(format!(
            "bad {name} {text:?}: expected a whole number from 0 to 4294967295"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn proto3_durations() {
        assert_eq!(proto_duration("10s").ok(), Some(d(10, 0)));
        assert_eq!(proto_duration("0.5s").ok(), Some(d(0, 500_000_000)));
        assert_eq!(proto_duration("1.000000001s").ok(), Some(d(1, 1)));
        assert_eq!(proto_duration("-1.5s").ok(), Some(d(-1, -500_000_000)));
        for bad in [
            "",
            "s",
            "10",
            "1.s",
            ".5s",
            "1.0000000001s",
            "500ms",
            "1e3s",
            "--1s",
            " 1s",
            "+1s",
        ] {
            assert!(proto_duration(bad).is_err(), "{bad:?}");
        }
        assert!(proto_duration("315576000001s").is_err());
        assert!(proto_duration("99999999999999999999999999999999999999s").is_err());
    }

    #[test]
    fn go_durations_in_queries() {
        assert_eq!(query_duration("500ms").ok(), Some(d(0, 500_000_000)));
        assert_eq!(query_duration("2m").ok(), Some(d(120, 0)));
        assert_eq!(query_duration("1h30m").ok(), Some(d(5400, 0)));
        assert_eq!(query_duration("1.5s").ok(), Some(d(1, 500_000_000)));
        assert_eq!(query_duration("10s").ok(), Some(d(10, 0)));
        assert_eq!(query_duration("0").ok(), Some(d(0, 0)));
        assert_eq!(query_duration(".5s").ok(), Some(d(0, 500_000_000)));
        assert_eq!(query_duration("1µs").ok(), Some(d(0, 1_000)));
        for bad in [
            "",
            "10",
            "1x",
            "ms",
            "1..5s",
            ".s",
            "-",
            "1s2",
            "9999999999999999h",
        ] {
            assert!(query_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_names_long_short_and_any_case() {
        assert_eq!(
            status("TASK_STATUS_PENDING").ok(),
            Some(TaskStatus::Pending)
        );
        assert_eq!(status("pending").ok(), Some(TaskStatus::Pending));
        assert_eq!(status("Succeeded").ok(), Some(TaskStatus::Succeeded));
        assert_eq!(status("3").ok(), Some(TaskStatus::Succeeded));
        assert_eq!(status("").ok(), Some(TaskStatus::Unspecified));
        assert!(status("DONE").is_err());
        assert!(status("99").is_err());
    }

    #[test]
    fn bodies_accept_both_spellings_and_refuse_strangers() {
        let camel: SubmitTaskBody =
            body(br#"{"expression":"1","idempotencyKey":"k","priority":"3"}"#).unwrap_or_default();
        assert_eq!(camel.idempotency_key.as_deref(), Some("k"));
        assert_eq!(camel.priority, Some(3));
        let snake: SubmitTaskBody =
            body(br#"{"idempotency_key":"k","priority":4,"wait":null}"#).unwrap_or_default();
        assert_eq!(snake.idempotency_key.as_deref(), Some("k"));
        assert_eq!(snake.priority, Some(4));
        assert!(body::<SubmitTaskBody>(br#"{"expresion":"1"}"#).is_err());
        assert!(body::<SubmitTaskBody>(br#"{"priority":-1}"#).is_err());
        assert!(body::<SubmitTaskBody>(br#"{"priority":4294967296}"#).is_err());
        assert!(body::<SubmitTaskBody>(br#"{"wait":"yes"}"#).is_err());
        assert!(body::<SubmitTaskBody>(b"[1]").is_err());
        assert!(body::<SubmitTaskBody>(b"{").is_err());
        assert!(body::<SubmitTaskBody>(b"  ").is_ok());
    }

    fn message_of<T: DeserializeOwned + Default + std::fmt::Debug>(json: &[u8]) -> String {
        match body::<T>(json) {
            Ok(parsed) => panic!("{parsed:?} from {:?}", String::from_utf8_lossy(json)),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_body_is_an_object_never_an_array_read_field_by_field() {
        for json in [
            &br#"["1 + 1", true]"#[..],
            b"[]",
            b"null",
            b"\"1 + 1\"",
            b"7",
        ] {
            let message = message_of::<SubmitTaskBody>(json);
            assert!(message.contains("must be a JSON object"), "{message}");
        }
        let message = message_of::<SubmitBatchBody>(br#"[["1"]]"#);
        assert!(message.contains("must be a JSON object"), "{message}");
    }

    #[test]
    fn integers_in_every_notation_proto3_json_allows() {
        for json in [
            &br#"{"priority":5}"#[..],
            br#"{"priority":5.0}"#,
            br#"{"priority":5e0}"#,
            br#"{"priority":0.5e1}"#,
            br#"{"priority":"5"}"#,
            br#"{"priority":"5.0"}"#,
            br#"{"priority":"5e0"}"#,
        ] {
            let parsed: SubmitTaskBody = body(json).unwrap_or_default();
            assert_eq!(
                parsed.priority,
                Some(5),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        for json in [
            &br#"{"priority":5.5}"#[..],
            br#"{"priority":-1}"#,
            br#"{"priority":-0.5}"#,
            br#"{"priority":"5.5"}"#,
            br#"{"priority":"inf"}"#,
            br#"{"priority":"NaN"}"#,
            br#"{"priority":"five"}"#,
            br#"{"priority":1e10}"#,
            br#"{"priority":true}"#,
            br#"{"priority":[5]}"#,
        ] {
            let message = message_of::<SubmitTaskBody>(json);
            // Said in the API's words, not the parser's own type names.
            assert!(
                !message.contains("enum") && !message.contains("struct"),
                "{message}"
            );
        }
        let message = message_of::<SubmitTaskBody>(br#"{"priority":true}"#);
        assert!(message.contains("a whole number"), "{message}");
    }
}
