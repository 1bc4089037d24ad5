//! The HTTP/1 client of the h2c path: a request hyper's HTTP/2 server parsed goes to its
//! backend over a raw pooled connection (the same pool as the HTTP/1 path), its head written
//! as bytes and its body streamed with the framing the backend needs; the answer's head is read
//! by `http1::response` and handed back as `http` parts, its body streaming from the connection
//! with the framing taken off (an HTTP/2 client gets the payload only).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::state::stream::{UpRead as ReadHalf, UpWrite as WriteHalf};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::h1::Progress;
use crate::config::PoolConfig;
use crate::http1::forward::passed_on;
use crate::http1::names::Name;
use crate::http1::{Framing, response};
use crate::state::conns::RawConn;
use crate::state::reqbody::ReqBody;

const READ_CHUNK: usize = 16 * 1024;

/// The backend's answer: its head as `http` parts (hop-by-hop fields gone), and its body.
pub(super) struct Answer {
    pub(super) parts: http::response::Parts,
    pub(super) body: RawBody,
}

/// How sending a request on one connection failed.
pub(super) enum SendError {
    /// Nothing came back and the request's body was never touched: an idle connection the
    /// backend had closed. The request may go again, on a fresh connection, if that can do no
    /// harm.
    Stale,
    /// The head's write found the connection closed: nothing reached the backend, and the
    /// request (body untouched) may go again on a fresh connection whatever its method.
    Unwritten,
    Io(io::Error),
    /// No answer head within `request_timeout` of the request being sent.
    Timeout,
    /// The answer's head is one the proxy must not pass on.
    Bad(&'static str),
    /// The client's body broke off while it went up.
    ClientBody,
}

/// Send `req` on `conn` and read the answer's head. The body is streamed from `req`'s own; if
/// it was never touched, `req` is intact after a [`SendError::Stale`].
pub(super) async fn send(
    conn: RawConn,
    req: &mut Request<ReqBody>,
    config: &PoolConfig,
) -> Result<Answer, SendError> {
    let mut conn = conn;
    let mut head = Vec::with_capacity(512);
    let chunked = write_head(req, &mut head);
    let untouched = req.body().is_end_stream();
    let (mut up_read, mut up_write) = conn.stream.split();
    if let Err(e) = write(&mut up_write, &head, config.idle_timeout).await {
        return Err(match e {
            // The first write found the connection closed: nothing reached the backend.
            SendError::Io(e) if crate::util::is_reset(&e) => SendError::Unwritten,
            e => e,
        });
    }
    let method_head = req.method() == http::Method::HEAD;
    let mut resp = Vec::new();
    let mut pumped = req.body().is_end_stream();
    let found = {
        let pump = pump(&mut up_write, req.body_mut(), chunked, config);
        tokio::pin!(pump);
        let timer = tokio::time::sleep(config.request_timeout);
        tokio::pin!(timer);
        let head = read_head(&mut up_read, &mut resp, method_head);
        tokio::pin!(head);
        loop {
            tokio::select! {
                biased;
                found = &mut head => break found,
                sent = &mut pump, if !pumped => {
                    sent?;
                    pumped = true;
                    // `request_timeout` counts from the request's end being sent.
                    timer.as_mut().reset(tokio::time::Instant::now() + config.request_timeout);
                }
                () = &mut timer, if pumped => return Err(SendError::Timeout),
            }
        }
    };
    let (framing, keep_alive, head_len, parts) = match found {
        Ok(found) => found,
        Err(ReadError::Closed) if untouched => return Err(SendError::Stale),
        Err(ReadError::Closed) => {
            return Err(SendError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Err(ReadError::Io(e)) if untouched && crate::util::is_gone(&e) && resp.is_empty() => {
            return Err(SendError::Stale);
        }
        Err(ReadError::Io(e)) => return Err(SendError::Io(e)),
        Err(ReadError::Bad(why)) => return Err(SendError::Bad(why)),
    };
    resp.drain(..head_len);
    // An answer before the body's end: the rest of the body is never sent, so the connection
    // cannot carry another request.
    let reusable = pumped && keep_alive && framing != Framing::UntilClose;
    Ok(Answer {
        parts,
        body: RawBody {
            conn: Some(conn),
            progress: Progress::new(framing),
            buf: resp,
            pos: 0,
            clean: true,
            reusable,
        },
    })
}

/// Write the request head the backend gets; `true` if the body goes chunked.
fn write_head(req: &Request<ReqBody>, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = match req.uri().path_and_query() {
        Some(pq) if req.method() == http::Method::OPTIONS && pq.as_str() == "*" => "*",
        Some(pq) => pq.as_str(),
        None => "/",
    };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in req.headers() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            had_length |= name == CONTENT_LENGTH;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = req.body();
    let chunked = if body.is_end_stream() {
        // A client's `content-length: 0` says "a body, empty"; kept.
        if had_length {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        false
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        false
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        true
    };
    out.extend_from_slice(b"\r\n");
    chunked
}

/// Stream the request body up, chunked or as it is.
async fn pump(
    up: &mut WriteHalf<'_>,
    body: &mut ReqBody,
    chunked: bool,
    config: &PoolConfig,
) -> Result<(), SendError> {
    let limit = config.idle_timeout;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(SendError::ClientBody);
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not passed on
        };
        if data.is_empty() {
            continue;
        }
        let mut bytes = Vec::with_capacity(data.len() + 20);
        if chunked {
            bytes.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        bytes.extend_from_slice(&data);
        if chunked {
            bytes.extend_from_slice(b"\r\n");
        }
        write(up, &bytes, limit).await?;
    }
    if chunked {
        write(up, b"0\r\n\r\n", limit).await?;
    }
    Ok(())
}

/// Write all of `bytes` and flush (a TLS session may hold records back until then; free for
/// TCP), each wait for room bounded by `limit`.
async fn write(
    up: &mut WriteHalf<'_>,
    bytes: &[u8],
    limit: std::time::Duration,
) -> Result<(), SendError> {
    let sent = async {
        up.write_all(bytes).await?;
        up.flush().await
    };
    match tokio::time::timeout(limit, sent).await {
        Ok(r) => r.map_err(SendError::Io),
        Err(_) => Err(SendError::Io(io::ErrorKind::TimedOut.into())),
    }
}

enum ReadError {
    /// The backend closed the connection before a whole head.
    Closed,
    Io(io::Error),
    Bad(&'static str),
}

type Found = (Framing, bool, usize, http::response::Parts);

/// Read up to the end of the final answer's head (interim 1xx answers are dropped).
async fn read_head(
    up: &mut ReadHalf<'_>,
    buf: &mut Vec<u8>,
    method_head: bool,
) -> Result<Found, ReadError> {
    use tokio::io::AsyncReadExt;
    let method = if method_head { "HEAD" } else { "GET" };
    let mut interim = false;
    loop {
        if !buf.is_empty() {
            let mut slots = crate::http1::slots::<{ crate::http1::request::MAX_HEADERS }>();
            match response::parse(buf, &mut slots, response::MAX_HEAD, method) {
                Ok(Some(head)) if head.status == 101 => {
                    return Err(ReadError::Bad(
                        "101 Switching Protocols to a request that asked for no upgrade",
                    ));
                }
                Ok(Some(head)) if head.is_interim() => {
                    let n = head.len;
                    buf.drain(..n);
                    interim = true;
                    continue;
                }
                Ok(Some(head)) => {
                    let parts = parts_of(&head).ok_or(ReadError::Bad("an invalid status"))?;
                    return Ok((head.framing, head.keep_alive, head.len, parts));
                }
                Ok(None) => {}
                Err(r) => return Err(ReadError::Bad(r.why)),
            }
        }
        buf.reserve(4096);
        match up.read_buf(buf).await {
            // Nothing at all came back (an interim answer means the backend had the request).
            Ok(0) if buf.is_empty() && !interim => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// The answer's head as `http` parts for hyper's HTTP/2 server: hop-by-hop fields and those
/// `Connection` names gone, `Content-Length` regenerated where the body has one.
fn parts_of(head: &response::Head<'_, '_>) -> Option<http::response::Parts> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = StatusCode::from_u16(head.status).ok()?;
    let headers = resp.headers_mut();
    // A body's length is set below, once: a kept Content-Length would only be replaced.
    let framed = matches!(head.framing, Framing::Length(_));
    for (_, _, h) in
        passed_on(head).filter(|&(keep, name, _)| keep && !(framed && name == Name::ContentLength))
    {
        let name = h.name.as_bytes();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(name, value);
        }
    }
    if let Framing::Length(n) = head.framing {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Some(resp.into_parts().0)
}

/// An answer's body as it comes off the connection, framing checked and taken off.
pub(crate) struct RawBody {
    conn: Option<RawConn>,
    progress: Progress,
    /// Bytes read and not yet passed on, from `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// Nothing followed the body's end.
    clean: bool,
    /// The connection may carry another request once the body has ended cleanly.
    reusable: bool,
}

impl RawBody {
    /// The connection, once the body has ended and it may carry another request.
    pub(crate) fn take_reusable(&mut self) -> Option<RawConn> {
        // Bytes left over after the body's end (a HEAD answer followed by a body, say) mean
        // the backend and the proxy disagree on where the answer ends: the connection goes.
        let clean = self.clean && self.pos >= self.buf.len();
        (self.progress.is_done() && clean && self.reusable)
            .then(|| self.conn.take())
            .flatten()
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if this.progress.is_done() {
                return Poll::Ready(None);
            }
            if this.pos < this.buf.len() {
                let input = &this.buf[this.pos..];
                let mut out = BytesMut::new();
                let taken = match this
                    .progress
                    .take_with(input, |r| out.extend_from_slice(&input[r]))
                {
                    Ok(n) => n,
                    Err(r) => return Poll::Ready(Some(Err(io::Error::other(r.why)))),
                };
                this.pos += taken;
                if this.progress.is_done() && this.pos < this.buf.len() {
                    this.clean = false;
                }
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                }
                continue;
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            this.buf.clear();
            this.pos = 0;
            this.buf.reserve(READ_CHUNK);
            match std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut this.buf
            )) {
                Ok(0) if matches!(this.progress, Progress::UntilClose) => {
                    this.progress = Progress::Done;
                }
                Ok(0) => return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.progress.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.progress {
            Progress::Length(n) => SizeHint::with_exact(n),
            Progress::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
