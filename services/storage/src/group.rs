//! Group commit: writes that arrive together are made in one statement and one commit.
//!
//! Callers hand an item to a [`GroupCommit`] and wait; a few writer tasks each take everything
//! queued so far (up to a batch size), write it with one call of the batch function, and answer
//! every caller with its own result once that write committed. Under load the batches grow by
//! themselves (whatever arrives during one write forms the next), so the database sees a
//! commit per batch instead of one per call; alone, a call is written at once, with no wait
//! for a batch to fill. No guarantee is weakened: nobody is answered before its row is durable.
//!
//! While the database is away, a batch takes as long to fail as the pool waits for a connection
//! (seconds), and callers queued behind it would each wait for a batch of their own to fail the
//! same way, one after another: so a batch that failed for an outage fails what queued behind
//! it at once.

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::StorageError;

/// A batch write: one result per item, in the items' order.
pub(crate) type WriteBatch<I, O> = Arc<
    dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Result<Vec<O>, StorageError>> + Send>>
        + Send
        + Sync,
>;

/// Items waiting to be written; past it, callers wait for room (backpressure, not growth).
const QUEUE: usize = 8192;

struct Job<I, O> {
    item: I,
    answer: oneshot::Sender<Result<O, StorageError>>,
}

/// A group-commit queue in front of one batch write.
pub(crate) struct GroupCommit<I, O> {
    jobs: mpsc::Sender<Job<I, O>>,
}

impl<I, O> std::fmt::Debug for GroupCommit<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<I: Clone + Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts `writers` writer tasks (batches written concurrently, so one slow commit does not
    /// stall the rest), each writing up to `max_batch` items at a time with `write`.
    pub(crate) fn start(writers: usize, max_batch: usize, write: WriteBatch<I, O>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(
                queue.clone(),
                max_batch.max(1),
                write.clone(),
            ));
        }
        GroupCommit { jobs }
    }

    /// Writes `item` with whatever else is waiting, and returns its result once committed.
    /// A plain function returning its future: an `async fn` would keep the item twice (as
    /// passed and as bound), in every caller's future.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its argument twice in its future"
    )]
    pub(crate) fn submit(&self, item: I) -> impl Future<Output = Result<O, StorageError>> + '_ {
        async move {
            // A place in the queue first, then the job: the item is not held twice meanwhile.
            let place = self
                .jobs
                .reserve()
                .await
                .map_err(|_| StorageError::Closed)?;
            let (answer, answered) = oneshot::channel();
            place.send(Job { item, answer });
            answered.await.map_err(|_| StorageError::Closed)?
        }
    }
}

async fn write_batches<I: Clone, O>(
    queue: Arc<Mutex<mpsc::Receiver<Job<I, O>>>>,
    max_batch: usize,
    write: WriteBatch<I, O>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        // Take the queue only to drain it: the other writers fill their batches meanwhile.
        let received = queue.lock().await.recv_many(&mut jobs, max_batch).await;
        if received == 0 {
            return;
        }
        // A caller that gave up (its call's deadline passed) is not written for: its row must
        // not appear after it was told the write failed.
        jobs.retain(|job| !job.answer.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (items, answers): (Vec<I>, Vec<_>) =
            jobs.drain(..).map(|job| (job.item, job.answer)).unzip();
        let results = match write(items.clone()).await {
            // One bad item must not fail the others: write them one by one to find it (for
            // the callers still waiting).
            Err(err) if !err.is_unavailable() && items.len() > 1 => {
                let mut results = Vec::with_capacity(items.len());
                for (item, answer) in items.into_iter().zip(&answers) {
                    results.push(if answer.is_closed() {
                        Err(StorageError::Closed)
                    } else {
                        one_result(write(vec![item]).await)
                    });
                }
                results
            }
            Ok(results) if results.len() != answers.len() => {
                let err = StorageError::Corrupt(format!(
                    "a batch of {} writes returned {} results",
                    answers.len(),
                    results.len()
                ));
                vec_of_errors(&err, answers.len())
            }
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(err) => {
                if err.is_unavailable() {
                    fail_the_queued(&queue, &err);
                }
                vec_of_errors(&err, answers.len())
            }
        };
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }
}

