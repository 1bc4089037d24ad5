//! The retry policy: which failed attempts may go to the next distinct backend on the key's
//! ring walk, and with what.
//!
//! A request that never left (connect failed, or an idle connection turned out dead before
//! anything was written) can always go elsewhere: its body is untouched. One that was sent may
//! go again only if the operator allows it (`retry_idempotent`), its method is idempotent and
//! it has no body, so a copy of its head is all a replay needs. Either way at most `retries`
//! more backends are tried, each one only once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response};

use super::attempt::{self, Failure};
use super::body::ProxyBody;
use super::error::ProxyError;
use crate::config::PoolConfig;
use crate::state::backend::Backend;
use crate::state::load::InFlight;
use crate::state::reqbody::{ClientBody, ReqBody};
use crate::state::snapshot::{Choice, Pool};

/// `retries` is at most 10 (config validation), so attempts fit in a stack array.
const MAX_ATTEMPTS: usize = 11;

/// Send `req` to the backend `first` chose for `hash`, then to the next distinct usable
/// successors while the policy allows. On success, also the request's place in its backend's
/// in-flight count (bounded loads), to hold until the response is done with.
pub(super) async fn send(
    pool: &Pool,
    hash: u64,
    first: Choice,
    req: Request<ClientBody>,
    trying: &AtomicUsize,
) -> Result<(Response<ProxyBody>, Arc<Backend>, Option<InFlight>), ProxyError> {
    let config = &pool.config;
    let upload = !http_body::Body::is_end_stream(req.body());
    let replay = Head::keep_for_replay(config, &req);
    let mut req: Request<ReqBody> = match replay {
        Some(_) => req.map(|_| ReqBody::empty()),
        None => req.map(ReqBody::streamed),
    };
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0;
    let mut choice = first;
    loop {
        let idx = choice.index;
        let backend = pool.at(idx);
        trying.store(idx, Ordering::Relaxed);
        let failure = match attempt::send(pool, backend, req, upload).await {
            Ok(resp) => return Ok((resp, backend.clone(), choice.load)),
            Err(failure) => failure,
        };
        // The failed attempt no longer counts against its backend.
        drop(choice.load);
        tried[attempts] = idx;
        attempts += 1;
        let Failure { error, unsent } = failure;
        let again = unsent.filter(|_| error.allows_retry()).or_else(|| {
            replay
                .as_ref()
                .filter(|_| error.is_replayable())
                .map(Head::rebuild)
        });
        let next = match again {
            Some(r) if attempts <= config.retries as usize => {
                pool.choose(hash, &tried[..attempts]).map(|c| (c, r))
            }
            _ => None,
        };
        let Some((next, next_req)) = next else {
            return Err(error);
        };
        tracing::debug!(pool = %config.name, from = %backend.id, to = %pool.at(next.index).id, %error, "retrying on the next backend");
        pool.metrics.retries.inc();
        choice = next;
        req = next_req;
    }
}

/// The head of a bodiless request, kept to send it again.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Head {
    /// A copy of `req`'s head if the policy would ever replay it after it was sent.
    fn keep_for_replay<B: http_body::Body>(config: &PoolConfig, req: &Request<B>) -> Option<Head> {
        let replayable = config.retry_idempotent
            && config.retries > 0
            && crate::http1::is_idempotent(req.method().as_str())
            && req.body().is_end_stream();
        replayable.then(|| Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn rebuild(&self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}
