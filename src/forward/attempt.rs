//! One attempt: send a request to one backend over a pooled connection, and classify how it
//! went. The outcome is booked here (upstream latency, error counters, passive health), so the
//! retry policy only has to decide what comes next.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};

use super::body::{Lease, ProxyBody};
use super::client::{self, Answer, SendError};
use super::error::ProxyError;
use super::upstream::{self, Dialed};
use crate::config::{PoolConfig, Probe};
use crate::state::backend::Backend;
use crate::state::reqbody::{BodyBroke, ReqBody};
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

pub(super) fn book_failure(pool: &Pool, backend: &Backend, error: &ProxyError, upload: bool) {
    let config = &pool.config;
    let Some(kind) = error.upstream_kind() else {
        return; // not the backend's doing (this process ran short of something)
    };
    backend.metrics.upstream_error(kind);
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
    let idempotent = crate::http1::is_idempotent(req.method().as_str());
    let mut fresh_only = false;
    loop {
        let dialed = if fresh_only {
            upstream::fresh(
                backend,
                config.connect_timeout,
                config.upstream_idle_timeout,
            )
            .await
        } else {
            upstream::checkout(
                backend,
                config.connect_timeout,
                config.upstream_idle_timeout,
                Instant::now(),
            )
            .await
        };
        let Dialed { conn, reused } = match dialed {
            Ok(dialed) => dialed,
            Err(source) => {
                return Err(Failure {
                    error: ProxyError::connecting(&backend.id, source),
                    unsent: Some(req),
                });
            }
        };
        let upload = req.body().upload();
        let error = match client::send(conn, &mut req, config).await {
            Ok(Answer { parts, body }) => {
                let lease = Lease {
                    backend: backend.clone(),
                    max_idle: config.upstream_max_idle,
                };
                let body = ProxyBody::upstream(body, lease, config.idle_timeout);
                return Ok(Response::from_parts(parts, body));
            }
            // The keep-alive race: the backend closed the idle connection as we took it, and
            // nothing of the request's body was read. Sent once more on a fresh connection, if
            // sending twice can do no harm (as the HTTP/1 path does).
            Err(SendError::Stale) if reused && idempotent && !fresh_only => {
                fresh_only = true;
                continue;
            }
            Err(SendError::Unwritten) if reused && !fresh_only => {
                fresh_only = true;
                continue;
            }
            Err(SendError::Stale | SendError::Unwritten) => ProxyError::Upstream {
                backend: backend.id.clone(),
                source: "connection closed before any response".into(),
            },
            Err(SendError::Timeout) => ProxyError::Timeout {
                backend: backend.id.clone(),
                after: config.request_timeout,
            },
            Err(SendError::Bad(why)) => ProxyError::BadResponse {
                backend: backend.id.clone(),
                why,
            },
            Err(SendError::ClientBody) => {
                let how = upload.as_ref().and_then(|u| u.broke());
                ProxyError::ClientBody {
                    incomplete: how != Some(BodyBroke::Malformed),
                }
            }
            Err(SendError::Io(e)) => match upload.as_ref().and_then(|u| u.broke()) {
                Some(how) => ProxyError::ClientBody {
                    incomplete: how == BodyBroke::Incomplete,
                },
                None => ProxyError::Upstream {
                    backend: backend.id.clone(),
                    source: Box::new(e),
                },
            },
        };
        // It was sent: only the replay policy may send it again (`retry_idempotent`).
        return Err(Failure {
            error,
            unsent: None,
        });
    }
}
