//! The HTTP/1 data path: one task per client connection. It reads request heads into its own
//! buffer, parses them in place (`http1::request`, no `HeaderMap`), routes by the key taken
//! from the parsed slices, writes the head the backend gets as bytes (`http1::forward`), and
//! drives the upstream exchange itself over a raw pooled connection: no task or channel per
//! upstream connection. Bodies stream both ways with their framing checked as they pass, never
//! buffered whole; a full socket on either side stops reading from the other (backpressure).
//!
//! Clocks, per connection (the same ones the hyper path keeps for HTTP/2):
//! - the next request head is due `header_read_timeout` after accept or after the last
//!   exchange ended (a slow head is cut off, whatever it has sent so far);
//! - within an exchange, the client must move its body or take the response within
//!   `idle_timeout` per step;
//! - the backend must answer within `request_timeout` of the request being sent (uploads do
//!   not eat it), and then keep its body moving within `idle_timeout`.

mod body;
mod exchange;
mod respond;
mod sniff;
mod tunnel;

pub(crate) use body::Progress;
pub(crate) use sniff::{Prefixed, Protocol, sniff};

use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Client;
use crate::state::shared::Shared;
use crate::util::{Signal, signal::Wait};

/// A client connection: a TCP stream, or TLS over one.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Read what the client sent, if anything, into `buf`, while its answer is awaited.
    fn poll_watch(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(std::pin::Pin::new(self), cx, buf)
    }
}

impl ClientIo for TcpStream {
    /// Readiness first: a request in flight finds the client silent, and that costs no read
    /// and no buffer preparation.
    fn poll_watch(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {}

/// The pool settings a connection runs with, read at accept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    pub(crate) max_head: usize,
}

/// Bytes read from a client at a time while no head is pending.
const READ_CHUNK: usize = 4096;
/// Copy buffer for bodies that did not arrive with their head, and for response bodies.
const BODY_CHUNK: usize = 16 * 1024;
/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// so that its unread bytes do not turn our last answer into a reset (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// One timer per connection, armed lazily: a wait only stores its deadline; the timer is
/// re-armed when it fires before the deadline of the wait in progress, or when a wait needs an
/// earlier one. A connection serving many short requests thus touches the timer wheel about
/// once per timeout period, not once per wait.
struct Clock {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    deadline: Instant,
}

impl Clock {
    fn new(deadline: Instant) -> Clock {
        Clock {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
        }
    }

    /// The next wait ends at `deadline`.
    fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// The next wait ends `after` from now.
    fn start(&mut self, after: Duration) {
        self.set(Instant::now() + after);
    }

    /// Resolves once the deadline set last has passed.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.deadline {
                return;
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// One client connection's state, reused from request to request.
struct Session<'a, S> {
    shared: &'a Shared,
    pool_name: &'a str,
    client: &'a Client,
    limits: Limits,
    stream: S,
    clock: Clock,
    /// When the last exchange ended, if it read the clock.
    ended: Option<std::time::Instant>,
    /// Client bytes not yet consumed: the current head, the body bytes that came with it, and
    /// any pipelined requests after it.
    buf: Vec<u8>,
    /// How far `buf` has been searched for the end of a head.
    scanned: usize,
    /// The request head the backend receives.
    up_head: Vec<u8>,
    /// The response head the client receives.
    down_head: Vec<u8>,
    /// Bytes from the backend: its response head, then body chunks.
    resp: Vec<u8>,
    /// The backend sent an interim (1xx) answer to the request in flight.
    interim: bool,
    /// Request body bytes read after the head's buffer (allocated on the first large body).
    chunk: Vec<u8>,
    /// Resolves when the listener stops: idle connections close, busy ones after their
    /// exchange.
    drain: Wait<'a>,
}

/// What happens to the connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Read the next request.
    Next,
    /// Close after what was written.
    Close,
    /// Close after what was written, reading on for a moment: the client may still be sending
    /// (an unread body), and closing on unread bytes would reset the connection and could
    /// destroy our answer before the client reads it.
    Linger,
    /// Close at once: the connection is broken or the client is gone.
    Abort,
}

/// Serve HTTP/1 on `stream` until the client closes, a clock runs out, or `drain` is
/// cancelled and the exchange in progress (if any) has ended. `first`: bytes already read off
/// the connection; `due`: when its first head must be complete.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<S: ClientIo>(
    stream: S,
    first: Vec<u8>,
    due: Instant,
    shared: &Shared,
    pool_name: &str,
    client: &Client,
    limits: Limits,
    drain: &Signal,
) {
    let mut s = Session {
        shared,
        pool_name,
        client,
        limits,
        stream,
        clock: Clock::new(due),
        ended: None,
        buf: first,
        scanned: 0,
        up_head: Vec::new(),
        down_head: Vec::new(),
        resp: Vec::new(),
        interim: false,
        chunk: Vec::new(),
        drain: drain.wait(),
    };
    let mut due = due;
    let then = loop {
        match s.read_head(due).await {
            Ok(true) => {}
            Ok(false) => break Then::Close,
            Err(_) => break Then::Abort,
        }
        match s.exchange().await {
            Then::Next if !s.is_draining() => {}
            Then::Next => break Then::Close,
            then => break then,
        }
        due = s.ended.take().map_or_else(Instant::now, Instant::from_std) + limits.header_read;
    };
    match then {
        Then::Linger => close(&mut s.stream, true).await,
        // Over TLS this sends close_notify after what the TLS layer still holds.
        Then::Close => close(&mut s.stream, false).await,
        Then::Next | Then::Abort => {}
    }
}

