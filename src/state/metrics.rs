//! Prometheus metrics. One [`Metrics`] per proxy, registered in the registry the caller hands
//! in (main builds one; each test its own).
//!
//! The request path never looks a label set up by string: pools and backends keep handles to
//! their own series (`PoolMetrics`, `BackendMetrics`), fetched once when a snapshot is built.
//! Gauges that describe current state (backend up, keyspace share) are not kept up to date
//! here: the admin listener computes them from the live snapshot at scrape time, so removed
//! backends disappear from them at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Latency buckets, in seconds: 0.5 ms to 30 s.
const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub(crate) requests: IntCounterVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) upstream_duration: HistogramVec,
    pub(crate) upstream_errors: IntCounterVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) no_backend: IntCounterVec,
    pub(crate) balance_spills: IntCounterVec,
    pub(crate) backend_up: IntGaugeVec,
    pub(crate) health_checks: IntCounterVec,
    pub(crate) health_check_duration: HistogramVec,
    pub(crate) keyspace_share: GaugeVec,
    pub(crate) reloads: IntCounterVec,
    pub(crate) last_reload_successful: IntGauge,
    pub(crate) last_reload_success_timestamp: Gauge,
    pub(crate) keyspace_moved: GaugeVec,
    pub(crate) connections_active: IntGaugeVec,
    pub(crate) upgraded_active: IntGaugeVec,
    pub(crate) tls_handshake_errors: IntCounterVec,
    pub(crate) tls_certificate_expiry: IntGaugeVec,
    pub(crate) discovery_errors: IntCounterVec,
    pub(crate) discovery_backends: IntGaugeVec,
    pub(crate) discovery_last_success: GaugeVec,
    pub(crate) build_info: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

fn int_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Metrics {
    /// Create every metric and register it in `registry`.
    pub(crate) fn new(registry: &Registry) -> Metrics {
        let r = registry;
        let last_ok = IntGauge::new(
            "shardgate_config_last_reload_successful",
            "Whether the last config reload was applied (1) or refused (0).",
        )
        .expect("valid metric");
        r.register(Box::new(last_ok.clone()))
            .expect("registered once");
        let last_ts = Gauge::new(
            "shardgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load (startup counts).",
        )
        .expect("valid metric");
        r.register(Box::new(last_ts.clone()))
            .expect("registered once");
        let m = Metrics {
            requests: counter(
                r,
                "shardgate_requests_total",
                "Requests answered, by pool, backend (none if no backend was chosen) and status code.",
                &["pool", "backend", "code"],
            ),
            request_duration: histogram(
                r,
                "shardgate_request_duration_seconds",
                "Time from receiving a request to the end of its response, as the client sees it.",
                &["pool"],
            ),
            upstream_duration: histogram(
                r,
                "shardgate_upstream_duration_seconds",
                "Time from sending a request to a backend until its response headers arrived.",
                &["pool", "backend"],
            ),
            upstream_errors: counter(
                r,
                "shardgate_upstream_errors_total",
                "Failed exchanges with a backend, by kind (connect, connect_timeout, timeout, upstream, idle_timeout, backend_busy).",
                &["pool", "backend", "kind"],
            ),
            retries: counter(
                r,
                "shardgate_retries_total",
                "Requests sent again to the next backend after a failed attempt.",
                &["pool"],
            ),
            no_backend: counter(
                r,
                "shardgate_no_backend_total",
                "Requests answered 503 because no backend of the pool was usable.",
                &["pool"],
            ),
            balance_spills: counter(
                r,
                "shardgate_balance_spills_total",
                "Requests that went past their key's first usable backend (the backend label) because it was at its bounded-load limit (balance_factor).",
                &["pool", "backend"],
            ),
            backend_up: int_gauge(
                r,
                "shardgate_backend_up",
                "Whether a backend takes traffic: 1 up, 0 down or drained.",
                &["pool", "backend"],
            ),
            health_checks: counter(
                r,
                "shardgate_health_checks_total",
                "Active health checks, by result (pass, fail).",
                &["pool", "backend", "result"],
            ),
            health_check_duration: histogram(
                r,
                "shardgate_health_check_duration_seconds",
                "Duration of active health checks.",
                &["pool", "backend"],
            ),
            keyspace_share: gauge(
                r,
                "shardgate_backend_keyspace_share",
                "Fraction of the pool's keyspace a backend serves now, with health taken into account.",
                &["pool", "backend"],
            ),
            reloads: counter(
                r,
                "shardgate_config_reloads_total",
                "Config reload attempts, by result (success, failure).",
                &["result"],
            ),
            last_reload_successful: last_ok,
            last_reload_success_timestamp: last_ts,
            keyspace_moved: gauge(
                r,
                "shardgate_keyspace_moved_ratio",
                "Fraction of the pool's keyspace whose backend the last applied reload, or the last change discovery applied to the pool, changed.",
                &["pool"],
            ),
            connections_active: int_gauge(
                r,
                "shardgate_connections_active",
                "Open client connections.",
                &["pool"],
            ),
            upgraded_active: int_gauge(
                r,
                "shardgate_upgraded_connections_active",
                "Connections switched to another protocol (WebSocket) and passed through to a backend.",
                &["pool", "backend"],
            ),
            tls_handshake_errors: counter(
                r,
                "shardgate_tls_handshake_errors_total",
                "TLS handshakes that failed, by reason (timeout, closed, plain_http, alert, incompatible, malformed, other).",
                &["pool", "reason"],
            ),
            tls_certificate_expiry: int_gauge(
                r,
                "shardgate_tls_certificate_expiry_timestamp_seconds",
                "When a pool's TLS certificate expires (Unix time); name is `default` or the first SNI name it serves.",
                &["pool", "name"],
            ),
            discovery_errors: counter(
                r,
                "shardgate_discovery_errors_total",
                "DNS lookups for a pool (its discover sources and its backends' host names) that failed or came back empty; the last good answer stays in use.",
                &["pool"],
            ),
            discovery_backends: int_gauge(
                r,
                "shardgate_discovery_backends",
                "Backends in a discover source's last good answer (the set in use).",
                &["pool", "source"],
            ),
            discovery_last_success: gauge(
                r,
                "shardgate_discovery_last_success_timestamp_seconds",
                "When a discover source last answered well (Unix time; 0: never). Alert on time() minus this.",
                &["pool", "source"],
            ),
            build_info: int_gauge(
                r,
                "shardgate_build_info",
                "Always 1; the labels say which build is running.",
                &["version"],
            ),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Reloads create series as they happen; start them at zero so rate() works from the
        // first scrape.
        m.reloads.with_label_values(&["success"]);
        m.reloads.with_label_values(&["failure"]);
        m
    }

    /// Metrics registered nowhere, for one-shot commands that build snapshots.
    pub fn unregistered() -> Metrics {
        Metrics::new(&Registry::new())
    }
}

/// A pool's own series.
#[derive(Debug)]
pub(crate) struct PoolMetrics {
    pub(crate) name: String,
    pub(crate) request_duration: Histogram,
    pub(crate) retries: IntCounter,
    pub(crate) no_backend: IntCounter,
    requests: IntCounterVec,
    /// The pool left the config and its series were removed: requests still finishing on an
    /// old snapshot must not create them again.
    retired: std::sync::atomic::AtomicBool,
}

/// Why an exchange with a backend failed: the `kind` label of `shardgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    /// The backend refused or reset the connection attempt.
    Connect,
    /// Connecting took longer than `connect_timeout`.
    ConnectTimeout,
    /// No response head within `request_timeout`.
    Timeout,
    /// The backend broke the exchange or sent something that is not valid HTTP.
    Upstream,
    /// The backend stopped sending mid-response for `idle_timeout`.
    IdleTimeout,
    /// The backend's `upstream_max_connections` were all busy for `connect_timeout`.
    BackendBusy,
}

