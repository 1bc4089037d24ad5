//! Upstream connections: one small pool of idle HTTP/1.1 keep-alive connections per backend.
//!
//! We keep our own pool instead of hyper-util's legacy client because the proxy has to know
//! whether a request could still be sent elsewhere: connecting is a separate step that fails
//! before the request (and its body) is handed over, so a failed connect can be retried on
//! another backend with the body untouched. The pool is a lock-free queue; checkout and checkin
//! never block.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What the proxy sends upstream: the client's body, streamed, or nothing (a bodiless request
/// kept for replay, see `retry_idempotent`).
pub type ReqBody = Either<Incoming, Empty<Bytes>>;

/// A connection ready to carry one request.
pub struct Conn {
    pub sender: SendRequest<ReqBody>,
    /// Came from the idle pool (it may have been closed by the backend meanwhile).
    pub reused: bool,
}

/// Why no connection to a backend could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

#[derive(Debug)]
pub struct ConnPool {
    address: String,
    idle: SegQueue<Idle>,
    idle_len: AtomicUsize,
}

struct Idle {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

impl ConnPool {
    pub fn new(address: String) -> ConnPool {
        ConnPool {
            address,
            idle: SegQueue::new(),
            idle_len: AtomicUsize::new(0),
        }
    }

    /// Number of idle connections held.
    pub fn idle(&self) -> usize {
        self.idle_len.load(Ordering::Relaxed)
    }

    /// A usable idle connection if there is one, else a new one.
    pub async fn checkout(
        &self,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        while let Some(mut idle) = self.idle.pop() {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            if idle.sender.is_closed() || idle.since.elapsed() > idle_timeout {
                continue; // dropping it closes the connection
            }
            // A connection whose last response just ended may need a moment to be marked ready.
            if idle.sender.is_ready()
                || tokio::time::timeout(connect_timeout, idle.sender.ready())
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return Ok(Conn {
                    sender: idle.sender,
                    reused: true,
                });
            }
        }
        Ok(Conn {
            sender: self.connect(connect_timeout).await?,
            reused: false,
        })
    }

    /// Open a new connection.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
    ) -> Result<SendRequest<ReqBody>, ConnectError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(&*self.address))
            .await
            .map_err(|_| ConnectError::Timeout(connect_timeout))??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Drop every idle connection (the backend went down: they are likely dead).
    pub fn clear(&self) {
        while self.idle.pop().is_some() {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Return a connection whose response has been read completely.
    pub fn checkin(&self, sender: SendRequest<ReqBody>, max_idle: usize) {
        if sender.is_closed() || self.idle_len.load(Ordering::Relaxed) >= max_idle {
            return;
        }
        self.idle_len.fetch_add(1, Ordering::Relaxed);
        self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}
