//! A one-line progress bar on stderr, redrawn a few times a second, only when stderr is a
//! terminal: logs and CI output stay free of carriage returns.

use std::{
    io::{IsTerminal, Write},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::load::Counters;

/// What the bar fills up to.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    Calls(u64),
    Time(Duration),
}

/// A drawing bar; [`Progress::finish`] erases it.
#[derive(Debug)]
pub struct Progress {
    stop: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Progress {
    pub fn start(label: &'static str, goal: Goal, counters: Arc<Counters>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { stop: None };
        }
        let token = CancellationToken::new();
        let stopped = token.clone();
        let started = Instant::now();
        let drawing = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let line = render(
                    label,
                    goal,
                    counters.done.load(Ordering::Relaxed),
                    counters.errors.load(Ordering::Relaxed),
                    started.elapsed(),
                );
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}\x1b[K");
                let _ = err.flush();
            }
            // Erase the bar: the report follows on stdout.
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        });
        Progress {
            stop: Some((token, drawing)),
        }
    }

    pub async fn finish(self) {
        if let Some((token, drawing)) = self.stop {
            token.cancel();
            let _ = drawing.await;
        }
    }
}

const WIDTH: usize = 30;

/// `label [#########-----]  450/1000  1234/s  errors 0`
fn render(label: &str, goal: Goal, done: u64, errors: u64, elapsed: Duration) -> String {
    let (fraction, count) = match goal {
        Goal::Calls(total) => (done as f64 / total.max(1) as f64, format!("{done}/{total}")),
        Goal::Time(limit) => (
            elapsed.as_secs_f64() / limit.as_secs_f64().max(f64::MIN_POSITIVE),
            format!(
                "{done} in {:.0}/{:.0} s",
                elapsed.as_secs_f64(),
                limit.as_secs_f64()
            ),
        ),
    };
    let filled = ((fraction.clamp(0.0, 1.0) * WIDTH as f64) as usize).min(WIDTH);
    let rate = if elapsed.is_zero() {
        0.0
    } else {
        done as f64 / elapsed.as_secs_f64()
    };
    format!(
        "{label} [{}{}] {count}  {rate:.0}/s  errors {errors}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_calls_or_the_time() {
        let line = render("sync", Goal::Calls(100), 50, 1, Duration::from_secs(2));
        assert_eq!(
            line,
            format!(
                "sync [{}{}] 50/100  25/s  errors 1",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        let line = render(
            "poll",
            Goal::Time(Duration::from_secs(10)),
            7,
            0,
            Duration::from_secs(20),
        );
        assert!(
            line.starts_with(&format!("poll [{}]", "#".repeat(WIDTH))),
            "{line}"
        );
        assert!(line.contains("7 in 20/10 s"), "{line}");
    }
}
