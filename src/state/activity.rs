//! What a client connection's clocks look at: when its exchanges started and ended and when
//! their bodies last moved. Written by the request path (service, request and response
//! bodies), read by the connection's supervisor (`forward::connection`): atomics only.
//!
//! The clocks, per connection:
//! - no exchange open: the next request head is due `header_read_timeout` after accept or after
//!   the last exchange ended (HTTP/1, and HTTP/2 before its first request); an HTTP/2
//!   connection that has had requests may sit without a stream for `idle_timeout`;
//! - an exchange open whose bodies have not moved for `idle_timeout`: the client stopped
//!   reading the response or sending its body. Progress is counted in body frames, not socket
//!   bytes, so HTTP/2 pings answered by a client that reads nothing keep nothing alive.
//! - Not the client's doing, so not this clock's: waiting for a backend's response head
//!   (`request_timeout` bounds each attempt) and a response body waiting for its backend (the
//!   body's own stall clock, which knows which backend to blame).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    /// Milliseconds from `born` to the last body frame that moved, either way.
    progress_ms: AtomicU64,
    /// Milliseconds from `born` to when the last exchange ended (0: none yet).
    idle_since_ms: AtomicU64,
    /// Exchanges open: from the request head until the response body is done with.
    in_flight: AtomicUsize,
    /// Exchanges waiting for their backend's response head.
    heads_awaited: AtomicUsize,
    /// Request bodies waiting for the client to send more.
    client_waiting: AtomicUsize,
    /// Response bodies waiting for their backend to send more.
    upstream_waiting: AtomicUsize,
    /// The client speaks HTTP/2 (known from its first request).
    h2: AtomicBool,
    /// The proxy cut the connection off (its time ran out, or shutdown): a request body that
    /// ends now ended short, not at its end.
    cut_off: AtomicBool,
}

/// The settings the clocks use, read from the pool's config at accept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No request head in time: close at once.
    Head,
    /// HTTP/2 with no stream for `idle_timeout`: GOAWAY, then close.
    Idle,
    /// An exchange whose bodies did not move for `idle_timeout`: close at once.
    ClientStalled,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            progress_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            heads_awaited: AtomicUsize::new(0),
            client_waiting: AtomicUsize::new(0),
            upstream_waiting: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            cut_off: AtomicBool::new(false),
        })
    }

    /// Mark the connection as cut off by the proxy; called before its connection task goes.
    pub(crate) fn cut_off(&self) {
        self.cut_off.store(true, Ordering::Release);
    }

    pub(crate) fn was_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    /// A body frame moved.
    pub(crate) fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request head arrived: an exchange is open until the guard is dropped, and its
    /// backend's answer is awaited until [`ExchangeGuard::head_arrived`].
    pub(crate) fn begin(self: &Arc<Activity>, http2: bool) -> ExchangeGuard {
        if http2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.progress();
        self.heads_awaited.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ExchangeGuard {
            activity: self.clone(),
            awaiting_head: true,
        }
    }

    /// A request body started (`true`) or stopped waiting for the client.
    pub(crate) fn client_waiting(&self, waiting: bool) {
        count(&self.client_waiting, waiting);
    }

    /// A response body started (`true`) or stopped waiting for its backend.
    pub(crate) fn upstream_waiting(&self, waiting: bool) {
        count(&self.upstream_waiting, waiting);
    }

    /// When the connection's time runs out if nothing happens meanwhile, and why (`None`: no
    /// clock of this connection's is running; look again later).
    pub(crate) fn deadline(&self, t: &Timeouts) -> (Instant, Option<Expired>) {
        // Acquire pairs with the guard's release: an exchange seen closed has its end time.
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let since = self.at(self.idle_since_ms.load(Ordering::Relaxed));
            return if self.h2.load(Ordering::Relaxed) {
                (since + t.idle, Some(Expired::Idle))
            } else {
                (since + t.header_read, Some(Expired::Head))
            };
        }
        let backends_turn = self.upstream_waiting.load(Ordering::Relaxed) > 0
            || (self.heads_awaited.load(Ordering::Relaxed) > 0
                && self.client_waiting.load(Ordering::Relaxed) == 0);
        if backends_turn {
            return (Instant::now() + t.idle, None);
        }
        let last = self.at(self.progress_ms.load(Ordering::Relaxed));
        (last + t.idle, Some(Expired::ClientStalled))
    }

    /// Whether the time has run out now.
    pub(crate) fn expired(&self, t: &Timeouts) -> Option<Expired> {
        match self.deadline(t) {
            (at, why) if at <= Instant::now() => why,
            _ => None,
        }
    }
}

fn count(counter: &AtomicUsize, up: bool) {
    if up {
        counter.fetch_add(1, Ordering::Relaxed);
    } else {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open exchange; dropping it (the response body is done, or the request was abandoned)
/// closes it.
#[derive(Debug)]
pub(crate) struct ExchangeGuard {
    activity: Arc<Activity>,
    awaiting_head: bool,
}

impl ExchangeGuard {
    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The response head is here: from now on the response body's clocks run.
    pub(crate) fn head_arrived(&mut self) {
        if std::mem::take(&mut self.awaiting_head) {
            self.activity.heads_awaited.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        self.head_arrived();
        let a = &self.activity;
        a.idle_since_ms.store(a.now_ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(2),
            idle: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_must_send_a_head_within_header_read_timeout_of_accept() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(a.expired(&timeouts()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(a.expired(&timeouts()), Some(Expired::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn between_keep_alive_requests_the_head_clock_restarts() {
        let a = Activity::new();
        let guard = a.begin(false);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(guard);
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(a.expired(&timeouts()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(a.expired(&timeouts()), Some(Expired::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_response_head_is_the_backend_s_turn_unless_the_client_owes_its_body() {
        let a = Activity::new();
        let mut exchange = a.begin(false);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            a.expired(&timeouts()),
            None,
            "request_timeout bounds a slow head"
        );
        a.client_waiting(true);
        assert_eq!(a.expired(&timeouts()), Some(Expired::ClientStalled));
        a.client_waiting(false);
        exchange.head_arrived();
        assert_eq!(
            a.expired(&timeouts()),
            Some(Expired::ClientStalled),
            "head here, no body moving, nobody waited on"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_expires_only_when_its_bodies_stop_and_no_backend_is_awaited() {
        let a = Activity::new();
        let mut exchange = a.begin(false);
        exchange.head_arrived();
        tokio::time::advance(Duration::from_secs(9)).await;
        a.progress();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.expired(&timeouts()), None, "a frame moved 9 s ago");
        a.upstream_waiting(true);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            a.expired(&timeouts()),
            None,
            "the body's own clock is in charge"
        );
        a.upstream_waiting(false);
        assert_eq!(a.expired(&timeouts()), Some(Expired::ClientStalled));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_without_streams_lasts_idle_timeout() {
        let a = Activity::new();
        drop(a.begin(true));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.expired(&timeouts()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.expired(&timeouts()), Some(Expired::Idle));
    }
}
