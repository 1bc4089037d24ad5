//! `shardgate run` and `shardgate demo`: the runtime, logging and signals around a running proxy.

use std::net::SocketAddr;
use std::path::Path;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use super::inspect::load_or_explain;
use crate::control::{Proxy, limits, reload, signals};
use crate::observe::access_log::{self, LogFormat};

/// `shardgate run`: serve until SIGTERM/SIGINT, reloading on file changes and SIGHUP.
pub(super) fn run(path: &Path) -> i32 {
    let config = match load_or_explain(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    limits::raise_nofile_limit();
    runtime(config.server.worker_threads).block_on(async move {
        let stop = CancellationToken::new();
        // Before any port opens: a signal sent once the proxy answers must find its handler.
        signals::stop_on_signal(stop.clone());
        let hangups = signals::hangups();
        match Proxy::start(config, Registry::new(), stop.clone()).await {
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
    })
}

/// `shardgate demo`.
pub(super) fn demo(listen: SocketAddr, admin: SocketAddr) -> i32 {
    limits::raise_nofile_limit();
    runtime(0).block_on(async move {
        let stop = CancellationToken::new();
        signals::stop_on_signal(stop.clone());
        match crate::demo::run(listen, admin, stop).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    })
}

/// The tokio runtime: `worker_threads` threads, 0 meaning one per CPU this process may use
/// (affinity and cgroup quota included).
///
/// With one thread, a current-thread runtime: the work-stealing scheduler's cross-thread
/// bookkeeping buys nothing there and costs about 15% CPU per proxied request (benches/compare.sh
/// with the proxy pinned to one core: 28.0 vs 33.1 µs/request, p99 1.87 vs 2.46 ms).
fn runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    let threads = match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

pub(super) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
