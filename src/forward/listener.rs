//! Client-facing listeners: accept, limit, serve HTTP/1.1 (the proxy's own path) and h2c
//! (hyper's), shut down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::supervise;
use super::h1::{self, Protocol};
use super::tls;
use super::{Client, handle};
use crate::config::PoolConfig;
use crate::state::activity::{Activity, Timeouts};
use crate::state::reqbody::ClientBody;
use crate::state::shared::Shared;
use crate::util::{Signal, Slots, accept};

/// Where pool listeners run: on the runtime that starts them (one listening socket per pool),
/// or on each of these worker runtimes, each with its own socket on the pool's address
/// (`server.worker_layout = "per-thread"`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Workers {
    handles: Vec<tokio::runtime::Handle>,
}

impl Workers {
    pub(crate) fn on(handles: Vec<tokio::runtime::Handle>) -> Workers {
        Workers { handles }
    }

    /// Listening sockets per pool.
    pub(crate) fn sockets(&self) -> usize {
        self.handles.len().max(1)
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, i: usize, task: F) -> JoinHandle<()> {
        match self.handles.get(i) {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

/// A running pool listener: one accept loop per listening socket.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Connection slots; resized in place when a reload changes `max_connections`.
    limit: Arc<Slots>,
}

impl Listener {
    /// Apply a new `max_connections`. Growing takes effect at once; shrinking as soon as
    /// enough open connections have closed (open ones are never cut for it).
    pub(crate) fn set_max_connections(&self, max: usize) {
        self.limit.resize(max);
    }

    /// Stop accepting; connections already open finish their requests within `grace`.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    /// Wait until every connection of this listener is closed.
    pub(crate) async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Start serving `pool` on already-bound sockets ([`bind_listeners`](crate::util::bind_listeners)),
/// socket `i` on worker `i`. `stop` (or a parent of it) ends it.
pub(crate) fn spawn_pool_listener(
    sockets: Vec<std::net::TcpListener>,
    pool: &PoolConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
    workers: &Workers,
) -> std::io::Result<Listener> {
    let addr = sockets
        .first()
        .ok_or_else(|| std::io::Error::other("no socket to listen on"))?
        .local_addr()?;
    let ctx = Arc::new(PoolCtx {
        pool: pool.name.clone(),
        connections: shared
            .metrics
            .connections_active
            .with_label_values(&[&pool.name]),
        shared,
    });
    let limit = Arc::new(Slots::new(pool.max_connections));
    let tasks = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let (ctx, limit, stop) = (ctx.clone(), limit.clone(), stop.clone());
            workers.spawn(i, async move {
                // Taken up by the runtime it is polled on, so its I/O stays on that thread.
                match TcpListener::from_std(socket) {
                    Ok(listener) => accept_loop(listener, ctx, limit, stop).await,
                    Err(e) => tracing::error!(pool = %ctx.pool, error = %e, "cannot listen"),
                }
            })
        })
        .collect();
    Ok(Listener {
        addr,
        stop,
        tasks,
        limit,
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
    limit: Arc<Slots>,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    // `drain` asks open connections to finish gracefully; `kill` ends those still open when
    // the grace period is over.
    let (drain, kill) = (Arc::new(Signal::new()), Arc::new(Signal::new()));
    let addr = listener.local_addr().ok();
    loop {
        // At the connection limit we stop accepting; new clients wait in the kernel's backlog
        // instead of being accepted and starved.
        let permit = tokio::select! {
            p = limit.acquire() => p,
            () = stop.cancelled() => break,
        };
        let Some((stream, peer)) = accept(&listener, &stop, &ctx.pool).await else {
            break;
        };
        let Some(setup) = Setup::for_pool(&ctx, peer) else {
            continue; // pool removed; the reload that removed it is stopping this listener
        };
        let _ = stream.set_nodelay(true);
        let open = ctx.connections.clone();
        open.inc();
        let (ctx, drain, kill) = (ctx.clone(), drain.clone(), kill.clone());
        tracker.spawn(async move {
            tokio::select! {
                biased;
                () = kill.wait() => {}
                () = serve_connection(stream, &ctx, setup, &drain, &kill) => {}
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    // Read at shutdown, so a reload that changed it applies to listeners already running.
    let grace = ctx.shared.snapshot.load().config.server.shutdown_grace;
    let open = tracker.len();
    if open > 0 {
        // An absent address is left out of the line, not shown as `None`.
        let addr = addr.map(tracing::field::display);
        tracing::info!(pool = %ctx.pool, addr, open, "listener stopped; waiting for open connections");
    }
    drain.raise();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(pool = %ctx.pool, ?grace, open = tracker.len(), "grace period over; closing remaining connections");
        kill.raise();
        tracker.wait().await;
    }
}

/// Serve one client connection: TLS first if the pool terminates it, then HTTP/1 on the
/// proxy's own path or HTTP/2 on hyper's. `kill` ends it whatever it is doing (the caller also
/// drops it then).
async fn serve_connection(
    stream: TcpStream,
    ctx: &Arc<PoolCtx>,
    mut setup: Setup,
    drain: &Signal,
    kill: &Signal,
) {
    // The handshake and the first request head are both due within header_read_timeout of
    // accept: a client that dawdles over either is cut off at the same point.
    let due = tokio::time::Instant::now() + setup.timeouts.header_read;
    match setup.tls.take() {
        None => serve_http(stream, ctx, setup, due, drain, kill).await,
        // Boxed: a TLS session's state would otherwise make every connection's task as large.
        Some(acceptor) => Box::pin(serve_tls(acceptor, stream, ctx, setup, due, drain, kill)).await,
    }
}

/// Shake hands, then serve HTTP on the TLS stream; a failed handshake is counted by reason.
async fn serve_tls(
    acceptor: Arc<crate::tls::Acceptor>,
    stream: TcpStream,
    ctx: &Arc<PoolCtx>,
    mut setup: Setup,
    due: tokio::time::Instant,
    drain: &Signal,
    kill: &Signal,
) {
    let shook = tokio::select! {
        r = tls::handshake(&acceptor, stream, due) => r,
        // One-shot: the token's own future, on the stack.
        () = drain.token().cancelled() => return,
    };
    match shook {
        Ok(stream) => {
            setup.client.https = true;
            serve_http(stream, ctx, setup, due, drain, kill).await;
        }
        Err(why) => {
            tracing::debug!(pool = %ctx.pool, reason = why.as_str(), "TLS handshake failed");
            ctx.shared
                .metrics
                .tls_handshake_errors
                .with_label_values(&[&ctx.pool, why.as_str()])
                .inc();
        }
    }
}

/// Serve HTTP on an established connection (TCP, or TLS once shaken hands): told apart by its
/// first bytes, HTTP/2's preface to hyper, anything else to the HTTP/1 path.
async fn serve_http<S: h1::ClientIo + 'static>(
    mut stream: S,
    ctx: &Arc<PoolCtx>,
    setup: Setup,
    due: tokio::time::Instant,
    drain: &Signal,
    kill: &Signal,
) {
    let sniffed = tokio::select! {
        p = h1::sniff(&mut stream, due) => p,
        () = drain.token().cancelled() => None,
    };
    match sniffed {
        None => {}
        Some(Protocol::H1(first)) => {
            let limits = h1::Limits {
                header_read: setup.timeouts.header_read,
                idle: setup.timeouts.idle,
                max_head: setup.max_header_bytes,
            };
            h1::serve(
                stream,
                first,
                due,
                &ctx.shared,
                &ctx.pool,
                &setup.client,
                limits,
                drain,
            )
            .await;
        }
        Some(Protocol::H2(first)) => {
            let io = TokioIo::new(h1::Prefixed::new(first, stream));
            serve_h2(io, ctx, setup, drain, kill).await;
        }
    }
}

/// An HTTP/2 connection, served by hyper and watched by its supervisor.
async fn serve_h2<S: h1::ClientIo + 'static>(
    io: TokioIo<h1::Prefixed<S>>,
    ctx: &Arc<PoolCtx>,
    setup: Setup,
    drain: &Signal,
    kill: &Signal,
) {
    let Some(builder) = h2_builder(ctx) else {
        return; // pool removed meanwhile
    };
    let client = Arc::new(setup.client);
    let activity = Activity::new();
    let (conn_ctx, conn_activity) = (ctx.clone(), activity.clone());
    let service = service_fn(move |req: http::Request<Incoming>| {
        let ctx = conn_ctx.clone();
        let client = client.clone();
        let mut exchange = conn_activity.begin(true);
        let req = req.map(|body| {
            // A bodiless request (most of them) has nothing to watch.
            let watch = (!http_body::Body::is_end_stream(&body)).then(|| conn_activity.clone());
            ClientBody::new(body, watch)
        });
        async move {
            let mut resp = handle(&ctx.shared, &ctx.pool, &client, req).await;
            exchange.head_arrived();
            resp.body_mut().hold(exchange);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(io, service).into_owned();
    let outcome = supervise(
        conn,
        activity,
        setup.timeouts,
        drain.token().clone(),
        kill.token().clone(),
    )
    .await;
    if let Some(Err(e)) = outcome {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// What a new connection gets from its pool's current config.
struct Setup {
    timeouts: Timeouts,
    max_header_bytes: usize,
    /// The peer, and whether it is a trusted proxy.
    client: Client,
    /// The pool terminates TLS with these certificates.
    tls: Option<Arc<crate::tls::Acceptor>>,
}

impl Setup {
    fn for_pool(ctx: &PoolCtx, peer: SocketAddr) -> Option<Setup> {
        let snapshot = ctx.shared.snapshot.load();
        let pool = &snapshot.pool(&ctx.pool)?.config;
        Some(Setup {
            timeouts: Timeouts {
                header_read: pool.header_read_timeout,
                idle: pool.idle_timeout,
            },
            max_header_bytes: pool.max_header_bytes,
            client: Client::new(peer.ip(), &pool.trusted_proxies),
            tls: pool.tls.clone(),
        })
    }
}

/// hyper's HTTP/2 server as the pool's current config sets it up; made only for h2c
/// connections.
fn h2_builder(ctx: &PoolCtx) -> Option<auto::Builder<TokioExecutor>> {
    let snapshot = ctx.shared.snapshot.load();
    let pool = &snapshot.pool(&ctx.pool)?.config;
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(pool.max_header_bytes as u32)
        // Pings find peers that vanished without a FIN; an unanswered one closes the
        // connection.
        .keep_alive_interval(pool.idle_timeout / 2)
        .keep_alive_timeout(pool.idle_timeout.min(std::time::Duration::from_secs(20)));
    Some(builder)
}
