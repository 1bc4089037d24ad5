//! `[resolver]` and `[[pools.discover]]`: where backends' host names and discovered backends
//! come from.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How host names are looked up (`[resolver]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// DNS servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub(crate) nameservers: Vec<SocketAddr>,
    /// How often a backend address's host name is looked up again (sooner when its TTL says).
    pub(crate) interval: Duration,
    /// One lookup, its retries included.
    pub(crate) timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// One `[[pools.discover]]` source: a DNS name whose answer is a set of backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscoverConfig {
    pub(crate) dns: String,
    pub(crate) kind: DiscoverKind,
    /// The backends' port for `kind = "a"`; SRV records carry their own.
    pub(crate) port: u16,
    /// How often `dns` is looked up again (sooner when the answer's TTL says).
    pub(crate) interval: Duration,
    pub(crate) weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscoverKind {
    /// One backend per SRV target; the target's name is its id, so a pod that comes back on
    /// another IP keeps its keys.
    Srv,
    /// One backend per address of the name, `ip:port` as its id.
    A,
}

impl std::fmt::Display for DiscoverConfig {
    /// How logs, the admin API and the status page name the source: `srv NAME`, `a NAME:PORT`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&source_label(self.kind, &self.dns, self.port))
    }
}

/// `srv NAME` or `a NAME:PORT`: one spelling of a source wherever it is shown.
pub(crate) fn source_label(kind: DiscoverKind, dns: &str, port: u16) -> String {
    match kind {
        DiscoverKind::Srv => format!("srv {dns}"),
        DiscoverKind::A => format!("a {dns}:{port}"),
    }
}

/// Whether `name` can be asked of DNS: dot-separated labels of letters, digits, `-` and `_`
/// (SRV names such as `_http._tcp.cache`), at most 253 characters, a final dot allowed.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The host name in a backend address (`host:port`), in lower case, a final dot kept (it
/// makes the name absolute); `None` for an IP address.
pub(crate) fn host_name(address: &str) -> Option<String> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    (!host.starts_with('[') && host.parse::<IpAddr>().is_err()).then(|| host.to_ascii_lowercase())
}
