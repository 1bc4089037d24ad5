//! The request path: key → ring → backend → streamed exchange → response.
//!
//! Per request this loads the snapshot once (lock-free), hashes the key without allocating,
//! walks the ring to the first usable backend and streams the exchange through a pooled
//! connection. Nothing here buffers a body.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::body::{Done, Lease, ProxyBody};
use super::error::ProxyError;
use super::headers::{self, Client};
use super::upstream;
use crate::config::{MissingKey, PoolConfig, Probe};
use crate::routing::key::{self, RequestView};
use crate::state::backend::Backend;
use crate::state::idle::ReqBody;
use crate::state::shared::Shared;
use crate::state::snapshot::Pool;

/// Serve one request that arrived on `pool_name`'s listener.
pub(crate) async fn handle(
    shared: &Shared,
    pool_name: &str,
    client: &Client,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (pool, access_log) = {
        let snapshot = shared.snapshot.load();
        let Some(pool) = snapshot.pool(pool_name).cloned() else {
            return ProxyError::PoolGone {
                pool: pool_name.to_owned(),
            }
            .to_response();
        };
        (pool, snapshot.config.server.access_log)
    };
    let method = tracing::enabled!(tracing::Level::DEBUG).then(|| req.method().clone());
    let key_hash = AtomicU64::new(0);
    // If the client goes away before the response head is ready, hyper drops this future: the
    // guard still records the request (as 499, nginx's "client closed request").
    let mut pending = Pending {
        done: Some(Done {
            pool: pool.metrics.clone(),
            backend: None,
            started,
            status: 499,
            key_hash: 0,
            access_log,
            bytes: 0,
            complete: false,
        }),
        key_hash: &key_hash,
    };
    let (mut resp, backend) = match forward(&pool, req, client, &key_hash).await {
        Ok((resp, backend)) => {
            backend.metrics.answered(resp.status().as_u16());
            if let Some(method) = method {
                tracing::debug!(
                    pool = pool_name,
                    %method,
                    backend = %backend.id,
                    status = resp.status().as_u16(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "request"
                );
            }
            (resp, Some(backend))
        }
        Err(err) => {
            if err.is_client_error() {
                tracing::debug!(pool = pool_name, kind = err.kind(), "{err}");
            } else {
                tracing::warn!(pool = pool_name, kind = err.kind(), "{err}");
            }
            if matches!(err, ProxyError::NoBackend { .. }) {
                pool.metrics.no_backend.inc();
            }
            let resp = err.to_response();
            pool.metrics.answered(err.backend(), resp.status().as_u16());
            (resp, None)
        }
    };
    let mut done = pending.done.take().expect("taken once");
    done.status = resp.status().as_u16();
    done.backend = backend;
    done.key_hash = key_hash.load(Ordering::Relaxed);
    resp.body_mut().observe(done);
    resp
}

/// Records a request whose handling was abandoned before a response existed.
struct Pending<'a> {
    done: Option<Done>,
    key_hash: &'a AtomicU64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut done) = self.done.take() {
            done.key_hash = self.key_hash.load(Ordering::Relaxed);
            done.pool.answered(None, done.status);
        }
    }
}