impl<S: ClientIo> Session<'_, S> {
    fn is_draining(&self) -> bool {
        self.drain.is_raised()
    }

    /// Read until `buf` holds a whole head (or more than a head may be, for the parser to
    /// refuse). `Ok(false)`: the client closed between requests, the head was not complete by
    /// `due`, or the listener is stopping and no request is pending.
    async fn read_head(&mut self, due: Instant) -> io::Result<bool> {
        loop {
            // Blank lines before a request line are ignored (RFC 9112 §2.2), still on the
            // clock of the head they precede.
            let blank = leading_blank_lines(&self.buf);
            if blank > 0 {
                self.consume(blank);
            }
            if head_complete(&self.buf, &mut self.scanned) || self.buf.len() >= self.limits.max_head
            {
                return Ok(true);
            }
            let room = READ_CHUNK.min(self.limits.max_head + 1 - self.buf.len());
            self.buf.reserve(room);
            let idle = self.buf.is_empty();
            let mut limited = (&mut self.buf).limit(room);
            self.clock.set(due);
            let read = tokio::select! {
                biased;
                r = self.stream.read_buf(&mut limited) => r,
                () = self.clock.expired() => return Ok(false),
                () = &mut self.drain, if idle => return Ok(false),
            };
            match read {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Drop the bytes of an exchange that is over from the front of `buf`.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        self.scanned = 0;
    }
}

/// Close politely, all within [`LINGER`]: say we are done writing (over TLS, after sending
/// what the TLS layer still holds, with close_notify); with `linger`, then read and drop what
/// the client still sends for a moment, so that it gets our last answer rather than a reset.
pub(crate) async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, linger: bool) {
    let deadline = Instant::now() + LINGER;
    let shut = tokio::time::timeout_at(deadline, stream.shutdown()).await;
    if !linger || !matches!(shut, Ok(Ok(()))) {
        return;
    }
    let mut scratch = [0u8; 4096];
    let mut seen = 0;
    while seen < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => seen += n,
            _ => break,
        }
    }
}

/// How many bytes of CRLF or LF line ends start `buf`.
fn leading_blank_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match &buf[n..] {
            [b'\r', b'\n', ..] => n += 2,
            [b'\n', ..] => n += 1,
            _ => return n,
        }
    }
}

/// Whether `buf` holds the blank line that ends a head, searching from `scanned` on (so a head
/// sent a byte at a time is not searched from its start each time).
fn head_complete(buf: &[u8], scanned: &mut usize) -> bool {
    // Most reads end with the blank line itself: a client that sent one request and waits.
    if buf.ends_with(b"\n\r\n") || buf.ends_with(b"\n\n") {
        *scanned = buf.len();
        return true;
    }
    let from = scanned.saturating_sub(3);
    let found = memchr::memchr_iter(b'\n', &buf[from..]).any(|i| {
        let rest = &buf[from + i + 1..];
        rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
    });
    *scanned = buf.len();
    found
}

/// Write `first` then `second`, as one `writev` where the socket takes it, and flush (a TLS
/// stream may hold encrypted bytes back until then; for TCP it is free); each wait for room
/// is bounded by `limit`.
async fn write_two<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    mut first: &[u8],
    mut second: &[u8],
    limit: Duration,
) -> io::Result<()> {
    while !first.is_empty() || !second.is_empty() {
        let bufs = [io::IoSlice::new(first), io::IoSlice::new(second)];
        // Most writes go through at once: a timer only for one that has to wait.
        let now = std::future::poll_fn(|cx| {
            Poll::Ready(std::pin::Pin::new(&mut *w).poll_write_vectored(cx, &bufs))
        })
        .await;
        let n = match now {
            Poll::Ready(r) => r?,
            Poll::Pending => match tokio::time::timeout(limit, w.write_vectored(&bufs)).await {
                Ok(r) => r?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            },
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len());
        first = &first[from_first..];
        second = &second[n - from_first..];
    }
    let now = std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *w).poll_flush(cx)));
    match now.await {
        Poll::Ready(r) => r,
        Poll::Pending => match tokio::time::timeout(limit, w.flush()).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_first_blank_line_however_it_arrives() {
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 1..whole.len() {
            let mut scanned = 0;
            let mut buf = Vec::new();
            buf.extend_from_slice(&whole[..split]);
            assert!(!head_complete(&buf, &mut scanned), "{split}");
            buf.extend_from_slice(&whole[split..]);
            assert!(head_complete(&buf, &mut scanned), "{split}");
        }
        // A head with what follows it (a body, a pipelined request) is found by the search.
        assert!(head_complete(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET",
            &mut 0
        ));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\nX", &mut 0));
        // Bare LF endings are found too (and refused by the parser, not waited on).
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n", &mut 0));
        assert_eq!(leading_blank_lines(b"\r\n\n\r\nGET"), 5);
        assert_eq!(
            leading_blank_lines(b"\r\n\rGET"),
            2,
            "a bare CR is the parser's to refuse"
        );
        assert_eq!(leading_blank_lines(b"GET"), 0);
    }
}
