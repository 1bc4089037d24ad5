//! Backends from DNS, and backend host names kept resolved, off the request path.
//!
//! Two kinds of lookup run in the background, each in its own task on its own period:
//! - a **source** (`[[pools.discover]]`) turns an SRV or A answer into a set of backends. When
//!   the set changes the proxy applies its config again with the new set, exactly as a reload
//!   would: same diff, same moved fraction, backends that stay keep their state. An SRV
//!   source also keeps its targets' addresses current (from the answer's additional section,
//!   else by looking them up).
//! - a **host** is the host name of a listed backend's address. Its addresses go straight into
//!   the backends that use it ([`Dial`](crate::state::dial::Dial)).
//!
//! An address that changes closes the idle connections to the old one. A lookup that fails or
//! comes back empty changes nothing: the last good answer stays, so a DNS outage never
//! empties a pool. It is logged (once per streak) and counted in
//! `shardgate_discovery_errors_total{pool}`.
//!
//! A new config is first [`prepare`](Discovery::prepare)d: sources and host names it brings
//! are looked up, nothing shared is changed. Only once the proxy has applied it does
//! [`commit`](Discovery::commit) keep those answers, start and stop tasks and forget what the
//! config no longer names, so a refused reload leaves discovery as it was.

mod dns;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{
    BackendConfig, Config, DiscoverConfig, DiscoverKind, MAX_RING_POINTS, PoolConfig,
    ResolverConfig, host_name, is_dns_name, source_label,
};
use crate::state::dial::Hosts;
use crate::state::metrics::Metrics;
use crate::state::shared::{DiscoveryStatus, Shared};
use crate::state::snapshot::Snapshot;
use crate::util::lock;
use dns::{Answer, Dns, Srv};

/// A TTL shorter than `interval` makes us ask again sooner, but not sooner than this: servers
/// answer with TTL 0 to say "do not cache", not "ask again at once".
const MIN_TTL_WAIT: Duration = Duration::from_secs(1);

/// Lookups of one batch (an SRV answer's targets, a config's new host names) in flight at
/// once: a thousand targets must not be a thousand simultaneous queries.
const CONCURRENT_LOOKUPS: usize = 16;

/// What a source's answer is remembered by. Not its interval or weight: a reload that changes
/// those keeps the backends found, even while DNS is failing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SourceKey {
    pool: String,
    dns: String,
    kind: DiscoverKind,
    port: u16,
}

impl SourceKey {
    fn of(pool: &str, d: &DiscoverConfig) -> SourceKey {
        SourceKey {
            pool: pool.to_owned(),
            dns: d.dns.clone(),
            kind: d.kind,
            port: d.port,
        }
    }
}

/// A running lookup task. A source's task is restarted when its settings change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Task {
    Source(String, DiscoverConfig),
    Host(String),
}

/// The backends a source found, weight 1 (the config's weight is applied when merged).
type Found = Vec<BackendConfig>;

/// One lookup of a source: its backends, and the addresses learned for its SRV targets.
type SourceAnswer = (Answer<Found>, Vec<(String, Arc<[IpAddr]>)>);

/// What [`Discovery::prepare`] looked up for a config, not yet kept.
pub(crate) struct Prepared {
    resolver: ResolverConfig,
    dns: Arc<Dns>,
    /// Sources met for the first time: what their first lookup gave.
    found: HashMap<SourceKey, Result<Found, String>>,
    /// Host names met for the first time (empty: the lookup failed).
    hosts: Hosts,
}

pub(crate) struct Discovery {
    resolver: Mutex<ResolverConfig>,
    /// Built on first use, so a config without host names never reads `/etc/resolv.conf`.
    dns: ArcSwapOption<Dns>,
    /// Per source, the last good set it found; `None`: looked up, nothing good yet.
    found: Mutex<HashMap<SourceKey, Option<Found>>>,
    /// The last good answer per host name; empty: looked up, never resolved.
    hosts: Mutex<Hosts>,
    tasks: Mutex<HashMap<Task, CancellationToken>>,
    /// A source's set changed: the proxy should apply its config again.
    pub(crate) changed: Notify,
    metrics: Arc<Metrics>,
    /// What each source last found, for the admin API.
    status: Arc<DiscoveryStatus>,
    stop: CancellationToken,
}

