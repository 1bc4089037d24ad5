//! Small helpers shared by several modules.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One step of splitmix64: advances `state` and returns a well-mixed value. Enough to spread
/// keyless requests and probe times; not for anything secret.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Lock a std mutex, going on with the data if a panicking thread poisoned it. Every mutex here
/// guards plain values that are valid after any partial update (a message, a list), so the
/// poison flag carries no information worth stopping for.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
