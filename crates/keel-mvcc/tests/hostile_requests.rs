//! Every request shape the API allows, applied on two replicas: no panic, and the same outcome
//! and the same data on both. A committed entry whose apply panics replays at every restart and
//! takes every member down for good, so the apply path must be total over what a client can
//! send: nested txns, open-ended (`"\0"`) and prefix ranges, deletes and puts of overlapping
//! keys, `ignore_value`/`ignore_lease` on keys that do not (or no longer) exist, leases that were
//! never granted, extreme revisions and limits. (In test builds a txn whose precheck misses an
//! error trips a debug assertion, so this also proves the precheck exact for these shapes.)

mod common;

use bytes::Bytes;
use common::TempPath;
use keel_mvcc::*;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        Just(Bytes::from_static(b"\0")),
        Just(Bytes::from_static(b"a")),
        Just(Bytes::from_static(b"ab")),
        Just(Bytes::from_static(b"b")),
        Just(Bytes::from_static(b"ba")),
        Just(Bytes::from_static(b"c")),
        Just(Bytes::from_static(b"\xff")),
    ]
}
fn end() -> impl Strategy<Value = Bytes> {
    prop_oneof![Just(Bytes::new()), Just(Bytes::from_static(b"\0")), key()]
}
fn lease() -> impl Strategy<Value = i64> {
    prop_oneof![8 => Just(0i64), 2 => Just(1), 1 => Just(2), 1 => Just(-1), 1 => Just(i64::MAX), 1 => Just(i64::MIN)]
}
fn revision() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(1), Just(3), Just(-1), Just(-7), Just(i64::MAX), Just(i64::MIN), 0i64..30]
}
fn put() -> impl Strategy<Value = PutRequest> {
    // An ignore flag comes mostly with what it needs (no value, no lease): etcd refuses the
    // rest up front, and the shapes that reach apply are the interesting ones.
    (key(), any::<bool>(), lease(), 0u8..8, 0u8..8).prop_map(|(key, prev_kv, lease, ignore, value)| {
        let (ignore_value, ignore_lease) = (ignore == 1 || ignore == 3, ignore == 2 || ignore == 3);
        PutRequest {
            key,
            value: match value {
                _ if ignore_value && value > 0 => Bytes::new(),
                0 => Bytes::from(vec![7u8; 300]),
                _ => Bytes::from_static(b"v"),
            },
            lease: if ignore_lease && value > 0 { 0 } else { lease },
            prev_kv,
            ignore_value,
            ignore_lease,
        }
    })
}
fn del() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest { key, range_end, prev_kv })
}
fn range() -> impl Strategy<Value = RangeRequest> {
    (key(), end(), revision(), prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX), Just(i64::MIN)], any::<u8>())
        .prop_map(|(key, range_end, revision, limit, flags)| RangeRequest {
            key,
            range_end,
            revision,
            limit,
            sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][flags as usize % 3],
            sort_target: [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value]
                [(flags as usize / 3) % 5],
            keys_only: flags & 1 != 0,
            count_only: flags & 2 != 0,
            min_mod_revision: if flags & 4 != 0 { 2 } else { 0 },
            max_create_revision: if flags & 8 != 0 { 3 } else { 0 },
            ..Default::default()
        })
}
fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        revision().prop_map(CompareTarget::Version),
        revision().prop_map(CompareTarget::Create),
        revision().prop_map(CompareTarget::Mod),
        Just(CompareTarget::Value(Bytes::from_static(b"v"))),
        lease().prop_map(CompareTarget::Lease),
    ];
    let result = prop_oneof![
        Just(CompareResult::Equal),
        Just(CompareResult::NotEqual),
        Just(CompareResult::Greater),
        Just(CompareResult::Less)
    ];
    (key(), end(), target, result).prop_map(|(key, range_end, target, result)| Compare {
        key,
        range_end,
        target,
        result,
    })
}
fn op() -> impl Strategy<Value = RequestOp> {
    let leaf = prop_oneof![
        3 => put().prop_map(RequestOp::Put),
        2 => del().prop_map(RequestOp::DeleteRange),
        1 => range().prop_map(RequestOp::Range),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(inner.clone(), 0..3),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(compare, success, failure)| RequestOp::Txn(TxnRequest { compare, success, failure }))
    })
}
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => put().prop_map(Command::Put),
        1 => del().prop_map(Command::DeleteRange),
        6 => (prop::collection::vec(compare(), 0..3), prop::collection::vec(op(), 0..4), prop::collection::vec(op(), 0..3))
            .prop_map(|(compare, success, failure)| Command::Txn(TxnRequest { compare, success, failure })),
        1 => revision().prop_map(|revision| Command::Compact { revision }),
        1 => (lease(), prop_oneof![Just(0i64), Just(5), Just(-1), Just(i64::MAX)])
            .prop_map(|(id, ttl_seconds)| Command::LeaseGrant { id, ttl_seconds }),
        1 => lease().prop_map(|id| Command::LeaseRevoke { id }),
        1 => (lease(), revision()).prop_map(|(id, remaining_ttl_seconds)| Command::LeaseCheckpoint { id, remaining_ttl_seconds }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn every_request_applies_identically_on_two_replicas_and_never_panics(
        commands in prop::collection::vec(command(), 1..40)
    ) {
        let path = TempPath::new("hostile");
        let mut memory = Store::open(MemBackend::default(), StoreOptions::default()).expect("open");
        let mut redb = Store::open(RedbBackend::open(&path.0).expect("redb"), StoreOptions::default()).expect("open");
        for (i, command) in commands.iter().enumerate() {
            let index = i as u64 + 1;
            // The command crosses the log encoded: decode what the replicas would read.
            let decoded = Command::decode(&command.encode()).expect("every command the API can build encodes");
            let a = memory.apply(index, &decoded).expect("no storage error");
            let b = redb.apply(index, &decoded).expect("no storage error");
            prop_assert_eq!(&a, &b, "command {} {:?}", i, command);
            memory.commit().expect("commit");
            redb.commit().expect("commit");
        }
        let rev = memory.current_revision();
        prop_assert_eq!(rev, redb.current_revision());
        let (a, b) = (memory.hash_kv(0), redb.hash_kv(0));
        prop_assert_eq!(a, b);
        let all = RangeRequest { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0"), ..Default::default() };
        prop_assert_eq!(memory.range(&all), redb.range(&all));
    }
}

/// The shape that crashed etcd 3.4 to main (issue 22445) and keel alike: a delete to the end of
/// the key space, then a put that needs the key it just deleted.
#[test]
fn a_put_that_needs_a_key_an_open_ended_delete_removed_is_refused_before_anything_is_written() {
    let mut store = Store::open(MemBackend::default(), StoreOptions::default()).expect("open");
    let put = |key: &'static [u8], ignore_value: bool| PutRequest {
        key: Bytes::from_static(key),
        value: if ignore_value { Bytes::new() } else { Bytes::from_static(b"v") },
        ignore_value,
        ..Default::default()
    };
    assert!(matches!(store.apply(1, &Command::Put(put(b"b", false))), Ok(ApplyOutcome::Applied(Ok(_)))));
    for (index, open_ended) in [(2, b"a".as_slice()), (3, b"".as_slice())] {
        let txn = TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: Bytes::from_static(open_ended),
                    range_end: Bytes::from_static(b"\0"),
                    prev_kv: false,
                }),
                RequestOp::Put(put(b"b", true)),
            ],
            failure: vec![],
        };
        match store.apply(index, &Command::Txn(txn)) {
            Ok(ApplyOutcome::Applied(Err(MvccError::DuplicateKey))) => {}
            other => panic!("expected etcd's duplicate key error, got {other:?}"),
        }
    }
    let all =
        RangeRequest { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0"), ..Default::default() };
    let left = store.range(&all).expect("range");
    assert_eq!(left.kvs.len(), 1, "the refused txns deleted nothing");
    assert_eq!(store.current_revision(), 2);
}
