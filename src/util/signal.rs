//! A one-way stop signal that is cheap to wait on from a busy task.
//!
//! A connection task waits on its listener's drain and kill signals alongside everything it
//! does, so it polls them each time it is woken, twice per request or more. Polling a
//! `CancellationToken`'s future takes two locks; here a flag, raised just before the token is
//! cancelled, answers all polls but the first (which registers the task to be woken) with one
//! atomic load.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

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

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// The token behind the signal, for code that waits on a token (the HTTP/2 supervisor).
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A future that resolves once the signal is raised. It must be polled by one task for its
    /// whole life: after its first poll, only the flag is read until it is raised, so a waker
    /// that changed would not be told.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            inner: Box::pin(self.token.cancelled()),
            raised: &self.raised,
            armed: false,
        }
    }
}

pub(crate) struct Wait<'a> {
    inner: Pin<Box<WaitForCancellationFuture<'a>>>,
    raised: &'a AtomicBool,
    armed: bool,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && !self.raised.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        self.armed = true;
        self.inner.as_mut().poll(cx)
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
                signal.is_raised()
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
}
