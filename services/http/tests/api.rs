//! The HTTP API end to end over the in-memory fake `TaskService`: every route, its JSON shape,
//! the error map, the HTTP layer's own errors, SSE framing, the authorization header and the
//! OpenAPI document's agreement with the router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fake.rs"]
mod fake;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use fake::{FakeOptions, FakeService};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.text))
    }

    /// Asserts this is the API's error shape with this status and code.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{}", self.text);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(body.as_object().unwrap().len(), 2, "{}", self.text);
    }
}

fn app(options: FakeOptions) -> (Router, FakeService) {
    let fake = FakeService::new(options);
    (dalc_http::router(Arc::new(fake.clone())), fake)
}

fn default_app() -> (Router, FakeService) {
    app(FakeOptions {
        inject_errors: true,
        ..FakeOptions::default()
    })
}

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(body.to_owned())).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn post(router: &Router, uri: &str, body: Value) -> Reply {
    send(router, "POST", uri, &[JSON], &body.to_string()).await
}

async fn get(router: &Router, uri: &str) -> Reply {
    send(router, "GET", uri, &[], "").await
}

async fn submit(router: &Router, expression: &str, wait: bool) -> Value {
    let reply = post(
        router,
        "/tasks",
        json!({"expression": expression, "wait": wait}),
    )
    .await;
    assert!(reply.status.is_success(), "{}", reply.text);
    reply.json()["task"].clone()
}

fn is_rfc3339_utc(text: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(text).is_ok() && text.ends_with('Z')
}

