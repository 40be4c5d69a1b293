//! etcd's documented behaviour, one named case per behaviour, run on both backends.

mod common;

use common::{b, Db};
use keel_mvcc::*;

fn rq(key: &str, end: &str) -> RangeRequest {
    RangeRequest { key: b(key), range_end: b(end), ..Default::default() }
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest { key: b(k), value: b(v), ..Default::default() })
}

fn del_op(k: &str, end: &str) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest { key: b(k), range_end: b(end), prev_kv: false })
}

fn range_op(k: &str, end: &str) -> RequestOp {
    RequestOp::Range(rq(k, end))
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare { key: b(k), range_end: Default::default(), target, result }
}

fn revision_numbering<B: Backend>(mut db: Db<B>) {
    assert_eq!(db.s.current_revision(), 1, "store starts at revision 1");
    assert_eq!(db.put("a", "1").revision, 2, "first write is revision 2");
    assert_eq!(db.put("b", "1").revision, 3);
    let d = db.del("missing", "");
    assert_eq!((d.deleted, d.revision), (0, 3), "deleting nothing keeps the revision");
    assert_eq!(db.del("a", "").revision, 4);
    let t = db.txn(TxnRequest { success: vec![put_op("x", "1"), put_op("y", "1")], ..Default::default() }).unwrap();
    assert_eq!(t.revision, 5, "a txn is one revision");
    assert_eq!(db.get("x").unwrap().mod_revision, 5);
    assert_eq!(db.get("y").unwrap().mod_revision, 5);
    let ro = db.txn(TxnRequest { success: vec![range_op("x", "")], ..Default::default() }).unwrap();
    assert_eq!(ro.revision, 5, "read-only txn keeps the revision");
    let del_nothing = db.txn(TxnRequest { success: vec![del_op("nope", "")], ..Default::default() }).unwrap();
    assert_eq!(del_nothing.revision, 5);
    assert_eq!(db.s.current_revision(), 5);
    // A range's header revision is the current revision even when reading the past.
    assert_eq!(db.range(RangeRequest { revision: 2, ..rq("a", "") }).unwrap().revision, 5);
}

fn version_and_create_revision_across_recreate<B: Backend>(mut db: Db<B>) {
    db.put("a", "1");
    db.put("a", "2");
    let kv = db.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    db.del("a", "");
    assert_eq!(db.get("a"), None, "tombstone hides the key");
    db.put("a", "3");
    let kv = db.get("a").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.value.as_ref()),
        (5, 5, 1, &b"3"[..]),
        "recreate starts a new generation"
    );
}

fn range_at_past_revision<B: Backend>(mut db: Db<B>) {
    db.put("a", "1"); // 2
    db.put("a", "2"); // 3
    db.del("a", ""); // 4
    db.put("b", "1"); // 5
    assert_eq!(db.get_at("a", 2).unwrap().unwrap().value, b("1"));
    assert_eq!(db.get_at("a", 3).unwrap().unwrap().value, b("2"));
    assert_eq!(db.get_at("a", 4).unwrap(), None);
    assert_eq!(db.get_at("b", 4).unwrap(), None);
    assert_eq!(db.get_at("a", 1).unwrap(), None);
    let all = db.range(RangeRequest { revision: 3, ..rq("\0", "\0") }).unwrap();
    assert_eq!(all.count, 1);
}

fn future_revision_error<B: Backend>(mut db: Db<B>) {
    db.put("a", "1");
    let e = db.get_at("a", 3).unwrap_err();
    assert_eq!(e, MvccError::FutureRevision);
    assert_eq!(e.to_string(), "mvcc: required revision is a future revision");
}

fn range_limit_more_count<B: Backend>(mut db: Db<B>) {
    for k in ["a", "b", "c", "d"] {
        db.put(k, "v");
    }
    let r = db.range(RangeRequest { limit: 2, ..rq("a", "z") }).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 4));
    assert_eq!(r.kvs[1].key, b("b"));
    let r = db.range(RangeRequest { limit: 4, ..rq("a", "z") }).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4));
    let r = db.range(RangeRequest { limit: 0, ..rq("a", "z") }).unwrap();
    assert_eq!((r.kvs.len(), r.more), (4, false));
}

