//! Active health checks: one task per backend probes it every `interval` and flips its `up`
//! flag through rise/fall hysteresis. Routing never rebuilds the ring on a flip: lookups walk
//! past backends that are down, so only their keys move and exactly those come back.

mod hysteresis;
mod probe;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use hysteresis::Hysteresis;
pub(crate) use probe::{ProbeError, probe};

use crate::state::backend::{Backend, CheckRecord};
use prometheus::{Histogram, IntCounter};

use crate::config::{HealthConfig, InitialState, Probe};
use crate::state::metrics::Metrics;
use crate::state::snapshot::Snapshot;
use crate::util::lock;

/// The running check tasks, kept in step with the live snapshot.
pub(crate) struct HealthChecks {
    /// Keyed by the backend's `Arc` address; the entry holds the `Arc`, so the address cannot
    /// be reused while the key exists. Control plane only.
    tasks: Mutex<HashMap<usize, Task>>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

struct Task {
    /// Keeps the key's address alive (see `tasks`).
    _backend: Arc<Backend>,
    pool: String,
    config: HealthConfig,
    cancel: CancellationToken,
}

impl HealthChecks {
    pub(crate) fn new(stop: CancellationToken, metrics: Arc<Metrics>) -> HealthChecks {
        HealthChecks {
            tasks: Mutex::new(HashMap::new()),
            stop,
            metrics,
        }
    }

    /// Start checking the backends `snapshot` has and we do not check yet (or check with other
    /// settings), stop checking the ones it no longer has. Backends that stay keep their task,
    /// and with it their rise/fall progress.
    pub(crate) fn sync(&self, snapshot: &Snapshot) {
        let mut tasks = lock(&self.tasks);
        let mut keep = HashMap::with_capacity(tasks.len());
        for pool in &snapshot.pools {
            let cfg = &pool.config.health;
            for backend in pool.backends() {
                let key = Arc::as_ptr(backend) as usize;
                if let Some(task) = tasks.remove(&key) {
                    if task.config == *cfg && task.pool == pool.config.name {
                        keep.insert(key, task);
                        continue;
                    }
                    task.cancel.cancel();
                }
                if cfg.probe == Probe::None {
                    // Nothing will ever check it again: it must not stay down.
                    backend.reset_passive();
                    backend.set_up(true);
                    continue;
                }
                let cancel = self.stop.child_token();
                let pool_name = pool.config.name.clone();
                let metrics = CheckMetrics::new(&self.metrics, &pool_name, &backend.id);
                tokio::spawn(check_loop(
                    pool_name.clone(),
                    backend.clone(),
                    cfg.clone(),
                    cancel.clone(),
                    metrics,
                ));
                keep.insert(
                    key,
                    Task {
                        _backend: backend.clone(),
                        pool: pool_name,
                        config: cfg.clone(),
                        cancel,
                    },
                );
            }
        }
        for (_, gone) in tasks.drain() {
            gone.cancel.cancel();
        }
        *tasks = keep;
    }
}

/// Handles to one backend's check series.
pub(crate) struct CheckMetrics {
    pass: IntCounter,
    fail: IntCounter,
    duration: Histogram,
}

impl CheckMetrics {
    pub(crate) fn new(m: &Metrics, pool: &str, backend: &str) -> CheckMetrics {
        CheckMetrics {
            pass: m.health_checks.with_label_values(&[pool, backend, "pass"]),
            fail: m.health_checks.with_label_values(&[pool, backend, "fail"]),
            duration: m.health_check_duration.with_label_values(&[pool, backend]),
        }
    }
}

async fn check_loop(
    pool: String,
    backend: Arc<Backend>,
    config: HealthConfig,
    cancel: CancellationToken,
    metrics: CheckMetrics,
) {
    let probe_kind = config.probe.clone();
    let timeout = config.timeout;
    run_checks(&pool, &backend, &config, &cancel, Some(&metrics), || {
        probe(&backend, &probe_kind, timeout)
    })
    .await;
}

/// The check schedule, generic over the probe so it can be tested with paused time.
///
/// The first probe runs at once. Each next one starts `interval` after the previous start,
/// minus up to 10% jitter, so replicas drift apart instead of probing in lockstep while the
/// worst-case detection time stays within `fall × interval + timeout`.
pub(crate) async fn run_checks<F, Fut>(
    pool: &str,
    backend: &Backend,
    config: &HealthConfig,
    cancel: &CancellationToken,
    metrics: Option<&CheckMetrics>,
    mut probe: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ProbeError>>,
{
    let mut machine = if !backend.is_up()
        && config.initial == InitialState::Down
        && backend.last_check().is_none()
    {
        Hysteresis::unchecked(config.rise)
    } else {
        Hysteresis::new(backend.is_up())
    };
    let mut rng = Jitter::seeded(&backend.id);
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        next = started + config.interval - rng.up_to(config.interval / 10);
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe() => r,
        };
        let took = started.elapsed();
        if let Err(e @ ProbeError::Local(_)) = &result {
            tracing::warn!(pool, backend = %backend.id, error = %e, "health check not counted: this process is short of resources; the backend keeps its state");
            backend.record_check(CheckRecord {
                at: SystemTime::now(),
                took,
                failure: Some(format!("not counted: {e}")),
            });
            continue;
        }
        if let Some(m) = metrics {
            m.duration.observe(took.as_secs_f64());
            if result.is_ok() { &m.pass } else { &m.fail }.inc();
        }
        // Passive detection (or a reload) may have changed the flag since the last probe:
        // evidence counts from the state the backend is really in.
        if machine.is_up() != backend.is_up() {
            machine = Hysteresis::new(backend.is_up());
        }
        if let Some(up) = machine.observe(result.is_ok(), config.rise, config.fall) {
            backend.set_up(up);
            if up {
                backend.reset_passive();
            }
            let (from, to) = if up { ("down", "up") } else { ("up", "down") };
            let reason = match &result {
                Ok(()) => format!("{} consecutive successful checks", config.rise),
                Err(e) => format!("{} consecutive failed checks, last: {e}", config.fall),
            };
            // Health and drain are apart: a drained backend's checks go on, and its line says
            // it stays out of rotation whatever they find.
            let drained = backend.is_drained();
            tracing::info!(pool, backend = %backend.id, from, to, drained, %reason, "backend state changed");
        }
        backend.record_check(CheckRecord {
            at: SystemTime::now(),
            took,
            failure: result.err().map(|e| e.to_string()),
        });
    }
}

