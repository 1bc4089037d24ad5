//! The request path: key → ring → backend → streamed exchange → response.
//!
//! Per request this loads the snapshot once (lock-free), hashes the key without allocating,
//! walks the ring to the first usable backend and streams the exchange through a pooled
//! connection. Nothing here buffers a body.

pub mod body;
pub mod error;
pub mod headers;

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::config::{MissingKey, PoolConfig};
use crate::key::{self, RequestView};
use crate::shared::Shared;
use crate::snapshot::Pool;
use body::{Lease, ProxyBody, UpstreamBody};
pub use error::ProxyError;

/// Serve one request that arrived on `pool_name`'s listener.
pub async fn handle(
    shared: &Shared,
    pool_name: &str,
    client_ip: IpAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let Some(pool) = shared.snapshot.load().pool(pool_name).cloned() else {
        return ProxyError::PoolGone {
            pool: pool_name.to_owned(),
        }
        .to_response();
    };
    let method = tracing::enabled!(tracing::Level::DEBUG).then(|| req.method().clone());
    match forward(&pool, req, client_ip).await {
        Ok((resp, backend)) => {
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
            resp
        }
        Err(err) => {
            tracing::warn!(pool = pool_name, kind = err.kind(), "{err}");
            err.to_response()
        }
    }
}

async fn forward(
    pool: &Pool,
    mut req: Request<Incoming>,
    client_ip: IpAddr,
) -> Result<(Response<ProxyBody>, Arc<Backend>), ProxyError> {
    let config = &pool.config;
    // Upgrade is hop-by-hop: forwarding the request without it would silently turn a
    // WebSocket handshake into a plain GET. Say so instead.
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::Unsupported { what: "CONNECT" });
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        return Err(ProxyError::Unsupported {
            what: "protocol upgrade (WebSocket)",
        });
    }
    let view = RequestView {
        uri: req.uri(),
        headers: req.headers(),
        client_ip,
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
    let backend = pool
        .pick(hash)
        .ok_or_else(|| ProxyError::NoBackend {
            pool: config.name.clone(),
        })?
        .clone();
    headers::prepare_request(&mut req, client_ip);
    let resp = send(&backend, req, config).await?;
    Ok((resp, backend))
}

/// Send `req` to `backend` and return its response with the body still streaming.
async fn send(
    backend: &Arc<Backend>,
    mut req: Request<Incoming>,
    config: &PoolConfig,
) -> Result<Response<ProxyBody>, ProxyError> {
    loop {
        let mut conn = backend
            .conns
            .checkout(config.connect_timeout, config.upstream_idle_timeout)
            .await
            .map_err(|source| ProxyError::Connect {
                backend: backend.id.clone(),
                source,
            })?;
        let sent = tokio::time::timeout(config.request_timeout, conn.sender.try_send_request(req));
        match sent.await {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    backend: backend.id.clone(),
                    after: config.request_timeout,
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
                let body = ProxyBody::Upstream(UpstreamBody::new(body, lease));
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(mut err)) => match err.take_message() {
                // An idle connection the backend had already closed: nothing was sent, so
                // sending again on a fresh connection is safe for any method.
                Some(unsent) if conn.reused => req = unsent,
                _ => {
                    return Err(ProxyError::Upstream {
                        backend: backend.id.clone(),
                        source: err.into_error(),
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
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}
