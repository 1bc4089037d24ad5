//! Binding listening sockets and accepting connections.

/// `n` listening sockets on `addr`, non-blocking, for tokio to take up. With more than one,
/// each has SO_REUSEPORT and the kernel spreads new connections over them (port 0: they all
/// take the port the first one got). A port already held (by another process, or by another
/// pool on an overlapping address such as `0.0.0.0` and `127.0.0.1`) is an error, as it is
/// with one socket, not a port silently shared: a socket without SO_REUSEPORT is bound first,
/// which fails on a held port, and closed before the group binds.
pub(crate) fn bind_listeners(
    addr: std::net::SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = addr;
    if n > 1 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
        if let Some(bound) = probe.local_addr()?.as_socket() {
            addr = bound;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_is_refused_and_a_group_shares_one_port() {
        let group = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_eq!(group[1].local_addr().unwrap().port(), port);
        // Another group (a second process, or another pool) on the same or an overlapping
        // address does not join it.
        for addr in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
            let again = bind_listeners(addr.parse().unwrap(), 2);
            assert!(again.is_err(), "{addr} bound again");
        }
        let single = bind_listeners(format!("127.0.0.1:{port}").parse().unwrap(), 1);
        assert!(single.is_err());
    }
}
