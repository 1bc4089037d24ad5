//! One attempt: send a request to one backend over a pooled connection, and classify how it
//! went. The outcome is booked here (upstream latency, error counters, passive health), so the
//! retry policy only has to decide what comes next.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Request, Response};

use super::body::{Lease, ProxyBody};
use super::error::ProxyError;
use super::headers;
use super::upstream;
use crate::config::{PoolConfig, Probe};
use crate::state::backend::Backend;
use crate::state::idle::ReqBody;
use crate::state::snapshot::Pool;

/// A failed attempt, and the request back if it was never sent (so it can go elsewhere).
pub(super) struct Failure {
    pub(super) error: ProxyError,
    pub(super) unsent: Option<Request<ReqBody>>,
}

/// Send `req` to `backend`; its response comes back with the body still streaming. `upload`
/// says whether the request has a body the client is still sending: a timeout then may be the
/// client's slowness, and is not held against the backend.
pub(super) async fn send(
    pool: &Pool,
    backend: &Arc<Backend>,
    req: Request<ReqBody>,
    upload: bool,
) -> Result<Response<ProxyBody>, Failure> {
    let sent_at = Instant::now();
    match exchange(backend, req, &pool.config).await {
        Ok(resp) => {
            backend
                .metrics
                .upstream_duration
                .observe(sent_at.elapsed().as_secs_f64());
            backend.passive_success();
            Ok(resp)
        }
        Err(failure) => {
            book_failure(pool, backend, &failure.error, upload);
            Err(failure)
        }
    }
}

fn book_failure(pool: &Pool, backend: &Backend, error: &ProxyError, upload: bool) {
    let config = &pool.config;
    pool.metrics.upstream_error(&backend.id, error.kind());
    backend.metrics.errors.fetch_add(1, Ordering::Relaxed);
    let blame_backend = match error {
        ProxyError::Timeout { .. } => !upload,
        _ => error.is_backend_down_signal(),
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
            reason = %format_args!("{} consecutive failures on live traffic, last: {error}", config.health.passive_failures),
            "backend state changed"
        );
    }
}

/// Connect (or reuse an idle connection), send, and wait for the response head.
async fn exchange(
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
