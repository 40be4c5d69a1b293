//! The permission check against a brute-force model: every key of a small universe, checked
//! one by one against every permission. Keys and range ends are at most two bytes over
//! {0x00, 'a', 'b'}, so any gap between permissions starts at a key of at most three bytes (a
//! range end, or a single key's successor `k\0`): the universe of keys up to three bytes holds
//! a witness for every refusal, and the model is exact.

use keel_auth::{KeyRange, Permissions};
use proptest::prelude::*;

const ALPHABET: [u8; 3] = [0x00, b'a', b'b'];

fn universe() -> Vec<Vec<u8>> {
    let mut keys = vec![Vec::new()];
    let mut frontier = vec![Vec::new()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for key in &frontier {
            for &byte in &ALPHABET {
                let mut longer: Vec<u8> = key.clone();
                longer.push(byte);
                next.push(longer);
            }
        }
        keys.extend(next.iter().cloned());
        frontier = next;
    }
    keys.retain(|k| !k.is_empty());
    keys
}

/// Whether `x` is one of the keys etcd's `(key, end)` names.
fn names(key: &[u8], end: &[u8], x: &[u8]) -> bool {
    match end {
        [] => x == key,
        [0] => x >= key,
        end => key <= x && x < end,
    }
}

fn model(grants: &[(Vec<u8>, Vec<u8>)], key: &[u8], end: &[u8]) -> bool {
    let covered = |x: &[u8]| grants.iter().any(|(k, e)| names(k, e, x));
    let wanted: Vec<Vec<u8>> = universe().into_iter().filter(|x| names(key, end, x)).collect();
    if wanted.is_empty() {
        // An empty or inverted range: allowed when its first key is (etcd's interval tree).
        return covered(key);
    }
    wanted.iter().all(|x| covered(x))
}

fn short_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(ALPHABET.to_vec()), 1..=2)
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(Vec::new()), Just(vec![0u8]), short_key()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn the_check_allows_exactly_what_every_key_of_the_range_being_permitted_allows(
        grants in prop::collection::vec((short_key(), range_end()), 0..5),
        key in short_key(),
        end in range_end(),
    ) {
        let perms = Permissions::from_grants(grants.iter().map(|(k, e)| (KeyRange::new(k, e), true, false)));
        let want = model(&grants, &key, &end);
        prop_assert_eq!(perms.may_read(KeyRange::new(&key, &end)), want, "grants {:?}, request ({:?}, {:?})", grants, key, end);
        prop_assert!(!perms.may_write(KeyRange::new(&key, &end)), "read grants allow no writes");
    }
}
