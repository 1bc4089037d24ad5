//! State shared by every listener, the admin API and the control tasks.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;

/// Shared across all tasks behind one `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The live configuration. Requests `load()` it once (lock-free, no reference count bump
    /// until they clone a pool out of it); reloads `store()` a whole new snapshot, so readers
    /// see either the old config or the new one, never a mix.
    pub snapshot: ArcSwap<Snapshot>,
    /// Outcome of config reloads (counters and the last result), for metrics and the admin API.
    pub reload: ReloadStatus,
    /// Every metric; pools and backends in the snapshot hold handles into it.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Shared {
        Shared {
            metrics,
            snapshot: ArcSwap::from_pointee(snapshot),
            reload: ReloadStatus::default(),
        }
    }
}
