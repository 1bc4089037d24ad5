//! Wiring: bind every listener, build the first snapshot, run until told to stop.
//!
//! `Proxy::start` takes an already validated [`Config`] and a cancellation token, so the binary,
//! the demo and the integration tests all start the proxy the same way (tests use port 0 and ask
//! for the bound addresses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::discovery::Discovery;
use crate::control::health::HealthChecks;
use crate::control::limits;
use crate::forward::listener::{self, Listener, Workers};
use crate::observe::admin::{self, Admin, Policy};
use crate::routing::keyspace::{self, PoolDiff};
use crate::state::metrics::Metrics;
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::util::lock;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy is shutting down; the new config was not applied")]
    ShuttingDown,
    /// `admin.token_file` is set but its token was never read: the config was loaded without
    /// its files (`config::load_routing`), which cannot serve.
    #[error("admin.token_file {0} was not read: load the config with config::load")]
    Token(String),
    /// A pool that has backends would have none: its DNS sources have not answered (a
    /// misspelt name, say), and nothing else is listed.
    #[error("pool `{pool}` would have no backends: {why}")]
    NoBackends { pool: String, why: String },
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
    /// Pool name → its listener. A std mutex: only the control plane touches it, briefly, and
    /// never across an await.
    listeners: Mutex<HashMap<String, Listener>>,
    /// Listeners a reload stopped (pool removed or moved) whose connections are still draining.
    retiring: Mutex<Vec<Listener>>,
    admin_task: Mutex<Option<JoinHandle<()>>>,
    /// Ends the admin listener: after the drain, not with `stop`, so probes and scrapes are
    /// answered while connections finish.
    admin_stop: CancellationToken,
    /// The admin listener's state; a reload updates who may use it.
    admin: Arc<Admin>,
    health: HealthChecks,
    /// Backends from DNS and backend host names kept resolved.
    discovery: Arc<Discovery>,
    /// The config as the file has it, without what discovery added: what a discovery change
    /// applies again with its new set.
    declared: Mutex<Config>,
    /// Serialises reloads: a file event, SIGHUP and the admin API may ask at the same time.
    applying: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    /// Where pool listeners run.
    workers: Workers,
}

/// What a reload changed.
#[derive(Debug)]
pub struct Applied {
    pub(crate) pools: Vec<PoolDiff>,
    /// The settings the reload changed besides backends (`config::changed_settings`).
    pub(crate) settings: Vec<String>,
    /// Settings in the new file that only a restart applies.
    pub needs_restart: Vec<RestartOnly>,
}

/// A setting a reload changed but cannot apply to a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartOnly {
    /// The admin listener keeps listening on `stays`.
    AdminListen {
        from: SocketAddr,
        to: SocketAddr,
        stays: SocketAddr,
    },
    /// Watching is set up once at startup.
    WatchConfig { from: bool, to: bool },
    /// The runtime is built once at startup.
    WorkerThreads { from: usize, to: usize },
    /// So are the worker threads.
    WorkerLayout {
        from: crate::config::WorkerLayout,
        to: crate::config::WorkerLayout,
    },
}

impl std::fmt::Display for RestartOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartOnly::AdminListen { from, to, stays } => write!(
                f,
                "admin.listen {from} → {to} (the admin listener stays on {stays})"
            ),
            RestartOnly::WatchConfig { from, to } => {
                write!(f, "server.watch_config {from} → {to}")
            }
            RestartOnly::WorkerThreads { from, to } => {
                write!(f, "server.worker_threads {from} → {to}")
            }
            RestartOnly::WorkerLayout { from, to } => {
                write!(
                    f,
                    "server.worker_layout {} → {}",
                    from.as_str(),
                    to.as_str()
                )
            }
        }
    }
}

/// What in `new` differs from `old` and only a restart applies.
fn restart_only(old: &Config, new: &Config, admin_addr: SocketAddr) -> Vec<RestartOnly> {
    let mut out = Vec::new();
    if new.admin.listen != old.admin.listen {
        out.push(RestartOnly::AdminListen {
            from: old.admin.listen,
            to: new.admin.listen,
            stays: admin_addr,
        });
    }
    if new.server.watch_config != old.server.watch_config {
        out.push(RestartOnly::WatchConfig {
            from: old.server.watch_config,
            to: new.server.watch_config,
        });
    }
    if new.server.worker_threads != old.server.worker_threads {
        out.push(RestartOnly::WorkerThreads {
            from: old.server.worker_threads,
            to: new.server.worker_threads,
        });
    }
    if new.server.worker_layout != old.server.worker_layout {
        out.push(RestartOnly::WorkerLayout {
            from: old.server.worker_layout,
            to: new.server.worker_layout,
        });
    }
    out
}

