//! The API handlers. Each one translates the HTTP request into the proto request, calls the
//! `TaskService` method in-process (the caller's `authorization` header goes along as gRPC
//! metadata, so the service authenticates it exactly as a gRPC call) and translates the answer
//! back. No task rule lives here: validation, limits and errors all come from the service.

use crate::error::ApiError;
use crate::{json, parse};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dalc_proto::v1::task_service_server::TaskService;
use dalc_proto::v1::{
    CancelTaskRequest, GetStatsRequest, GetTaskRequest, ListTasksRequest, SubmitBatchRequest,
    SubmitTaskRequest, TaskStatus, WatchTaskRequest,
};
use futures::{StreamExt, TryStreamExt};
use std::convert::Infallible;
use std::sync::Arc;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;

/// The handlers' result: a JSON answer or the JSON error.
type Answer = Result<Response, ApiError>;

/// Headers passed on as gRPC metadata: the credentials, and the W3C trace context so a
/// client's trace continues through the gateway as it does over gRPC.
const FORWARDED: [&str; 3] = ["authorization", "traceparent", "tracestate"];

/// The proto request wrapped as a gRPC call would arrive, with the caller's headers as metadata.
fn grpc_request<T>(headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, ApiError> {
    let mut request = tonic::Request::new(message);
    for name in FORWARDED {
        let Some(value) = headers.get(name) else {
            continue;
        };
        match AsciiMetadataValue::try_from(value.as_bytes()) {
            Ok(value) => {
                request.metadata_mut().insert(name, value);
            }
            // A credential that cannot even be carried is refused as gRPC would refuse it;
            // a garbled trace header is only a hint and is dropped.
            Err(_) if name == "authorization" => {
                return Err(ApiError::new(
                    Code::Unauthenticated,
                    "the authorization header is not valid ASCII",
                ));
            }
            Err(_) => {}
        }
    }
    Ok(request)
}

/// A JSON answer. API answers describe state that changes, so nothing may cache them.
fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The body as `T`, after checking it is JSON and within the size limit.
fn json_body<T>(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Default,
{
    if let Some(content_type) = headers.get(header::CONTENT_TYPE)
        && !is_json(content_type, headers.contains_key(header::ORIGIN))
    {
        return Err(ApiError::invalid(format!(
            "expected Content-Type: application/json, got {:?}",
            String::from_utf8_lossy(content_type.as_bytes())
        )));
    }
    let bytes = body.map_err(body_rejection)?;
    parse::body(&bytes)
}

/// Whether a body of `content_type` is read as JSON. A browser (it sends `Origin`) must say
/// `application/json`: it may send a form or text to another site without asking first, and a
/// page elsewhere must not be able to submit or cancel tasks here. Other clients (curl -d,
/// Postman's raw text) may label their JSON body a form or text.
fn is_json(content_type: &HeaderValue, from_a_browser: bool) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let labelled_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    let loosely_labelled =
        essence == "application/x-www-form-urlencoded" || essence == "text/plain";
    labelled_json || (loosely_labelled && !from_a_browser)
}

/// axum's body rejections are plain text; this gives them the API's shape.
pub(crate) fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // A server limit, like a gRPC message past the same limit: RESOURCE_EXHAUSTED, and so
        // the status every RESOURCE_EXHAUSTED gets (429), not HTTP's own 413.
        ApiError::new(Code::ResourceExhausted, "the request body is too large")
    } else {
        ApiError::invalid(format!(
            "the request body could not be read: {}",
            rejection.body_text()
        ))
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::invalid(format!("bad query string: {}", rejection.body_text()))
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::invalid(format!("bad path: {}", rejection.body_text()))
}

