//! `[resolver]` and `[[pools.discover]]` → [`ResolverConfig`] and [`DiscoverConfig`]s.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Validator;
use crate::config::MAX_WEIGHT;
use crate::config::discover::{DiscoverConfig, DiscoverKind, ResolverConfig, is_dns_name};
use crate::config::raw::{RawDiscover, RawResolver};

/// Faster than this, re-resolving is a flood on the DNS server, not freshness.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Validator<'_> {
    pub(super) fn resolver(&mut self, raw: Option<RawResolver>) -> ResolverConfig {
        let mut r = ResolverConfig::default();
        let Some(raw) = raw else { return r };
        for (i, ns) in raw
            .nameservers
            .into_iter()
            .flat_map(|n| n.into_inner())
            .enumerate()
        {
            let text = ns.get_ref().trim();
            // A bare IP means port 53, as in resolv.conf.
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(addr) if addr.port() != 0 => r.nameservers.push(addr),
                _ => self.problem(
                    format!("resolver.nameservers[{i}]"),
                    Some(ns.span()),
                    format!(
                        "`{text}` is not a DNS server address; write an IP, or IP:port, \
                         e.g. \"10.96.0.10:53\""
                    ),
                ),
            }
        }
        if let Some(d) = self.interval("resolver.interval", raw.interval) {
            r.interval = d;
        }
        if let Some(d) = self.duration("resolver.timeout", raw.timeout, false) {
            r.timeout = d;
        }
        r
    }

    pub(super) fn discover(&mut self, path: &str, raw: RawDiscover) -> Option<DiscoverConfig> {
        let dns = raw.dns.get_ref().trim().to_ascii_lowercase();
        let mut ok = true;
        if !is_dns_name(&dns) {
            ok = false;
            self.problem(
                format!("{path}.dns"),
                Some(raw.dns.span()),
                format!(
                    "`{dns}` is not a DNS name; write e.g. \
                     \"_http._tcp.cache.default.svc.cluster.local\""
                ),
            );
        }
        let kind = self
            .one_of(
                &format!("{path}.kind"),
                raw.kind.as_ref(),
                &[
                    (
                        "srv",
                        DiscoverKind::Srv,
                        "one backend per SRV target, named by it",
                    ),
                    ("a", DiscoverKind::A, "one backend per address, with `port`"),
                ],
            )
            .or(raw.kind.is_none().then_some(DiscoverKind::Srv));
        let port = match (kind, raw.port) {
            (Some(DiscoverKind::A), Some(p)) => self
                .int(&format!("{path}.port"), Some(p), 1..=65535)
                .map(|p| p as u16),
            (Some(DiscoverKind::A), None) => {
                self.problem(
                    format!("{path}.port"),
                    Some(raw.dns.span()),
                    "kind = \"a\" needs the backends' `port`".into(),
                );
                None
            }
            (Some(DiscoverKind::Srv), Some(p)) => {
                self.problem(
                    format!("{path}.port"),
                    Some(p.span()),
                    "SRV records carry their own port: remove `port`, or use kind = \"a\"".into(),
                );
                None
            }
            (_, _) => Some(0),
        };
        let interval = self.interval(&format!("{path}.interval"), raw.interval);
        let weight = self.int(&format!("{path}.weight"), raw.weight, 1..=MAX_WEIGHT);
        Some(DiscoverConfig {
            dns,
            kind: kind?,
            port: port?,
            interval: interval.unwrap_or(ResolverConfig::default().interval),
            weight: weight.unwrap_or(1) as u32,
        })
        .filter(|_| ok)
    }

    /// A re-resolve period: at least [`MIN_INTERVAL`].
    fn interval(
        &mut self,
        path: &str,
        raw: Option<crate::config::raw::S<String>>,
    ) -> Option<Duration> {
        let span = raw.as_ref().map(|r| r.span());
        let d = self.duration(path, raw, false)?;
        if d < MIN_INTERVAL {
            self.problem(
                path,
                span,
                format!("must be at least {MIN_INTERVAL:?}: more often floods the DNS server"),
            );
            return None;
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::{Files, parse};
    use crate::config::{DiscoverKind, Problem};
    use std::time::Duration;

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, Files::Skip).unwrap_err()
    }

    const POOL: &str = "[[pools]]\nname = \"cache\"\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn a_pool_may_only_discover_and_defaults_are_filled_in() {
        let text = format!(
            "[resolver]\nnameservers = [\"10.96.0.10\", \"127.0.0.1:5353\"]\n\n{POOL}\
             [[pools.discover]]\ndns = \"_HTTP._tcp.Cache.default.svc.cluster.local.\"\n\n\
             [[pools.discover]]\ndns = \"web\"\nkind = \"a\"\nport = 80\ninterval = \"1s\"\nweight = 3\n"
        );
        let c = parse(&text, Files::Skip).unwrap();
        assert_eq!(
            c.resolver.nameservers,
            [
                "10.96.0.10:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        assert_eq!(c.resolver.interval, Duration::from_secs(5));
        let [srv, a] = &c.pools[0].discover[..] else {
            panic!("two sources")
        };
        assert_eq!(srv.dns, "_http._tcp.cache.default.svc.cluster.local.");
        assert_eq!((srv.kind, srv.port, srv.weight), (DiscoverKind::Srv, 0, 1));
        assert_eq!(srv.interval, Duration::from_secs(5));
        assert_eq!((a.kind, a.port, a.weight), (DiscoverKind::A, 80, 3));
        assert!(c.pools[0].backends.is_empty());
    }

    #[test]
    fn every_bad_source_is_named_with_its_path() {
        let text = format!(
            "[resolver]\nnameservers = [\"dns.internal\"]\ninterval = \"10ms\"\n\n{POOL}\
             [[pools.discover]]\ndns = \"has space.svc\"\n\n\
             [[pools.discover]]\ndns = \"web\"\nkind = \"a\"\n\n\
             [[pools.discover]]\ndns = \"srv.svc\"\nport = 80\n\n\
             [[pools.discover]]\ndns = \"x\"\nkind = \"aaaa\"\n\n\
             [[pools.discover]]\ndns = \"y\"\ninterval = \"50ms\"\n\n\
             [[pools.discover]]\ndns = \"z\"\n\n[[pools.discover]]\ndns = \"Z.\"\n\n\
             [[pools.backends]]\naddress = \"bad_host!:80\"\n"
        );
        let p = problems(&text);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "resolver.nameservers[0]",
                "resolver.interval",
                "pools[0].discover[0].dns",
                "pools[0].discover[1].port",
                "pools[0].discover[2].port",
                "pools[0].discover[3].kind",
                "pools[0].discover[4].interval",
                "pools[0].discover[6].dns",
                "pools[0].backends[0].address",
            ],
            "{p:#?}"
        );
        assert!(
            p[3].message.contains("needs the backends' `port`"),
            "{}",
            p[3].message
        );
        assert!(
            p[4].message.contains("SRV records carry their own port"),
            "{}",
            p[4].message
        );
        assert!(
            p[7].message
                .contains("already discovered by pools[0].discover[5]"),
            "{}",
            p[7].message
        );
        assert!(
            p[8].message
                .contains("neither an IP address nor a DNS name"),
            "{}",
            p[8].message
        );
    }

    #[test]
    fn a_pool_with_neither_backends_nor_sources_is_refused() {
        let p = problems(POOL);
        assert_eq!(p[0].path, "pools[0].backends");
        assert!(
            p[0].message.contains("[[pools.discover]]"),
            "{}",
            p[0].message
        );
    }
}