impl Proxy {
    /// Bind every listener (failing before serving anything if one can't be bound), then serve.
    /// Cancelling `stop` begins a graceful shutdown; [`Proxy::wait`] returns when it is done.
    pub async fn start(
        config: Config,
        registry: Registry,
        stop: CancellationToken,
    ) -> Result<Arc<Proxy>, StartError> {
        Proxy::start_on(config, registry, stop, Workers::default()).await
    }

    /// [`Proxy::start`] with the pool listeners on `workers` (one socket and accept loop per
    /// worker runtime); everything else runs on the calling runtime.
    pub(crate) async fn start_on(
        config: Config,
        registry: Registry,
        stop: CancellationToken,
        workers: Workers,
    ) -> Result<Arc<Proxy>, StartError> {
        limits::warn_if_over_budget(&config, None);
        let policy = admin_policy(&config)?;
        let admin_listener = bind_admin(config.admin.listen).await?;
        let admin_addr = admin_listener
            .local_addr()
            .expect("bound listener has an address");
        if !admin_addr.ip().is_loopback() {
            tracing::warn!(%admin_addr, "admin listener is not on a loopback address; anyone who can reach it can see and change backend state");
        }
        let mut bound = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            bound.push(bind(&format!("pool {}", pool.name), pool.listen, &workers)?);
        }

