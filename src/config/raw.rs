//! The config file exactly as written: serde types with spans, no meaning attached yet.
//!
//! Every value is `Spanned` so validation can point at the line and column it complains about.
//! Unknown keys are refused here (`deny_unknown_fields`), which serde reports one at a time; all
//! semantic checks happen in `validate` and are reported together.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub server: Option<RawServer>,
    #[serde(default)]
    pub pools: Vec<RawPool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub shutdown_grace: Option<S<String>>,
    pub worker_threads: Option<S<i64>>,
    pub watch_config: Option<S<bool>>,
    pub access_log: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: S<String>,
    pub listen: S<String>,
    pub key: Option<S<Vec<S<String>>>>,
    pub missing_key: Option<S<String>>,
    pub vnodes: Option<S<i64>>,
    pub connect_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub header_read_timeout: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub max_header_bytes: Option<S<i64>>,
    pub upstream_idle_timeout: Option<S<String>>,
    pub upstream_max_idle: Option<S<i64>>,
    pub retries: Option<S<i64>>,
    pub retry_idempotent: Option<S<bool>>,
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub id: Option<S<String>>,
    pub address: S<String>,
    pub weight: Option<S<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<S<String>>,
    pub path: Option<S<String>>,
    pub expect: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub fall: Option<S<i64>>,
    pub rise: Option<S<i64>>,
    pub initial: Option<S<String>>,
    pub passive_failures: Option<S<i64>>,
    pub all_down: Option<S<String>>,
}
