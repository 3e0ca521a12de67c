//! `dalc.v1.TaskService` over tonic: thin handlers that translate and delegate to [`Tasks`].

use std::{collections::BTreeMap, sync::Arc};

use dalc_domain::{Priority, TaskId};
use dalc_proto::v1::{
    CancelTaskRequest, CancelTaskResponse, GetStatsRequest, GetStatsResponse, GetTaskRequest,
    GetTaskResponse, ListTasksRequest, ListTasksResponse, SubmitBatchRequest, SubmitBatchResponse,
    SubmitTaskRequest, SubmitTaskResponse, WatchTaskRequest, WatchTaskResponse,
    task_service_server::TaskService,
};
use futures::{FutureExt, StreamExt, future};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument, Span, field::Empty, info_span};

use crate::{
    ApiError,
    auth::Tenant,
    batch::Batch,
    convert::{stats_to_proto, status_filter, task_to_proto},
    tasks::{Submission, Tasks},
    wait::{CallBudget, call_deadline, requested_timeout, requested_wait},
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
        let (span, submitted) = self.start_submit(request);
        let task = record_outcome(&span, submitted.await)?;
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
            let tenant = self.authenticate(&metadata)?;
            let id = parse_id(&request.id)?;
            let timeout = requested_wait(request.timeout)?;
            let budget = self.budget(&metadata, request.wait, timeout);
            self.tasks.get(&tenant, id, budget).await
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
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let span = server_span("WatchTask", &caller_trace_context(&metadata));
        let deadline = call_deadline(&metadata).map(|left| tokio::time::Instant::now() + left);
        let changes = async {
            let tenant = self.authenticate(&metadata)?;
            let id = parse_id(&request.id)?;
            // The first read (and the broker's binding for events), before anything streams;
            // the stream itself ends with the call.
            let first = self.tasks.watch(&tenant, id);
            self.bounded(&metadata, "the task database or queue", first)
                .await
        }
        .instrument(span.clone())
        .await
        .map_err(|err| record_error(&span, err))?;
        let changes = changes
            .map(|task| {
                Ok(WatchTaskResponse {
                    task: Some(task_to_proto(&task)),
                })
            })
            .boxed();
        Ok(Response::new(match deadline {
            Some(deadline) => until_deadline(changes, deadline),
            None => changes,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let span = server_span("ListTasks", &caller_trace_context(&metadata));
        let page = async {
            let tenant = self.authenticate(&metadata)?;
            let status = status_filter(request.status)?;
            let page = self
                .tasks
                .list(&tenant, request.page_size, &request.page_token, status);
            self.bounded(&metadata, "the task database", page).await
        }
        .instrument(span.clone())
        .await;
        let (tasks, next_page_token) = page.map_err(|err| record_error(&span, err))?;
        Ok(Response::new(ListTasksResponse {
            tasks: tasks.iter().map(task_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let span = server_span("CancelTask", &caller_trace_context(&metadata));
        let task = async {
            let tenant = self.authenticate(&metadata)?;
            let id = parse_id(&request.id)?;
            let budget = self.budget(&metadata, false, None);
            self.tasks.cancel(&tenant, id, budget).await
        }
        .instrument(span.clone())
        .await;
        let task = record_outcome(&span, task)?;
        Ok(Response::new(CancelTaskResponse {
            task: Some(task_to_proto(&task)),
        }))
    }

    type SubmitBatchStream = Stream<SubmitBatchResponse>;

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<Self::SubmitBatchStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let caller = caller_trace_context(&metadata);
        let span = server_span("SubmitBatch", &caller);
        let answers = async {
            let tenant = self.authenticate(&metadata)?;
            let timeout = requested_timeout(request.timeout, self.tasks.config.max_task_ttl)?;
            let batch = Batch {
                expressions: request.expressions,
                timeout,
                priority: requested_priority(request.priority)?,
                idempotency_key: non_empty(request.idempotency_key),
            };
            let budget = self.budget(&metadata, true, timeout);
            self.tasks
                .submit_batch(&tenant, batch, budget, caller)
                .await
        }
        .instrument(span.clone())
        .await
        .map_err(|err| record_error(&span, err))?;
        let answers = answers.map(|(index, task)| {
            Ok(SubmitBatchResponse {
                index,
                task: Some(task_to_proto(&task)),
            })
        });
        Ok(Response::new(answers.boxed()))
    }

    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        let (metadata, _, _) = request.into_parts();
        let span = server_span("GetStats", &caller_trace_context(&metadata));
        let stats = async {
            let tenant = self.authenticate(&metadata)?;
            let stats = self.tasks.stats(&tenant);
            self.bounded(&metadata, "the task database or queue", stats)
                .await
        }
        .instrument(span.clone())
        .await
        .map_err(|err| record_error(&span, err))?;
        Ok(Response::new(stats_to_proto(&stats)))
    }
}

impl TaskServiceImpl {
    /// SubmitTask's checks, made at once, and the submission that follows, in the call's span.
    /// Thousands of sync calls may wait at once, so what each holds while it waits is that
    /// future alone: the request and its metadata are gone by then.
    fn start_submit(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> (
        Span,
        impl Future<Output = Result<dalc_domain::Task, ApiError>> + Send + '_,
    ) {
        let (metadata, _, request) = request.into_parts();
        let caller = caller_trace_context(&metadata);
        let span = server_span("SubmitTask", &caller);
        // In the call's span from the start: the steps' spans are made as its children.
        let submitted = span.in_scope(|| match self.checked_submission(&metadata, request) {
            Ok((tenant, submission, budget)) => self
                .tasks
                .submit(tenant, submission, budget, caller)
                .left_future(),
            Err(err) => future::ready(Err(err)).right_future(),
        });
        (span.clone(), submitted.instrument(span))
    }

    /// A SubmitTask request's caller, submission and time, or why it is refused.
    fn checked_submission(
        &self,
        metadata: &MetadataMap,
        request: SubmitTaskRequest,
    ) -> Result<(Tenant, Submission, CallBudget), ApiError> {
        let tenant = self.authenticate(metadata)?;
        let timeout = requested_timeout(request.timeout, self.tasks.config.max_task_ttl)?;
        let submission = Submission {
            expression: request.expression,
            timeout,
            priority: requested_priority(request.priority)?,
            idempotency_key: non_empty(request.idempotency_key),
        };
        let budget = self.budget(metadata, request.wait, timeout);
        Ok((tenant, submission, budget))
    }

    /// The caller's tenant: from its API key when the gateway has keys, else the one tenant.
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Tenant, ApiError> {
        match &self.tasks.config.api_keys {
            Some(keys) => keys.authenticate(metadata),
            None => Ok(Tenant::default()),
        }
    }

    /// `step` of a call that does not wait, cut off at the call's deadline (see
    /// [`CallBudget::bound`]).
    async fn bounded<T>(
        &self,
        metadata: &MetadataMap,
        what: &str,
        step: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        self.budget(metadata, false, None).bound(what, step).await
    }

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

fn parse_id(text: &str) -> Result<TaskId, ApiError> {
    text.parse()
        .map_err(|err| ApiError::InvalidArgument(format!("{err}")))
}

fn requested_priority(priority: u32) -> Result<Priority, ApiError> {
    Priority::new(priority).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "priority must be 0 to {}, got {priority}",
            Priority::MAX
        ))
    })
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// A server stream of one RPC.
type Stream<T> = futures::stream::BoxStream<'static, Result<T, Status>>;

/// `items` until the call's `deadline`, which ends it with `DEADLINE_EXCEEDED` (tonic enforces
/// a deadline only until a stream's first message, and a watch may then wait for hours).
fn until_deadline<T: Send + 'static>(
    items: Stream<T>,
    deadline: tokio::time::Instant,
) -> Stream<T> {
    let timer = Box::pin(tokio::time::sleep_until(deadline));
    futures::stream::unfold(Some((items, timer)), |state| async move {
        let (mut items, mut timer) = state?;
        tokio::select! {
            item = items.next() => item.map(|item| (item, Some((items, timer)))),
            () = &mut timer => {
                let ended = Status::deadline_exceeded("the call's deadline passed");
                Some((Err(ended), None))
            }
        }
    })
    .boxed()
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
    // Its name is one of dalc_telemetry::LOG_CONTEXT_SPANS: log lines inside show its fields.
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
    let task = outcome.map_err(|err| record_error(span, err))?;
    span.record("task_id", tracing::field::display(task.id));
    span.record("status", task.status.as_str());
    Ok(task)
}

/// Records an error's gRPC code on the server span, and turns it into the call's status.
fn record_error(span: &Span, err: ApiError) -> Status {
    let status = Status::from(err);
    span.record("rpc.grpc.status_code", status.code() as i32);
    status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use dalc_queue::memory::MemoryBroker;
    use dalc_storage::TaskStore;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        GatewayConfig, events::Events, marks::PublishMarks, task_counts::TaskCounts,
        tasks::MAX_ACCEPTING, waiters::Waiters,
    };

    async fn service() -> TaskServiceImpl {
        let store = TaskStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let broker = Arc::new(MemoryBroker::new());
        let config = GatewayConfig::new("size-test");
        let tasks = Tasks {
            marks: PublishMarks::start(store.clone(), config.sweep_grace),
            waiting: Arc::new(tokio::sync::Semaphore::new(config.max_waiting_calls)),
            events: Events::new(broker.clone(), config.gateway_id.clone()),
            config,
            store,
            publisher: broker.clone(),
            notifier: broker,
            accepting: tokio::sync::Semaphore::new(MAX_ACCEPTING),
            waiters: Waiters::default(),
            reply_to: "replies".into(),
            counts: TaskCounts::default(),
            draining: CancellationToken::new(),
        };
        TaskServiceImpl {
            tasks: Arc::new(tasks),
        }
    }

    /// A gateway holds thousands of waiting calls (README: 5,000 sync calls in about 60 MiB), so
    /// the state each keeps while it waits must stay small. Before it was looked after, a
    /// SubmitTask call's future was 2.7 KB and held its wait's 1.3 KB within, and a GetTask
    /// call's was 4.9 KB (its read's future inline); these bounds leave room for compilers,
    /// not for that again.
    #[tokio::test]
    async fn a_waiting_call_holds_little() {
        let service = service().await;
        let request = Request::new(SubmitTaskRequest {
            expression: "1 + 1".into(),
            wait: true,
            ..Default::default()
        });
        let call = service.submit_task(request);
        let submit_bytes = std::mem::size_of_val(&*call);
        drop(call);
        let request = Request::new(GetTaskRequest {
            id: TaskId::new().to_string(),
            wait: true,
            ..Default::default()
        });
        let call = service.get_task(request);
        let get_bytes = std::mem::size_of_val(&*call);
        drop(call);
        let task = dalc_domain::Task::new("1 + 1", None);
        let subscription = service.tasks.waiters.subscribe(task.id);
        let wait =
            service
                .tasks
                .wait_for(task, subscription, Instant::now() + Duration::from_secs(1));
        let wait_bytes = std::mem::size_of_val(&wait);
        println!(
            "SubmitTask's future: {submit_bytes} B; GetTask's: {get_bytes} B; a wait's: {wait_bytes} B"
        );
        assert!(
            submit_bytes <= 768,
            "SubmitTask's future: {submit_bytes} bytes"
        );
        assert!(get_bytes <= 1536, "GetTask's future: {get_bytes} bytes");
        assert!(wait_bytes <= 1024, "a wait's future: {wait_bytes} bytes");
    }
}
