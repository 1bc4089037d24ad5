//! The JSON admin API: fleet state, where a key goes, drain/undrain, readiness.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Serialize;

use crate::state::shared::{DiscoveryStatus, Shared};
use crate::state::snapshot::{Member, Pool, PoolChoiceError};

#[derive(Serialize)]
pub(crate) struct Fleet {
    pub(crate) version: &'static str,
    pub(crate) reload: ReloadView,
    pub(crate) pools: Vec<PoolView>,
}

#[derive(Serialize)]
pub(crate) struct ReloadView {
    pub(crate) ok: bool,
    pub(crate) last_success_unix: f64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) message: String,
}

#[derive(Serialize)]
pub(crate) struct PoolView {
    pub(crate) name: String,
    pub(crate) listen: String,
    pub(crate) key: Vec<String>,
    pub(crate) usable: usize,
    /// Whether `/api/hotkeys` has this pool's hot keys (`hot_keys`).
    pub(crate) hot_keys: bool,
    /// The certificates the pool terminates TLS with (empty: no TLS).
    pub(crate) tls: Vec<CertificateView>,
    /// Its `[[pools.discover]]` sources and what they last found.
    pub(crate) discovery: Vec<SourceView>,
    pub(crate) backends: Vec<BackendView>,
}

#[derive(Serialize)]
pub(crate) struct SourceView {
    /// `srv NAME` or `a NAME:PORT`.
    pub(crate) source: String,
    /// Backends in its last good answer (null before the first).
    pub(crate) backends: Option<usize>,
    /// Why the last lookup failed (null: it succeeded); the last good set stays in use.
    pub(crate) error: Option<String>,
    pub(crate) at_unix: f64,
}

#[derive(Serialize)]
pub(crate) struct CertificateView {
    /// `default`, or the first SNI name the pair serves (the metrics' `name` label).
    pub(crate) name: String,
    /// The leaf's first DNS name.
    pub(crate) subject: String,
    pub(crate) expires_unix: i64,
    /// Whole days until it expires (negative once it has).
    pub(crate) days_left: i64,
}

