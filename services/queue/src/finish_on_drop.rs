//! A future that, dropped before it is finished, is finished on a task of its own.
//!
//! For lapin's publisher confirms. lapin keeps every confirm dropped unresolved until its
//! channel waits for all of its confirms (`Channel::wait_for_confirms`) or closes: on dalc's
//! long-lived channels, which never wait for them, practically for good. A sync call answered
//! by its task's end before the confirm came (the common case, as RabbitMQ confirms a message
//! a consumer took only once the consumer acknowledges it) dropped its confirm, and a gateway
//! kept about 200 bytes per such call.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

pub(crate) struct FinishOnDrop<F>(Option<F>)
where
    F: Future + Send + Unpin + 'static;

impl<F> FinishOnDrop<F>
where
    F: Future + Send + Unpin + 'static,
{
    pub(crate) fn new(future: F) -> Self {
        FinishOnDrop(Some(future))
    }
}

impl<F> Future for FinishOnDrop<F>
where
    F: Future + Send + Unpin + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Once finished it is never polled again (its callers await it once).
        let Some(future) = self.0.as_mut() else {
            debug_assert!(false, "FinishOnDrop polled after it finished");
            return Poll::Pending;
        };
        let output = ready!(Pin::new(future).poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for FinishOnDrop<F>
where
    F: Future + Send + Unpin + 'static,
{
    fn drop(&mut self) {
        // Outside a runtime (never, in dalc) it is dropped as it stands.
        if let Some(unfinished) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                // Its output, a confirm, is nobody's business any more.
                drop(unfinished.await);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::sync::oneshot;

    use super::*;

    /// The future of `finished`: done once `go` sends, then it tells `finished`.
    fn tell_when_done(
        go: oneshot::Receiver<()>,
        finished: oneshot::Sender<()>,
    ) -> impl Future<Output = ()> + Send + Unpin + 'static {
        Box::pin(async move {
            let _ = go.await;
            let _ = finished.send(());
        })
    }

    #[tokio::test]
    async fn dropped_unfinished_it_is_finished_all_the_same() {
        let (go, going) = oneshot::channel();
        let (finished, done) = oneshot::channel();
        let mut future = FinishOnDrop::new(tell_when_done(going, finished));
        assert!((&mut future).now_or_never().is_none(), "pending until go");
        drop(future);
        go.send(()).unwrap_or_default();
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("finished on a task of its own")
            .expect("it ran to its end");
    }

    #[tokio::test]
    async fn awaited_it_gives_its_output_and_leaves_nothing_behind() {
        let (go, going) = oneshot::channel();
        let (finished, done) = oneshot::channel();
        go.send(()).unwrap_or_default();
        FinishOnDrop::new(tell_when_done(going, finished)).await;
        assert_eq!(done.await, Ok(()));
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(alive, 0, "no task was spawned for a finished future");
    }
}
