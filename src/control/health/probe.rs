//! One active health probe against one backend.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Probe;

const USER_AGENT: &str = concat!("shardgate-health/", env!("CARGO_PKG_VERSION"));

/// Probe `address` once, within `timeout`. `Err` says why it failed, for logs and the admin API.
pub(crate) async fn probe(address: &str, kind: &Probe, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run(address, kind)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn run(address: &str, kind: &Probe) -> Result<(), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Probe::Http { path, expect } = kind else {
        return Ok(()); // tcp: connecting was the check (`None` never probes)
    };
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // The connection task ends with the probe: dropping the sender closes it.
    let conn = tokio::spawn(conn);
    let req = Request::get(path.as_str())
        .header(header::HOST, address)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad probe request: {e}"))?;
    let result = match sender.send_request(req).await {
        Ok(resp) if expect.contains(resp.status().as_u16()) => Ok(()),
        Ok(resp) => Err(format!(
            "GET {path} answered {}, expected {expect}",
            resp.status().as_u16()
        )),
        Err(e) => Err(format!("GET {path}: {e}")),
    };
    conn.abort();
    result
}