fn range_sort_orders_and_targets<B: Backend>(mut db: Db<B>) {
    db.put("a", "3"); // 2
    db.put("b", "1"); // 3
    db.put("c", "2"); // 4
    db.put("b", "4"); // 5: b version 2
    db.put("c", "5"); // 6: c version 2
    db.put("c", "0"); // 7: c version 3
    let sorted = |db: &Db<B>, order, target| {
        db.keys(RangeRequest { sort_order: order, sort_target: target, ..rq("a", "z") }).join("")
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(&db, None, Key), "abc");
    assert_eq!(sorted(&db, Ascend, Key), "abc");
    assert_eq!(sorted(&db, Descend, Key), "cba");
    assert_eq!(sorted(&db, Ascend, Version), "abc");
    assert_eq!(sorted(&db, Descend, Version), "cba");
    assert_eq!(sorted(&db, None, Version), "abc", "non-key target defaults to ascend");
    assert_eq!(sorted(&db, Ascend, Create), "abc");
    assert_eq!(sorted(&db, Descend, Create), "cba");
    assert_eq!(sorted(&db, Ascend, Mod), "abc");
    assert_eq!(sorted(&db, Descend, Mod), "cba");
    // values: a=3, b=4, c=0
    assert_eq!(sorted(&db, Ascend, Value), "cab");
    assert_eq!(sorted(&db, Descend, Value), "bac");
    assert_eq!(sorted(&db, None, Value), "cab");
    // sorting happens before the limit
    let r = db.range(RangeRequest { limit: 1, sort_order: Descend, sort_target: Value, ..rq("a", "z") }).unwrap();
    assert_eq!((r.kvs[0].key.as_ref(), r.more, r.count), (&b"b"[..], true, 3));
}

fn range_keys_only_and_count_only<B: Backend>(mut db: Db<B>) {
    db.put("a", "1");
    db.put("b", "2");
    let r = db.range(RangeRequest { keys_only: true, ..rq("a", "c") }).unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));
    let r = db.range(RangeRequest { count_only: true, ..rq("a", "c") }).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 2, false));
}

fn range_min_max_revision_filters<B: Backend>(mut db: Db<B>) {
    db.put("a", "1"); // 2
    db.put("b", "1"); // 3
    db.put("c", "1"); // 4
    db.put("a", "2"); // 5: a create 2 mod 5
    let f = |db: &Db<B>, q: RangeRequest| {
        let r = db.range(q).unwrap();
        (r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect::<String>(), r.count)
    };
    // count is before the filters, as etcd
    assert_eq!(f(&db, RangeRequest { min_mod_revision: 4, ..rq("a", "z") }), ("ac".into(), 3));
    assert_eq!(f(&db, RangeRequest { max_mod_revision: 3, ..rq("a", "z") }), ("b".into(), 3));
    assert_eq!(f(&db, RangeRequest { min_create_revision: 3, ..rq("a", "z") }), ("bc".into(), 3));
    assert_eq!(f(&db, RangeRequest { max_create_revision: 3, ..rq("a", "z") }), ("ab".into(), 3));
    let r = db.range(RangeRequest { min_create_revision: 3, limit: 1, ..rq("a", "z") }).unwrap();
    assert_eq!((r.kvs.len(), r.more), (1, true), "limit applies after filters");
}

fn range_end_forms<B: Backend>(mut db: Db<B>) {
    for k in ["a", "ab", "abc", "b", "c"] {
        db.put(k, "v");
    }
    assert_eq!(db.keys(rq("ab", "")), ["ab"], "empty end: single key");
    assert_eq!(db.keys(rq("ab", "ac")), ["ab", "abc"], "prefix");
    assert_eq!(db.keys(rq("ab", "\0")), ["ab", "abc", "b", "c"], "\\0: all keys >= key");
    assert_eq!(db.keys(rq("\0", "\0")), ["a", "ab", "abc", "b", "c"], "all keys");
    assert!(db.keys(rq("b", "a")).is_empty(), "end before key: nothing");
    assert!(db.keys(rq("b", "b")).is_empty());
    assert!(db.keys(rq("zz", "")).is_empty());
    let d = db.del("ab", "\0");
    assert_eq!(d.deleted, 4);
    assert_eq!(db.keys(rq("\0", "\0")), ["a"]);
}

