//! Upstream connections, for both client paths: this thread's warmest idle connection to the
//! backend, or a new one within the backend's connection cap.
//!
//! Connecting is a step of its own that fails before the request (and its body) is handed
//! over, so a failed connect can be retried on another backend with the body untouched. Each
//! backend has at most `upstream_max_connections` open; each connection holds one of the
//! backend's slots until it closes. The idle connections are kept with the backend's state
//! ([`RawConns`](crate::state::conns::RawConns)).

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::state::backend::Backend;
use crate::state::conns::RawConn;
use crate::state::stream::Upstream;
use crate::util::is_local_exhaustion;

/// Why no connection to a backend could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    /// All `upstream_max_connections` stayed busy for this long.
    #[error("all connections busy for {0:?}")]
    Busy(Duration),
    /// This process is short of file descriptors, ports or memory: not the backend's fault.
    #[error("{0}")]
    Local(#[source] io::Error),
    /// Connected, but the TLS handshake failed (an untrusted or misnamed certificate, say).
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
}

/// A connection ready for one request.
pub(crate) struct Dialed {
    pub(crate) conn: RawConn,
    /// Came from the idle stack: the backend may have closed it in the meantime.
    pub(crate) reused: bool,
}

/// An idle connection to `backend`, else a new one. At the backend's connection cap, waits up
/// to `connect_timeout` for one to come back or a slot to free up. `now`: about now (the
/// request's start), for the idle connections' age.
pub(crate) async fn checkout(
    backend: &Backend,
    connect_timeout: Duration,
    idle_timeout: Duration,
    now: std::time::Instant,
) -> Result<Dialed, ConnectError> {
    if let Some(conn) = backend.raw.take(idle_timeout, now) {
        return Ok(Dialed { conn, reused: true });
    }
    fresh(backend, connect_timeout, idle_timeout).await
}

/// A new connection (or, at the cap, whichever of a returned one and a free slot comes first).
pub(crate) async fn fresh(
    backend: &Backend,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Dialed, ConnectError> {
    let slot = match backend.conn_slots.try_acquire() {
        Some(slot) => slot,
        // At the cap, a connection idle on another thread is worth less than this request.
        None if backend.raw.evict_one()
            && let Some(slot) = backend.conn_slots.try_acquire() =>
        {
            slot
        }
        None => match wait_at_cap(backend, connect_timeout, idle_timeout).await? {
            AtCap::Returned(conn) => return Ok(Dialed { conn, reused: true }),
            AtCap::Slot(slot) => slot,
        },
    };
    Ok(Dialed {
        conn: connect(backend, connect_timeout, slot).await?,
        reused: false,
    })
}

enum AtCap {
    Returned(RawConn),
    Slot(OwnedSemaphorePermit),
}

async fn wait_at_cap(
    backend: &Backend,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<AtCap, ConnectError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    // One place in the slot queue for the whole wait.
    let slot = backend.conn_slots.acquire();
    tokio::pin!(slot);
    loop {
        // Registered before looking, so a connection put back in between still wakes us.
        let returned = backend.raw.returned();
        if let Some(conn) = backend.raw.take(idle_timeout, std::time::Instant::now()) {
            return Ok(AtCap::Returned(conn));
        }
        // A connection put back on another thread since the last look: its slot is ours.
        if backend.raw.evict_one()
            && let Some(slot) = backend.conn_slots.try_acquire()
        {
            return Ok(AtCap::Slot(slot));
        }
        tokio::select! {
            biased;
            slot = &mut slot => return Ok(AtCap::Slot(slot)),
            () = returned => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err(ConnectError::Busy(connect_timeout));
            }
        }
    }
}

/// Connect (and shake hands, for a TLS backend) within `connect_timeout`.
async fn connect(
    backend: &Backend,
    connect_timeout: Duration,
    slot: OwnedSemaphorePermit,
) -> Result<RawConn, ConnectError> {
    let stream = tokio::time::timeout(connect_timeout, open(backend))
        .await
        .map_err(|_| ConnectError::Timeout(connect_timeout))??;
    Ok(RawConn::new(stream, slot))
}

/// A new connection to `backend`, TLS if its pool says so; no time limit of its own.
pub(crate) async fn open(backend: &Backend) -> Result<Upstream, ConnectError> {
    let local = |e: io::Error| {
        if is_local_exhaustion(&e) {
            ConnectError::Local(e)
        } else {
            ConnectError::Io(e)
        }
    };
    let addrs = backend.dial.addrs();
    if addrs.is_empty() {
        return Err(ConnectError::Io(io::Error::other(format!(
            "{}: no address yet, its host name has not resolved",
            backend.address
        ))));
    }
    let stream = TcpStream::connect(&addrs[..]).await.map_err(local)?;
    stream.set_nodelay(true).map_err(local)?;
    match backend.tls.load_full() {
        None => Ok(Upstream::Tcp(stream)),
        Some(tls) => match tls.connect(&backend.address, stream).await {
            Ok(tls) => Ok(Upstream::Tls(Box::new(tls))),
            Err(e) => Err(ConnectError::Tls(e)),
        },
    }
}
