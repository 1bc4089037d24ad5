//! `shardgate run` and `shardgate demo`: the runtime, logging and signals around a running proxy.

use std::net::SocketAddr;
use std::path::Path;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use super::inspect::load_or_explain;
use crate::config::WorkerLayout;
use crate::control::{Proxy, limits, reload, signals};
use crate::forward::listener::Workers;
use crate::observe::access_log::{self, LogFormat};

/// `shardgate run`: serve until SIGTERM/SIGINT, reloading on file changes and SIGHUP.
pub(super) fn run(path: &Path) -> i32 {
    let config = match load_or_explain(path, crate::config::load) {
        Ok(c) => c,
        Err(code) => return code,
    };
    limits::raise_nofile_limit();
    let (runtime, workers) = runtimes(&config.server);
    let listeners = workers.listeners();
    let code = runtime.block_on(async move {
        let stop = CancellationToken::new();
        // Before any port opens: a signal sent once the proxy answers must find its handler.
        signals::stop_on_signal(stop.clone());
        let hangups = signals::hangups();
        match Proxy::start_on(config, Registry::new(), stop.clone(), listeners).await {
            Ok(proxy) => {
                reload::spawn(path.to_owned(), proxy.clone(), hangups, stop);
                proxy.wait().await;
                tracing::info!("stopped");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    });
    drop(runtime);
    workers.finish();
    code
}

/// `shardgate demo`.
pub(super) fn demo(listen: SocketAddr, admin: SocketAddr) -> i32 {
    limits::raise_nofile_limit();
    let (runtime, workers) = runtimes(&crate::config::ServerConfig::default());
    let listeners = workers.listeners();
    let code = runtime.block_on(async move {
        let stop = CancellationToken::new();
        signals::stop_on_signal(stop.clone());
        // The demo has no file to reload, but a `kill -HUP` tried on it (as on `run`) must not
        // end it.
        if let Some(mut hangups) = signals::hangups() {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!(
                        "SIGHUP ignored: the demo's config is built in, there is nothing to reload"
                    );
                }
            });
        }
        match crate::demo::run(listen, admin, stop, listeners).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    });
    drop(runtime);
    workers.finish();
    code
}

/// The runtimes for `server`: `worker_threads` threads (0: one per CPU this process may use,
/// affinity and cgroup quota included), laid out as `worker_layout` says.
///
/// - One thread: a current-thread runtime serves everything. The work-stealing scheduler's
///   cross-thread bookkeeping buys nothing there and costs about 15% CPU per proxied request
///   (benches/compare.sh with the proxy pinned to one core: 28.0 vs 33.1 µs/request, p99 1.87
///   vs 2.46 ms).
/// - `per-thread`: the control side (admin, health checks, reloads) on a current-thread
///   runtime of the main thread, and N worker threads, each a current-thread runtime with its
///   own listening socket per pool: a connection never leaves the thread that accepted it.
/// - `work-stealing`: one multi-threaded runtime with N workers runs everything.
fn runtimes(server: &crate::config::ServerConfig) -> (tokio::runtime::Runtime, WorkerThreads) {
    let threads = match server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime")
    };
    match (threads, server.worker_layout) {
        (1, _) => (current(), WorkerThreads::default()),
        (n, WorkerLayout::PerThread) => (current(), WorkerThreads::start(n)),
        (n, WorkerLayout::WorkStealing) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build()
                .expect("cannot start the tokio runtime");
            (runtime, WorkerThreads::default())
        }
    }
}

/// Worker threads of the `per-thread` layout, each running a current-thread runtime until
/// [`WorkerThreads::finish`].
#[derive(Default)]
struct WorkerThreads {
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    done: CancellationToken,
}

impl WorkerThreads {
    fn start(n: usize) -> WorkerThreads {
        let mut workers = WorkerThreads::default();
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let done = workers.done.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shardgate-worker-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("cannot start a worker runtime");
                    let _ = tx.send(runtime.handle().clone());
                    runtime.block_on(done.cancelled());
                })
                .expect("cannot start a worker thread");
            workers
                .handles
                .push(rx.recv().expect("the worker thread sends its runtime"));
            workers.threads.push(thread);
        }
        workers
    }

    fn listeners(&self) -> Workers {
        Workers::on(self.handles.clone())
    }

    /// Stop the worker runtimes (their listeners have ended with the proxy) and wait for them.
    fn finish(self) {
        self.done.cancel();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

pub(super) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // notify warns when it cannot unwatch a directory that is already gone, which is every
        // Kubernetes ConfigMap update (the old `..2026_…` directory is deleted): noise, since
        // the watcher watches the config's directory, not those.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify::inotify=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files or log shippers.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    access_log::set_format(format);
}
