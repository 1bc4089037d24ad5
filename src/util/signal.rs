//! A one-way stop signal that is cheap to wait on from a busy task.
//!
//! A connection task waits on its listener's drain and kill signals alongside everything it
//! does, so it polls them each time it is woken, twice per request or more. Polling a
//! `CancellationToken`'s future takes two locks; here a flag, raised just before the token is
//! cancelled, answers all polls but the first (which registers the task to be woken) with one
//! atomic load.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    pub(crate) fn new() -> Signal {
        Signal::default()
    }

    /// Wake everything waiting on the signal; from now on it is raised.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// The token behind the signal, for code that waits on a token (the HTTP/2 supervisor).
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A future that resolves once the signal is raised, for a task that polls it on every
    /// wake-up (a connection's): after a poll that registered the task's waker, polls with the
    /// same waker only read the flag.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            inner: Box::pin(self.token.cancelled()),
            raised: &self.raised,
            registered: None,
        }
    }
}

pub(crate) struct Wait<'a> {
    inner: Pin<Box<WaitForCancellationFuture<'a>>>,
    raised: &'a AtomicBool,
    /// The waker the token will wake; another one is registered with the token anew.
    registered: Option<Waker>,
}

impl Wait<'_> {
    /// Whether the signal was raised (a load, no poll).
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let same_waker = self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if same_waker && !self.is_raised() {
            return Poll::Pending;
        }
        let polled = self.inner.as_mut().poll(cx);
        if polled.is_pending() && !same_waker {
            self.registered = Some(cx.waker().clone());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiting_task_is_woken_when_the_signal_is_raised_and_not_before() {
        let signal = std::sync::Arc::new(Signal::new());
        let waiter = {
            let signal = signal.clone();
            tokio::spawn(async move {
                let mut wait = std::pin::pin!(signal.wait());
                // Polled (and so armed) more than once before the raise.
                for _ in 0..3 {
                    let early = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx)));
                    assert!(early.await.is_pending());
                    tokio::task::yield_now().await;
                }
                wait.await;
                signal.wait().is_raised()
            })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        signal.raise();
        assert!(
            waiter.await.unwrap(),
            "the flag is up before the waiter wakes"
        );
        assert!(signal.token().is_cancelled());
        // A wait started after the raise resolves at once.
        signal.wait().await;
    }

    #[tokio::test]
    async fn a_wait_first_polled_under_another_waker_is_still_woken() {
        let signal = std::sync::Arc::new(Signal::new());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let theirs = signal.clone();
        tokio::spawn(async move {
            let mut wait = Box::pin(theirs.wait());
            // Polled once under a waker that is not this task's, as a future handed from one
            // task to another would be; then awaited by this task.
            {
                let mut elsewhere = Context::from_waker(Waker::noop());
                assert!(wait.as_mut().poll(&mut elsewhere).is_pending());
            }
            wait.await;
            let _ = tx.send(());
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        signal.raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("the awaiting task is woken")
            .unwrap();
    }
}