#[derive(Serialize)]
pub(crate) struct BackendView {
    pub(crate) id: String,
    pub(crate) address: String,
    /// Where its connections go now: `address` itself, or what its host name resolved to
    /// (empty: not resolved yet).
    pub(crate) connects_to: Vec<String>,
    pub(crate) weight: u32,
    pub(crate) state: &'static str,
    /// Unix time (seconds) of the last state change.
    pub(crate) since_unix: f64,
    pub(crate) last_check: Option<CheckView>,
    /// Fraction of the pool's keyspace this backend serves now (health taken into account).
    pub(crate) keyspace_share: f64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

#[derive(Serialize)]
pub(crate) struct CheckView {
    pub(crate) ok: bool,
    pub(crate) at_unix: f64,
    pub(crate) took_ms: f64,
    pub(crate) error: Option<String>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn fleet(shared: &Shared) -> Fleet {
    let snapshot = shared.snapshot.load();
    let r = &shared.reload;
    Fleet {
        version: env!("CARGO_PKG_VERSION"),
        reload: ReloadView {
            ok: r.last_ok(),
            last_success_unix: r.last_success_ms() as f64 / 1000.0,
            succeeded: r.succeeded(),
            failed: r.failed(),
            message: r.last_message(),
        },
        pools: snapshot
            .pools
            .iter()
            .map(|p| pool_view(p, &shared.discovery))
            .collect(),
    }
}

fn pool_view(pool: &Pool, discovery: &DiscoveryStatus) -> PoolView {
    let shares = pool.live_shares();
    PoolView {
        name: pool.config.name.clone(),
        listen: pool.config.listen.to_string(),
        key: pool.config.key.iter().map(ToString::to_string).collect(),
        usable: pool.usable_count(),
        hot_keys: pool.hot.is_some(),
        tls: pool
            .config
            .tls
            .iter()
            .flat_map(|t| t.certificates())
            .map(|(name, c)| CertificateView {
                name: name.to_owned(),
                subject: c.subject.clone(),
                expires_unix: c.not_after,
                days_left: c.seconds_left().div_euclid(86_400),
            })
            .collect(),
        discovery: discovery
            .of(&pool.config.name)
            .into_iter()
            .map(|s| SourceView {
                source: s.source,
                backends: s.backends,
                error: s.error,
                at_unix: s.at_ms as f64 / 1000.0,
            })
            .collect(),
        backends: pool
            .members
            .iter()
            .zip(shares.iter().copied())
            .map(|(m, share)| backend_view(m, share))
            .collect(),
    }
}

fn backend_view(member: &Member, share: f64) -> BackendView {
    let b = &member.backend;
    BackendView {
        id: b.id.clone(),
        address: b.address.clone(),
        connects_to: b.dial.addrs().iter().map(ToString::to_string).collect(),
        weight: member.weight,
        state: b.state().as_str(),
        since_unix: unix(b.since()),
        last_check: b.last_check().map(|c| CheckView {
            ok: c.failure.is_none(),
            at_unix: unix(c.at),
            // Microsecond precision: more digits are noise from the float conversion.
            took_ms: (c.took.as_secs_f64() * 1e6).round() / 1e3,
            error: c.failure,
        }),
        keyspace_share: share,
        requests: b.metrics.requests.load(Ordering::Relaxed),
        errors: b.metrics.errors.load(Ordering::Relaxed),
    }
}

#[derive(Serialize)]
pub(crate) struct RouteView {
    pub(crate) pool: String,
    pub(crate) key: String,
    pub(crate) hash: String,
    /// The ring owner, whatever its health.
    pub(crate) owner: String,
    /// Where a request with this key goes now (null: 503, no usable backend).
    pub(crate) target: Option<String>,
    /// Distinct backends clockwise from the key (up to 8), with their state: the owner first,
    /// then those that take over when the ones before them are down (or, with bounded loads,
    /// at their bound).
    pub(crate) chain: Vec<ChainEntry>,
    /// With bounded loads: the pool's factor and requests in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) balance: Option<BalanceView>,
}

#[derive(Serialize)]
pub(crate) struct ChainEntry {
    pub(crate) id: String,
    pub(crate) state: &'static str,
    /// With bounded loads: requests in flight on this backend, and how many it may have before
    /// a request passes it by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) in_flight: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bound: Option<u64>,
}

#[derive(Serialize)]
pub(crate) struct BalanceView {
    pub(crate) factor: f64,
    pub(crate) in_flight: u64,
}

pub(crate) fn route(
    shared: &Shared,
    pool: Option<&str>,
    key: &str,
) -> Result<RouteView, AdminError> {
    let snapshot = shared.snapshot.load();
    let p = snapshot.choose_pool(pool)?;
    let hash = p.ring.hash(key.as_bytes());
    let bounds = p.bounds();
    let chain: Vec<ChainEntry> = p
        .ring
        .successors(hash)
        .take(8)
        .map(|i| {
            let b = p.at(i);
            ChainEntry {
                id: b.id.clone(),
                state: b.state().as_str(),
                in_flight: bounds.map(|_| b.in_flight.load(Ordering::Relaxed)),
                bound: bounds.map(|bounds| bounds.limit(p.members[i].weight)),
            }
        })
        .collect();
    Ok(RouteView {
        pool: p.config.name.clone(),
        key: key.to_owned(),
        hash: format!("{hash:016x}"),
        owner: chain.first().map(|c| c.id.clone()).unwrap_or_default(),
        target: p.preview(hash).map(|i| p.at(i).id.clone()),
        balance: bounds.map(|b| BalanceView {
            factor: p.config.balance_factor,
            in_flight: b.in_flight,
        }),
        chain,
    })
}

#[derive(Serialize)]
pub(crate) struct HotKeysView {
    pub(crate) pool: String,
    /// Seconds the counts cover: the last minute, or less since startup.
    pub(crate) window_seconds: f64,
    /// Requests with a key in that time, all keys together.
    pub(crate) requests: u64,
    /// Whether `key` holds the key's text (`expose_keys`); otherwise only its hash is shown.
    pub(crate) expose_keys: bool,
    pub(crate) keys: Vec<HotKeyView>,
}

#[derive(Serialize)]
pub(crate) struct HotKeyView {
    /// The key's ring hash, as the access log writes it.
    pub(crate) hash: String,
    pub(crate) key: Option<String>,
    /// Estimated requests in the window: the current minute's count (never below the true
    /// one) plus the previous minute's, weighted by how much of it is still in the window.
    pub(crate) requests: u64,
    /// Estimated requests per second over the window.
    pub(crate) rate: f64,
    /// Fraction of the window's requests.
    pub(crate) share: f64,
    pub(crate) owner: String,
    /// Where its requests go now (with bounded loads, where the next one would).
    pub(crate) target: Option<String>,
}

/// The pool's hottest keys (up to 20), hottest first.
pub(crate) fn hot_keys(shared: &Shared, pool: Option<&str>) -> Result<HotKeysView, AdminError> {
    let snapshot = shared.snapshot.load();
    let p = snapshot.choose_pool(pool)?;
    let hot = p
        .hot
        .as_ref()
        .ok_or_else(|| AdminError::HotKeysOff(p.config.name.clone()))?;
    let top = hot.top(20);
    let seconds = top.covers.as_secs_f64().max(1.0);
    Ok(HotKeysView {
        pool: p.config.name.clone(),
        window_seconds: (top.covers.as_secs_f64() * 10.0).round() / 10.0,
        requests: top.requests,
        expose_keys: p.config.expose_keys,
        keys: top
            .keys
            .into_iter()
            .map(|k| HotKeyView {
                hash: format!("{:016x}", k.hash),
                key: k.text.filter(|_| p.config.expose_keys),
                requests: k.requests,
                rate: (k.requests as f64 / seconds * 100.0).round() / 100.0,
                share: if top.requests == 0 {
                    0.0
                } else {
                    (k.requests as f64 / top.requests as f64 * 1e4).round() / 1e4
                },
                owner: p
                    .ring
                    .owner(k.hash)
                    .map(|i| p.at(i).id.clone())
                    .unwrap_or_default(),
                target: p.preview(k.hash).map(|i| p.at(i).id.clone()),
            })
            .collect(),
    })
}

/// Drain (or undrain) a backend by hand. Returns its view after the change.
pub(crate) fn set_drained(
    shared: &Shared,
    pool: &str,
    id: &str,
    drained: bool,
) -> Result<BackendView, AdminError> {
    let snapshot = shared.snapshot.load();
    let p = snapshot.choose_pool(Some(pool))?;
    let i = p
        .members
        .iter()
        .position(|m| m.backend.id == id)
        .ok_or_else(|| AdminError::NoBackend {
            pool: pool.to_owned(),
            id: id.to_owned(),
        })?;
    let b = &p.members[i].backend;
    let was = b.state();
    b.set_drained(drained);
    let now = b.state();
    if was != now {
        tracing::info!(pool, backend = id, from = %was, to = %now, reason = if drained { "drained via admin API" } else { "undrained via admin API" }, "backend state changed");
    }
    let share = p.live_shares()[i];
    Ok(backend_view(&p.members[i], share))
}

/// Why `/readyz` says no: the pools without a backend taking traffic, and of them those with
/// no backend at all (only DNS sources that have not answered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not ready: {}", .empty_pools.iter().map(|p| if self.undiscovered.contains(p) {
    format!("pool {p} has no backends yet (no usable DNS answer; see /api/backends)")
} else {
    format!("pool {p} has no healthy backend")
}).collect::<Vec<_>>().join("; "))]
pub(crate) struct NotReady {
    pub(crate) empty_pools: Vec<String>,
    pub(crate) undiscovered: Vec<String>,
}

