//! One active health probe against one backend.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::config::Probe;
use crate::config::StatusRanges;
use crate::forward::upstream::{self, ConnectError};
use crate::state::backend::Backend;

const USER_AGENT: &str = concat!("shardgate-health/", env!("CARGO_PKG_VERSION"));

/// Why a probe failed. Shown in logs and, as text, in the admin API's last check.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// This process is short of file descriptors, ports or memory: says nothing about the
    /// backend, so the check does not count.
    #[error("connect: {0} (this process is short of resources)")]
    Local(#[source] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The configured path does not make a request (config validation lets few through).
    #[error("bad probe request: {0}")]
    BadRequest(#[source] http::Error),
    #[error("GET {path}: {source}")]
    Request {
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("GET {path} answered {status}, expected {expect}")]
    Status {
        path: String,
        status: u16,
        expect: StatusRanges,
    },
}

/// Probe `backend` once, within `timeout`, over a connection made as requests' are (TLS
/// included).
pub(crate) async fn probe(
    backend: &Backend,
    kind: &Probe,
    timeout: Duration,
) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, run(backend, kind))
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn run(backend: &Backend, kind: &Probe) -> Result<(), ProbeError> {
    let address = backend.address.as_str();
    let stream = upstream::open(backend).await.map_err(|e| match e {
        ConnectError::Local(e) => ProbeError::Local(e),
        ConnectError::Tls(e) => ProbeError::Tls(e),
        ConnectError::Io(e) => ProbeError::Connect(e),
        other => ProbeError::Connect(std::io::Error::other(other.to_string())),
    })?;
    let Probe::Http { path, expect } = kind else {
        return Ok(()); // tcp: connecting was the check (`None` never probes)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeError::Handshake)?;
    // The connection task ends with the probe: dropping the sender closes it.
    let conn = tokio::spawn(conn);
    let req = Request::get(path.as_str())
        .header(header::HOST, address)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::BadRequest)?;
    let result = match sender.send_request(req).await {
        Ok(resp) if expect.contains(resp.status().as_u16()) => Ok(()),
        Ok(resp) => Err(ProbeError::Status {
            path: path.clone(),
            status: resp.status().as_u16(),
            expect: expect.clone(),
        }),
        Err(source) => Err(ProbeError::Request {
            path: path.clone(),
            source,
        }),
    };
    conn.abort();
    result
}
