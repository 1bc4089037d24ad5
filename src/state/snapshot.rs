//! The snapshot: one immutable, validated view of the whole config, swapped atomically on reload.
//!
//! A request loads the snapshot once, takes its pool, and uses that to the end, so a reload never
//! changes the rules under a request in flight. Mutable runtime state (health, counters, idle
//! upstream connections) lives in [`Backend`], behind an `Arc` that the next snapshot reuses when
//! the backend is still there: same pool, same id, same address. That is how a reload keeps health
//! state and warm connections.

use std::sync::Arc;

use crate::config::{AllDown, Config, PoolConfig};
use crate::routing::keyspace::Layout;
use crate::routing::ring::Ring;
use crate::state::backend::Backend;
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
    /// The last live keyspace shares and the usable flags they were computed for. Only the
    /// admin side takes this lock, never a request.
    shares: std::sync::Mutex<Option<SharesFor>>,
}

/// Live keyspace shares, and the usable flags (one per member) they were computed for.
type SharesFor = (Vec<bool>, Arc<[f64]>);

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
        let pools = config
            .pools
            .iter()
            .map(|pc| {
                let old = previous.and_then(|s| s.pool(&pc.name));
                Arc::new(Pool::build(pc.clone(), old.map(|p| &**p), metrics))
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
    pub(crate) fn build(config: PoolConfig, previous: Option<&Pool>, metrics: &Metrics) -> Pool {
        let members = config
            .backends
            .iter()
            .map(|bc| Member {
                backend: previous
                    .and_then(|p| p.backend(&bc.id))
                    .filter(|b| b.address == bc.address)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(bc, &config, metrics))),
                weight: bc.weight,
            })
            .collect();
        let ring = config.ring();
        let metrics = match previous {
            Some(p) => p.metrics.clone(),
            None => Arc::new(PoolMetrics::new(metrics, &config.name)),
        };
        Pool {
            metrics,
            config,
            ring,
            members,
            shares: std::sync::Mutex::new(None),
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
        Pool::build(config, None, &Metrics::unregistered())
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
