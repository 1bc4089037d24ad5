//! Config files for the proxy under test, built with typed setters and rendered as TOML, so a
//! test says `pool("cache", &bs).retries(1)` instead of splicing text into a file. Values are
//! not checked here: a test may build an invalid config on purpose (`vnodes(0)`) to see it
//! refused.

use std::time::Duration;

use super::TestBackend;

/// `[pools.health] kind`.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    Http,
    Tcp,
    None,
}

/// `pools[].missing_key`.
#[derive(Clone, Copy, Debug)]
pub enum MissingKey {
    Any,
    Reject,
}

/// `[pools.health] all_down`.
#[derive(Clone, Copy, Debug)]
pub enum AllDown {
    Reject,
    Owner,
}

/// A whole config file: `[admin]`, `[server]` and the pools.
#[derive(Clone, Debug)]
pub struct ConfigToml {
    admin_listen: String,
    admin_allowed_hosts: Option<Vec<String>>,
    admin_token_file: Option<String>,
    shutdown_grace: Option<Duration>,
    worker_threads: Option<i64>,
    worker_layout: Option<String>,
    watch_config: Option<bool>,
    access_log: Option<bool>,
    nameservers: Option<Vec<String>>,
    resolver_interval: Option<Duration>,
    pools: Vec<PoolToml>,
}

/// One `[[pools]]` table.
#[derive(Clone, Debug)]
pub struct PoolToml {
    name: String,
    listen: String,
    key: Option<Vec<String>>,
    missing_key: Option<MissingKey>,
    vnodes: Option<i64>,
    ring: Option<String>,
    balance_factor: Option<f64>,
    hot_keys: Option<bool>,
    expose_keys: Option<bool>,
    retries: Option<i64>,
    retry_idempotent: Option<bool>,
    request_timeout: Option<Duration>,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    trusted_proxies: Option<Vec<String>>,
    upstream_max_idle: Option<i64>,
    upstream_max_connections: Option<i64>,
    max_header_bytes: Option<i64>,
    max_connections: Option<i64>,
    health: Option<HealthToml>,
    tls: Option<TlsToml>,
    backends: Vec<(String, String, Option<i64>)>,
    /// `[[pools.discover]]`: (dns, kind, port for kind "a", interval).
    discover: Vec<(String, &'static str, Option<u16>, Duration)>,
}

/// A `[pools.tls]` table: the default pair, then `[[pools.tls.sni]]` entries.
#[derive(Clone, Debug)]
pub struct TlsToml {
    cert: String,
    key: String,
    sni: Vec<(Vec<String>, String, String)>,
}

/// TLS with the pair in `cert` and `key` (paths).
pub fn tls(cert: &std::path::Path, key: &std::path::Path) -> TlsToml {
    TlsToml {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        sni: Vec::new(),
    }
}

impl TlsToml {
    pub fn sni(mut self, names: &[&str], cert: &std::path::Path, key: &std::path::Path) -> Self {
        let names = names.iter().map(|n| (*n).to_owned()).collect();
        self.sni
            .push((names, cert.display().to_string(), key.display().to_string()));
        self
    }
}

/// A `[pools.health]` table.
#[derive(Clone, Debug)]
pub struct HealthToml {
    kind: Check,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    fall: Option<i64>,
    rise: Option<i64>,
    passive_failures: Option<i64>,
    all_down: Option<AllDown>,
}

/// A pool on 127.0.0.1:0 in front of `backends` (their ids and addresses), defaults otherwise.
pub fn pool(name: &str, backends: &[&TestBackend]) -> PoolToml {
    PoolToml {
        name: name.to_owned(),
        listen: "127.0.0.1:0".to_owned(),
        key: None,
        missing_key: None,
        vnodes: None,
        ring: None,
        balance_factor: None,
        hot_keys: None,
        expose_keys: None,
        retries: None,
        retry_idempotent: None,
        request_timeout: None,
        header_read_timeout: None,
        idle_timeout: None,
        connect_timeout: None,
        trusted_proxies: None,
        upstream_max_idle: None,
        upstream_max_connections: None,
        max_header_bytes: None,
        max_connections: None,
        health: None,
        tls: None,
        backends: backends
            .iter()
            .map(|b| (b.id.clone(), b.addr.to_string(), None))
            .collect(),
        discover: Vec::new(),
    }
}

/// A health section with `kind` and defaults otherwise.
pub fn health(kind: Check) -> HealthToml {
    HealthToml {
        kind,
        interval: None,
        timeout: None,
        fall: None,
        rise: None,
        passive_failures: None,
        all_down: None,
    }
}

impl ConfigToml {
    /// No pools yet; the admin listener on 127.0.0.1:0.
    pub fn new() -> ConfigToml {
        ConfigToml {
            admin_listen: "127.0.0.1:0".to_owned(),
            admin_allowed_hosts: None,
            admin_token_file: None,
            shutdown_grace: None,
            worker_threads: None,
            worker_layout: None,
            watch_config: None,
            access_log: None,
            nameservers: None,
            resolver_interval: None,
            pools: Vec::new(),
        }
    }