impl Discovery {
    pub(crate) fn new(
        resolver: &ResolverConfig,
        metrics: Arc<Metrics>,
        status: Arc<DiscoveryStatus>,
        stop: CancellationToken,
    ) -> Arc<Discovery> {
        Arc::new(Discovery {
            resolver: Mutex::new(resolver.clone()),
            dns: ArcSwapOption::empty(),
            found: Mutex::default(),
            hosts: Mutex::default(),
            tasks: Mutex::default(),
            changed: Notify::new(),
            metrics,
            status,
            stop,
        })
    }

    fn dns(&self) -> Arc<Dns> {
        if let Some(dns) = self.dns.load_full() {
            return dns;
        }
        let dns = Arc::new(Dns::new(&lock(&self.resolver)));
        self.dns.store(Some(dns.clone()));
        dns
    }

    /// Make `config` whole: each pool's backends as listed, then those its sources found. A
    /// source or host name met for the first time is looked up now (each within
    /// `resolver.timeout`), so a new pool or a reload starts with its discovered backends.
    /// Nothing is kept until [`Discovery::commit`].
    pub(crate) async fn prepare(&self, config: &mut Config) -> Prepared {
        let dns = if *lock(&self.resolver) == config.resolver {
            self.dns()
        } else {
            Arc::new(Dns::new(&config.resolver))
        };
        let mut prepared = Prepared {
            resolver: config.resolver.clone(),
            dns: dns.clone(),
            found: HashMap::new(),
            hosts: Hosts::new(),
        };
        let new: Vec<SourceKey> = {
            let found = lock(&self.found);
            sources(config)
                .map(|(pool, d)| SourceKey::of(pool, d))
                .filter(|k| !found.contains_key(k))
                .collect()
        };
        let mut lookups = JoinSet::new();
        // One copy for every source looked up now.
        let known = Arc::new(lock(&self.hosts).clone());
        for key in new {
            let (dns, known) = (dns.clone(), known.clone());
            lookups.spawn(async move {
                let result = lookup_source(&dns, &key, &known).await;
                (key, result)
            });
        }
        while let Some(Ok((key, result))) = lookups.join_next().await {
            let found = result.map(|(answer, ips)| {
                prepared.hosts.extend(ips);
                answer.records
            });
            if let Err(why) = &found {
                tracing::warn!(pool = %key.pool, source = %key, "discovery lookup failed: {why}");
                self.count_error(&key.pool);
            }
            prepared.found.insert(key, found);
        }
        for pool in &mut config.pools {
            self.merge(pool, &prepared);
        }
        let unknown: Vec<String> = {
            let hosts = lock(&self.hosts);
            host_names(config)
                .filter(|h| !hosts.contains_key(h) && !prepared.hosts.contains_key(h))
                .collect()
        };
        for (host, result) in resolve_all(&dns, unknown).await {
            let ips = result.unwrap_or_else(|why| {
                tracing::warn!(%host, "host name lookup failed: {why}");
                for pool in pools_using(config, &host) {
                    self.count_error(&pool);
                }
                Arc::from([])
            });
            prepared.hosts.insert(host, ips);
        }
        prepared
    }

    /// One more failed or empty lookup for `pool`.
    fn count_error(&self, pool: &str) {
        self.metrics
            .discovery_errors
            .with_label_values(&[pool])
            .inc();
    }

    /// `pool`'s sources that have no answer to give (their first lookup failed), each as
    /// `srv NAME (why)`.
    pub(crate) fn unanswered(&self, pool: &PoolConfig, prepared: &Prepared) -> Vec<String> {
        let found = lock(&self.found);
        let status = self.status.of(&pool.name);
        pool.discover
            .iter()
            .map(|d| SourceKey::of(&pool.name, d))
            .filter_map(|key| match prepared.found.get(&key) {
                Some(Err(why)) => Some(format!("{key} ({why})")),
                Some(Ok(_)) => None,
                None => matches!(found.get(&key), Some(None)).then(|| {
                    let label = key.to_string();
                    let why = status
                        .iter()
                        .find(|s| s.source == label)
                        .and_then(|s| s.error.clone())
                        .unwrap_or_else(|| "no answer yet".to_owned());
                    format!("{label} ({why})")
                }),
            })
            .collect()
    }

