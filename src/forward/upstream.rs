//! Upstream connections: reuse an idle keep-alive connection to the backend, or open one.
//!
//! We keep our own pool instead of hyper-util's legacy client because the proxy has to know
//! whether a request could still be sent elsewhere: connecting is a separate step that fails
//! before the request (and its body) is handed over, so a failed connect can be retried on
//! another backend with the body untouched. Each backend has at most `upstream_max_connections`
//! open; each connection holds one of the backend's slots until it closes. The idle connections
//! themselves are stored with the backend's state ([`IdleConns`](crate::state::idle::IdleConns)).

use std::io;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::state::backend::Backend;
use crate::state::idle::Sender;
use crate::util::is_local_exhaustion;

/// A connection ready to carry one request.
pub(crate) struct Conn {
    pub(crate) sender: Sender,
    /// Came from the idle pool (it may have been closed by the backend meanwhile).
    pub(crate) reused: bool,
}

/// Why no connection to a backend could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// All `upstream_max_connections` stayed busy for this long.
    #[error("all connections busy for {0:?}")]
    Busy(Duration),
    /// This process is short of file descriptors, ports or memory: not the backend's fault.
    #[error("{0}")]
    Local(#[source] io::Error),
}

/// A usable idle connection to `backend` if there is one, else a new one. At the backend's
/// connection cap, waits up to `connect_timeout` for an idle connection to come back or a slot
/// to free up.
pub(crate) async fn checkout(
    backend: &Backend,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Conn, ConnectError> {
    if let Some(sender) = reuse(backend, idle_timeout, connect_timeout).await {
        return Ok(Conn {
            sender,
            reused: true,
        });
    }
    let slot = match backend.conn_slots.try_acquire() {
        Some(slot) => slot,
        None => match wait_at_cap(backend, connect_timeout, idle_timeout).await? {
            AtCap::Returned(sender) => {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
            AtCap::Slot(slot) => slot,
        },
    };
    Ok(Conn {
        sender: connect(&backend.address, connect_timeout, slot).await?,
        reused: false,
    })
}

/// What a request at the backend's connection cap got.
enum AtCap {
    /// A connection another request put back.
    Returned(Sender),
    /// A slot for a new connection.
    Slot(OwnedSemaphorePermit),
}

/// At the connection cap: wait up to `connect_timeout` for an idle connection to come back or
/// a slot to free up, whichever is first.
async fn wait_at_cap(
    backend: &Backend,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<AtCap, ConnectError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    // One place in the slot queue for the whole wait, kept across wake-ups by returned
    // connections (dropping and re-making it would send us to the back each time).
    let slot = backend.conn_slots.acquire();
    tokio::pin!(slot);
    loop {
        // Registered before looking, so a connection put back in between still wakes us.
        let returned = backend.conns.returned();
        let ready_within = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(sender) = reuse(backend, idle_timeout, ready_within).await {
            return Ok(AtCap::Returned(sender));
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

/// An idle connection that is (or within `ready_within` becomes) ready for a request.
async fn reuse(
    backend: &Backend,
    idle_timeout: Duration,
    ready_within: Duration,
) -> Option<Sender> {
    while let Some(mut sender) = backend.conns.take(idle_timeout) {
        // A connection whose last response just ended may need a moment to be marked ready.
        if sender.is_ready()
            || tokio::time::timeout(ready_within, sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
        {
            return Some(sender);
        }
    }
    None
}

/// Open a new connection to `address`; it holds `slot` until it closes.
async fn connect(
    address: &str,
    connect_timeout: Duration,
    slot: OwnedSemaphorePermit,
) -> Result<Sender, ConnectError> {
    let local = |e: io::Error| {
        if is_local_exhaustion(&e) {
            ConnectError::Local(e)
        } else {
            ConnectError::Io(e)
        }
    };
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(connect_timeout))?
        .map_err(local)?;
    stream.set_nodelay(true).map_err(local)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
        drop(slot);
    });
    Ok(sender)
}
