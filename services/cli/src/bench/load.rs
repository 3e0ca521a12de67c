//! The load loop: `concurrency` callers share one sequence of call numbers until the total
//! or the duration is reached, each recording its calls' outcomes and latencies.
//!
//! Closed loop (no rate): a caller starts its next call as soon as its last one answered, so
//! there are always `concurrency` calls in flight. Open loop (`rate`): call `n` is due at
//! `n / rate` seconds; `concurrency` only caps what is in flight. A call that starts late
//! because every caller was busy still has its latency counted from when it was due, so a
//! stalled server shows in the percentiles instead of silently slowing the load down
//! ("coordinated omission").
//!
//! Shared (through `#[path]`) with the `rpc_floor` example, so both tools load alike.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use super::report::{Outcome, Tally};

/// How much load, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Calls in all; ignored when `duration` is set.
    pub total: u64,
    /// Start calls for this long instead of a count.
    pub duration: Option<Duration>,
    /// Callers, i.e. the most calls in flight at once.
    pub concurrency: u32,
    /// Calls per second (open loop); `None`: closed loop.
    pub rate: Option<f64>,
}

/// Live counts for a progress display.
#[derive(Debug, Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn count(&self, outcome: &Outcome) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Outcome::Error(_)) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Load {
    /// When call `seq` is due, as an offset from the start, or `None` once the run is over.
    /// `elapsed` is the time since the start, which ends a closed-loop timed run.
    pub fn slot(&self, seq: u64, elapsed: Duration) -> Option<Duration> {
        let due = match self.rate {
            Some(rate) => Duration::from_secs_f64(seq as f64 / rate),
            None => Duration::ZERO,
        };
        match self.duration {
            // Open loop: the schedule decides; closed loop: the clock.
            Some(limit) if self.rate.is_some() => (due < limit).then_some(due),
            Some(limit) => (elapsed < limit).then_some(due),
            None => (seq < self.total).then_some(due),
        }
    }
}

/// Runs `call(seq)` under `load`; returns the tally and the time from the start to the last
/// answer.
pub async fn run<F, Fut>(load: Load, counters: Arc<Counters>, call: F) -> (Tally, Duration)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut callers = JoinSet::new();
    for _ in 0..load.concurrency.max(1) {
        let (call, next, counters) = (call.clone(), next.clone(), counters.clone());
        callers.spawn(async move {
            let mut tally = Tally::default();
            let mut last_answer = started;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let Some(due) = load.slot(seq, started.elapsed()) else {
                    break;
                };
                // Closed loop: from now. Open loop: from when it was due, even if it is late.
                let sent = match load.rate {
                    Some(_) => {
                        let due = started + due;
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let outcome = call(seq).await;
                last_answer = Instant::now();
                counters.count(&outcome);
                tally.record(outcome, last_answer.saturating_duration_since(sent));
            }
            (tally, last_answer)
        });
    }
    let mut tally = Tally::default();
    let mut last_answer = started;
    while let Some(joined) = callers.join_next().await {
        match joined {
            Ok((part, last)) => {
                tally.merge(part);
                last_answer = last_answer.max(last);
            }
            // A caller that panicked lost its calls; say so rather than hide them.
            Err(err) => tally.record(
                Outcome::Error(format!("caller died: {err}")),
                Duration::ZERO,
            ),
        }
    }
    (tally, last_answer.saturating_duration_since(started))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(total: u64, duration: Option<u64>, rate: Option<f64>) -> Load {
        Load {
            total,
            duration: duration.map(Duration::from_secs),
            concurrency: 4,
            rate,
        }
    }

    #[test]
    fn a_counted_closed_loop_makes_exactly_total_calls() {
        let l = load(3, None, None);
        let slots: Vec<_> = (0..10)
            .map_while(|seq| l.slot(seq, Duration::ZERO))
            .collect();
        assert_eq!(slots, vec![Duration::ZERO; 3]);
    }

    #[test]
    fn a_timed_closed_loop_stops_with_the_clock() {
        let l = load(3, Some(2), None);
        // The duration wins over the total.
        assert!(l.slot(1000, Duration::from_millis(1999)).is_some());
        assert!(l.slot(0, Duration::from_secs(2)).is_none());
    }

    #[test]
    fn an_open_loop_spaces_calls_by_the_rate() {
        let l = load(4, None, Some(100.0));
        let slots: Vec<_> = (0..10)
            .map_while(|seq| l.slot(seq, Duration::ZERO))
            .collect();
        let expected: Vec<_> = [0, 10, 20, 30].map(Duration::from_millis).into();
        assert_eq!(slots, expected);
    }

    #[test]
    fn a_timed_open_loop_makes_rate_times_duration_calls_whatever_the_clock() {
        let l = load(1, Some(2), Some(250.0));
        // Late callers still get their slots: the schedule, not the clock, ends the run.
        let late = Duration::from_secs(60);
        let calls = (0..10_000).map_while(|seq| l.slot(seq, late)).count();
        assert_eq!(calls, 500);
    }

    #[tokio::test]
    async fn the_loop_tallies_every_call() {
        let counters = Arc::new(Counters::default());
        let (tally, _) = run(load(10, None, None), counters.clone(), |seq| async move {
            if seq % 5 == 0 {
                Outcome::Error("odd".into())
            } else {
                Outcome::Ok
            }
        })
        .await;
        assert_eq!((tally.ok, tally.error_count()), (8, 2));
        assert_eq!(counters.done.load(Ordering::Relaxed), 10);
        assert_eq!(counters.errors.load(Ordering::Relaxed), 2);
    }
}
