//! Configuration: the TOML file → checked, typed [`Config`].
//!
//! `raw` mirrors the file (serde, spans, unknown keys refused), `validate` turns it into the
//! types below and collects *every* problem at once, each with its config path and position.
//! Startup and reload both come through [`load`], so a file that would not start the proxy is
//! never applied by a reload either.

mod discover;
mod error;
mod health;
mod raw;
mod validate;
use validate::Files;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use discover::{DiscoverConfig, DiscoverKind, ResolverConfig};
pub(crate) use discover::{host_name, is_dns_name, source_label};
pub(crate) use error::Location;
pub use error::{ConfigError, Problem};
pub(crate) use health::{AllDown, HealthConfig, InitialState, Probe, StatusRanges};

use crate::routing::key::KeySource;
use crate::routing::keyspace::{self, Entry, Layout, PoolDiff};
use crate::routing::ring::{Flavor, NGINX_POINTS_PER_WEIGHT, Node, Ring};

/// Ring points per unit of weight. Chosen by measurement (docs/configuration.md, "How a key
/// becomes a backend"): with 100 equal backends the busiest owns at most about 1.10× the mean share, and
/// the bucket index keeps lookups flat at this size.
pub const DEFAULT_VNODES: u32 = 1024;
/// Largest ring a pool may build, in points (`vnodes × total weight`).
pub(crate) const MAX_RING_POINTS: u64 = 1 << 24;
pub(crate) const MAX_WEIGHT: i64 = 1000;

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: AdminConfig,
    pub server: ServerConfig,
    pub resolver: ResolverConfig,
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub(crate) listen: SocketAddr,
    /// Host names the admin listener answers to besides `localhost` and its IP addresses.
    pub(crate) allowed_hosts: Vec<String>,
    /// A file holding the bearer token the admin API requires (none: no token).
    pub(crate) token_file: Option<std::path::PathBuf>,
    /// That file's token, read while the config is validated, so `check` and a reload refuse
    /// an unusable file as startup does (`None` when the files are not read: `route`, `diff`).
    pub(crate) token: Option<AdminToken>,
}

/// The admin API's bearer token; kept out of `Debug` output, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AdminToken(pub(crate) String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token is short: a file over 8 KiB is a mistake, not something to read into memory.
    const MAX_FILE_BYTES: u64 = 8 * 1024;

    /// The token in `path`, surrounding whitespace trimmed, or why it is unusable.
    pub(crate) fn read(path: &Path) -> Result<AdminToken, String> {
        let bytes = crate::util::read_capped(path, Self::MAX_FILE_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .ok_or_else(|| format!("{} is larger than 8 KiB", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let token = text.trim();
        if token.is_empty() || token.len() > 4096 || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "{}: the token must be 1-4096 printable characters without spaces",
                path.display()
            ));
        }
        Ok(AdminToken(token.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// How long in-flight requests get to finish after SIGTERM/SIGINT.
    pub(crate) shutdown_grace: Duration,
    /// Runtime worker threads; 0 means one per CPU.
    pub(crate) worker_threads: usize,
    /// How those threads share the work.
    pub(crate) worker_layout: WorkerLayout,
    /// Reload when the config file changes; false: only on SIGHUP.
    pub(crate) watch_config: bool,
    /// One line per request to stderr (`crate::observe::access_log`).
    pub(crate) access_log: bool,
}

/// How the worker threads share the connections (`server.worker_layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerLayout {
    /// Each thread runs its own single-threaded runtime with its own listening socket per pool
    /// (SO_REUSEPORT, the kernel spreads new connections); a connection stays on the thread
    /// that accepted it (nginx's model).
    #[default]
    PerThread,
    /// One work-stealing runtime: any thread may run any connection's task.
    WorkStealing,
}

impl WorkerLayout {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkerLayout::PerThread => "per-thread",
            WorkerLayout::WorkStealing => "work-stealing",
        }
    }
}

/// What to do with a request none of the key sources matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissingKey {
    /// Spread such requests over the pool.
    Any,
    /// Answer 400.
    Reject,
}

