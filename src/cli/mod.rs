//! The command line: arguments, and what each command does. `main.rs` only parses the
//! arguments and hands them to [`main`].

mod inspect;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::observe::access_log::{self, LogFormat};

/// Exit status for a config that cannot be used (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "shardgate",
    version,
    about = "Sharding load-balancing HTTP reverse proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format. Verbosity comes from RUST_LOG (default: info, and notify's inotify
    /// backend at error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Config file.
    #[arg(
        short,
        long = "config",
        env = "SHARDGATE_CONFIG",
        default_value = "config/shardgate.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
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

/// Run the command; returns the process exit status.
pub fn main(cli: Cli) -> i32 {
    serve::init_logging(cli.log_format);
    let mut out = std::io::stdout();
    let code = match cli.command {
        Command::Check(args) => inspect::check(&args.config, &mut out),
        Command::Route {
            config,
            pool,
            successors,
            keys,
        } => inspect::route(&config.config, pool.as_deref(), successors, &keys, &mut out),
        Command::Diff { old, new } => inspect::diff(&old, &new, &mut out),
        Command::Run(args) => serve::run(&args.config),
        Command::Demo { listen, admin } => serve::demo(listen, admin),
    };
    // Access log lines still queued would die with the process.
    access_log::flush();
    code
}
