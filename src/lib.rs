//! shardgate: a sharding, load-balancing HTTP reverse proxy.
//!
//! Data flow: config file → [`config`] (parse, validate) → [`state::snapshot::Snapshot`] (pools,
//! rings, backends) stored in an `ArcSwap` → each request: [`routing::key`] → [`routing::ring`] →
//! [`forward`] → backend.

pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod forward;
pub mod observe;
pub mod routing;
pub mod state;
pub mod util;
