//! The HTTP/JSON API and the dashboard end to end, on a real `dalc up` (SQLite, the in-process
//! queue): curl, schemathesis against `/openapi.json`, and a real browser (headless Chromium
//! driven by Playwright) on the dashboard. The same layer serves `dalc gateway`; it is a thin
//! translation of the gRPC handlers, so the task rules are tested over gRPC elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use dalc_testkit::process::DalcProcess;

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `dalc up` on free ports, with a fresh SQLite file; extra flags appended.
fn up(name: &str, extra: &[&str]) -> (DalcProcess, PathBuf) {
    let dir = std::env::temp_dir().join(format!("dalc-{name}-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec!["up", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let env = [("DALC_DATABASE_URL", "sqlite://dalc.db?mode=rwc")];
    let process = DalcProcess::start_in(name, dalc(), &args, &env, true, Some(&dir));
    (process, dir)
}

/// `curl -s` with `args`; returns (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn up_with_no_workers_keeps_tasks_pending_for_a_cancel() {
    let (gateway, dir) = up("http-no-workers", &["--workers", "0"]);
    let tasks = format!("{}/tasks", gateway.http_url());
    let (code, body) = curl(&["-d", r#"{"expression": "6 * 7"}"#, &tasks]);
    assert_eq!(code, 202, "{body}");
    let id = json(&body)["task"]["id"].as_str().unwrap().to_owned();
    // Nothing takes it: a wait ends at its timeout with the task still PENDING.
    let (code, body) = curl(&[&format!("{tasks}/{id}?wait=true&timeout=1s")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["task"]["status"], "TASK_STATUS_PENDING");
    let (code, body) = curl(&["-X", "POST", &format!("{tasks}/{id}:cancel")]);
    assert_eq!(code, 200, "{body}");
    let task = json(&body)["task"].clone();
    assert_eq!(task["status"], "TASK_STATUS_CANCELLED");
    assert!(task.get("attempts").is_none(), "it never ran: {task}");
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn up_with_metrics_off_serves_tasks_and_no_metrics() {
    // `off` reads the same for every listener (it was taken for an address, and start failed).
    let (gateway, dir) = up("http-metrics-off", &["--metrics-listen", "off"]);
    assert_eq!(gateway.metrics_addr, None);
    let tasks = format!("{}/tasks", gateway.http_url());
    let (code, body) = curl(&["-d", r#"{"expression": "6 * 7", "wait": true}"#, &tasks]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["task"]["result"], "42");
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn curl_speaks_the_original_http_api() {
    let (gateway, dir) = up("http-curl", &[]);
    let base = gateway.http_url();
    let tasks = format!("{base}/tasks");
    let post = |body: &str| curl(&["-H", "content-type: application/json", "-d", body, &tasks]);

    // As the original API was used: `curl -d` (which labels the body a form) and no header.
    let (code, body) = curl(&["-d", r#"{"expression": "1 + 1", "wait": true}"#, &tasks]);
    assert_eq!(code, 200, "{body}");
    let task = json(&body)["task"].clone();
    assert_eq!(task["status"], "TASK_STATUS_SUCCEEDED");
    assert_eq!(task["result"], "2");
    let id = task["id"].as_str().unwrap().to_owned();

    let (code, body) = post(r#"{"expression": "2^100"}"#);
    assert_eq!(code, 202, "{body}");
    let pending = json(&body)["task"]["id"].as_str().unwrap().to_owned();
    let (code, body) = curl(&[&format!("{tasks}?id={pending}&wait=true&timeout=10s")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["task"]["result"],
        "1267650600228229401496703205376"
    );
    let (code, body) = curl(&[&format!("{tasks}/{id}")]);
    assert_eq!(
        (code, json(&body)["task"]["id"].as_str()),
        (200, Some(id.as_str()))
    );

    let (code, body) = curl(&[&format!("{tasks}?pageSize=1")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["tasks"].as_array().unwrap().len(), 1);
    assert!(json(&body)["nextPageToken"].is_string());

    let (code, body) = curl(&["-X", "POST", &format!("{tasks}/{id}:cancel")]);
    assert_eq!(code, 412, "{body}");
    assert_eq!(json(&body)["code"], "FAILED_PRECONDITION");

    let batch = r#"{"expressions": ["1 + 2", "3 * 4"], "timeout": "20s"}"#;
    let (code, body) = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        batch,
        &format!("{base}/batches"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["results"].as_array().unwrap().len(), 2);

    let (code, body) = curl(&["-N", &format!("{tasks}/{id}/events")]);
    assert_eq!(code, 200);
    assert!(
        body.contains("event: task") && body.contains("TASK_STATUS_SUCCEEDED"),
        "{body}"
    );

    let (code, body) = curl(&[&format!("{base}/stats")]);
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["tasksByStatus"].is_object(), "{body}");

    // Errors: a JSON body with the gRPC code's name and the HTTP status it maps to.
    let (code, body) = post(r#"{"expression": "1 +"}"#);
    assert_eq!(code, 400);
    assert_eq!(json(&body)["code"], "INVALID_ARGUMENT");
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap()
            .contains("column 4")
    );
    let (code, body) = curl(&[&format!("{tasks}/67e55044-10b1-426f-9247-bb680e5fe0c8")]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let (code, body) = post("{not json");
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let (code, body) = curl(&[&format!("{base}/no/such/path")]);
    assert_eq!(code, 404);
    assert!(json(&body)["message"].is_string());

    let (code, body) = curl(&[&format!("{base}/openapi.json")]);
    assert_eq!(code, 200);
    assert_eq!(
        json(&body)["openapi"].as_str().map(|v| &v[..3]),
        Some("3.1")
    );
    let (code, body) = curl(&[&format!("{base}/")]);
    assert_eq!(code, 200);
    assert!(body.contains("<html"), "the dashboard");
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn with_api_keys_http_needs_the_same_bearer_key() {
    let dir = std::env::temp_dir().join(format!("dalc-http-keys-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        dalc_gateway::keys_file_line("web", "web-secret") + "\n",
    )
    .unwrap();
    let keys = keys.display().to_string();
    let (gateway, work) = up("http-keys", &["--api-keys-file", &keys]);
    let tasks = format!("{}/tasks", gateway.http_url());
    let body = r#"{"expression": "1 + 1", "wait": true}"#;
    let json_type = "content-type: application/json";
    let (code, answer) = curl(&["-H", json_type, "-d", body, &tasks]);
    assert_eq!(
        (code, json(&answer)["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let bearer = "Authorization: Bearer web-secret";
    let (code, answer) = curl(&["-H", json_type, "-H", bearer, "-d", body, &tasks]);
    assert_eq!(code, 200, "{answer}");
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(work);
}

#[test]
fn schemathesis_finds_the_api_as_its_openapi_document_says() {
    let (gateway, dir) = up("http-schemathesis", &["--default-wait", "2s"]);
    let script = repo_root().join("services/http/tests/contract/schemathesis.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(gateway.http_url())
        .env("MAX_EXAMPLES", "25")
        .env("SEED", "1")
        .status()
        .expect("the schemathesis script runs");
    assert!(
        status.success(),
        "schemathesis found responses the document does not allow"
    );
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the browser test against `gateway`, with `api_key` typed into the dashboard's prompt.
fn dashboard_test(gateway: &DalcProcess, shots: &str, api_key: Option<&str>) {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join(shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = repo_root().join("services/http/tests/browser/dashboard_test.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(gateway.http_url()).arg(&shots);
    match api_key {
        Some(key) => command.env("DALC_API_KEY", key),
        None => command.env_remove("DALC_API_KEY"),
    };
    let status = command.status().expect("the browser test runs");
    assert!(
        status.success(),
        "the dashboard test failed (screenshots in {shots:?})"
    );
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let (gateway, dir) = up("http-browser", &[]);
    dashboard_test(&gateway, "dashboard-screenshots", None);
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_dashboard_asks_for_a_key_when_the_gateway_has_keys() {
    let dir = std::env::temp_dir().join(format!("dalc-http-ui-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        dalc_gateway::keys_file_line("ui", "ui-secret") + "\n",
    )
    .unwrap();
    let keys = keys.display().to_string();
    let (gateway, work) = up("http-browser-keys", &["--api-keys-file", &keys]);
    dashboard_test(
        &gateway,
        "dashboard-screenshots-with-keys",
        Some("ui-secret"),
    );
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(work);
}

#[test]
fn gateways_on_one_host_all_start_when_the_default_http_port_is_taken() {
    // The default (no --http-listen): the first takes 8080 if it is free, the next a free port.
    let start = |name: &str| {
        let dir =
            std::env::temp_dir().join(format!("dalc-{name}-{}", dalc_testkit::unique_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = [
            ("DALC_DATABASE_URL", "sqlite://dalc.db?mode=rwc"),
            ("DALC_HTTP_LISTEN", ""),
        ];
        let args = ["up", "--listen", "127.0.0.1:0"];
        (
            DalcProcess::start_in(name, dalc(), &args, &env, true, Some(&dir)),
            dir,
        )
    };
    let (first, first_dir) = start("http-default-1");
    let (second, second_dir) = start("http-default-2");
    assert_ne!(first.http_addr, second.http_addr);
    for gateway in [&first, &second] {
        let (code, _) = curl(&[&format!("{}/openapi.json", gateway.http_url())]);
        assert_eq!(code, 200);
    }
    drop((first, second));
    let _ = std::fs::remove_dir_all(first_dir);
    let _ = std::fs::remove_dir_all(second_dir);
}
