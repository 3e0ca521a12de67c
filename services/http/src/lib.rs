//! dalc's HTTP/JSON API and web dashboard: a thin layer over `dalc.v1.TaskService`.
//!
//! [`router`] serves the same API as gRPC, in the proto3 JSON mapping of the same messages, by
//! calling the `TaskService` implementation in-process. There is no second implementation of
//! any task rule here: every request becomes the proto request, every answer or `Status` is
//! translated back. The dashboard (`/`) and the OpenAPI document (`/openapi.json`) are static
//! files compiled into the binary.
//!
//! | Method and path | RPC | Success |
//! |---|---|---|
//! | `POST /tasks` | SubmitTask | 200 (waited) / 202 |
//! | `GET /tasks?id=ID`, `GET /tasks/{id}` | GetTask | 200 |
//! | `GET /tasks` | ListTasks | 200 |
//! | `POST /tasks/{id}:cancel` | CancelTask | 200 |
//! | `GET /tasks/{id}/events` | WatchTask (Server-Sent Events) | 200 |
//! | `POST /batches` | SubmitBatch (collected) | 200 |
//! | `GET /stats` | GetStats | 200 |
//!
//! Every error is `{"code": "NOT_FOUND", "message": "..."}` with the HTTP status its gRPC code
//! maps to (see [`error::http_status`]).

mod api;
mod assets;
pub mod error;
pub mod json;
mod parse;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dalc_proto::v1::task_service_server::TaskService;
use std::sync::Arc;

pub use error::ApiError;

/// The OpenAPI 3.1 document of the API, as served at `/openapi.json`.
pub const OPENAPI_JSON: &str = assets::OPENAPI_JSON;

/// Settings of the HTTP layer itself; the task rules and limits are the service's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterOptions {
    /// The largest request body accepted; larger ones get 429 (RESOURCE_EXHAUSTED). Default
    /// 4 MiB: room for a 10,000-expression batch, small enough that a client cannot make us
    /// buffer much.
    pub max_body_bytes: usize,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

impl RouterOptions {
    /// Sets [`RouterOptions::max_body_bytes`].
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

/// The HTTP/JSON API and the dashboard over `service`, with the default [`RouterOptions`].
pub fn router<S: TaskService>(service: Arc<S>) -> Router {
    router_with(service, RouterOptions::default())
}

/// The HTTP/JSON API and the dashboard over `service`.
pub fn router_with<S: TaskService>(service: Arc<S>, options: RouterOptions) -> Router {
    Router::new()
        .route(
            "/tasks",
            get(api::get_or_list_tasks::<S>).post(api::submit_task::<S>),
        )
        .route(
            "/tasks/{id}",
            get(api::get_task::<S>).post(api::task_action::<S>),
        )
        .route("/tasks/{id}/events", get(api::watch_task::<S>))
        .route("/batches", axum::routing::post(api::submit_batch::<S>))
        .route("/stats", get(api::get_stats::<S>))
        .route("/openapi.json", get(assets::openapi))
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(service)
}

pub(crate) fn not_found_error(path: &str) -> ApiError {
    ApiError::http(
        StatusCode::NOT_FOUND,
        tonic::Code::NotFound,
        format!("no such path: {path} (see /openapi.json)"),
    )
}

async fn not_found(uri: Uri) -> Response {
    not_found_error(uri.path()).into_response()
}

/// The methods `/tasks/{id}` (GetTask) takes.
pub(crate) const TASK_METHODS: &str = "GET, HEAD";
/// The methods `/tasks/{id}:cancel` (CancelTask) takes.
pub(crate) const CANCEL_METHODS: &str = "POST";

/// The methods of a task's own paths. `/tasks/{id}` (GetTask) and `/tasks/{id}:cancel`
/// (CancelTask) are two resources behind one axum route, whose `Allow` would list the methods
/// of both; `None` for every other path, whose route's `Allow` is already exact.
pub(crate) fn task_path_methods(path: &str) -> Option<&'static str> {
    let segment = path.strip_prefix("/tasks/")?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    let lower = segment.to_ascii_lowercase();
    Some(
        if lower.ends_with(":cancel") || lower.ends_with("%3acancel") {
            CANCEL_METHODS
        } else {
            TASK_METHODS
        },
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    match task_path_methods(uri.path()) {
        Some(allow) => ApiError::method_not_allowed(&method, uri.path(), allow),
        None => ApiError::http(
            StatusCode::METHOD_NOT_ALLOWED,
            tonic::Code::Unimplemented,
            format!("method {method} is not allowed on {}", uri.path()),
        ),
    }
    .into_response()
}
