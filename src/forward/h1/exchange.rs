//! One request on the HTTP/1 path: parse it, route it, send it (to the next distinct backend
//! while the retry policy allows), and hand the answer to [`respond`](super::respond).

use std::sync::Arc;

use bytes::BufMut;
use tokio::io::AsyncReadExt;

use super::body::Progress;
use super::{Session, Then, write_two};
use crate::config::{MissingKey, PoolConfig};
use crate::forward::attempt::book_failure;
use crate::forward::body::Done;
use crate::forward::error::{ProxyError, RequestId};
use crate::forward::upstream::{self as dial, Dialed};
use crate::http1::forward::{self, Down, Hop};
use crate::http1::request::{self, MAX_HEADERS, Target};
use crate::http1::{Framing, response};
use crate::routing::key::RawView;
use crate::state::backend::Backend;
use crate::state::conns::RawConn;
use crate::state::snapshot::{Choice, Pool};

/// `retries` is at most 10 (config validation), so attempts fit in a stack array.
const MAX_ATTEMPTS: usize = 11;
/// Pipelined bytes read while an answer is awaited, at most; beyond this the client waits.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// What is kept of a request head once the borrow of its bytes ends.
pub(super) struct Req {
    pub(super) head_len: usize,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    expect_continue: bool,
    pub(super) minor: u8,
    /// A HEAD request: its answer has no body, whatever it says.
    pub(super) head: bool,
    idempotent: bool,
    /// May be sent again after it was sent (`retry_idempotent`, idempotent, no body).
    replayable: bool,
    hash: u64,
    /// Offers a protocol switch (WebSocket): a 101 answer turns the connection into a tunnel.
    pub(super) upgrade: bool,
}

/// The backend's answer, its head parsed and the client's head written.
pub(super) struct Answer {
    pub(super) status: u16,
    /// Bytes of `Session::resp` the head took.
    pub(super) head_len: usize,
    pub(super) framing: Framing,
    /// The backend connection may carry another request afterwards.
    pub(super) keep_alive: bool,
    /// The backend answered before the request body's end: the rest of it is never read.
    pub(super) early: bool,
    pub(super) close: bool,
    pub(super) dechunk: bool,
}

/// How an attempt on one backend failed.
enum Failed {
    /// Nothing reached the backend: the request may go elsewhere as it is.
    Unsent(ProxyError),
    /// An idle connection turned out closed before any answer: send again on a fresh one.
    Stale,
    /// An idle connection was found closed by the first write: nothing of the request reached
    /// the backend, so it may go again on a fresh one whatever its method.
    Unwritten,
    Sent(ProxyError),
    /// The client went away while its answer was awaited.
    ClientGone,
}

/// How an error answer goes out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Answering {
    /// The bytes of `buf` the request took, if the connection can serve another request after
    /// the answer (its body, if any, was read to its end).
    go_on: Option<usize>,
    /// A HEAD request: the answer has no body.
    head: bool,
    minor: u8,
}

impl Answering {
    /// For a request whose framing is unknown or broken: answer and close.
    const REFUSED: Answering = Answering {
        go_on: None,
        head: false,
        minor: 1,
    };
}

/// The request's record: its duration and access-log line when dropped (as on the hyper path),
/// and a 499 if it was abandoned before being counted.
pub(super) struct Record {
    pub(super) done: Done,
    pub(super) counted: bool,
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.counted {
            self.done.count_unanswered();
        }
    }
}

