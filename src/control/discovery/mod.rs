//! Backends from DNS, and backend host names kept resolved, off the request path.
//!
//! Two kinds of lookup run in the background, each in its own task on its own period:
//! - a **source** (`[[pools.discover]]`) turns an SRV or A answer into a set of backends. When
//!   the set changes the proxy applies its config again with the new set, exactly as a reload
//!   would: same diff, same moved fraction, backends that stay keep their state.
//! - a **host** is the host name of a backend's address, listed or discovered. Its addresses
//!   go straight into the backends that use it ([`Dial`](crate::state::dial::Dial)); an
//!   address that changes closes the idle connections to the old one.
//!
//! A lookup that fails or comes back empty changes nothing: the last good answer stays, so a
//! DNS outage never empties a pool. It is logged (once per streak) and counted in
//! `shardgate_discovery_errors_total{pool}`.

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
    ResolverConfig,
};
use crate::state::dial::{Hosts, host_key};
use crate::state::metrics::Metrics;
use crate::state::shared::{DiscoveryStatus, Shared};
use crate::state::snapshot::Snapshot;
use crate::util::lock;
use dns::{Answer, Dns};

/// A TTL shorter than `interval` makes us ask again sooner, but not sooner than this: servers
/// answer with TTL 0 to say "do not cache", not "ask again at once".
const MIN_TTL_WAIT: Duration = Duration::from_secs(1);

/// When to ask again after an answer that lives `ttl`.
fn next_lookup(interval: Duration, ttl: Duration) -> Duration {
    interval.min(ttl.max(MIN_TTL_WAIT))
}

/// One `[[pools.discover]]` entry of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Source {
    pool: String,
    config: DiscoverConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lookup {
    Source(Source),
    Host(String),
}

pub(crate) struct Discovery {
    resolver: Mutex<ResolverConfig>,
    /// Built on first use, so a config without host names never reads `/etc/resolv.conf`.
    dns: ArcSwapOption<Dns>,
    /// Per source, the last good set of backends it found; `None`: tried, nothing good yet.
    found: Mutex<HashMap<Source, Option<Vec<BackendConfig>>>>,
    /// The last good answer per host name.
    hosts: Mutex<Hosts>,
    /// The running lookup tasks.
    tasks: Mutex<HashMap<Lookup, CancellationToken>>,
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

    /// The last good answer per host name, for building backends.
    pub(crate) fn hosts(&self) -> Hosts {
        lock(&self.hosts).clone()
    }

    /// Make `config` whole: each pool's backends as listed, then those its sources found. A
    /// source or host name met for the first time is looked up now (all at once, each within
    /// `resolver.timeout`), so a new pool or a reload starts with its discovered backends.
    pub(crate) async fn prepare(self: &Arc<Self>, config: &mut Config) {
        {
            let mut resolver = lock(&self.resolver);
            if *resolver != config.resolver {
                *resolver = config.resolver.clone();
                self.dns.store(None);
            }
        }
        let new: Vec<Source> = {
            let found = lock(&self.found);
            sources(config).filter(|s| !found.contains_key(s)).collect()
        };
        let mut lookups = JoinSet::new();
        for source in new {
            let this = self.clone();
            lookups.spawn(async move {
                let result = this.lookup_source(&source).await;
                (source, result)
            });
        }
        while let Some(Ok((source, result))) = lookups.join_next().await {
            let what = source.config.to_string();
            let set = match result {
                Ok(answer) => {
                    self.status
                        .record(&source.pool, &what, Ok(answer.records.len()));
                    Some(answer.records)
                }
                Err(why) => {
                    self.status.record(&source.pool, &what, Err(&why));
                    self.failed(&source.pool, &why, &what);
                    None
                }
            };
            lock(&self.found).insert(source, set);
        }
        for pool in &mut config.pools {
            self.merge(pool);
        }
        let unknown: HashSet<String> = {
            let hosts = lock(&self.hosts);
            host_names(config)
                .filter(|h| !hosts.contains_key(h))
                .collect()
        };
        let mut lookups = JoinSet::new();
        for host in unknown {
            let dns = self.dns();
            lookups.spawn(async move {
                let result = dns.ips(&host).await;
                (host, result)
            });
        }
        while let Some(Ok((host, result))) = lookups.join_next().await {
            match result {
                Ok(answer) => {
                    lock(&self.hosts).insert(host, answer.records.into());
                }
                Err(why) => {
                    for pool in pools_using(config, &host) {
                        self.failed(&pool, &why, &host);
                    }
                }
            }
        }
    }