        let pools = config.pools.clone();
        let metrics = Arc::new(Metrics::new(&registry));
        let status = Arc::new(crate::state::shared::DiscoveryStatus::default());
        let discovery = Discovery::new(
            &config.resolver,
            metrics.clone(),
            status.clone(),
            stop.child_token(),
        );
        let declared = config.clone();
        let mut config = config;
        let prepared = discovery.prepare(&mut config).await;
        let hosts = discovery.hosts_with(&prepared);
        let snapshot = Snapshot::build_with(config, None, &metrics, &hosts);
        let shared = Arc::new(Shared::with_discovery(snapshot, metrics, status));
        discovery.commit(prepared, &declared, &shared.snapshot.load(), &shared);
        let names = pools.iter().map(|p| p.name.as_str());
        shared.reload.started(&shared.metrics, names);
        // Probes start before the first request is accepted: the first round runs at once.
        let health = HealthChecks::new(stop.child_token(), shared.metrics.clone());
        health.sync(&shared.snapshot.load());
        let mut listeners = HashMap::new();
        for (pool, listener) in pools.iter().zip(bound) {
            let l = listener::spawn_pool_listener(
                listener,
                pool,
                shared.clone(),
                stop.child_token(),
                &workers,
            )
            .expect("bound listener has an address");
            let backends = shared
                .snapshot
                .load()
                .pool(&pool.name)
                .map_or(0, |p| p.backends().len());
            tracing::info!(pool = %pool.name, addr = %l.addr, backends, "pool listening");
            listeners.insert(pool.name.clone(), l);
        }
        let admin = Arc::new(Admin {
            shared: shared.clone(),
            registry,
            scrape: Default::default(),
            policy: ArcSwap::from_pointee(Policy {
                listen: Some(admin_addr),
                ..policy
            }),
            shutting_down: stop.clone(),
        });
        tracing::info!(addr = %admin_addr, "admin listening");
        tokio::spawn(tick_hot_keys(shared.clone(), stop.child_token()));
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin.clone(),
            admin_stop.clone(),
        ));

        let proxy = Arc::new(Proxy {
            shared,
            admin_addr,
            listeners: Mutex::new(listeners),
            retiring: Mutex::new(Vec::new()),
            admin_task: Mutex::new(Some(admin_task)),
            admin_stop,
            admin,
            health,
            discovery,
            declared: Mutex::new(declared),
            applying: tokio::sync::Mutex::new(()),
            stop,
            workers,
        });
        tokio::spawn(apply_discovered(Arc::downgrade(&proxy)));
        Ok(proxy)
    }

    /// Make `config` live: bind the listeners it adds or moves (refusing the whole change if
    /// one cannot be bound, with nothing changed), swap in the new snapshot atomically, then
    /// retire listeners of removed or moved pools (their open connections finish) and bring the
    /// health checks in step. Backends with the same pool, id and address keep their state.
    pub(crate) async fn apply(&self, config: Config) -> Result<Applied, StartError> {
        self.apply_with(Some(config)).await
    }

    /// [`Proxy::apply`] of `file` (a new config file), or with `None` of the config in use
    /// again, with what discovery found since.
    async fn apply_with(&self, file: Option<Config>) -> Result<Applied, StartError> {
        let _one_at_a_time = self.applying.lock().await;
        let old = self.shared.snapshot.load_full();
        let rediscovery = file.is_none();
        let declared = file.unwrap_or_else(|| lock(&self.declared).clone());
        let mut config = declared.clone();
        let prepared = self.discovery.prepare(&mut config).await;
        // A pool that serves must not be emptied by a source that never answered: refused,
        // so the running config keeps serving (a new pool may start empty and fill in).
        // A renamed pool is a removed one and an added one: the added one must not be empty
        // either while a serving pool goes.
        let serving_removed = old.pools.iter().any(|p| {
            p.backends().len() > 0 && !config.pools.iter().any(|n| n.name == p.config.name)
        });
        for pool in &config.pools {
            let serving = match old.pool(&pool.name) {
                Some(p) => p.backends().len() > 0,
                None => serving_removed,
            };
            if serving && pool.backends.is_empty() {
                let unanswered = self.discovery.unanswered(pool, &prepared);
                let why = match unanswered.is_empty() {
                    true => "none is listed".to_owned(),
                    false => format!(
                        "none is listed and its DNS sources have not answered: {}",
                        unanswered.join(", ")
                    ),
                };
                return Err(StartError::NoBackends {
                    pool: pool.name.clone(),
                    why,
                });
            }
        }

        let needs_restart = restart_only(&old.config, &config, self.admin_addr);
        // The token file was read with the config: an unusable one refused the reload there.
        // A discovery change keeps the policy in use: nothing about the admin side changed.
        let policy = match rediscovery {
            true => None,
            false => Some(admin_policy(&config)?),
        };
        limits::warn_if_over_budget(&config, Some(&old.config));

        // Bind first: a port in use refuses the reload before anything changed.
        let mut bound = Vec::new();
        for pool in &config.pools {
            let moved = match old.pool(&pool.name) {
                None => true,
                Some(p) => p.config.listen != pool.listen,
            };
            if moved {
                let listener = bind(&format!("pool {}", pool.name), pool.listen, &self.workers)?;
                bound.push((pool.name.clone(), listener));
            }
        }

        // Building rings and diffing them is CPU work in proportion to the points (milliseconds
        // for a hundred backends, seconds at the cap): off the runtime threads, so requests keep
        // flowing meanwhile, also on a single-threaded runtime.
        let (metrics, previous) = (self.shared.metrics.clone(), old.clone());
        let hosts = self.discovery.hosts_with(&prepared);
        let (snapshot, pools) = tokio::task::spawn_blocking(move || {
            let snapshot = Arc::new(Snapshot::build_with(
                config,
                Some(&previous),
                &metrics,
                &hosts,
            ));
            let pools = keyspace::pools(&previous.layouts(), &snapshot.layouts());
            (snapshot, pools)
        })
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // The runtime is going away and dropped the build before it ran.
            Err(_) => StartError::ShuttingDown,
        })?;
        self.shared.snapshot.store(snapshot.clone());
        if let Some(policy) = policy {
            self.admin.policy.store(Arc::new(Policy {
                listen: Some(self.admin_addr),
                ..policy
            }));
        }
        self.health.sync(&snapshot);
        for diff in &pools {
            if diff.change == crate::routing::keyspace::PoolChange::Removed {
                if let Some(p) = old.pool(&diff.pool) {
                    p.metrics.retire();
                }
                self.shared.metrics.forget_pool(&diff.pool);
            }
            for gone in diff.backends.iter().filter(|b| b.after.is_none()) {
                // Retired first: requests still running on the old snapshot make no new
                // series for it.
                if let Some(b) = old.pool(&diff.pool).and_then(|p| p.backend(&gone.id)) {
                    b.metrics.retire();
                }
                self.shared.metrics.forget_backend(&diff.pool, &gone.id);
            }
        }
        self.discovery
            .commit(prepared, &declared, &snapshot, &self.shared);
        *lock(&self.declared) = declared;

        let mut listeners = lock(&self.listeners);
        let mut retiring = lock(&self.retiring);
        retiring.retain(|l| !l.is_finished());
        for (name, listener) in bound {
            let pool = &snapshot
                .pool(&name)
                .expect("bound for a pool of this config")
                .config;
            let l = listener::spawn_pool_listener(
                listener,
                pool,
                self.shared.clone(),
                self.stop.child_token(),
                &self.workers,
            )
            .expect("bound listener has an address");
            tracing::info!(pool = %name, addr = %l.addr, "pool listening");
            if let Some(old) = listeners.insert(name, l) {
                old.stop();
                retiring.push(old);
            }
        }
        let gone: Vec<String> = listeners
            .keys()
            .filter(|name| snapshot.pool(name).is_none())
            .cloned()
            .collect();
        for name in gone {
            if let Some(l) = listeners.remove(&name) {
                tracing::info!(pool = %name, addr = %l.addr, "pool removed; listener stopped, open connections finish");
                l.stop();
                retiring.push(l);
            }
        }
        for pool in &snapshot.pools {
            if let Some(l) = listeners.get(&pool.config.name) {
                l.set_max_connections(pool.config.max_connections);
            }
            // Backends kept from the old snapshot keep their slots; the cap may have changed.
            for b in pool.backends() {
                b.conn_slots.resize(pool.config.upstream_max_connections);
            }
        }
        let settings = crate::config::changed_settings(&old.config, &snapshot.config);
        Ok(Applied {
            pools,
            settings,
            needs_restart,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where pool `name` is listening.
    pub fn pool_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.listeners).get(name).map(|l| l.addr)
    }

    /// Begin a graceful shutdown.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Wait until shutdown has finished: every listener closed and its connections drained.
    pub async fn wait(&self) {
        self.stop.cancelled().await;
        let mut all: Vec<Listener> = lock(&self.listeners).drain().map(|(_, l)| l).collect();
        all.append(&mut lock(&self.retiring));
        for l in all {
            l.join().await;
        }
        self.admin_stop.cancel();
        let admin = lock(&self.admin_task).take();
        if let Some(task) = admin {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    /// A proxy dropped without [`Proxy::wait`] still closes its admin listener.
    fn drop(&mut self) {
        self.admin_stop.cancel();
    }
}

/// Who may use the admin listener under `config`. A token file whose token was not read (a
/// config loaded for routing only) is refused: the API must never end up open by mistake.
fn admin_policy(config: &Config) -> Result<Policy, StartError> {
    let admin = &config.admin;
    if let (Some(file), None) = (&admin.token_file, &admin.token) {
        return Err(StartError::Token(file.display().to_string()));
    }
    Ok(Policy {
        listen: Some(admin.listen),
        allowed_hosts: admin.allowed_hosts.clone(),
        token: admin.token.as_ref().map(|t| t.0.clone()),
    })
}

async fn bind_admin(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: "admin".to_owned(),
            addr,
            source,
        })
}

