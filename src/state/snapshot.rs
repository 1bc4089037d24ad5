//! The snapshot: one immutable, validated view of the whole config, swapped atomically on reload.
//!
//! A request loads the snapshot once, takes its pool, and uses that to the end, so a reload never
//! changes the rules under a request in flight. Mutable runtime state (health, counters, idle
//! upstream connections) lives in [`Backend`], behind an `Arc` that the next snapshot reuses when
//! the backend is still there: same pool, same id, same address. That is how a reload keeps health
//! state and warm connections.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{AllDown, Config, PoolConfig};
use crate::routing::bounded::Bounds;
use crate::routing::keyspace::Layout;
use crate::routing::ring::Ring;
use crate::state::backend::{Backend, PoolLoad};
use crate::state::dial::Hosts;
use crate::state::hotkeys::HotKeys;
use crate::state::load::InFlight;
use crate::state::metrics::{Metrics, PoolMetrics};
use crate::util::lock;

/// Why [`Snapshot::choose_pool`] found no pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PoolChoiceError {
    #[error("no pool `{name}`; pools are: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    /// No name given and there is more than one pool; the caller says how to name one.
    #[error("the config has several pools")]
    Unnamed,
}

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) config: Config,
    pub pools: Vec<Arc<Pool>>,
}

/// One pool: its settings, its ring and its members. `members[i]` is ring node `i`.
#[derive(Debug)]
pub struct Pool {
    pub config: PoolConfig,
    pub(crate) ring: Ring,
    pub(crate) members: Vec<Member>,
    /// Handles to this pool's metric series (kept across reloads).
    pub(crate) metrics: Arc<PoolMetrics>,
    /// Requests in flight (kept across reloads); counted only with bounded loads.
    pub(crate) load: Arc<PoolLoad>,
    /// The hot-key view (`hot_keys`), kept across reloads.
    pub(crate) hot: Option<Arc<HotKeys>>,
    /// The last live keyspace shares and the usable flags they were computed for. Only the
    /// admin side takes this lock, never a request.
    shares: std::sync::Mutex<Option<SharesFor>>,
}

/// Live keyspace shares, and the usable flags (one per member) they were computed for.
type SharesFor = (Vec<bool>, Arc<[f64]>);

/// The backend a request goes to: member `index`, and with bounded loads the request's place
/// in that backend's count (held until the response is done with).
#[derive(Debug)]
pub(crate) struct Choice {
    pub(crate) index: usize,
    pub(crate) load: Option<InFlight>,
}

/// A backend as this snapshot has it: its runtime state, which other snapshots keeping the
/// backend share, and the weight this config gives it.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) backend: Arc<Backend>,
    pub(crate) weight: u32,
}

impl Snapshot {
    /// Build a snapshot, reusing the runtime state of backends that `previous` already has.
    pub fn build(config: Config, previous: Option<&Snapshot>, metrics: &Metrics) -> Snapshot {
        Snapshot::build_with(config, previous, metrics, &Hosts::default())
    }

    /// [`Snapshot::build`], new backends with a host name starting from its answer in `hosts`.
    pub(crate) fn build_with(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        hosts: &Hosts,
    ) -> Snapshot {
        let pools = config
            .pools
            .iter()
            .map(|pc| {
                let old = previous.and_then(|s| s.pool(&pc.name));
                Arc::new(Pool::build(pc.clone(), old.map(|p| &**p), metrics, hosts))
            })
            .collect();
        Snapshot { config, pools }
    }

    /// The pool called `name`, or with no name the only pool: how the CLI and the admin API
    /// let a user leave the pool out when there is just one.
    pub(crate) fn choose_pool(&self, name: Option<&str>) -> Result<&Arc<Pool>, PoolChoiceError> {
        match (name, self.pools.as_slice()) {
            (Some(name), _) => self.pool(name).ok_or_else(|| PoolChoiceError::Unknown {
                name: name.to_owned(),
                known: self.pools.iter().map(|p| p.config.name.clone()).collect(),
            }),
            (None, [only]) => Ok(only),
            (None, _) => Err(PoolChoiceError::Unnamed),
        }
    }

    /// Every pool as the keyspace diff sees it.
    pub(crate) fn layouts(&self) -> Vec<Layout<'_>> {
        self.pools
            .iter()
            .map(|p| p.config.layout(&p.ring))
            .collect()
    }

    /// The pool called `name`. Pools are few, so a scan beats a map.
    #[inline]
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.config.name == name)
    }
}

