//! TLS termination for a pool: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, the certificate
//! chosen by SNI (exact names, then `*.` wildcards one label deep, else the pool's default).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Certificate;

/// A pool's certificates and the acceptor built on them. A reload that changes any of them
/// builds a new one; connections already open keep the session they have.
pub(crate) struct Acceptor {
    pub(crate) default: Certificate,
    /// More certificates, each with the server names it is chosen for.
    pub(crate) sni: Vec<(Vec<String>, Certificate)>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl PartialEq for Acceptor {
    /// The same files, names and bytes: a reload changes nothing.
    fn eq(&self, other: &Acceptor) -> bool {
        let same = |a: &Certificate, b: &Certificate| {
            a.fingerprint == b.fingerprint && a.cert_file == b.cert_file && a.key_file == b.key_file
        };
        same(&self.default, &other.default)
            && self.sni.len() == other.sni.len()
            && self
                .sni
                .iter()
                .zip(&other.sni)
                .all(|((na, a), (nb, b))| na == nb && same(a, b))
    }
}

impl Acceptor {
    /// `sni` names are lower case, and each is either a host name or `*.` and a domain.
    pub(crate) fn new(default: Certificate, sni: Vec<(Vec<String>, Certificate)>) -> Acceptor {
        let resolver = Resolver::new(&default, &sni);
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Acceptor {
            default,
            sni,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }

    pub(crate) fn accept<IO>(&self, io: IO) -> tokio_rustls::Accept<IO>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.acceptor.accept(io)
    }

    /// Every certificate with the name its metrics and status line go by: `default`, or the
    /// first server name it is chosen for.
    pub(crate) fn certificates(&self) -> impl Iterator<Item = (&str, &Certificate)> {
        std::iter::once(("default", &self.default))
            .chain(self.sni.iter().map(|(names, c)| (names[0].as_str(), c)))
    }

    /// For the reload log: what changed shows as a different line.
    pub(crate) fn summary(&self) -> String {
        let mut out = self.default.summary();
        for (names, cert) in &self.sni {
            out.push_str(&format!(", SNI [{}]: {}", names.join(" "), cert.summary()));
        }
        out
    }
}

#[derive(Debug)]
struct Resolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the domain after the `*` (".api.example.com").
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Resolver {
    fn new(default: &Certificate, sni: &[(Vec<String>, Certificate)]) -> Resolver {
        let mut resolver = Resolver {
            default: default.key.clone(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (names, cert) in sni {
            for name in names {
                match name.strip_prefix('*') {
                    Some(domain) => resolver
                        .wildcard
                        .insert(domain.to_owned(), cert.key.clone()),
                    None => resolver.exact.insert(name.clone(), cert.key.clone()),
                };
            }
        }
        resolver
    }

    fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        // rustls hands the name over lower-cased and without a trailing dot.
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        name.find('.')
            .and_then(|dot| self.wildcard.get(&name[dot..]))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).clone())
    }
}

/// Why a TLS handshake did not complete (`shardgate_tls_handshake_errors_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// Not done within `header_read_timeout` of accept.
    Timeout,
    /// The client closed or reset the connection.
    Closed,
    /// Plain HTTP on the TLS port (answered with a 400 saying so).
    PlainHttp,
    /// The client refused the handshake with an alert (often: it does not trust our
    /// certificate).
    Alert,
    /// No TLS version, cipher suite or signature scheme in common.
    Incompatible,
    /// Not TLS, or TLS broken in transit.
    Malformed,
    Other,
}

impl HandshakeFailure {
    pub(crate) const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::PlainHttp,
        HandshakeFailure::Alert,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Malformed,
        HandshakeFailure::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::PlainHttp => "plain_http",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::Other => "other",
        }
    }

    /// Sort the error a handshake ended with.
    pub(crate) fn of(e: &std::io::Error) -> HandshakeFailure {
        use std::io::ErrorKind;
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match tls {
                rustls::Error::AlertReceived(_) => HandshakeFailure::Alert,
                rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                    HandshakeFailure::Incompatible
                }
                rustls::Error::InvalidMessage(_)
                | rustls::Error::InappropriateMessage { .. }
                | rustls::Error::InappropriateHandshakeMessage { .. }
                | rustls::Error::PeerMisbehaved(_)
                | rustls::Error::DecryptError => HandshakeFailure::Malformed,
                _ => HandshakeFailure::Other,
            };
        }
        match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => HandshakeFailure::Closed,
            ErrorKind::InvalidData => HandshakeFailure::Malformed,
            _ => HandshakeFailure::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = super::super::certs::testing::self_signed(names);
        let (cf, kf) = (dir.path().join("c"), dir.path().join("k"));
        std::fs::write(&cf, c).unwrap();
        std::fs::write(&kf, k).unwrap();
        super::super::certs::load(&cf, &kf).unwrap()
    }

    #[test]
    fn sni_picks_exact_names_then_one_label_wildcards_else_the_default() {
        let (default, api, www) = (cert(&["fleet"]), cert(&["api"]), cert(&["www"]));
        let sni = vec![
            (
                vec!["api.example.com".into(), "*.api.example.com".into()],
                api.clone(),
            ),
            (vec!["www.example.com".into()], www.clone()),
        ];
        let resolver = Resolver::new(&default, &sni);
        let is = |name: Option<&str>, want: &Certificate| {
            assert!(Arc::ptr_eq(resolver.choose(name), &want.key), "{name:?}");
        };
        is(Some("api.example.com"), &api);
        is(Some("eu.api.example.com"), &api);
        is(Some("a.eu.api.example.com"), &default);
        is(Some("www.example.com"), &www);
        is(Some("example.com"), &default);
        is(None, &default);
        let acceptor = Acceptor::new(default, sni);
        let names: Vec<&str> = acceptor.certificates().map(|(n, _)| n).collect();
        assert_eq!(names, ["default", "api.example.com", "www.example.com"]);
    }
}
