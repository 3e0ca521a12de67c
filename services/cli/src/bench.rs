//! `dalc bench`: a closed-loop load generator against a running gateway. It reports figures
//! (throughput, latency percentiles); it asserts nothing.

use std::time::{Duration, Instant};

use anyhow::Result;
use dalc_proto::v1::{SubmitTaskRequest, TaskStatus};
use tokio::task::JoinSet;

use crate::{args::BenchArgs, client::connect};

pub async fn bench(args: BenchArgs) -> Result<u8> {
    let client = connect(&args.client).await?;
    let concurrency = args.concurrency.max(1);
    let per_worker = args.requests.div_ceil(concurrency);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let expression = args.expression.clone();
        let wait = !args.no_wait;
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            let mut failures = 0usize;
            for _ in 0..per_worker {
                let request = SubmitTaskRequest {
                    expression: expression.clone(),
                    wait,
                    timeout: None,
                };
                let sent = Instant::now();
                match client.submit_task(request).await {
                    Ok(response) => {
                        let done = response
                            .into_inner()
                            .task
                            .is_some_and(|t| !wait || t.status() == TaskStatus::Succeeded);
                        if done {
                            latencies.push(sent.elapsed());
                        } else {
                            failures += 1;
                        }
                    }
                    Err(_) => failures += 1,
                }
            }
            (latencies, failures)
        });
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    while let Some(joined) = workers.join_next().await {
        let (mut part, failed) = joined?;
        latencies.append(&mut part);
        failures += failed;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| -> Duration {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    };
    let mode = if args.no_wait {
        "async submit"
    } else {
        "sync submit (result included)"
    };
    println!(
        "{mode} of {:?}: {} ok, {failures} failed, concurrency {concurrency}",
        args.expression,
        latencies.len()
    );
    println!(
        "elapsed {:.2} s, {:.0} tasks/s",
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(0.5)),
        ms(percentile(0.9)),
        ms(percentile(0.99)),
        ms(percentile(1.0)),
    );
    Ok(u8::from(failures > 0))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
