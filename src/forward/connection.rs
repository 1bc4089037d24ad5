//! One client connection's lifetime and its clocks.
//!
//! hyper serves the protocol; this task decides when the connection has waited long enough:
//! - no complete request head within `header_read_timeout` of accept, or of the end of the
//!   previous exchange (HTTP/1 keep-alive, and HTTP/2 before its first request): closed. hyper's
//!   own header timer only starts once it knows the protocol, so a silent socket or half an
//!   HTTP/2 preface would otherwise hold a connection slot forever;
//! - an exchange in progress on which the client socket moves no byte for `idle_timeout`
//!   while the proxy is not waiting on the backend: closed (a client that stopped reading or
//!   sending). A backend that stops sending mid-response is caught by the response body itself
//!   ([`ProxyBody`](super::body::ProxyBody)), which knows which backend to blame;
//! - an HTTP/2 connection with no open stream for `idle_timeout`: shut down gracefully;
//! - a listener draining for shutdown or a reload: graceful shutdown, and after the grace
//!   period, closed whatever it is doing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use std::{io, pin::Pin};

use hyper::body::Incoming;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the connection's clocks look at. Written by the I/O wrapper, the service and the
/// response bodies, read by the connection task: atomics only.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    /// Milliseconds from `born` to the last read or write that moved bytes on the client socket.
    last_io_ms: AtomicU64,
    /// Milliseconds from `born` to when the last exchange ended (0: none yet).
    idle_since_ms: AtomicU64,
    /// Exchanges open: from the request head until the response body is done with.
    in_flight: AtomicUsize,
    /// Response bodies waiting for their backend right now; their own clock covers them.
    upstream_waiting: AtomicUsize,
    /// The client speaks HTTP/2 (known from its first request).
    h2: AtomicBool,
}

/// The settings the clocks use, read from the pool's config at accept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// No request head in time: closed at once.
    Head,
    /// HTTP/2 with no stream for `idle_timeout`: GOAWAY, then closed.
    Idle,
    /// An exchange on which the client moved nothing for `idle_timeout`: closed at once.
    ClientStalled,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            upstream_waiting: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request head arrived: an exchange is open until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Activity>, http2: bool) -> ExchangeGuard {
        if http2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ExchangeGuard(self.clone())
    }

    /// A response body started or stopped waiting for its backend.
    pub(crate) fn upstream_waiting(&self, waiting: bool) {
        if waiting {
            self.upstream_waiting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.upstream_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// When the connection's time runs out if nothing happens meanwhile, and why.
    fn deadline(&self, t: &Timeouts) -> (Instant, Option<Expired>) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let since = self.at(self.idle_since_ms.load(Ordering::Relaxed));
            return if self.h2.load(Ordering::Relaxed) {
                (since + t.idle, Some(Expired::Idle))
            } else {
                (since + t.header_read, Some(Expired::Head))
            };
        }
        if self.upstream_waiting.load(Ordering::Relaxed) > 0 {
            // The body waiting on its backend has its own clock; look again later.
            return (Instant::now() + t.idle, None);
        }
        let last = self.at(self.last_io_ms.load(Ordering::Relaxed));
        (last + t.idle, Some(Expired::ClientStalled))
    }

    /// Whether the time has run out now.
    fn expired(&self, t: &Timeouts) -> Option<Expired> {
        match self.deadline(t) {
            (at, why) if at <= Instant::now() => why,
            _ => None,
        }
    }
}

/// An open exchange; dropping it (the response body is done, or the request was abandoned)
/// closes it.
#[derive(Debug)]
pub(crate) struct ExchangeGuard(Arc<Activity>);

impl ExchangeGuard {
    pub(crate) fn activity(&self) -> &Activity {
        &self.0
    }
}

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms.store(a.now_ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client socket, noting every read and write that moves bytes.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

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
        let (deadline, _) = activity.deadline(&timeouts);
        let deadline = deadline.min(Instant::now() + recheck);
        tokio::select! {
            out = conn.as_mut() => return Some(out),
            () = drain.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = kill.cancelled() => return None,
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
                    return None;
                }
            },
        }
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
        a.touch();
        drop(guard);
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(a.expired(&timeouts()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(a.expired(&timeouts()), Some(Expired::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_expires_only_when_the_client_moves_nothing_and_no_backend_is_awaited() {
        let a = Activity::new();
        let _guard = a.begin(false);
        tokio::time::advance(Duration::from_secs(9)).await;
        a.touch();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.expired(&timeouts()), None, "bytes moved 9 s ago");
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
