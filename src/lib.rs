//! shardgate: a sharding, load-balancing HTTP reverse proxy.
//!
//! Data flow: config file → [`config`] (parse, validate) → [`state::snapshot::Snapshot`] (pools,
//! rings, backends) stored in an `ArcSwap` → each request: [`routing::key`] → [`routing::ring`] →
//! `forward` → backend.
//!
//! Modules are layers; each uses only those listed after it here: `cli` and `demo` (commands),
//! [`control`] (startup, reload, signals, health checks), `forward` (the data path), `observe`
//! (access log, admin listener), [`state`] (snapshot and runtime state), [`config`], `tls` (certificates, termination), [`routing`]
//! (pure: ring, keys, keyspace diff), [`http1`] (pure: HTTP/1 heads and framing), and `util`
//! under all. `tests/layers.rs` holds them to it.

pub mod cli;
pub mod config;
pub mod control;
pub(crate) mod demo;
pub(crate) mod forward;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http1;
pub(crate) mod observe;
pub mod routing;
pub mod state;
pub(crate) mod tls;
pub(crate) mod util;
