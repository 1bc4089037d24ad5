//! TLS, on rustls with the *ring* crypto provider: what a pool's certificates are
//! ([`certs`]: PEM files loaded, checked and described), how a listener terminates TLS with
//! them ([`server`]: SNI choice, ALPN, protocol versions, why a handshake failed), and how
//! connections to backends are secured ([`client`]).
//!
//! *ring* rather than rustls' default aws-lc-rs: it builds with the C compiler alone, where
//! aws-lc-sys wants cmake (and on some targets Go or NASM) on the build machine.

pub(crate) mod certs;
pub(crate) mod client;
pub(crate) mod server;

pub(crate) use certs::{Certificate, CertificateError};
pub(crate) use client::UpstreamTls;
pub(crate) use server::{Acceptor, HandshakeFailure};

/// The crypto provider every TLS config of the process is built on.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
