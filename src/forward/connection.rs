//! One client connection's supervisor. hyper serves the protocol; this task closes the
//! connection when one of its clocks runs out (see [`Activity`] for which), and when its
//! listener stops: a graceful finish first, and after the grace period, whatever it is doing.

use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::server::conn::auto;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::activity::{Activity, Expired, Timeouts};

/// A served connection that can be asked to finish gracefully.
pub(crate) trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> Graceful for auto::Connection<'static, I, S, E>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self);
    }
}

/// Drive `conn` until it ends, its time runs out, or the listener says stop: `drain` asks for a
/// graceful finish, `kill` (the grace period is over) closes it whatever it is doing.
pub(crate) async fn supervise<C: Graceful>(
    conn: C,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    drain: CancellationToken,
    kill: CancellationToken,
) -> Option<C::Output> {
    tokio::pin!(conn);
    let mut draining = false;
    // A deadline only moves earlier when an exchange begins (from "next head due" to "client
    // idle"): waking at least this often catches that without a wake-up per request.
    let recheck = timeouts.header_read.min(timeouts.idle);
    loop {
        let (deadline, why) = activity.deadline(&timeouts);
        // Once draining, an idle HTTP/2 connection's passed deadline means nothing more: the
        // GOAWAY is out, hyper ends the connection. Without this the loop would spin on it.
        let deadline = match why {
            Some(Expired::Idle) if draining => Instant::now() + recheck,
            _ => deadline.min(Instant::now() + recheck),
        };
        tokio::select! {
            out = conn.as_mut() => return Some(out),
            () = drain.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = kill.cancelled() => {
                activity.cut_off();
                return None;
            }
            () = tokio::time::sleep_until(deadline) => match activity.expired(&timeouts) {
                None => {}
                Some(Expired::Idle) if !draining => {
                    tracing::debug!("closing an HTTP/2 connection idle for idle_timeout");
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                Some(Expired::Idle) => {}
                Some(why) => {
                    tracing::debug!(?why, "closing a client connection whose time ran out");
                    activity.cut_off();
                    return None;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    /// A connection that never ends on its own; counts how often it is polled and shut down.
    struct Endless {
        polls: Arc<AtomicUsize>,
        shutdowns: Arc<AtomicUsize>,
    }

    impl Future for Endless {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            // Give up after many polls, so a spinning supervisor fails the test, not hangs it.
            if self.polls.fetch_add(1, Ordering::SeqCst) > 10_000 {
                return Poll::Ready(());
            }
            Poll::Pending
        }
    }

    impl Graceful for Endless {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_shut_down_once_and_then_waited_on_without_spinning() {
        let (polls, shutdowns) = (Arc::default(), Arc::default());
        let conn = Endless {
            polls: Arc::clone(&polls),
            shutdowns: Arc::clone(&shutdowns),
        };
        let activity = Activity::new();
        drop(activity.begin(true));
        let timeouts = Timeouts {
            header_read: Duration::from_secs(1),
            idle: Duration::from_secs(2),
        };
        let kill = CancellationToken::new();
        let killer = kill.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            killer.cancel();
        });
        let out = supervise(conn, activity, timeouts, CancellationToken::new(), kill).await;
        assert!(out.is_none(), "ended by the kill, not by the poll limit");
        assert_eq!(shutdowns.load(Ordering::SeqCst), 1, "one GOAWAY");
        let polls = polls.load(Ordering::SeqCst);
        assert!(polls < 100, "{polls} polls in 30 s: the supervisor spun");
    }
}
