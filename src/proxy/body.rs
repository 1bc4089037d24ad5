//! The response body type the proxy hands to hyper: either a backend's body, streamed frame by
//! frame, or a small body of our own (errors).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::backend::Backend;
use crate::upstream::ReqBody;

pub enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

/// A backend's response body. When it has been read to the end, the connection goes back to
/// the backend's idle pool; if it is dropped early, the connection is dropped (and closed) with it.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

pub struct Lease {
    pub backend: Arc<Backend>,
    pub sender: SendRequest<ReqBody>,
    pub max_idle: usize,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, lease: Lease) -> UpstreamBody {
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
            lease.backend.conns.checkin(lease.sender, lease.max_idle);
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
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(up) => {
                let frame = ready!(Pin::new(&mut up.inner).poll_frame(cx));
                match &frame {
                    None => up.release(),
                    Some(Ok(_)) if up.inner.is_end_stream() => up.release(),
                    Some(Ok(_)) => {}
                    // A broken body leaves the connection unusable.
                    Some(Err(_)) => up.lease = None,
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(up) => up.inner.size_hint(),
        }
    }
}
