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
use crate::state::stream::Upstream;

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
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::time::timeout_at(deadline, run(backend, kind, deadline))
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// The most a TCP check over TLS waits after the handshake for the backend to refuse it: a
/// refusal comes one round trip after our Finished, well within this in a fleet's network.
const TLS_SETTLE: Duration = Duration::from_millis(50);

async fn run(
    backend: &Backend,
    kind: &Probe,
    deadline: tokio::time::Instant,
) -> Result<(), ProbeError> {
    let address = backend.address.as_str();
    let mut stream = upstream::open(backend).await.map_err(|e| match e {
        ConnectError::Local(e) => ProbeError::Local(e),
        ConnectError::Tls(e) => ProbeError::Tls(e),
        ConnectError::Io(e) => ProbeError::Connect(e),
        other => ProbeError::Connect(std::io::Error::other(other.to_string())),
    })?;
    let Probe::Http { path, expect } = kind else {
        // tcp: connecting was the check (`None` never probes). Over TLS 1.3 a backend that
        // refuses our client certificate (or its absence) says so only after our side of the
        // handshake is done: listen for that alert a moment before calling the backend up.
        // At most half of what the connect and handshake left of the check's timeout, so a
        // slow but healthy backend does not time out waiting.
        if let Upstream::Tls(tls) = &mut stream {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            refused_after_handshake(tls, TLS_SETTLE.min(left / 2)).await?;
        }
        return Ok(());
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

/// Whether the backend refuses a connection whose handshake looked done to us, within `wait`.
/// A healthy backend says nothing until asked (TLS 1.3 session tickets are read and kept by
/// rustls, not returned).
async fn refused_after_handshake(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    wait: Duration,
) -> Result<(), ProbeError> {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err(ProbeError::Tls(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the backend closed the connection right after the handshake",
        ))),
        Ok(Err(e)) => Err(ProbeError::Tls(e)),
    }
}
