//! A connection to a backend: plain TCP, or TLS over it (`[pools.upstream_tls]`). One type for
//! both, so the idle stacks and both client paths handle either; the plain case costs a match
//! per I/O call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[derive(Debug)]
pub(crate) enum Upstream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read side of a split [`Upstream`], used while the write side sends.
pub(crate) enum UpRead<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
}

/// The write side of a split [`Upstream`].
pub(crate) enum UpWrite<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
}

impl Upstream {
    /// The TCP connection underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Upstream::Tcp(s) => s,
            Upstream::Tls(s) => s.get_ref().0,
        }
    }

    /// Read and write halves that work at once within one task. TCP splits without a lock;
    /// a TLS session is one state, shared by the halves through tokio's (uncontended) lock.
    pub(crate) fn split(&mut self) -> (UpRead<'_>, UpWrite<'_>) {
        match self {
            Upstream::Tcp(s) => {
                let (r, w) = s.split();
                (UpRead::Tcp(r), UpWrite::Tcp(w))
            }
            Upstream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (UpRead::Tls(r), UpWrite::Tls(w))
            }
        }
    }
}

/// `AsyncRead` by delegating to whichever stream `$t` holds.
macro_rules! read_by_variant {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// `AsyncWrite` by delegating to whichever stream `$t` holds.
macro_rules! write_by_variant {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Tcp(s) => s.is_write_vectored(),
                    Self::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

read_by_variant!(Upstream);
read_by_variant!(UpRead<'_>);
write_by_variant!(Upstream);
write_by_variant!(UpWrite<'_>);