    /// `[resolver]`: ask only `server`, and look backend host names up every `interval`.
    pub fn resolver(mut self, server: std::net::SocketAddr, interval: Duration) -> Self {
        self.nameservers = Some(vec![server.to_string()]);
        self.resolver_interval = Some(interval);
        self
    }

    pub fn pool(mut self, pool: PoolToml) -> Self {
        self.pools.push(pool);
        self
    }

    pub fn admin_listen(mut self, addr: impl ToString) -> Self {
        self.admin_listen = addr.to_string();
        self
    }

    pub fn admin_allowed_hosts(mut self, hosts: &[&str]) -> Self {
        self.admin_allowed_hosts = Some(hosts.iter().map(|h| h.to_string()).collect());
        self
    }

    pub fn admin_token_file(mut self, path: &std::path::Path) -> Self {
        self.admin_token_file = Some(path.display().to_string());
        self
    }

    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = Some(d);
        self
    }

    pub fn worker_threads(mut self, n: i64) -> Self {
        self.worker_threads = Some(n);
        self
    }

    pub fn worker_layout(mut self, layout: &str) -> Self {
        self.worker_layout = Some(layout.to_owned());
        self
    }

    pub fn watch_config(mut self, on: bool) -> Self {
        self.watch_config = Some(on);
        self
    }

    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = Some(on);
        self
    }

    pub fn toml(&self) -> String {
        let mut t = String::new();
        t.push_str("[admin]\n");
        line(&mut t, "listen", Some(str(&self.admin_listen)));
        let hosts = self.admin_allowed_hosts.as_ref().map(|h| list(h));
        line(&mut t, "allowed_hosts", hosts);
        line(
            &mut t,
            "token_file",
            self.admin_token_file.as_deref().map(str),
        );
        let server = [
            ("shutdown_grace", self.shutdown_grace.map(duration)),
            ("worker_threads", self.worker_threads.map(|n| n.to_string())),
            ("worker_layout", self.worker_layout.as_deref().map(str)),
            ("watch_config", self.watch_config.map(|b| b.to_string())),
            ("access_log", self.access_log.map(|b| b.to_string())),
        ];
        if server.iter().any(|(_, v)| v.is_some()) {
            t.push_str("\n[server]\n");
            for (k, v) in server {
                line(&mut t, k, v);
            }
        }
        if let Some(servers) = &self.nameservers {
            t.push_str("\n[resolver]\n");
            line(&mut t, "nameservers", Some(list(servers)));
            line(&mut t, "interval", self.resolver_interval.map(duration));
        }
        for p in &self.pools {
            p.render(&mut t);
        }
        t
    }
}

impl Default for ConfigToml {
    fn default() -> Self {
        ConfigToml::new()
    }
}

impl PoolToml {
    /// This pool alone in a config file with the defaults of [`ConfigToml::new`].
    pub fn toml(&self) -> String {
        ConfigToml::new().pool(self.clone()).toml()
    }

    pub fn listen(mut self, addr: impl ToString) -> Self {
        self.listen = addr.to_string();
        self
    }

