//! Idle keep-alive connections to one backend, kept for the next request.
//!
//! This is only the store: a lock-free queue that checkout and checkin never block on. Opening
//! connections and deciding whether an idle one is still usable is the data path's business
//! (`forward::upstream`). The store lives with the backend's runtime state so that a reload that
//! keeps the backend keeps its warm connections, and a backend marked down drops them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::activity::Activity;
use hyper::client::conn::http1::SendRequest;

/// A client's request body, noting on its connection's [`Activity`] when the client is the one
/// being waited on and when its frames move (the connection's stall clock).
#[derive(Debug)]
pub(crate) struct ClientBody {
    inner: Incoming,
    activity: Option<Arc<Activity>>,
    waiting: bool,
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, activity: Option<Arc<Activity>>) -> ClientBody {
        ClientBody {
            inner,
            activity,
            waiting: false,
        }
    }

    /// Whether the proxy cut the client's connection off: hyper then ends the body as if it
    /// were complete, and this is how to tell it was not.
    fn cut_off(&self) -> bool {
        self.activity.as_ref().is_some_and(|a| a.was_cut_off())
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            if let Some(a) = &self.activity {
                a.client_waiting(waiting);
            }
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.set_waiting(polled.is_pending());
        if let (Poll::Ready(Some(Ok(_))), Some(a)) = (&polled, &self.activity) {
            a.progress();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

/// What the proxy sends upstream: the client's body, streamed, or nothing (a bodiless request,
/// or one kept for replay, see `retry_idempotent`). A streamed body notes when it has gone out
/// to its end, so its connection is only pooled once the whole request was written.
#[derive(Debug)]
pub(crate) struct ReqBody {
    inner: Either<ClientBody, Empty<Bytes>>,
    /// How the body's sending went; `None`: nothing to send, so nothing can be left unsent.
    upload: Option<Arc<Upload>>,
}

/// How a request body's trip upstream went, shared with whoever waits on the exchange.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    /// The body went out to its end: only then may the connection serve another request.
    sent: AtomicBool,
    /// How the client's body broke off, if it did: the upstream exchange then fails, and that
    /// is the client's doing, not the backend's.
    broke: OnceLock<BodyBroke>,
}

impl Upload {
    pub(crate) fn sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }

    pub(crate) fn broke(&self) -> Option<BodyBroke> {
        self.broke.get().copied()
    }
}

/// How a client's request body failed while it was being sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyBroke {
    /// The client closed the connection before the body's end.
    Incomplete,
    /// The body's framing was invalid (a bad chunk size line, say).
    Malformed,
}

impl ReqBody {
    pub(crate) fn streamed(body: ClientBody) -> ReqBody {
        if body.is_end_stream() {
            return ReqBody::empty();
        }
        ReqBody {
            inner: Either::Left(body),
            upload: Some(Arc::default()),
        }
    }

    pub(crate) fn empty() -> ReqBody {
        ReqBody {
            inner: Either::Right(Empty::new()),
            upload: None,
        }
    }

    /// How sending the body goes; `None` for an empty body.
    pub(crate) fn upload(&self) -> Option<Arc<Upload>> {
        self.upload.clone()
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
        let mut frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        // A body that "ends" because the proxy closed the client's connection ended short:
        // passing that end on would let the backend take a truncated upload for a whole one.
        if frame.is_none() && matches!(&this.inner, Either::Left(client) if client.cut_off()) {
            frame = Some(Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the client connection was closed before its body's end",
            ))));
        }
        let finished = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(e)) => {
                if let Some(upload) = &this.upload {
                    let how = if ended_early(e.as_ref()) {
                        BodyBroke::Incomplete
                    } else {
                        BodyBroke::Malformed
                    };
                    let _ = upload.broke.set(how);
                }
                false
            }
        };
        if finished && let Some(upload) = &this.upload {
            upload.sent.store(true, Ordering::Release);
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

/// Whether a client body's error says the client went away before the body's end (an
/// unexpected EOF, a reset, a cancelled stream) rather than that it sent bad framing: hyper
/// reports framing errors as invalid input or data.
fn ended_early(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{InvalidData, InvalidInput};
            return !matches!(io.kind(), InvalidData | InvalidInput);
        }
        source = e.source();
    }
    true
}

/// The sending half of an HTTP/1.1 connection to a backend.
pub(crate) type Sender = SendRequest<ReqBody>;

#[derive(Debug, Default)]
pub(crate) struct IdleConns {
    idle: SegQueue<Idle>,
    len: AtomicUsize,
    /// Woken when a connection is put back, for requests waiting at the connection cap.
    returned: tokio::sync::Notify,
    /// Requests waiting on `returned`: waking takes a lock, so it is skipped when none wait.
    waiters: AtomicUsize,
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
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.returned.notify_waiters();
        }
    }

    /// Resolves when a connection is put back after this was called.
    pub(crate) fn returned(&self) -> Returned<'_> {
        // Counted before the waiter exists: a put that misses the count finds no waiter to
        // wake anyway, and a put that sees it wakes the waiter made right after.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        Returned {
            notified: Box::pin(self.returned.notified()),
            waiters: &self.waiters,
        }
    }

    /// Drop every idle connection (the backend went down: they are likely dead).
    pub(crate) fn clear(&self) {
        while self.idle.pop().is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A wait for a connection to be put back; see [`IdleConns::returned`]. Only made by requests
/// waiting at the connection cap, so its box is no cost on the usual path.
pub(crate) struct Returned<'a> {
    notified: Pin<Box<tokio::sync::futures::Notified<'a>>>,
    waiters: &'a AtomicUsize,
}

impl std::future::Future for Returned<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.notified.as_mut().poll(cx)
    }
}

impl Drop for Returned<'_> {
    fn drop(&mut self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}
