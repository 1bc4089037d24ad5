//! State: the live snapshot of the config and the runtime state that outlives it (backend
//! health, counters, idle connections, metric handles). The data path reads it without locks;
//! the control side replaces it.

pub(crate) mod activity;
pub mod backend;
pub(crate) mod conns;
pub(crate) mod dial;
pub(crate) mod hotkeys;
pub(crate) mod load;
pub mod metrics;
pub(crate) mod reqbody;
pub mod shared;
pub mod snapshot;
pub(crate) mod stream;