#[tokio::test]
async fn submit_sync_answers_200_with_the_terminal_task() {
    let (router, _) = default_app();
    let reply = post(
        &router,
        "/tasks",
        json!({"expression": "1 + 1", "wait": true, "timeout": "10s"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    let body = reply.json();
    let task = &body["task"];
    assert_eq!(body.as_object().unwrap().len(), 1);
    assert_eq!(task["status"], "TASK_STATUS_SUCCEEDED");
    assert_eq!(task["result"], "2");
    assert_eq!(task["expression"], "1 + 1");
    assert_eq!(task["attempts"], 1);
    assert!(
        task["workerId"]
            .as_str()
            .unwrap()
            .starts_with("fake-worker")
    );
    uuid::Uuid::parse_str(task["id"].as_str().unwrap()).unwrap();
    for key in ["createdAt", "startedAt", "finishedAt"] {
        assert!(is_rfc3339_utc(task[key].as_str().unwrap()), "{key}: {task}");
    }
    // Defaults are omitted, as in proto3 JSON.
    assert!(task.get("error").is_none(), "{task}");
    assert!(task.get("priority").is_none(), "{task}");
}

#[tokio::test]
async fn submit_async_answers_202_with_the_pending_task() {
    let (router, _) = app(FakeOptions {
        step: Duration::from_secs(5),
        ..FakeOptions::default()
    });
    let reply = post(
        &router,
        "/tasks",
        json!({"expression": "2 * 3", "priority": 7, "idempotencyKey": "k1"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let task = &reply.json()["task"];
    assert_eq!(task["status"], "TASK_STATUS_PENDING");
    assert_eq!(task["priority"], 7);
    for absent in ["result", "startedAt", "finishedAt", "workerId", "attempts"] {
        assert!(task.get(absent).is_none(), "{absent}: {task}");
    }
    // The same key again (snake_case this time, priority as a string) is the same task;
    // with another expression it is ALREADY_EXISTS.
    let again = post(
        &router,
        "/tasks",
        json!({"expression": "2 * 3", "priority": "7", "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(again.json()["task"]["id"], task["id"]);
    post(
        &router,
        "/tasks",
        json!({"expression": "2 * 4", "idempotencyKey": "k1"}),
    )
    .await
    .assert_error(409, "ALREADY_EXISTS");
}

#[tokio::test]
async fn both_get_forms_read_the_same_task_and_long_poll() {
    let (router, _) = default_app();
    let id = submit(&router, "6 / 4", false).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for uri in [
        format!("/tasks?id={id}&wait=true&timeout=10s"),
        format!("/tasks/{id}?wait=true&timeout=2m"),
        format!("/tasks/{id}?wait=1&timeout=1.5s"),
        format!("/tasks/{id}?timeout=500ms"),
        format!("/tasks?id={id}"),
    ] {
        let reply = get(&router, &uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text);
        let task = &reply.json()["task"];
        assert_eq!(task["id"], id.as_str(), "{uri}");
        assert_eq!(task["status"], "TASK_STATUS_SUCCEEDED", "{uri}");
        assert_eq!(task["result"], "1.5", "{uri}");
    }
    get(&router, &format!("/tasks/{id}?wait=true&timeout=soon"))
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    get(&router, &format!("/tasks/{id}?wait=maybe"))
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    get(&router, "/tasks/not-a-uuid")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    get(&router, "/tasks?id=67e55044-10b1-426f-9247-bb680e5fe0c8")
        .await
        .assert_error(404, "NOT_FOUND");
    get(&router, "/tasks/67e55044-10b1-426f-9247-bb680e5fe0c8")
        .await
        .assert_error(404, "NOT_FOUND");
    get(&router, &format!("/tasks?id={id}&status=PENDING"))
        .await
        .assert_error(400, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn list_filters_and_pages() {
    let (router, _) = default_app();
    // An empty list is `{}`: proto3 JSON leaves out empty repeated fields.
    let empty = get(&router, "/tasks").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json(), json!({}));
    let mut ids = Vec::new();
    for expression in ["1", "2", "3"] {
        ids.push(submit(&router, expression, true).await["id"].clone());
    }
    let failed = submit(&router, "1 / 0", true).await;
    assert_eq!(failed["status"], "TASK_STATUS_FAILED");
    assert_eq!(failed["error"], "division by zero");

    for status in ["TASK_STATUS_SUCCEEDED", "SUCCEEDED", "succeeded", "3"] {
        let page = get(&router, &format!("/tasks?status={status}"))
            .await
            .json();
        let tasks = page["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 3, "{status}: {page}");
        // Newest first.
        assert_eq!(tasks[0]["id"], ids[2]);
        assert!(page.get("nextPageToken").is_none());
    }
    let page = get(&router, "/tasks?status=failed").await.json();
    assert_eq!(page["tasks"][0]["id"], failed["id"]);
    // The form with every parameter left empty: the first page of every task.
    let all = get(&router, "/tasks?status=&pageSize=&pageToken=")
        .await
        .json();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 4, "{all}");

    let first = get(&router, "/tasks?pageSize=3").await.json();
    assert_eq!(first["tasks"].as_array().unwrap().len(), 3);
    let token = first["nextPageToken"].as_str().unwrap();
    let second = get(&router, &format!("/tasks?page_size=3&pageToken={token}"))
        .await
        .json();
    assert_eq!(second["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(second["tasks"][0]["id"], ids[0]);
    assert!(second.get("nextPageToken").is_none());

    get(&router, "/tasks?status=DONE")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    get(&router, "/tasks?pageSize=-1")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    get(&router, "/tasks?pageToken=garbage")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    get(&router, "/tasks?wait=true")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn cancel_splits_the_action_off_the_path() {
    let (router, _) = app(FakeOptions {
        step: Duration::from_secs(5),
        ..FakeOptions::default()
    });
    let id = submit(&router, "1 + 1", false).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        // The second cancel finds it CANCELLED and returns it unchanged.
        let reply = send(&router, "POST", &format!("/tasks/{id}:cancel"), &[], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let task = &reply.json()["task"];
        assert_eq!(task["id"], id.as_str());
        assert_eq!(task["status"], "TASK_STATUS_CANCELLED");
    }
    send(&router, "POST", &format!("/tasks/{id}:frobnicate"), &[], "")
        .await
        .assert_error(404, "NOT_FOUND");
    // The task and its cancel are two resources on one route: each 405 lists its own methods.
    let wrong = send(&router, "POST", &format!("/tasks/{id}"), &[], "").await;
    wrong.assert_error(405, "UNIMPLEMENTED");
    assert_eq!(wrong.headers[header::ALLOW], "GET, HEAD");
    for method in ["DELETE", "OPTIONS"] {
        let wrong = send(&router, method, &format!("/tasks/{id}"), &[], "").await;
        wrong.assert_error(405, "UNIMPLEMENTED");
        assert_eq!(wrong.headers[header::ALLOW], "GET, HEAD", "{method}");
    }
    for method in ["GET", "PUT", "OPTIONS"] {
        let wrong = send(&router, method, &format!("/tasks/{id}:cancel"), &[], "").await;
        wrong.assert_error(405, "UNIMPLEMENTED");
        assert_eq!(wrong.headers[header::ALLOW], "POST", "{method}");
    }
    send(&router, "POST", "/tasks/nope:cancel", &[], "")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    send(
        &router,
        "POST",
        "/tasks/67e55044-10b1-426f-9247-bb680e5fe0c8:cancel",
        &[],
        "",
    )
    .await
    .assert_error(404, "NOT_FOUND");
}

#[tokio::test]
async fn cancelling_a_finished_task_is_412() {
    let (router, _) = default_app();
    let id = submit(&router, "1 + 1", true).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    send(&router, "POST", &format!("/tasks/{id}:cancel"), &[], "")
        .await
        .assert_error(412, "FAILED_PRECONDITION");
}

#[tokio::test]
async fn batch_collects_every_task_sorted_by_index() {
    let (router, _) = default_app();
    let reply = post(
        &router,
        "/batches",
        json!({"expressions": ["1 + 1", "2 * 3", "1 / 0"], "timeout": "10s", "priority": 2}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    // Index 0 is omitted, as proto3 JSON omits every default.
    assert_eq!(results[0]["index"], 0);
    assert_eq!(results[1]["index"], 1);
    assert_eq!(results[2]["index"], 2);
    assert_eq!(results[0]["task"]["result"], "2");
    assert_eq!(results[1]["task"]["result"], "6");
    assert_eq!(results[2]["task"]["status"], "TASK_STATUS_FAILED");
    assert_eq!(results[2]["task"]["priority"], 2);

    let bad = post(&router, "/batches", json!({"expressions": ["1", "1 +"]})).await;
    bad.assert_error(400, "INVALID_ARGUMENT");
    assert!(
        bad.json()["message"]
            .as_str()
            .unwrap()
            .contains("expression 1")
    );
    post(&router, "/batches", json!({"expressions": "1"}))
        .await
        .assert_error(400, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn stats_follow_the_proto3_mapping() {
    let (router, _) = default_app();
    submit(&router, "1 + 1", true).await;
    submit(&router, "1 / 0", true).await;
    let reply = get(&router, "/stats").await;
    assert_eq!(reply.status, StatusCode::OK);
    let stats = reply.json();
    let workers = stats["workers"].as_array().unwrap();
    assert!(!workers.is_empty(), "{stats}");
    let duration = |v: &Value| {
        let text = v.as_str().unwrap();
        let number = text.strip_suffix('s').unwrap();
        number.parse::<f64>().is_ok()
    };
    for worker in workers {
        assert!(worker["workerId"].as_str().is_some());
        assert!(worker["total"].as_str().unwrap().parse::<u64>().unwrap() >= 1);
        assert!(duration(&worker["meanRunTime"]), "{worker}");
        assert!(duration(&worker["p99RunTime"]), "{worker}");
        assert!(is_rfc3339_utc(worker["lastSeen"].as_str().unwrap()));
    }
    assert_eq!(stats["totals"]["total"], "2");
    assert_eq!(stats["totals"]["succeeded"], "1");
    assert_eq!(stats["totals"]["failed"], "1");
    assert!(stats["totals"].get("workerId").is_none());
    assert_eq!(stats["tasksByStatus"]["TASK_STATUS_SUCCEEDED"], "1");
    assert_eq!(stats["tasksByStatus"]["TASK_STATUS_FAILED"], "1");
    // Nothing waits in the queue: the zero is written, as a uint64's string.
    assert_eq!(stats["queueDepth"], "0", "{stats}");
}

/// Splits an SSE body into (event, data) pairs, checking the framing line by line.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|block| !block.is_empty()) {
        let mut event = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(name) = line.strip_prefix("event: ") {
                event = Some(name.to_owned());
            } else if let Some(json) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one data line per event: {block:?}");
                data = Some(serde_json::from_str(json).unwrap());
            } else {
                assert!(line.starts_with(':'), "unexpected line {line:?}");
            }
        }
        if let (Some(event), Some(data)) = (event, data) {
            events.push((event, data));
        }
    }
    assert!(text.ends_with("\n\n") || text.is_empty(), "{text:?}");
    events
}

#[tokio::test]
async fn events_stream_every_status_then_end() {
    let (router, _) = app(FakeOptions {
        step: Duration::from_millis(50),
        ..FakeOptions::default()
    });
    let id = submit(&router, "2 ^ 10", false).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = get(&router, &format!("/tasks/{id}/events")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "text/event-stream");
    let events = sse_events(&reply.text);
    let statuses: Vec<_> = events
        .iter()
        .map(|(event, data)| {
            assert_eq!(event, "task");
            assert_eq!(data["task"]["id"], id.as_str());
            data["task"]["status"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        statuses,
        [
            "TASK_STATUS_PENDING",
            "TASK_STATUS_RUNNING",
            "TASK_STATUS_SUCCEEDED"
        ]
    );
    assert_eq!(events[2].1["task"]["result"], "1024");
}

#[tokio::test]
async fn events_errors_before_and_after_the_first_item() {
    let (router, _) = default_app();
    get(
        &router,
        "/tasks/67e55044-10b1-426f-9247-bb680e5fe0c8/events",
    )
    .await
    .assert_error(404, "NOT_FOUND");
    get(&router, "/tasks/bad/events")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    // The fake fails a watch of "1 + 2" after its first item.
    let id = submit(&router, "1 + 2", false).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = get(&router, &format!("/tasks/{id}/events")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let events = sse_events(&reply.text);
    assert_eq!(events.len(), 2, "{}", reply.text);
    assert_eq!(events[0].0, "task");
    assert_eq!(events[1].0, "error");
    assert_eq!(
        events[1].1,
        json!({"code": "INTERNAL", "message": "injected failure"})
    );
}

#[tokio::test]
async fn every_grpc_code_maps_to_its_http_status() {
    let (router, _) = default_app();
    let table = [
        (1, 499, "CANCELLED"),
        (2, 500, "UNKNOWN"),
        (3, 400, "INVALID_ARGUMENT"),
        (4, 504, "DEADLINE_EXCEEDED"),
        (5, 404, "NOT_FOUND"),
        (6, 409, "ALREADY_EXISTS"),
        (7, 403, "PERMISSION_DENIED"),
        (8, 429, "RESOURCE_EXHAUSTED"),
        (9, 412, "FAILED_PRECONDITION"),
        (10, 409, "ABORTED"),
        (11, 400, "OUT_OF_RANGE"),
        (12, 501, "UNIMPLEMENTED"),
        (13, 500, "INTERNAL"),
        (14, 503, "UNAVAILABLE"),
        (15, 500, "DATA_LOSS"),
        (16, 401, "UNAUTHENTICATED"),
    ];
    for (number, status, code) in table {
        let reply = post(
            &router,
            "/tasks",
            json!({"expression": format!("fail:{number}")}),
        )
        .await;
        reply.assert_error(status, code);
        assert_eq!(reply.json()["message"], "injected failure");
    }
}

#[tokio::test]
async fn the_http_layer_answers_its_own_errors_in_json() {
    let (router, _) = default_app();
    get(&router, "/no/such/path")
        .await
        .assert_error(404, "NOT_FOUND");
    get(&router, "/tasks/x/y/z")
        .await
        .assert_error(404, "NOT_FOUND");
    let wrong = send(&router, "DELETE", "/tasks", &[], "").await;
    wrong.assert_error(405, "UNIMPLEMENTED");
    assert!(wrong.headers.contains_key(header::ALLOW));
    send(&router, "PUT", "/stats", &[], "")
        .await
        .assert_error(405, "UNIMPLEMENTED");
    send(&router, "GET", "/batches", &[], "")
        .await
        .assert_error(405, "UNIMPLEMENTED");

    for body in [
        "{",
        "[]",
        "\"1 + 1\"",
        "{\"expression\": 1}",
        "{\"wait\": \"yes\"}",
    ] {
        send(&router, "POST", "/tasks", &[JSON], body)
            .await
            .assert_error(400, "INVALID_ARGUMENT");
    }
    // Unknown fields, bad durations and out-of-range integers are refused, not ignored.
    for body in [
        json!({"expresion": "1"}),
        json!({"expression": "1", "timeout": "10"}),
        json!({"expression": "1", "timeout": "500ms"}),
        json!({"expression": "1", "priority": -1}),
        json!({"expression": "1", "idempotencyKey": "a", "idempotency_key": "b"}),
    ] {
        post(&router, "/tasks", body)
            .await
            .assert_error(400, "INVALID_ARGUMENT");
    }
    send(
        &router,
        "POST",
        "/tasks",
        &[("content-type", "multipart/form-data; boundary=x")],
        "{\"expression\": \"1\"}",
    )
    .await
    .assert_error(400, "INVALID_ARGUMENT");
    // curl -d (a form) and Postman's raw text still carry JSON.
    for form in ["application/x-www-form-urlencoded", "text/plain"] {
        let sent = send(
            &router,
            "POST",
            "/tasks",
            &[("content-type", form)],
            "{\"expression\": \"1\"}",
        )
        .await;
        assert_eq!(sent.status, StatusCode::ACCEPTED, "{form}: {}", sent.text);
        // A page on another site cannot do the same through a visitor's browser.
        send(
            &router,
            "POST",
            "/tasks",
            &[
                ("content-type", form),
                ("origin", "https://elsewhere.example"),
            ],
            "{\"expression\": \"1\"}",
        )
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    }
    // No content type at all is read as JSON; `application/json; charset=utf-8` is JSON.
    let plain = send(&router, "POST", "/tasks", &[], "{\"expression\": \"1\"}").await;
    assert_eq!(plain.status, StatusCode::ACCEPTED, "{}", plain.text);
    let charset = send(
        &router,
        "POST",
        "/tasks",
        &[("content-type", "application/json; charset=utf-8")],
        "{\"expression\": \"1\"}",
    )
    .await;
    assert_eq!(charset.status, StatusCode::ACCEPTED, "{}", charset.text);
    // The service's own refusals: the expression's fault and its position.
    let refused = post(&router, "/tasks", json!({"expression": "1 +"})).await;
    refused.assert_error(400, "INVALID_ARGUMENT");
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("position")
    );
}

#[tokio::test]
async fn oversized_bodies_are_resource_exhausted_429() {
    let fake = FakeService::new(FakeOptions::default());
    let router = dalc_http::router_with(
        Arc::new(fake),
        dalc_http::RouterOptions::default().max_body_bytes(1024),
    );
    let big = json!({"expression": "1 + ".repeat(1000) + "1"}).to_string();
    send(&router, "POST", "/tasks", &[JSON], &big)
        .await
        .assert_error(429, "RESOURCE_EXHAUSTED");
    let batch = json!({"expressions": vec!["1"; 1000]}).to_string();
    send(&router, "POST", "/batches", &[JSON], &batch)
        .await
        .assert_error(429, "RESOURCE_EXHAUSTED");
    let small = post(&router, "/tasks", json!({"expression": "1"})).await;
    assert_eq!(small.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_authorization_header_reaches_the_service() {
    let (router, fake) = app(FakeOptions {
        api_key: Some("s3cret".into()),
        ..FakeOptions::default()
    });
    let refused = get(&router, "/stats").await;
    refused.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(
        refused.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"dalc\""
    );
    assert_eq!(fake.last_authorization(), None);
    send(
        &router,
        "GET",
        "/stats",
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await
    .assert_error(401, "UNAUTHENTICATED");
    assert_eq!(fake.last_authorization().as_deref(), Some("Bearer wrong"));
    let auth = ("authorization", "Bearer s3cret");
    let ok = send(&router, "GET", "/stats", &[auth], "").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let submitted = send(
        &router,
        "POST",
        "/tasks",
        &[auth, JSON],
        "{\"expression\": \"1 + 1\", \"wait\": true}",
    )
    .await;
    assert_eq!(submitted.status, StatusCode::OK);
    let id = submitted.json()["task"]["id"].as_str().unwrap().to_owned();
    for (method, uri) in [
        ("GET", format!("/tasks/{id}")),
        ("GET", format!("/tasks?id={id}")),
        ("GET", "/tasks".to_owned()),
        ("GET", format!("/tasks/{id}/events")),
        ("POST", format!("/tasks/{id}:cancel")),
    ] {
        let reply = send(&router, method, &uri, &[], "").await;
        reply.assert_error(401, "UNAUTHENTICATED");
        let reply = send(&router, method, &uri, &[auth], "").await;
        assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let batch = send(
        &router,
        "POST",
        "/batches",
        &[auth, JSON],
        "{\"expressions\": [\"1\"]}",
    )
    .await;
    assert_eq!(batch.status, StatusCode::OK);
    assert_eq!(fake.last_authorization().as_deref(), Some("Bearer s3cret"));
}

/// Every route the router serves, as (method, OpenAPI path, a concrete path to call).
const ROUTES: [(&str, &str, &str); 11] = [
    ("post", "/tasks", "/tasks"),
    ("get", "/tasks", "/tasks"),
    (
        "get",
        "/tasks/{id}",
        "/tasks/67e55044-10b1-426f-9247-bb680e5fe0c8",
    ),
    (
        "post",
        "/tasks/{id}:cancel",
        "/tasks/67e55044-10b1-426f-9247-bb680e5fe0c8:cancel",
    ),
    (
        "get",
        "/tasks/{id}/events",
        "/tasks/67e55044-10b1-426f-9247-bb680e5fe0c8/events",
    ),
    ("post", "/batches", "/batches"),
    ("get", "/stats", "/stats"),
    ("get", "/openapi.json", "/openapi.json"),
    ("get", "/", "/"),
    ("get", "/app.js", "/app.js"),
    ("get", "/app.css", "/app.css"),
];

#[tokio::test]
async fn the_openapi_document_names_every_route_and_only_those() {
    let (router, _) = default_app();
    let reply = get(&router, "/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    let doc = reply.json();
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(dalc_http::OPENAPI_JSON).unwrap()
    );
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<_> = ROUTES
        .iter()
        .map(|(method, path, _)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    for (method, path, concrete) in ROUTES {
        let reply = send(&router, &method.to_uppercase(), concrete, &[JSON], "{}").await;
        let fallback = reply.status == StatusCode::NOT_FOUND
            && serde_json::from_str::<Value>(&reply.text).is_ok_and(|body| {
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no such path"))
            });
        let routed = reply.status != StatusCode::METHOD_NOT_ALLOWED && !fallback;
        assert!(routed, "{method} {concrete}: {}", reply.text);
        // Every status the API answers is documented for the operation.
        let responses = &doc["paths"][path][method]["responses"];
        assert!(
            responses.get(reply.status.as_str()).is_some(),
            "{method} {path}: {} not documented",
            reply.status
        );
        if method != "get" || path.starts_with("/tasks") || path == "/stats" {
            // API operations document the error answers.
            for status in ["400", "401", "500", "503"] {
                assert!(responses.get(status).is_some(), "{method} {path} {status}");
            }
        }
    }
    // Every $ref resolves.
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    out.push(target.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    for target in targets {
        let pointer = target.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
    }
}

#[tokio::test]
async fn the_dashboard_is_served_with_its_assets() {
    let (router, _) = default_app();
    let page = get(&router, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.headers[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert!(page.headers.contains_key(header::CONTENT_SECURITY_POLICY));
    for id in [
        "id=\"expression\"",
        "id=\"submit\"",
        "id=\"submit-result\"",
        "id=\"submit-error\"",
        "id=\"status-filter\"",
        "id=\"tasks\"",
        "id=\"task-detail\"",
        "id=\"workers\"",
        "id=\"queue-depth\"",
        "src=\"/app.js\"",
        "href=\"/app.css\"",
    ] {
        assert!(page.text.contains(id), "{id}");
    }
    let script = get(&router, "/app.js").await;
    assert_eq!(
        script.headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(script.text.contains("sessionStorage"));
    let style = get(&router, "/app.css").await;
    assert_eq!(
        style.headers[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
}