/// splitmix64 state, seeded per backend and process.
struct Jitter(u64);

impl Jitter {
    fn seeded(id: &str) -> Jitter {
        use std::hash::BuildHasher;
        Jitter(std::collections::hash_map::RandomState::new().hash_one(id))
    }

    fn up_to(&mut self, max: Duration) -> Duration {
        let z = crate::util::splitmix64(&mut self.0);
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(z % nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, PoolConfig};
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn backend(initial: InitialState) -> (Arc<Backend>, HealthConfig) {
        let mut pool = PoolConfig::new("p", "127.0.0.1:0".parse().unwrap(), vec![]);
        pool.health.interval = Duration::from_secs(2);
        pool.health.timeout = Duration::from_secs(1);
        pool.health.initial = initial;
        let b = BackendConfig {
            id: "b".into(),
            address: "127.0.0.1:1".into(),
            weight: 1,
        };
        (
            Arc::new(Backend::new(
                &b,
                &pool,
                &crate::state::metrics::Metrics::unregistered(),
                Arc::default(),
                &Default::default(),
            )),
            pool.health,
        )
    }

    /// Runs the schedule against a switchable fake backend; records when each probe ran.
    struct Fake {
        healthy: Arc<AtomicBool>,
        probes: Arc<Mutex<VecDeque<Instant>>>,
    }

    fn spawn(backend: Arc<Backend>, config: HealthConfig) -> (Fake, CancellationToken) {
        let healthy = Arc::new(AtomicBool::new(true));
        let probes = Arc::new(Mutex::new(VecDeque::new()));
        let cancel = CancellationToken::new();
        let (h, p, c) = (healthy.clone(), probes.clone(), cancel.clone());
        tokio::spawn(async move {
            run_checks("p", &backend, &config, &c, None, || {
                let ok = h.load(Ordering::SeqCst);
                p.lock().unwrap().push_back(Instant::now());
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if ok {
                        Ok(())
                    } else {
                        Err(ProbeError::Connect(
                            std::io::ErrorKind::ConnectionRefused.into(),
                        ))
                    }
                }
            })
            .await
        });
        (Fake { healthy, probes }, cancel)
    }

    async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() <= limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn detection_and_recovery_follow_fall_rise_and_interval() {
        let (b, cfg) = backend(InitialState::Up);
        let (fake, cancel) = spawn(b.clone(), cfg.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            fake.probes.lock().unwrap().len(),
            1,
            "first probe runs at once"
        );
        assert!(b.is_usable());

        fake.healthy.store(false, Ordering::SeqCst);
        let down = until("down", cfg.interval * cfg.fall + cfg.timeout, || !b.is_up()).await;
        assert!(
            down > cfg.interval * (cfg.fall - 1) - cfg.interval / 5,
            "{down:?}: too early"
        );

        fake.healthy.store(true, Ordering::SeqCst);
        let up = until("up", cfg.interval * cfg.rise + cfg.timeout, || b.is_up()).await;
        assert!(
            up > cfg.interval * (cfg.rise - 1) - cfg.interval / 5,
            "{up:?}: too early"
        );

        // Intervals: never longer than `interval`, never shorter than 90% of it.
        let probes = fake.probes.lock().unwrap().clone();
        for w in probes.iter().collect::<Vec<_>>().windows(2) {
            let gap = *w[1] - *w[0];
            assert!(
                gap <= cfg.interval && gap >= cfg.interval * 9 / 10,
                "{gap:?}"
            );
        }
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn checked_first_backend_waits_for_its_first_probe() {
        let (b, cfg) = backend(InitialState::Down);
        assert!(!b.is_usable(), "no traffic before the first check");
        let (_fake, cancel) = spawn(b.clone(), cfg);
        until("up after one probe", Duration::from_millis(100), || {
            b.is_up()
        })
        .await;
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn passive_down_needs_rise_successful_checks_to_come_back() {
        let (b, cfg) = backend(InitialState::Up);
        let (_fake, cancel) = spawn(b.clone(), cfg.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            b.passive_failure(1),
            "one failure at threshold 1 marks it down"
        );
        assert!(!b.is_up());
        let up = until("up", cfg.interval * cfg.rise + cfg.timeout, || b.is_up()).await;
        assert!(
            up > cfg.interval * (cfg.rise - 1) - cfg.interval / 5,
            "{up:?}"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_backend_stays_up_when_no_streak_reaches_fall() {
        let (b, cfg) = backend(InitialState::Up);
        let (fake, cancel) = spawn(b.clone(), cfg.clone());
        for i in 0..40 {
            fake.healthy.store(i % 2 == 0, Ordering::SeqCst);
            tokio::time::sleep(cfg.interval).await;
            assert!(b.is_up(), "flipped at round {i}");
        }
        cancel.cancel();
    }
}
