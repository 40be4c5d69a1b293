#![no_main]
use keel_storage::snapshot::decode_snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_snapshot(data);
    // Also with a valid checksum, so the fuzzer reaches past it.
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&keel_codec::crc32c(data).to_le_bytes());
    let _ = decode_snapshot(&sealed);
});
