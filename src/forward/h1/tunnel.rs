//! A connection switched to another protocol (WebSocket): after the backend's 101, bytes are
//! copied both ways, each direction at its own pace, until both sides have closed or nothing
//! has moved either way for `idle_timeout`. The backend is the one the request's key chose,
//! so a room or document keyed by path or query meets on one node.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::exchange::{Answer, Record};
use super::{Session, Then, write_two};
use crate::state::backend::Backend;
use crate::state::conns::RawConn;
use crate::state::snapshot::Pool;

/// Copy buffer per direction.
const TUNNEL_CHUNK: usize = 16 * 1024;

impl<S: super::ClientIo> Session<'_, S> {
    /// Pass the 101 in `down_head` on, then tunnel. `sent`: bytes of `buf` the request took
    /// (what follows is already the new protocol). The connection ends with the tunnel; the
    /// record (access log line, status 101) is written then.
    pub(super) async fn tunnel(
        &mut self,
        pool: &Pool,
        backend: &Arc<Backend>,
        mut conn: RawConn,
        answer: &Answer,
        sent: usize,
        mut rec: Record,
    ) -> Then {
        let idle = pool.config.idle_timeout;
        let from_backend = &self.resp[answer.head_len..];
        if write_two(&mut self.stream, &self.down_head, from_backend, idle)
            .await
            .is_err()
        {
            return Then::Abort;
        }
        let from_client = &self.buf[sent..];
        if write_two(&mut conn.stream, from_client, &[], idle)
            .await
            .is_err()
        {
            return Then::Abort;
        }
        // A long-lived tunnel is not a request in flight: it would hold its backend at the
        // bounded-load limit for its whole life.
        drop(rec.done.load.take());
        let _open = Open::count(&backend.metrics.upgraded);
        let started = Instant::now();
        let moved = AtomicU64::new(0);
        let mut client = Watched {
            io: &mut self.stream,
            moved: &moved,
            started,
            written: from_backend.len() as u64,
        };
        let mut upstream = Watched {
            io: &mut conn.stream,
            moved: &moved,
            started,
            written: 0,
        };
        let closed = tokio::select! {
            r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, TUNNEL_CHUNK, TUNNEL_CHUNK) => r.is_ok(),
            () = quiet_for(&moved, started, idle) => false,
        };
        rec.done.bytes = client.written;
        rec.done.complete = closed;
        tracing::debug!(pool = %pool.config.name, backend = %backend.id, closed, "upgraded connection ended");
        Then::Abort
    }
}

/// One open tunnel in `shardgate_upgraded_connections_active`, however the tunnel ends (also
/// when its connection is cut off at the end of a shutdown's grace period).
struct Open<'a>(&'a prometheus::IntGauge);

impl<'a> Open<'a> {
    fn count(gauge: &'a prometheus::IntGauge) -> Open<'a> {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Resolves once nothing has moved for `idle` (`moved`: when something last did, in ms after
/// `started`).
async fn quiet_for(moved: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let last = started + Duration::from_millis(moved.load(Ordering::Relaxed));
        if last.elapsed() >= idle {
            return;
        }
        tokio::time::sleep_until(last + idle).await;
    }
}

/// A tunnel end that notes when bytes move through it, for the idle clock, and counts the
/// bytes written to it.
struct Watched<'a, T> {
    io: &'a mut T,
    moved: &'a AtomicU64,
    started: Instant,
    written: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.note();
        }
        r
    }
}

impl<T> Watched<'_, T> {
    fn note(&self) {
        let at = self.started.elapsed().as_millis() as u64;
        self.moved.store(at, Ordering::Relaxed);
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.written += n as u64;
            this.note();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