impl MissingKey {
    /// As the config writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MissingKey::Any => "any",
            MissingKey::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub(crate) listen: SocketAddr,
    pub(crate) key: Vec<KeySource>,
    pub(crate) missing_key: MissingKey,
    pub(crate) vnodes: u32,
    /// Which ring: shardgate's own, or nginx's (`ring = "nginx"`), key for key the same as
    /// nginx's `hash … consistent`.
    pub(crate) ring: Flavor,
    /// Bounded loads: 0 = off; else a backend takes a request only while its in-flight requests
    /// are below `ceil(balance_factor × (pool in-flight + 1) × its weight / usable weight)`.
    pub(crate) balance_factor: f64,
    /// Track the pool's hottest keys (`/api/hotkeys`).
    pub(crate) hot_keys: bool,
    /// Show hot keys as text rather than as their hash.
    pub(crate) expose_keys: bool,
    /// TCP connect to a backend.
    pub(crate) connect_timeout: Duration,
    /// From sending a request upstream until its response headers arrive.
    pub(crate) request_timeout: Duration,
    /// From accept, and from the end of each exchange, a client must send a complete request
    /// head within this time, or is disconnected.
    pub(crate) header_read_timeout: Duration,
    /// An exchange on which no byte moves in either direction for this long is aborted; an
    /// HTTP/2 connection with no open stream for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Peers whose X-Forwarded-* / Forwarded / X-Real-IP headers are believed (shared with
    /// every connection from one of them, for its `client_ip` key).
    pub(crate) trusted_proxies: std::sync::Arc<[IpNet]>,
    pub(crate) max_connections: usize,
    pub(crate) max_header_bytes: usize,
    /// Idle upstream connections older than this are not reused.
    pub(crate) upstream_idle_timeout: Duration,
    /// Idle upstream connections kept per backend.
    pub(crate) upstream_max_idle: usize,
    /// Connections open to one backend at most, idle ones included.
    pub(crate) upstream_max_connections: usize,
    /// Extra attempts on the next distinct healthy backend when connecting fails.
    pub(crate) retries: u32,
    /// Also retry idempotent requests without a body after a timeout or reset.
    pub(crate) retry_idempotent: bool,
    pub(crate) health: HealthConfig,
    /// TLS termination (`[pools.tls]`): the certificates, loaded and checked at validation.
    pub(crate) tls: Option<std::sync::Arc<crate::tls::Acceptor>>,
    /// TLS to the backends (`[pools.upstream_tls]`), its files loaded and checked.
    pub(crate) upstream_tls: Option<std::sync::Arc<crate::tls::UpstreamTls>>,
    /// Backends as listed, and once the proxy runs, those its discover sources found.
    pub backends: Vec<BackendConfig>,
    /// DNS sources of more backends (`[[pools.discover]]`).
    pub(crate) discover: Vec<DiscoverConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Identity on the ring.
    pub id: String,
    /// `host:port` as written (a host name is looked up in the background, not per connect).
    pub address: String,
    pub weight: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            allowed_hosts: Vec::new(),
            token_file: None,
            token: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_grace: Duration::from_secs(30),
            worker_threads: 0,
            worker_layout: WorkerLayout::default(),
            watch_config: true,
            access_log: false,
        }
    }
}

impl PoolConfig {
    /// A pool with every setting at its default, for code that builds configs (demo, tests).
    pub fn new(name: &str, listen: SocketAddr, backends: Vec<BackendConfig>) -> PoolConfig {
        PoolConfig {
            name: name.to_owned(),
            listen,
            key: vec![KeySource::Path],
            missing_key: MissingKey::Any,
            vnodes: DEFAULT_VNODES,
            ring: Flavor::Xxh3,
            balance_factor: 0.0,
            hot_keys: true,
            expose_keys: false,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            trusted_proxies: std::sync::Arc::from([]),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            upstream_idle_timeout: Duration::from_secs(30),
            upstream_max_idle: 128,
            upstream_max_connections: 1024,
            retries: 1,
            retry_idempotent: false,
            health: HealthConfig::default(),
            tls: None,
            upstream_tls: None,
            backends,
            discover: Vec::new(),
        }
    }
}