impl<S: super::ClientIo> Session<'_, S> {
    /// Serve the request whose head is complete at the front of `buf`.
    pub(super) async fn exchange(&mut self) -> Then {
        let started = std::time::Instant::now();
        let (pool, access_log) = {
            let snapshot = self.shared.snapshot.load();
            let pool = snapshot.pool(self.pool_name).cloned();
            (pool, snapshot.config.server.access_log)
        };
        let Some(pool) = pool else {
            let err = ProxyError::PoolGone {
                pool: self.pool_name.to_owned(),
            };
            let id = RequestId::new();
            tracing::warn!(pool = self.pool_name, kind = err.kind(), request_id = %id, "{err}");
            let mut out = Vec::new();
            err.write_response(id, true, 1, &mut out);
            let _ = write_two(&mut self.stream, &out, &[], self.limits.idle).await;
            return Then::Close;
        };
        let mut rec = Record {
            done: Done::new(pool.metrics.clone(), started, access_log),
            counted: false,
        };
        let (req, first) = match self.prepare(&pool) {
            Ok(Some(prepared)) => prepared,
            // The head looked complete (a blank line) but the parser wants more: something it
            // cannot frame.
            Ok(None) => {
                let err = ProxyError::Refused {
                    status: 400,
                    why: "malformed request head",
                };
                return self.fail(&pool, rec, err, Answering::REFUSED).await;
            }
            Err((err, answering)) => return self.fail(&pool, rec, err, answering).await,
        };
        rec.done.key_hash = req.hash;
        let mut body = Progress::new(req.framing);
        let in_buf = match body.take(&self.buf[req.head_len..]) {
            Ok(n) => n,
            Err(_) => {
                let err = ProxyError::ClientBody { incomplete: false };
                return self.fail(&pool, rec, err, Answering::REFUSED).await;
            }
        };
        let body_end = req.head_len + in_buf;

        let mut tried = [0usize; MAX_ATTEMPTS];
        let mut attempts = 0;
        let mut choice: Choice = first;
        let (mut conn, answer, backend) = loop {
            let backend = pool.at(choice.index).clone();
            // Named before the attempt: a request that ends while waiting on this backend (the
            // client leaves, or shutdown_grace runs out) is booked to it, not to `none`.
            rec.done.backend = Some(backend.clone());
            let failed = match self
                .attempt(
                    &pool,
                    &backend,
                    &req,
                    &mut body,
                    body_end,
                    (attempts == 0).then_some(started),
                )
                .await
            {
                Ok((conn, answer)) => break (conn, answer, backend),
                Err(failed) => failed,
            };
            drop(choice.load.take());
            tried[attempts] = choice.index;
            attempts += 1;
            let (error, again) = match failed {
                Failed::ClientGone => return Then::Abort,
                Failed::Unsent(e) => {
                    let again = e.allows_retry();
                    (e, again)
                }
                Failed::Sent(e) => {
                    let again = req.replayable && e.is_replayable();
                    (e, again)
                }
                Failed::Stale | Failed::Unwritten => unreachable!("handled by the attempt"),
            };
            let next = match again && attempts <= pool.config.retries as usize {
                true => pool.choose(req.hash, &tried[..attempts]),
                false => None,
            };
            let Some(next) = next else {
                // Only a request whose body was read to its end leaves the connection in step.
                let answering = Answering {
                    go_on: (body.is_done() && req.keep_alive).then_some(body_end),
                    head: req.head,
                    minor: req.minor,
                };
                return self.fail(&pool, rec, error, answering).await;
            };
            tracing::debug!(pool = %pool.config.name, from = %backend.id, to = %pool.at(next.index).id, %error, "retrying on the next backend");
            pool.metrics.retries.inc();
            choice = next;
        };
        backend.metrics.answered(answer.status);
        rec.counted = true;
        rec.done.status = answer.status;
        rec.done.load = choice.load.take();
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                pool = %pool.config.name,
                backend = %backend.id,
                status = answer.status,
                elapsed_us = started.elapsed().as_micros() as u64,
                "request"
            );
        }
        if answer.status == 101 {
            // Boxed: its state would otherwise grow every exchange's future, which is built
            // (and copied) once per request.
            let tunnel = self.tunnel(&pool, &backend, conn, &answer, req.head_len, rec);
            return Box::pin(tunnel).await;
        }
        let reusable = match self
            .relay(&pool, &backend, &mut conn, &answer, &mut rec)
            .await
        {
            Ok(reusable) => reusable,
            Err(()) => return Then::Abort,
        };
        // One clock reading for the record, the idle connection and the next head's deadline.
        let ended = std::time::Instant::now();
        rec.done.ended = Some(ended);
        self.ended = Some(ended);
        if reusable {
            backend.raw.put(conn, pool.config.upstream_max_idle, ended);
        }
        if answer.early {
            return Then::Linger;
        }
        if answer.close {
            return Then::Close;
        }
        self.consume(body_end);
        self.release_large_buffers();
        Then::Next
    }

    /// A connection that waits for its next request keeps small buffers only: the copy
    /// buffers a large body grew are given back (the next large body allocates anew), so
    /// thousands of idle keep-alive connections cost a few KiB each, whatever they carried.
    fn release_large_buffers(&mut self) {
        const KEEP: usize = 2 * super::READ_CHUNK;
        if self.resp.capacity() > KEEP {
            self.resp = Vec::new();
        }
        if self.chunk.capacity() > 0 {
            self.chunk = Vec::new();
        }
        if self.buf.capacity() > KEEP && self.buf.len() <= super::READ_CHUNK {
            self.buf.shrink_to(super::READ_CHUNK);
        }
    }

    /// Parse and route the head at the front of `buf`, and write the head the backend gets.
    /// `Ok(None)`: not a whole head yet. On error, also the head's length if the connection
    /// can go on after the answer (a bodiless request that did not ask to close).
    #[allow(clippy::type_complexity)]
    fn prepare(&mut self, pool: &Pool) -> Result<Option<(Req, Choice)>, (ProxyError, Answering)> {
        let config = &pool.config;
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        let head = match request::parse(&self.buf, &mut slots, self.limits.max_head) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(None),
            Err(r) => {
                let err = ProxyError::Refused {
                    status: r.status,
                    why: r.why,
                };
                return Err((err, Answering::REFUSED));
            }
        };
        // The request's framing is known from here: an error answer can keep the connection
        // if there is no body to skip.
        let bodiless = head.framing == Framing::Empty;
        let answering = Answering {
            go_on: (bodiless && head.keep_alive).then_some(head.len),
            head: head.method == "HEAD",
            minor: head.minor,
        };
        let fail = |err: ProxyError| Err((err, answering));
        // An offer to switch protocols (WebSocket) goes on to the key's backend when it is one:
        // HTTP/1.1, named by Connection, and no body (the new protocol starts right after the
        // head). Otherwise, and for h2c offers, the Upgrade field is dropped as hop-by-hop and
        // the request goes as a plain one.
        let upgrade = head.upgrade
            && head.minor == 1
            && bodiless
            && forward::is_listed(head.headers, b"upgrade")
            && forward::offers_upgrade(head.headers);
        if head.form == Target::Authority {
            return fail(ProxyError::Unsupported { what: "CONNECT" });
        }
        let host = match forward::host(&head) {
            Ok(host) => host,
            // A client that gets Host wrong is broken or probing: answered, then closed, as a
            // missing or doubled Host is.
            Err(r) => {
                let closing = Answering {
                    go_on: None,
                    ..answering
                };
                return Err((ProxyError::BadRequest { why: r.why }, closing));
            }
        };
        let path_and_query = match head.form {
            Target::Absolute => match forward::authority_and_rest(head.target).1 {
                "" => "/",
                rest => rest,
            },
            _ => head.target,
        };
        let view = RawView {
            path_and_query,
            host,
            headers: head.headers,
            client_ip: self.client.ip,
            believed: self.client.believed(),
        };
        let hash = match pool.key_hash(view) {
            Some(hash) => hash,
            None => match config.missing_key {
                MissingKey::Any => crate::util::thread_random(),
                MissingKey::Reject => {
                    return fail(ProxyError::MissingKey {
                        sources: key_sources(config),
                    });
                }
            },
        };
        let Some(first) = pool.choose(hash, &[]) else {
            return fail(ProxyError::NoBackend {
                pool: config.name.clone(),
                backends: pool.members.len(),
            });
        };
        self.up_head.clear();
        let hop = Hop {
            client: self.client.forwarded_for(),
            trusted: self.client.trusted(),
            https: self.client.https,
        };
        if let Err(r) = forward::write_request_to(&head, host, hop, &mut self.up_head) {
            return fail(ProxyError::Refused {
                status: r.status,
                why: r.why,
            });
        }
        if upgrade {
            forward::add_upgrade(head.headers, &mut self.up_head);
        }
        let idempotent = crate::http1::is_idempotent(head.method);
        let req = Req {
            head_len: head.len,
            framing: head.framing,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            minor: head.minor,
            head: head.method == "HEAD",
            idempotent,
            replayable: config.retry_idempotent && config.retries > 0 && idempotent && bodiless,
            hash,
            upgrade,
        };
        Ok(Some((req, first)))
    }

    /// Send the request to `backend` and wait for its answer's head. The outcome is booked
    /// here (upstream latency, error counters, passive health).
    async fn attempt(
        &mut self,
        pool: &Pool,
        backend: &Arc<Backend>,
        req: &Req,
        body: &mut Progress,
        body_end: usize,
        first: Option<std::time::Instant>,
    ) -> Result<(RawConn, Answer), Failed> {
        let config = &pool.config;
        // The first attempt is timed from the request's start (parsing and routing take
        // microseconds, and that saves a clock read); later ones from their own.
        let started = first.unwrap_or_else(std::time::Instant::now);
        // A body still to be read from the client can be sent only once.
        let upload = !body.is_done();
        let mut fresh_only = false;
        loop {
            let dialed = if fresh_only {
                dial::fresh(
                    backend,
                    config.connect_timeout,
                    config.upstream_idle_timeout,
                )
                .await
            } else {
                dial::checkout(
                    backend,
                    config.connect_timeout,
                    config.upstream_idle_timeout,
                    started,
                )
                .await
            };
            let Dialed { mut conn, reused } = match dialed {
                Ok(d) => d,
                Err(source) => {
                    let error = ProxyError::connecting(&backend.id, source);
                    book_failure(pool, backend, &error, false);
                    return Err(Failed::Unsent(error));
                }
            };
            match self.send(config, &mut conn, req, body, body_end).await {
                Ok(answer) => {
                    backend
                        .metrics
                        .upstream_duration
                        .observe(started.elapsed().as_secs_f64());
                    backend.passive_success();
                    return Ok((conn, answer));
                }
                // The keep-alive race: the backend closed the idle connection as we took it.
                // Safe to send again only what was never read past the buffer, and (as nginx
                // does) only if sending twice cannot do harm.
                Err(Failed::Stale) if reused && !upload && req.idempotent && !fresh_only => {
                    fresh_only = true;
                }
                Err(Failed::Unwritten) if reused && !fresh_only => fresh_only = true,
                Err(Failed::Stale | Failed::Unwritten) => {
                    let error = ProxyError::Upstream {
                        backend: backend.id.clone(),
                        source: "connection closed before any response".into(),
                    };
                    book_failure(pool, backend, &error, upload);
                    return Err(Failed::Sent(error));
                }
                Err(Failed::Sent(error)) => {
                    let error = named(error, backend);
                    book_failure(pool, backend, &error, upload);
                    return Err(Failed::Sent(error));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Write the head and the body, then read the answer's head.
    async fn send(
        &mut self,
        config: &PoolConfig,
        conn: &mut RawConn,
        req: &Req,
        body: &mut Progress,
        body_end: usize,
    ) -> Result<Answer, Failed> {
        let backend_broke = |e: std::io::Error| Failed::Sent(upstream_io(e));
        if req.expect_continue && !body.is_done() && body_end == req.head_len {
            // The client waits for a go-ahead before its body: the request is on its way.
            let go = b"HTTP/1.1 100 Continue\r\n\r\n";
            if write_two(&mut self.stream, go, &[], self.limits.idle)
                .await
                .is_err()
            {
                return Err(Failed::ClientGone);
            }
        }
        let prefix = &self.buf[req.head_len..body_end];
        if let Err(e) =
            write_two(&mut conn.stream, &self.up_head, prefix, config.idle_timeout).await
        {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    Failed::Unwritten
                }
                _ => backend_broke(e),
            });
        }
        self.resp.clear();
        self.interim = false;
        let early = if body.is_done() {
            false
        } else {
            !self.upload(conn, body, config).await?
        };
        self.await_answer(config, conn, req, early).await
    }

    /// Stream the rest of the request body from the client to the backend. `Ok(false)`: the
    /// backend started answering before the body's end (what it sent is in `resp`).
    async fn upload(
        &mut self,
        conn: &mut RawConn,
        body: &mut Progress,
        config: &PoolConfig,
    ) -> Result<bool, Failed> {
        use tokio::io::AsyncWriteExt;
        let idle = self.limits.idle;
        let (mut up_read, mut up_write) = conn.stream.split();
        if self.chunk.capacity() < super::BODY_CHUNK {
            self.chunk.reserve(super::BODY_CHUNK);
        }
        while !body.is_done() {
            self.chunk.clear();
            let want = body.want(super::BODY_CHUNK);
            let mut limited = (&mut self.chunk).limit(want);
            self.clock.start(idle);
            self.resp.reserve(4096);
            let read = tokio::select! {
                biased;
                r = up_read.read_buf(&mut self.resp) => {
                    match backend_spoke(r, &mut self.resp, &mut self.interim) {
                        Spoke::Nothing => continue,
                        Spoke::Answer => return Ok(false),
                        Spoke::Broke(e) => return Err(Failed::Sent(upstream_io(e))),
                    }
                }
                r = self.stream.read_buf(&mut limited) => Some(r),
                () = self.clock.expired() => None,
            };
            let n = match read {
                Some(Ok(n)) if n > 0 => n,
                // The client went away or stalled mid-body: its doing, not the backend's.
                _ => return Err(Failed::Sent(ProxyError::ClientBody { incomplete: true })),
            };
            let taken = body
                .take(&self.chunk[..n])
                .map_err(|_| Failed::Sent(ProxyError::ClientBody { incomplete: false }))?;
            // A chunked body's last read may reach into the next pipelined request.
            self.buf.extend_from_slice(&self.chunk[taken..n]);
            // Written while the backend is watched: one that answers early (413, 401) and
            // stops reading gets its answer through instead of a stalled write. Then flushed,
            // also watched: over TLS the chunk's last records may still be in the session
            // (free for TCP).
            let to_send = &self.chunk[..taken];
            let mut written = 0;
            let mut flushed = false;
            self.clock.start(config.idle_timeout);
            while !flushed {
                self.resp.reserve(4096);
                tokio::select! {
                    biased;
                    r = up_read.read_buf(&mut self.resp) => match backend_spoke(r, &mut self.resp, &mut self.interim) {
                        Spoke::Nothing => {}
                        Spoke::Answer => return Ok(false),
                        Spoke::Broke(e) => return Err(Failed::Sent(upstream_io(e))),
                    },
                    r = async {
                        match &to_send[written..] {
                            [] => up_write.flush().await.map(|()| None),
                            rest => up_write.write(rest).await.map(Some),
                        }
                    } => match r {
                        Ok(Some(0)) => {
                            return Err(Failed::Sent(upstream_io(
                                std::io::ErrorKind::WriteZero.into(),
                            )));
                        }
                        Ok(Some(n)) => written += n,
                        Ok(None) => flushed = true,
                        Err(e) => return Err(Failed::Sent(upstream_io(e))),
                    },
                    () = self.clock.expired() => {
                        return Err(Failed::Sent(upstream_io(
                            std::io::ErrorKind::TimedOut.into(),
                        )));
                    }
                }
            }
        }
        Ok(true)
    }

    /// Read the backend's answer up to the end of its head (interim 1xx answers are dropped),
    /// and write the head the client will get into `down_head`. Meanwhile the client is
    /// watched: if it goes away, so does the request.
    async fn await_answer(
        &mut self,
        config: &PoolConfig,
        conn: &mut RawConn,
        req: &Req,
        early: bool,
    ) -> Result<Answer, Failed> {
        self.clock.start(config.request_timeout);
        let method = if req.head { "HEAD" } else { "GET" };
        let mut watch_client = true;
        loop {
            if !self.resp.is_empty() {
                let mut slots = crate::http1::slots::<MAX_HEADERS>();
                match response::parse(&self.resp, &mut slots, response::MAX_HEAD, method) {
                    Ok(Some(head)) if head.status == 101 => {
                        if !req.upgrade {
                            return Err(Failed::Sent(bad_response(
                                "101 Switching Protocols to a request that asked for no upgrade",
                            )));
                        }
                        if forward::switches_to_h2c(head.headers) {
                            return Err(Failed::Sent(bad_response(
                                "101 Switching Protocols to h2c, which was not offered",
                            )));
                        }
                        self.down_head.clear();
                        let down = Down {
                            client_minor: 1,
                            close: false,
                        };
                        forward::write_response(&head, down, &mut self.down_head);
                        forward::add_upgrade(head.headers, &mut self.down_head);
                        return Ok(Answer {
                            status: 101,
                            head_len: head.len,
                            framing: Framing::Empty,
                            keep_alive: false,
                            early,
                            close: true,
                            dechunk: false,
                        });
                    }
                    Ok(Some(head)) if head.is_interim() => {
                        let n = head.len;
                        self.resp.drain(..n);
                        self.interim = true;
                        continue;
                    }
                    Ok(Some(head)) => {
                        let dechunk = head.framing == Framing::Chunked && req.minor == 0;
                        let close = !req.keep_alive
                            || early
                            || dechunk
                            || head.framing == Framing::UntilClose
                            || self.is_draining();
                        self.down_head.clear();
                        let down = Down {
                            client_minor: req.minor,
                            close,
                        };
                        forward::write_response(&head, down, &mut self.down_head);
                        return Ok(Answer {
                            status: head.status,
                            head_len: head.len,
                            framing: head.framing,
                            keep_alive: head.keep_alive,
                            early,
                            close,
                            dechunk,
                        });
                    }
                    Ok(None) => {}
                    Err(r) => return Err(Failed::Sent(bad_response(r.why))),
                }
            }
            self.resp.reserve(4096);
            let read = tokio::select! {
                biased;
                r = conn.stream.read_buf(&mut self.resp) => Ok(r),
                () = self.clock.expired() => Err(()),
                // Polled in place (no waiter queued and unlinked per request).
                r = std::future::poll_fn(|cx| self.stream.poll_watch(cx, &mut self.buf)), if watch_client => {
                    match r {
                        Ok(0) | Err(_) => return Err(Failed::ClientGone),
                        Ok(_) => watch_client = self.buf.len() < MAX_READ_AHEAD,
                    }
                    continue;
                }
            };
            match read {
                Err(_) => {
                    return Err(Failed::Sent(ProxyError::Timeout {
                        backend: String::new(),
                        after: config.request_timeout,
                    }));
                }
                // Nothing at all came back: the keep-alive race (an interim answer means the
                // backend had the request).
                Ok(Ok(0)) if self.resp.is_empty() && !self.interim => return Err(Failed::Stale),
                Ok(Ok(0)) => {
                    return Err(Failed::Sent(upstream_io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if self.resp.is_empty() && !self.interim && crate::util::is_gone(&e) => {
                    return Err(Failed::Stale);
                }
                Ok(Err(e)) => return Err(Failed::Sent(upstream_io(e))),
            }
        }
    }

    /// Answer with `err`'s response (nothing for a 499: nobody is listening), booked as the
    /// hyper path books it.
    pub(super) async fn fail(
        &mut self,
        pool: &Pool,
        mut rec: Record,
        err: ProxyError,
        answering: Answering,
    ) -> Then {
        let id = RequestId::new();
        if err.is_client_error() {
            tracing::debug!(pool = %pool.config.name, kind = err.kind(), request_id = %id, "{err}");
        } else {
            tracing::warn!(pool = %pool.config.name, kind = err.kind(), request_id = %id, "{err}");
        }
        if matches!(err, ProxyError::NoBackend { .. }) {
            pool.metrics.no_backend.inc();
        }
        let status = err.status().as_u16();
        pool.answered_error(err.backend(), status);
        rec.counted = true;
        rec.done.status = status;
        rec.done.backend = err.backend().and_then(|id| pool.backend(id).cloned());
        if status == 499 {
            return Then::Abort;
        }
        let go_on = answering.go_on.filter(|_| !self.is_draining());
        let mut out = std::mem::take(&mut self.down_head);
        out.clear();
        let body = err.write_response(id, go_on.is_none(), answering.minor, &mut out);
        if answering.head {
            // A HEAD's answer has no body, only its length.
            out.truncate(out.len() - body);
        }
        let written = write_two(&mut self.stream, &out, &[], self.limits.idle).await;
        rec.done.bytes = if answering.head { 0 } else { body as u64 };
        rec.done.complete = written.is_ok();
        self.down_head = out;
        match (written, go_on) {
            (Err(_), _) => Then::Abort,
            (Ok(()), Some(n)) => {
                self.consume(n);
                Then::Next
            }
            // The client may be sending a body nobody reads.
            (Ok(()), None) => Then::Linger,
        }
    }
}

/// What the backend sent while the request body was still going up.
enum Spoke {
    /// Nothing (stale readiness), or interim answers (100 Continue, 103), dropped.
    Nothing,
    /// The start of its final answer, or the end of the connection: stop sending the body.
    Answer,
    Broke(std::io::Error),
}

/// What the backend's bytes read mid-upload (`read`: into `resp`) mean for the upload.
fn backend_spoke(
    read: std::io::Result<usize>,
    resp: &mut Vec<u8>,
    interim_seen: &mut bool,
) -> Spoke {
    match read {
        Ok(0) => return Spoke::Answer,
        Ok(_) => {}
        Err(e) => return Spoke::Broke(e),
    }
    // Drop whole interim answers; anything else (a final head, or part of one) is the answer.
    loop {
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        let interim = match response::parse(resp, &mut slots, response::MAX_HEAD, "GET") {
            Ok(Some(head)) if head.is_interim() && head.status != 101 => head.len,
            // Part of a head: an interim one is let through to the upload, a final one is
            // read to its end once the upload stops.
            Ok(None) if resp.len() < 64 => return Spoke::Nothing,
            _ => return Spoke::Answer,
        };
        resp.drain(..interim);
        *interim_seen = true;
        if resp.is_empty() {
            return Spoke::Nothing;
        }
    }
}

fn key_sources(config: &PoolConfig) -> String {
    config
        .key
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `error` with `backend`'s name where it was made without one.
fn named(mut error: ProxyError, backend: &Backend) -> ProxyError {
    match &mut error {
        ProxyError::Upstream { backend: name, .. }
        | ProxyError::BadResponse { backend: name, .. }
        | ProxyError::Timeout { backend: name, .. }
            if name.is_empty() =>
        {
            name.clone_from(&backend.id);
        }
        _ => {}
    }
    error
}

/// Errors made before the backend's name is at hand get it filled in by [`named`].
fn upstream_io(e: std::io::Error) -> ProxyError {
    ProxyError::Upstream {
        backend: String::new(),
        source: Box::new(e),
    }
}

fn bad_response(why: &'static str) -> ProxyError {
    ProxyError::BadResponse {
        backend: String::new(),
        why,
    }
}
