//! Observe: what operators see — the access log the data path writes to, and the admin listener
//! (metrics, status page, JSON API) that reads the shared state.

pub(crate) mod access_log;
pub(crate) mod admin;
