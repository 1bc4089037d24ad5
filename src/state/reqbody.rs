//! Request bodies of the h2c path on their way upstream: the client's body as hyper delivers
//! it, watched for the connection's clocks, and what the proxy sends on (with a record of how
//! the sending went).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::activity::Activity;

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
/// or one kept for replay, see `retry_idempotent`). A streamed body notes how it broke off, if
/// it did, so that the failure is booked as the client's.
#[derive(Debug)]
pub(crate) struct ReqBody {
    inner: Either<ClientBody, Empty<Bytes>>,
    /// How the body's sending went; `None`: nothing to send, so nothing can break.
    upload: Option<Arc<Upload>>,
}

/// How a request body's trip upstream went, shared with whoever waits on the exchange.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    /// How the client's body broke off, if it did: the upstream exchange then fails, and that
    /// is the client's doing, not the backend's.
    broke: OnceLock<BodyBroke>,
}

impl Upload {
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
        if let (Some(Err(e)), Some(upload)) = (&frame, &this.upload) {
            let how = if ended_early(e.as_ref()) {
                BodyBroke::Incomplete
            } else {
                BodyBroke::Malformed
            };
            let _ = upload.broke.set(how);
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