    /// Add what `pool`'s sources found to its listed backends. A listed backend wins over a
    /// discovered one with its id or address; the first source wins over later ones.
    fn merge(&self, pool: &mut PoolConfig) {
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
        for config in &pool.discover {
            let source = Source {
                pool: pool.name.clone(),
                config: config.clone(),
            };
            let Some(Some(set)) = found.get(&source) else {
                continue;
            };
            for b in set {
                if ids.contains(&b.id) || addresses.contains(&b.address) {
                    continue;
                }
                points += u64::from(b.weight) * per_weight;
                if points > MAX_RING_POINTS {
                    tracing::error!(pool = %pool.name, source = %config, "discovered backends would make the ring larger than {MAX_RING_POINTS} points; the rest are left out");
                    return;
                }
                ids.insert(b.id.clone());
                addresses.insert(b.address.clone());
                pool.backends.push(b.clone());
            }
        }
    }

    /// Start looking up what `snapshot` needs and is not looked up yet; stop what it no
    /// longer needs, forgetting its answers (should it come back, it is looked up afresh).
    pub(crate) fn sync(self: &Arc<Self>, snapshot: &Snapshot, shared: &Arc<Shared>) {
        let wanted: HashSet<Lookup> = sources(&snapshot.config)
            .map(Lookup::Source)
            .chain(host_names(&snapshot.config).map(Lookup::Host))
            .collect();
        for pool in &snapshot.config.pools {
            let looks_up = !pool.discover.is_empty()
                || pool.backends.iter().any(|b| has_host_name(&b.address));
            if looks_up {
                // The series exists before the first error, so rate() sees the first one.
                self.metrics
                    .discovery_errors
                    .with_label_values(&[&pool.name]);
            }
        }
        self.status.retain(|pool, source| {
            wanted.iter().any(|w| {
                matches!(w, Lookup::Source(s) if s.pool == pool && s.config.to_string() == source)
            })
        });
        let mut tasks = lock(&self.tasks);
        tasks.retain(|lookup, cancel| {
            let keep = wanted.contains(lookup);
            if !keep {
                cancel.cancel();
                match lookup {
                    Lookup::Source(s) => {
                        lock(&self.found).remove(s);
                    }
                    Lookup::Host(h) => {
                        lock(&self.hosts).remove(h);
                    }
                }
            }
            keep
        });
        for lookup in wanted {
            if tasks.contains_key(&lookup) {
                continue;
            }
            let cancel = self.stop.child_token();
            tasks.insert(lookup.clone(), cancel.clone());
            let this = self.clone();
            match lookup {
                Lookup::Source(source) => {
                    tokio::spawn(async move { this.follow_source(source, cancel).await });
                }
                Lookup::Host(host) => {
                    let shared = shared.clone();
                    tokio::spawn(async move { this.follow_host(host, shared, cancel).await });
                }
            }
        }
    }

