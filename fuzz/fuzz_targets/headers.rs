//! Header rewriting at the hop: Host rules, hop-by-hop stripping, forwarding headers, for
//! trusted and untrusted peers; and hop-by-hop stripping of a response head.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "http_head.rs"]
mod http_head;

fuzz_target!(|data: &[u8]| {
    if let Some((req, peer)) = http_head::request(data) {
        let trusted = data[0] & 1 == 1;
        shardgate::fuzzing::strip_response(req.headers().clone());
        shardgate::fuzzing::rewrite(req, peer, trusted);
    }
});