/// Query parameters by name; the last one wins, as with most HTTP frameworks.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A parameter under its lowerCamelCase or its snake_case name.
    fn get_either(&self, camel: &str, snake: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == camel || key == snake)
            .map(|(_, value)| value.as_str())
    }

    fn wait_and_timeout(&self) -> Result<(bool, Option<prost_types::Duration>), ApiError> {
        let wait = match self.get("wait") {
            Some(text) => parse::boolean("wait", text)?,
            None => false,
        };
        let timeout = self.get("timeout").map(parse::query_duration).transpose()?;
        Ok((wait, timeout))
    }
}

fn params(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Params, ApiError> {
    query
        .map(|Query(pairs)| Params(pairs))
        .map_err(query_rejection)
}

/// POST /tasks: SubmitTask; 200 when it waited, 202 when it returned at once.
pub(crate) async fn submit_task<S: TaskService>(
    State(service): State<Arc<S>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body: parse::SubmitTaskBody = json_body(&headers, body)?;
    let wait = body.wait.unwrap_or(false);
    let message = SubmitTaskRequest {
        expression: body.expression.unwrap_or_default(),
        wait,
        timeout: body
            .timeout
            .as_deref()
            .map(parse::proto_duration)
            .transpose()?,
        idempotency_key: body.idempotency_key.unwrap_or_default(),
        priority: body.priority.unwrap_or_default(),
    };
    let response = service
        .submit_task(grpc_request(&headers, message)?)
        .await?
        .into_inner();
    let status = if wait {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(reply(status, json::task_envelope(response.task.as_ref())))
}

/// GET /tasks: GetTask with `?id=` (the original form), ListTasks without it.
pub(crate) async fn get_or_list_tasks<S: TaskService>(
    State(service): State<Arc<S>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let list_params = ["status", "pageSize", "page_size", "pageToken", "page_token"];
    if let Some(id) = params.get("id") {
        if let Some(name) = list_params.iter().find(|name| params.get(name).is_some()) {
            return Err(ApiError::invalid(format!(
                "{name} lists tasks and cannot be combined with id"
            )));
        }
        return get_task_by_id(&*service, &headers, id.to_owned(), &params).await;
    }
    if let Some(name) = ["wait", "timeout"]
        .iter()
        .find(|name| params.get(name).is_some())
    {
        return Err(ApiError::invalid(format!(
            "{name} applies to one task and needs id"
        )));
    }
    let message = ListTasksRequest {
        // Empty is unset, as for the other two: `?status=&pageSize=&pageToken=` lists.
        page_size: params
            .get_either("pageSize", "page_size")
            .filter(|text| !text.is_empty())
            .map(|text| parse::uint32_param("pageSize", text))
            .transpose()?
            .unwrap_or_default(),
        page_token: params
            .get_either("pageToken", "page_token")
            .unwrap_or_default()
            .to_owned(),
        status: params
            .get("status")
            .map(parse::status)
            .transpose()?
            .unwrap_or(TaskStatus::Unspecified)
            .into(),
    };
    let response = service
        .list_tasks(grpc_request(&headers, message)?)
        .await?
        .into_inner();
    Ok(reply(StatusCode::OK, json::list(&response)))
}

/// GET /tasks/{id}: GetTask. `/tasks/{id}:cancel` shares the route but is CancelTask's
/// resource, which only takes POST.
pub(crate) async fn get_task<S: TaskService>(
    State(service): State<Arc<S>>,
    method: Method,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let Path(id) = id.map_err(path_rejection)?;
    if id.ends_with(":cancel") {
        return Err(ApiError::method_not_allowed(
            method,
            &format!("/tasks/{id}"),
            crate::CANCEL_METHODS,
        ));
    }
    let params = params(query)?;
    get_task_by_id(&*service, &headers, id, &params).await
}

async fn get_task_by_id<S: TaskService>(
    service: &S,
    headers: &HeaderMap,
    id: String,
    params: &Params,
) -> Answer {
    let (wait, timeout) = params.wait_and_timeout()?;
    let message = GetTaskRequest { id, wait, timeout };
    let response = service
        .get_task(grpc_request(headers, message)?)
        .await?
        .into_inner();
    Ok(reply(
        StatusCode::OK,
        json::task_envelope(response.task.as_ref()),
    ))
}

/// POST /tasks/{id}:cancel: CancelTask. axum captures the whole segment, so the custom
/// method suffix is split off here. POST on the task itself is a method GetTask's resource
/// does not take (405); another custom method is an unknown path (404).
pub(crate) async fn task_action<S: TaskService>(
    State(service): State<Arc<S>>,
    headers: HeaderMap,
    id_action: Result<Path<String>, PathRejection>,
) -> Answer {
    let Path(id_action) = id_action.map_err(path_rejection)?;
    let Some(id) = id_action.strip_suffix(":cancel") else {
        let path = format!("/tasks/{id_action}");
        return Err(if id_action.contains(':') {
            crate::not_found_error(&path)
        } else {
            ApiError::method_not_allowed(Method::POST, &path, crate::TASK_METHODS)
        });
    };
    let message = CancelTaskRequest { id: id.to_owned() };
    let response = service
        .cancel_task(grpc_request(&headers, message)?)
        .await?
        .into_inner();
    Ok(reply(
        StatusCode::OK,
        json::task_envelope(response.task.as_ref()),
    ))
}

/// POST /batches: SubmitBatch. The stream is collected whole and answered sorted by index;
/// an error part-way answers that error (the tasks stored so far can be listed).
pub(crate) async fn submit_batch<S: TaskService>(
    State(service): State<Arc<S>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body: parse::SubmitBatchBody = json_body(&headers, body)?;
    let message = SubmitBatchRequest {
        expressions: body.expressions.unwrap_or_default(),
        timeout: body
            .timeout
            .as_deref()
            .map(parse::proto_duration)
            .transpose()?,
        priority: body.priority.unwrap_or_default(),
        idempotency_key: body.idempotency_key.unwrap_or_default(),
    };
    let stream = service
        .submit_batch(grpc_request(&headers, message)?)
        .await?
        .into_inner();
    let mut results: Vec<_> = stream.try_collect().await?;
    results.sort_by_key(|item| item.index);
    let results: Vec<_> = results.iter().map(json::batch_item).collect();
    Ok(reply(
        StatusCode::OK,
        serde_json::json!({ "results": results }),
    ))
}

/// GET /stats: GetStats.
pub(crate) async fn get_stats<S: TaskService>(
    State(service): State<Arc<S>>,
    headers: HeaderMap,
) -> Answer {
    let response = service
        .get_stats(grpc_request(&headers, GetStatsRequest {})?)
        .await?
        .into_inner();
    Ok(reply(StatusCode::OK, json::stats(&response)))
}

/// GET /tasks/{id}/events: WatchTask as Server-Sent Events, one `task` event per streamed task.
/// An error before the first task is an ordinary JSON error answer (the status line is still
/// ours to choose); after it, an `error` event, and the stream ends.
pub(crate) async fn watch_task<S: TaskService>(
    State(service): State<Arc<S>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let Path(id) = id.map_err(path_rejection)?;
    let stream = service
        .watch_task(grpc_request(&headers, WatchTaskRequest { id })?)
        .await?
        .into_inner();
    let mut stream = Box::pin(stream);
    let first = match stream.next().await {
        Some(Err(status)) => return Err(status.into()),
        first => first,
    };
    let events = futures::stream::iter(first)
        .chain(stream)
        .scan(false, |failed, item| {
            let event = if *failed {
                None
            } else {
                Some(match item {
                    Ok(response) => Event::default()
                        .event("task")
                        .data(json::task_envelope(response.task.as_ref()).to_string()),
                    Err(status) => {
                        *failed = true;
                        Event::default()
                            .event("error")
                            .data(ApiError::from(status).to_json().to_string())
                    }
                })
            };
            futures::future::ready(event)
        })
        .map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Proxies such as nginx buffer responses unless told not to, which would hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
