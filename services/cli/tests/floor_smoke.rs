//! The floor `benches/compare.sh` measures dalc against (`examples/rpc_floor.rs`), a few
//! hundred round trips over the real RabbitMQ, plain and with task messages, so that it cannot
//! rot. Counts only: no test here asserts a timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

use serde_json::Value;

/// The example's binary: `cargo test` builds a package's examples beside its test binaries.
fn rpc_floor() -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).unwrap();
    let floor = profile_dir.join("examples").join("rpc_floor");
    assert!(
        floor.exists(),
        "{} is missing: `cargo test` builds it with the package's other targets \
         (alone: cargo build -p dalc-cli --example rpc_floor)",
        floor.display()
    );
    floor
}

/// 300 round trips at 8 in flight, with `extra` arguments; the report.
fn run_floor(extra: &[&str]) -> Value {
    let amqp_url = dalc_testkit::amqp_url();
    let output = Command::new(rpc_floor())
        .args(["--amqp-url", &amqp_url])
        .args([
            "--total",
            "300",
            "--concurrency",
            "8",
            "--warmup",
            "20",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "not one JSON object ({err}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["tool"], "rpc_floor", "{report}");
    assert_eq!(report["ok"], 300, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["latency_ms"][key].is_number(), "{report}");
    }
    report
}

#[test]
fn the_floor_echoes_every_request() {
    let report = run_floor(&[]);
    assert_eq!(report["task_messages"], false, "{report}");
}

#[test]
fn the_floor_echoes_every_request_sent_as_a_task_message() {
    let report = run_floor(&["--task-messages"]);
    assert_eq!(report["task_messages"], true, "{report}");
}
