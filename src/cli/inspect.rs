//! The one-shot commands that read a config and print: `check`, `route`, `diff`.

use std::io::Write;
use std::path::Path;

use super::EXIT_BAD_CONFIG;
use crate::config::{self, Config};
use crate::state::metrics::Metrics;
use crate::state::snapshot::{PoolChoiceError, Snapshot};

/// Load a config (with `load`: `config::load` or `config::load_routing`) or explain why not,
/// for commands that cannot go on without one.
pub(super) fn load_or_explain(
    path: &Path,
    load: fn(&Path) -> Result<Config, config::ConfigError>,
) -> Result<Config, i32> {
    load(path).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_BAD_CONFIG
    })
}

/// The snapshot the proxy would build from `path` (rings included), or why not.
fn snapshot_or_explain(
    path: &Path,
    load: fn(&Path) -> Result<Config, config::ConfigError>,
) -> Result<Snapshot, i32> {
    let config = load_or_explain(path, load)?;
    Ok(Snapshot::build(config, None, &Metrics::unregistered()))
}

/// `shardgate check`.
pub(super) fn check(path: &Path, out: &mut impl Write) -> i32 {
    let snapshot = match snapshot_or_explain(path, config::load) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(out, "admin listen {}", snapshot.config.admin.listen);
    for pool in &snapshot.pools {
        let c = &pool.config;
        let keys: Vec<String> = c.key.iter().map(ToString::to_string).collect();
        let discovered = if c.discover.is_empty() {
            ""
        } else {
            " listed (more from DNS)"
        };
        let _ = writeln!(
            out,
            "pool {} listen {}: key [{}], {} backends{discovered}, {} ring points",
            c.name,
            c.listen,
            keys.join(", "),
            c.backends.len(),
            pool.ring.points()
        );
        let _ = writeln!(out, "  health: {}", describe_health(&c.health));
        let _ = writeln!(out, "  sharding: {}", describe_sharding(c));
        if let Some(tls) = &c.tls {
            let _ = writeln!(out, "  tls: {}", tls.summary());
        }
        if let Some(tls) = &c.upstream_tls {
            let _ = writeln!(
                out,
                "  tls to backends (health checks too): {}",
                tls.summary()
            );
        }
        for d in &c.discover {
            let _ = writeln!(
                out,
                "  discover: {d} every {}, weight {} (found at run time: GET /api/backends)",
                humantime::format_duration(d.interval),
                d.weight
            );
        }
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
pub(super) fn diff(old: &Path, new: &Path, out: &mut impl Write) -> i32 {
    let load = config::load_routing;
    let (old, new) = match (load_or_explain(old, load), load_or_explain(new, load)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let diffs = config::keyspace_diff(&old, &new);
    let _ = crate::routing::keyspace::render(&diffs, out);
    let settings = config::changed_settings(&old, &new);
    if !settings.is_empty() {
        // The reload's log line says the same.
        let _ = writeln!(out, "settings changed: {}", settings.join("; "));
    }
    // The figure above compares the two rings' arcs: it cannot see a request that gets
    // another key.
    for pool in &new.pools {
        if old
            .pools
            .iter()
            .any(|was| was.name == pool.name && was.key != pool.key)
        {
            let _ = writeln!(
                out,
                "note: pool {}: its key sources changed, so requests may get other keys: more \
                 of them can move than the keyspace figure says, up to all",
                pool.name
            );
        }
    }
    let mut discovering: Vec<&str> = new
        .pools
        .iter()
        .chain(&old.pools)
        .filter(|p| !p.discover.is_empty())
        .map(|p| p.name.as_str())
        .collect();
    discovering.sort_unstable();
    discovering.dedup();
    if !discovering.is_empty() {
        eprintln!(
            "note: pools with backends from DNS ({}): this compares the listed backends only; \
             a running proxy logs the real fraction when it applies the change",
            discovering.join(", ")
        );
    }
    0
}

/// Which ring, bounded loads and the hot-key view, in words.
fn describe_sharding(c: &crate::config::PoolConfig) -> String {
    let balance = if c.balance_factor > 0.0 {
        format!("bounded loads (balance_factor {})", c.balance_factor)
    } else {
        "no bounded loads".to_owned()
    };
    let hot = match (c.hot_keys, c.expose_keys) {
        (false, _) => "hot keys off",
        (true, false) => "hot keys on (shown as hashes)",
        (true, true) => "hot keys on (shown as text)",
    };
    format!("{} ring, {balance}, {hot}", c.ring.as_str())
}

/// `shardgate route`.
pub(super) fn route(
    path: &Path,
    pool: Option<&str>,
    successors: usize,
    keys: &[String],
    out: &mut impl Write,
) -> i32 {
    let snapshot = match snapshot_or_explain(path, config::load_routing) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let pool = match snapshot.choose_pool(pool) {
        Ok(p) => p,
        Err(e @ PoolChoiceError::Unknown { .. }) => {
            eprintln!("error: {e}");
            return EXIT_BAD_CONFIG;
        }
        Err(e @ PoolChoiceError::Unnamed) => {
            eprintln!("error: {e}; choose one with --pool");
            return EXIT_BAD_CONFIG;
        }
    };
    if pool.config.balance_factor > 0.0 {
        eprintln!(
            "note: bounded loads (balance_factor = {}): a request passes a backend by while it \
             has ceil({0} × (requests in flight in the pool + 1) × weight / usable weight) in \
             flight; this shows the ring with no load; live loads: GET /api/route",
            pool.config.balance_factor
        );
    }
    if !pool.config.discover.is_empty() {
        let found: Vec<String> = pool
            .config
            .discover
            .iter()
            .map(ToString::to_string)
            .collect();
        eprintln!(
            "note: pool {} also has backends from DNS ({}); this shows the listed ones only; \
             with those found: GET /api/route on a running proxy",
            pool.config.name,
            found.join(", ")
        );
    }
    for key in keys {
        let hash = pool.ring.hash(key.as_bytes());
        let chain: Vec<&str> = pool
            .successors(hash)
            .take(successors.max(1))
            .map(|b| b.id.as_str())
            .collect();
        let owner = pool.pick(hash).map_or("-", |b| b.id.as_str());
        let _ = writeln!(
            out,
            "{key}\t{owner}\thash={hash:016x}\tthen: {}",
            chain.get(1..).unwrap_or_default().join(", ")
        );
    }
    0
}