fn compaction_errors_and_messages<B: Backend>(mut db: Db<B>) {
    db.put("a", "1"); // 2
    db.put("a", "2"); // 3
    db.put("a", "3"); // 4
    let e = db.compact(5).unwrap_err();
    assert_eq!(
        (e.clone(), e.to_string()),
        (MvccError::FutureRevision, "mvcc: required revision is a future revision".into())
    );
    db.compact(3).unwrap();
    assert_eq!(db.s.compacted_revision(), 3);
    let e = db.get_at("a", 2).unwrap_err();
    assert_eq!((e.clone(), e.to_string()), (MvccError::Compacted, "mvcc: required revision has been compacted".into()));
    assert_eq!(db.get_at("a", 3).unwrap().unwrap().value, b("2"), "the compacted revision stays readable");
    assert_eq!(db.compact(3).unwrap_err(), MvccError::Compacted);
    assert_eq!(db.compact(2).unwrap_err(), MvccError::Compacted);
    db.compact(4).unwrap();
    let kv = db.get("a").unwrap();
    assert_eq!((kv.version, kv.create_revision), (3, 2), "versions survive compaction");
}

fn compaction_drops_tombstoned_keys<B: Backend>(mut db: Db<B>) {
    db.put("a", "1"); // 2
    db.del("a", ""); // 3
    db.put("b", "1"); // 4
    db.compact(3).unwrap();
    while !db.s.compaction_step(1).unwrap() {}
    db.s.commit().unwrap();
    assert_eq!(db.s.indexed_keys(), 1);
    assert_eq!(db.get_at("a", 3).unwrap(), None);
    assert_eq!(db.get("b").unwrap().mod_revision, 4);
    db.put("a", "again");
    assert_eq!(db.get("a").unwrap().version, 1);
}

fn compaction_step_keeps_reads_correct<B: Backend>(mut db: Db<B>) {
    for i in 0..50 {
        db.put(&format!("k{}", i % 7), &format!("v{i}"));
    }
    let before: Vec<_> =
        (40..=51).map(|r| db.range(RangeRequest { revision: r, ..rq("\0", "\0") }).unwrap().kvs).collect();
    db.compact(40).unwrap();
    loop {
        let after: Vec<_> =
            (40..=51).map(|r| db.range(RangeRequest { revision: r, ..rq("\0", "\0") }).unwrap().kvs).collect();
        assert_eq!(before, after, "reads at >= compacted revision unchanged during compaction");
        if db.s.compaction_step(3).unwrap() {
            break;
        }
    }
    assert!(!db.s.compaction_pending());
}

fn txn_compare_targets<B: Backend>(mut db: Db<B>) {
    db.grant(7, 100).unwrap();
    db.put("a", "m"); // 2 (a grant does not bump the revision)
    db.put_lease("a", "m", 7).unwrap(); // 3: version 2, create 2, mod 3
    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        (Version(2), Equal, true),
        (Version(1), Greater, true),
        (Version(3), Less, true),
        (Version(2), NotEqual, false),
        (Create(2), Equal, true),
        (Create(2), Greater, false),
        (Create(1), Greater, true),
        (Mod(3), Equal, true),
        (Mod(4), Less, true),
        (Mod(3), Less, false),
        (Value(b("m")), Equal, true),
        (Value(b("a")), Greater, true),
        (Value(b("z")), Less, true),
        (Value(b("m")), NotEqual, false),
        (Lease(7), Equal, true),
        (Lease(0), Greater, true),
    ];
    for (target, result, want) in cases {
        let c = cmp("a", target.clone(), result);
        let t = db.txn(TxnRequest { compare: vec![c], ..Default::default() }).unwrap();
        assert_eq!(t.succeeded, want, "{target:?} {result:?}");
    }
    // a missing key compares as zeroes, but never on its value
    let missing = |db: &mut Db<B>, target, result| {
        db.txn(TxnRequest { compare: vec![cmp("zz", target, result)], ..Default::default() }).unwrap().succeeded
    };
    assert!(missing(&mut db, Version(0), Equal));
    assert!(missing(&mut db, Create(0), Equal));
    assert!(missing(&mut db, Mod(0), Equal));
    assert!(missing(&mut db, Lease(0), Equal));
    assert!(!missing(&mut db, Value(b("")), Equal));
    assert!(!missing(&mut db, Value(b("")), NotEqual));
}

