//! Raw config → checked [`Config`], collecting every problem rather than stopping at the first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;

use ipnet::IpNet;
use std::time::Duration;

mod discover;
mod health;
mod tls;

use super::raw::{RawAdmin, RawBackend, RawConfig, RawPool, S};
use super::*;

/// Whether validation reads the files a config names (certificates and keys), or only checks
/// the text: `shardgate route` and `diff` answer about the ring, on machines that may not hold
/// the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Files {
    Read,
    Skip,
}

pub(super) fn parse(text: &str, files: Files) -> Result<Config, Vec<Problem>> {
    let syntax = |e: toml::de::Error, path: String| {
        vec![Problem {
            path,
            location: e.span().map(|s| Location::of(text, s.start)),
            message: plain_words(e.message().trim_end()),
        }]
    };
    let document = toml::Deserializer::parse(text).map_err(|e| syntax(e, String::new()))?;
    // Through serde_path_to_error, so a value of the wrong type or a missing field is reported
    // with the config path it concerns, as every other problem is.
    let raw: RawConfig = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        // A spanned value's inner field is serde_spanned's business, not a config key.
        let path = match path.split_once(".$__serde_spanned") {
            Some((key, _)) => key.to_owned(),
            None if path == "." => String::new(),
            None => path,
        };
        syntax(e.into_inner(), path)
    })?;
    let mut v = Validator {
        text,
        files,
        problems: Vec::new(),
    };
    let config = v.config(raw);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        // File order reads best; problems without a position (missing sections) go last.
        v.problems
            .sort_by_key(|p| p.location.map_or((usize::MAX, 0), |l| (l.line, l.column)));
        Err(v.problems)
    }
}

