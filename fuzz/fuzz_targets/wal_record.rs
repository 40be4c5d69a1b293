#![no_main]
use keel_codec::frame::decode_frame;
use keel_codec::record::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        // Whatever decodes must encode back to the same bytes.
        assert_eq!(record.encode(), data);
    }
    let _ = decode_frame(data, 0, 1 << 20);
});
