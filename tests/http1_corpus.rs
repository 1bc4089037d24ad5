//! The HTTP/1 message corpus: raw request bytes as a client could send them, and what must come
//! of them — refused with a status, or forwarded as method, target and exactly which bytes are
//! the body the backend receives (the rest being the next pipelined request). Each case is run
//! through `shardgate::http1` (request head, framing, chunked decoder). RFC 9112 §2-§7; the
//! smuggling cases are the classic CL.TE / TE.CL / TE.TE shapes.
//!
//! The same table is then run end to end: each case's bytes go to a running proxy over a real
//! socket, and a recording backend says what reached it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use shardgate::http1::chunked::Decoder;
use shardgate::http1::request::{self, MAX_HEADERS};
use shardgate::http1::{Framing, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Forwarded: method, target, the body bytes, and whether the connection stays open.
    Forward(&'static str, &'static str, &'static str, bool),
    /// Answered with this status; the connection closes.
    Refuse(u16),
    /// Waiting for more bytes.
    More,
}
use Outcome::*;

struct Case {
    name: &'static str,
    sent: &'static [u8],
    want: &'static [Outcome],
}

const CASES: &[Case] = &[
    // Plain requests and keep-alive.
    Case { name: "simple GET", sent: b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Forward("GET", "/a?b=c", "", true)] },
    Case { name: "HTTP/1.0 closes", sent: b"GET / HTTP/1.0\r\n\r\n", want: &[Forward("GET", "/", "", false)] },
    Case { name: "Connection: close", sent: b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Forward("GET", "/", "", false)] },
    Case { name: "one leading CRLF is ignored", sent: b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Forward("GET", "/", "", true)] },
    Case { name: "pipelined, answered in order", sent: b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Forward("GET", "/1", "", true), Forward("POST", "/2", "abc", true), Forward("GET", "/3", "", true)] },
    Case { name: "partial head", sent: b"GET / HTTP/1.1\r\nHost: x\r\n", want: &[More] },
    Case { name: "absolute-form", sent: b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Forward("GET", "http://x/a", "", true)] },
    Case { name: "asterisk-form OPTIONS", sent: b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Forward("OPTIONS", "*", "", true)] },
    // Request-line oddities.
    Case { name: "CONNECT host:port", sent: b"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\n\r\n", want: &[Forward("CONNECT", "h.example:443", "", true)] },
    Case { name: "CONNECT without a port", sent: b"CONNECT h.example HTTP/1.1\r\nHost: h.example\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "asterisk-form GET", sent: b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "target without slash", sent: b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "two spaces", sent: b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "no version", sent: b"GET /\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "HTTP/2.0 in a request line", sent: b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "fragment in target", sent: b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "space in target", sent: b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "NUL in target", sent: b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "bad method token", sent: b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Refuse(400)] },
    // Header fields.
    Case { name: "obs-fold", sent: b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "bare LF inside a value", sent: b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\nc\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "bare CR inside a value", sent: b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "NUL inside a value", sent: b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "space before colon", sent: b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc", want: &[Refuse(400)] },
    Case { name: "invalid field name", sent: b"GET / HTTP/1.1\r\nHost: x\r\nX@A: b\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "bare LF line ends", sent: b"GET /lf HTTP/1.1\nHost: x\nX-A: b\n\n", want: &[Forward("GET", "/lf", "", true)] },
    Case { name: "CRLF and LF line ends mixed", sent: b"GET /mix HTTP/1.1\r\nHost: x\nX-A: b\r\n\n", want: &[Forward("GET", "/mix", "", true)] },
    Case { name: "no Host in HTTP/1.1", sent: b"GET / HTTP/1.1\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "two Hosts", sent: b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "Expect: 100-continue", sent: b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", want: &[Forward("PUT", "/", "hi", true)] },
    Case { name: "unknown expectation", sent: b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: tea\r\nContent-Length: 2\r\n\r\nhi", want: &[Refuse(417)] },
    // Content-Length.
    Case { name: "Content-Length", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", want: &[Forward("POST", "/", "hello", true)] },
    Case { name: "body still coming", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel", want: &[More] },
    Case { name: "Content-Length 0", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", want: &[Forward("POST", "/", "", true)] },
    Case { name: "the same Content-Length twice", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi", want: &[Forward("POST", "/", "hi", true)] },
    Case { name: "conflicting Content-Lengths", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!", want: &[Refuse(400)] },
    Case { name: "Content-Length list", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nhi", want: &[Refuse(400)] },
    Case { name: "signed Content-Length", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nhi", want: &[Refuse(400)] },
    Case { name: "hex Content-Length", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x2\r\n\r\nhi", want: &[Refuse(400)] },
    Case { name: "overflowing Content-Length", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", want: &[Refuse(400)] },
    // Transfer-Encoding and the smuggling shapes.
    Case { name: "chunked", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: x\r\n\r\n", want: &[Forward("POST", "/", "3\r\nabc\r\n0\r\n\r\n", true), Forward("GET", "/n", "", true)] },
    Case { name: "chunked with extension and trailer", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n3;q=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", want: &[Forward("POST", "/", "3;q=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", true)] },
    Case { name: "CL.TE: both", sent: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", want: &[Refuse(400)] },
    Case { name: "TE.CL: both, other order", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "TE.TE: chunked twice", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "TE.TE: chunked then identity", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "TE.TE: obfuscated coding", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", want: &[Refuse(501)] },
    Case { name: "gzip, chunked", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", want: &[Refuse(501)] },
    Case { name: "TE with a tab before the value", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", want: &[Forward("POST", "/", "0\r\n\r\n", true)] },
    Case { name: "TE in HTTP/1.0", sent: b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "chunk size overflow", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "chunk size not hex", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "chunk size line ended by LF", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "chunk data longer than its size", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", want: &[Refuse(400)] },
    Case { name: "chunked body still coming", sent: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", want: &[More] },
];

/// What the proxy makes of `sent`: each request forwarded in turn until one is refused, the
/// connection is to close, or the bytes run out.
fn run(sent: &'static [u8]) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < sent.len() {
        let rest = &sent[at..];
        let mut slots = shardgate::http1::slots::<MAX_HEADERS>();
        let head = match request::parse(rest, &mut slots, 8192) {
            Err(Refusal { status, .. }) => {
                out.push(Refuse(status));
                break;
            }
            Ok(None) => {
                out.push(More);
                break;
            }
            Ok(Some(head)) => head,
        };
        let body = &rest[head.len..];
        let body_len = match head.framing {
            Framing::Empty => Some(0),
            Framing::Length(n) => usize::try_from(n).ok().filter(|&n| n <= body.len()),
            Framing::Chunked => {
                let mut d = Decoder::new();
                match d.advance(body) {
                    Err(r) => {
                        out.push(Refuse(r.status));
                        break;
                    }
                    Ok(a) => a.done.then_some(a.consumed),
                }
            }
            Framing::UntilClose => unreachable!("requests are never close-delimited"),
        };
        let Some(body_len) = body_len else {
            out.push(More);
            break;
        };
        let text = |b: &[u8]| -> &'static str {
            Box::leak(String::from_utf8_lossy(b).into_owned().into_boxed_str())
        };
        out.push(Forward(
            text(head.method.as_bytes()),
            text(head.target.as_bytes()),
            text(&body[..body_len]),
            head.keep_alive,
        ));
        if !head.keep_alive {
            break;
        }
        at += head.len + body_len;
    }
    out
}

#[test]
fn every_corpus_case_is_framed_as_the_rfc_says() {
    let mut wrong = Vec::new();
    for case in CASES {
        let got = run(case.sent);
        if got != case.want {
            wrong.push(format!("{}: want {:?}, got {got:?}", case.name, case.want));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        CASES.len(),
        wrong.join("\n")
    );
}

#[test]
fn any_split_of_a_head_is_decided_as_the_whole() {
    // A head arriving in pieces is decided as if it came at once: every prefix is "more", or
    // the decision the whole bytes get (the same head length, or the same refusal).
    let decide = |bytes: &[u8]| {
        let mut slots = shardgate::http1::slots::<MAX_HEADERS>();
        request::parse(bytes, &mut slots, 8192).map(|h| h.map(|h| h.len))
    };
    for case in CASES {
        let whole = decide(case.sent);
        for cut in 1..case.sent.len() {
            match decide(&case.sent[..cut]) {
                Ok(None) => {}
                Ok(Some(len)) => assert_eq!(whole, Ok(Some(len)), "{}: cut at {cut}", case.name),
                Err(r) => assert_eq!(
                    whole.map_err(|w| w.status),
                    Err(r.status),
                    "{}: refused early at {cut}",
                    case.name
                ),
            }
        }
    }
}

// ---- end to end ---------------------------------------------------------------------------

/// What one request looked like when it reached the backend: method, target, body bytes as
/// framed on the wire (chunked framing included).
type Seen = (String, String, Vec<u8>);

/// A backend that records every request it gets (read with httparse and its own framing, not
/// the proxy's code) and answers each `200` with a two-byte body.
async fn recording_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_recorded(s, record.clone()));
        }
    });
    (addr, seen)
}

async fn serve_recorded(mut s: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        // The head.
        let (method, target, head_len, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
                let field = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let length = field("content-length").map(|v| v.parse::<usize>().unwrap());
                let chunked = field("transfer-encoding").is_some_and(|v| v == "chunked");
                break (
                    req.method.unwrap().to_owned(),
                    req.path.unwrap().to_owned(),
                    len,
                    length,
                    chunked,
                );
            }
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        };
        buf.drain(..head_len);
        // The body, by its own framing.
        let body_len = loop {
            let known = if chunked {
                chunked_len(&buf)
            } else {
                let n = length.unwrap_or(0);
                (buf.len() >= n).then_some(n)
            };
            if let Some(n) = known {
                break n;
            }
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        };
        let body: Vec<u8> = buf.drain(..body_len).collect();
        seen.lock().unwrap().push((method, target, body));
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// The length of a complete chunked body at the start of `b` (trailers included), if it is all
/// there. The proxy re-emits only well-formed bodies, so this can be simple.
fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&b[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let end = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
                let blank = end == at;
                at = end + 2;
                if blank {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > b.len() {
            return None;
        }
    }
}

/// The target the backend gets for a client's: origin-form (an absolute-form target loses its
/// scheme and authority).
fn upstream_target(target: &str) -> String {
    match target.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None => target.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_case_holds_end_to_end_through_the_proxy() {
    let (backend, seen) = recording_backend().await;
    let config = pool("corpus", &[])
        .backend("rec", backend)
        .health(health(Check::None))
        .header_read_timeout(Duration::from_millis(400));
    let proxy = TestProxy::start(&config.toml()).await;
    let addr = proxy.proxy.pool_addr("corpus").unwrap();
    let mut wrong = Vec::new();
    for case in CASES {
        seen.lock().unwrap().clear();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(case.sent).await.unwrap();
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        let statuses: Vec<u16> = got
            .match_indices("HTTP/1.1 ")
            .filter(|(i, _)| {
                got[..*i].is_empty() || got[..*i].ends_with('\n') || got[..*i].ends_with("ok")
            })
            .filter_map(|(i, _)| got.get(i + 9..i + 12)?.parse().ok())
            .filter(|&code| code != 100)
            .collect();
        let mut want_seen = Vec::new();
        let mut want_statuses = Vec::new();
        let mut want_closed = false;
        for outcome in case.want {
            match outcome {
                // CONNECT is framed by the parser, and refused by the proxy.
                Forward("CONNECT", ..) => {
                    want_statuses.push(501);
                }
                Forward(method, target, body, keep_alive) => {
                    want_seen.push((
                        method.to_string(),
                        upstream_target(target),
                        body.as_bytes().to_vec(),
                    ));
                    want_statuses.push(200);
                    want_closed |= !keep_alive;
                }
                Refuse(status) => {
                    want_statuses.push(*status);
                    want_closed = true;
                }
                // Nothing answered: the proxy waits for the rest, then closes the connection
                // on the head's or the body's clock.
                More => {}
            }
        }
        let seen_now = seen.lock().unwrap().clone();
        if seen_now != want_seen || statuses != want_statuses || (want_closed && !closed) {
            wrong.push(format!(
                "{}: backend saw {:?}, client got {statuses:?} (closed: {closed}); want {:?}, {want_statuses:?}",
                case.name,
                seen_now
                    .iter()
                    .map(|(m, t, b)| (m, t, String::from_utf8_lossy(b).into_owned()))
                    .collect::<Vec<_>>(),
                want_seen
                    .iter()
                    .map(|(m, t, b)| (m, t, String::from_utf8_lossy(b).into_owned()))
                    .collect::<Vec<_>>(),
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        CASES.len(),
        wrong.join("\n")
    );
}