impl Pool {
    pub(crate) fn build(
        config: PoolConfig,
        previous: Option<&Pool>,
        metrics: &Metrics,
        hosts: &Hosts,
    ) -> Pool {
        let (pool_metrics, load) = match previous {
            Some(p) => (p.metrics.clone(), p.load.clone()),
            None => (
                Arc::new(PoolMetrics::new(metrics, &config.name)),
                Arc::default(),
            ),
        };
        // A backend kept from `previous` already counts into this same `load` (same pool).
        let members = config
            .backends
            .iter()
            .map(|bc| Member {
                backend: previous
                    .and_then(|p| p.backend(&bc.id))
                    .filter(|b| b.address == bc.address)
                    .inspect(|b| b.use_tls(config.upstream_tls.as_ref()))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Backend::new(bc, &config, metrics, load.clone(), hosts))
                    }),
                weight: bc.weight,
            })
            .collect();
        let metrics = pool_metrics;
        let ring = config.ring();
        // Counts are by key hash: another ring or other key sources make them meaningless.
        let same_keys = |p: &&Pool| p.config.ring == config.ring && p.config.key == config.key;
        let hot = config.hot_keys.then(|| {
            let hot = previous
                .filter(same_keys)
                .and_then(|p| p.hot.clone())
                .unwrap_or_else(|| Arc::new(HotKeys::new(config.expose_keys)));
            hot.set_expose(config.expose_keys);
            hot
        });
        Pool {
            metrics,
            load,
            hot,
            config,
            ring,
            members,
            shares: std::sync::Mutex::new(None),
        }
    }

    /// Count a request the proxy answered with an error `status`, under the backend that
    /// failed (`None`: it reached none). Through the backend's own handles, so a backend a
    /// reload removed meanwhile gets no series back.
    pub(crate) fn answered_error(&self, backend: Option<&str>, status: u16) {
        match backend.and_then(|id| self.backend(id)) {
            Some(b) => b.metrics.count_code(status),
            None => self.metrics.answered(status),
        }
    }

    /// The backend of member `i` (ring node `i`).
    #[inline]
    pub(crate) fn at(&self, i: usize) -> &Arc<Backend> {
        &self.members[i].backend
    }

    /// Every backend, in config order.
    pub fn backends(&self) -> impl ExactSizeIterator<Item = &Arc<Backend>> + '_ {
        self.members.iter().map(|m| &m.backend)
    }

    pub fn backend(&self, id: &str) -> Option<&Arc<Backend>> {
        self.backends().find(|b| b.id == id)
    }

    /// Backends in the order the proxy would try them for `hash`: ring successors, distinct.
    pub fn successors(&self, hash: u64) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        self.ring.successors(hash).map(|i| self.at(i))
    }

    /// The backend a request with this key hash goes to: the first successor taking traffic.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<&Arc<Backend>> {
        self.route(hash, &[]).map(|i| self.at(i))
    }

    /// Index of the backend to try for `hash`, skipping the ones in `tried`: the first distinct
    /// successor that is up and not drained. When no backend of the pool takes traffic and the
    /// pool fails open (`all_down = "owner"`), the first successor that is not drained.
    #[inline]
    pub(crate) fn route(&self, hash: u64, tried: &[usize]) -> Option<usize> {
        let usable = |i: usize| self.at(i).is_usable();
        // The common case: the owner takes traffic, one lookup and no walk.
        if tried.is_empty() {
            match self.ring.owner(hash) {
                Some(owner) if usable(owner) => return Some(owner),
                None => return None,
                Some(_) => {}
            }
        }
        // A walk is only worth it if something at all takes traffic: with every backend down
        // each request would otherwise walk the ring for nothing.
        if self.backends().any(|b| b.is_usable()) {
            return self
                .ring
                .successors(hash)
                .find(|i| !tried.contains(i) && usable(*i));
        }
        if self.config.health.all_down != AllDown::Owner {
            return None;
        }
        self.ring
            .successors(hash)
            .find(|i| !tried.contains(i) && !self.at(*i).is_drained())
    }

    /// The ring hash of the request's shard key, counted in the hot-key view; `None`: none of
    /// the pool's key sources is in the request.
    #[inline]
    pub(crate) fn key_hash<'a>(&'a self, req: impl crate::routing::key::View<'a>) -> Option<u64> {
        crate::routing::key::with_key(&self.config.key, req, |key| {
            let hash = self.ring.hash(key);
            if let Some(hot) = &self.hot {
                hot.record(hash, key);
            }
            hash
        })
    }

    /// The backend for `hash`, skipping the ones in `tried`: [`Pool::route`]'s answer, or with
    /// bounded loads (`balance_factor`) the first usable successor under its bound, counted
    /// in flight. A request that passes its first usable backend by is counted as a spill on
    /// that backend.
    #[inline]
    pub(crate) fn choose(&self, hash: u64, tried: &[usize]) -> Option<Choice> {
        let first = self.route(hash, tried)?;
        let Some(bounds) = self.bounds() else {
            return Some(Choice {
                index: first,
                load: None,
            });
        };
        let mut load = None;
        let under = self.first_under(hash, first, tried, bounds, |i, limit| {
            load = InFlight::try_acquire(self.at(i), limit);
            load.is_some()
        });
        Some(match under {
            Some(index) => {
                if index != first {
                    self.at(first).metrics.spills.inc();
                }
                Choice { index, load }
            }
            // Failing open to a backend that is down, or every backend at its bound (only
            // while counts race): the first one, counted all the same.
            None => Choice {
                index: first,
                load: Some(InFlight::acquire(self.at(first))),
            },
        })
    }

    /// Where a request for `hash` would go now, as [`Pool::choose`] decides, without counting
    /// one: for the admin API.
    pub(crate) fn preview(&self, hash: u64) -> Option<usize> {
        let first = self.route(hash, &[])?;
        let Some(bounds) = self.bounds() else {
            return Some(first);
        };
        let under = self.first_under(hash, first, &[], bounds, |i, limit| {
            self.at(i).in_flight.load(Ordering::Relaxed) < limit
        });
        Some(under.unwrap_or(first))
    }

    /// From `first` (the first usable backend for `hash`) on along the successor walk, the
    /// first usable backend not in `tried` that `take` accepts at its bound.
    fn first_under(
        &self,
        hash: u64,
        first: usize,
        tried: &[usize],
        bounds: Bounds,
        mut take: impl FnMut(usize, u64) -> bool,
    ) -> Option<usize> {
        if !self.at(first).is_usable() {
            return None;
        }
        let limit = |i: usize| bounds.limit(self.members[i].weight);
        if take(first, limit(first)) {
            return Some(first);
        }
        self.ring
            .successors(hash)
            .filter(|&i| i != first && !tried.contains(&i) && self.at(i).is_usable())
            .find(|&i| take(i, limit(i)))
    }

    /// The bounded-load limits as of now, or `None` if the pool does not balance (or nothing
    /// takes traffic).
    pub(crate) fn bounds(&self) -> Option<Bounds> {
        if self.config.balance_factor == 0.0 {
            return None;
        }
        let usable_weight: u64 = self
            .members
            .iter()
            .filter(|m| m.backend.is_usable())
            .map(|m| u64::from(m.weight))
            .sum();
        (usable_weight > 0).then(|| {
            Bounds::new(
                self.config.balance_factor,
                self.load.in_flight(),
                usable_weight,
            )
        })
    }

    /// Exact share of the keyspace each backend serves right now, health and drains included.
    ///
    /// Computing them walks the whole ring (up to 16.7M points), so the answer is kept until a
    /// backend's usable flag changes: scrapes, the fleet view and drains reuse it.
    pub(crate) fn live_shares(&self) -> Arc<[f64]> {
        let usable: Vec<bool> = self.backends().map(|b| b.is_usable()).collect();
        let mut cached = lock(&self.shares);
        if let Some((flags, shares)) = &*cached
            && *flags == usable
        {
            return shares.clone();
        }
        let shares: Arc<[f64]> = self.ring.shares_with(|i| usable[i]).into();
        *cached = Some((usable, shares.clone()));
        shares
    }

    /// Backends currently taking traffic.
    pub(crate) fn usable_count(&self) -> usize {
        self.backends().filter(|b| b.is_usable()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;
    use crate::routing::ring::hash_key;

    fn pool(n: usize, all_down: AllDown) -> Pool {
        let backends = (0..n)
            .map(|i| BackendConfig {
                id: format!("b{i}"),
                address: format!("127.0.0.1:{}", 1000 + i),
                weight: 1,
            })
            .collect();
        let mut config = PoolConfig::new("p", "127.0.0.1:0".parse().unwrap(), backends);
        config.health.all_down = all_down;
        Pool::build(config, None, &Metrics::unregistered(), &Hosts::default())
    }

    fn balancing(n: usize, factor: f64) -> Pool {
        let mut p = pool(n, AllDown::Reject);
        let mut config = p.config.clone();
        config.balance_factor = factor;
        config.backends[1].weight = 2;
        p = Pool::build(config, None, &Metrics::unregistered(), &Hosts::default());
        p
    }

    fn loads(p: &Pool) -> Vec<u64> {
        p.backends()
            .map(|b| b.in_flight.load(Ordering::Relaxed))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Requests arrive (a third of them for one hot key) and finish in random order; every
        /// arrival's backend is at or under its bound once it took the request, and the counts
        /// add up.
        #[test]
        fn no_backend_ever_goes_above_its_bound(
            factor in 1.0f64..3.0,
            ops in proptest::collection::vec((0u32..300, proptest::bool::ANY), 1..400),
        ) {
            let p = balancing(5, factor);
            let mut open: Vec<Choice> = Vec::new();
            for (key, finish) in ops {
                if finish && !open.is_empty() {
                    open.swap_remove(key as usize % open.len());
                    continue;
                }
                let key = if key % 3 == 0 { 0 } else { key };
                let hash = hash_key(&key.to_le_bytes());
                let bounds = p.bounds().unwrap();
                let c = p.choose(hash, &[]).unwrap();
                let load = p.at(c.index).in_flight.load(Ordering::Relaxed);
                proptest::prop_assert!(load <= bounds.limit(p.members[c.index].weight));
                open.push(c);
                proptest::prop_assert_eq!(p.load.in_flight(), open.len() as u64);
                proptest::prop_assert_eq!(loads(&p).iter().sum::<u64>(), open.len() as u64);
            }
            drop(open);
            proptest::prop_assert!(loads(&p).iter().all(|&n| n == 0));
        }

        /// With every backend at the same load per unit of weight, every key stays on its owner.
        #[test]
        fn with_even_load_no_key_moves(per_weight in 0usize..20, keys in proptest::collection::vec(proptest::num::u64::ANY, 50)) {
            let p = balancing(5, 1.0);
            let held: Vec<InFlight> = p
                .members
                .iter()
                .flat_map(|m| (0..per_weight * m.weight as usize).map(|_| InFlight::acquire(&m.backend)))
                .collect();
            for hash in keys {
                let c = p.choose(hash, &[]).unwrap();
                proptest::prop_assert_eq!(Some(c.index), p.ring.owner(hash));
            }
            drop(held);
        }

        /// Factor 0 (off): exactly the unbalanced mapping, and nothing counted.
        #[test]
        fn factor_off_is_todays_mapping(keys in proptest::collection::vec(proptest::num::u64::ANY, 200)) {
            let p = balancing(7, 0.0);
            p.at(3).set_up(false);
            let held: Vec<Choice> = keys.iter().map(|&h| p.choose(h, &[]).unwrap()).collect();
            for (h, c) in keys.iter().zip(&held) {
                proptest::prop_assert_eq!(Some(c.index), p.route(*h, &[]));
                proptest::prop_assert!(c.load.is_none());
            }
            proptest::prop_assert_eq!(p.load.in_flight(), 0);
        }
    }

    #[test]
    fn a_hot_key_spills_to_its_own_successors_in_order() {
        let p = balancing(6, 1.25);
        let hash = hash_key(b"/viral");
        let walk: Vec<usize> = p.ring.successors(hash).collect();
        let held: Vec<Choice> = (0..60).map(|_| p.choose(hash, &[]).unwrap()).collect();
        let per = loads(&p);
        // With nothing else in flight a hot key fills its owner to the bound, then the next
        // successor, and so on: never a backend further along while an earlier one had room.
        let used: Vec<usize> = walk.iter().copied().filter(|&i| per[i] > 0).collect();
        assert_eq!(used, walk[..used.len()], "loads {per:?}, walk {walk:?}");
        assert!(used.len() > 1, "60 requests of one key must spill: {per:?}");
        let final_bounds = p.bounds().unwrap();
        for &i in &used {
            assert!(per[i] <= final_bounds.limit(p.members[i].weight));
        }
        assert_eq!(
            p.at(walk[0]).metrics.spills.get() as usize,
            60 - per[walk[0]] as usize
        );
        drop(held);
    }

    #[test]
    fn live_shares_are_computed_once_per_health_state() {
        let p = pool(4, AllDown::Reject);
        let first = p.live_shares();
        assert!(
            Arc::ptr_eq(&first, &p.live_shares()),
            "unchanged health: reused"
        );
        p.at(1).set_up(false);
        let down = p.live_shares();
        assert!(!Arc::ptr_eq(&first, &down), "a flip recomputes");
        assert_eq!(down[1], 0.0);
        assert!((down.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        p.at(1).set_up(true);
        assert_eq!(*p.live_shares(), *first);
    }

    #[test]
    fn with_every_backend_down_routing_refuses_or_fails_open_to_the_owner() {
        let p = pool(200, AllDown::Reject);
        for b in p.backends() {
            b.set_up(false);
        }
        assert_eq!(p.route(hash_key(b"k"), &[]), None);
        let open = pool(200, AllDown::Owner);
        for b in open.backends() {
            b.set_up(false);
        }
        let owner = open.ring.owner(hash_key(b"k"));
        assert_eq!(
            open.route(hash_key(b"k"), &[]),
            owner,
            "fail open: the owner"
        );
    }
}
