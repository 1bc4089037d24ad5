//! The HTTP/1 parsers (`shardgate::http1`): request heads, response heads and the chunked
//! decoder on arbitrary bytes. Beyond "no panic": a head never claims more bytes than it was
//! given, the decoder never consumes past its input, and bytes fed in two pieces (split where
//! the input's first byte says) are framed exactly as when fed at once. A request head the
//! parser accepts is written as the backend would get it, and that must parse again as one
//! complete HTTP/1.1 head with at most one Host and no hop-by-hop field; a response head the
//! parser accepts is written as the client would get it, and that must parse again with the
//! same status and framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http1::chunked::Decoder;
use shardgate::http1::forward::{Down, Hop, is_hop_by_hop, write_request, write_response};
use shardgate::http1::{request, response};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let mut slots = shardgate::http1::slots::<{ request::MAX_HEADERS }>();
    if let Ok(Some(head)) = request::parse(data, &mut slots, 16 * 1024) {
        assert!(head.len <= data.len());
        assert!(head.method.len() + head.target.len() < head.len);
        let mut out = Vec::new();
        let hop = Hop {
            client: "10.0.0.9",
            trusted: split & 2 == 2,
            https: split & 4 == 4,
        };
        // Half the heads go on as a protocol switch would (the proxy decides that from the
        // head; here any head may carry it).
        let upgrade = split & 8 == 8;
        if write_request(&head, hop, &mut out).is_ok() {
            if upgrade {
                shardgate::http1::forward::add_upgrade(head.headers, &mut out);
            }
            let mut slots = [httparse::EMPTY_HEADER; request::MAX_HEADERS + 8];
            let mut back = httparse::Request::new(&mut slots);
            let status = back.parse(&out).expect("the forwarded head parses");
            assert_eq!(status, httparse::Status::Complete(out.len()));
            assert_eq!(back.version, Some(1));
            assert!(back.path.unwrap().starts_with('/') || back.path == Some("*"));
            let hosts = back
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            assert!(hosts.count() <= 1);
            for h in back.headers.iter() {
                let framing = h.name == "transfer-encoding";
                let switch = upgrade && (h.name == "connection" || h.name == "upgrade");
                assert!(
                    framing || switch || !is_hop_by_hop(h.name.as_bytes()),
                    "{}",
                    h.name
                );
            }
            // And the backend, reading it by the same rules, frames the same body.
            let mut slots = shardgate::http1::slots::<{ request::MAX_HEADERS + 8 }>();
            match request::parse(&out, &mut slots, 1 << 20) {
                Ok(Some(again)) => {
                    assert_eq!(again.framing, head.framing);
                    assert_eq!(again.method, head.method);
                    assert_eq!(again.len, out.len());
                }
                other => panic!(
                    "the forwarded head is refused ({:?}): {}",
                    other.err(),
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }
    let mut slots = shardgate::http1::slots::<{ request::MAX_HEADERS }>();
    let method = if split & 1 == 0 { "GET" } else { "HEAD" };
    if let Ok(Some(head)) = response::parse(data, &mut slots, 16 * 1024, method) {
        assert!(head.len <= data.len());
        assert!((100..1000).contains(&head.status));
        // The head the client gets parses again, by the same rules, as one complete HTTP/1.1
        // head with the same status and the same framing, at most one Content-Length and no
        // hop-by-hop field but the framing and connection fields this hop writes.
        let down = Down {
            client_minor: 1,
            close: split & 16 == 16,
        };
        let mut out = Vec::new();
        write_response(&head, down, &mut out);
        let mut again_slots = shardgate::http1::slots::<{ request::MAX_HEADERS + 8 }>();
        match response::parse(&out, &mut again_slots, 1 << 20, method) {
            Ok(Some(again)) => {
                assert_eq!(again.len, out.len());
                assert_eq!(again.minor, 1);
                assert_eq!(again.status, head.status);
                assert_eq!(again.framing, head.framing);
                let lengths = again
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
                assert!(lengths.count() <= 1);
                for h in again.headers.iter() {
                    let ours = matches!(h.name, "transfer-encoding" | "connection");
                    assert!(ours || !is_hop_by_hop(h.name.as_bytes()), "{}", h.name);
                }
            }
            other => panic!(
                "the head passed on is refused ({:?}): {}",
                other.err(),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    // The decoder: whole, and in two pieces.
    let whole = Decoder::new().advance(data);
    if let Ok(a) = whole {
        assert!(a.consumed <= data.len());
        assert!(a.done || a.consumed == data.len());
    }
    let cut = usize::from(split).min(data.len());
    let mut d = Decoder::new();
    let pieces = d.advance(&data[..cut]).and_then(|first| {
        if first.done {
            return Ok(first);
        }
        d.advance(&data[cut..])
            .map(|second| shardgate::http1::chunked::Advance {
                consumed: first.consumed + second.consumed,
                done: second.done,
            })
    });
    assert_eq!(whole.map_err(|r| r.why), pieces.map_err(|r| r.why));
});
