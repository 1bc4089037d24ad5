//! The config file exactly as written: serde types with spans, no meaning attached yet.
//!
//! Every value is `Spanned` so validation can point at the line and column it complains about.
//! Unknown keys are refused here (`deny_unknown_fields`), which serde reports one at a time; all
//! semantic checks happen in `validate` and are reported together.

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) server: Option<RawServer>,
    #[serde(default)]
    pub(crate) resolver: Option<RawResolver>,
    #[serde(default)]
    pub(crate) pools: Vec<RawPool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResolver {
    pub(crate) nameservers: Option<S<Vec<S<String>>>>,
    pub(crate) interval: Option<S<String>>,
    pub(crate) timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscover {
    pub(crate) dns: S<String>,
    pub(crate) kind: Option<S<String>>,
    pub(crate) port: Option<S<i64>>,
    pub(crate) interval: Option<S<String>>,
    pub(crate) weight: Option<S<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<S<String>>,
    pub(crate) allowed_hosts: Option<S<Vec<S<String>>>>,
    pub(crate) token_file: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) shutdown_grace: Option<S<String>>,
    pub(crate) worker_threads: Option<S<i64>>,
    pub(crate) worker_layout: Option<S<String>>,
    pub(crate) watch_config: Option<S<bool>>,
    pub(crate) access_log: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) name: S<String>,
    pub(crate) listen: S<String>,
    pub(crate) key: Option<S<Vec<S<String>>>>,
    pub(crate) missing_key: Option<S<String>>,
    pub(crate) vnodes: Option<S<i64>>,
    pub(crate) ring: Option<S<String>>,
    pub(crate) balance_factor: Option<S<f64>>,
    pub(crate) hot_keys: Option<S<bool>>,
    pub(crate) expose_keys: Option<S<bool>>,
    pub(crate) connect_timeout: Option<S<String>>,
    pub(crate) request_timeout: Option<S<String>>,
    pub(crate) header_read_timeout: Option<S<String>>,
    pub(crate) idle_timeout: Option<S<String>>,
    pub(crate) trusted_proxies: Option<S<Vec<S<String>>>>,
    pub(crate) max_connections: Option<S<i64>>,
    pub(crate) max_header_bytes: Option<S<i64>>,
    pub(crate) upstream_idle_timeout: Option<S<String>>,
    pub(crate) upstream_max_idle: Option<S<i64>>,
    pub(crate) upstream_max_connections: Option<S<i64>>,
    pub(crate) retries: Option<S<i64>>,
    pub(crate) retry_idempotent: Option<S<bool>>,
    pub(crate) health: Option<RawHealth>,
    pub(crate) tls: Option<RawTls>,
    pub(crate) upstream_tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub(crate) backends: Vec<RawBackend>,
    #[serde(default)]
    pub(crate) discover: Vec<RawDiscover>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) ca: Option<S<String>>,
    pub(crate) server_name: Option<S<String>>,
    pub(crate) cert: Option<S<String>>,
    pub(crate) key: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: S<String>,
    pub(crate) key: S<String>,
    #[serde(default)]
    pub(crate) sni: Vec<RawSni>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSni {
    pub(crate) names: S<Vec<S<String>>>,
    pub(crate) cert: S<String>,
    pub(crate) key: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) id: Option<S<String>>,
    pub(crate) address: S<String>,
    pub(crate) weight: Option<S<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) kind: Option<S<String>>,
    pub(crate) path: Option<S<String>>,
    pub(crate) expect: Option<S<String>>,
    pub(crate) interval: Option<S<String>>,
    pub(crate) timeout: Option<S<String>>,
    pub(crate) fall: Option<S<i64>>,
    pub(crate) rise: Option<S<i64>>,
    pub(crate) initial: Option<S<String>>,
    pub(crate) passive_failures: Option<S<i64>>,
    pub(crate) all_down: Option<S<String>>,
}
