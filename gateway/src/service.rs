//! `dalc.v1.TaskService` over tonic: thin handlers that translate and delegate to [`Tasks`].

use std::{collections::BTreeMap, sync::Arc};

use dalc_domain::TaskId;
use dalc_proto::v1::{
    CancelTaskRequest, CancelTaskResponse, GetStatsRequest, GetStatsResponse, GetTaskRequest,
    GetTaskResponse, ListTasksRequest, ListTasksResponse, SubmitBatchRequest, SubmitBatchResponse,
    SubmitTaskRequest, SubmitTaskResponse, WatchTaskRequest, WatchTaskResponse,
    task_service_server::TaskService,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument, Span, field::Empty, info_span};

use crate::{
    ApiError,
    convert::task_to_proto,
    tasks::Tasks,
    wait::{CallBudget, requested_timeout},
};

pub(crate) struct TaskServiceImpl {
    pub(crate) tasks: Arc<Tasks>,
}

#[tonic::async_trait]
impl TaskService for TaskServiceImpl {
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let caller = caller_trace_context(&metadata);
        let span = server_span("SubmitTask", &caller);
        let task = async {
            let timeout = requested_timeout(request.timeout, self.tasks.config.max_task_ttl)?;
            let budget = self.budget(&metadata, request.wait, timeout);
            self.tasks
                .submit(request.expression, timeout, budget, caller)
                .await
        }
        .instrument(span.clone())
        .await;
        let task = record_outcome(&span, task)?;
        Ok(Response::new(SubmitTaskResponse {
            task: Some(task_to_proto(&task)),
        }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let span = server_span("GetTask", &caller_trace_context(&metadata));
        let task = async {
            let id: TaskId = request
                .id
                .parse()
                .map_err(|err| ApiError::InvalidArgument(format!("{err}")))?;
            let timeout = requested_timeout(request.timeout, self.tasks.config.max_task_ttl)?;
            let budget = self.budget(&metadata, request.wait, timeout);
            self.tasks.get(id, budget).await
        }
        .instrument(span.clone())
        .await;
        let task = record_outcome(&span, task)?;
        Ok(Response::new(GetTaskResponse {
            task: Some(task_to_proto(&task)),
        }))
    }

    type WatchTaskStream = Stream<WatchTaskResponse>;

    async fn watch_task(
        &self,
        _request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        Err(Status::unimplemented("WatchTask"))
    }

    async fn list_tasks(
        &self,
        _request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        Err(Status::unimplemented("ListTasks"))
    }

    async fn cancel_task(
        &self,
        _request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        Err(Status::unimplemented("CancelTask"))
    }

    type SubmitBatchStream = Stream<SubmitBatchResponse>;

    async fn submit_batch(
        &self,
        _request: Request<SubmitBatchRequest>,
    ) -> Result<Response<Self::SubmitBatchStream>, Status> {
        Err(Status::unimplemented("SubmitBatch"))
    }

    async fn get_stats(
        &self,
        _request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        Err(Status::unimplemented("GetStats"))
    }
}

/// A server stream of one RPC.
type Stream<T> = futures::stream::BoxStream<'static, Result<T, Status>>;

impl TaskServiceImpl {
    /// The call's time, fixed on arrival.
    fn budget(
        &self,
        metadata: &MetadataMap,
        wait: bool,
        timeout: Option<std::time::Duration>,
    ) -> CallBudget {
        let config = &self.tasks.config;
        CallBudget::on_arrival(
            metadata,
            wait,
            timeout,
            config.default_wait,
            config.max_wait,
        )
    }
}

/// The caller's W3C trace context (`traceparent`, `tracestate`), if it sent one.
fn caller_trace_context(metadata: &MetadataMap) -> BTreeMap<String, String> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|key| {
            let value = metadata.get(key)?.to_str().ok()?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The server span of one call, continuing the caller's trace.
fn server_span(method: &str, caller: &BTreeMap<String, String>) -> Span {
    let span = info_span!(
        "rpc",
        otel.name = format!("dalc.v1.TaskService/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "dalc.v1.TaskService",
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        task_id = Empty,
        status = Empty,
        trace_id = Empty,
    );
    dalc_telemetry::propagation::continue_trace_from_headers(&span, caller);
    span
}

/// Records the call's task (or its error's gRPC code) on the server span.
fn record_outcome(
    span: &Span,
    outcome: Result<dalc_domain::Task, ApiError>,
) -> Result<dalc_domain::Task, Status> {
    match outcome {
        Ok(task) => {
            span.record("task_id", tracing::field::display(task.id));
            span.record("status", task.status.as_str());
            Ok(task)
        }
        Err(err) => {
            let status = Status::from(err);
            span.record("rpc.grpc.status_code", status.code() as i32);
            Err(status)
        }
    }
}