/// A pool's listening sockets: one per worker runtime.
fn bind(
    what: &str,
    addr: SocketAddr,
    workers: &Workers,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    crate::util::bind_listeners(addr, workers.sockets()).map_err(|source| StartError::Bind {
        what: what.to_owned(),
        addr,
        source,
    })
}

/// Apply the config again whenever a discovery source's set of backends changes, until the
/// proxy is gone or stopping. Changes that come while one is applied are applied together.
async fn apply_discovered(proxy: std::sync::Weak<Proxy>) {
    loop {
        let Some(p) = proxy.upgrade() else { return };
        let (discovery, stop) = (p.discovery.clone(), p.stop.clone());
        drop(p);
        tokio::select! {
            () = discovery.changed.notified() => {}
            () = stop.cancelled() => return,
        }
        let Some(p) = proxy.upgrade() else { return };
        match p.apply_with(None).await {
            Ok(applied) => {
                let shared = &p.shared;
                let changed: Vec<_> = applied
                    .pools
                    .into_iter()
                    .filter(|d| d.counts() != Default::default())
                    .collect();
                shared.reload.rediscovered(&shared.metrics, &changed);
                for diff in &changed {
                    tracing::info!(pool = %diff.pool, "discovery changed the backends: {} ({})", diff.summary(), diff.named_changes());
                }
            }
            Err(e) => tracing::warn!("discovered backends not applied: {e}"),
        }
    }
}

/// Once a second, every pool's hot-key view turns its window and takes in new candidates, off
/// the request path.
async fn tick_hot_keys(shared: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        for pool in &shared.snapshot.load().pools {
            if let Some(hot) = &pool.hot {
                hot.tick();
            }
        }
    }
}
