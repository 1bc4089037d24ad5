//! Accepting connections.

/// The next connection on `listener`, or `None` once `stop` is cancelled.
///
/// Accepting fails when the process is out of file descriptors (EMFILE), the kernel out of
/// memory for sockets, or a client reset the connection while it queued. None of these is a
/// reason to stop serving, and retrying at once would spin a core and flood the log while the
/// cause lasts: the pause before the next try doubles from 5 ms up to 1 s.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return None,
        };
        match accepted {
            Ok(conn) => return Some(conn),
            Err(e) => {
                tracing::warn!(listener = what, error = %e, retry_in = ?pause, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => return None,
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
        }
    }
}