fn txn_compare_over_range<B: Backend>(mut db: Db<B>) {
    db.put("p/a", "1");
    db.put("p/b", "1");
    db.put("p/b", "2"); // p/b version 2
    let c = |result, v| Compare { key: b("p/"), range_end: b("p0"), target: CompareTarget::Version(v), result };
    let run =
        |db: &mut Db<B>, c: Compare| db.txn(TxnRequest { compare: vec![c], ..Default::default() }).unwrap().succeeded;
    assert!(run(&mut db, c(CompareResult::Greater, 0)), "every key has version > 0");
    assert!(!run(&mut db, c(CompareResult::Equal, 1)), "p/b has version 2");
    assert!(run(&mut db, c(CompareResult::Less, 3)));
    let empty =
        Compare { key: b("q/"), range_end: b("q0"), target: CompareTarget::Version(0), result: CompareResult::Equal };
    assert!(run(&mut db, empty), "empty range compares as a missing key");
}

fn txn_branches_nested_and_reads_see_writes<B: Backend>(mut db: Db<B>) {
    db.put("a", "1"); // 2
    let t = db
        .txn(TxnRequest {
            compare: vec![cmp("a", CompareTarget::Value(b("1")), CompareResult::Equal)],
            success: vec![
                put_op("b", "1"),
                range_op("b", ""),
                RequestOp::Txn(TxnRequest {
                    // nested compares see the state before the outer txn: b does not exist
                    compare: vec![cmp("b", CompareTarget::Version(0), CompareResult::Equal)],
                    success: vec![put_op("c", "nested")],
                    failure: vec![put_op("c", "wrong")],
                }),
                range_op("\0", "\0"),
            ],
            failure: vec![put_op("f", "1")],
        })
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, 3);
    let ResponseOp::Range(r) = &t.responses[1] else { panic!() };
    assert_eq!(r.kvs.len(), 1, "reads inside a txn see its earlier writes");
    assert_eq!((r.kvs[0].mod_revision, r.revision), (3, 3));
    let ResponseOp::Txn(n) = &t.responses[2] else { panic!() };
    assert!(n.succeeded);
    let ResponseOp::Range(all) = &t.responses[3] else { panic!() };
    assert_eq!(all.count, 3);
    assert_eq!(db.get("c").unwrap().value, b("nested"));
    assert_eq!(db.get("c").unwrap().mod_revision, 3);
    assert_eq!(db.get("f"), None);
    // failure branch
    let t = db
        .txn(TxnRequest {
            compare: vec![cmp("a", CompareTarget::Value(b("2")), CompareResult::Equal)],
            success: vec![put_op("s", "1")],
            failure: vec![put_op("f", "1")],
        })
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!((db.get("s"), db.get("f").unwrap().mod_revision), (None, 4));
}

fn txn_sub_revisions_and_events<B: Backend>(mut db: Db<B>) {
    db.put("a", "1");
    db.s.take_events();
    db.txn(TxnRequest { success: vec![put_op("x", "1"), del_op("a", ""), put_op("y", "1")], ..Default::default() })
        .unwrap();
    let ev = db.s.take_events();
    let kinds: Vec<_> =
        ev.iter().map(|e| (e.kind, String::from_utf8_lossy(&e.kv.key).into_owned(), e.kv.mod_revision)).collect();
    assert_eq!(
        kinds,
        [(EventKind::Put, "x".into(), 3), (EventKind::Delete, "a".into(), 3), (EventKind::Put, "y".into(), 3)]
    );
}

