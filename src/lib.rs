//! shardgate: a sharding, load-balancing HTTP reverse proxy.
//!
//! Data flow: config file → [`config`] (parse, validate) → [`snapshot::Snapshot`] (pools, rings,
//! backends) stored in an `ArcSwap` → each request: [`key`] → [`ring`] → [`proxy`] → backend.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod backend;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diff;
pub mod health;
mod hugepage;
pub mod key;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod ring;
pub mod server;
pub mod shared;
pub mod signals;
pub mod snapshot;
pub mod upstream;
pub mod util;
