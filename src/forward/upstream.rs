//! Upstream connections: reuse an idle keep-alive connection to the backend, or open one.
//!
//! We keep our own pool instead of hyper-util's legacy client because the proxy has to know
//! whether a request could still be sent elsewhere: connecting is a separate step that fails
//! before the request (and its body) is handed over, so a failed connect can be retried on
//! another backend with the body untouched. The idle connections themselves are stored with the
//! backend's state ([`IdleConns`](crate::state::idle::IdleConns)).

use std::io;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::state::backend::Backend;
use crate::state::idle::Sender;

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
}

/// A usable idle connection to `backend` if there is one, else a new one.
pub(crate) async fn checkout(
    backend: &Backend,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Conn, ConnectError> {
    while let Some(mut sender) = backend.conns.take(idle_timeout) {
        // A connection whose last response just ended may need a moment to be marked ready.
        if sender.is_ready()
            || tokio::time::timeout(connect_timeout, sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
        {
            return Ok(Conn {
                sender,
                reused: true,
            });
        }
    }
    Ok(Conn {
        sender: connect(&backend.address, connect_timeout).await?,
        reused: false,
    })
}

/// Open a new connection to `address`.
async fn connect(address: &str, connect_timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(connect_timeout))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
