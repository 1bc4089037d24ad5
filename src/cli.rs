//! Command-line interface: argument parsing and the one-shot commands (`check`, `route`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::observe::access_log::LogFormat;
use crate::routing::ring::hash_key;
use crate::state::snapshot::Snapshot;

/// Exit status for a config that cannot be used (sysexits EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "shardgate",
    version,
    about = "Sharding load-balancing HTTP reverse proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log line format. Verbosity comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file.
    #[arg(
        short,
        long = "config",
        env = "SHARDGATE_CONFIG",
        default_value = "config/shardgate.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic as the config says.
    Run(ConfigArg),
    /// Validate a config file and print a summary; exit 64 listing every problem if invalid.
    Check(ConfigArg),
    /// Print which backend each KEY goes to, and the backends that would take over.
    Route {
        #[command(flatten)]
        config: ConfigArg,
        /// Pool to route in (needed when the config has more than one).
        #[arg(short, long)]
        pool: Option<String>,
        /// How many backends to list per key: the owner, then its successors.
        #[arg(short = 'n', long, default_value_t = 3)]
        successors: usize,
        /// Shard keys, exactly as a key source would extract them (e.g. a path `/users/42`).
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show what changing the config from OLD to NEW does to the keyspace, without running
    /// anything: per backend the share of keys before and after, and the fraction that moves.
    Diff {
        /// The config as it is now.
        old: PathBuf,
        /// The config as it would be.
        new: PathBuf,
    },
    /// Start four demo backends, the proxy in front of them and the admin listener.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

/// Load a config or explain why not, for commands that cannot go on without one.
pub fn load_or_explain(path: &std::path::Path) -> Result<Config, i32> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_BAD_CONFIG
    })
}

/// `shardgate check`.
pub fn check(path: &std::path::Path, out: &mut impl Write) -> i32 {
    let config = match load_or_explain(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let snapshot = Snapshot::build(
        config,
        None,
        &crate::state::metrics::Metrics::unregistered(),
    );
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(out, "admin listen {}", snapshot.config.admin.listen);
    for pool in &snapshot.pools {
        let c = &pool.config;
        let keys: Vec<String> = c.key.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "pool {} listen {}: key [{}], {} backends, {} ring points",
            c.name,
            c.listen,
            keys.join(", "),
            c.backends.len(),
            pool.ring.points()
        );
        let _ = writeln!(out, "  health: {}", describe_health(&c.health));
        let shares = pool.ring.shares();
        for (b, share) in c.backends.iter().zip(shares) {
            let _ = writeln!(
                out,
                "  {:<24} {:<24} weight {:<4} keyspace {:>6.2}%",
                b.id,
                b.address,
                b.weight,
                share * 100.0
            );
        }
    }
    0
}

fn describe_health(h: &crate::config::HealthConfig) -> String {
    use crate::config::{AllDown, InitialState, Probe};
    let probe = match &h.probe {
        Probe::None => return "no active checks; every backend always up".into(),
        Probe::Tcp => "TCP connect".to_owned(),
        Probe::Http { path, expect } => format!("GET {path} expecting {expect}"),
    };
    format!(
        "{probe} every {}, timeout {}, down after {} failures, up after {} successes, \
         start {}, passive after {} failures, all down: {}",
        humantime::format_duration(h.interval),
        humantime::format_duration(h.timeout),
        h.fall,
        h.rise,
        match h.initial {
            InitialState::Up => "up",
            InitialState::Down => "down until checked",
        },
        h.passive_failures,
        match h.all_down {
            AllDown::Reject => "503",
            AllDown::Owner => "route to owner (fail open)",
        }
    )
}

/// `shardgate diff`.
pub fn diff(old: &std::path::Path, new: &std::path::Path, out: &mut impl Write) -> i32 {
    let (old, new) = match (load_or_explain(old), load_or_explain(new)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let diffs = config::keyspace_diff(&old, &new);
    let _ = crate::routing::keyspace::render(&diffs, out);
    0
}

/// `shardgate route`.
pub fn route(
    path: &std::path::Path,
    pool: Option<&str>,
    successors: usize,
    keys: &[String],
    out: &mut impl Write,
) -> i32 {
    let config = match load_or_explain(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let snapshot = Snapshot::build(
        config,
        None,
        &crate::state::metrics::Metrics::unregistered(),
    );
    let pool = match (pool, snapshot.pools.as_slice()) {
        (Some(name), _) => match snapshot.pool(name) {
            Some(p) => p,
            None => {
                let names: Vec<&str> = snapshot
                    .pools
                    .iter()
                    .map(|p| p.config.name.as_str())
                    .collect();
                eprintln!("error: no pool `{name}`; pools are: {}", names.join(", "));
                return EXIT_BAD_CONFIG;
            }
        },
        (None, [only]) => only,
        (None, _) => {
            eprintln!("error: the config has several pools; choose one with --pool");
            return EXIT_BAD_CONFIG;
        }
    };
    for key in keys {
        let hash = hash_key(key.as_bytes());
        let chain: Vec<&str> = pool
            .successors(hash)
            .take(successors.max(1))
            .map(|b| b.id.as_str())
            .collect();
        let owner = pool.pick(hash).map_or("-", |b| b.id.as_str());
        let _ = writeln!(
            out,
            "{key}\t{owner}\thash={hash:016x}\tthen: {}",
            chain[1..].join(", ")
        );
    }
    0
}
