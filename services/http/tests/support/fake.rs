//! An in-memory `TaskService` for the HTTP layer's tests and the `fake_gateway` example: tasks
//! are queued, picked up by two pretend workers after a short delay, evaluated by a tiny
//! arithmetic parser and finished, with waits, watches, lists, cancels, batches and per-worker
//! statistics behaving as the real gateway documents them. It is a test double, not a second
//! gateway: only what the HTTP layer needs to be exercised honestly.
//!
//! Shared by the tests and the example through `#[path]`; each uses part of it.
#![allow(dead_code)]

use dalc_proto::v1::task_service_server::TaskService;
use dalc_proto::v1::{
    CancelTaskRequest, CancelTaskResponse, GetStatsRequest, GetStatsResponse, GetTaskRequest,
    GetTaskResponse, ListTasksRequest, ListTasksResponse, SubmitBatchRequest, SubmitBatchResponse,
    SubmitTaskRequest, SubmitTaskResponse, Task, TaskStatus, WatchTaskRequest, WatchTaskResponse,
    WorkerStats,
};
use futures::stream::BoxStream;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

const WORKERS: [&str; 2] = ["fake-worker-1", "fake-worker-2"];
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const MAX_TASKS: usize = 10_000;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Time in the queue, then time running, of every task.
    pub step: Duration,
    /// When set, every call must carry `authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Test hooks: `fail:<code>` as an expression fails SubmitTask with that gRPC code, and a
    /// watch of a task whose expression is `1 + 2` ends with an INTERNAL error after one item.
    pub inject_errors: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            step: Duration::from_millis(20),
            api_key: None,
            inject_errors: false,
        }
    }
}

#[derive(Debug, Default)]
struct WorkerRecord {
    succeeded: u64,
    failed: u64,
    run_times: Vec<Duration>,
    last_seen: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first.
    tasks: Vec<Task>,
    keys: HashMap<String, String>,
    workers: BTreeMap<String, WorkerRecord>,
    next_worker: usize,
    /// The `authorization` metadata of the latest call, for tests to inspect.
    last_authorization: Option<String>,
}

#[derive(Debug)]
struct Shared {
    options: FakeOptions,
    state: Mutex<State>,
    /// Bumped on every change, so waiters and watchers wake up and look again.
    changes: watch::Sender<u64>,
}

/// The fake service; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct FakeService {
    shared: Arc<Shared>,
}

impl FakeService {
    pub fn new(options: FakeOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                options,
                state: Mutex::new(State::default()),
                changes: watch::channel(0).0,
            }),
        }
    }

    /// The `authorization` value the latest call carried as metadata.
    pub fn last_authorization(&self) -> Option<String> {
        self.shared.lock().last_authorization.clone()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not wedge the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        self.lock().last_authorization = given.clone();
        match &self.options.api_key {
            None => Ok(()),
            Some(key) if given.as_deref() == Some(format!("Bearer {key}").as_str()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("missing or unknown API key")),
        }
    }

    fn find(&self, id: &str) -> Result<Task, Status> {
        check_id(id)?;
        self.lock()
            .tasks
            .iter()
            .find(|task| task.id == id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no task {id}")))
    }

    /// Waits until the task is terminal or `until` passes, then returns it as it stands.
    async fn wait_for(&self, id: &str, until: tokio::time::Instant) -> Result<Task, Status> {
        let mut changes = self.changes.subscribe();
        loop {
            let task = self.find(id)?;
            if is_terminal(&task) {
                return Ok(task);
            }
            if tokio::time::timeout_at(until, changes.changed())
                .await
                .is_err()
            {
                return self.find(id);
            }
        }
    }

    fn insert(self: &Arc<Self>, expression: String, key: String, priority: u32) -> Task {
        let mut state = self.lock();
        if !key.is_empty()
            && let Some(id) = state.keys.get(&key)
            && let Some(task) = state.tasks.iter().find(|task| &task.id == id)
        {
            return task.clone();
        }
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            expression,
            status: TaskStatus::Pending.into(),
            created_at: Some(now()),
            priority,
            ..Task::default()
        };
        if !key.is_empty() {
            state.keys.insert(key, task.id.clone());
        }
        state.tasks.push(task.clone());
        if state.tasks.len() > MAX_TASKS {
            state.tasks.remove(0);
        }
        drop(state);
        self.changed();
        let shared = Arc::clone(self);
        let id = task.id.clone();
        tokio::spawn(async move { shared.run(id).await });
        task
    }

    /// One pretend worker's handling of one task.
    async fn run(self: Arc<Self>, id: String) {
        tokio::time::sleep(self.options.step).await;
        let started = SystemTime::now();
        let worker = {
            let mut state = self.lock();
            let worker = WORKERS[state.next_worker % WORKERS.len()].to_owned();
            state.next_worker += 1;
            let Some(task) = state.tasks.iter_mut().find(|task| task.id == id) else {
                return;
            };
            if task.status() != TaskStatus::Pending {
                return; // cancelled meanwhile
            }
            task.status = TaskStatus::Running.into();
            task.started_at = Some(timestamp(started));
            task.worker_id = worker.clone();
            task.attempts += 1;
            worker
        };
        self.changed();
        tokio::time::sleep(self.options.step).await;
        {
            let mut state = self.lock();
            let Some(task) = state.tasks.iter_mut().find(|task| task.id == id) else {
                return;
            };
            let succeeded = match evaluate(&task.expression) {
                Ok(value) => {
                    task.status = TaskStatus::Succeeded.into();
                    task.result = value;
                    true
                }
                Err(error) => {
                    task.status = TaskStatus::Failed.into();
                    task.error = error.message;
                    false
                }
            };
            let finished = SystemTime::now();
            task.finished_at = Some(timestamp(finished));
            let record = state.workers.entry(worker).or_default();
            if succeeded {
                record.succeeded += 1;
            } else {
                record.failed += 1;
            }
            record
                .run_times
                .push(finished.duration_since(started).unwrap_or_default());
            record.last_seen = Some(finished);
        }
        self.changed();
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| Status::invalid_argument(format!("malformed task id {id:?}: not a UUID")))
}

