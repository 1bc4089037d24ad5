//! The response body type the proxy hands to hyper: a backend's body, streamed frame by frame,
//! or a small body of our own (errors). When hyper is done with it — sent to the end, or the
//! client went away — it records the request's duration and, if enabled, its access log line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::state::activity::ExchangeGuard;
use crate::state::load::InFlight;

use super::client::RawBody;
use crate::state::backend::Backend;
use crate::state::metrics::{PoolMetrics, UpstreamErrorKind};

pub(crate) struct ProxyBody {
    kind: Kind,
    done: Option<Done>,
    /// The client connection's open exchange, closed when the body is done with.
    exchange: Option<ExchangeGuard>,
}

enum Kind {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// Why a response body stopped early on our side.
#[derive(Debug, thiserror::Error)]
#[error("the backend sent nothing for {0:?} mid-response")]
pub(crate) struct Stalled(Duration);

/// What is recorded when the exchange is over.
pub(crate) struct Done {
    pub(crate) pool: Arc<PoolMetrics>,
    pub(crate) backend: Option<Arc<Backend>>,
    pub(crate) started: Instant,
    pub(crate) status: u16,
    pub(crate) key_hash: u64,
    pub(crate) access_log: bool,
    /// Response body bytes sent so far.
    pub(crate) bytes: u64,
    /// Whether the body reached its end (false: the client or the backend went away).
    pub(crate) complete: bool,
    /// The request's place in its backend's in-flight count (bounded loads), given back with
    /// this record, when the response is done with.
    pub(crate) load: Option<InFlight>,
    /// When the exchange ended, if its owner read the clock then anyway (else read on drop).
    pub(crate) ended: Option<Instant>,
}

impl ProxyBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
            done: None,
            exchange: None,
        }
    }

    /// A backend's body; if the backend sends nothing for `idle` while we wait on it, the body
    /// ends with an error (the client's exchange is aborted, the upstream connection closed).
    pub(crate) fn upstream(inner: RawBody, lease: Lease, idle: Duration) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(UpstreamBody::new(inner, lease, idle)),
            done: None,
            exchange: None,
        }
    }

    /// Keep the client connection's exchange open until this body is done with.
    pub(crate) fn hold(&mut self, exchange: ExchangeGuard) {
        self.exchange = Some(exchange);
    }

    /// Record `done` when this body is finished with.
    pub(crate) fn observe(&mut self, mut done: Done) {
        if self.is_end_stream() {
            done.complete = true;
        }
        self.done = Some(done);
    }
}

impl Done {
    /// The record of a request that began at `started`: a 499 until it is answered.
    pub(crate) fn new(pool: Arc<PoolMetrics>, started: Instant, access_log: bool) -> Done {
        Done {
            pool,
            backend: None,
            started,
            status: 499,
            key_hash: 0,
            access_log,
            bytes: 0,
            complete: false,
            load: None,
            ended: None,
        }
    }

