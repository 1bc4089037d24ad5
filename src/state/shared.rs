//! State shared by every listener, the admin API and the control tasks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::routing::keyspace::{PoolChange, PoolDiff};
use crate::state::metrics::Metrics;
use crate::state::snapshot::Snapshot;
use crate::util::{lock, unix_ms};

/// Shared across all tasks behind one `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The live configuration. Requests `load()` it once (lock-free, no reference count bump
    /// until they clone a pool out of it); reloads `store()` a whole new snapshot, so readers
    /// see either the old config or the new one, never a mix.
    pub snapshot: ArcSwap<Snapshot>,
    /// Outcome of config reloads (counters and the last result), for metrics and the admin API.
    pub reload: ReloadStatus,
    /// Every metric; pools and backends in the snapshot hold handles into it.
    pub(crate) metrics: Arc<Metrics>,
    /// What each discover source last found, for the admin API.
    pub(crate) discovery: Arc<DiscoveryStatus>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Shared {
        Shared::with_discovery(snapshot, metrics, Arc::default())
    }

    /// [`Shared::new`] with the status the discovery tasks write (they start before it).
    pub(crate) fn with_discovery(
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
        discovery: Arc<DiscoveryStatus>,
    ) -> Shared {
        Shared {
            metrics,
            snapshot: ArcSwap::from_pointee(snapshot),
            reload: ReloadStatus::default(),
            discovery,
        }
    }
}

/// The last lookup of each discover source, as the admin API shows it. The discovery tasks
/// write it every lookup and the admin listener reads it: a std mutex held briefly, never on
/// the request path.
#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    sources: Mutex<Vec<SourceStatus>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceStatus {
    pub(crate) pool: String,
    /// As the log names it: `srv _http._tcp.cache`.
    pub(crate) source: String,
    /// Backends in the last good answer; `None` before the first one.
    pub(crate) backends: Option<usize>,
    /// Why the last lookup failed; `None` when it succeeded.
    pub(crate) error: Option<String>,
    /// Unix time in milliseconds of the last lookup.
    pub(crate) at_ms: u64,
    /// Unix time in milliseconds of the last good answer (0: none yet).
    pub(crate) ok_ms: u64,
}

impl DiscoveryStatus {
    /// A lookup of `source` in `pool` found `Ok(backends)` or failed, keeping the last good
    /// count.
    pub(crate) fn record(&self, pool: &str, source: &str, result: Result<usize, &str>) {
        let mut sources = lock(&self.sources);
        let i = match sources
            .iter()
            .position(|s| s.pool == pool && s.source == source)
        {
            Some(i) => i,
            None => {
                sources.push(SourceStatus {
                    pool: pool.to_owned(),
                    source: source.to_owned(),
                    backends: None,
                    error: None,
                    at_ms: 0,
                    ok_ms: 0,
                });
                sources.len() - 1
            }
        };
        let s = &mut sources[i];
        s.at_ms = unix_ms();
        match result {
            Ok(n) => {
                s.backends = Some(n);
                s.error = None;
                s.ok_ms = s.at_ms;
            }
            Err(why) => s.error = Some(why.to_owned()),
        }
    }

    /// Forget the sources `keep` says no to (the config no longer has them).
    pub(crate) fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        lock(&self.sources).retain(|s| keep(&s.pool, &s.source));
    }

    /// Every source, in the order first looked up.
    pub(crate) fn all(&self) -> Vec<SourceStatus> {
        lock(&self.sources).clone()
    }

    /// The sources of `pool`, in the order first looked up.
    pub(crate) fn of(&self, pool: &str) -> Vec<SourceStatus> {
        lock(&self.sources)
            .iter()
            .filter(|s| s.pool == pool)
            .cloned()
            .collect()
    }
}

/// Outcome counters and the last result of config loads, read by the admin API. The reloader
/// writes them; every field is an atomic or a briefly held std mutex (never across an await).
#[derive(Debug, Default)]
pub struct ReloadStatus {
    succeeded: AtomicU64,
    failed: AtomicU64,
    last_ok: AtomicBool,
    /// Unix time in milliseconds of the last successful load (startup counts).
    last_success_ms: AtomicU64,
    /// The last attempt's result, as a person reads it.
    last_message: Mutex<String>,
    /// Per pool, the fraction of the keyspace the last successful reload moved.
    moved: Mutex<Vec<(String, f64)>>,
}

impl ReloadStatus {
    /// The config that started the process (with these pools), loaded successfully.
    pub(crate) fn started<'a>(&self, metrics: &Metrics, pools: impl Iterator<Item = &'a str>) {
        self.mark_success(metrics);
        // No reload has moved anything yet: the series exist from the first scrape.
        for pool in pools {
            metrics.keyspace_moved.with_label_values(&[pool]).set(0.0);
        }
        *lock(&self.last_message) = "loaded at startup".into();
    }

    /// A reload was applied; `summary` is its one-line description.
    pub(crate) fn applied(&self, metrics: &Metrics, pools: &[PoolDiff], summary: &str) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        self.mark_success(metrics);
        metrics.reloads.with_label_values(&["success"]).inc();
        metrics.keyspace_moved.reset();
        for p in pools.iter().filter(|p| p.change != PoolChange::Removed) {
            metrics
                .keyspace_moved
                .with_label_values(&[&p.pool])
                .set(p.moved);
        }
        *lock(&self.last_message) = format!("applied: {summary}");
        *lock(&self.moved) = pools.iter().map(|p| (p.pool.clone(), p.moved)).collect();
    }

    /// Discovery changed the backends of `pools` (the pools whose backends changed): their
    /// moved fraction is this change's; the reload counters are for config files only.
    pub(crate) fn rediscovered(&self, metrics: &Metrics, pools: &[PoolDiff]) {
        let mut moved = lock(&self.moved);
        for p in pools {
            metrics
                .keyspace_moved
                .with_label_values(&[&p.pool])
                .set(p.moved);
            match moved.iter_mut().find(|(name, _)| *name == p.pool) {
                Some(entry) => entry.1 = p.moved,
                None => moved.push((p.pool.clone(), p.moved)),
            }
        }
    }

    /// A reload was refused; the previous config keeps serving.
    pub(crate) fn refused(&self, metrics: &Metrics, why: &dyn std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.last_ok.store(false, Ordering::Relaxed);
        metrics.reloads.with_label_values(&["failure"]).inc();
        metrics.last_reload_successful.set(0);
        *lock(&self.last_message) = format!("refused: {why}");
    }

    fn mark_success(&self, metrics: &Metrics) {
        let now = unix_ms();
        self.last_ok.store(true, Ordering::Relaxed);
        self.last_success_ms.store(now, Ordering::Relaxed);
        metrics.last_reload_successful.set(1);
        metrics
            .last_reload_success_timestamp
            .set(now as f64 / 1000.0);
    }

    /// Whether the last attempt was applied.
    pub fn last_ok(&self) -> bool {
        self.last_ok.load(Ordering::Relaxed)
    }

    pub(crate) fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn last_success_ms(&self) -> u64 {
        self.last_success_ms.load(Ordering::Relaxed)
    }

    pub fn last_message(&self) -> String {
        lock(&self.last_message).clone()
    }

    /// Per pool, the fraction of the keyspace the last applied reload moved.
    pub fn moved(&self) -> Vec<(String, f64)> {
        lock(&self.moved).clone()
    }
}
