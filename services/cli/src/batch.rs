//! `dalc submit -f FILE`: many expressions through SubmitBatch, safe against a gateway dying.
//!
//! The expressions go in chunks (`--chunk-size`, 500 by default), several in flight
//! (`--chunks-in-flight`), spread by the balanced client over the healthy gateways. Each chunk
//! has its own idempotency key, `RUN/cN` (RUN: `--idempotency-key`, or a random run id), so
//! when a chunk's stream breaks (its gateway died) the chunk is sent again, to another
//! gateway, with the same key: the server answers with the tasks it already stored and runs
//! none of them twice. A chunk is sent again until every one of its expressions has a
//! terminal answer or the run's timeout passes; a stream that ends early (the server's own
//! wait cap) is resumed the same way.
//!
//! Then the results, in input order, on stdout (`index<TAB>STATUS<TAB>result-or-error`, or
//! `{"index": n, "task": {…}}` lines with `--json`), and a summary on stderr.

use std::{
    collections::{BTreeSet, VecDeque},
    fmt::Write as _,
    io::Read as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dalc_client::DalcClient;
use dalc_domain::Backoff;
use dalc_proto::v1::{SubmitBatchRequest, Task, TaskStatus};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    args::SubmitArgs,
    bench::{
        load::Counters,
        progress::{Goal, Progress},
    },
    client::{CALL_MARGIN, EXIT_TASK_UNSUCCESSFUL, connect},
    render::{batch_json, is_terminal, short_status},
};

/// How long a whole run may take when `--timeout` is not given.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest run key: chunk keys `KEY/cN` must stay within the server's 120 characters.
const MAX_RUN_KEY: usize = 100;
/// The first pause before sending a chunk again, doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub async fn submit_file(args: SubmitArgs) -> Result<u8> {
    let path = args.file.clone().context("no file given")?;
    let expressions = Arc::new(read_expressions(&path)?);
    let json = args.client.connect.json;
    if expressions.is_empty() {
        eprintln!("no expressions in {}", path.display());
        return Ok(0);
    }
    let run = run_key(args.idempotency_key.as_deref())?;
    let client = connect(&args.client.connect).await?;
    let deadline = Instant::now() + args.client.timeout.map_or(DEFAULT_RUN_TIMEOUT, |t| t.0);

    let chunk_size = args.chunk_size.max(1) as usize;
    let chunks: VecDeque<Chunk> = (0..expressions.len())
        .step_by(chunk_size)
        .enumerate()
        .map(|(number, start)| Chunk {
            number,
            start,
            len: chunk_size.min(expressions.len() - start),
        })
        .collect();
    let shared = Arc::new(Shared::new(expressions.len()));
    let progress = Progress::start(
        "submit",
        Goal::Calls(expressions.len() as u64),
        shared.counters.clone(),
    );
    let queue = Arc::new(Mutex::new(chunks));
    let stop = CancellationToken::new();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..args.chunks_in_flight.max(1) {
        let sender = Sender {
            client: client.clone(),
            expressions: expressions.clone(),
            shared: shared.clone(),
            run: run.clone(),
            priority: args.priority,
            deadline,
            stop: stop.clone(),
        };
        let queue = queue.clone();
        senders.spawn(async move {
            loop {
                let Some(chunk) = lock(&queue).pop_front() else {
                    return Ok(());
                };
                sender.run_chunk(&chunk).await?;
            }
        });
    }
    let mut refused: Option<anyhow::Error> = None;
    while let Some(joined) = senders.join_next().await {
        let failed = match joined {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err),
            Err(err) => Some(anyhow::anyhow!("a chunk sender died: {err}")),
        };
        if let Some(err) = failed {
            // One refusal (a bad expression, a bad key) refuses the run: stop the others.
            stop.cancel();
            refused.get_or_insert(err);
        }
    }
    progress.finish().await;
    if let Some(err) = refused {
        // Chunks sent before the refusal are stored and run: say how to find them.
        return Err(err.context(format!(
            "run {run} stopped; chunks already accepted still run (their idempotency keys start with \"{run}/\")"
        )));
    }

    let results = std::mem::take(&mut *lock(&shared.results));
    let last_error = lock(&shared.last_error).clone();
    let mut out = String::new();
    for (index, result) in results.iter().enumerate() {
        let line = match (result, json) {
            (Some(task), true) => batch_json(index, task),
            (Some(task), false) => text_line(index, task),
            (None, _) => unanswered_line(index, last_error.as_deref(), json),
        };
        out.push_str(&line);
        out.push('\n');
    }
    {
        use std::io::Write as _;
        // A reader that went away (`| head`) is not an error of the run.
        let _ = std::io::stdout().lock().write_all(out.as_bytes());
    }
    let summary = Summary::of(&results, shared.conflicts());
    eprintln!(
        "{}",
        summary.line(
            shared.retries.load(Ordering::Relaxed),
            last_error.as_deref()
        )
    );
    Ok(summary.exit_code())
}