impl UpstreamErrorKind {
    pub(crate) const ALL: [UpstreamErrorKind; 6] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Upstream,
        UpstreamErrorKind::IdleTimeout,
        UpstreamErrorKind::BackendBusy,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Upstream => "upstream",
            UpstreamErrorKind::IdleTimeout => "idle_timeout",
            UpstreamErrorKind::BackendBusy => "backend_busy",
        }
    }
}

impl PoolMetrics {
    pub(crate) fn new(m: &Metrics, pool: &str) -> PoolMetrics {
        PoolMetrics {
            name: pool.to_owned(),
            request_duration: m.request_duration.with_label_values(&[pool]),
            retries: m.retries.with_label_values(&[pool]),
            no_backend: m.no_backend.with_label_values(&[pool]),
            requests: m.requests.clone(),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The pool left the config: from now on nothing creates a series of it.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// A request answered without reaching a backend (`backend="none"`).
    pub(crate) fn answered(&self, status: u16) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut code = itoa_buf();
        self.requests
            .with_label_values(&[&self.name, "none", fmt_code(&mut code, status)])
            .inc();
    }
}

/// A backend's own series, plus plain counters for the admin API.
#[derive(Debug)]
pub(crate) struct BackendMetrics {
    pub(crate) upstream_duration: Histogram,
    /// `shardgate_balance_spills_total`: requests this backend was too loaded to take.
    pub(crate) spills: IntCounter,
    /// `shardgate_upgraded_connections_active`: WebSocket (and other upgraded) connections
    /// passed through to this backend now.
    pub(crate) upgraded: IntGauge,
    /// `shardgate_upstream_errors_total{kind}`, one per [`UpstreamErrorKind::ALL`], created with
    /// the backend so every series starts at 0 (rates and alerts work before the first error).
    upstream_errors: [IntCounter; UpstreamErrorKind::ALL.len()],
    /// `shardgate_requests_total{code}` handles, filled in on first use of each status.
    by_code: Box<[OnceLock<IntCounter>]>,
    requests_vec: IntCounterVec,
    pool: String,
    id: String,
    /// Requests answered by this backend (any status), and the ones that failed (5xx from the
    /// backend or a failed exchange), for `/api/backends`.
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Its series were removed (the backend left the config): requests still in flight on
    /// an old snapshot must not create them again.
    retired: std::sync::atomic::AtomicBool,
}

impl Metrics {
    /// Drop every series of backend `id` of `pool`, once no live config has it: a fleet whose
    /// members come and go (discovery by address, say) must not leave a series behind for
    /// each one forever. A backend that comes back starts from zero, which Prometheus reads
    /// as a counter reset. Control plane only: a thousand map lookups per backend.
    pub(crate) fn forget_backend(&self, pool: &str, id: &str) {
        // Absent series (a code never answered, a check never run) are no error here.
        let _ = self.upstream_duration.remove_label_values(&[pool, id]);
        let _ = self.balance_spills.remove_label_values(&[pool, id]);
        let _ = self.upgraded_active.remove_label_values(&[pool, id]);
        let _ = self.health_check_duration.remove_label_values(&[pool, id]);
        for result in ["pass", "fail"] {
            let _ = self.health_checks.remove_label_values(&[pool, id, result]);
        }
        for kind in UpstreamErrorKind::ALL {
            let _ = self
                .upstream_errors
                .remove_label_values(&[pool, id, kind.as_str()]);
        }
        self.forget_requests(pool, id);
    }

