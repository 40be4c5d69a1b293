//! Durability: reopening, crash (uncommitted tail lost), replay, interrupted compaction.

mod common;

use common::{b, Db, TempPath};
use keel_mvcc::*;

fn workload() -> Vec<Command> {
    let mut cmds = vec![Command::LeaseGrant { id: 9, ttl_seconds: 30 }];
    for i in 0..40 {
        let key = b(&format!("k{:02}", i % 9));
        cmds.push(match i % 5 {
            0..=2 => Command::Put(PutRequest {
                key,
                value: b(&format!("v{i}")),
                lease: if i % 4 == 0 { 9 } else { 0 },
                ..Default::default()
            }),
            3 => Command::DeleteRange(DeleteRangeRequest { key, ..Default::default() }),
            _ => Command::Txn(TxnRequest {
                compare: vec![Compare {
                    key: key.clone(),
                    range_end: Default::default(),
                    target: CompareTarget::Version(0),
                    result: CompareResult::Greater,
                }],
                success: vec![RequestOp::Put(PutRequest { key, value: b("t"), ..Default::default() })],
                failure: vec![],
            }),
        });
        if i == 25 {
            cmds.push(Command::Compact { revision: 12 });
        }
        if i == 30 {
            cmds.push(Command::LeaseCheckpoint { id: 9, remaining_ttl_seconds: 11 });
        }
    }
    cmds
}

fn reference() -> Db<MemBackend> {
    let mut db = common::mem_db();
    for c in workload() {
        let _ = db.apply(c);
    }
    db
}

fn all_at<B: Backend>(db: &Db<B>, revision: i64) -> Result<RangeResponse, MvccError> {
    db.range(RangeRequest { key: b("\0"), range_end: b("\0"), revision, ..Default::default() })
}

fn assert_same<B: Backend, C: Backend>(a: &Db<B>, r: &Db<C>) {
    assert_eq!(a.s.current_revision(), r.s.current_revision());
    assert_eq!(a.s.compacted_revision(), r.s.compacted_revision());
    assert_eq!(a.s.applied_index(), r.s.applied_index());
    assert_eq!(a.s.leases(), r.s.leases());
    for rev in 0..=r.s.current_revision() + 1 {
        assert_eq!(all_at(a, rev), all_at(r, rev), "range at {rev}");
    }
    assert_eq!(a.s.hash_kv(0).unwrap(), r.s.hash_kv(0).unwrap());
    assert_eq!(a.s.snapshot().unwrap(), r.s.snapshot().unwrap());
}

#[test]
fn redb_reopen_recovers_index_revisions_and_applied_index() {
    let tmp = TempPath::new("reopen");
    let cmds: Vec<(u64, Command)> = workload().into_iter().enumerate().map(|(i, c)| (i as u64 + 1, c)).collect();
    {
        let mut s = Store::open(RedbBackend::open(&tmp.0).unwrap(), StoreOptions::default()).unwrap();
        for chunk in cmds.chunks(7) {
            s.apply_batch(chunk).unwrap();
        }
        assert_eq!(s.durable_applied_index(), cmds.len() as u64);
    }
    let reopened = Db::new(RedbBackend::open(&tmp.0).unwrap());
    let r = reference();
    assert_same(&reopened, &r);
    assert_eq!(reopened.s.lease_ttl(9).unwrap().remaining_ttl, 11);
    // replaying the whole log changes nothing
    let mut s = reopened.s;
    for (i, c) in &cmds {
        assert_eq!(s.apply(*i, c).unwrap(), ApplyOutcome::Skipped);
    }
}

fn crash_and_replay<B: Backend>(open: impl Fn() -> B, crash: impl FnOnce(Store<B>) -> B) {
    let cmds: Vec<(u64, Command)> = workload().into_iter().enumerate().map(|(i, c)| (i as u64 + 1, c)).collect();
    let committed = 20;
    let mut s = Store::open(open(), StoreOptions::default()).unwrap();
    s.apply_batch(&cmds[..committed]).unwrap();
    for (i, c) in &cmds[committed..] {
        s.apply(*i, c).unwrap();
    }
    assert_eq!(s.applied_index(), cmds.len() as u64);
    assert_eq!(s.durable_applied_index(), committed as u64);
    let backend = crash(s); // no commit: the tail is lost
    let skipped = reopen_and_replay(backend, &cmds);
    assert_eq!(skipped, committed, "durable state says where replay starts");
}