/// Every expression of the file (or standard input for `-`): one a line, trimmed; blank
/// lines and `#` comment lines skipped.
fn read_expressions(path: &Path) -> Result<Vec<String>> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Ok(expressions_of(&text))
}

fn expressions_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The run's key: the user's, or a fresh random one (each run is then new to the server).
fn run_key(given: Option<&str>) -> Result<String> {
    match given {
        Some(key) if key.is_empty() || key.chars().count() > MAX_RUN_KEY => {
            bail!("--idempotency-key with -f: 1 to {MAX_RUN_KEY} characters (chunk keys add /cN)")
        }
        Some(key) => Ok(key.to_owned()),
        None => Ok(uuid::Uuid::new_v4().simple().to_string()),
    }
}

/// Expressions `start .. start + len`, sent as SubmitBatch number `number`.
#[derive(Debug)]
struct Chunk {
    number: usize,
    start: usize,
    len: usize,
}

/// What the senders fill in.
#[derive(Debug)]
struct Shared {
    /// The latest answer for each expression; a terminal one is final.
    results: Mutex<Vec<Option<Task>>>,
    /// Terminal answers (done) and unsuccessful ones (errors), for the progress bar.
    counters: Arc<Counters>,
    /// Calls that failed and were made again.
    retries: AtomicU64,
    /// Expressions answered with two different task ids (a task made twice), by index: an
    /// answer sent again counts once.
    conflicts: Mutex<BTreeSet<usize>>,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn new(len: usize) -> Shared {
        Shared {
            results: Mutex::new(vec![None; len]),
            counters: Arc::new(Counters::default()),
            retries: AtomicU64::new(0),
            conflicts: Mutex::default(),
            last_error: Mutex::new(None),
        }
    }

    /// How many expressions were answered with two different task ids.
    fn conflicts(&self) -> u64 {
        lock(&self.conflicts).len() as u64
    }

