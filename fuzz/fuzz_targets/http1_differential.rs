//! Our request framing against hyper's HTTP/1 server, in process, on the same client bytes.
//! What must never happen is that both accept the bytes and frame them differently: another
//! method, target or body for a request, or another place where the next pipelined request
//! starts. Two HTTP/1 implementations reading one byte stream differently is what request
//! smuggling is made of; this checks ours against a widely used one. (That the head we write
//! for a backend frames the same body is the `http1` target's check.) Ours refusing what hyper
//! accepts is allowed (we are stricter on purpose), and so is the reverse.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use shardgate::http1::Framing;
use shardgate::http1::chunked::Decoder;
use shardgate::http1::request::{self, MAX_HEADERS};
use tokio::io::AsyncWriteExt;

/// A request as framed: method, target, body.
type Framed = (String, String, Vec<u8>);

/// Ours: each pipelined request until one is refused, incomplete, or closes the connection.
fn ours(mut bytes: &[u8]) -> Vec<Framed> {
    let mut out = Vec::new();
    loop {
        let mut slots = shardgate::http1::slots::<MAX_HEADERS>();
        let Ok(Some(head)) = request::parse(bytes, &mut slots, 64 * 1024) else {
            return out;
        };
        let body = &bytes[head.len..];
        let len = match head.framing {
            Framing::Empty => 0,
            Framing::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= body.len() => n,
                _ => return out,
            },
            Framing::Chunked => match Decoder::new().advance(body) {
                Ok(a) if a.done => a.consumed,
                _ => return out,
            },
            Framing::UntilClose => return out,
        };
        let payload = match head.framing {
            Framing::Chunked => dechunk(&body[..len]),
            _ => body[..len].to_vec(),
        };
        out.push((head.method.to_owned(), head.target.to_owned(), payload));
        if !head.keep_alive {
            return out;
        }
        bytes = &body[len..];
    }
}

/// The payload of a chunked body our decoder accepted (so its framing is well formed).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = body[..line_end]
            .split(|&b| b == b';' || b == b' ' || b == b'\t')
            .next()
            .unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(size_text).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        let data = &body[line_end + 2..];
        out.extend_from_slice(&data[..size]);
        body = &data[size + 2..];
    }
}

/// hyper's: every request its HTTP/1 server hands to a service, body collected.
fn hypers(bytes: &[u8]) -> Vec<Framed> {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    }
    let seen: Arc<Mutex<Vec<Framed>>> = Arc::default();
    let input = bytes.to_vec();
    RT.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(input.len() + 1024);
            let log = seen.clone();
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let log = log.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    if let Ok(body) = Limited::new(body, 1 << 20).collect().await {
                        log.lock().unwrap().push((
                            parts.method.to_string(),
                            parts.uri.to_string(),
                            body.to_bytes().to_vec(),
                        ));
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service);
            let feed = async move {
                let _ = client.write_all(&input).await;
                let _ = client.shutdown().await;
                // Keep reading responses so the server never blocks on a full pipe.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut client, &mut sink).await;
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                tokio::join!(conn, feed)
            })
            .await;
        })
    });
    let v = seen.lock().unwrap().clone();
    v
}

fuzz_target!(|data: &[u8]| {
    let a = ours(data);
    if a.is_empty() {
        return;
    }
    let b = hypers(data);
    // Compare the requests both framed; hyper normalises an absolute-form target's text, so
    // targets are compared only in origin-form.
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0, "method");
        if x.1.starts_with('/') {
            assert_eq!(x.1, y.1, "target");
        }
        assert_eq!(x.2, y.2, "body of {} {}", x.0, x.1);
    }
});
