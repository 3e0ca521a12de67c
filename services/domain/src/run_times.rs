//! Run-time statistics: an exact count and mean, and a log-scale histogram whose percentiles are
//! within about 2 % of the truth, in constant space however many tasks a worker runs. Workers
//! keep one each and store it; merging them gives the fleet's figures.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// Buckets per doubling: bucket edges grow by 2^(1/32), about 2.2 % apart.
const BUCKETS_PER_DOUBLING: f64 = 32.0;

/// How long tasks took, over every task recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTimes {
    /// Tasks recorded.
    pub count: u64,
    /// Their run times added up, in microseconds.
    pub total_micros: u64,
    /// Bucket number → tasks in it. Sparse: only buckets that were hit.
    pub buckets: BTreeMap<u16, u64>,
}

impl RunTimes {
    pub fn record(&mut self, run_time: Duration) {
        let micros = u64::try_from(run_time.as_micros()).unwrap_or(u64::MAX);
        self.count = self.count.saturating_add(1);
        self.total_micros = self.total_micros.saturating_add(micros);
        let bucket = self.buckets.entry(bucket_of(micros)).or_default();
        *bucket = bucket.saturating_add(1);
    }

    /// Adds `other`'s tasks to these.
    pub fn merge(&mut self, other: &RunTimes) {
        self.count = self.count.saturating_add(other.count);
        self.total_micros = self.total_micros.saturating_add(other.total_micros);
        for (&bucket, &tasks) in &other.buckets {
            let mine = self.buckets.entry(bucket).or_default();
            *mine = mine.saturating_add(tasks);
        }
    }

    /// The true mean; zero with no tasks.
    pub fn mean(&self) -> Duration {
        match self.count {
            0 => Duration::ZERO,
            count => Duration::from_micros(self.total_micros / count),
        }
    }

    /// The `q` quantile (0 < q ≤ 1), within a bucket's width; zero with no tasks.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        // The rank of the task at the quantile, counting from 1.
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (&bucket, &tasks) in &self.buckets {
            seen = seen.saturating_add(tasks);
            if seen >= rank {
                return Duration::from_micros(midpoint_of(bucket));
            }
        }
        Duration::from_micros(self.buckets.keys().last().map_or(0, |&b| midpoint_of(b)))
    }
}

/// Bucket 0 holds 0 µs; bucket n ≥ 1 holds [2^((n-1)/32), 2^(n/32)) µs.
fn bucket_of(micros: u64) -> u16 {
    if micros == 0 {
        return 0;
    }
    let position = (micros as f64).log2() * BUCKETS_PER_DOUBLING;
    // u64::MAX is 2^64 µs: bucket 2049 at most, well inside u16.
    (position.floor() as u16).saturating_add(1)
}

/// The geometric middle of a bucket, in microseconds.
fn midpoint_of(bucket: u16) -> u64 {
    if bucket == 0 {
        return 0;
    }
    let exponent = (f64::from(bucket) - 0.5) / BUCKETS_PER_DOUBLING;
    exponent.exp2().round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_exact_and_percentiles_are_close() {
        let mut times = RunTimes::default();
        for micros in 1..=10_000u64 {
            times.record(Duration::from_micros(micros));
        }
        assert_eq!(times.count, 10_000);
        assert_eq!(times.mean(), Duration::from_micros(5_000));
        let p99 = times.quantile(0.99).as_micros() as f64;
        assert!((p99 / 9_900.0 - 1.0).abs() < 0.025, "p99 {p99}");
        let p50 = times.quantile(0.5).as_micros() as f64;
        assert!((p50 / 5_000.0 - 1.0).abs() < 0.025, "p50 {p50}");
    }

    #[test]
    fn merged_figures_are_the_figures_of_all_tasks() {
        let (mut fast, mut slow) = (RunTimes::default(), RunTimes::default());
        for _ in 0..99 {
            fast.record(Duration::from_millis(1));
        }
        slow.record(Duration::from_secs(1));
        fast.merge(&slow);
        assert_eq!(fast.count, 100);
        assert_eq!(
            fast.mean(),
            Duration::from_micros((99_000 + 1_000_000) / 100)
        );
        let p99 = fast.quantile(0.99).as_micros();
        assert!((980..=1_020).contains(&p99), "{p99}");
        assert!(fast.quantile(1.0) > Duration::from_millis(900));
    }

    #[test]
    fn nothing_recorded_is_zero_and_extremes_do_not_overflow() {
        let mut times = RunTimes::default();
        assert_eq!(times.quantile(0.99), Duration::ZERO);
        assert_eq!(times.mean(), Duration::ZERO);
        times.record(Duration::ZERO);
        times.record(Duration::MAX);
        assert_eq!(times.count, 2);
        assert!(times.quantile(1.0) > Duration::from_secs(1_000_000));
    }

    #[test]
    fn stored_figures_read_back_the_same() {
        let mut times = RunTimes::default();
        times.record(Duration::from_millis(3));
        let json = serde_json::to_string(&times).unwrap_or_default();
        assert_eq!(serde_json::from_str::<RunTimes>(&json).ok(), Some(times));
    }
}
