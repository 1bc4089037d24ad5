//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never on by default): each
//! runs crate-private code on untrusted input and checks what must hold whatever the input.

use std::net::IpAddr;

use http::{HeaderMap, Request, header};

use crate::config;
use crate::forward::headers::{self, Client};
use crate::routing::key::{self, KeySource, RequestView};
use crate::routing::ring::hash_key;

/// Parse and validate `text` as a config file; for a valid one small enough to build quickly,
/// build its rings and diff it against itself (nothing may move).
pub fn config(text: &str) {
    let Ok(config) = config::parse(text, "fuzz") else {
        return;
    };
    for pool in &config.pools {
        let points: u64 = pool
            .backends
            .iter()
            .map(|b| u64::from(b.weight) * u64::from(pool.vnodes))
            .sum();
        assert!(
            points <= config::MAX_RING_POINTS,
            "validation lets no ring over the cap"
        );
        if points > 1 << 16 {
            return;
        }
    }
    for diff in config::keyspace_diff(&config, &config) {
        assert_eq!(
            diff.moved, 0.0,
            "a config compared with itself moves nothing"
        );
    }
}

/// Every key source, to try on one request.
fn sources() -> Vec<KeySource> {
    [
        "path",
        "uri",
        "path_prefix:2",
        "host",
        "header:x-shard-key",
        "cookie:session",
        "query:user",
        "client_ip",
    ]
    .iter()
    .map(|s| KeySource::parse(s).expect("valid source"))
    .collect()
}

/// Extract the shard key from `req` with every source: whatever one yields is non-empty and
/// hashes as the request path hashes it. Once from an untrusted peer, once from a trusted one
/// (every address trusted, so `client_ip` walks all of `X-Forwarded-For`).
pub fn key<B>(req: &Request<B>, client_ip: IpAddr) {
    let everyone: [ipnet::IpNet; 2] = ["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    for believed in [&[][..], &everyone[..]] {
        key_with(req, client_ip, believed);
    }
}

fn key_with<B>(req: &Request<B>, client_ip: IpAddr, believed: &[ipnet::IpNet]) {
    let view = RequestView {
        uri: req.uri(),
        headers: req.headers(),
        client_ip,
        believed,
    };
    for source in sources() {
        let one = std::slice::from_ref(&source);
        let extracted = key::extract(one, view).map(|(_, k)| hash_key(k.as_bytes()));
        if let Some((_, k)) = key::extract(one, view) {
            assert!(!k.as_bytes().is_empty(), "{source}: empty keys are no keys");
        }
        assert_eq!(
            extracted,
            key::hash(one, view, crate::routing::ring::Flavor::Xxh3),
            "{source}"
        );
    }
}

/// Settle the host and rewrite `req` for a backend as the request path does, for a client at
/// `peer` that is or is not a trusted proxy; then check the request the backend would get.
pub fn rewrite<B>(mut req: Request<B>, peer: IpAddr, trusted: bool) {
    let nets: Vec<ipnet::IpNet> = if trusted {
        vec![ipnet::IpNet::from(peer)]
    } else {
        Vec::new()
    };
    let client = Client::new(peer, &nets.into());
    if headers::settle_host(&mut req).is_err() {
        return; // answered 400: nothing reaches a backend
    }
    headers::prepare_request(&mut req, &client);
    let h = req.headers();
    assert!(
        h.get_all(header::HOST).iter().count() <= 1,
        "one Host at most"
    );
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    if !trusted {
        assert_eq!(
            h["x-forwarded-for"].as_bytes(),
            peer.to_canonical().to_string().as_bytes()
        );
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
    }
    no_hop_by_hop(h);
    assert!(req.uri().authority().is_none(), "origin-form only");
    assert!(req.uri().path().starts_with('/'));
}

/// Strip the hop-by-hop headers of a response head; none may be left.
pub fn strip_response(mut headers: HeaderMap) {
    headers::strip_hop_by_hop(&mut headers);
    no_hop_by_hop(&headers);
}

fn no_hop_by_hop(h: &HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!h.contains_key(name), "{name} survived");
    }
}