    /// The known answers per host name with `prepared`'s, for building backends.
    pub(crate) fn hosts_with(&self, prepared: &Prepared) -> Hosts {
        let mut hosts = lock(&self.hosts).clone();
        hosts.extend(
            prepared
                .hosts
                .iter()
                .map(|(h, ips)| (h.clone(), ips.clone())),
        );
        hosts
    }

    /// Add what `pool`'s sources found to its listed backends, with the source's weight. A
    /// listed backend wins over a discovered one with its id or address; the first source
    /// wins over later ones.
    fn merge(&self, pool: &mut PoolConfig, prepared: &Prepared) {
        let found = lock(&self.found);
        let per_weight = u64::from(pool.points_per_weight());
        let mut points: u64 = pool
            .backends
            .iter()
            .map(|b| u64::from(b.weight) * per_weight)
            .sum();
        let mut ids: HashSet<String> = pool.backends.iter().map(|b| b.id.clone()).collect();
        let mut addresses: HashSet<String> =
            pool.backends.iter().map(|b| b.address.clone()).collect();
        for source in &pool.discover {
            let key = SourceKey::of(&pool.name, source);
            let set = match prepared.found.get(&key) {
                Some(result) => result.as_ref().ok(),
                None => found.get(&key).and_then(Option::as_ref),
            };
            for b in set.into_iter().flatten() {
                if ids.contains(&b.id) || addresses.contains(&b.address) {
                    continue;
                }
                points += u64::from(source.weight) * per_weight;
                if points > MAX_RING_POINTS {
                    tracing::error!(pool = %pool.name, %source, "discovered backends would make the ring larger than {MAX_RING_POINTS} points; the rest are left out");
                    return;
                }
                ids.insert(b.id.clone());
                addresses.insert(b.address.clone());
                pool.backends.push(BackendConfig {
                    weight: source.weight,
                    ..b.clone()
                });
            }
        }
    }

