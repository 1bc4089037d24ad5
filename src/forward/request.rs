//! The request path: key → ring → backend → streamed exchange → response.
//!
//! Per request this loads the snapshot once (lock-free), hashes the key without allocating,
//! walks the ring to the first usable backend and streams the exchange through a pooled
//! connection. Nothing here buffers a body.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use http::{Request, Response};

use super::body::{Done, ProxyBody};
use super::error::{ProxyError, RequestId};
use super::headers::{self, Client};
use super::retry;
use crate::config::{MissingKey, PoolConfig};
use crate::routing::key::RequestView;
use crate::state::backend::Backend;
use crate::state::load::InFlight;
use crate::state::reqbody::ClientBody;
use crate::state::shared::Shared;
use crate::state::snapshot::Pool;

/// Serve one request that arrived on `pool_name`'s listener.
pub(crate) async fn handle(
    shared: &Shared,
    pool_name: &str,
    client: &Client,
    req: Request<ClientBody>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (pool, access_log) = {
        let snapshot = shared.snapshot.load();
        let Some(pool) = snapshot.pool(pool_name).cloned() else {
            let err = ProxyError::PoolGone {
                pool: pool_name.to_owned(),
            };
            let id = RequestId::new();
            tracing::warn!(pool = pool_name, kind = err.kind(), request_id = %id, "{err}");
            return err.to_response(id);
        };
        (pool, snapshot.config.server.access_log)
    };
    let method = tracing::enabled!(tracing::Level::DEBUG).then(|| req.method().clone());
    let trail = Trail::default();
    // If the client goes away before the response head is ready, hyper drops this future: the
    // guard still records the request (as 499, nginx's "client closed request").
    let mut pending = Pending {
        done: Some(Done::new(pool.metrics.clone(), started, access_log)),
        pool: &pool,
        trail: &trail,
    };
    let (mut resp, backend, load) = match forward(&pool, req, client, &trail).await {
        Ok((resp, backend, load)) => {
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
            (resp, Some(backend), load)
        }
        Err(err) => {
            let id = RequestId::new();
            if err.is_client_error() {
                tracing::debug!(pool = pool_name, kind = err.kind(), request_id = %id, "{err}");
            } else {
                tracing::warn!(pool = pool_name, kind = err.kind(), request_id = %id, "{err}");
            }
            if matches!(err, ProxyError::NoBackend { .. }) {
                pool.metrics.no_backend.inc();
            }
            let resp = err.to_response(id);
            pool.answered_error(err.backend(), resp.status().as_u16());
            // The access log names the backend the metrics name: the one that failed.
            (
                resp,
                err.backend().and_then(|id| pool.backend(id).cloned()),
                None,
            )
        }
    };
    let mut done = pending.done.take().expect("taken once");
    done.status = resp.status().as_u16();
    done.backend = backend;
    done.load = load;
    done.key_hash = trail.key_hash.load(Ordering::Relaxed);
    resp.body_mut().observe(done);
    resp
}

/// Records a request whose handling was abandoned before a response existed.
struct Pending<'a> {
    done: Option<Done>,
    pool: &'a Pool,
    trail: &'a Trail,
}

/// How far a request got, for its record if the client leaves before the answer: atomics,
/// because the future that fills them in must be `Send`.
struct Trail {
    /// Its key's hash, once known (the access log's).
    key_hash: AtomicU64,
    /// The ring member the request is at (`usize::MAX`: none yet): the backend a client that
    /// gave up on it was waiting for, so a slow backend's 499s are booked to it.
    trying: AtomicUsize,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            key_hash: AtomicU64::new(0),
            trying: AtomicUsize::new(usize::MAX),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut done) = self.done.take() {
            done.key_hash = self.trail.key_hash.load(Ordering::Relaxed);
            done.backend = match self.trail.trying.load(Ordering::Relaxed) {
                usize::MAX => None,
                i => Some(self.pool.at(i).clone()),
            };
            done.count_unanswered();
        }
    }
}

/// Route and send, leaving a [`Trail`] as it goes.
async fn forward(
    pool: &Pool,
    mut req: Request<ClientBody>,
    client: &Client,
    trail: &Trail,
) -> Result<(Response<ProxyBody>, Arc<Backend>, Option<InFlight>), ProxyError> {
    refuse_unsupported(&req)?;
    headers::settle_host(&mut req).map_err(|why| ProxyError::BadRequest { why })?;
    let hash = shard_hash(pool, &req, client)?;
    trail.key_hash.store(hash, Ordering::Relaxed);
    let first = pool
        .choose(hash, &[])
        .ok_or_else(|| ProxyError::NoBackend {
            pool: pool.config.name.clone(),
            backends: pool.members.len(),
        })?;
    headers::prepare_request(&mut req, client);
    retry::send(pool, hash, first, req, &trail.trying).await
}

/// CONNECT tunnels and protocol upgrades are not proxied. Upgrade is hop-by-hop: forwarding
/// the request without it would silently turn a WebSocket handshake into a plain GET, so say
/// so instead. `Upgrade: h2c` (curl --http2 on plain HTTP) only offers HTTP/2; ignoring the
/// offer and answering in HTTP/1.1 is allowed, and the header is stripped as hop-by-hop.
/// A transfer coding other than plain `chunked` (`gzip, chunked`) would be dropped on the way:
/// refused as nginx does (RFC 9112 §6.1 lets a server answer 501).
fn refuse_unsupported<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut codings = req
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked"))
    {
        return Err(ProxyError::Unsupported {
            what: "a transfer coding other than chunked",
        });
    }
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::Unsupported { what: "CONNECT" });
    }
    if req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"))
    {
        return Err(ProxyError::Unsupported {
            what: "protocol upgrade (WebSocket)",
        });
    }
    Ok(())
}

/// The ring hash of the request's shard key (counted in the hot-key view); without one, as
/// `missing_key` says.
fn shard_hash<B>(pool: &Pool, req: &Request<B>, client: &Client) -> Result<u64, ProxyError> {
    let config = &pool.config;
    let view = RequestView {
        uri: req.uri(),
        headers: req.headers(),
        client_ip: client.ip,
        believed: client.believed(),
    };
    match pool.key_hash(view) {
        Some(hash) => Ok(hash),
        None => match config.missing_key {
            // Spread such requests: a per-thread sequence, so no lock and no shared cache line.
            MissingKey::Any => Ok(crate::util::thread_random()),
            MissingKey::Reject => Err(ProxyError::MissingKey {
                sources: key_sources(config),
            }),
        },
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