impl PoolConfig {
    /// The ring of this pool: node `i` is `backends[i]`. nginx places points by a server's
    /// `host:port` text, so on its ring the address plays the part of the id.
    pub(crate) fn ring(&self) -> Ring {
        let nodes: Vec<Node<'_>> = self
            .backends
            .iter()
            .map(|b| Node {
                id: match self.ring {
                    Flavor::Xxh3 => &b.id,
                    Flavor::Nginx => &b.address,
                },
                weight: b.weight,
            })
            .collect();
        match self.ring {
            Flavor::Xxh3 => Ring::build(&nodes, self.vnodes),
            Flavor::Nginx => Ring::build_nginx(&nodes),
        }
    }

    /// Ring points per unit of weight, whichever the ring.
    pub(crate) fn points_per_weight(&self) -> u32 {
        match self.ring {
            Flavor::Xxh3 => self.vnodes,
            Flavor::Nginx => NGINX_POINTS_PER_WEIGHT,
        }
    }

    /// This pool as the keyspace diff sees it, with `ring` (built by [`PoolConfig::ring`]).
    pub(crate) fn layout<'a>(&'a self, ring: &'a Ring) -> Layout<'a> {
        Layout {
            name: &self.name,
            backends: self
                .backends
                .iter()
                .map(|b| Entry {
                    id: &b.id,
                    address: &b.address,
                    weight: b.weight,
                })
                .collect(),
            ring,
        }
    }
}

/// Every setting that differs between `old` and `new` and applies without a restart (those
/// that need one are warned about apart), backends aside: the keyspace diff reports those.
/// Global ones first (`server: shutdown_grace 30s → 5s`), then one entry per pool in both
/// (`cache: balance_factor 0 → 1.25, request_timeout 30s → 5s`). The reload's log line and
/// `shardgate diff` both print it, so an operator sees all a change does beyond the keyspace.
pub(crate) fn changed_settings(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (section, changed) in [
        ("admin", changed_admin(&old.admin, &new.admin)),
        ("server", changed_server(&old.server, &new.server)),
        ("resolver", changed_resolver(&old.resolver, &new.resolver)),
    ] {
        if !changed.is_empty() {
            out.push(format!("{section}: {}", changed.join(", ")));
        }
    }
    for pool in &new.pools {
        let Some(was) = old.pools.iter().find(|p| p.name == pool.name) else {
            continue;
        };
        let changed = changed_pool_settings(was, pool);
        if !changed.is_empty() {
            out.push(format!("{}: {}", pool.name, changed.join(", ")));
        }
    }
    out
}

/// `name was → now` if the two differ.
fn changed(out: &mut Vec<String>, name: &str, was: String, now: String) {
    if was != now {
        out.push(format!("{name} {was} → {now}"));
    }
}

fn changed_admin(old: &AdminConfig, new: &AdminConfig) -> Vec<String> {
    // Destructured without `..`, as below: a new setting fails to compile until it is listed.
    let AdminConfig {
        listen: _, // needs a restart
        allowed_hosts,
        token_file,
        token,
    } = old;
    let mut out = Vec::new();
    changed(
        &mut out,
        "allowed_hosts",
        format!("{allowed_hosts:?}"),
        format!("{:?}", new.allowed_hosts),
    );
    let file = |f: &Option<std::path::PathBuf>| {
        f.as_ref()
            .map_or_else(|| "none".to_owned(), |f| f.display().to_string())
    };
    changed(
        &mut out,
        "token_file",
        file(token_file),
        file(&new.token_file),
    );
    if *token_file == new.token_file && token.is_some() && *token != new.token {
        out.push("token rotated".to_owned());
    }
    out
}

