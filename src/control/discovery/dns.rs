//! DNS lookups, async on the runtime (hickory), each bounded by `resolver.timeout`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig as HickoryConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use crate::config::ResolverConfig;

/// An answer and how long it may be trusted (the shortest TTL in it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer<T> {
    pub(crate) records: T,
    pub(crate) ttl: Duration,
}

/// The most records one answer may bring: more is a misconfigured or hostile server.
pub(crate) const MAX_RECORDS: usize = 1000;

pub(crate) struct Dns {
    /// `None`: no DNS servers could be configured (why: `broken`); every lookup fails.
    resolver: Option<TokioResolver>,
    broken: String,
    timeout: Duration,
    /// Who is asked, for error messages: `127.0.0.1:5353`, or `the system's DNS servers`.
    servers: String,
}

impl Dns {
    /// A resolver for `config`: its `nameservers`, else the system's (`/etc/resolv.conf`, its
    /// search domains and `ndots` included, as Kubernetes pods rely on). Without servers it
    /// still builds, and each lookup says why it cannot be made.
    pub(crate) fn new(config: &ResolverConfig) -> Dns {
        let provider = TokioRuntimeProvider::default();
        let builder = if config.nameservers.is_empty() {
            Resolver::builder(provider).map_err(|e| {
                format!("cannot read the system's DNS settings ({e}); set [resolver] nameservers")
            })
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            Ok(Resolver::builder_with_config(
                HickoryConfig::from_name_servers(servers),
                provider,
            ))
        };
        let resolver = builder.and_then(|mut b| {
            let opts = b.options_mut();
            opts.attempts = 2;
            opts.timeout = config.timeout / 2;
            // Every lookup is a periodic refresh that wants the server's current answer; the
            // TTL it carries sets when to ask again.
            opts.cache_size = 0;
            b.build().map_err(|e| format!("cannot set up DNS: {e}"))
        });
        let servers = match config.nameservers.as_slice() {
            [] => "the system's DNS servers".to_owned(),
            list => list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        match resolver {
            Ok(r) => Dns {
                resolver: Some(r),
                broken: String::new(),
                timeout: config.timeout,
                servers,
            },
            Err(why) => {
                tracing::error!("{why}");
                Dns {
                    resolver: None,
                    broken: why,
                    timeout: config.timeout,
                    servers,
                }
            }
        }
    }

    fn no_answer(&self) -> String {
        format!("no answer in {:?} from {}", self.timeout, self.servers)
    }

    fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver.as_ref().ok_or_else(|| self.broken.clone())
    }

    /// The addresses of `name`, sorted. No address, or more than [`MAX_RECORDS`], is an
    /// error.
    pub(crate) async fn ips(&self, name: &str) -> Result<Answer<Vec<IpAddr>>, String> {
        let resolver = self.resolver()?;
        let lookup = tokio::time::timeout(self.timeout, resolver.lookup_ip(name))
            .await
            .map_err(|_| self.no_answer())?
            .map_err(|e| readable(&e, name))?;
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort_unstable();
        ips.dedup();
        match ips.len() {
            0 => Err("no addresses in the answer".into()),
            n if n > MAX_RECORDS => {
                Err(format!("{n} addresses, more than the {MAX_RECORDS} taken"))
            }
            _ => Ok(Answer {
                ttl: ttl_of(lookup.valid_until()),
                records: ips,
            }),
        }
    }

    /// The SRV targets of `name`, sorted, without the "." that says "no service", and the
    /// addresses the answer's additional section gives for them (DNS servers such as
    /// Kubernetes' include them, which saves a lookup per target). None at all is an error.
    pub(crate) async fn srv(&self, name: &str) -> Result<Answer<Srv>, String> {
        let resolver = self.resolver()?;
        let lookup = tokio::time::timeout(self.timeout, resolver.srv_lookup(name))
            .await
            .map_err(|_| self.no_answer())?
            .map_err(|e| readable(&e, name))?;
        let mut targets: Vec<(String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) if !srv.target.is_root() && srv.port != 0 => {
                    Some((srv.target.to_ascii().to_ascii_lowercase(), srv.port))
                }
                _ => None,
            })
            .collect();
        targets.sort_unstable();
        targets.dedup();
        if targets.len() > MAX_RECORDS {
            return Err(format!(
                "{} SRV records, more than the {MAX_RECORDS} taken",
                targets.len()
            ));
        }
        if targets.is_empty() {
            return Err("no SRV targets in the answer".into());
        }
        let mut ips: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for r in lookup.additionals() {
            if let Some(ip) = r.data.ip_addr() {
                ips.entry(r.name.to_ascii().to_ascii_lowercase())
                    .or_default()
                    .push(ip);
            }
        }
        Ok(Answer {
            ttl: ttl_of(lookup.valid_until()),
            records: Srv { targets, ips },
        })
    }
}

/// An SRV answer: (target, port) per record, targets as absolute names (`cache-0.cache.`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Srv {
    pub(crate) targets: Vec<(String, u16)>,
    /// Target → its addresses, where the answer brought them.
    pub(crate) ips: HashMap<String, Vec<IpAddr>>,
}

/// What went wrong, said for a log line: hickory's text for "no records" is a debug dump of
/// the query.
fn readable(e: &NetError, name: &str) -> String {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.response_code {
            ResponseCode::NXDomain => format!("{name} does not exist (NXDOMAIN)"),
            code => format!("no {} records for {name} ({code})", none.query.query_type()),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => {
            let code = match code {
                ResponseCode::ServFail => "SERVFAIL",
                ResponseCode::Refused => "REFUSED",
                ResponseCode::FormErr => "FORMERR",
                ResponseCode::NotImp => "NOTIMP",
                code => code.to_str(),
            };
            format!("the DNS server answered {code} for {name}")
        }
        e => e.to_string(),
    }
}

fn ttl_of(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}
