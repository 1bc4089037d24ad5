//! Requests in flight per backend and per pool, for bounded loads (`balance_factor`).
//!
//! Counted only in pools that balance: two shared counters per request are cache lines that
//! bounce between cores, a cost the other pools should not pay. A request holds an
//! [`InFlight`] from the moment a backend is chosen until its response body is done with (or
//! the attempt failed), and the drop gives both counts back. The pool's count
//! ([`PoolLoad`](crate::state::backend::PoolLoad)) lives with its backends, so an `InFlight` is
//! one pointer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::state::backend::Backend;

/// One request counted against a backend and its pool until dropped. One pointer: the
/// backend knows its pool's count.
#[derive(Debug)]
pub(crate) struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    /// Count one more request on `backend` if it has fewer than `limit` in flight. A
    /// compare-and-swap, so concurrent requests cannot both take the last place under a bound.
    pub(crate) fn try_acquire(backend: &Arc<Backend>, limit: u64) -> Option<InFlight> {
        backend
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Self::counted(backend))
    }

    /// Count one more request on `backend` whatever its load.
    pub(crate) fn acquire(backend: &Arc<Backend>) -> InFlight {
        backend.in_flight.fetch_add(1, Ordering::AcqRel);
        Self::counted(backend)
    }

    fn counted(backend: &Arc<Backend>) -> InFlight {
        backend.pool_load.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            backend: backend.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.backend
            .pool_load
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
    }
}
