//! Idle keep-alive connections to one backend, kept for the next request.
//!
//! This is only the store: a lock-free queue that checkout and checkin never block on. Opening
//! connections and deciding whether an idle one is still usable is the data path's business
//! (`forward::upstream`). The store lives with the backend's runtime state so that a reload that
//! keeps the backend keeps its warm connections, and a backend marked down drops them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// What the proxy sends upstream: the client's body, streamed, or nothing (a bodiless request
/// kept for replay, see `retry_idempotent`).
pub(crate) type ReqBody = Either<Incoming, Empty<Bytes>>;

/// The sending half of an HTTP/1.1 connection to a backend.
pub(crate) type Sender = SendRequest<ReqBody>;

#[derive(Debug, Default)]
pub(crate) struct IdleConns {
    idle: SegQueue<Idle>,
    len: AtomicUsize,
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
    }

    /// Drop every idle connection (the backend went down: they are likely dead).
    pub(crate) fn clear(&self) {
        while self.idle.pop().is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
