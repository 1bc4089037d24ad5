//! Config load + validate on arbitrary text: never a panic, every problem reported.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardgate::fuzzing::config(&String::from_utf8_lossy(data));
});
