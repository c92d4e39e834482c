//! Work that outlives a caller who goes away: done in the caller's task while the caller waits,
//! moved to a task of its own only if the caller is dropped first.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, CatchUnwind};

/// What a panic of the work was.
pub(super) type Panic = Box<dyn Any + Send>;

/// A future whose work is finished even if it is dropped. While it is awaited, the work is
/// polled in place, in the caller's task: a task spawned for each request and awaited at once
/// costs a hand-off to another thread (the runtime wakes an idle one to take it) and the
/// caches of the one that had the request. Dropped before it finished (a client that went
/// away, a request cut off), the rest of the work is spawned on the runtime it was made on and
/// finishes there.
///
/// A panic of the work is its output as `Err`, as a task's would be; a panic after it was
/// detached is logged.
pub(super) struct Detached<T: Send + 'static> {
    work: Option<CatchUnwind<AssertUnwindSafe<BoxFuture<'static, T>>>>,
    runtime: Option<tokio::runtime::Handle>,
}

impl<T: Send + 'static> Detached<T> {
    pub(super) fn new(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self {
            work: Some(AssertUnwindSafe(work.boxed()).catch_unwind()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = Result<T, Panic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            // Polled after it finished: a bug of the caller, never of the work.
            return Poll::Ready(Err(Box::new("the work was polled after it finished")));
        };
        let done = std::task::ready!(Pin::new(work).poll(cx));
        self.work = None;
        Poll::Ready(done)
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        match &self.runtime {
            Some(runtime) => {
                runtime.spawn(async move {
                    if let Err(panic) = work.await {
                        tracing::error!(panic = %panic_text(&*panic), "work whose caller went away panicked");
                    }
                });
            }
            // Made outside any runtime: there is nowhere to finish it.
            None => tracing::error!("work whose caller went away was dropped unfinished"),
        }
    }
}

/// The error a request answers when the work it waited for panicked: `what` names the work.
pub(super) fn panicked(what: &str, panic: &Panic) -> super::error::EngineError {
    super::error::EngineError::Internal(anyhow::anyhow!(
        "the work of {what} panicked: {}",
        panic_text(&**panic)
    ))
}

/// The message of a panic, if it had one.
pub(super) fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn awaited_work_is_done_in_the_callers_task() {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let during = Detached::new(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            alive()
        })
        .await
        .unwrap();
        // A task of its own would be alive while it works.
        assert_eq!(during, before);
    }

    #[tokio::test]
    async fn work_dropped_unfinished_finishes_in_a_task_of_its_own() {
        let finished = Arc::new(AtomicBool::new(false));
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let flag = Arc::clone(&finished);
        let mut work = Box::pin(Detached::new(async move {
            let _ = opened.await;
            flag.store(true, Ordering::SeqCst);
        }));
        // Started, then its caller goes away while it waits.
        assert!(futures_util::poll!(work.as_mut()).is_pending());
        drop(work);
        assert!(!finished.load(Ordering::SeqCst));
        gate.send(()).unwrap();
        for _ in 0..100 {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the detached work did not finish");
    }

    #[tokio::test]
    async fn a_panic_of_the_work_is_its_answer() {
        let panicked = Detached::new(async {
            if true {
                panic!("a bug below");
            }
        })
        .await
        .unwrap_err();
        assert_eq!(panic_text(&*panicked), "a bug below");
    }
}