    /// Keeps `task` as expression `index`'s answer unless it already has a terminal one;
    /// true when the answer moved on (first answer, or first terminal one).
    fn record(&self, index: usize, task: Task) -> bool {
        let mut results = lock(&self.results);
        let Some(slot) = results.get_mut(index) else {
            return false;
        };
        if let Some(previous) = slot.as_ref() {
            if !previous.id.is_empty() && !task.id.is_empty() && previous.id != task.id {
                lock(&self.conflicts).insert(index);
            }
            if is_terminal(previous.status()) {
                return false;
            }
        }
        let first = slot.is_none();
        let ends = is_terminal(task.status());
        if ends {
            self.counters.done.fetch_add(1, Ordering::Relaxed);
            if task.status() != TaskStatus::Succeeded {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        *slot = Some(task);
        first || ends
    }

    fn chunk_done(&self, chunk: &Chunk) -> bool {
        lock(&self.results)
            .get(chunk.start..chunk.start + chunk.len)
            .is_none_or(|slots| {
                slots
                    .iter()
                    .all(|slot| slot.as_ref().is_some_and(|t| is_terminal(t.status())))
            })
    }
}

/// Sends chunks, one at a time, until each is answered.
struct Sender {
    client: DalcClient,
    expressions: Arc<Vec<String>>,
    shared: Arc<Shared>,
    run: String,
    priority: u32,
    deadline: Instant,
    stop: CancellationToken,
}

impl Sender {
    /// Sends the chunk, and again after a failure or an early end, until every expression of
    /// it has a terminal answer or the run's time is up. Only a refusal is an error.
    async fn run_chunk(&self, chunk: &Chunk) -> Result<()> {
        let key = format!("{}/c{}", self.run, chunk.number);
        let mut client = self.client.clone();
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let expressions = self
            .expressions
            .get(chunk.start..chunk.start + chunk.len)
            .context("a chunk past the end of the input")?;
        loop {
            if self.shared.chunk_done(chunk) || self.stop.is_cancelled() {
                return Ok(());
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(());
            }
            let mut request = tonic::Request::new(SubmitBatchRequest {
                expressions: expressions.to_vec(),
                timeout: Some(dalc_proto::duration_of(
                    remaining.max(Duration::from_secs(1)),
                )),
                priority: self.priority,
                idempotency_key: key.clone(),
            });
            request.set_timeout(remaining.saturating_add(CALL_MARGIN));
            let outcome = tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                outcome = self.stream(&mut client, request, chunk) => outcome,
            };
            let pause = match outcome {
                Ok(true) => {
                    backoff.reset();
                    Duration::ZERO
                }
                // Ended with nothing new: do not hammer a server that keeps doing so.
                Ok(false) => backoff.next_delay(),
                Err(status) if is_refusal(status.code()) => {
                    let last = chunk.start + chunk.len - 1;
                    bail!(
                        "{:?}: {} (expressions {}-{last})",
                        status.code(),
                        status.message(),
                        chunk.start
                    );
                }
                Err(status) => {
                    self.shared.retries.fetch_add(1, Ordering::Relaxed);
                    *lock(&self.shared.last_error) =
                        Some(format!("{:?}: {}", status.code(), status.message()));
                    backoff.next_delay()
                }
            };
            let pause = pause.min(self.deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One SubmitBatch call, its answers recorded as they come; true when any moved on.
    async fn stream(
        &self,
        client: &mut DalcClient,
        request: tonic::Request<SubmitBatchRequest>,
        chunk: &Chunk,
    ) -> Result<bool, tonic::Status> {
        let mut stream = client.submit_batch(request).await?.into_inner();
        let mut progressed = false;
        while let Some(message) = stream.message().await? {
            let (Some(task), Ok(index)) = (message.task, usize::try_from(message.index)) else {
                continue;
            };
            // An index outside the chunk is the server's mistake: not ours to file anywhere.
            if index < chunk.len {
                progressed |= self.shared.record(chunk.start + index, task);
            }
        }
        Ok(progressed)
    }
}

/// Errors that sending again cannot mend: the request itself is refused.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// `index<TAB>STATUS<TAB>result-or-error`, on one line whatever the error says.
fn text_line(index: usize, task: &Task) -> String {
    let detail = if task.status() == TaskStatus::Succeeded {
        &task.result
    } else {
        &task.error
    };
    format!(
        "{index}\t{}\t{}",
        short_status(task.status()),
        one_line(detail)
    )
}

fn unanswered_line(index: usize, last_error: Option<&str>, json: bool) -> String {
    let why = format!(
        "no answer before the timeout{}",
        last_error.map_or(String::new(), |e| format!(" (last error: {e})"))
    );
    if json {
        serde_json::json!({ "index": index, "error": why }).to_string()
    } else {
        format!("{index}\tUNANSWERED\t{}", one_line(&why))
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// How the run went, by outcome.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    succeeded: usize,
    failed: usize,
    cancelled: usize,
    expired: usize,
    /// Still PENDING or RUNNING when the time was up.
    unfinished: usize,
    /// No answer at all.
    unanswered: usize,
    /// Expressions answered with two different task ids.
    conflicts: u64,
}

impl Summary {
    fn of(results: &[Option<Task>], conflicts: u64) -> Summary {
        let mut summary = Summary {
            conflicts,
            ..Summary::default()
        };
        for result in results {
            let counter = match result.as_ref().map(Task::status) {
                None => &mut summary.unanswered,
                Some(TaskStatus::Succeeded) => &mut summary.succeeded,
                Some(TaskStatus::Failed) => &mut summary.failed,
                Some(TaskStatus::Cancelled) => &mut summary.cancelled,
                Some(TaskStatus::Expired) => &mut summary.expired,
                Some(_) => &mut summary.unfinished,
            };
            *counter += 1;
        }
        summary
    }

    /// 0: all succeeded; 3: some ended otherwise or did not end in time; 1: some got no answer
    /// at all, or were made twice.
    fn exit_code(&self) -> u8 {
        if self.unanswered > 0 || self.conflicts > 0 {
            1
        } else if self.failed + self.cancelled + self.expired + self.unfinished > 0 {
            EXIT_TASK_UNSUCCESSFUL
        } else {
            0
        }
    }

    /// `3000 tasks: 2998 succeeded, 2 failed`, the zero counts left out.
    fn line(&self, retries: u64, last_error: Option<&str>) -> String {
        let total = self.succeeded
            + self.failed
            + self.cancelled
            + self.expired
            + self.unfinished
            + self.unanswered;
        let mut line = format!("{total} tasks: {} succeeded", self.succeeded);
        for (count, what) in [
            (self.failed, "failed"),
            (self.cancelled, "cancelled"),
            (self.expired, "expired"),
            (self.unfinished, "not finished in time"),
            (self.unanswered, "unanswered"),
        ] {
            if count > 0 {
                let _ = write!(line, ", {count} {what}");
            }
        }
        if self.conflicts > 0 {
            let _ = write!(
                line,
                "; {} answered with two different task ids",
                self.conflicts
            );
        }
        if retries > 0 {
            let _ = write!(line, " ({retries} calls sent again");
            if let Some(error) = last_error {
                let _ = write!(line, "; last error: {error}");
            }
            line.push(')');
        }
        line
    }
}

/// Held only for a push, a pop or a copy; a poisoned lock (a panicking holder) still holds
/// consistent data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn task(id: &str, status: TaskStatus, result: &str) -> Task {
        Task {
            id: id.into(),
            status: status.into(),
            result: result.into(),
            ..Task::default()
        }
    }

    #[test]
    fn files_skip_blank_lines_and_comments() {
        let text = "1 + 1\n\n  # a comment\n   2 * 3  \r\n#\n4";
        assert_eq!(expressions_of(text), ["1 + 1", "2 * 3", "4"]);
        assert!(expressions_of("\n# only\n").is_empty());
    }

    #[test]
    fn run_keys_leave_room_for_chunk_numbers() {
        assert_eq!(run_key(Some("nightly-42")).unwrap(), "nightly-42");
        assert!(run_key(Some("")).is_err());
        assert!(run_key(Some(&"k".repeat(MAX_RUN_KEY + 1))).is_err());
        let (a, b) = (run_key(None).unwrap(), run_key(None).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn a_terminal_answer_is_final_and_counted_once() {
        let shared = Shared::new(2);
        assert!(shared.record(0, task("a", TaskStatus::Pending, "")));
        assert!(!shared.record(0, task("a", TaskStatus::Running, "")));
        assert!(shared.record(0, task("a", TaskStatus::Succeeded, "2")));
        // The same task again (a chunk sent again): nothing changes, nothing counts twice.
        assert!(!shared.record(0, task("a", TaskStatus::Succeeded, "2")));
        assert!(!shared.record(0, task("a", TaskStatus::Pending, "")));
        assert!(shared.record(1, task("b", TaskStatus::Failed, "")));
        assert!(!shared.record(7, task("c", TaskStatus::Failed, "")));
        assert_eq!(shared.counters.done.load(Ordering::Relaxed), 2);
        assert_eq!(shared.counters.errors.load(Ordering::Relaxed), 1);
        assert_eq!(shared.conflicts(), 0);
        let chunk = Chunk {
            number: 0,
            start: 0,
            len: 2,
        };
        assert!(shared.chunk_done(&chunk));
        // Another id for an answered expression: a task made twice.
        shared.record(1, task("other", TaskStatus::Failed, ""));
        assert_eq!(shared.conflicts(), 1);
        shared.record(1, task("other", TaskStatus::Failed, ""));
        assert_eq!(
            shared.conflicts(),
            1,
            "the same conflict sent again counts once"
        );
    }

    #[test]
    fn lines_are_tab_separated_and_one_line_each() {
        assert_eq!(
            text_line(3, &task("a", TaskStatus::Succeeded, "4")),
            "3\tSUCCEEDED\t4"
        );
        let failed = Task {
            error: "division\tby zero\n".into(),
            ..task("b", TaskStatus::Failed, "")
        };
        assert_eq!(text_line(0, &failed), "0\tFAILED\tdivision by zero ");
        assert_eq!(
            unanswered_line(5, Some("Unavailable: gone"), false),
            "5\tUNANSWERED\tno answer before the timeout (last error: Unavailable: gone)"
        );
        let json: serde_json::Value =
            serde_json::from_str(&unanswered_line(5, None, true)).unwrap();
        assert_eq!(json["index"], 5);
    }

    #[test]
    fn the_summary_and_exit_code_follow_the_outcomes() {
        let ok = Some(task("a", TaskStatus::Succeeded, "1"));
        let summary = Summary::of(&[ok.clone(), ok.clone()], 0);
        assert_eq!(summary.exit_code(), 0);
        assert_eq!(summary.line(0, None), "2 tasks: 2 succeeded");

        let failed = Some(task("b", TaskStatus::Failed, ""));
        let pending = Some(task("c", TaskStatus::Pending, ""));
        let summary = Summary::of(&[ok.clone(), failed, pending], 0);
        assert_eq!(summary.exit_code(), EXIT_TASK_UNSUCCESSFUL);
        assert_eq!(
            summary.line(2, Some("Unavailable: x")),
            "3 tasks: 1 succeeded, 1 failed, 1 not finished in time (2 calls sent again; last error: Unavailable: x)"
        );

        assert_eq!(Summary::of(&[ok.clone(), None], 0).exit_code(), 1);
        assert_eq!(Summary::of(&[ok], 1).exit_code(), 1);
    }

    #[test]
    fn only_refusals_stop_a_run() {
        assert!(is_refusal(Code::InvalidArgument));
        assert!(is_refusal(Code::Unimplemented));
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::ResourceExhausted,
        ] {
            assert!(!is_refusal(code), "{code:?}");
        }
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let pauses: Vec<_> = (0..7).map(|_| backoff.next_delay()).collect();
        assert_eq!(pauses[0], FIRST_BACKOFF);
        assert_eq!(pauses[1], FIRST_BACKOFF * 2);
        assert_eq!(pauses[6], MAX_BACKOFF);
    }
}