/// Opens the store on `backend` after a crash, replays every command (as raft would from the
/// log) and checks the result against the reference; returns how many it had already.
fn reopen_and_replay<B: Backend>(backend: B, cmds: &[(u64, Command)]) -> usize {
    let mut s = Store::open(backend, StoreOptions::default()).unwrap();
    let mut skipped = 0;
    for (i, c) in cmds {
        if s.apply(*i, c).unwrap() == ApplyOutcome::Skipped {
            skipped += 1;
        }
    }
    s.commit().unwrap();
    let db = Db { s, index: cmds.len() as u64 };
    assert_same(&db, &reference());
    skipped
}

#[test]
fn mem_crash_loses_uncommitted_tail_and_replay_restores_it() {
    crash_and_replay(MemBackend::new, |s| s.backend().clone());
}

/// Runs a crash scenario over a redb file of its own: a crash drops the store and reopens the file.
fn on_redb(name: &str, scenario: impl FnOnce(&dyn Fn() -> RedbBackend, &dyn Fn(Store<RedbBackend>) -> RedbBackend)) {
    let tmp = TempPath::new(name);
    let path = tmp.0.clone();
    let open = || RedbBackend::open(&path).unwrap();
    let crash = |s: Store<RedbBackend>| {
        drop(s);
        open()
    };
    scenario(&open, &crash);
}

#[test]
fn redb_crash_loses_uncommitted_tail_and_replay_restores_it() {
    on_redb("crash", |open, crash| crash_and_replay(open, crash));
}

/// The same crash, with the durable commit made on the backend's sync thread: the durable
/// applied index moves only once the sync finished, and what it covered survives the crash.
fn crash_and_replay_after_background_sync<B: Backend>(open: impl Fn() -> B, crash: impl FnOnce(Store<B>) -> B) {
    let cmds: Vec<(u64, Command)> = workload().into_iter().enumerate().map(|(i, c)| (i as u64 + 1, c)).collect();
    let committed = 20;
    let mut s = Store::open(open(), StoreOptions::default()).unwrap();
    for (i, c) in &cmds[..committed] {
        s.apply(*i, c).unwrap();
    }
    s.commit_in_background().unwrap();
    assert!(s.syncing());
    assert!(s.durable_applied_index() < committed as u64, "durable only once the sync says so");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.syncing() {
        assert!(std::time::Instant::now() < deadline, "the sync never finished");
        std::thread::sleep(std::time::Duration::from_millis(1));
        s.poll_sync().unwrap();
    }
    assert_eq!(s.durable_applied_index(), committed as u64);
    assert!(s.take_finished_sync().is_some());
    for (i, c) in &cmds[committed..] {
        s.apply(*i, c).unwrap();
    }
    s.commit_buffered().unwrap();
    s.write_buffered().unwrap(); // in the backend, not synced: a crash may lose it
    let backend = crash(s);
    assert!(reopen_and_replay(backend, &cmds) >= committed, "the synced commands survive");
}

#[test]
fn mem_background_sync_then_crash_and_replay() {
    crash_and_replay_after_background_sync(MemBackend::new, |s| s.backend().clone());
}

#[test]
fn redb_background_sync_then_crash_and_replay() {
    on_redb("crash-sync", |open, crash| crash_and_replay_after_background_sync(open, crash));
}