    /// Drop `shardgate_requests_total` of `backend` in `pool`, every status code.
    fn forget_requests(&self, pool: &str, backend: &str) {
        let mut code = itoa_buf();
        for status in 100..1000 {
            let _ =
                self.requests
                    .remove_label_values(&[pool, backend, fmt_code(&mut code, status)]);
        }
    }

    /// Drop the pool-level series of `pool` once no live config has it (its backends' own go
    /// with [`Metrics::forget_backend`]; gauges rebuilt at each scrape need nothing). Its
    /// listener may still be draining: its connection gauge's handle counts on, unseen.
    pub(crate) fn forget_pool(&self, pool: &str) {
        let _ = self.request_duration.remove_label_values(&[pool]);
        let _ = self.retries.remove_label_values(&[pool]);
        let _ = self.no_backend.remove_label_values(&[pool]);
        let _ = self.connections_active.remove_label_values(&[pool]);
        let _ = self.keyspace_moved.remove_label_values(&[pool]);
        let _ = self.discovery_errors.remove_label_values(&[pool]);
        for why in crate::tls::HandshakeFailure::ALL {
            let _ = self
                .tls_handshake_errors
                .remove_label_values(&[pool, why.as_str()]);
        }
        self.forget_requests(pool, "none");
    }
}

impl BackendMetrics {
    pub(crate) fn new(m: &Metrics, pool: &str, id: &str) -> BackendMetrics {
        BackendMetrics {
            upstream_duration: m.upstream_duration.with_label_values(&[pool, id]),
            spills: m.balance_spills.with_label_values(&[pool, id]),
            upgraded: m.upgraded_active.with_label_values(&[pool, id]),
            upstream_errors: UpstreamErrorKind::ALL.map(|kind| {
                m.upstream_errors
                    .with_label_values(&[pool, id, kind.as_str()])
            }),
            by_code: (100..1000).map(|_| OnceLock::new()).collect(),
            requests_vec: m.requests.clone(),
            pool: pool.to_owned(),
            id: id.to_owned(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The backend left the config and its series are being removed: from now on nothing
    /// creates one (handles already made keep counting, into series no scrape shows).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Count one failed exchange with this backend.
    pub(crate) fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one answered request with `status`. Lock-free after the first one per status.
    #[inline]
    pub(crate) fn answered(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.count_code(status);
    }

    /// `shardgate_requests_total{code}` only: for a failed exchange, whose error the admin
    /// API's counts already have.
    #[inline]
    pub(crate) fn count_code(&self, status: u16) {
        let slot = &self.by_code[status.clamp(100, 999) as usize - 100];
        if let Some(counter) = slot.get() {
            counter.inc();
        } else if !self.retired.load(Ordering::Relaxed) {
            self.first_of_code(slot, status);
        }
    }

    /// The first answer with `status`: its series is made (out of line: once per status).
    #[cold]
    fn first_of_code(&self, slot: &OnceLock<IntCounter>, status: u16) {
        slot.get_or_init(|| {
            let mut code = itoa_buf();
            self.requests_vec.with_label_values(&[
                &self.pool,
                &self.id,
                fmt_code(&mut code, status),
            ])
        })
        .inc();
    }
}

fn itoa_buf() -> [u8; 3] {
    [b'0'; 3]
}

/// Status code as text without allocating.
fn fmt_code(buf: &mut [u8; 3], status: u16) -> &str {
    let s = status.clamp(100, 999);
    buf[0] = b'0' + (s / 100) as u8;
    buf[1] = b'0' + (s / 10 % 10) as u8;
    buf[2] = b'0' + (s % 10) as u8;
    std::str::from_utf8(buf).expect("ascii digits")
}