    /// Count a request that ended before it was counted (a 499 as a rule): under the backend
    /// it was waiting on, if it had reached one, else under the pool's `backend="none"`.
    pub(crate) fn count_unanswered(&self) {
        match &self.backend {
            Some(backend) => backend.metrics.count_code(self.status),
            None => self.pool.answered(self.status),
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let d = self;
        let elapsed = match d.ended {
            Some(ended) => ended.saturating_duration_since(d.started),
            None => d.started.elapsed(),
        };
        d.pool.request_duration.observe(elapsed.as_secs_f64());
        if d.access_log {
            crate::observe::access_log::record(&crate::observe::access_log::Entry {
                pool: &d.pool.name,
                key_hash: d.key_hash,
                backend: d.backend.as_ref().map(|b| b.id.as_str()),
                status: d.status,
                duration_us: elapsed.as_micros() as u64,
                bytes: d.bytes,
                complete: d.complete,
            });
        }
    }
}

/// A backend's response body. When it has been read to the end, the connection goes back to
/// the backend's idle pool; if it is dropped early, the connection is dropped (and closed) with it.
pub(crate) struct UpstreamBody {
    inner: RawBody,
    lease: Option<Lease>,
    idle: Duration,
    /// Runs while we wait on the backend: set when a wait starts, cleared by each frame. Made
    /// on the first wait only, so a body that never waits costs no timer.
    stall: Option<Pin<Box<Sleep>>>,
    /// Waiting on the backend right now (the stall clock runs).
    waiting: bool,
}

type UpstreamFrame = Result<Frame<Bytes>, std::io::Error>;

/// Where the body's connection goes back when the body has ended cleanly.
pub(crate) struct Lease {
    pub(crate) backend: Arc<Backend>,
    pub(crate) max_idle: usize,
}

impl UpstreamBody {
    fn new(inner: RawBody, lease: Lease, idle: Duration) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            lease: Some(lease),
            idle,
            stall: None,
            waiting: false,
        };
        // Bodiless responses (HEAD, 204, 304) may never be polled.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            // A request body not sent to its end leaves the connection unusable: `RawBody` is
            // reusable only once it was.
            if let Some(conn) = self.inner.take_reusable() {
                let now = std::time::Instant::now();
                lease.backend.raw.put(conn, lease.max_idle, now);
            }
        }
    }

    /// The next frame; `Err(backend)` once the backend has sent nothing for `idle` while we
    /// waited. `waiting` reports each start and end of a wait.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        mut waiting: impl FnMut(bool),
    ) -> Poll<Result<Option<UpstreamFrame>, Option<Arc<Backend>>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if self.waiting {
                    self.waiting = false;
                    waiting(false);
                }
                match &frame {
                    None => self.release(),
                    Some(Ok(_)) if self.inner.is_end_stream() => self.release(),
                    Some(Ok(_)) => {}
                    // A broken body leaves the connection unusable.
                    Some(Err(_)) => self.lease = None,
                }
                Poll::Ready(Ok(frame))
            }
            Poll::Pending => {
                if !self.waiting {
                    let deadline = tokio::time::Instant::now() + self.idle;
                    match &mut self.stall {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    self.waiting = true;
                    waiting(true);
                }
                let timer = self.stall.as_mut().expect("armed when the wait began");
                if timer.as_mut().poll(cx).is_ready() {
                    self.waiting = false;
                    waiting(false);
                    // Half a response: the connection cannot carry another request.
                    let stalled = self.lease.take().map(|l| l.backend);
                    return Poll::Ready(Err(stalled));
                }
                Poll::Pending
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Kind::Upstream(up) => {
                let activity = this.exchange.as_ref().map(ExchangeGuard::activity);
                let polled = up.poll_frame(cx, |w| {
                    if let Some(a) = activity {
                        a.upstream_waiting(w);
                    }
                });
                match ready!(polled) {
                    Ok(frame) => frame,
                    Err(backend) => {
                        let stalled = Stalled(up.idle);
                        let pool = this.done.as_ref().map_or("", |d| d.pool.name.as_str());
                        if let Some(backend) = backend {
                            backend
                                .metrics
                                .upstream_error(UpstreamErrorKind::IdleTimeout);
                            tracing::warn!(pool, backend = %backend.id, "{stalled}: aborting the response");
                        }
                        return Poll::Ready(Some(Err(Box::new(stalled))));
                    }
                }
            }
        };
        let frame = frame.map(|f| f.map_err(Into::into));
        if let (Some(Ok(_)), Some(exchange)) = (&frame, &this.exchange) {
            exchange.activity().progress();
        }
        if let Some(done) = &mut this.done {
            match &frame {
                Some(Ok(f)) => done.bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                None => done.complete = true,
                Some(Err(_)) => {}
            }
            if this_is_end(&this.kind) {
                done.complete = true;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        this_is_end(&self.kind)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(up) => up.inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body dropped mid-wait (the client left) stops counting as waiting on its backend.
        if let (Kind::Upstream(up), Some(exchange)) = (&self.kind, &self.exchange)
            && up.waiting
        {
            exchange.activity().upstream_waiting(false);
        }
    }
}

fn this_is_end(kind: &Kind) -> bool {
    match kind {
        Kind::Full(b) => b.is_none(),
        Kind::Upstream(up) => up.inner.is_end_stream(),
    }
}
