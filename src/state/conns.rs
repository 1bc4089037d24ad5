//! Idle raw keep-alive connections to one backend, for the HTTP/1 data path.
//!
//! One LIFO stack per worker thread (a lock-free work-stealing deque): checkout and checkin
//! touch only the calling thread's end of its own stack, so they take no lock and contend
//! with nobody (nginx keeps its upstream keep-alive cache per worker for the same reason). The
//! most recently used connection is reused first (it is the warmest, and the least likely to
//! have been closed by the backend's idle timer); the oldest sit at the bottom. A backend
//! marked down bumps an epoch, which retires every idle connection at its next look.
//!
//! A connection holds one of the backend's `upstream_max_connections` slots until it closes.
//! A request at that cap first closes the coldest idle connection of any thread (taken from
//! the bottom of its stack, the other end from its owner) to connect anew in its slot; if
//! none is idle, it waits: a checkin on its thread wakes it, and a checkin on a thread where
//! nobody waits while someone elsewhere does closes the connection instead, so that its slot
//! goes to the waiter. Sockets are not handed across threads: each belongs to its thread's
//! runtime.

use crossbeam_deque::{Steal, Stealer, Worker};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use thread_local::ThreadLocal;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::stream::Upstream;

/// An open connection to a backend and the slot it holds.
#[derive(Debug)]
pub(crate) struct RawConn {
    pub(crate) stream: Upstream,
    _slot: OwnedSemaphorePermit,
}

impl RawConn {
    pub(crate) fn new(stream: Upstream, slot: OwnedSemaphorePermit) -> RawConn {
        RawConn {
            stream,
            _slot: slot,
        }
    }

    /// Whether the backend has neither closed this idle connection nor sent anything on it.
    /// Costs no system call unless the reactor has seen the socket become readable.
    fn is_quiet(&self) -> bool {
        // A TLS session may hold what the socket no longer shows: decrypted bytes nobody read,
        // a close_notify, records not yet sent.
        if let Upstream::Tls(s) = &self.stream {
            let session = s.get_ref().1;
            if !session.wants_read() || session.wants_write() {
                return false;
            }
        }
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = self.stream.tcp();
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable may be stale (the last read consumed everything without seeing
            // "would block"): look, without taking anything (a TLS record would be lost).
            Poll::Ready(Ok(())) => {
                let mut one = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut one);
                tcp.poll_peek(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct RawConns {
    /// Each thread's stack: the owner pushes and pops the top.
    stacks: ThreadLocal<Worker<Idle>>,
    /// What other threads may see of each thread: its stack's bottom (to evict the coldest
    /// connection when the cap is reached) and its waiters.
    shared: ThreadLocal<Local>,
    /// Bumped to retire every idle connection (the backend went down).
    epoch: AtomicU64,
    /// Requests waiting at the connection cap, all threads.
    waiters: AtomicUsize,
}

impl std::fmt::Debug for RawConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConns")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

struct Local {
    bottom: Stealer<Idle>,
    /// Requests of this thread waiting at the cap (only its own thread changes it).
    waiters: AtomicUsize,
    returned: Notify,
}

struct Idle {
    conn: RawConn,
    since: Instant,
    epoch: u64,
}

impl RawConns {
    fn stack(&self) -> &Worker<Idle> {
        self.stacks.get_or(|| {
            let stack = Worker::new_lifo();
            let bottom = stack.stealer();
            // Made together, so every stack's bottom is visible to the other threads.
            self.shared.get_or(|| Local {
                bottom,
                waiters: AtomicUsize::new(0),
                returned: Notify::new(),
            });
            stack
        })
    }

    fn local(&self) -> &Local {
        self.stack();
        self.shared.get().expect("made with the stack")
    }

    /// The warmest idle connection of this thread that is still open and was idle for at most
    /// `max_age` at `now`. Those found closed, expired or retired are dropped, which closes
    /// them.
    pub(crate) fn take(&self, max_age: Duration, now: Instant) -> Option<RawConn> {
        let stack = self.stacks.get()?;
        let epoch = self.epoch.load(Ordering::Relaxed);
        while let Some(i) = stack.pop() {
            if i.epoch != epoch {
                continue;
            }
            if now.saturating_duration_since(i.since) > max_age {
                // Everything below is older still.
                while stack.pop().is_some() {}
                return None;
            }
            if i.conn.is_quiet() {
                return Some(i.conn);
            }
        }
        None
    }

    /// Keep a connection whose exchange ended cleanly at `now`, unless this thread keeps
    /// `max_idle` already or a request on another thread waits for a slot.
    pub(crate) fn put(&self, conn: RawConn, max_idle: usize, now: Instant) {
        let stack = self.stack();
        let local = self.local();
        let waiting_here = local.waiters.load(Ordering::Relaxed);
        if self.waiters.load(Ordering::Relaxed) > waiting_here || max_idle == 0 {
            return; // closed: its slot goes to a waiter elsewhere
        }
        if stack.len() >= max_idle {
            // Keep the warm one, drop the coldest.
            let _ = local.bottom.steal();
        }
        stack.push(Idle {
            conn,
            since: now,
            epoch: self.epoch.load(Ordering::Relaxed),
        });
        if waiting_here > 0 {
            local.returned.notify_waiters();
        }
    }

    /// Close the coldest idle connection of any thread, to free its slot for a request at the
    /// cap (a socket is not handed across threads: each belongs to its thread's runtime).
    pub(crate) fn evict_one(&self) -> bool {
        self.shared
            .iter()
            .any(|l| matches!(l.bottom.steal(), Steal::Success(_)))
    }

    /// Resolves when a connection is put back on this thread after this call; for a request
    /// waiting at the cap, which counts as waiting until this is dropped. Only made at the
    /// cap, so its box costs the usual path nothing.
    pub(crate) fn returned(&self) -> Returned<'_> {
        let local = self.local();
        let waiting = Waiting::new(self, &local.waiters);
        let mut notified = Box::pin(local.returned.notified());
        // Registered now, so a checkin before the first poll still wakes it.
        notified.as_mut().enable();
        Returned {
            notified,
            _waiting: waiting,
        }
    }

    /// Retire every idle connection, on every thread (the backend went down).
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Idle connections kept on this thread (tests).
    #[cfg(test)]
    pub(crate) fn idle_here(&self) -> usize {
        self.stacks.get().map_or(0, Worker::len)
    }
}

/// See [`RawConns::returned`].
pub(crate) struct Returned<'a> {
    notified: std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>,
    _waiting: Waiting<'a>,
}

impl Future for Returned<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.notified.as_mut().poll(cx)
    }
}