/// `Ok` when every pool has a backend taking traffic.
pub(crate) fn ready(shared: &Shared) -> Result<(), NotReady> {
    let snapshot = shared.snapshot.load();
    let empty_pools: Vec<String> = snapshot
        .pools
        .iter()
        .filter(|p| p.usable_count() == 0)
        .map(|p| p.config.name.clone())
        .collect();
    if empty_pools.is_empty() {
        return Ok(());
    }
    let undiscovered = snapshot
        .pools
        .iter()
        .filter(|p| p.backends().len() == 0)
        .map(|p| p.config.name.clone())
        .collect();
    Err(NotReady {
        empty_pools,
        undiscovered,
    })
}

/// What the JSON API answers instead of a value, as `{"error": "..."}` with [`AdminError::status`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("missing query parameter `key`")]
    MissingKey,
    #[error("missing query parameter `pool` (the config has several)")]
    MissingPool,
    #[error("{0}")]
    NoPool(PoolChoiceError),
    #[error("no backend `{id}` in pool `{pool}`")]
    NoBackend { pool: String, id: String },
    #[error("use /api/backends/{{pool}}/{{id}}/drain or /undrain")]
    NotFound,
    #[error("unknown action `{0}`: use drain or undrain")]
    UnknownAction(String),
    #[error("use POST")]
    UsePost,
    #[error("use GET")]
    UseGet,
    #[error("the hot-key view is off for pool `{0}` (pools[].hot_keys = false)")]
    HotKeysOff(String),
}