    /// Look `source` up every interval (sooner if its TTL says); tell the proxy when the set
    /// of backends changes.
    async fn follow_source(self: Arc<Self>, source: Source, cancel: CancellationToken) {
        let mut wait = source.config.interval;
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
            let what = source.config.to_string();
            wait = source.config.interval;
            let result = self.lookup_source(&source).await;
            let found = result.as_ref().map(|a| a.records.len());
            self.status
                .record(&source.pool, &what, found.map_err(String::as_str));
            match result {
                Ok(Answer { records, ttl }) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(pool = %source.pool, source = %what, "discovery lookups succeed again");
                    }
                    wait = next_lookup(wait, ttl);
                    let mut found = lock(&self.found);
                    if cancel.is_cancelled() {
                        return;
                    }
                    let set = Some(records);
                    if found.get(&source) != Some(&set) {
                        found.insert(source.clone(), set);
                        self.changed.notify_one();
                    }
                }
                Err(why) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(pool = %source.pool, source = %what, "discovery lookup failed, keeping the backends it found last: {why}");
                    }
                    self.metrics
                        .discovery_errors
                        .with_label_values(&[&source.pool])
                        .inc();
                }
            }
        }
    }

    /// Look `host` up every `resolver.interval` (sooner if its TTL says); hand changed
    /// addresses to the backends that use it.
    async fn follow_host(
        self: Arc<Self>,
        host: String,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) {
        let mut failing = false;
        let mut wait = lock(&self.resolver).interval;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
            let interval = lock(&self.resolver).interval;
            wait = interval;
            match self.dns().ips(&host).await {
                Ok(Answer { records, ttl }) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(%host, "host name resolves again");
                    }
                    wait = next_lookup(interval, ttl);
                    if cancel.is_cancelled() {
                        return;
                    }
                    lock(&self.hosts).insert(host.clone(), records.clone().into());
                    readdress(&shared.snapshot.load(), &host, &records);
                }
                Err(why) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%host, "host name lookup failed, keeping its last addresses: {why}");
                    }
                    for pool in pools_using(&shared.snapshot.load().config, &host) {
                        self.metrics
                            .discovery_errors
                            .with_label_values(&[&pool])
                            .inc();
                    }
                }
            }
        }
    }

    /// One lookup of `source`: its backends, sorted by id. The SRV targets not resolved yet
    /// are looked up too (and left out if that fails): a backend joins with an address.
    async fn lookup_source(&self, source: &Source) -> Result<Answer<Vec<BackendConfig>>, String> {
        let dns = self.dns();
        let DiscoverConfig {
            dns: name,
            kind,
            port,
            weight,
            ..
        } = &source.config;
        match kind {
            DiscoverKind::A => {
                let answer = dns.ips(name).await?;
                let records = answer
                    .records
                    .iter()
                    .map(|ip| {
                        let address = SocketAddr::new(*ip, *port).to_string();
                        BackendConfig {
                            id: address.clone(),
                            address,
                            weight: *weight,
                        }
                    })
                    .collect();
                Ok(Answer {
                    records,
                    ttl: answer.ttl,
                })
            }
            DiscoverKind::Srv => {
                let answer = dns.srv(name).await?;
                let mut lookups = JoinSet::new();
                {
                    let hosts = lock(&self.hosts);
                    let mut asked = HashSet::new();
                    for (target, _) in &answer.records {
                        if !hosts.contains_key(target) && asked.insert(target.clone()) {
                            let (dns, target) = (dns.clone(), target.clone());
                            lookups.spawn(async move { (dns.ips(&target).await, target) });
                        }
                    }
                }
                let mut unresolved = Vec::new();
                while let Some(Ok((result, target))) = lookups.join_next().await {
                    match result {
                        Ok(ips) => {
                            lock(&self.hosts).insert(target, ips.records.into());
                        }
                        Err(why) => unresolved.push(format!("{target} ({why})")),
                    }
                }
                if !unresolved.is_empty() {
                    tracing::warn!(pool = %source.pool, source = %source.config, "SRV targets left out until they resolve: {}", unresolved.join(", "));
                }
                let hosts = lock(&self.hosts);
                let mut records: Vec<BackendConfig> = Vec::with_capacity(answer.records.len());
                for (target, port) in &answer.records {
                    // One backend per name: its id. A second port of the same target (sorted
                    // after the first) is left out rather than given a made-up id.
                    if !hosts.contains_key(target)
                        || records.last().is_some_and(|b| b.id == *target)
                    {
                        continue;
                    }
                    records.push(BackendConfig {
                        id: target.clone(),
                        address: format!("{target}:{port}"),
                        weight: *weight,
                    });
                }
                if records.is_empty() {
                    return Err("none of the SRV targets resolves".into());
                }
                Ok(Answer {
                    records,
                    ttl: answer.ttl,
                })
            }
        }
    }

    fn failed(&self, pool: &str, why: &str, what: &str) {
        tracing::warn!(%pool, lookup = %what, "DNS lookup failed: {why}");
        self.metrics
            .discovery_errors
            .with_label_values(&[pool])
            .inc();
    }
}

