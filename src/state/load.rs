//! Requests in flight per backend and per pool, for bounded loads (`balance_factor`).
//!
//! Counted only in pools that balance: two shared counters per request are cache lines that
//! bounce between cores, a cost the other pools should not pay. A request holds an
//! [`InFlight`] from the moment a backend is chosen until its response body is done with (or
//! the attempt failed), and the drop gives both counts back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::backend::Backend;

/// Requests in flight in one pool. Kept across reloads with the pool's metrics, so requests
/// admitted under the old config are still counted (and given back) under the new one.
#[derive(Debug, Default)]
pub(crate) struct PoolLoad {
    in_flight: AtomicU64,
}

impl PoolLoad {
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request counted against a backend and its pool until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    backend: Arc<Backend>,
    pool: Arc<PoolLoad>,
}

impl InFlight {
    /// Count one more request on `backend` if it has fewer than `limit` in flight. A
    /// compare-and-swap, so concurrent requests cannot both take the last place under a bound.
    pub(crate) fn try_acquire(
        backend: &Arc<Backend>,
        pool: &Arc<PoolLoad>,
        limit: u64,
    ) -> Option<InFlight> {
        backend
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Self::counted(backend, pool))
    }

    /// Count one more request on `backend` whatever its load.
    pub(crate) fn acquire(backend: &Arc<Backend>, pool: &Arc<PoolLoad>) -> InFlight {
        backend.in_flight.fetch_add(1, Ordering::AcqRel);
        Self::counted(backend, pool)
    }

    fn counted(backend: &Arc<Backend>, pool: &Arc<PoolLoad>) -> InFlight {
        pool.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            backend: backend.clone(),
            pool: pool.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.pool.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
