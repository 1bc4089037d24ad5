//! The open-file budget. Every client connection, upstream connection, listener and probe is a
//! file descriptor; running out (EMFILE) fails accepts and connects alike, so the limit is
//! raised at startup and a config whose caps cannot fit in it is pointed out.

use crate::config::Config;

/// Descriptors beyond the connection caps: listeners, health probes, the config watcher,
/// stdio, the runtime's own.
const SLACK: u64 = 256;

/// Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force, or `None` if
/// it cannot be read (logged).
pub(crate) fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open file limit");
            Some(limit)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open file limit");
            None
        }
    }
}

/// The soft RLIMIT_NOFILE in force.
pub(crate) fn nofile_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// Descriptors `config` may need at once: every pool's `max_connections`, every backend's
/// `upstream_max_connections`, and some slack.
pub(crate) fn fds_needed(config: &Config) -> u64 {
    let per_pool = config.pools.iter().map(|p| {
        p.max_connections as u64 + p.backends.len() as u64 * p.upstream_max_connections as u64
    });
    per_pool.sum::<u64>() + SLACK
}

/// Warn when `config`'s caps cannot all be open at once under the current limit: past it,
/// accepts and connects fail with EMFILE (answered 503 `local_resource`) before the caps bite.
/// On a reload (`previous` given), only when the caps changed, so the same warning does not
/// come back with every edit.
pub(crate) fn warn_if_over_budget(config: &Config, previous: Option<&Config>) {
    let Some(limit) = nofile_limit() else { return };
    let needed = fds_needed(config);
    if needed > limit && previous.is_none_or(|p| fds_needed(p) != needed) {
        tracing::warn!(
            needed,
            limit,
            "max_connections plus every backend's upstream_max_connections exceed the open file \
             limit: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower the caps"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, PoolConfig};

    #[test]
    fn the_budget_counts_client_and_upstream_caps() {
        let b = |id: &str| BackendConfig {
            id: id.into(),
            address: "127.0.0.1:1".into(),
            weight: 1,
        };
        let mut pool = PoolConfig::new("p", "127.0.0.1:0".parse().unwrap(), vec![b("a"), b("b")]);
        pool.max_connections = 1000;
        pool.upstream_max_connections = 100;
        let config = Config {
            admin: Default::default(),
            server: Default::default(),
            resolver: Default::default(),
            pools: vec![pool],
        };
        assert_eq!(fds_needed(&config), 1000 + 2 * 100 + SLACK);
    }
}