/// Route and send. `key_hash` is set as soon as the key is known (for the access log).
async fn forward(
    pool: &Pool,
    req: Request<Incoming>,
    client: &Client,
    key_hash: &AtomicU64,
) -> Result<(Response<ProxyBody>, Arc<Backend>), ProxyError> {
    let config = &pool.config;
    // Upgrade is hop-by-hop: forwarding the request without it would silently turn a
    // WebSocket handshake into a plain GET. Say so instead.
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::Unsupported { what: "CONNECT" });
    }
    // `Upgrade: h2c` (curl --http2 on plain HTTP) only offers HTTP/2; ignoring the offer and
    // answering in HTTP/1.1 is allowed, and the header is stripped as hop-by-hop.
    if req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"))
    {
        return Err(ProxyError::Unsupported {
            what: "protocol upgrade (WebSocket)",
        });
    }
    let view = RequestView {
        uri: req.uri(),
        headers: req.headers(),
        client_ip: client.ip,
    };
    let hash = match key::hash(&config.key, view) {
        Some(h) => h,
        None => match config.missing_key {
            MissingKey::Any => spread_hash(),
            MissingKey::Reject => {
                return Err(ProxyError::MissingKey {
                    sources: key_sources(config),
                });
            }
        },
    };
    key_hash.store(hash, Ordering::Relaxed);
    let Some(mut idx) = pool.route(hash, &[]) else {
        return Err(ProxyError::NoBackend {
            pool: config.name.clone(),
            backends: pool.members.len(),
        });
    };

    let mut req = req;
    // request_timeout runs while the request body streams, so a slow upload can time out a
    // healthy backend: such timeouts must not count against the backend's health.
    let has_body = !http_body::Body::is_end_stream(req.body());
    headers::prepare_request(&mut req, client);
    // A request may be sent again after a timeout or reset only if the user allows it, it is
    // idempotent and it has no body: then a copy of its head is all a replay needs.
    let replay = (config.retry_idempotent
        && config.retries > 0
        && is_idempotent(req.method())
        && http_body::Body::is_end_stream(req.body()))
    .then(|| head_of(&req));
    let mut req: Request<ReqBody> = match replay {
        Some(_) => req.map(|_| Either::Right(Empty::new())),
        None => req.map(Either::Left),
    };

    // Backends tried so far; `retries` is at most 10, so this never allocates.
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0;
    loop {
        let backend = pool.at(idx);
        let sent_at = Instant::now();
        let failure = match send(backend, req, config).await {
            Ok(resp) => {
                backend
                    .metrics
                    .upstream_duration
                    .observe(sent_at.elapsed().as_secs_f64());
                backend.passive_success();
                return Ok((resp, backend.clone()));
            }
            Err(failure) => failure,
        };
        pool.metrics
            .upstream_error(&backend.id, failure.error.kind());
        backend.metrics.errors.fetch_add(1, Ordering::Relaxed);
        let blame_backend = match failure.error {
            ProxyError::Timeout { .. } => !has_body,
            _ => failure.error.is_backend_down_signal(),
        };
        if blame_backend
            && config.health.probe != Probe::None
            && backend.passive_failure(config.health.passive_failures)
        {
            tracing::info!(
                pool = %config.name,
                backend = %backend.id,
                from = "up",
                to = "down",
                reason = %format_args!("{} consecutive failures on live traffic, last: {}", config.health.passive_failures, failure.error),
                "backend state changed"
            );
        }
        tried[attempts] = idx;
        attempts += 1;
        let again = failure.unsent.or_else(|| {
            replay
                .as_ref()
                .filter(|_| failure.error.is_replayable())
                .map(rebuild)
        });
        let next = match again {
            Some(r) if attempts <= config.retries as usize => {
                pool.route(hash, &tried[..attempts]).map(|i| (i, r))
            }
            _ => None,
        };
        let Some((next_idx, next_req)) = next else {
            return Err(failure.error);
        };
        tracing::debug!(pool = %config.name, from = %backend.id, to = %pool.at(next_idx).id, error = %failure.error, "retrying on the next backend");
        pool.metrics.retries.inc();
        idx = next_idx;
        req = next_req;
    }
}

const MAX_ATTEMPTS: usize = 11;

/// A failed attempt, and the request back if it was never sent (so it can go elsewhere).
struct Failure {
    error: ProxyError,
    unsent: Option<Request<ReqBody>>,
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(m)
}

/// The head of a bodiless request, kept to send it again.
type Head = (http::Method, http::Uri, http::Version, http::HeaderMap);

fn head_of<B>(req: &Request<B>) -> Head {
    (
        req.method().clone(),
        req.uri().clone(),
        req.version(),
        req.headers().clone(),
    )
}

fn rebuild((method, uri, version, headers): &Head) -> Request<ReqBody> {
    let mut req = Request::new(Either::Right(Empty::new()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.version_mut() = *version;
    *req.headers_mut() = headers.clone();
    req
}

/// Send `req` to `backend` and return its response with the body still streaming.
async fn send(
    backend: &Arc<Backend>,
    mut req: Request<ReqBody>,
    config: &PoolConfig,
) -> Result<Response<ProxyBody>, Failure> {
    loop {
        let mut conn = match upstream::checkout(
            backend,
            config.connect_timeout,
            config.upstream_idle_timeout,
        )
        .await
        {
            Ok(conn) => conn,
            Err(source) => {
                return Err(Failure {
                    error: ProxyError::Connect {
                        backend: backend.id.clone(),
                        source,
                    },
                    unsent: Some(req),
                });
            }
        };
        let sent = tokio::time::timeout(config.request_timeout, conn.sender.try_send_request(req));
        match sent.await {
            Err(_) => {
                return Err(Failure {
                    error: ProxyError::Timeout {
                        backend: backend.id.clone(),
                        after: config.request_timeout,
                    },
                    unsent: None,
                });
            }
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let lease = Lease {
                    backend: backend.clone(),
                    sender: conn.sender,
                    max_idle: config.upstream_max_idle,
                };
                let body = ProxyBody::upstream(body, lease);
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(mut err)) => match err.take_message() {
                // An idle connection the backend had already closed: nothing was sent, so
                // sending again on a fresh connection is safe for any method.
                Some(unsent) if conn.reused => req = unsent,
                unsent => {
                    return Err(Failure {
                        error: ProxyError::Upstream {
                            backend: backend.id.clone(),
                            source: err.into_error(),
                        },
                        unsent,
                    });
                }
            },
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

/// A well-mixed hash for requests without a key (`missing_key = "any"`): a per-thread
/// splitmix64 sequence, so no lock and no shared cache line.
fn spread_hash() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8)
        );
    }
    STATE.with(|s| {
        let mut state = s.get();
        let z = crate::util::splitmix64(&mut state);
        s.set(state);
        z
    })
}
