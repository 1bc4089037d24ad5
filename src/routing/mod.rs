//! Routing: which backend a key belongs to. Pure functions and data: no I/O, no async, no
//! tokio or hyper, so every rule here can be tested and benchmarked on its own.

pub mod bounded;
mod hugepage;
pub mod key;
pub(crate) mod keyspace;
pub mod ring;