fn changed_server(old: &ServerConfig, new: &ServerConfig) -> Vec<String> {
    let ServerConfig {
        shutdown_grace,
        worker_threads: _, // needs a restart
        worker_layout: _,  // needs a restart
        watch_config: _,   // needs a restart
        access_log,
    } = old;
    let mut out = Vec::new();
    changed(
        &mut out,
        "shutdown_grace",
        format!("{shutdown_grace:?}"),
        format!("{:?}", new.shutdown_grace),
    );
    changed(
        &mut out,
        "access_log",
        access_log.to_string(),
        new.access_log.to_string(),
    );
    out
}

fn changed_resolver(old: &ResolverConfig, new: &ResolverConfig) -> Vec<String> {
    let ResolverConfig {
        nameservers,
        interval,
        timeout,
    } = old;
    let mut out = Vec::new();
    let servers = |s: &[std::net::SocketAddr]| {
        let s: Vec<String> = s.iter().map(ToString::to_string).collect();
        format!("[{}]", s.join(", "))
    };
    changed(
        &mut out,
        "nameservers",
        servers(nameservers),
        servers(&new.nameservers),
    );
    changed(
        &mut out,
        "interval",
        format!("{interval:?}"),
        format!("{:?}", new.interval),
    );
    changed(
        &mut out,
        "timeout",
        format!("{timeout:?}"),
        format!("{:?}", new.timeout),
    );
    out
}

/// The settings of a pool that differ between `old` and `new`, as `name old → new`.
fn changed_pool_settings(old: &PoolConfig, new: &PoolConfig) -> Vec<String> {
    // Destructured without `..`: a new setting fails to compile here until it is listed.
    let PoolConfig {
        name: _,
        listen,
        key,
        missing_key,
        vnodes,
        ring,
        balance_factor,
        hot_keys,
        expose_keys,
        connect_timeout,
        request_timeout,
        header_read_timeout,
        idle_timeout,
        trusted_proxies,
        max_connections,
        max_header_bytes,
        upstream_idle_timeout,
        upstream_max_idle,
        upstream_max_connections,
        retries,
        retry_idempotent,
        health,
        tls,
        upstream_tls,
        backends: _,
        discover,
    } = old;
    let keys = |k: &[KeySource]| {
        let k: Vec<String> = k.iter().map(ToString::to_string).collect();
        format!("[{}]", k.join(", "))
    };
    let mut out = Vec::new();
    let mut diff = |name: &str, was: String, now: String| changed(&mut out, name, was, now);
    diff("listen", listen.to_string(), new.listen.to_string());
    diff("key", keys(key), keys(&new.key));
    diff(
        "missing_key",
        missing_key.as_str().into(),
        new.missing_key.as_str().into(),
    );
    diff("vnodes", vnodes.to_string(), new.vnodes.to_string());
    diff("ring", ring.as_str().into(), new.ring.as_str().into());
    diff(
        "balance_factor",
        balance_factor.to_string(),
        new.balance_factor.to_string(),
    );
    diff("hot_keys", hot_keys.to_string(), new.hot_keys.to_string());
    diff(
        "expose_keys",
        expose_keys.to_string(),
        new.expose_keys.to_string(),
    );
    for (name, was, now) in [
        ("connect_timeout", connect_timeout, &new.connect_timeout),
        ("request_timeout", request_timeout, &new.request_timeout),
        (
            "header_read_timeout",
            header_read_timeout,
            &new.header_read_timeout,
        ),
        ("idle_timeout", idle_timeout, &new.idle_timeout),
        (
            "upstream_idle_timeout",
            upstream_idle_timeout,
            &new.upstream_idle_timeout,
        ),
    ] {
        diff(name, format!("{was:?}"), format!("{now:?}"));
    }
    diff(
        "trusted_proxies",
        format!("{trusted_proxies:?}"),
        format!("{:?}", new.trusted_proxies),
    );
    for (name, was, now) in [
        ("max_connections", max_connections, &new.max_connections),
        ("max_header_bytes", max_header_bytes, &new.max_header_bytes),
        (
            "upstream_max_idle",
            upstream_max_idle,
            &new.upstream_max_idle,
        ),
        (
            "upstream_max_connections",
            upstream_max_connections,
            &new.upstream_max_connections,
        ),
    ] {
        diff(name, was.to_string(), now.to_string());
    }
    diff("retries", retries.to_string(), new.retries.to_string());
    diff(
        "retry_idempotent",
        retry_idempotent.to_string(),
        new.retry_idempotent.to_string(),
    );
    if *tls != new.tls {
        let shown = |t: &Option<std::sync::Arc<crate::tls::Acceptor>>| {
            t.as_ref().map_or_else(|| "off".to_owned(), |t| t.summary())
        };
        diff("tls", shown(tls), shown(&new.tls));
    }
    if *upstream_tls != new.upstream_tls {
        let shown = |t: &Option<std::sync::Arc<crate::tls::UpstreamTls>>| {
            t.as_ref().map_or_else(|| "off".to_owned(), |t| t.summary())
        };
        diff(
            "upstream_tls",
            shown(upstream_tls),
            shown(&new.upstream_tls),
        );
    }
    if *discover != new.discover {
        let shown = |d: &[DiscoverConfig]| {
            let d: Vec<String> = d
                .iter()
                .map(|d| format!("{d} every {:?} weight {}", d.interval, d.weight))
                .collect();
            format!("[{}]", d.join(", "))
        };
        diff("discover", shown(discover), shown(&new.discover));
    }
    out.extend(health.changed(&new.health));
    out
}

