//! Who may use the admin listener. It can drain backends, so it must not be reachable from a
//! web page the operator happens to visit:
//! - a request from another site (`Origin` not this listener's own, or `Sec-Fetch-Site:
//!   cross-site / same-site`) gets 403;
//! - a `Host` that names some other site gets 403: DNS rebinding points an attacker's name at
//!   this address, and the browser then sends that name. Allowed are `localhost`, IP literals
//!   this listener can be reached on (loopback, its own address, any when it listens on all),
//!   and the names in `admin.allowed_hosts`;
//! - with `admin.token_file`, everything but `/healthz`, `/readyz` and the status page's static
//!   shell needs `Authorization: Bearer <token>` (401 otherwise).

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, header};

/// Why a request is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("forbidden: the Host header names another site")]
    ForeignHost,
    #[error("forbidden: cross-site request")]
    CrossSite,
    #[error("unauthorized: send Authorization: Bearer <admin token>")]
    Unauthorized,
}

/// What the checks compare against, from the admin config.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    /// The address the listener is bound to.
    pub(crate) listen: Option<SocketAddr>,
    /// Host names allowed besides localhost and IP literals, lower-case.
    pub(crate) allowed_hosts: Vec<String>,
    /// The bearer token, when one is required.
    pub(crate) token: Option<String>,
}

/// Paths anyone who passes the Host and cross-site checks may read without a token: the
/// Kubernetes probes, and the status page's shell (it holds no data; it asks for the token).
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/")
}

impl Policy {
    pub(crate) fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or(Refusal::ForeignHost)?;
        if !self.host_allowed(host) {
            return Err(Refusal::ForeignHost);
        }
        let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
        if matches!(site, Some(b"cross-site" | b"same-site")) {
            return Err(Refusal::CrossSite);
        }
        // The page's own origin: this Host, over http, or over https behind a TLS ingress.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.as_bytes();
            let own = origin
                .strip_prefix(b"http://")
                .or_else(|| origin.strip_prefix(b"https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host.as_bytes()));
            if !own {
                return Err(Refusal::CrossSite);
            }
        }
        match &self.token {
            Some(token) if !open_path(path) && !bearer_matches(headers, token) => {
                Err(Refusal::Unauthorized)
            }
            _ => Ok(()),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host);
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            let listen = self.listen.map(|a| a.ip());
            return ip.is_loopback()
                || listen.is_some_and(|l| l.is_unspecified() || l == ip.to_canonical());
        }
        self.allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// `example.com:9901` → `example.com`, `[::1]:9901` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// `Authorization: Bearer <token>` (the scheme in any case). The two are compared by their
/// 128-bit hashes, so the time taken says nothing about how much of the token, or of its
/// length, a guess got right.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) else {
        return false;
    };
    let Some(sent) = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| value[7..].trim_ascii())
    else {
        return false;
    };
    let digest = xxhash_rust::xxh3::xxh3_128;
    digest(sent) == digest(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn policy(listen: &str) -> Policy {
        Policy {
            listen: Some(listen.parse().unwrap()),
            allowed_hosts: vec!["admin.internal".into()],
            token: None,
        }
    }

    #[test]
    fn hosts_that_name_this_listener_pass_and_others_are_refused() {
        let p = policy("127.0.0.1:9901");
        let check = |host: &str| p.check("/metrics", &headers(&[("host", host)]));
        for ok in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LOCALHOST",
            "[::1]:9901",
            "admin.internal",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:9901",
            "10.0.0.5:9901",
            "127.0.0.1.evil.example",
        ] {
            assert_eq!(check(bad), Err(Refusal::ForeignHost), "{bad}");
        }
        assert_eq!(p.check("/", &HeaderMap::new()), Err(Refusal::ForeignHost));
        // Listening on every address: any IP literal names this listener.
        let all = policy("0.0.0.0:9901");
        assert_eq!(
            all.check("/", &headers(&[("host", "10.0.0.5:9901")])),
            Ok(())
        );
        assert_eq!(
            all.check("/", &headers(&[("host", "evil.example")])),
            Err(Refusal::ForeignHost)
        );
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let p = policy("127.0.0.1:9901");
        let with = |extra: (&'static str, &str)| {
            p.check(
                "/api/backends",
                &headers(&[("host", "127.0.0.1:9901"), extra]),
            )
        };
        assert_eq!(with(("origin", "http://127.0.0.1:9901")), Ok(()));
        assert_eq!(
            with(("origin", "https://127.0.0.1:9901")),
            Ok(()),
            "behind TLS"
        );
        assert_eq!(with(("sec-fetch-site", "same-origin")), Ok(()));
        assert_eq!(with(("sec-fetch-site", "none")), Ok(()));
        assert_eq!(
            with(("origin", "http://evil.example")),
            Err(Refusal::CrossSite)
        );
        assert_eq!(with(("origin", "null")), Err(Refusal::CrossSite));
        assert_eq!(
            with(("sec-fetch-site", "cross-site")),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            with(("sec-fetch-site", "same-site")),
            Err(Refusal::CrossSite)
        );
    }

    #[test]
    fn a_token_guards_everything_but_the_probes_and_the_page_shell() {
        let p = Policy {
            token: Some("s3cret".into()),
            ..policy("127.0.0.1:9901")
        };
        let host = ("host", "127.0.0.1:9901");
        for open in ["/healthz", "/readyz", "/"] {
            assert_eq!(p.check(open, &headers(&[host])), Ok(()), "{open}");
        }
        for path in ["/metrics", "/api/backends", "/api/backends/p/b/drain"] {
            assert_eq!(p.check(path, &headers(&[host])), Err(Refusal::Unauthorized));
            assert_eq!(
                p.check(path, &headers(&[host, ("authorization", "Bearer wrong!")])),
                Err(Refusal::Unauthorized)
            );
            assert_eq!(
                p.check(path, &headers(&[host, ("authorization", "Bearer s3cret")])),
                Ok(())
            );
            assert_eq!(
                p.check(path, &headers(&[host, ("authorization", "bearer s3cret")])),
                Ok(()),
                "the scheme is case-insensitive"
            );
            assert_eq!(
                p.check(path, &headers(&[host, ("authorization", "Basic s3cret")])),
                Err(Refusal::Unauthorized)
            );
        }
    }
}
