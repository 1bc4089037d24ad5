//! Idle keep-alive connections to one backend, kept for the next request.
//!
//! This is only the store: a lock-free queue that checkout and checkin never block on. Opening
//! connections and deciding whether an idle one is still usable is the data path's business
//! (`forward::upstream`). The store lives with the backend's runtime state so that a reload that
//! keeps the backend keeps its warm connections, and a backend marked down drops them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// What the proxy sends upstream: the client's body, streamed, or nothing (a bodiless request,
/// or one kept for replay, see `retry_idempotent`). A streamed body notes when it has gone out
/// to its end, so its connection is only pooled once the whole request was written.
#[derive(Debug)]
pub(crate) struct ReqBody {
    inner: Either<Incoming, Empty<Bytes>>,
    /// `None`: nothing to send, so nothing can be left unsent.
    sent: Option<Arc<AtomicBool>>,
}

impl ReqBody {
    pub(crate) fn streamed(body: Incoming) -> ReqBody {
        if body.is_end_stream() {
            return ReqBody::empty();
        }
        ReqBody {
            inner: Either::Left(body),
            sent: Some(Arc::default()),
        }
    }

    pub(crate) fn empty() -> ReqBody {
        ReqBody {
            inner: Either::Right(Empty::new()),
            sent: None,
        }
    }

    /// Becomes true once the body has gone out to its end; `None` for an empty body.
    pub(crate) fn sent(&self) -> Option<Arc<AtomicBool>> {
        self.sent.clone()
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let finished = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => false,
        };
        if finished && let Some(sent) = &this.sent {
            sent.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The sending half of an HTTP/1.1 connection to a backend.
pub(crate) type Sender = SendRequest<ReqBody>;

#[derive(Debug, Default)]
pub(crate) struct IdleConns {
    idle: SegQueue<Idle>,
    len: AtomicUsize,
    /// Woken when a connection is put back, for requests waiting at the connection cap.
    returned: tokio::sync::Notify,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

impl IdleConns {
    /// An idle connection that is open and was idle for at most `max_age`. Closed and older
    /// ones met on the way are dropped, which closes them.
    pub(crate) fn take(&self, max_age: Duration) -> Option<Sender> {
        while let Some(idle) = self.idle.pop() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            if !idle.sender.is_closed() && idle.since.elapsed() <= max_age {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Keep a connection whose response has been read completely, unless `max_idle` are kept
    /// already or it is closed.
    pub(crate) fn put(&self, sender: Sender, max_idle: usize) {
        if sender.is_closed() || self.len.load(Ordering::Relaxed) >= max_idle {
            return;
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        self.returned.notify_waiters();
    }

    /// Resolves when a connection is put back after this was called.
    pub(crate) fn returned(&self) -> tokio::sync::futures::Notified<'_> {
        self.returned.notified()
    }

    /// Drop every idle connection (the backend went down: they are likely dead).
    pub(crate) fn clear(&self) {
        while self.idle.pop().is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