/// serde's type names in the words the config reference uses: `expected i64` is
/// `expected an integer`.
fn plain_words(message: &str) -> String {
    // An integer too large for any field reaches serde as an i128 "of the wrong type", or
    // (from 2^63 to 2^64 - 1) as a u64 "of the wrong value" for an i64.
    for (prefix, end) in [
        ("invalid type: integer `", "` as i128"),
        ("invalid value: integer `", "`, expected i64"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((n, _)) = rest.split_once(end)
        {
            return format!("{n} is out of range");
        }
    }
    let mut out = message.to_owned();
    for (rust, plain) in [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a string", "expected a string (in quotes)"),
        ("expected a boolean", "expected true or false"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

pub(super) struct Validator<'t> {
    text: &'t str,
    files: Files,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    pub(super) fn problem(
        &mut self,
        path: impl Into<String>,
        span: Option<Range<usize>>,
        message: String,
    ) {
        self.problems.push(Problem {
            path: path.into(),
            location: span.map(|s| Location::of(self.text, s.start)),
            message,
        });
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let admin = self.admin(raw.admin.unwrap_or_default());
        let resolver = self.resolver(raw.resolver);
        let server_raw = raw.server.unwrap_or_default();
        let defaults = ServerConfig::default();
        let server = ServerConfig {
            shutdown_grace: self
                .duration("server.shutdown_grace", server_raw.shutdown_grace, true)
                .unwrap_or(defaults.shutdown_grace),
            worker_threads: self
                .int("server.worker_threads", server_raw.worker_threads, 0..=1024)
                .unwrap_or(0) as usize,
            worker_layout: self
                .one_of(
                    "server.worker_layout",
                    server_raw.worker_layout.as_ref(),
                    &[
                        (
                            "per-thread",
                            WorkerLayout::PerThread,
                            "a runtime and a listener per thread",
                        ),
                        (
                            "work-stealing",
                            WorkerLayout::WorkStealing,
                            "one shared runtime",
                        ),
                    ],
                )
                .unwrap_or(defaults.worker_layout),
            watch_config: server_raw
                .watch_config
                .map_or(defaults.watch_config, |w| *w.get_ref()),
            access_log: server_raw
                .access_log
                .map_or(defaults.access_log, |w| *w.get_ref()),
        };

        if raw.pools.is_empty() {
            self.problem(
                "pools",
                None,
                "no pools: add at least one [[pools]] table with backends or a discover source"
                    .into(),
            );
        }
        let mut pools = Vec::with_capacity(raw.pools.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listens: HashMap<SocketAddr, String> = HashMap::new();
        if admin.listen.port() != 0 {
            listens.insert(admin.listen, "admin.listen".into());
        }
        for (i, rp) in raw.pools.into_iter().enumerate() {
            let path = format!("pools[{i}]");
            let name_span = rp.name.span();
            let listen_span = rp.listen.span();
            let pool = self.pool(&path, rp);
            if let Some(first) = names.insert(pool.name.clone(), i) {
                self.problem(
                    format!("{path}.name"),
                    Some(name_span),
                    format!(
                        "pool name `{}` is already used by pools[{first}]",
                        pool.name
                    ),
                );
            }
            if pool.listen.port() != 0
                && let Some(other) = listens.insert(pool.listen, format!("{path}.listen"))
            {
                self.problem(
                    format!("{path}.listen"),
                    Some(listen_span),
                    format!("{} is already used by {other}", pool.listen),
                );
            }
            pools.push(pool);
        }
        Config {
            admin,
            server,
            resolver,
            pools,
        }
    }

    fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let mut admin = AdminConfig::default();
        if let Some(listen) = raw
            .listen
            .and_then(|l| self.socket_addr("admin.listen", &l))
        {
            admin.listen = listen;
        }
        for (i, host) in raw
            .allowed_hosts
            .into_iter()
            .flat_map(|h| h.into_inner())
            .enumerate()
        {
            let name = host.get_ref().trim().to_ascii_lowercase();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if valid {
                admin.allowed_hosts.push(name);
            } else {
                self.problem(
                    format!("admin.allowed_hosts[{i}]"),
                    Some(host.span()),
                    format!(
                        "`{}` is not a host name (no port, scheme or path), e.g. \"shardgate-admin.internal\"",
                        host.get_ref()
                    ),
                );
            }
        }
        if let Some(file) = raw.token_file {
            if file.get_ref().trim().is_empty() {
                self.problem(
                    "admin.token_file",
                    Some(file.span()),
                    "needs the path of a file holding the token".into(),
                );
            } else {
                let path = std::path::PathBuf::from(file.get_ref());
                if self.files == Files::Read {
                    match AdminToken::read(&path) {
                        Ok(token) => admin.token = Some(token),
                        Err(why) => self.problem("admin.token_file", Some(file.span()), why),
                    }
                }
                admin.token_file = Some(path);
            }
        }
        admin
    }

    fn pool(&mut self, path: &str, rp: RawPool) -> PoolConfig {
        let name = rp.name.get_ref().clone();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            self.problem(
                format!("{path}.name"),
                Some(rp.name.span()),
                format!("pool name `{name}` must be 1-64 characters of a-z, 0-9, _ and -"),
            );
        }
        let listen = self
            .socket_addr(&format!("{path}.listen"), &rp.listen)
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut pool = PoolConfig::new(&name, listen, Vec::new());

        if let Some(keys) = rp.key {
            if keys.get_ref().is_empty() {
                self.problem(
                    format!("{path}.key"),
                    Some(keys.span()),
                    "needs at least one key source, e.g. [\"path\"]".into(),
                );
            }
            pool.key.clear();
            for (k, source) in keys.into_inner().into_iter().enumerate() {
                match KeySource::parse(source.get_ref()) {
                    Ok(s) => pool.key.push(s),
                    Err(msg) => self.problem(format!("{path}.key[{k}]"), Some(source.span()), msg),
                }
            }
        }
        let missing_key = [
            ("any", MissingKey::Any, ""),
            ("reject", MissingKey::Reject, ""),
        ];
        if let Some(v) = self.one_of(
            &format!("{path}.missing_key"),
            rp.missing_key.as_ref(),
            &missing_key,
        ) {
            pool.missing_key = v;
        }
        let vnodes_span = rp.vnodes.as_ref().map(|v| v.span());
        let rings = [
            ("xxh3", Flavor::Xxh3, "shardgate's own"),
            ("nginx", Flavor::Nginx, "nginx's `hash … consistent`"),
        ];
        if let Some(r) = self.one_of(&format!("{path}.ring"), rp.ring.as_ref(), &rings) {
            pool.ring = r;
        }
        if pool.ring == Flavor::Nginx
            && let Some(v) = &rp.vnodes
            && *v.get_ref() != i64::from(NGINX_POINTS_PER_WEIGHT)
            && let Some(span) = &vnodes_span
        {
            self.problem(
                format!("{path}.vnodes"),
                Some(span.clone()),
                format!(
                    "nginx's ring has {NGINX_POINTS_PER_WEIGHT} points per unit of weight; \
                     remove `vnodes` (or set it to {NGINX_POINTS_PER_WEIGHT}), or set ring = \"xxh3\""
                ),
            );
        }
        if let Some(v) = self.int(&format!("{path}.vnodes"), rp.vnodes, 1..=65_536) {
            pool.vnodes = v as u32;
        }
        if let Some(f) = rp.balance_factor {
            let v = *f.get_ref();
            if v == 0.0 || (1.0..=10.0).contains(&v) {
                pool.balance_factor = v;
            } else {
                self.problem(
                    format!("{path}.balance_factor"),
                    Some(f.span()),
                    format!(
                        "{v} is out of range: 0 turns bounded loads off, else from 1.0 to 10 \
                         (1.25: a backend takes at most 25% more than its fair share of the \
                         requests in flight; HAProxy's hash-balance-factor 125 is 1.25 here)"
                    ),
                );
            }
        }
        if let Some(b) = rp.hot_keys {
            pool.hot_keys = *b.get_ref();
        }
        if let Some(b) = rp.expose_keys {
            pool.expose_keys = *b.get_ref();
        }
        let d = |v: &mut Self, field: &str, raw, default| {
            v.duration(&format!("{path}.{field}"), raw, false)
                .unwrap_or(default)
        };
        pool.connect_timeout = d(
            self,
            "connect_timeout",
            rp.connect_timeout,
            pool.connect_timeout,
        );
        pool.request_timeout = d(
            self,
            "request_timeout",
            rp.request_timeout,
            pool.request_timeout,
        );
        pool.header_read_timeout = d(
            self,
            "header_read_timeout",
            rp.header_read_timeout,
            pool.header_read_timeout,
        );
        pool.idle_timeout = d(self, "idle_timeout", rp.idle_timeout, pool.idle_timeout);
        if let Some(nets) = rp.trusted_proxies {
            let mut trusted = Vec::new();
            for (k, net) in nets.into_inner().into_iter().enumerate() {
                match parse_net(net.get_ref()) {
                    Some(n) => trusted.push(n),
                    None => self.problem(
                        format!("{path}.trusted_proxies[{k}]"),
                        Some(net.span()),
                        format!(
                            "`{}` is not an address or CIDR block, e.g. \"10.0.0.0/8\" or \"::1\"",
                            net.get_ref()
                        ),
                    ),
                }
            }
            pool.trusted_proxies = trusted.into();
        }
        pool.upstream_idle_timeout = d(
            self,
            "upstream_idle_timeout",
            rp.upstream_idle_timeout,
            pool.upstream_idle_timeout,
        );
        if let Some(n) = self.int(
            &format!("{path}.max_connections"),
            rp.max_connections,
            1..=1_000_000,
        ) {
            pool.max_connections = n as usize;
        }
        if let Some(n) = self.int(
            &format!("{path}.max_header_bytes"),
            rp.max_header_bytes,
            8192..=1 << 20,
        ) {
            pool.max_header_bytes = n as usize;
        }
        if let Some(n) = self.int(
            &format!("{path}.upstream_max_idle"),
            rp.upstream_max_idle,
            0..=100_000,
        ) {
            pool.upstream_max_idle = n as usize;
        }
        if let Some(n) = self.int(
            &format!("{path}.upstream_max_connections"),
            rp.upstream_max_connections,
            1..=1_000_000,
        ) {
            pool.upstream_max_connections = n as usize;
        }
        if let Some(n) = self.int(&format!("{path}.retries"), rp.retries, 0..=10) {
            pool.retries = n as u32;
        }
        if let Some(b) = rp.retry_idempotent {
            pool.retry_idempotent = *b.get_ref();
        }
        pool.health = self.health(path, rp.health);
        pool.tls = self.tls(path, rp.tls);
        pool.upstream_tls = self.upstream_tls(path, rp.upstream_tls);

        if rp.backends.is_empty() && rp.discover.is_empty() {
            self.problem(
                format!("{path}.backends"),
                Some(rp.name.span()),
                format!(
                    "pool `{name}` has no backends: add [[pools.backends]] entries or a \
                     [[pools.discover]] source"
                ),
            );
        }
        // Where each valid source was in the file, for naming the first of a duplicate.
        let mut at = Vec::new();
        for (d, rd) in rp.discover.into_iter().enumerate() {
            let dpath = format!("{path}.discover[{d}]");
            let span = rd.dns.span();
            if let Some(source) = self.discover(&dpath, rd) {
                // A final dot only makes the name absolute: the same source either way.
                let same = |s: &DiscoverConfig| {
                    (s.dns.trim_end_matches('.'), s.kind, s.port)
                        == (source.dns.trim_end_matches('.'), source.kind, source.port)
                };
                if let Some(first) = pool
                    .discover
                    .iter()
                    .zip(&at)
                    .find_map(|(s, i)| same(s).then_some(i))
                {
                    self.problem(
                        format!("{dpath}.dns"),
                        Some(span),
                        format!("`{source}` is already discovered by {path}.discover[{first}]"),
                    );
                }
                pool.discover.push(source);
                at.push(d);
            }
        }
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<String, usize> = HashMap::new();
        for (b, rb) in rp.backends.into_iter().enumerate() {
            let bpath = format!("{path}.backends[{b}]");
            let id_span = rb.id.as_ref().map_or(rb.address.span(), |i| i.span());
            let explicit_id = rb.id.is_some();
            let addr_span = rb.address.span();
            let backend = self.backend(&bpath, rb);
            // An id defaulted from a duplicate address is reported once, as the address.
            if let Some(first) = ids.insert(backend.id.clone(), b)
                && (explicit_id || pool.backends[first].address != backend.address)
            {
                self.problem(
                    format!("{bpath}.id"),
                    Some(id_span),
                    format!(
                        "backend id `{}` is already used by {path}.backends[{first}]",
                        backend.id
                    ),
                );
            }
            if let Some(first) = addresses.insert(backend.address.clone(), b) {
                self.problem(
                    format!("{bpath}.address"),
                    Some(addr_span),
                    format!(
                        "address {} is already used by {path}.backends[{first}]; \
                         raise that backend's weight instead",
                        backend.address
                    ),
                );
            }
            pool.backends.push(backend);
        }
        let points: u64 = pool
            .backends
            .iter()
            .map(|b| u64::from(b.weight) * u64::from(pool.points_per_weight()))
            .sum();
        if points > MAX_RING_POINTS {
            self.problem(
                format!("{path}.vnodes"),
                vnodes_span,
                format!(
                    "vnodes × total weight = {points} ring points, more than the {MAX_RING_POINTS} \
                     allowed: lower vnodes or the weights"
                ),
            );
        }
        pool
    }

    fn backend(&mut self, path: &str, rb: RawBackend) -> BackendConfig {
        let address = rb.address.get_ref().trim().to_owned();
        if let Err(msg) = check_backend_address(&address) {
            self.problem(format!("{path}.address"), Some(rb.address.span()), msg);
        }
        let id = match rb.id {
            Some(id) => {
                let text = id.get_ref().clone();
                if text.is_empty() || text.len() > 256 || text.chars().any(char::is_control) {
                    self.problem(
                        format!("{path}.id"),
                        Some(id.span()),
                        "backend id must be 1-256 printable characters".into(),
                    );
                } else if text == "none" {
                    // The metrics' backend="none" counts requests that reached no backend.
                    self.problem(
                        format!("{path}.id"),
                        Some(id.span()),
                        "`none` is reserved (the metrics count requests that reached no \
                         backend under it): choose another id"
                            .into(),
                    );
                }
                text
            }
            None => address.clone(),
        };
        let weight = self
            .int(&format!("{path}.weight"), rb.weight, 1..=MAX_WEIGHT)
            .unwrap_or(1) as u32;
        BackendConfig {
            id,
            address,
            weight,
        }
    }

    fn socket_addr(&mut self, path: &str, raw: &S<String>) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    path,
                    Some(raw.span()),
                    format!(
                        "`{}` is not an IP:port listen address, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// The value whose spelling `raw` is, from `choices` of (spelling, value, hint); a problem
    /// listing the spellings (and hints, where given) if it is none of them.
    pub(super) fn one_of<T: Copy>(
        &mut self,
        path: &str,
        raw: Option<&S<String>>,
        choices: &[(&str, T, &str)],
    ) -> Option<T> {
        let raw = raw?;
        let text = raw.get_ref().as_str();
        if let Some(&(_, value, _)) = choices.iter().find(|(spelling, _, _)| *spelling == text) {
            return Some(value);
        }
        let listed: Vec<String> = choices
            .iter()
            .map(|(spelling, _, hint)| match *hint {
                "" => format!("\"{spelling}\""),
                hint => format!("\"{spelling}\" ({hint})"),
            })
            .collect();
        self.problem(
            path,
            Some(raw.span()),
            format!("`{text}` is not one of {}", listed.join(", ")),
        );
        None
    }

    pub(super) fn int(
        &mut self,
        path: &str,
        raw: Option<S<i64>>,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let raw = raw?;
        let v = *raw.get_ref();
        if range.contains(&v) {
            Some(v)
        } else {
            self.problem(
                path,
                Some(raw.span()),
                format!(
                    "{v} is out of range: must be from {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        raw: Option<S<String>>,
        zero_ok: bool,
    ) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(path, Some(raw.span()), "must be longer than zero".into());
                None
            }
            Ok(d) if d > Duration::from_secs(86_400) => {
                self.problem(path, Some(raw.span()), "must be at most 24h".into());
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    path,
                    Some(raw.span()),
                    format!(
                        "`{}` is not a duration ({e}); write e.g. \"500ms\", \"2s\", \"1m\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }
}

/// A CIDR block, or one address (a block of one).
fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// `host:port` with a non-zero port; IPv6 literals in brackets.
fn check_backend_address(address: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "`{address}` is not a backend address ({why}); write host:port, e.g. \"10.0.0.5:8080\""
        ))
    };
    if address.contains("://") || address.contains('/') {
        return bad("no scheme or path");
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("missing port");
    };
    if host.is_empty() {
        return bad("missing host");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return bad("IPv6 addresses need brackets");
    }
    if host_name(address).is_some_and(|name| !is_dns_name(&name)) {
        return bad("the host is neither an IP address nor a DNS name");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("port must be 1-65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::health::StatusRanges;

    const GOOD: &str = r#"
[[pools]]
name = "cache"
listen = "127.0.0.1:8080"
key = ["header:x-shard-key", "path"]

[[pools.backends]]
address = "127.0.0.1:9001"

[[pools.backends]]
id = "b"
address = "cache-b.internal:9002"
weight = 3
"#;

    #[test]
    fn good_config_with_defaults() {
        let c = parse(GOOD, Files::Read).unwrap();
        assert_eq!(c.admin.listen, "127.0.0.1:9901".parse().unwrap());
        let p = &c.pools[0];
        assert_eq!(p.vnodes, DEFAULT_VNODES);
        assert_eq!(p.missing_key, MissingKey::Any);
        assert_eq!(p.key.len(), 2);
        assert_eq!(p.backends[0].id, "127.0.0.1:9001");
        assert_eq!(p.backends[0].weight, 1);
        assert_eq!(p.backends[1].weight, 3);
        assert_eq!(p.connect_timeout, Duration::from_secs(1));
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, Files::Read).unwrap_err()
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let p = problems("[[pools]]\nname = \"x\nlisten = 1\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].location.unwrap().line, 2);
    }

    #[test]
    fn unknown_field_is_refused_with_position() {
        let p = problems("[[pools]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nvnode = 3\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("unknown field `vnode`"), "{:?}", p[0]);
        assert_eq!(p[0].location.unwrap().line, 4);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_config_path_in_plain_words() {
        let pool = |extra: &str| {
            format!(
                "[[pools]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n{extra}\n\
                 [[pools.backends]]\naddress = \"127.0.0.1:9001\"\n"
            )
        };
        for (text, path, line, message) in [
            (
                pool("[pools.health]\nfall = \"two\""),
                "pools[0].health.fall",
                5,
                "invalid type: string \"two\", expected an integer",
            ),
            (
                pool("retries = 99999999999999999999"),
                "pools[0].retries",
                4,
                "99999999999999999999 is out of range",
            ),
            (
                pool("retries = 9223372036854775808"),
                "pools[0].retries",
                4,
                "9223372036854775808 is out of range",
            ),
            (
                pool("hot_keys = \"yes\""),
                "pools[0].hot_keys",
                4,
                "invalid type: string \"yes\", expected true or false",
            ),
            (
                pool("ring = 5"),
                "pools[0].ring",
                4,
                "invalid type: integer `5`, expected a string (in quotes)",
            ),
            (
                "[[pools]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[pools.backends]]\nid = \"x\"\n"
                    .to_owned(),
                "pools[0].backends[0]",
                4,
                "missing field `address`",
            ),
        ] {
            let p = problems(&text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!(
                (p[0].path.as_str(), p[0].message.as_str()),
                (path, message),
                "{text}"
            );
            assert_eq!(p[0].location.unwrap().line, line, "{text}");
        }
    }

    #[test]
    fn every_semantic_error_is_reported_at_once() {
        let text = r#"
[server]
shutdown_grace = "soon"

[[pools]]
name = "Cache!"
listen = "nowhere"
key = ["path", "cookie"]
vnodes = 0
connect_timeout = "0s"

[[pools.backends]]
id = "a"
address = "127.0.0.1:9001"
weight = 0

[[pools.backends]]
id = "a"
address = "127.0.0.1"

[[pools.backends]]
address = "127.0.0.1:9001"
weight = 100000

[[pools]]
name = "empty"
listen = "127.0.0.1:8081"
"#;
        let p = problems(text);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "server.shutdown_grace",
            "pools[0].name",
            "pools[0].listen",
            "pools[0].key[1]",
            "pools[0].vnodes",
            "pools[0].connect_timeout",
            "pools[0].backends[0].weight",
            "pools[0].backends[1].address",
            "pools[0].backends[1].id",
            "pools[0].backends[2].weight",
            "pools[0].backends[2].address",
            "pools[1].backends",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        assert!(p.iter().all(|p| p.location.is_some()), "{p:?}");
        let weight = p
            .iter()
            .find(|p| p.path == "pools[0].backends[0].weight")
            .unwrap();
        assert_eq!(weight.location.unwrap().line, 15);
    }

    #[test]
    fn a_reload_names_the_settings_it_changes() {
        let cfg = |top: &str, extra: &str| {
            let text = format!(
                "{top}\n[[pools]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n{extra}\n\
                 [[pools.backends]]\naddress = \"127.0.0.1:9001\"\n"
            );
            parse(&text, Files::Read).unwrap()
        };
        let old = cfg("", "");
        assert!(changed_settings(&old, &old).is_empty());
        let new = cfg(
            "[server]\nshutdown_grace = \"7s\"\naccess_log = true\nworker_threads = 3\n\
             [resolver]\ninterval = \"1m\"",
            "balance_factor = 1.25\nrequest_timeout = \"5s\"\nkey = [\"header:x-k\", \"path\"]\n\
             [pools.health]\nkind = \"http\"\nfall = 5\ninitial = \"down\"",
        );
        // worker_threads is not listed: it needs a restart, and the reload warns about that.
        assert_eq!(
            changed_settings(&old, &new),
            [
                "server: shutdown_grace 30s → 7s, access_log false → true",
                "resolver: interval 5s → 60s",
                "a: key [path] → [header:x-k, path], balance_factor 0 → 1.25, \
                 request_timeout 30s → 5s, health.kind tcp → http, health.path - → /health, \
                 health.expect - → 200-399, health.fall 3 → 5, health.initial up → down",
            ]
        );
        let http = |path: &str| {
            cfg(
                "",
                &format!("[pools.health]\nkind = \"http\"\npath = \"{path}\""),
            )
        };
        assert_eq!(
            changed_settings(&http("/a"), &http("/b")),
            ["a: health.path /a → /b"]
        );
    }

    #[test]
    fn a_rotated_admin_token_is_named_but_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let cfg = |token: &str| {
            std::fs::write(&file, token).unwrap();
            let text = format!(
                "[admin]\ntoken_file = \"{}\"\n[[pools]]\nname = \"a\"\n\
                 listen = \"127.0.0.1:1\"\n[[pools.backends]]\naddress = \"127.0.0.1:9001\"\n",
                file.display()
            );
            parse(&text, Files::Read).unwrap()
        };
        let (old, new) = (cfg("s3cret-1"), cfg("s3cret-2"));
        assert_eq!(changed_settings(&old, &new), ["admin: token rotated"]);
        assert!(!format!("{new:?}").contains("s3cret"));
    }

    #[test]
    fn sharding_settings_are_checked() {
        let pool = |extra: &str| {
            format!(
                "[[pools]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n{extra}\n\
                 [[pools.backends]]\naddress = \"127.0.0.1:9001\"\n"
            )
        };
        let ok = parse(
            &pool("ring = \"nginx\"\nvnodes = 160\nbalance_factor = 1.25\nexpose_keys = true"),
            Files::Read,
        )
        .unwrap();
        let p = &ok.pools[0];
        assert_eq!(
            (p.ring, p.balance_factor, p.expose_keys),
            (Flavor::Nginx, 1.25, true)
        );
        // An integer is a factor too; 0 is off.
        assert_eq!(
            parse(&pool("balance_factor = 2"), Files::Read)
                .unwrap()
                .pools[0]
                .balance_factor,
            2.0
        );
        assert_eq!(
            parse(&pool("balance_factor = 0"), Files::Read)
                .unwrap()
                .pools[0]
                .balance_factor,
            0.0
        );
        for (extra, path, line, says) in [
            (
                "ring = \"ketama\"",
                "pools[0].ring",
                4,
                "not one of \"xxh3\"",
            ),
            (
                "ring = \"nginx\"\nvnodes = 100",
                "pools[0].vnodes",
                5,
                "160 points",
            ),
            (
                "balance_factor = 0.5",
                "pools[0].balance_factor",
                4,
                "out of range",
            ),
            (
                "balance_factor = nan",
                "pools[0].balance_factor",
                4,
                "out of range",
            ),
        ] {
            let p = problems(&pool(extra));
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert_eq!(p[0].path, path);
            assert!(p[0].message.contains(says), "{extra}: {}", p[0].message);
            assert_eq!(p[0].location.unwrap().line, line, "{extra}");
        }
    }

    #[test]
    fn health_settings_are_checked_together() {
        let text = r#"
[[pools]]
name = "a"
listen = "127.0.0.1:1"
retries = 11

[pools.health]
kind = "tcp"
path = "/health"
interval = "1s"
timeout = "2s"
fall = 0
initial = "maybe"
all_down = "panic"

[[pools.backends]]
address = "127.0.0.1:2"
"#;
        let p = problems(text);
        let got: Vec<(&str, usize)> = p
            .iter()
            .map(|p| (p.path.as_str(), p.location.unwrap().line))
            .collect();
        assert_eq!(
            got,
            [
                ("pools[0].retries", 5),
                ("pools[0].health.path", 9),
                ("pools[0].health.interval", 10),
                ("pools[0].health.fall", 12),
                ("pools[0].health.initial", 13),
                ("pools[0].health.all_down", 14),
            ]
        );
        assert!(
            p[2].message.contains("must not be shorter than timeout"),
            "{:?}",
            p[2]
        );
        // With one of the two written, the problem is at that one and names the other's default.
        let health = |lines: &str| {
            let text = format!(
                "[[pools]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[pools.health]\n{lines}\n\
                 [[pools.backends]]\naddress = \"127.0.0.1:9001\"\n"
            );
            let p = problems(&text);
            assert_eq!(p.len(), 1, "{p:?}");
            (
                p[0].path.clone(),
                p[0].location.map(|l| l.line),
                p[0].message.clone(),
            )
        };
        assert_eq!(
            health("timeout = \"3s\""),
            (
                "pools[0].health.timeout".to_owned(),
                Some(5),
                "interval (2s, the default) must not be shorter than timeout (3s): lengthen \
                 the interval or shorten the timeout"
                    .to_owned()
            )
        );
        assert_eq!(
            health("interval = \"500ms\"").2,
            "interval (500ms) must not be shorter than timeout (1s, the default): lengthen the \
             interval or shorten the timeout"
        );

        let ok = parse(
            "[[pools]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[pools.health]\nkind = \"http\"\n\
             expect = \"200,204\"\n[[pools.backends]]\naddress = \"127.0.0.1:2\"\n",
            Files::Read,
        )
        .unwrap();
        let h = &ok.pools[0].health;
        assert_eq!(
            h.probe,
            Probe::Http {
                path: "/health".into(),
                expect: StatusRanges::parse("200,204").unwrap()
            }
        );
        assert_eq!((h.fall, h.rise, h.interval), (3, 2, Duration::from_secs(2)));
    }

    #[test]
    fn enum_settings_list_their_spellings() {
        let text = r#"
[[pools]]
name = "a"
listen = "127.0.0.1:1"
missing_key = "drop"
[pools.health]
kind = "icmp"
initial = "maybe"
all_down = "panic"
[[pools.backends]]
address = "127.0.0.1:2"
"#;
        let said: Vec<String> = problems(text)
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(
            said,
            [
                "pools[0].missing_key: `drop` is not one of \"any\", \"reject\"",
                "pools[0].health.kind: `icmp` is not one of \"http\", \"tcp\", \"none\"",
                "pools[0].health.initial: `maybe` is not one of \"up\" (optimistic), \"down\" (checked first)",
                "pools[0].health.all_down: `panic` is not one of \"reject\" (503), \"owner\" (fail open)",
            ]
        );
    }

    #[test]
    fn duplicate_pool_names_and_listens() {
        let text = r#"
[admin]
listen = "127.0.0.1:9000"
[[pools]]
name = "a"
listen = "127.0.0.1:9000"
[[pools.backends]]
address = "127.0.0.1:1"
[[pools]]
name = "a"
listen = "127.0.0.1:9000"
[[pools.backends]]
address = "127.0.0.1:1"
"#;
        let p = problems(text);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].message.contains("already used by admin.listen"));
        assert!(p[1].message.contains("already used by pools[0]"));
    }

    #[test]
    fn no_pools_is_an_error() {
        let p = problems("");
        assert_eq!(p[0].path, "pools");
    }

    #[test]
    fn ring_size_is_capped() {
        let text = r#"
[[pools]]
name = "a"
listen = "127.0.0.1:0"
vnodes = 65536
[[pools.backends]]
address = "127.0.0.1:1"
weight = 1000
"#;
        let p = problems(text);
        assert!(p[0].message.contains("ring points"), "{p:?}");
    }

    #[test]
    fn the_id_none_is_reserved() {
        let p = problems(
            "[[pools]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\n\
             [[pools.backends]]\nid = \"none\"\naddress = \"127.0.0.1:1\"\n",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "pools[0].backends[0].id");
        assert!(
            p[0].message.contains("`none` is reserved"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn backend_address_forms() {
        assert!(check_backend_address("10.0.0.1:80").is_ok());
        assert!(check_backend_address("[::1]:80").is_ok());
        assert!(check_backend_address("cache.svc:11211").is_ok());
        assert!(check_backend_address("::1:80").is_err());
        assert!(check_backend_address("http://x:80").is_err());
        assert!(check_backend_address("x:0").is_err());
        assert!(check_backend_address(":80").is_err());
    }
}
