//! What a load run counts and how it is printed: the outcome of each call, their tally,
//! latency percentiles, and the report as text or as one JSON object.
//!
//! Shared (through `#[path]`) with the `rpc_floor` example, so that `dalc bench` and the floor
//! print the same figures in the same JSON shape and `benches/compare.sh` parses both alike.
//! Only `std` and `serde_json` here: the example has no access to the binary's other modules.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde_json::{Map, Value, json};

/// The error kind of an answer that does not match the expected one.
pub const WRONG_RESULT: &str = "wrong result";

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The expected successful answer.
    Ok,
    /// The expected failure (e.g. `TASK_STATUS_FAILED` for `1 / 0`): a correct answer, and a
    /// latency sample, but counted apart from the successes.
    Expected(String),
    /// Anything else, by kind: a gRPC code name, an unexpected task status, `wrong result`.
    /// Not a latency sample: a fast wrong answer must not improve the figures.
    Error(String),
}

/// The count of every outcome, and the latency of each answered call.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub expected: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latencies: Vec<Duration>,
}

impl Tally {
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.latencies.push(latency);
            }
            Outcome::Expected(kind) => {
                *self.expected.entry(kind).or_default() += 1;
                self.latencies.push(latency);
            }
            Outcome::Error(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (kind, count) in other.expected {
            *self.expected.entry(kind).or_default() += count;
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.latencies.extend(other.latencies);
    }

    pub fn expected_count(&self) -> u64 {
        self.expected.values().sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Calls that got the right answer, success or expected failure.
    pub fn answered(&self) -> u64 {
        self.ok + self.expected_count()
    }

    pub fn total(&self) -> u64 {
        self.answered() + self.error_count()
    }
}

/// Latency percentiles, nearest-rank (a value that was actually observed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// Sorts `latencies` in place; all zero when there are none.
    pub fn of(latencies: &mut [Duration]) -> Percentiles {
        latencies.sort_unstable();
        Percentiles {
            p50: nearest_rank(latencies, 0.50),
            p90: nearest_rank(latencies, 0.90),
            p99: nearest_rank(latencies, 0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

/// The smallest sample with at least `p` of all samples at or below it; `sorted` ascending.
fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One run's figures, ready to print.
#[derive(Debug)]
pub struct Report {
    /// `dalc bench` or `rpc_floor`.
    pub tool: &'static str,
    /// `sync` or `async`.
    pub mode: &'static str,
    /// What was measured and how (addresses, concurrency, …), printed before the figures.
    pub setup: Vec<(&'static str, Value)>,
    pub tally: Tally,
    /// The measured time: from the first call to the last answer.
    pub elapsed: Duration,
    /// Further rates, e.g. async mode's `submit_throughput`, in tasks per second.
    pub rates: Vec<(&'static str, f64)>,
}

impl Report {
    /// Right answers per second of the measured time.
    pub fn throughput(&self) -> f64 {
        per_second(self.tally.answered(), self.elapsed)
    }

    pub fn has_errors(&self) -> bool {
        self.tally.error_count() > 0
    }

    fn percentiles(&self) -> Percentiles {
        let mut latencies = self.tally.latencies.clone();
        Percentiles::of(&mut latencies)
    }

    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("tool".into(), self.tool.into());
        object.insert("mode".into(), self.mode.into());
        for (key, value) in &self.setup {
            object.insert((*key).into(), value.clone());
        }
        let p = self.percentiles();
        let figures = json!({
            "total": self.tally.total(),
            "ok": self.tally.ok,
            "expected_failures": self.tally.expected,
            "errors": self.tally.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput": self.throughput(),
            "latency_ms": {
                "p50": ms(p.p50),
                "p90": ms(p.p90),
                "p99": ms(p.p99),
                "max": ms(p.max),
            },
        });
        if let Value::Object(figures) = figures {
            object.extend(figures);
        }
        for (key, rate) in &self.rates {
            object.insert((*key).into(), (*rate).into());
        }
        Value::Object(object)
    }

    /// The human report. Keeps the `N tasks/s` and `p50 X ms` forms that
    /// `benches/round_trips.sh` reads.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let setup: Vec<String> = self
            .setup
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => format!("{key} {text}"),
                Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(plain).collect();
                    format!("{key} {}", items.join(" "))
                }
                other => format!("{key} {other}"),
            })
            .collect();
        let _ = writeln!(out, "{} ({}): {}", self.tool, self.mode, setup.join(", "));
        let tally = &self.tally;
        let _ = write!(out, "{} total: {} ok", tally.total(), tally.ok);
        if tally.expected_count() > 0 {
            let _ = write!(
                out,
                ", {} failed as expected ({})",
                tally.expected_count(),
                counts(&tally.expected)
            );
        }
        let _ = writeln!(out, ", {} errors", tally.error_count());
        if tally.error_count() > 0 {
            let _ = writeln!(out, "errors: {}", counts(&tally.errors));
        }
        let _ = writeln!(
            out,
            "elapsed {:.2} s, throughput {:.0} tasks/s",
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        for (key, rate) in &self.rates {
            let _ = writeln!(out, "{} {rate:.0} tasks/s", key.replace('_', " "));
        }
        let p = self.percentiles();
        let _ = write!(
            out,
            "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.max),
        );
        out
    }
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} {n}")).collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        // 1..=100 ms, shuffled: p50 is the 50th value, p99 the 99th.
        let mut samples = ms_list(&(1..=100).rev().collect::<Vec<_>>());
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p90, Duration::from_millis(90));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
    }

    #[test]
    fn percentiles_of_few_samples_are_observed_values() {
        let mut one = ms_list(&[7]);
        assert_eq!(
            Percentiles::of(&mut one),
            Percentiles {
                p50: Duration::from_millis(7),
                p90: Duration::from_millis(7),
                p99: Duration::from_millis(7),
                max: Duration::from_millis(7),
            }
        );
        let mut three = ms_list(&[30, 10, 20]);
        let p = Percentiles::of(&mut three);
        assert_eq!(
            (p.p50, p.p99),
            (Duration::from_millis(20), Duration::from_millis(30))
        );
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn errors_are_counted_but_are_not_latency_samples() {
        let mut tally = Tally::default();
        tally.record(Outcome::Ok, Duration::from_millis(1));
        tally.record(
            Outcome::Expected("TASK_STATUS_FAILED".into()),
            Duration::from_millis(2),
        );
        tally.record(Outcome::Error(WRONG_RESULT.into()), Duration::ZERO);
        let mut other = Tally::default();
        other.record(Outcome::Error(WRONG_RESULT.into()), Duration::ZERO);
        other.record(Outcome::Error("Unavailable".into()), Duration::ZERO);
        tally.merge(other);
        assert_eq!((tally.ok, tally.answered(), tally.total()), (1, 2, 5));
        assert_eq!(tally.errors[WRONG_RESULT], 2);
        assert_eq!(tally.latencies.len(), 2);
    }

    #[test]
    fn the_json_report_has_the_documented_fields() {
        let mut tally = Tally::default();
        for v in 1..=4 {
            tally.record(Outcome::Ok, Duration::from_millis(v));
        }
        tally.record(Outcome::Error("Unavailable".into()), Duration::ZERO);
        let report = Report {
            tool: "dalc bench",
            mode: "sync",
            setup: vec![("concurrency", 4.into())],
            tally,
            elapsed: Duration::from_secs(2),
            rates: vec![("submit_throughput", 10.0)],
        };
        let json = report.to_json();
        assert_eq!(json["mode"], "sync");
        assert_eq!(json["concurrency"], 4);
        assert_eq!(json["total"], 5);
        assert_eq!(json["ok"], 4);
        assert_eq!(json["errors"]["Unavailable"], 1);
        assert_eq!(json["throughput"], 2.0);
        assert_eq!(json["latency_ms"]["p50"], 2.0);
        assert_eq!(json["latency_ms"]["max"], 4.0);
        assert_eq!(json["submit_throughput"], 10.0);
        assert!(report.has_errors());
        let text = report.to_text();
        assert!(text.contains("2 tasks/s"), "{text}");
        assert!(text.contains("p50 2.00 ms"), "{text}");
        assert!(text.contains("errors: Unavailable 1"), "{text}");
    }
}
