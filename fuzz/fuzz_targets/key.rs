//! Shard key extraction from arbitrary requests, with every key source.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "http_head.rs"]
mod http_head;

fuzz_target!(|data: &[u8]| {
    if let Some((req, peer)) = http_head::request(data) {
        shardgate::fuzzing::key(&req, peer);
    }
});
