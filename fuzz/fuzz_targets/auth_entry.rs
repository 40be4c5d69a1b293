#![no_main]
//! Auth entries and the auth store as they come off the log, a snapshot or the store file:
//! anything decodes to an error or to a value that encodes back to itself.
use keel_auth::{AuthCommand, AuthStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = AuthCommand::decode(data) {
        assert_eq!(command.encode(), data);
    }
    if let Ok(store) = AuthStore::decode(data) {
        let again = AuthStore::decode(&store.encode()).expect("an encoded store decodes");
        assert_eq!(again, store);
    }
    if let Ok((user, revision, inner)) = keel_machine::unwrap(data) {
        assert_eq!(keel_machine::wrap(&user, revision, inner), data);
    }
});
