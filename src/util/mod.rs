//! Small helpers shared by every layer: time, randomness, locks, accepting connections, and
//! resizable connection slots.

mod net;
pub(crate) mod signal;
mod slots;

pub(crate) use net::{accept, bind_listeners};
pub(crate) use signal::Signal;
pub(crate) use slots::Slots;

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

/// A well-mixed pseudo-random value from a per-thread splitmix64 sequence seeded from the OS's
/// hash keys: no lock, no shared cache line. For spreading and naming things, not for secrets.
pub(crate) fn thread_random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8)
        );
    }
    STATE.with(|s| {
        let mut state = s.get();
        let z = splitmix64(&mut state);
        s.set(state);
        z
    })
}

/// Whether `e` says this process ran short of something (file descriptors, ephemeral ports,
/// socket buffers, memory) rather than that the peer did anything wrong.
pub(crate) fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether `e` says the peer closed the connection under us (reset, or a write after its close).
pub(crate) fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

/// A read that found the peer gone: reset, or over TLS closed without close_notify (which
/// rustls reports as an unexpected EOF). With nothing read yet on a reused connection, both
/// are the keep-alive race a plain close is.
pub(crate) fn is_gone(e: &std::io::Error) -> bool {
    is_reset(e) || e.kind() == std::io::ErrorKind::UnexpectedEof
}

/// A file's bytes if it holds at most `max` of them, `None` if it holds more. Reads no further
/// than `max + 1` bytes, so a huge file (or a device that never ends) costs no memory.
pub(crate) fn read_capped(path: &std::path::Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// Lock a std mutex, going on with the data if a panicking thread poisoned it. Every mutex here
/// guards plain values that are valid after any partial update (a message, a list), so the
/// poison flag carries no information worth stopping for.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
