//! Wiring: bind every listener, build the first snapshot, run until told to stop.
//!
//! `Proxy::start` takes an already validated [`Config`] and a cancellation token, so the binary,
//! the demo and the integration tests all start the proxy the same way (tests use port 0 and ask
//! for the bound addresses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::health::HealthChecks;
use crate::server::{self, Listener};
use crate::shared::Shared;
use crate::snapshot::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
    /// Pool name → its listener. A std mutex: only the control plane touches it, briefly.
    listeners: Mutex<HashMap<String, Listener>>,
    admin_task: Mutex<Option<JoinHandle<()>>>,
    health: HealthChecks,
    stop: CancellationToken,
}

impl Proxy {
    /// Bind every listener (failing before serving anything if one can't be bound), then serve.
    /// Cancelling `stop` begins a graceful shutdown; [`Proxy::wait`] returns when it is done.
    pub async fn start(
        config: Config,
        registry: Registry,
        stop: CancellationToken,
    ) -> Result<Arc<Proxy>, StartError> {
        let admin_listener = bind("admin", config.admin.listen).await?;
        let admin_addr = admin_listener
            .local_addr()
            .expect("bound listener has an address");
        if !admin_addr.ip().is_loopback() {
            tracing::warn!(%admin_addr, "admin listener is not on a loopback address; anyone who can reach it can see and change backend state");
        }
        let mut bound = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            bound.push(bind(&format!("pool {}", pool.name), pool.listen).await?);
        }

        let grace = config.server.shutdown_grace;
        let pools = config.pools.clone();
        let shared = Arc::new(Shared::new(Snapshot::build(config, None)));
        // Probes start before the first request is accepted: the first round runs at once.
        let health = HealthChecks::new(stop.child_token());
        health.sync(&shared.snapshot.load());
        let mut listeners = HashMap::new();
        for (pool, listener) in pools.iter().zip(bound) {
            let l = server::spawn_pool_listener(
                listener,
                pool,
                shared.clone(),
                stop.child_token(),
                grace,
            )
            .expect("bound listener has an address");
            tracing::info!(pool = %pool.name, addr = %l.addr, backends = pool.backends.len(), "pool listening");
            listeners.insert(pool.name.clone(), l);
        }
        let admin = Arc::new(Admin {
            shared: shared.clone(),
            registry,
        });
        tracing::info!(addr = %admin_addr, "admin listening");
        let admin_task = tokio::spawn(admin::serve(admin_listener, admin, stop.child_token()));

        Ok(Arc::new(Proxy {
            shared,
            admin_addr,
            listeners: Mutex::new(listeners),
            admin_task: Mutex::new(Some(admin_task)),
            health,
            stop,
        }))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn health(&self) -> &HealthChecks {
        &self.health
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where pool `name` is listening.
    pub fn pool_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().unwrap().get(name).map(|l| l.addr)
    }

    /// Begin a graceful shutdown.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Wait until shutdown has finished: every listener closed and its connections drained.
    pub async fn wait(&self) {
        self.stop.cancelled().await;
        let listeners: Vec<Listener> = self
            .listeners
            .lock()
            .unwrap()
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in listeners {
            l.join().await;
        }
        let admin = self.admin_task.lock().unwrap().take();
        if let Some(task) = admin {
            let _ = task.await;
        }
    }
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}
