//! TLS to a pool's backends (`[pools.upstream_tls]`): which CAs are trusted (a PEM bundle, or
//! the system's roots), the name checked in the backend's certificate (and sent as SNI), and
//! an optional client certificate (mTLS). HTTP/1.1 is offered by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::{Certificate, CertificateError};

/// How a pool's connections to its backends are secured.
pub(crate) struct UpstreamTls {
    /// The CA bundle trusted; `None`: the system's roots.
    pub(crate) ca: Option<PathBuf>,
    /// The name checked and sent; `None`: the host of each backend's address.
    pub(crate) server_name: Option<String>,
    /// The client certificate shown to backends that ask for one.
    pub(crate) client: Option<Certificate>,
    /// Hash of the CA bundle's bytes (0 for the system's), for telling a change.
    ca_fingerprint: u64,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &UpstreamTls) -> bool {
        let client = |c: &Option<Certificate>| c.as_ref().map(|c| c.fingerprint);
        self.ca == other.ca
            && self.ca_fingerprint == other.ca_fingerprint
            && self.server_name == other.server_name
            && client(&self.client) == client(&other.client)
    }
}

impl UpstreamTls {
    /// Build it, reading the CA bundle in `ca` (or the system's roots).
    pub(crate) fn load(
        ca: Option<&Path>,
        server_name: Option<String>,
        client: Option<Certificate>,
    ) -> Result<UpstreamTls, CertificateError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut ca_fingerprint = 0;
        match ca {
            Some(file) => {
                let pem = super::certs::read_pem(file)?;
                ca_fingerprint = xxhash_rust::xxh3::xxh3_64(&pem);
                let no_cert = |why: String| CertificateError::NoCertificate {
                    file: file.to_owned(),
                    why,
                };
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| no_cert(super::certs::pem_problem(&e)))?;
                    roots.add(cert).map_err(|e| CertificateError::NotX509 {
                        file: file.to_owned(),
                        why: e.to_string(),
                    })?;
                }
                if roots.is_empty() {
                    return Err(no_cert("no CERTIFICATE block".into()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(CertificateError::NoSystemRoots);
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let mut config = match &client {
            Some(c) => builder
                .with_client_auth_cert(c.key.cert.clone(), c.private_key.clone_key())
                .map_err(|e| CertificateError::Unusable {
                    file: c.key_file.clone(),
                    why: e.to_string(),
                })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            ca: ca.map(Path::to_owned),
            server_name,
            client,
            ca_fingerprint,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Shake hands with the backend at `address` (`host:port`) over `tcp`.
    pub(crate) async fn connect(
        &self,
        address: &str,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .server_name
            .as_deref()
            .unwrap_or_else(|| host_of(address));
        let name = ServerName::try_from(name.to_owned()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{name}` is not a name to check a certificate for: {e}"),
            )
        })?;
        self.connector.connect(name, tcp).await
    }

    /// For the reload log: what changed shows as a different line.
    pub(crate) fn summary(&self) -> String {
        let ca = match &self.ca {
            Some(f) => format!("CA {} ({:08x})", f.display(), self.ca_fingerprint >> 32),
            None => "system CAs".to_owned(),
        };
        let name = self.server_name.as_deref().unwrap_or("each backend's host");
        match &self.client {
            Some(c) => format!("{ca}, name {name}, client certificate {}", c.summary()),
            None => format!("{ca}, name {name}"),
        }
    }
}

/// The host of `host:port` (brackets of an IPv6 literal removed).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_checked_is_the_addresss_host() {
        assert_eq!(host_of("cache-0.cache.svc:8443"), "cache-0.cache.svc");
        assert_eq!(host_of("10.0.0.7:443"), "10.0.0.7");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }
}