    /// `snapshot` (built from `declared` and `prepared`) is live: keep what was prepared for
    /// it, forget the sources and host names it no longer has (should one come back, it is
    /// looked up afresh), start the lookups it needs and stop the others.
    pub(crate) fn commit(
        self: &Arc<Self>,
        prepared: Prepared,
        declared: &Config,
        snapshot: &Snapshot,
        shared: &Arc<Shared>,
    ) {
        {
            let mut resolver = lock(&self.resolver);
            if *resolver != prepared.resolver {
                *resolver = prepared.resolver;
                self.dns.store(Some(prepared.dns));
            }
        }
        let keys: HashSet<SourceKey> = sources(declared)
            .map(|(pool, d)| SourceKey::of(pool, d))
            .collect();
        {
            let mut found = lock(&self.found);
            for (key, result) in prepared.found {
                let n = result.as_ref().map(Vec::len).map_err(String::as_str);
                self.status.record(&key.pool, &key.to_string(), n);
                found.insert(key, result.ok());
            }
            found.retain(|k, _| keys.contains(k));
        }
        let in_use: HashSet<String> = host_names(&snapshot.config).collect();
        {
            let mut hosts = lock(&self.hosts);
            hosts.extend(prepared.hosts);
            hosts.retain(|h, _| in_use.contains(h));
        }
        for pool in &declared.pools {
            let looks_up = !pool.discover.is_empty()
                || pool
                    .backends
                    .iter()
                    .any(|b| host_name(&b.address).is_some());
            if looks_up {
                // The series exists before the first error, so rate() sees the first one.
                self.metrics
                    .discovery_errors
                    .with_label_values(&[&pool.name]);
            }
        }

        // Sources have tasks, and so do the host names of listed backends; an SRV source
        // keeps its own targets' addresses current.
        let wanted: HashSet<Task> = sources(declared)
            .map(|(pool, d)| Task::Source(pool.to_owned(), d.clone()))
            .chain(host_names(declared).map(Task::Host))
            .collect();
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task, cancel| {
            let keep = wanted.contains(task);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        // After the cancels: a stopped source's last lookup records nothing (it checks its
        // key under the `found` lock, which no longer has it).
        self.status.retain(|pool, source| {
            keys.iter()
                .any(|k| k.pool == pool && k.to_string() == source)
        });
        for task in wanted {
            if tasks.contains_key(&task) {
                continue;
            }
            let cancel = self.stop.child_token();
            tasks.insert(task.clone(), cancel.clone());
            let (this, shared) = (self.clone(), shared.clone());
            match task {
                Task::Source(pool, config) => {
                    tokio::spawn(this.follow_source(pool, config, shared, cancel));
                }
                Task::Host(host) => {
                    tokio::spawn(this.follow_host(host, shared, cancel));
                }
            }
        }
    }

    /// Look a source up every interval (sooner if its TTL says); tell the proxy when its set
    /// of backends changes, and hand its targets' new addresses to their backends.
    async fn follow_source(
        self: Arc<Self>,
        pool: String,
        config: DiscoverConfig,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) {
        let key = SourceKey::of(&pool, &config);
        let what = key.to_string();
        let mut wait = config.interval;
        // Its first lookup (when the config was applied) may have failed already.
        let mut failing = matches!(lock(&self.found).get(&key), Some(None));
        loop {
            let (dns, known) = (self.dns(), lock(&self.hosts).clone());
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = async {
                    tokio::time::sleep(less_up_to_a_tenth(wait)).await;
                    lookup_source(&dns, &key, &known).await
                } => r,
            };
            {
                // Under the lock `commit` forgets sources with: a source the config dropped
                // meanwhile records nothing.
                let found = lock(&self.found);
                if cancel.is_cancelled() || !found.contains_key(&key) {
                    return;
                }
                let n = result.as_ref().map(|(a, _)| a.records.len());
                self.status.record(&pool, &what, n.map_err(String::as_str));
            }
            wait = config.interval;
            match result {
                Ok((Answer { records, ttl }, ips)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(%pool, source = %what, "discovery lookups succeed again");
                    }
                    wait = next_lookup(wait, ttl);
                    lock(&self.hosts).extend(ips.iter().cloned());
                    readdress(&shared.snapshot.load(), &ips);
                    let mut found = lock(&self.found);
                    // A source the config dropped meanwhile keeps nothing.
                    if cancel.is_cancelled() || !found.contains_key(&key) {
                        return;
                    }
                    let set = Some(records);
                    if found.get(&key) != Some(&set) {
                        found.insert(key.clone(), set);
                        self.changed.notify_one();
                    }
                }
                Err(why) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%pool, source = %what, "discovery lookup failed, keeping the backends it found last: {why}");
                    }
                    self.count_error(&pool);
                }
            }
        }
    }

    /// Look a listed backend's host name up every `resolver.interval` (sooner if its TTL
    /// says); hand changed addresses to the backends that use it.
    async fn follow_host(
        self: Arc<Self>,
        host: String,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) {
        let mut failing = false;
        let mut wait = lock(&self.resolver).interval;
        loop {
            let dns = self.dns();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = async {
                    tokio::time::sleep(less_up_to_a_tenth(wait)).await;
                    dns.ips(&host).await
                } => r,
            };
            wait = lock(&self.resolver).interval;
            match result {
                Ok(Answer { records, ttl }) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(%host, "host name resolves again");
                    }
                    wait = next_lookup(wait, ttl);
                    let ips: Arc<[IpAddr]> = records.into();
                    lock(&self.hosts).insert(host.clone(), ips.clone());
                    readdress(&shared.snapshot.load(), &[(host.clone(), ips)]);
                }
                Err(why) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%host, "host name lookup failed, keeping its last addresses: {why}");
                    }
                    for pool in pools_using(&shared.snapshot.load().config, &host) {
                        self.count_error(&pool);
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&source_label(self.kind, &self.dns, self.port))
    }
}