#[test]
fn compaction_deletes_backend_revisions_incrementally_and_resumes_after_reopen() {
    let opts = StoreOptions { compaction_batch_per_commit: 0, ..Default::default() };
    let mut s = Store::open(MemBackend::new(), opts.clone()).unwrap();
    let mut idx = 0;
    let mut apply = |s: &mut Store<MemBackend>, c: Command| {
        idx += 1;
        s.apply(idx, &c).unwrap();
    };
    for i in 0..30 {
        apply(&mut s, Command::Put(PutRequest { key: b(&format!("k{}", i % 3)), value: b("v"), ..Default::default() }));
    }
    apply(&mut s, Command::DeleteRange(DeleteRangeRequest { key: b("k0"), ..Default::default() }));
    s.commit().unwrap();
    assert_eq!(s.backend().revision_count(), 31);
    apply(&mut s, Command::Compact { revision: 32 });
    let hash_before = s.hash_kv(0).unwrap();
    assert!(s.compaction_pending());
    assert!(!s.compaction_step(10).unwrap());
    s.commit().unwrap();
    let after_one_step = s.backend().revision_count();
    assert!(after_one_step < 31 && after_one_step > 2, "bounded work per step: {after_one_step}");
    assert_eq!(s.hash_kv(0).unwrap(), hash_before, "hash ignores compaction progress");
    // crash mid-compaction, reopen, finish
    let mut s = Store::open(s.backend().clone(), opts).unwrap();
    assert!(s.compaction_pending());
    assert_eq!(s.hash_kv(0).unwrap(), hash_before);
    while !s.compaction_step(4).unwrap() {}
    s.commit().unwrap();
    assert_eq!(s.backend().revision_count(), 2, "only k1 and k2's latest revisions remain");
    assert_eq!(s.hash_kv(0).unwrap(), hash_before);
    assert_eq!(s.indexed_keys(), 2);
}

#[test]
fn batching_commits_once() {
    let mut s = Store::open(MemBackend::new(), StoreOptions::default()).unwrap();
    let cmds: Vec<(u64, Command)> = workload().into_iter().enumerate().map(|(i, c)| (i as u64 + 1, c)).collect();
    s.apply_batch(&cmds).unwrap();
    assert_eq!(s.backend().commits(), 1);
    s.commit().unwrap();
    assert_eq!(s.backend().commits(), 1, "nothing pending, nothing written");
}

/// Measurement, not a test: `cargo test -p keel-mvcc --release --test recovery -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_redb_apply_throughput() {
    for batch in [1usize, 64, 1024] {
        let tmp = TempPath::new("bench");
        let mut s = Store::open(RedbBackend::open(&tmp.0).unwrap(), StoreOptions::default()).unwrap();
        let n = if batch == 1 { 500 } else { 20_000 };
        let cmds: Vec<(u64, Command)> = (0..n)
            .map(|i| {
                (
                    i as u64 + 1,
                    Command::Put(PutRequest {
                        key: b(&format!("key{:06}", i % 5000)),
                        value: bytes::Bytes::from(vec![7u8; 100]),
                        ..Default::default()
                    }),
                )
            })
            .collect();
        let t = std::time::Instant::now();
        for chunk in cmds.chunks(batch) {
            s.apply_batch(chunk).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!("redb batch {batch:5}: {n} puts in {secs:.3}s = {:.0} puts/s", n as f64 / secs);
    }
}

#[test]
fn redb_restore_from_snapshot_then_reopen() {
    let r = reference();
    let snap = r.s.snapshot().unwrap();
    let tmp = TempPath::new("restore");
    {
        let mut db = Db::new(RedbBackend::open(&tmp.0).unwrap());
        db.put("old", "state");
        db.s.restore(&snap).unwrap();
        assert_same(&db, &r);
    }
    let reopened = Db::new(RedbBackend::open(&tmp.0).unwrap());
    assert_same(&reopened, &r);
    assert_eq!(reopened.get("old"), None);
}

#[test]
fn events_off_gives_the_same_state() {
    let opts = StoreOptions { record_events: false, ..Default::default() };
    let mut s = Store::open(MemBackend::new(), opts).unwrap();
    let cmds: Vec<(u64, Command)> = workload().into_iter().enumerate().map(|(i, c)| (i as u64 + 1, c)).collect();
    s.apply_batch(&cmds).unwrap();
    assert!(s.take_events().is_empty());
    let db = Db { s, index: cmds.len() as u64 };
    assert_same(&db, &reference());
}
