#![no_main]
//! The common name of a client or peer certificate, read from DER bytes that came off the
//! network: any bytes give a name or none, never a panic; a name is always valid UTF-8 and no
//! longer than its input.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = keel_server::tls::subject::common_name(data) {
        assert!(name.len() <= data.len());
    }
});