/// One lookup of a source: its backends, sorted by id, and the addresses learned for its SRV
/// targets. A target's addresses come from the answer's additional section, else from a
/// lookup of its own, else from `known` (its last good answer); a target with none is left
/// out until it resolves, as is one whose name cannot be a backend id.
async fn lookup_source(
    dns: &Arc<Dns>,
    key: &SourceKey,
    known: &Hosts,
) -> Result<SourceAnswer, String> {
    if key.kind == DiscoverKind::A {
        let answer = dns.ips(&key.dns).await?;
        let records = answer
            .records
            .iter()
            .map(|ip| {
                let address = SocketAddr::new(*ip, key.port).to_string();
                BackendConfig {
                    id: address.clone(),
                    address,
                    weight: 1,
                }
            })
            .collect();
        return Ok((
            Answer {
                records,
                ttl: answer.ttl,
            },
            Vec::new(),
        ));
    }
    let Answer {
        records: Srv { targets, ips },
        ttl,
    } = dns.srv(&key.dns).await?;
    let mut learned: Vec<(String, Arc<[IpAddr]>)> = Vec::new();
    let mut ask = Vec::new();
    let mut bad = Vec::new();
    for (target, _) in &targets {
        // The id and the address name the target without the final dot; it is looked up
        // with it, as the absolute name it is.
        let name = target.strip_suffix('.').unwrap_or(target);
        if !is_dns_name(name) || name.len() > 256 || name == "none" {
            bad.push(name.to_owned());
        } else if let Some(given) = ips.get(target).filter(|ips| !ips.is_empty()) {
            let mut given = given.clone();
            given.sort_unstable();
            given.dedup();
            learned.push((name.to_owned(), given.into()));
        } else {
            ask.push(target.clone());
        }
    }
    let mut unresolved = Vec::new();
    for (target, result) in resolve_all(dns, ask).await {
        let name = target.strip_suffix('.').unwrap_or(&target).to_owned();
        match result {
            Ok(ips) => learned.push((name, ips)),
            Err(why) => unresolved.push(format!("{name} ({why})")),
        }
    }
    if !bad.is_empty() {
        tracing::warn!(pool = %key.pool, source = %key, "SRV targets that cannot be backend ids are left out: {}", bad.join(", "));
    }
    let resolved: HashSet<&str> = learned.iter().map(|(n, _)| n.as_str()).collect();
    let mut records: Found = Vec::with_capacity(targets.len());
    for (target, port) in &targets {
        let name = target.strip_suffix('.').unwrap_or(target);
        let addressed =
            resolved.contains(name) || known.get(name).is_some_and(|ips| !ips.is_empty());
        // One backend per name: its id. A second port of the same target (sorted after the
        // first) is left out rather than given a made-up id.
        if !addressed || records.last().is_some_and(|b| b.id == name) {
            continue;
        }
        records.push(BackendConfig {
            id: name.to_owned(),
            address: format!("{name}:{port}"),
            weight: 1,
        });
    }
    if !unresolved.is_empty() {
        tracing::warn!(pool = %key.pool, source = %key, "SRV targets left out until they resolve: {}", unresolved.join(", "));
    }
    if records.is_empty() {
        return Err("none of the SRV targets resolves".into());
    }
    Ok((Answer { records, ttl }, learned))
}

/// Look every name up, [`CONCURRENT_LOOKUPS`] at a time.
async fn resolve_all(
    dns: &Arc<Dns>,
    names: Vec<String>,
) -> Vec<(String, Result<Arc<[IpAddr]>, String>)> {
    let mut out = Vec::with_capacity(names.len());
    let mut names = names.into_iter();
    let mut lookups = JoinSet::new();
    loop {
        while lookups.len() < CONCURRENT_LOOKUPS
            && let Some(name) = names.next()
        {
            let dns = dns.clone();
            lookups.spawn(async move {
                let result = dns.ips(&name).await.map(|a| Arc::from(a.records));
                (name, result)
            });
        }
        match lookups.join_next().await {
            Some(Ok(done)) => out.push(done),
            Some(Err(_)) => {}
            None => return out,
        }
    }
}

/// Give the backends of `snapshot` whose host is one of `updates` its new addresses; the
/// idle connections of a backend whose addresses changed go (they lead to the old ones).
fn readdress(snapshot: &Snapshot, updates: &[(String, Arc<[IpAddr]>)]) {
    if updates.is_empty() {
        return;
    }
    let by_host: HashMap<&str, &[IpAddr]> = updates
        .iter()
        .map(|(h, ips)| (h.as_str(), &**ips))
        .collect();
    for pool in &snapshot.pools {
        for b in pool.backends() {
            let Some(ips) = b.dial.host().and_then(|h| by_host.get(h)) else {
                continue;
            };
            let was = b.dial.addrs();
            if b.dial.update(ips) {
                b.raw.clear();
                tracing::info!(pool = %pool.config.name, backend = %b.id, address = %b.address, was = ?was, now = ?b.dial.addrs(), "backend address changed; idle connections to the old one closed");
            }
        }
    }
}

/// When to ask again after an answer that lives `ttl`.
fn next_lookup(interval: Duration, ttl: Duration) -> Duration {
    interval.min(ttl.max(MIN_TTL_WAIT))
}

