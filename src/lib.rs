//! shardgate: a sharding, load-balancing HTTP reverse proxy.
//!
//! Data flow: config file → [`config`] (parse, validate) → [`state::snapshot::Snapshot`] (pools,
//! rings, backends) stored in an `ArcSwap` → each request: [`routing::key`] → [`routing::ring`] →
//! [`forward`] → backend.

pub mod cli;
pub mod config;
pub mod control;
pub(crate) mod demo;
pub(crate) mod forward;
pub(crate) mod observe;
pub mod routing;
pub mod state;
pub(crate) mod util;