fn txn_duplicate_key<B: Backend>(mut db: Db<B>) {
    db.put("a", "1");
    for ops in [
        vec![put_op("a", "1"), put_op("a", "2")],
        vec![put_op("a", "1"), del_op("a", "")],
        vec![del_op("a", "b"), put_op("a", "2")],
    ] {
        let e = db.txn(TxnRequest { success: ops, ..Default::default() }).unwrap_err();
        assert_eq!(e.to_string(), "etcdserver: duplicate key given in txn request");
    }
    assert_eq!(db.s.current_revision(), 2, "rejected txns change nothing");
    // the same key in success and failure is fine
    db.txn(TxnRequest { success: vec![put_op("a", "s")], failure: vec![put_op("a", "f")], ..Default::default() })
        .unwrap();
}

fn txn_errors_change_nothing<B: Backend>(mut db: Db<B>) {
    db.put("a", "1"); // 2
    let bad_lease = RequestOp::Put(PutRequest { key: b("b"), lease: 99, ..Default::default() });
    let e = db.txn(TxnRequest { success: vec![put_op("x", "1"), bad_lease], ..Default::default() }).unwrap_err();
    assert_eq!(e, MvccError::LeaseNotFound);
    let e = db
        .txn(TxnRequest {
            success: vec![put_op("x", "1"), RequestOp::Range(RangeRequest { revision: 3, ..rq("a", "") })],
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e, MvccError::FutureRevision, "a txn cannot read its own revision by number");
    let ign = RequestOp::Put(PutRequest { key: b("zz"), ignore_value: true, ..Default::default() });
    assert_eq!(db.txn(TxnRequest { success: vec![ign], ..Default::default() }).unwrap_err(), MvccError::KeyNotFound);
    assert_eq!(db.get("x"), None);
    assert_eq!(db.s.current_revision(), 2);
    // an error in the branch not taken is not checked
    let bad = RequestOp::Put(PutRequest { key: b("b"), lease: 99, ..Default::default() });
    let t = db.txn(TxnRequest { success: vec![put_op("x", "1")], failure: vec![bad], ..Default::default() }).unwrap();
    assert!(t.succeeded);
}

fn prev_kv_on_put_and_delete<B: Backend>(mut db: Db<B>) {
    let r = db.put_req(PutRequest { key: b("a"), value: b("1"), prev_kv: true, ..Default::default() }).unwrap();
    assert_eq!(r.prev_kv, None);
    let r = db.put_req(PutRequest { key: b("a"), value: b("2"), prev_kv: true, ..Default::default() }).unwrap();
    assert_eq!(r.prev_kv.unwrap().value, b("1"));
    db.put("b", "x");
    let d = db.del_req(DeleteRangeRequest { key: b("a"), range_end: b("c"), prev_kv: true });
    assert_eq!(d.deleted, 2);
    let vals: Vec<_> = d.prev_kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(vals, [b("2"), b("x")]);
    let d = db.del_req(DeleteRangeRequest { key: b("a"), range_end: b("c"), prev_kv: false });
    assert_eq!((d.deleted, d.prev_kvs.len()), (0, 0));
}

fn ignore_value_and_lease<B: Backend>(mut db: Db<B>) {
    let e = db.put_req(PutRequest { key: b("a"), ignore_value: true, ..Default::default() }).unwrap_err();
    assert_eq!((e.clone(), e.to_string()), (MvccError::KeyNotFound, "etcdserver: key not found".into()));
    let e = db.put_req(PutRequest { key: b("a"), ignore_lease: true, ..Default::default() }).unwrap_err();
    assert_eq!(e, MvccError::KeyNotFound);
    assert_eq!(db.s.current_revision(), 1);
    db.grant(5, 60).unwrap();
    db.put_lease("a", "v1", 5).unwrap();
    db.put_req(PutRequest { key: b("a"), ignore_value: true, lease: 0, ..Default::default() }).unwrap();
    let kv = db.get("a").unwrap();
    assert_eq!(
        (kv.value.as_ref(), kv.lease, kv.version),
        (&b"v1"[..], 0, 2),
        "ignore_value keeps the value, lease replaced"
    );
    db.put_lease("a", "v2", 5).unwrap();
    db.put_req(PutRequest { key: b("a"), value: b("v3"), ignore_lease: true, ..Default::default() }).unwrap();
    let kv = db.get("a").unwrap();
    assert_eq!((kv.value.as_ref(), kv.lease), (&b"v3"[..], 5), "ignore_lease keeps the lease");
    let e =
        db.put_req(PutRequest { key: b("a"), value: b("x"), ignore_value: true, ..Default::default() }).unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: value is provided");
    let e = db.put_req(PutRequest { key: b("a"), lease: 5, ignore_lease: true, ..Default::default() }).unwrap_err();
    assert_eq!(e.to_string(), "etcdserver: lease is provided");
}

fn lease_grant_attach_revoke<B: Backend>(mut db: Db<B>) {
    assert_eq!(db.grant(1, 30).unwrap(), Response::LeaseGrant { revision: 1, id: 1, ttl: 30 });
    assert_eq!(db.grant(1, 30).unwrap_err(), MvccError::LeaseExists);
    let e = db.put_lease("x", "v", 2).unwrap_err();
    assert_eq!((e.clone(), e.to_string()), (MvccError::LeaseNotFound, "lease not found".into()));
    db.put_lease("a", "1", 1).unwrap(); // 2
    db.put_lease("b", "1", 1).unwrap(); // 3
    db.put("c", "1"); // 4
    let info = db.s.lease_ttl(1).unwrap();
    assert_eq!(info.keys, [b("a"), b("b")]);
    assert_eq!((info.granted_ttl, info.remaining_ttl), (30, 30));
    db.s.take_events();
    assert_eq!(db.apply(Command::LeaseRevoke { id: 1 }).unwrap(), Response::LeaseRevoke { revision: 5 });
    let ev = db.s.take_events();
    assert_eq!(ev.len(), 2);
    assert!(ev.iter().all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == 5));
    assert_eq!((db.get("a"), db.get("b")), (None, None));
    assert!(db.get("c").is_some());
    assert_eq!(db.s.lease_ttl(1), None);
    assert_eq!(db.apply(Command::LeaseRevoke { id: 1 }).unwrap_err(), MvccError::LeaseNotFound);
    // revoking a lease without keys does not bump the revision
    db.grant(2, 10).unwrap();
    assert_eq!(db.apply(Command::LeaseRevoke { id: 2 }).unwrap(), Response::LeaseRevoke { revision: 5 });
}

