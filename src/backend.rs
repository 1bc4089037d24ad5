//! Runtime state of one backend, shared by every snapshot that contains it.
//!
//! A `Backend` outlives config reloads as long as its pool, id and address stay the same, so it
//! is the home of everything that must survive a reload: health, drain flag, counters and idle
//! upstream connections. Every field is an atomic or a lock-free queue: the request path reads
//! them without locking.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{BackendConfig, PoolConfig};
use crate::upstream::ConnPool;

#[derive(Debug)]
pub struct Backend {
    /// Identity on the ring.
    pub id: String,
    /// `host:port` to connect to.
    pub address: String,
    /// False once health checking has declared the backend down.
    up: AtomicBool,
    /// Taken out of rotation by hand; still health-checked.
    drained: AtomicBool,
    /// Idle keep-alive connections to this backend.
    pub conns: ConnPool,
}

impl Backend {
    pub fn new(config: &BackendConfig, _pool: &PoolConfig) -> Backend {
        Backend {
            id: config.id.clone(),
            address: config.address.clone(),
            up: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            conns: ConnPool::new(config.address.clone()),
        }
    }

    /// Whether new requests may be sent here.
    #[inline]
    pub fn is_usable(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.drained.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed)
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed)
    }
}