/// What changing the config from `old` to `new` does to each pool's keyspace.
pub(crate) fn keyspace_diff(old: &Config, new: &Config) -> Vec<PoolDiff> {
    let rings = |c: &Config| -> Vec<Ring> { c.pools.iter().map(PoolConfig::ring).collect() };
    let (old_rings, new_rings) = (rings(old), rings(new));
    keyspace::pools(&layouts(old, &old_rings), &layouts(new, &new_rings))
}

fn layouts<'a>(config: &'a Config, rings: &'a [Ring]) -> Vec<Layout<'a>> {
    config
        .pools
        .iter()
        .zip(rings)
        .map(|(p, r)| p.layout(r))
        .collect()
}

/// Read and validate a config file, and the certificate files it names.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, Files::Read)
}

/// Read and validate a config file for its rings only: the certificate files it names are not
/// read, and no pool has TLS (`route` and `diff`, on machines without the keys).
pub fn load_routing(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, Files::Skip)
}

fn load_with(path: &Path, files: Files) -> Result<Config, ConfigError> {
    let bytes = read(path)?;
    let file = path.display().to_string();
    validate::parse(&String::from_utf8_lossy(&bytes), files)
        .map_err(|problems| ConfigError::Invalid { file, problems })
}

/// The certificate and key files config `text` names, valid or not (`None`: not even TOML).
/// The reload watcher watches them with the config file, so a renewed certificate is picked up
/// as an edit would be, and so is the fix of a file a refused reload could not use.
pub(crate) fn named_files(text: &str) -> Option<Vec<PathBuf>> {
    let raw: raw::RawConfig = toml::from_str(text).ok()?;
    let mut files: Vec<PathBuf> = raw
        .pools
        .iter()
        .filter_map(|p| p.tls.as_ref())
        .flat_map(|t| {
            let sni = t.sni.iter().flat_map(|s| [&s.cert, &s.key]);
            [&t.cert, &t.key].into_iter().chain(sni)
        })
        .chain(
            raw.pools
                .iter()
                .filter_map(|p| p.upstream_tls.as_ref())
                .flat_map(|u| [&u.ca, &u.cert, &u.key].into_iter().flatten()),
        )
        .map(|f| PathBuf::from(f.get_ref()))
        .collect();
    files.sort();
    files.dedup();
    Some(files)
}

/// The largest config file read: a thousand pools of a thousand backends fit in far less.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

/// A config file's bytes, refusing one over [`MAX_FILE_BYTES`] (checked while reading, so a
/// file that grows meanwhile, or a device that never ends, is refused too).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    crate::util::read_capped(path, MAX_FILE_BYTES)
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| ConfigError::TooLarge {
            path: path.to_owned(),
        })
}

/// Validate config text; `file` names it in error messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    validate::parse(text, Files::Read).map_err(|problems| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    })
}