/// Give the backends of `snapshot` whose host is `host` its new addresses; the idle
/// connections of a backend whose addresses changed go (they lead to the old ones).
fn readdress(snapshot: &Snapshot, host: &str, ips: &[IpAddr]) {
    for pool in &snapshot.pools {
        for b in pool.backends().filter(|b| b.dial.host() == Some(host)) {
            let was = b.dial.addrs();
            if b.dial.update(ips) {
                b.raw.clear();
                tracing::info!(pool = %pool.config.name, backend = %b.id, address = %b.address, was = ?was, now = ?b.dial.addrs(), "backend address changed; idle connections to the old one closed");
            }
        }
    }
}

fn sources(config: &Config) -> impl Iterator<Item = Source> + '_ {
    config.pools.iter().flat_map(|p| {
        p.discover.iter().map(|d| Source {
            pool: p.name.clone(),
            config: d.clone(),
        })
    })
}

fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

fn has_host_name(address: &str) -> bool {
    let host = host_of(address);
    !host.starts_with('[') && host.parse::<IpAddr>().is_err()
}

/// The host names of every backend address in `config`, once each.
fn host_names(config: &Config) -> impl Iterator<Item = String> + '_ {
    let mut seen = HashSet::new();
    config
        .pools
        .iter()
        .flat_map(|p| &p.backends)
        .filter(|b| has_host_name(&b.address))
        .map(|b| host_key(host_of(&b.address)))
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
                .any(|b| has_host_name(&b.address) && host_key(host_of(&b.address)) == host)
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
    }

    #[test]
    fn host_names_are_told_from_addresses() {
        assert!(has_host_name("cache-0.cache:8080"));
        assert!(!has_host_name("10.0.0.1:8080"));
        assert!(!has_host_name("[::1]:8080"));
        assert_eq!(host_of("Cache-0.cache.:8080"), "Cache-0.cache.");
    }

    fn backend(id: &str, address: &str) -> BackendConfig {
        BackendConfig {
            id: id.into(),
            address: address.into(),
            weight: 1,
        }
    }

    #[tokio::test]
    async fn listed_backends_win_and_the_ring_cap_holds() {
        let discovery = Discovery::new(
            &ResolverConfig::default(),
            Arc::new(Metrics::unregistered()),
            Arc::default(),
            CancellationToken::new(),
        );
        let source = |dns: &str| DiscoverConfig {
            dns: dns.into(),
            kind: DiscoverKind::Srv,
            port: 0,
            interval: Duration::from_secs(5),
            weight: 1,
        };
        let mut pool = PoolConfig::new(
            "p",
            "127.0.0.1:0".parse().unwrap(),
            vec![backend("listed", "10.0.0.1:80")],
        );
        pool.discover = vec![source("one"), source("two")];
        let found = |dns: &str, set: Vec<BackendConfig>| {
            let s = Source {
                pool: "p".into(),
                config: source(dns),
            };
            lock(&discovery.found).insert(s, Some(set));
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
        let mut merged = pool.clone();
        discovery.merge(&mut merged);
        let ids: Vec<&str> = merged.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["listed", "a.one", "b.two"]);
        assert_eq!(merged.backends[1].address, "a.one:80");

        // More than the ring can hold: the first that fit are kept.
        let per = MAX_RING_POINTS / u64::from(pool.points_per_weight());
        let many = (0..per + 10)
            .map(|i| backend(&format!("n{i}"), &format!("n{i}:80")))
            .collect();
        found("one", many);
        let mut merged = pool.clone();
        discovery.merge(&mut merged);
        assert_eq!(merged.backends.len() as u64, per);
    }
}
