//! One attempt: send a request to one backend over a pooled connection, and classify how it
//! went. The outcome is booked here (upstream latency, error counters, passive health), so the
//! retry policy only has to decide what comes next.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};

use super::body::{Lease, ProxyBody};
use super::error::ProxyError;
use super::headers;
use super::upstream::{self, ConnectError};
use crate::config::{PoolConfig, Probe};
use crate::state::backend::Backend;
use crate::state::idle::{BodyBroke, ReqBody};
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

/// Why a response head must not reach the client, if it must not. Its framing is ambiguous
/// when it carries both Transfer-Encoding and Content-Length (RFC 9112 §6.3: a proxy must not
/// forward such a message, and must close the connection); a transfer coding other than
/// `chunked` would be dropped on the way, handing the client encoded bytes unannounced; and a
/// 101 answers an upgrade nobody here asked for. (A Content-Length that is not one number never
/// gets here: hyper's parser refuses it, which ends as the same 502.)
fn unforwardable<B>(resp: &Response<B>) -> Option<&'static str> {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Some("101 Switching Protocols to a request that asked for no upgrade");
    }
    let headers = resp.headers();
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if headers.contains_key(CONTENT_LENGTH) {
            return Some("both Transfer-Encoding and Content-Length");
        }
        if codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Some("a transfer coding other than chunked");
        }
    }
    None
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
                let backend = backend.id.clone();
                let error = match source {
                    ConnectError::Busy(waited) => ProxyError::BackendBusy { backend, waited },
                    ConnectError::Local(source) => ProxyError::LocalResource { backend, source },
                    source => ProxyError::Connect { backend, source },
                };
                return Err(Failure {
                    error,
                    unsent: Some(req),
                });
            }
        };
        let upload = req.body().upload();
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
                if let Some(why) = unforwardable(&resp) {
                    // Dropping the response and the sender closes the connection.
                    return Err(Failure {
                        error: ProxyError::BadResponse {
                            backend: backend.id.clone(),
                            why,
                        },
                        unsent: None,
                    });
                }
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let lease = Lease {
                    backend: backend.clone(),
                    sender: conn.sender,
                    max_idle: config.upstream_max_idle,
                    upload,
                };
                let body = ProxyBody::upstream(body, lease, config.idle_timeout);
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(mut err)) => match err.take_message() {
                // An idle connection the backend had already closed: nothing was sent, so
                // sending again on a fresh connection is safe for any method.
                Some(unsent) if conn.reused => req = unsent,
                unsent => {
                    let broke = upload.as_ref().and_then(|u| u.broke());
                    let error = match broke {
                        Some(how) => ProxyError::ClientBody {
                            incomplete: how == BodyBroke::Incomplete,
                        },
                        None => ProxyError::Upstream {
                            backend: backend.id.clone(),
                            source: Box::new(err.into_error()),
                        },
                    };
                    return Err(Failure { error, unsent });
                }
            },
        }
    }
}