/// `d` less up to 10%, so replicas started together drift apart instead of asking the DNS
/// server in lockstep.
fn less_up_to_a_tenth(d: Duration) -> Duration {
    let tenth = (d / 10).as_nanos() as u64;
    d - Duration::from_nanos(crate::util::thread_random() % tenth.max(1))
}

fn sources(config: &Config) -> impl Iterator<Item = (&str, &DiscoverConfig)> {
    config
        .pools
        .iter()
        .flat_map(|p| p.discover.iter().map(|d| (p.name.as_str(), d)))
}

/// The host names of every backend address in `config`, once each.
fn host_names(config: &Config) -> impl Iterator<Item = String> + '_ {
    let mut seen = HashSet::new();
    config
        .pools
        .iter()
        .flat_map(|p| &p.backends)
        .filter_map(|b| host_name(&b.address))
        .filter(move |h| seen.insert(h.clone()))
}

/// The pools with a backend whose host is `host`.
fn pools_using(config: &Config, host: &str) -> Vec<String> {
    config
        .pools
        .iter()
        .filter(|p| {
            p.backends
                .iter()
                .any(|b| host_name(&b.address).as_deref() == Some(host))
        })
        .map(|p| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_ttl_asks_sooner_but_not_in_a_loop() {
        let s = Duration::from_secs;
        assert_eq!(next_lookup(s(5), s(30)), s(5));
        assert_eq!(next_lookup(s(5), s(2)), s(2));
        assert_eq!(next_lookup(s(5), Duration::ZERO), s(1));
        assert_eq!(
            next_lookup(Duration::from_millis(200), Duration::ZERO),
            Duration::from_millis(200)
        );
        for _ in 0..100 {
            let d = less_up_to_a_tenth(s(5));
            assert!(d > Duration::from_millis(4500) && d <= s(5), "{d:?}");
        }
    }

    fn backend(id: &str, address: &str) -> BackendConfig {
        BackendConfig {
            id: id.into(),
            address: address.into(),
            weight: 1,
        }
    }

    #[tokio::test]
    async fn listed_backends_win_weights_apply_and_the_ring_cap_holds() {
        let discovery = Discovery::new(
            &ResolverConfig::default(),
            Arc::new(Metrics::unregistered()),
            Arc::default(),
            CancellationToken::new(),
        );
        let source = |dns: &str, weight: u32| DiscoverConfig {
            dns: dns.into(),
            kind: DiscoverKind::Srv,
            port: 0,
            interval: Duration::from_secs(5),
            weight,
        };
        let mut pool = PoolConfig::new(
            "p",
            "127.0.0.1:0".parse().unwrap(),
            vec![backend("listed", "10.0.0.1:80")],
        );
        pool.discover = vec![source("one", 3), source("two", 1)];
        let found = |dns: &str, set: Vec<BackendConfig>| {
            let key = SourceKey::of("p", &source(dns, 1));
            lock(&discovery.found).insert(key, Some(set));
        };
        found(
            "one",
            vec![
                backend("listed", "x.one:80"),
                backend("dup-address", "10.0.0.1:80"),
                backend("a.one", "a.one:80"),
            ],
        );
        found(
            "two",
            vec![backend("a.one", "a.two:80"), backend("b.two", "b.two:80")],
        );
        let none = Prepared {
            resolver: ResolverConfig::default(),
            dns: discovery.dns(),
            found: HashMap::new(),
            hosts: Hosts::new(),
        };
        let mut merged = pool.clone();
        discovery.merge(&mut merged, &none);
        let got: Vec<(&str, &str, u32)> = merged
            .backends
            .iter()
            .map(|b| (b.id.as_str(), b.address.as_str(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("listed", "10.0.0.1:80", 1),
                ("a.one", "a.one:80", 3),
                ("b.two", "b.two:80", 1)
            ]
        );

        // More than the ring can hold: the first that fit are kept.
        pool.discover = vec![source("one", 1)];
        let per = MAX_RING_POINTS / u64::from(pool.points_per_weight());
        let many = (0..per + 10)
            .map(|i| backend(&format!("n{i}"), &format!("n{i}:80")))
            .collect();
        found("one", many);
        let mut merged = pool.clone();
        discovery.merge(&mut merged, &none);
        assert_eq!(merged.backends.len() as u64, per);
    }
}
