//! The `shardgate` binary: parse arguments, set up logging, hand over to the library.

use clap::Parser;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use shardgate::cli::{self, Cli, Command};
use shardgate::control::proxy::Proxy;
use shardgate::observe::access_log::LogFormat;

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::Check(args) => cli::check(&args.config, &mut std::io::stdout()),
        Command::Route {
            config,
            pool,
            successors,
            keys,
        } => cli::route(
            &config.config,
            pool.as_deref(),
            successors,
            &keys,
            &mut std::io::stdout(),
        ),
        Command::Diff { old, new } => cli::diff(&old, &new, &mut std::io::stdout()),
        Command::Run(args) => match cli::load_or_explain(&args.config) {
            Ok(config) => {
                let threads = config.server.worker_threads;
                runtime(threads).block_on(async move {
                    let stop = CancellationToken::new();
                    tokio::spawn(shardgate::control::signals::stop_on_signal(stop.clone()));
                    match Proxy::start(config, Registry::new(), stop.clone()).await {
                        Ok(proxy) => {
                            shardgate::control::reload::spawn(
                                args.config.clone(),
                                proxy.clone(),
                                stop,
                            );
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
            Err(code) => code,
        },
        Command::Demo { listen, admin } => runtime(0).block_on(async move {
            let stop = CancellationToken::new();
            tokio::spawn(shardgate::control::signals::stop_on_signal(stop.clone()));
            match shardgate::demo::run(listen, admin, stop).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }),
    };
    // Access log lines still queued would die with the process.
    shardgate::observe::access_log::flush();
    std::process::exit(code);
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

fn init_logging(format: LogFormat) {
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
    shardgate::observe::access_log::set_format(format);
}
