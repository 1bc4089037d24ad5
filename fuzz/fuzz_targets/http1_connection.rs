//! Client bytes through a running proxy over a real socket, to a backend that reads them with
//! the strict parser: the proxy answers or closes in time, answers are whole and well-formed,
//! and nothing the backend gets is refused by the strict parser. See
//! `shardgate::fuzzing::http1_connection`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardgate::fuzzing::http1_connection(data);
});