fn lease_reattach_and_detach<B: Backend>(mut db: Db<B>) {
    db.grant(1, 10).unwrap();
    db.grant(2, 10).unwrap();
    db.put_lease("a", "1", 1).unwrap();
    db.put_lease("a", "2", 2).unwrap();
    assert!(db.s.lease_ttl(1).unwrap().keys.is_empty(), "re-put with another lease detaches");
    assert_eq!(db.s.lease_ttl(2).unwrap().keys, [b("a")]);
    db.put("a", "3");
    assert!(db.s.lease_ttl(2).unwrap().keys.is_empty(), "re-put without lease detaches");
    db.put_lease("a", "4", 2).unwrap();
    db.del("a", "");
    assert!(db.s.lease_ttl(2).unwrap().keys.is_empty(), "delete detaches");
    assert_eq!(
        db.apply(Command::LeaseRevoke { id: 2 }).unwrap(),
        Response::LeaseRevoke { revision: db.s.current_revision() }
    );
    let ids: Vec<_> = db.s.leases().iter().map(|l| l.id).collect();
    assert_eq!(ids, [1]);
}

fn lease_checkpoint<B: Backend>(mut db: Db<B>) {
    db.grant(3, 60).unwrap();
    db.apply(Command::LeaseCheckpoint { id: 3, remaining_ttl_seconds: 17 }).unwrap();
    let info = db.s.lease_ttl(3).unwrap();
    assert_eq!((info.granted_ttl, info.remaining_ttl), (60, 17));
    db.apply(Command::LeaseCheckpoint { id: 99, remaining_ttl_seconds: 1 }).expect("unknown lease ignored");
    assert_eq!(db.s.current_revision(), 1);
}

