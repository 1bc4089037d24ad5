//! The JSON admin API: fleet state, where a key goes, drain/undrain, readiness.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::routing::ring::hash_key;
use crate::state::backend::Backend;
use crate::state::shared::Shared;
use crate::state::snapshot::Pool;

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
    pub(crate) backends: Vec<BackendView>,
}

#[derive(Serialize)]
pub(crate) struct BackendView {
    pub(crate) id: String,
    pub(crate) address: String,
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
        pools: snapshot.pools.iter().map(|p| pool_view(p)).collect(),
    }
}

fn pool_view(pool: &Pool) -> PoolView {
    let shares = pool.live_shares();
    PoolView {
        name: pool.config.name.clone(),
        listen: pool.config.listen.to_string(),
        key: pool.config.key.iter().map(ToString::to_string).collect(),
        usable: pool.usable_count(),
        backends: pool
            .backends
            .iter()
            .zip(&pool.config.backends)
            .zip(shares)
            .map(|((b, c), share)| backend_view(b, c.weight, share))
            .collect(),
    }
}

pub(crate) fn backend_view(b: &Backend, weight: u32, share: f64) -> BackendView {
    BackendView {
        id: b.id.clone(),
        address: b.address.clone(),
        weight,
        state: b.state().as_str(),
        since_unix: unix(b.since()),
        last_check: b.last_check().map(|c| CheckView {
            ok: c.failure.is_none(),
            at_unix: unix(c.at),
            took_ms: c.took.as_secs_f64() * 1000.0,
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
    /// then those that take over when the ones before them are down.
    pub(crate) chain: Vec<ChainEntry>,
}

#[derive(Serialize)]
pub(crate) struct ChainEntry {
    pub(crate) id: String,
    pub(crate) state: &'static str,
}

pub(crate) fn route(shared: &Shared, pool: &str, key: &str) -> Result<RouteView, String> {
    let snapshot = shared.snapshot.load();
    let Some(p) = snapshot.pool(pool) else {
        let names: Vec<&str> = snapshot
            .pools
            .iter()
            .map(|p| p.config.name.as_str())
            .collect();
        return Err(format!("no pool `{pool}`; pools: {}", names.join(", ")));
    };
    let hash = hash_key(key.as_bytes());
    let chain: Vec<ChainEntry> = p
        .successors(hash)
        .take(8)
        .map(|b| ChainEntry {
            id: b.id.clone(),
            state: b.state().as_str(),
        })
        .collect();
    Ok(RouteView {
        pool: pool.to_owned(),
        key: key.to_owned(),
        hash: format!("{hash:016x}"),
        owner: chain.first().map(|c| c.id.clone()).unwrap_or_default(),
        target: p.pick(hash).map(|b| b.id.clone()),
        chain,
    })
}

/// Drain (or undrain) a backend by hand. Returns its view after the change.
pub(crate) fn set_drained(
    shared: &Shared,
    pool: &str,
    id: &str,
    drained: bool,
) -> Result<BackendView, String> {
    let snapshot = shared.snapshot.load();
    let p = snapshot
        .pool(pool)
        .ok_or_else(|| format!("no pool `{pool}`"))?;
    let i = p
        .backends
        .iter()
        .position(|b| b.id == id)
        .ok_or_else(|| format!("no backend `{id}` in pool `{pool}`"))?;
    let b = &p.backends[i];
    let was = b.state();
    b.set_drained(drained);
    let now = b.state();
    if was != now {
        tracing::info!(pool, backend = id, from = %was, to = %now, reason = if drained { "drained via admin API" } else { "undrained via admin API" }, "backend state changed");
    }
    let share = p.live_shares()[i];
    Ok(backend_view(b, p.config.backends[i].weight, share))
}

/// `Ok` when a config is loaded and every pool has a backend taking traffic; else why not.
pub(crate) fn ready(shared: &Shared) -> Result<(), String> {
    let snapshot = shared.snapshot.load();
    let empty: Vec<String> = snapshot
        .pools
        .iter()
        .filter(|p| p.usable_count() == 0)
        .map(|p| format!("pool {} has no healthy backend", p.config.name))
        .collect();
    if empty.is_empty() {
        Ok(())
    } else {
        Err(empty.join("; "))
    }
}