fn check_timeout(timeout: Option<prost_types::Duration>) -> Result<Duration, Status> {
    let Some(timeout) = timeout else {
        return Ok(DEFAULT_WAIT);
    };
    if timeout.seconds < 0 || timeout.nanos < 0 {
        return Err(Status::invalid_argument(
            "timeout must be a non-negative duration",
        ));
    }
    let duration = Duration::new(timeout.seconds.unsigned_abs(), timeout.nanos.unsigned_abs());
    if duration > MAX_TIMEOUT {
        return Err(Status::invalid_argument(
            "timeout exceeds this server's maximum of 86400s",
        ));
    }
    Ok(if duration.is_zero() {
        DEFAULT_WAIT
    } else {
        duration
    })
}

fn check_priority(priority: u32) -> Result<(), Status> {
    if priority > 9 {
        return Err(Status::invalid_argument(format!(
            "priority {priority} is out of range 0-9"
        )));
    }
    Ok(())
}

fn is_terminal(task: &Task) -> bool {
    !matches!(
        task.status(),
        TaskStatus::Pending | TaskStatus::Running | TaskStatus::Unspecified
    )
}

fn now() -> prost_types::Timestamp {
    timestamp(SystemTime::now())
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

fn to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl TaskService for FakeService {
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        self.shared.authenticate(&request)?;
        let request = request.into_inner();
        if self.shared.options.inject_errors
            && let Some(code) = request.expression.strip_prefix("fail:")
        {
            let code = code.parse::<i32>().unwrap_or(2);
            return Err(Status::new(tonic::Code::from_i32(code), "injected failure"));
        }
        validate(&request.expression)?;
        let timeout = check_timeout(request.timeout)?;
        check_priority(request.priority)?;
        if request.idempotency_key.chars().count() > 128 {
            return Err(Status::invalid_argument(
                "idempotency key longer than 128 characters",
            ));
        }
        if !request.idempotency_key.is_empty() {
            let state = self.shared.lock();
            if let Some(id) = state.keys.get(&request.idempotency_key) {
                let same = state
                    .tasks
                    .iter()
                    .any(|task| &task.id == id && task.expression == request.expression);
                if !same {
                    return Err(Status::already_exists(
                        "the idempotency key was used with another expression",
                    ));
                }
            }
        }
        let task = self.shared.insert(
            request.expression,
            request.idempotency_key,
            request.priority,
        );
        let task = if request.wait {
            let until = tokio::time::Instant::now() + timeout;
            self.shared.wait_for(&task.id, until).await?
        } else {
            task
        };
        Ok(Response::new(SubmitTaskResponse { task: Some(task) }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        self.shared.authenticate(&request)?;
        let request = request.into_inner();
        let timeout = check_timeout(request.timeout)?;
        let task = if request.wait {
            let until = tokio::time::Instant::now() + timeout;
            self.shared.wait_for(&request.id, until).await?
        } else {
            self.shared.find(&request.id)?
        };
        Ok(Response::new(GetTaskResponse { task: Some(task) }))
    }

    type WatchTaskStream = BoxStream<'static, Result<WatchTaskResponse, Status>>;

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        self.shared.authenticate(&request)?;
        let id = request.into_inner().id;
        let first = self.shared.find(&id)?;
        let shared = Arc::clone(&self.shared);
        let changes = shared.changes.subscribe();
        let fail_after_first = shared.options.inject_errors && first.expression == "1 + 2";
        // State: the last status sent (None before the first item), and whether to stop.
        let stream = futures::stream::unfold(
            (shared, changes, id, None::<i32>, false),
            move |(shared, mut changes, id, last, done)| async move {
                if done {
                    return None;
                }
                if last.is_some() && fail_after_first {
                    return Some((
                        Err(Status::internal("injected failure")),
                        (shared, changes, id, last, true),
                    ));
                }
                loop {
                    let task = match shared.find(&id) {
                        Ok(task) => task,
                        Err(status) => {
                            return Some((Err(status), (shared, changes, id, last, true)));
                        }
                    };
                    if last != Some(task.status) {
                        let terminal = is_terminal(&task);
                        let status = task.status;
                        let item = WatchTaskResponse { task: Some(task) };
                        return Some((Ok(item), (shared, changes, id, Some(status), terminal)));
                    }
                    if changes.changed().await.is_err() {
                        return None;
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.shared.authenticate(&request)?;
        let request = request.into_inner();
        let size = match request.page_size {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let offset = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse::<usize>()
                .map_err(|_| Status::invalid_argument("malformed page token"))?
        };
        let state = self.shared.lock();
        let matching: Vec<&Task> = state
            .tasks
            .iter()
            .rev()
            .filter(|task| request.status == 0 || task.status == request.status)
            .collect();
        let tasks: Vec<Task> = matching
            .iter()
            .skip(offset)
            .take(size)
            .map(|task| (*task).clone())
            .collect();
        let next = offset.saturating_add(size);
        let next_page_token = if next < matching.len() {
            next.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        self.shared.authenticate(&request)?;
        let id = request.into_inner().id;
        check_id(&id)?;
        let task = {
            let mut state = self.shared.lock();
            let task = state
                .tasks
                .iter_mut()
                .find(|task| task.id == id)
                .ok_or_else(|| Status::not_found(format!("no task {id}")))?;
            match task.status() {
                TaskStatus::Pending => {
                    task.status = TaskStatus::Cancelled.into();
                    task.error = "cancelled by the client".into();
                    task.finished_at = Some(now());
                }
                TaskStatus::Cancelled => {}
                other => {
                    return Err(Status::failed_precondition(format!(
                        "the task is {} and can no longer be cancelled",
                        other.as_str_name()
                    )));
                }
            }
            task.clone()
        };
        self.shared.changed();
        Ok(Response::new(CancelTaskResponse { task: Some(task) }))
    }

    type SubmitBatchStream = BoxStream<'static, Result<SubmitBatchResponse, Status>>;

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<Self::SubmitBatchStream>, Status> {
        self.shared.authenticate(&request)?;
        let request = request.into_inner();
        if request.expressions.is_empty() {
            return Err(Status::invalid_argument(
                "a batch needs at least one expression",
            ));
        }
        if request.expressions.len() > 10_000 {
            return Err(Status::invalid_argument(
                "at most 10000 expressions in a batch",
            ));
        }
        for (index, expression) in request.expressions.iter().enumerate() {
            validate(expression).map_err(|status| {
                Status::invalid_argument(format!("expression {index}: {}", status.message()))
            })?;
        }
        let timeout = check_timeout(request.timeout)?;
        check_priority(request.priority)?;
        if request.idempotency_key.chars().count() > 120 {
            return Err(Status::invalid_argument(
                "idempotency key longer than 120 characters",
            ));
        }
        let until = tokio::time::Instant::now() + timeout;
        let mut ids = Vec::new();
        for (index, expression) in request.expressions.into_iter().enumerate() {
            let key = if request.idempotency_key.is_empty() {
                String::new()
            } else {
                format!("{}/{index}", request.idempotency_key)
            };
            ids.push(self.shared.insert(expression, key, request.priority).id);
        }
        let mut items = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            let task = self.shared.wait_for(id, until).await?;
            items.push(SubmitBatchResponse {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                task: Some(task),
            });
        }
        // The real service streams in completion order; reversed here so the HTTP layer's
        // sort by index is exercised.
        items.reverse();
        Ok(Response::new(Box::pin(futures::stream::iter(
            items.into_iter().map(Ok),
        ))))
    }

    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        self.shared.authenticate(&request)?;
        let state = self.shared.lock();
        let mut totals = WorkerRecord::default();
        let mut workers = Vec::new();
        for (id, record) in &state.workers {
            totals.succeeded += record.succeeded;
            totals.failed += record.failed;
            totals.run_times.extend(record.run_times.iter().copied());
            totals.last_seen = totals.last_seen.max(record.last_seen);
            workers.push(worker_stats(id, record));
        }
        let mut tasks_by_status = HashMap::new();
        for task in &state.tasks {
            *tasks_by_status
                .entry(task.status().as_str_name().to_owned())
                .or_insert(0) += 1;
        }
        let queue_depth = state
            .tasks
            .iter()
            .filter(|task| task.status() == TaskStatus::Pending)
            .count() as u64;
        Ok(Response::new(GetStatsResponse {
            workers,
            totals: Some(worker_stats("", &totals)),
            queue_depth,
            tasks_by_status,
        }))
    }
}

fn worker_stats(id: &str, record: &WorkerRecord) -> WorkerStats {
    let mut times = record.run_times.clone();
    times.sort();
    let count = u32::try_from(times.len()).unwrap_or(u32::MAX);
    let mean = (count > 0).then(|| times.iter().sum::<Duration>() / count);
    let p99 = (!times.is_empty()).then(|| times[(times.len() * 99).div_ceil(100) - 1]);
    WorkerStats {
        worker_id: id.to_owned(),
        succeeded: record.succeeded,
        failed: record.failed,
        total: record.succeeded + record.failed,
        mean_run_time: mean.map(to_proto),
        p99_run_time: p99.map(to_proto),
        last_seen: record.last_seen.map(timestamp),
    }
}

/// The refusal of an expression that does not parse (an evaluation error is a FAILED task).
fn validate(expression: &str) -> Result<(), Status> {
    if expression.trim().is_empty() {
        return Err(Status::invalid_argument("the expression is empty"));
    }
    if expression.len() > 4096 {
        return Err(Status::invalid_argument(
            "the expression is longer than 4096 bytes",
        ));
    }
    match evaluate(expression) {
        Err(error) if error.syntax => Err(Status::invalid_argument(error.message)),
        _ => Ok(()),
    }
}

struct EvalError {
    syntax: bool,
    message: String,
}

/// `+ - * / ^`, parentheses, unary minus and decimal numbers, in f64: enough for a fake.
fn evaluate(expression: &str) -> Result<String, EvalError> {
    let mut parser = Parser {
        bytes: expression.as_bytes(),
        at: 0,
        depth: 0,
    };
    let value = parser.expr()?;
    parser.skip_spaces();
    if parser.at < parser.bytes.len() {
        return Err(parser.syntax("unexpected character"));
    }
    if !value.is_finite() {
        return Err(EvalError {
            syntax: false,
            message: "result too large".into(),
        });
    }
    Ok(if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    })
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn syntax(&self, what: &str) -> EvalError {
        let what = if self.at >= self.bytes.len() {
            "unexpected end of expression"
        } else {
            what
        };
        EvalError {
            syntax: true,
            message: format!("{what} at position {}", self.at + 1),
        }
    }

    fn skip_spaces(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_spaces();
        self.bytes.get(self.at).copied()
    }

    fn expr(&mut self) -> Result<f64, EvalError> {
        let mut value = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.at += 1;
            let right = self.term()?;
            value = if op == b'+' {
                value + right
            } else {
                value - right
            };
        }
        Ok(value)
    }

    fn term(&mut self) -> Result<f64, EvalError> {
        let mut value = self.unary()?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            self.at += 1;
            let right = self.unary()?;
            if op == b'/' {
                if right == 0.0 {
                    // Keep parsing so a later syntax error still wins over evaluation.
                    self.expr_rest()?;
                    return Err(EvalError {
                        syntax: false,
                        message: "division by zero".into(),
                    });
                }
                value /= right;
            } else {
                value *= right;
            }
        }
        Ok(value)
    }

    fn expr_rest(&mut self) -> Result<(), EvalError> {
        while let Some(b'+' | b'-' | b'*' | b'/' | b'^') = self.peek() {
            self.at += 1;
            self.unary()?;
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<f64, EvalError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
            return Ok(-self.unary()?);
        }
        let base = self.atom()?;
        if self.peek() == Some(b'^') {
            self.at += 1;
            let exponent = self.unary()?;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<f64, EvalError> {
        match self.peek() {
            Some(b'(') => {
                self.depth += 1;
                if self.depth > 64 {
                    return Err(self.syntax("nesting too deep"));
                }
                self.at += 1;
                let value = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(self.syntax("expected \")\""));
                }
                self.at += 1;
                self.depth -= 1;
                Ok(value)
            }
            Some(b'0'..=b'9' | b'.') => {
                let start = self.at;
                while self
                    .bytes
                    .get(self.at)
                    .is_some_and(|b| b.is_ascii_digit() || *b == b'.')
                {
                    self.at += 1;
                }
                std::str::from_utf8(&self.bytes[start..self.at])
                    .ok()
                    .and_then(|text| text.parse::<f64>().ok())
                    .ok_or_else(|| {
                        self.at = start;
                        self.syntax("malformed number")
                    })
            }
            _ => Err(self.syntax("expected a number or \"(\"")),
        }
    }
}