fn events_with_prev_kv<B: Backend>(mut db: Db<B>) {
    db.put("a", "1");
    db.put("a", "2");
    db.del("a", "");
    let ev = db.s.take_events();
    assert_eq!(ev.len(), 3);
    assert_eq!((ev[0].kind, ev[0].prev_kv.is_none()), (EventKind::Put, true));
    assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(ev[1].kv.version, 2);
    assert_eq!(ev[2].kind, EventKind::Delete);
    assert_eq!(ev[2].kv, KeyValue { key: b("a"), mod_revision: 4, ..Default::default() });
    assert_eq!(ev[2].prev_kv.as_ref().unwrap().value, b("2"));
    assert!(db.s.take_events().is_empty(), "drained");
}

fn events_since_reads_history<B: Backend>(mut db: Db<B>) {
    db.put("a", "1"); // 2
    db.put("b", "1"); // 3
    db.put("a", "2"); // 4
    db.del("a", ""); // 5
    let live = { db.s.take_events() };
    let hist = db.s.events_since(2, b"\0", b"\0").unwrap();
    let strip = |v: &[Event]| v.iter().map(|e| (e.kind, e.kv.clone())).collect::<Vec<_>>();
    assert_eq!(strip(&hist), strip(&live), "history equals the live events");
    let only_a = db.s.events_since(3, b"a", b"").unwrap();
    assert_eq!(only_a.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), [4, 5]);
    let batch = db.s.events_batch(2, b"\0", b"\0", 2, true).unwrap();
    assert_eq!((batch.events.len(), batch.next_revision), (2, 4));
    let batch = db.s.events_batch(4, b"\0", b"\0", 10, true).unwrap();
    assert_eq!(batch.events[1].prev_kv.as_ref().unwrap().value, b("2"));
    assert_eq!(batch.next_revision, 6);
    db.compact(4).unwrap();
    assert_eq!(db.s.events_since(3, b"\0", b"\0").unwrap_err(), MvccError::Compacted);
    assert_eq!(db.s.events_since(5, b"\0", b"\0").unwrap().len(), 1);
}

/// A watcher of a rare key catches up in steps bounded by the history read, not only by the
/// events found: one step must never scan all of history (it runs on the driver thread).
fn history_steps_are_bounded_by_records_read<B: Backend>(mut db: Db<B>) {
    for _ in 0..5_000 {
        db.put("busy", "x");
    }
    db.put("rare", "1");
    let current = db.s.current_revision();
    let first = db.s.events_batch(2, b"rare", b"", 1, false).unwrap();
    assert!(first.events.is_empty());
    assert!(first.next_revision < current / 2, "one step read {} revisions", first.next_revision);
    let mut next = first.next_revision;
    let mut found = Vec::new();
    for _ in 0..100 {
        let batch = db.s.events_batch(next, b"rare", b"", 1, false).unwrap();
        assert!(batch.next_revision > next, "steps make progress");
        found.extend(batch.events.into_iter().map(|e| e.kv.mod_revision));
        next = batch.next_revision;
        if next > current {
            break;
        }
    }
    assert_eq!(found, [current], "the rare key's one event, once");
}

