#![no_main]
//! Fails on purpose: proves the fuzzing harness finds a planted crash (TigerBeetle keeps one too).
//! `cargo fuzz run harness_self_test` must report a crash within seconds.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 && &data[..4] == b"KEEL" {
        panic!("planted crash found: the harness works");
    }
});
