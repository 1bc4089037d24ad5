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
        let found = if tried.is_empty() {
            self.ring.first_usable(hash, usable)
        } else {
            self.ring
                .successors(hash)
                .find(|i| !tried.contains(i) && usable(*i))
        };
        if found.is_some() || self.config.health.all_down != AllDown::Owner {
            return found;
        }
        if self.backends().any(|b| b.is_usable()) {
            return None; // some are up, the retry budget just ran past them
        }
        self.ring
            .successors(hash)
            .find(|i| !tried.contains(i) && !self.at(*i).is_drained())
    }

    /// Exact share of the keyspace each backend serves right now, health and drains included.
    pub(crate) fn live_shares(&self) -> Vec<f64> {
        self.ring.shares_with(|i| self.at(i).is_usable())
    }

    /// Backends currently taking traffic.
    pub(crate) fn usable_count(&self) -> usize {
        self.backends().filter(|b| b.is_usable()).count()
    }
}