impl From<PoolChoiceError> for AdminError {
    fn from(e: PoolChoiceError) -> AdminError {
        match e {
            PoolChoiceError::Unnamed => AdminError::MissingPool,
            unknown @ PoolChoiceError::Unknown { .. } => AdminError::NoPool(unknown),
        }
    }
}

impl AdminError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            AdminError::MissingKey | AdminError::MissingPool => StatusCode::BAD_REQUEST,
            AdminError::NoPool(_)
            | AdminError::NoBackend { .. }
            | AdminError::NotFound
            | AdminError::UnknownAction(_) => StatusCode::NOT_FOUND,
            AdminError::UsePost | AdminError::UseGet => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::HotKeysOff(_) => StatusCode::CONFLICT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        let cases = [
            (AdminError::MissingKey, StatusCode::BAD_REQUEST),
            (AdminError::MissingPool, StatusCode::BAD_REQUEST),
            (
                AdminError::from(PoolChoiceError::Unknown {
                    name: "x".into(),
                    known: vec!["a".into(), "b".into()],
                }),
                StatusCode::NOT_FOUND,
            ),
            (
                AdminError::NoBackend {
                    pool: "a".into(),
                    id: "b9".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (AdminError::NotFound, StatusCode::NOT_FOUND),
            (AdminError::UnknownAction("x".into()), StatusCode::NOT_FOUND),
            (AdminError::UsePost, StatusCode::METHOD_NOT_ALLOWED),
            (AdminError::HotKeysOff("a".into()), StatusCode::CONFLICT),
            (AdminError::UseGet, StatusCode::METHOD_NOT_ALLOWED),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e}");
        }
        assert_eq!(
            AdminError::from(PoolChoiceError::Unknown {
                name: "x".into(),
                known: vec!["a".into(), "b".into()],
            })
            .to_string(),
            "no pool `x`; pools are: a, b"
        );
        assert_eq!(
            AdminError::from(PoolChoiceError::Unnamed).to_string(),
            "missing query parameter `pool` (the config has several)"
        );
        let not_ready = NotReady {
            empty_pools: vec!["a".into(), "b".into()],
            undiscovered: vec!["b".into()],
        };
        assert_eq!(
            not_ready.to_string(),
            "not ready: pool a has no healthy backend; \
             pool b has no backends yet (no usable DNS answer; see /api/backends)"
        );
    }
}