struct Waiting<'a> {
    conns: &'a RawConns,
    here: &'a AtomicUsize,
}

impl<'a> Waiting<'a> {
    fn new(conns: &'a RawConns, here: &'a AtomicUsize) -> Waiting<'a> {
        here.fetch_add(1, Ordering::Relaxed);
        conns.waiters.fetch_add(1, Ordering::Relaxed);
        Waiting { conns, here }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.here.fetch_sub(1, Ordering::Relaxed);
        self.conns.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    async fn pair(listener: &TcpListener, sem: &Arc<Semaphore>) -> (RawConn, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let slot = sem.clone().try_acquire_owned().unwrap();
        let client = Upstream::Tcp(client.unwrap());
        (RawConn::new(client, slot), server.unwrap().0)
    }

    #[tokio::test]
    async fn the_warmest_is_reused_and_closed_or_retired_ones_are_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sem = Arc::new(Semaphore::new(8));
        let conns = RawConns::default();
        let (a, _a_peer) = pair(&listener, &sem).await;
        let (b, _b_peer) = pair(&listener, &sem).await;
        let b_port = b.stream.tcp().local_addr().unwrap().port();
        conns.put(a, 8, Instant::now());
        conns.put(b, 8, Instant::now());
        let got = conns.take(Duration::from_secs(60), Instant::now()).unwrap();
        assert_eq!(
            got.stream.tcp().local_addr().unwrap().port(),
            b_port,
            "LIFO"
        );
        conns.put(got, 8, Instant::now());

        // The backend closes one: it is found out without being handed out.
        let (c, mut c_peer) = pair(&listener, &sem).await;
        conns.put(c, 8, Instant::now());
        c_peer.shutdown().await.unwrap();
        drop(c_peer);
        // Until the reactor has seen the FIN, the closed one may still look quiet; once it
        // has, it is skipped for good.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = conns.take(Duration::from_secs(60), Instant::now()).unwrap();
            let port = got.stream.tcp().local_addr().unwrap().port();
            conns.put(got, 8, Instant::now());
            if port == b_port {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the closed connection kept being handed out"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(conns.idle_here(), 2, "a and b; c was dropped");

        conns.clear();
        assert!(
            conns
                .take(Duration::from_secs(60), Instant::now())
                .is_none(),
            "retired"
        );
        assert_eq!(
            sem.available_permits(),
            8,
            "every dropped connection gave its slot back"
        );
    }

    #[tokio::test]
    async fn expired_and_surplus_connections_are_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sem = Arc::new(Semaphore::new(8));
        let conns = RawConns::default();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (c, peer) = pair(&listener, &sem).await;
            peers.push(peer);
            conns.put(c, 2, Instant::now());
        }
        assert_eq!(conns.idle_here(), 2, "max_idle");
        assert!(
            conns.take(Duration::ZERO, Instant::now()).is_none(),
            "all older than zero"
        );
        assert_eq!(conns.idle_here(), 0);
    }
}
