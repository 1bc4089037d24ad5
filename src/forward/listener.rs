//! Client-facing listeners: accept, limit, serve HTTP/1.1 and HTTP/2, shut down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Client, handle};
use crate::config::PoolConfig;
use crate::state::shared::Shared;
use crate::util::accept;

/// A running pool listener.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Connection slots; resized in place when a reload changes `max_connections`.
    limit: Arc<Semaphore>,
    max_connections: usize,
    /// Slots a shrink still has to take out as connections close. A growth pays this off
    /// first, so a shrink still in progress never swallows the permits of a later growth.
    owed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Listener {
    /// Apply a new `max_connections`. Growing takes effect at once; shrinking as soon as
    /// enough open connections have closed (open ones are never cut for it).
    pub(crate) fn set_max_connections(&mut self, max: usize) {
        use std::sync::atomic::Ordering;
        if max > self.max_connections {
            let mut grow = max - self.max_connections;
            // Cancel what a pending shrink has not taken yet, then add the rest.
            let _ = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    let paid = owed.min(grow);
                    Some(owed - paid)
                })
                .map(|owed| grow -= owed.min(grow));
            self.limit.add_permits(grow);
        } else if max < self.max_connections {
            let excess = self.max_connections - max;
            let forgotten = self.limit.forget_permits(excess);
            let still = excess - forgotten;
            if still > 0 && self.owed.fetch_add(still, Ordering::AcqRel) == 0 {
                // Take the rest one slot at a time as connections close.
                let (limit, owed) = (self.limit.clone(), self.owed.clone());
                tokio::spawn(async move {
                    while owed.load(Ordering::Acquire) > 0 {
                        let Ok(permit) = limit.clone().acquire_owned().await else {
                            return;
                        };
                        let took = owed
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1))
                            .is_ok();
                        if took {
                            permit.forget();
                        } // else: a growth cancelled the debt meanwhile; the permit goes back
                    }
                });
            }
        }
        self.max_connections = max;
    }

    /// Stop accepting; connections already open finish their requests within `grace`.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Wait until every connection of this listener is closed.
    pub(crate) async fn join(self) {
        let _ = self.task.await;
    }
}

/// Start serving `pool` on an already-bound listener. `stop` (or a parent of it) ends it.
pub(crate) fn spawn_pool_listener(
    listener: TcpListener,
    pool: &PoolConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> std::io::Result<Listener> {
    let addr = listener.local_addr()?;
    let ctx = Arc::new(PoolCtx {
        pool: pool.name.clone(),
        connections: shared
            .metrics
            .connections_active
            .with_label_values(&[&pool.name]),
        shared,
    });
    let limit = Arc::new(Semaphore::new(pool.max_connections));
    let task = tokio::spawn(accept_loop(listener, ctx, limit.clone(), stop.clone()));
    Ok(Listener {
        addr,
        stop,
        task,
        limit,
        max_connections: pool.max_connections,
        owed: Arc::default(),
    })
}

struct PoolCtx {
    pool: String,
    shared: Arc<Shared>,
    connections: prometheus::IntGauge,
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<PoolCtx>,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let addr = listener.local_addr().ok();
    loop {
        // At the connection limit we stop accepting; new clients wait in the kernel's backlog
        // instead of being accepted and starved.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let Some((stream, peer)) = accept(&listener, &stop, &ctx.pool).await else {
            break;
        };
        let Some(builder) = connection_builder(&ctx) else {
            continue; // pool removed; the reload that removed it is stopping this listener
        };
        let _ = stream.set_nodelay(true);
        let client = Arc::new(Client::new(peer.ip()));
        let conn_ctx = ctx.clone();
        let service = service_fn(move |req| {
            let ctx = conn_ctx.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(handle(&ctx.shared, &ctx.pool, &client, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let watched = graceful.watch(conn);
        let open = ctx.connections.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    // Read at shutdown, so a reload that changed it applies to listeners already running.
    let grace = ctx.shared.snapshot.load().config.server.shutdown_grace;
    let open = graceful.count();
    if open > 0 {
        tracing::info!(pool = %ctx.pool, ?addr, open, "listener stopped; waiting for open connections");
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(pool = %ctx.pool, ?grace, "grace period over; closing remaining connections");
        }
    }
}

fn connection_builder(ctx: &PoolCtx) -> Option<auto::Builder<TokioExecutor>> {
    let snapshot = ctx.shared.snapshot.load();
    let pool = &snapshot.pool(&ctx.pool)?.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(pool.header_read_timeout)
        .max_buf_size(pool.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(pool.max_header_bytes as u32);
    Some(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener(max: usize) -> Listener {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut pool = PoolConfig::new("p", "127.0.0.1:0".parse().unwrap(), vec![]);
        pool.max_connections = max;
        let metrics = Arc::new(crate::state::metrics::Metrics::unregistered());
        let snapshot = crate::state::snapshot::Snapshot::build(
            crate::config::Config {
                admin: Default::default(),
                server: Default::default(),
                pools: vec![pool.clone()],
            },
            None,
            &metrics,
        );
        let shared = Arc::new(Shared::new(snapshot, metrics));
        let l = spawn_pool_listener(tcp, &pool, shared, CancellationToken::new()).unwrap();
        // Stop accepting, so no permit is held by the accept loop and the counts are exact.
        l.stop();
        settle().await;
        l
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn max_connections_shrinks_and_grows_in_place() {
        let mut l = listener(4).await;
        l.set_max_connections(2);
        assert_eq!(l.limit.available_permits(), 2);
        l.set_max_connections(5);
        assert_eq!(l.limit.available_permits(), 5);
    }

    #[tokio::test]
    async fn a_shrink_waiting_for_busy_slots_does_not_eat_a_later_growth() {
        let mut l = listener(4).await;
        // All four slots busy, as if four clients were connected.
        let busy = l.limit.clone().acquire_many_owned(4).await.unwrap();
        l.set_max_connections(2); // owes 2, taken as connections close
        l.set_max_connections(4); // back to 4 before any closed: the debt is cancelled
        drop(busy);
        settle().await;
        assert_eq!(l.limit.available_permits(), 4);

        let busy = l.limit.clone().acquire_many_owned(4).await.unwrap();
        l.set_max_connections(1); // owes 3
        drop(busy);
        settle().await;
        assert_eq!(
            l.limit.available_permits(),
            1,
            "the debt was collected as slots freed"
        );
    }
}