fn hash_kv_and_snapshot<B: Backend>(mut db: Db<B>) {
    let mut other = common::mem_db();
    let cmds = [
        Command::LeaseGrant { id: 1, ttl_seconds: 5 },
        Command::Put(PutRequest { key: b("a"), value: b("1"), lease: 1, ..Default::default() }),
        Command::Put(PutRequest { key: b("b"), value: b("1"), ..Default::default() }),
        Command::DeleteRange(DeleteRangeRequest { key: b("b"), ..Default::default() }),
        Command::Put(PutRequest { key: b("c"), value: b("1"), ..Default::default() }),
        Command::Compact { revision: 4 },
        Command::Put(PutRequest { key: b("c"), value: b("2"), ..Default::default() }),
    ];
    for c in &cmds {
        let x = db.apply(c.clone());
        let y = other.apply(c.clone());
        assert_eq!(x, y);
    }
    let h1 = db.s.hash_kv(0).unwrap();
    assert_eq!(h1, other.s.hash_kv(0).unwrap(), "same commands, same hash");
    assert_eq!(db.s.hash_kv(5).unwrap(), other.s.hash_kv(5).unwrap());
    assert_ne!(db.s.hash_kv(5).unwrap().hash, h1.hash);
    assert_eq!(db.s.hash_kv(3).unwrap_err(), MvccError::Compacted);
    assert_eq!(db.s.hash_kv(7).unwrap_err(), MvccError::FutureRevision);
    let snap = db.s.snapshot().unwrap();
    assert_eq!(snap, other.s.snapshot().unwrap(), "snapshots are byte-identical");
    // restore into a fresh store
    let mut fresh = common::mem_db();
    fresh.put("junk", "x");
    fresh.s.restore(&snap).unwrap();
    assert_eq!(fresh.s.hash_kv(0).unwrap(), h1);
    assert_eq!(fresh.s.applied_index(), db.s.applied_index());
    assert_eq!(fresh.get("junk"), None);
    assert_eq!(fresh.s.lease_ttl(1).unwrap().keys, [b("a")]);
    assert_eq!(fresh.get("c").unwrap(), db.get("c").unwrap());
    // a corrupted snapshot is an error and leaves the store unchanged
    let mut bad = snap.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(matches!(fresh.s.restore(&bad), Err(SnapshotError::Decode(_))));
    assert_eq!(fresh.s.hash_kv(0).unwrap(), h1);
}

fn replay_is_idempotent<B: Backend>(mut db: Db<B>) {
    db.put("a", "1");
    let applied = db.s.applied_index();
    let again = Command::Put(PutRequest { key: b("a"), value: b("dup"), ..Default::default() });
    assert_eq!(db.s.apply(applied, &again).unwrap(), ApplyOutcome::Skipped);
    assert_eq!(db.get("a").unwrap().value, b("1"));
    db.s.advance_applied(applied + 5).unwrap();
    assert_eq!(db.s.apply(applied + 3, &again).unwrap(), ApplyOutcome::Skipped);
}

fn txn_nesting_is_bounded<B: Backend>(mut db: Db<B>) {
    let mut t = TxnRequest { success: vec![put_op("deep", "1")], ..Default::default() };
    for _ in 1..MAX_TXN_DEPTH {
        t = TxnRequest { success: vec![RequestOp::Txn(t)], ..Default::default() };
    }
    db.txn(t.clone()).expect("MAX_TXN_DEPTH levels are fine");
    assert_eq!(db.get("deep").unwrap().version, 1);
    let t = TxnRequest { success: vec![RequestOp::Txn(t)], ..Default::default() };
    assert_eq!(db.txn(t).unwrap_err(), MvccError::TxnTooDeep);
    assert_eq!(db.get("deep").unwrap().version, 1);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $( #[test] fn $name() { super::$name(super::common::mem_db()); } )*
        }
        mod redb {
            $( #[test] fn $name() {
                let (db, _tmp) = super::common::redb_db(stringify!($name));
                super::$name(db);
            } )*
        }
    };
}

on_both_backends!(
    revision_numbering,
    version_and_create_revision_across_recreate,
    range_at_past_revision,
    future_revision_error,
    range_limit_more_count,
    range_sort_orders_and_targets,
    range_keys_only_and_count_only,
    range_min_max_revision_filters,
    range_end_forms,
    compaction_errors_and_messages,
    compaction_drops_tombstoned_keys,
    compaction_step_keeps_reads_correct,
    txn_compare_targets,
    txn_compare_over_range,
    txn_branches_nested_and_reads_see_writes,
    txn_sub_revisions_and_events,
    txn_duplicate_key,
    txn_errors_change_nothing,
    prev_kv_on_put_and_delete,
    ignore_value_and_lease,
    lease_grant_attach_revoke,
    lease_reattach_and_detach,
    lease_checkpoint,
    events_with_prev_kv,
    events_since_reads_history,
    history_steps_are_bounded_by_records_read,
    hash_kv_and_snapshot,
    replay_is_idempotent,
    txn_nesting_is_bounded,
);
