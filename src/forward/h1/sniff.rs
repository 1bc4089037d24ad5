//! Which protocol a cleartext connection speaks, told from its first bytes: the HTTP/2
//! connection preface (h2c with prior knowledge) goes to hyper's HTTP/2 server, anything else
//! to the HTTP/1 path. The bytes read to tell are handed on, not lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes say.
pub(crate) enum Protocol {
    /// The HTTP/2 preface: serve with hyper, the bytes read replayed first.
    H2(Vec<u8>),
    /// HTTP/1 (or garbage, for the HTTP/1 parser to refuse), with the bytes read so far.
    H1(Vec<u8>),
}

/// Read until the first bytes rule the preface in or out. `None`: the client sent nothing by
/// `due` or closed.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(stream: &mut S, due: Instant) -> Option<Protocol> {
    let mut buf = Vec::with_capacity(super::READ_CHUNK);
    loop {
        let read = tokio::time::timeout_at(due, stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Some(Protocol::H1(buf));
        }
        if seen == H2_PREFACE.len() {
            return Some(Protocol::H2(buf));
        }
    }
}

/// A stream whose first reads come from bytes already read off it.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn sniffed(sent: &'static [&'static [u8]]) -> Option<Protocol> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for part in sent {
                c.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            c
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let due = Instant::now() + std::time::Duration::from_secs(5);
        let got = sniff(&mut server, due).await;
        drop(client.await);
        got
    }

    #[tokio::test]
    async fn the_preface_goes_to_http2_and_anything_else_to_http1_with_its_bytes() {
        match sniffed(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n\0\0"]).await {
            Some(Protocol::H2(bytes)) => assert!(bytes.starts_with(H2_PREFACE)),
            _ => panic!("not h2"),
        }
        match sniffed(&[b"PR", b"OPFIND / HTTP/1.1\r\n"]).await {
            Some(Protocol::H1(bytes)) => assert!(bytes.starts_with(b"PRO")),
            _ => panic!("not h1"),
        }
    }
}
