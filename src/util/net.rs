//! Binding listening sockets and accepting connections.

/// `n` listening sockets on `addr`, non-blocking, for tokio to take up. With more than one,
/// each has SO_REUSEPORT and the kernel spreads new connections over them; the others join
/// the port the first one got (port 0 picks one). One socket gets no SO_REUSEPORT, so a port
/// held by another process is an error, not a silently shared port.
pub(crate) fn bind_listeners(
    addr: std::net::SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // As tokio's own bind does: a restart may bind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if n > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        let listener = std::net::TcpListener::from(socket);
        if i == 0 {
            addr = listener.local_addr()?;
        }
        out.push(listener);
    }
    Ok(out)
}

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
