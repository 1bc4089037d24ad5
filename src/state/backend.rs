//! Runtime state of one backend, shared by every snapshot that contains it.
//!
//! A `Backend` outlives config reloads as long as its pool, id and address stay the same, so it
//! is the home of everything that must survive a reload: health, drain flag, counters and idle
//! upstream connections. The fields the request path touches are atomics or a lock-free queue;
//! the one mutex (`last_check`) is only taken by the health checker and the admin API.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{BackendConfig, InitialState, PoolConfig, Probe};
use crate::state::conns::RawConns;
use crate::state::metrics::{BackendMetrics, Metrics};
use crate::util::{Slots, lock, unix_ms};

#[derive(Debug)]
pub struct Backend {
    /// Identity on the ring.
    pub id: String,
    /// `host:port` as configured or discovered.
    pub(crate) address: String,
    /// Where `address` points now.
    pub(crate) dial: crate::state::dial::Dial,
    /// TLS on every connection to it (`[pools.upstream_tls]`), health checks included. A
    /// reload may swap it (a renewed client certificate or CA): see [`Backend::use_tls`].
    pub(crate) tls: arc_swap::ArcSwapOption<crate::tls::UpstreamTls>,
    /// False once health checking (active or passive) has declared the backend down.
    up: AtomicBool,
    /// Taken out of rotation by hand; still health-checked.
    drained: AtomicBool,
    /// When `up` or `drained` last changed, in milliseconds since the Unix epoch.
    since_ms: AtomicU64,
    /// Consecutive connect failures / timeouts seen on real traffic.
    passive_failures: AtomicU32,
    /// The latest active check, for the admin API.
    last_check: Mutex<Option<CheckRecord>>,
    /// Idle upstream connections, kept for the next request.
    pub(crate) raw: RawConns,
    /// One slot per open connection to this backend, idle ones included
    /// (`upstream_max_connections`); a connection gives its slot back when it closes.
    pub(crate) conn_slots: Slots,
    /// Requests in flight here, counted only in pools with bounded loads ([`crate::state::load`]).
    pub(crate) in_flight: AtomicU64,
    /// Its pool's in-flight count, which every request counted here is counted in too.
    pub(crate) pool_load: Arc<PoolLoad>,
    /// Handles to this backend's metric series, and request/error counts for the admin API.
    pub(crate) metrics: BackendMetrics,
}

/// One active health check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckRecord {
    pub(crate) at: SystemTime,
    pub(crate) took: Duration,
    /// `None` when the check passed, else why it failed.
    pub(crate) failure: Option<String>,
}

/// Routing state, as the admin API and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Drained,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Drained => "drained",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Backend {
    pub(crate) fn new(
        config: &BackendConfig,
        pool: &PoolConfig,
        metrics: &Metrics,
        pool_load: Arc<PoolLoad>,
        hosts: &crate::state::dial::Hosts,
    ) -> Backend {
        let up = pool.health.probe == Probe::None || pool.health.initial == InitialState::Up;
        Backend {
            id: config.id.clone(),
            address: config.address.clone(),
            dial: crate::state::dial::Dial::new(&config.address, hosts),
            tls: arc_swap::ArcSwapOption::new(pool.upstream_tls.clone()),
            up: AtomicBool::new(up),
            drained: AtomicBool::new(false),
            since_ms: AtomicU64::new(unix_ms()),
            passive_failures: AtomicU32::new(0),
            last_check: Mutex::new(None),
            raw: RawConns::default(),
            conn_slots: Slots::new(pool.upstream_max_connections),
            in_flight: AtomicU64::new(0),
            pool_load,
            metrics: BackendMetrics::new(metrics, &pool.name, &config.id),
        }
    }

    /// Connect with `tls` from now on. If that changes how connections are made, the idle ones
    /// (made the old way) are not reused. Health, drain and counters stay: a renewed
    /// certificate is not a new backend.
    pub(crate) fn use_tls(&self, tls: Option<&Arc<crate::tls::UpstreamTls>>) {
        if self.tls.load().as_deref() != tls.map(|t| &**t) {
            self.tls.store(tls.cloned());
            self.raw.clear();
        }
    }

    /// Whether new requests may be sent here.
    #[inline]
    pub(crate) fn is_usable(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.drained.load(Ordering::Relaxed)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> State {
        if self.is_drained() {
            State::Drained
        } else if self.is_up() {
            State::Up
        } else {
            State::Down
        }
    }

    /// Set health; returns the previous value.
    pub fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            self.since_ms.store(unix_ms(), Ordering::Relaxed);
            if !up {
                self.raw.clear();
            }
        }
        was
    }

    /// Set the drain flag; returns the previous value.
    pub fn set_drained(&self, drained: bool) -> bool {
        let was = self.drained.swap(drained, Ordering::Relaxed);
        if was != drained {
            self.since_ms.store(unix_ms(), Ordering::Relaxed);
        }
        was
    }

    /// When the state last changed.
    pub(crate) fn since(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.since_ms.load(Ordering::Relaxed))
    }

    /// A request reached the backend: the passive failure streak ends.
    #[inline]
    pub(crate) fn passive_success(&self) {
        // Read first: a store on every request would bounce the cache line between cores.
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A connect failure or timeout on real traffic. Returns true when this one marked the
    /// backend down (the streak reached `threshold`; 0 disables passive detection).
    pub(crate) fn passive_failure(&self, threshold: u32) -> bool {
        let streak = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        threshold > 0 && streak >= threshold && self.set_up(false)
    }

    pub(crate) fn reset_passive(&self) {
        self.passive_failures.store(0, Ordering::Relaxed);
    }

    pub(crate) fn record_check(&self, record: CheckRecord) {
        *lock(&self.last_check) = Some(record);
    }

    pub(crate) fn last_check(&self) -> Option<CheckRecord> {
        lock(&self.last_check).clone()
    }
}

/// Requests in flight in one pool. Kept across reloads with the pool's metrics, so requests
/// admitted under the old config are still counted (and given back) under the new one.
#[derive(Debug, Default)]
pub(crate) struct PoolLoad {
    pub(crate) in_flight: AtomicU64,
}

impl PoolLoad {
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}