/// One client connection's bytes through a running proxy (started once, on a runtime of its
/// own, in front of a backend that reads requests with our strict parser). Whatever the bytes:
/// the proxy answers or closes within a bound, everything it sends back is a sequence of whole,
/// well-formed responses, and every request that reaches the backend is one the strict parser
/// accepts, framed as its head says. A final `Connection: close` request ends every input that
/// leaves the connection in step.
pub fn http1_connection(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if data.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        return; // h2c, served by hyper: not this target's business
    }
    if data.starts_with(b"HEAD") || data.windows(5).any(|w| w == b"\nHEAD") {
        // Answers to HEAD carry a Content-Length but no body: telling them apart would take
        // knowing which answer belongs to which request. HEAD is the corpus's and the unit
        // tests' business.
        return;
    }
    let harness = connection_harness();
    let addr = harness.proxy;
    let (output, whole) = harness.runtime.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("proxy up");
        let _ = s.write_all(data).await;
        let _ = s
            .write_all(b"GET /end HTTP/1.1\r\nHost: end\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let Ok(read) = read else {
            panic!("the proxy neither answered nor closed in 10 s");
        };
        // A reset (the proxy closed on unread input) may cut what was on its way.
        (out, read.is_ok())
    });
    let mut rest = &output[..];
    while !rest.is_empty() {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if !whole => break,
            other => panic!(
                "a response that does not parse ({other:?}): {:?}",
                String::from_utf8_lossy(rest)
            ),
        };
        let code = resp.code.expect("complete");
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .expect("ascii")
                    .parse::<usize>()
                    .expect("a number")
            });
        let body = if code == 100 {
            0
        } else {
            length.expect("every answer here has a Content-Length")
        };
        if !whole && rest.len() < len + body {
            break;
        }
        assert!(rest.len() >= len + body, "a response cut short");
        rest = &rest[len + body..];
    }
    if let Some(broken) = harness.broken.get() {
        panic!("the backend got a request the strict parser refuses: {broken}");
    }
}

struct ConnectionHarness {
    runtime: tokio::runtime::Runtime,
    proxy: std::net::SocketAddr,
    /// Kept for the fuzzing process's life.
    _running: std::sync::Arc<crate::control::Proxy>,
    /// Set by the backend when a request reached it that our parser refuses.
    broken: &'static std::sync::OnceLock<String>,
}

fn connection_harness() -> &'static ConnectionHarness {
    static HARNESS: std::sync::OnceLock<ConnectionHarness> = std::sync::OnceLock::new();
    static BROKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (proxy, running) = runtime.block_on(async {
            let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let backend_addr = backend.local_addr().expect("addr");
            tokio::spawn(async move {
                while let Ok((s, _)) = backend.accept().await {
                    tokio::spawn(strict_backend(s, &BROKEN));
                }
            });
            let text = format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nshutdown_grace = \"1s\"\n\
                 [[pools]]\nname = \"fuzz\"\nlisten = \"127.0.0.1:0\"\nkey = [\"path\"]\n\
                 header_read_timeout = \"300ms\"\nidle_timeout = \"300ms\"\n\
                 request_timeout = \"1s\"\n[pools.health]\nkind = \"none\"\n\
                 [[pools.backends]]\nid = \"b\"\naddress = \"{backend_addr}\"\n"
            );
            let config = config::parse(&text, "fuzz").expect("valid config");
            let stop = tokio_util::sync::CancellationToken::new();
            let proxy = crate::control::Proxy::start(config, prometheus::Registry::new(), stop)
                .await
                .expect("proxy starts");
            let addr = proxy.pool_addr("fuzz").expect("listening");
            (addr, proxy)
        });
        ConnectionHarness {
            runtime,
            proxy,
            _running: running,
            broken: &BROKEN,
        }
    })
}

/// Read requests with the strict parser and its framing, answer each with a 2-byte body; note
/// any request the parser refuses.
async fn strict_backend(
    mut s: tokio::net::TcpStream,
    broken: &'static std::sync::OnceLock<String>,
) {
    use crate::http1::{Framing, chunked::Decoder, request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (head_len, framing) = loop {
            let mut slots = crate::http1::slots::<{ request::MAX_HEADERS }>();
            match request::parse(&buf, &mut slots, 1 << 20) {
                Ok(Some(head)) => break (head.len, head.framing),
                Ok(None) => {}
                Err(r) => {
                    let _ = broken.set(format!("{r}: {:?}", String::from_utf8_lossy(&buf)));
                    return;
                }
            }
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        buf.drain(..head_len);
        let mut decoder = Decoder::new();
        let mut left = match framing {
            Framing::Length(n) => n as usize,
            _ => 0,
        };
        loop {
            let done = match framing {
                Framing::Chunked => match decoder.advance(&buf) {
                    Ok(step) if step.done => {
                        buf.drain(..step.consumed);
                        true
                    }
                    Ok(step) => {
                        buf.drain(..step.consumed);
                        false
                    }
                    Err(r) => {
                        let _ = broken.set(format!("chunked body: {r}"));
                        return;
                    }
                },
                _ => {
                    let take = left.min(buf.len());
                    buf.drain(..take);
                    left -= take;
                    left == 0
                }
            };
            if done {
                break;
            }
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}
