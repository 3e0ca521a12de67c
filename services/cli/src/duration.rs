//! Durations as people write them on a command line: `500ms`, `30s`, `5m`, `1h`, `7d` (a bare
//! number is seconds). Shared by the `dalc` binary's flags and the `rpc_floor` example.

use std::time::Duration;

/// A duration as people write it on a command line: `500ms`, `30s`, `5m`, `1h`, `7d` (a bare
/// number is seconds); shown the same way in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ];
        match units
            .iter()
            .find(|(size, _)| ms > 0 && ms.is_multiple_of(*size))
        {
            Some((size, unit)) => write!(f, "{}{unit}", ms / size),
            None => write!(f, "{ms}ms"),
        }
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text).map(HumanDuration)
    }
}

/// The longest duration any flag takes: far beyond every setting, and small enough that a
/// deadline or an instant built from it can never overflow.
const LONGEST: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses `500ms`, `30s`, `5m`, `1h`, `7d` (a bare number is seconds), at most 10 years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_unbounded(text)?;
    if duration > LONGEST {
        return Err(format!("{text:?} is longer than 10 years"));
    }
    Ok(duration)
}

fn parse_unbounded(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s"))?;
    let seconds = |n: u64| Ok(Duration::from_secs(n));
    match unit {
        "ms" => Ok(Duration::from_millis(amount)),
        "" | "s" => seconds(amount),
        "m" => seconds(amount.saturating_mul(60)),
        "h" => seconds(amount.saturating_mul(3600)),
        "d" => seconds(amount.saturating_mul(86_400)),
        _ => Err(format!(
            "invalid duration unit in {text:?}: use ms, s, m, h or d"
        )),
    }
}
