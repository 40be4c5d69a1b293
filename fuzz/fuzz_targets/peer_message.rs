#![no_main]
use keel_codec::raft::{decode_message, encode_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_message(data) {
        assert_eq!(encode_message(&msg), data);
    }
});
