//! The TLS handshake of a client connection, bounded by the same deadline as its first request
//! head, and sorted when it fails.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;

use crate::tls::{Acceptor, HandshakeFailure};

/// The first byte of every TLS connection: a handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Shake hands by `due`. Plain HTTP sent to the port gets a plain 400 that says to use
/// https:// (as nginx does) rather than a TLS alert the user cannot read.
pub(crate) async fn handshake(
    acceptor: &Acceptor,
    mut stream: TcpStream,
    due: Instant,
) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
    let mut first = [0u8; 1];
    match timeout_at(due, stream.peek(&mut first)).await {
        Err(_) => return Err(HandshakeFailure::Timeout),
        Ok(Ok(0) | Err(_)) => return Err(HandshakeFailure::Closed),
        Ok(Ok(_)) => {}
    }
    if first[0] != HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            refuse_plain_http(&mut stream).await;
            return Err(HandshakeFailure::PlainHttp);
        }
        return Err(HandshakeFailure::Malformed);
    }
    match timeout_at(due, acceptor.accept(stream)).await {
        Err(_) => Err(HandshakeFailure::Timeout),
        Ok(Err(e)) => Err(HandshakeFailure::of(&e)),
        Ok(Ok(tls)) => Ok(tls),
    }
}

async fn refuse_plain_http(stream: &mut TcpStream) {
    const BODY: &str = "This port speaks HTTPS: use https:// to reach it.\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // Brief: this client is not worth holding a connection for.
    let due = Instant::now() + Duration::from_secs(1);
    if let Ok(Ok(())) = timeout_at(due, stream.write_all(answer.as_bytes())).await {
        // Its unread request would turn the close into a reset that can destroy the answer.
        super::h1::close(stream, true).await;
    }
}
