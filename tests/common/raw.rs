//! Raw-socket peers for the hostile cases hyper would never produce: a backend that answers
//! with exactly the bytes a test gives it, and a client that sends exactly the bytes it is given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What a raw backend does after writing its reply.
#[derive(Clone, Copy, Debug)]
pub enum After {
    /// Close the connection.
    Close,
    /// Keep the connection open and write nothing more; count when the proxy closes it.
    Stall,
}

/// A backend that, on every connection carrying a request head, writes `reply` byte for byte.
pub struct RawBackend {
    pub addr: SocketAddr,
    /// Request heads received.
    pub requests: Arc<AtomicUsize>,
    /// Stalled connections the proxy closed.
    pub closed_by_proxy: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl RawBackend {
    pub async fn start(reply: &[u8], after: After) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = RawBackend {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            closed_by_proxy: Arc::default(),
            stop: CancellationToken::new(),
        };
        let reply: Arc<[u8]> = reply.into();
        let (requests, closed, stop) = (
            backend.requests.clone(),
            backend.closed_by_proxy.clone(),
            backend.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let mut s = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    () = stop.cancelled() => return,
                };
                let (reply, requests, closed, stop) = (
                    reply.clone(),
                    requests.clone(),
                    closed.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    // Health probes connect and leave: only a request head gets the reply.
                    if read_head(&mut s).await.is_none() {
                        return;
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    if s.write_all(&reply).await.is_err() {
                        return;
                    }
                    if let After::Stall = after {
                        let mut buf = [0u8; 1024];
                        tokio::select! {
                            _ = async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} } => {
                                closed.fetch_add(1, Ordering::SeqCst);
                            }
                            () = stop.cancelled() => {}
                        }
                    }
                });
            }
        });
        backend
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A backend scripted by hand: `serve` runs on each connection it accepts (until the test's
/// runtime ends). Its address.
pub async fn serve_each<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// Read up to the end of a request head (and whatever came with it); `None` if the peer left
/// first.
pub async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
}

/// Send `request` on a new connection to `addr` and read until the proxy closes it or `within`
/// passes: what came back, and whether the connection was closed by then.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], within: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_until_closed(&mut s, within).await
}

/// Read what arrives on `s` until the peer closes it or `within` passes: (text, closed).
pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}