/// Answers every job queued right now with `err`, the outage its batch just met. Not when
/// another writer holds the queue: that writer is taking the jobs to write them itself.
fn fail_the_queued<I, O>(queue: &Mutex<mpsc::Receiver<Job<I, O>>>, err: &StorageError) {
    let Ok(mut queued) = queue.try_lock() else {
        return;
    };
    while let Ok(job) = queued.try_recv() {
        let _ = job.answer.send(Err(err.clone()));
    }
}

fn one_result<O>(written: Result<Vec<O>, StorageError>) -> Result<O, StorageError> {
    written?
        .pop()
        .ok_or_else(|| StorageError::Corrupt("a write of one item returned nothing".into()))
}

fn vec_of_errors<O>(err: &StorageError, count: usize) -> Vec<Result<O, StorageError>> {
    (0..count).map(|_| Err(err.clone())).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_items_share_batches_and_each_gets_its_own_result() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let write: WriteBatch<u32, u32> = Arc::new(move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(items.into_iter().map(|n| n * 2).collect())
            })
        });
        let group = Arc::new(GroupCommit::start(2, 64, write));
        let calls: Vec<_> = (0..500)
            .map(|n| {
                let group = group.clone();
                tokio::spawn(async move { (n, group.submit(n).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (n, doubled) = call.await.unwrap();
            assert_eq!(doubled, n * 2);
        }
        let batches = batches.load(Ordering::Relaxed);
        assert!(batches < 100, "500 items in {batches} batches");
    }

    #[tokio::test]
    async fn one_bad_item_fails_only_its_own_caller() {
        let write: WriteBatch<u32, u32> = Arc::new(|items: Vec<u32>| {
            Box::pin(async move {
                if items.contains(&13) {
                    Err(StorageError::Corrupt("13".into()))
                } else {
                    Ok(items)
                }
            })
        });
        let group = Arc::new(GroupCommit::start(1, 64, write));
        let calls: Vec<_> = (10..20)
            .map(|n| {
                let group = group.clone();
                tokio::spawn(async move { (n, group.submit(n).await) })
            })
            .collect();
        for call in calls {
            let (n, result) = call.await.unwrap();
            assert_eq!(result.is_err(), n == 13, "{n}");
        }
    }

    fn outage() -> StorageError {
        use sea_orm::{DbErr, RuntimeErr};
        StorageError::Unavailable(DbErr::Conn(RuntimeErr::Internal("down".into())))
    }

    #[tokio::test]
    async fn a_batch_that_meets_an_outage_fails_what_queued_behind_it_at_once() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let write: WriteBatch<u32, u32> = Arc::new(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {
                // As long as a pool waits for a connection to a database that is away.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Err(outage())
            })
        });
        let group = Arc::new(GroupCommit::start(1, 64, write));
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.submit(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Queued while the first batch runs: answered when it fails, with no batch of their
        // own (which would take as long again to fail).
        let behind: Vec<_> = (2..10)
            .map(|n| {
                let group = group.clone();
                tokio::spawn(async move { group.submit(n).await })
            })
            .collect();
        for call in behind {
            assert!(call.await.unwrap().unwrap_err().is_unavailable());
        }
        assert!(first.await.unwrap().unwrap_err().is_unavailable());
        assert_eq!(batches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_callers() {
        let write: WriteBatch<u32, u32> =
            Arc::new(|_| Box::pin(async { Err(StorageError::Corrupt("no".into())) }));
        let group = GroupCommit::start(1, 8, write);
        assert!(group.submit(1).await.is_err());
    }
}