    pub fn key(mut self, sources: &[&str]) -> Self {
        self.key = Some(sources.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn missing_key(mut self, what: MissingKey) -> Self {
        self.missing_key = Some(what);
        self
    }

    pub fn vnodes(mut self, n: i64) -> Self {
        self.vnodes = Some(n);
        self
    }

    /// `ring = "xxh3"` or `"nginx"`.
    pub fn ring(mut self, flavor: &str) -> Self {
        self.ring = Some(flavor.to_owned());
        self
    }

    pub fn balance_factor(mut self, f: f64) -> Self {
        self.balance_factor = Some(f);
        self
    }

    pub fn hot_keys(mut self, on: bool) -> Self {
        self.hot_keys = Some(on);
        self
    }

    pub fn expose_keys(mut self, on: bool) -> Self {
        self.expose_keys = Some(on);
        self
    }

    pub fn retries(mut self, n: i64) -> Self {
        self.retries = Some(n);
        self
    }

    pub fn retry_idempotent(mut self, on: bool) -> Self {
        self.retry_idempotent = Some(on);
        self
    }

    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = Some(d);
        self
    }

    pub fn header_read_timeout(mut self, d: Duration) -> Self {
        self.header_read_timeout = Some(d);
        self
    }

    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    pub fn trusted_proxies(mut self, nets: &[&str]) -> Self {
        self.trusted_proxies = Some(nets.iter().map(|n| n.to_string()).collect());
        self
    }

    pub fn upstream_max_idle(mut self, n: i64) -> Self {
        self.upstream_max_idle = Some(n);
        self
    }

    pub fn upstream_max_connections(mut self, n: i64) -> Self {
        self.upstream_max_connections = Some(n);
        self
    }

    pub fn max_header_bytes(mut self, n: i64) -> Self {
        self.max_header_bytes = Some(n);
        self
    }

    pub fn max_connections(mut self, n: i64) -> Self {
        self.max_connections = Some(n);
        self
    }

    pub fn health(mut self, h: HealthToml) -> Self {
        self.health = Some(h);
        self
    }

    /// One more backend, by id and address.
    pub fn tls(mut self, tls: TlsToml) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn backend(mut self, id: &str, address: impl ToString) -> Self {
        self.backends
            .push((id.to_owned(), address.to_string(), None));
        self
    }

    /// Backends from the SRV records of `dns`, looked up every `interval`.
    pub fn discover_srv(mut self, dns: &str, interval: Duration) -> Self {
        self.discover.push((dns.to_owned(), "srv", None, interval));
        self
    }

    /// Backends from the A records of `dns`, on `port`, looked up every `interval`.
    pub fn discover_a(mut self, dns: &str, port: u16, interval: Duration) -> Self {
        self.discover
            .push((dns.to_owned(), "a", Some(port), interval));
        self
    }

    /// No listed backends (a pool that only discovers).
    pub fn no_backends(mut self) -> Self {
        self.backends.clear();
        self
    }

    /// Set the weight of backend `id`.
    pub fn weight(mut self, id: &str, weight: i64) -> Self {
        let b = self
            .backends
            .iter_mut()
            .find(|(b, _, _)| b == id)
            .unwrap_or_else(|| panic!("no backend {id} in pool {}", self.name));
        b.2 = Some(weight);
        self
    }

    fn render(&self, t: &mut String) {
        t.push_str("\n[[pools]]\n");
        line(t, "name", Some(str(&self.name)));
        line(t, "listen", Some(str(&self.listen)));
        let key = self.key.as_ref().map(|k| {
            let quoted: Vec<String> = k.iter().map(|s| str(s)).collect();
            format!("[{}]", quoted.join(", "))
        });
        line(t, "key", key);
        let missing_key = self.missing_key.map(|m| match m {
            MissingKey::Any => "any",
            MissingKey::Reject => "reject",
        });
        line(t, "missing_key", missing_key.map(str));
        line(t, "vnodes", self.vnodes.map(|n| n.to_string()));
        line(t, "ring", self.ring.as_deref().map(str));
        line(
            t,
            "balance_factor",
            self.balance_factor.map(|f| format!("{f:?}")),
        );
        line(t, "hot_keys", self.hot_keys.map(|b| b.to_string()));
        line(t, "expose_keys", self.expose_keys.map(|b| b.to_string()));
        line(t, "retries", self.retries.map(|n| n.to_string()));
        line(
            t,
            "retry_idempotent",
            self.retry_idempotent.map(|b| b.to_string()),
        );
        line(t, "request_timeout", self.request_timeout.map(duration));
        line(
            t,
            "header_read_timeout",
            self.header_read_timeout.map(duration),
        );
        line(t, "idle_timeout", self.idle_timeout.map(duration));
        line(t, "connect_timeout", self.connect_timeout.map(duration));
        let nets = self.trusted_proxies.as_ref().map(|k| {
            let quoted: Vec<String> = k.iter().map(|s| str(s)).collect();
            format!("[{}]", quoted.join(", "))
        });
        line(t, "trusted_proxies", nets);
        line(
            t,
            "upstream_max_idle",
            self.upstream_max_idle.map(|n| n.to_string()),
        );
        line(
            t,
            "upstream_max_connections",
            self.upstream_max_connections.map(|n| n.to_string()),
        );
        line(
            t,
            "max_header_bytes",
            self.max_header_bytes.map(|n| n.to_string()),
        );
        line(
            t,
            "max_connections",
            self.max_connections.map(|n| n.to_string()),
        );
        if let Some(h) = &self.health {
            t.push_str("\n[pools.health]\n");
            let kind = match h.kind {
                Check::Http => "http",
                Check::Tcp => "tcp",
                Check::None => "none",
            };
            line(t, "kind", Some(str(kind)));
            line(t, "interval", h.interval.map(duration));
            line(t, "timeout", h.timeout.map(duration));
            line(t, "fall", h.fall.map(|n| n.to_string()));
            line(t, "rise", h.rise.map(|n| n.to_string()));
            line(
                t,
                "passive_failures",
                h.passive_failures.map(|n| n.to_string()),
            );
            let all_down = h.all_down.map(|a| match a {
                AllDown::Reject => "reject",
                AllDown::Owner => "owner",
            });
            line(t, "all_down", all_down.map(str));
        }
        if let Some(tls) = &self.tls {
            t.push_str("\n[pools.tls]\n");
            line(t, "cert", Some(str(&tls.cert)));
            line(t, "key", Some(str(&tls.key)));
            for (names, cert, key) in &tls.sni {
                t.push_str("\n[[pools.tls.sni]]\n");
                let quoted: Vec<String> = names.iter().map(|s| str(s)).collect();
                line(t, "names", Some(format!("[{}]", quoted.join(", "))));
                line(t, "cert", Some(str(cert)));
                line(t, "key", Some(str(key)));
            }
        }
        for (id, address, weight) in &self.backends {
            t.push_str("\n[[pools.backends]]\n");
            line(t, "id", Some(str(id)));
            line(t, "address", Some(str(address)));
            line(t, "weight", weight.map(|w| w.to_string()));
        }
        for (dns, kind, port, interval) in &self.discover {
            t.push_str("\n[[pools.discover]]\n");
            line(t, "dns", Some(str(dns)));
            line(t, "kind", Some(str(kind)));
            line(t, "port", port.map(|p| p.to_string()));
            line(t, "interval", Some(duration(*interval)));
        }
    }
}

impl HealthToml {
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = Some(d);
        self
    }

    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    pub fn fall(mut self, n: i64) -> Self {
        self.fall = Some(n);
        self
    }

    pub fn rise(mut self, n: i64) -> Self {
        self.rise = Some(n);
        self
    }

    pub fn passive_failures(mut self, n: i64) -> Self {
        self.passive_failures = Some(n);
        self
    }

    pub fn all_down(mut self, what: AllDown) -> Self {
        self.all_down = Some(what);
        self
    }
}

fn line(t: &mut String, key: &str, value: Option<String>) {
    if let Some(v) = value {
        t.push_str(&format!("{key} = {v}\n"));
    }
}

/// A TOML array of strings.
fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A TOML string literal.
fn str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn duration(d: Duration) -> String {
    str(&humantime::format_duration(d).to_string())
}
