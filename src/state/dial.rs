//! Where connections to a backend go. An IP address is used as written; a host name is looked
//! up in the background (`control::discovery`) and its last good answer kept here, so a
//! connect never waits on DNS and a DNS outage does not take a backend away.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The last good answer for each host name, the control side's cache: a backend made by a
/// reload starts from it instead of from nothing.
pub(crate) type Hosts = HashMap<String, Arc<[IpAddr]>>;

#[derive(Debug)]
pub(crate) struct Dial {
    /// The address's host name; `None` for an IP address.
    host: Option<String>,
    port: u16,
    /// What to try, in order: sorted, so that DNS servers that rotate their answers do not
    /// look like a change.
    addrs: ArcSwap<Vec<SocketAddr>>,
}

impl Dial {
    /// `address` is `host:port`, `ip:port` or `[v6]:port` (checked by config validation).
    pub(crate) fn new(address: &str, hosts: &Hosts) -> Dial {
        let port = address
            .rsplit_once(':')
            .map_or(0, |(_, p)| p.parse().unwrap_or(0));
        let dial = Dial {
            port,
            addrs: ArcSwap::default(),
            host: crate::config::host_name(address),
        };
        match dial.host() {
            Some(host) => {
                if let Some(ips) = hosts.get(host) {
                    dial.update(ips);
                }
            }
            None => {
                let ip = address.rsplit_once(':').map_or(address, |(h, _)| h);
                if let Ok(ip) = ip.trim_start_matches('[').trim_end_matches(']').parse() {
                    dial.update(&[ip]);
                }
            }
        }
        dial
    }

    /// The host name to look up, if the address has one.
    pub(crate) fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The addresses to connect to; empty while a host name has never been resolved.
    pub(crate) fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// Take a new answer for the host name. True when the addresses changed.
    pub(crate) fn update(&self, ips: &[IpAddr]) -> bool {
        let mut addrs: Vec<SocketAddr> = ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        if **self.addrs.load() == addrs {
            return false;
        }
        self.addrs.store(Arc::new(addrs));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        let none = Hosts::new();
        let v4 = Dial::new("10.0.0.1:80", &none);
        assert_eq!(v4.host(), None);
        assert_eq!(*v4.addrs(), vec!["10.0.0.1:80".parse().unwrap()]);
        let v6 = Dial::new("[::1]:8080", &none);
        assert_eq!(*v6.addrs(), vec!["[::1]:8080".parse().unwrap()]);

        let name = Dial::new("Cache-0.cache.:8080", &none);
        assert_eq!(name.host(), Some("cache-0.cache."));
        assert!(name.addrs().is_empty(), "nothing known yet");
        let ips: Arc<[IpAddr]> =
            vec!["10.0.0.9".parse().unwrap(), "10.0.0.2".parse().unwrap()].into();
        assert!(name.update(&ips));
        let sorted: Vec<SocketAddr> = vec![
            "10.0.0.2:8080".parse().unwrap(),
            "10.0.0.9:8080".parse().unwrap(),
        ];
        assert_eq!(*name.addrs(), sorted);
        // The same set in another order is no change.
        let rotated: Vec<IpAddr> = ips.iter().rev().copied().collect();
        assert!(!name.update(&rotated));

        let known = Hosts::from([("cache-0.cache".to_owned(), ips)]);
        assert_eq!(*Dial::new("cache-0.cache:8080", &known).addrs(), sorted);
    }
}
