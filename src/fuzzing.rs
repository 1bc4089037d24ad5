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
/// hashes as the request path hashes it.
pub fn key<B>(req: &Request<B>, client_ip: IpAddr) {
    let view = RequestView {
        uri: req.uri(),
        headers: req.headers(),
        client_ip,
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
    let client = Client::new(peer, &nets);
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
