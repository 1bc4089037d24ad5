//! The response body type the proxy hands to hyper: a backend's body, streamed frame by frame,
//! or a small body of our own (errors). When hyper is done with it — sent to the end, or the
//! client went away — it records the request's duration and, if enabled, its access log line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::state::backend::Backend;
use crate::state::idle::Sender;
use crate::state::metrics::PoolMetrics;

pub(crate) struct ProxyBody {
    kind: Kind,
    done: Option<Done>,
}

enum Kind {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

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
}

impl ProxyBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
            done: None,
        }
    }

    pub(crate) fn upstream(inner: Incoming, lease: Lease) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(UpstreamBody::new(inner, lease)),
            done: None,
        }
    }

    /// Record `done` when this body is finished with.
    pub(crate) fn observe(&mut self, mut done: Done) {
        if self.is_end_stream() {
            done.complete = true;
        }
        self.done = Some(done);
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let d = self;
        let elapsed = d.started.elapsed();
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
    inner: Incoming,
    lease: Option<Lease>,
}

pub(crate) struct Lease {
    pub(crate) backend: Arc<Backend>,
    pub(crate) sender: Sender,
    pub(crate) max_idle: usize,
}

impl UpstreamBody {
    fn new(inner: Incoming, lease: Lease) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            lease: Some(lease),
        };
        // Bodiless responses (HEAD, 204, 304) may never be polled.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.backend.conns.put(lease.sender, lease.max_idle);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Kind::Upstream(up) => {
                let frame = ready!(Pin::new(&mut up.inner).poll_frame(cx));
                match &frame {
                    None => up.release(),
                    Some(Ok(_)) if up.inner.is_end_stream() => up.release(),
                    Some(Ok(_)) => {}
                    // A broken body leaves the connection unusable.
                    Some(Err(_)) => up.lease = None,
                }
                frame
            }
        };
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

fn this_is_end(kind: &Kind) -> bool {
    match kind {
        Kind::Full(b) => b.is_none(),
        Kind::Upstream(up) => up.inner.is_end_stream(),
    }
}
