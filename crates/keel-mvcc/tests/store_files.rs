//! A store streamed from a consistent view (the leader's side of a snapshot), received into a
//! new file in pieces of any size, and installed by renaming it over another store (the
//! follower's side).

mod common;

use bytes::Bytes;
use common::TempPath;
use keel_mvcc::redb_backend::RowReceiver;
use keel_mvcc::*;

fn put(store: &mut Store<RedbBackend>, index: u64, key: &str, value: &str) {
    let put = PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    };
    assert!(matches!(store.apply(index, &Command::Put(put)), Ok(ApplyOutcome::Applied(Ok(_)))));
}

fn everything(store: &Store<RedbBackend>) -> Vec<(Bytes, Bytes, i64)> {
    let all =
        RangeRequest { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0"), ..Default::default() };
    store.range(&all).expect("range").kvs.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect()
}

#[test]
fn a_copy_holds_exactly_the_state_when_it_began_and_installs_whole_elsewhere() {
    let (leader_path, follower_path, copy_path) =
        (TempPath::new("leader"), TempPath::new("follower"), TempPath::new("copy"));
    let mut leader =
        Store::open(RedbBackend::open(&leader_path.0).expect("redb"), StoreOptions::default()).expect("open");
    for i in 1..=1_999u64 {
        put(&mut leader, i, &format!("k{:04}", i % 700), &format!("v{i}"));
        if i % 100 == 0 {
            leader.commit_buffered().expect("commit");
        }
    }
    assert!(leader.begin_copy().is_err(), "refused while applied changes are uncommitted");
    leader.commit_buffered().expect("commit");
    leader.apply(2_000, &Command::Compact { revision: 1_000 }).expect("compact");
    leader.commit_buffered().expect("commit");
    assert!(leader.begin_copy().is_err(), "refused while committed changes are only in memory");
    leader.write_buffered().expect("hand the buffered changes to the file");
    let at_copy = everything(&leader);
    let (revision, applied) = (leader.current_revision(), leader.applied_index());
    let copy = leader.begin_copy().expect("copy").expect("a file backend copies");
    // Writes go on while the copy is written: the copy keeps the state it began with.
    for i in 2_002..=2_100u64 {
        put(&mut leader, i, "later", "x");
    }
    leader.commit_buffered().expect("commit");
    assert_eq!(copy.applied_index().expect("applied"), applied);
    let mut stream = Vec::new();
    copy.write_rows(&mut stream, &[("keel.extra", b"members".to_vec())]).expect("stream the copy");
    // Received in pieces that cut rows anywhere.
    let mut receiver = RowReceiver::create(&copy_path.0).expect("receiver");
    for piece in stream.chunks(7_919) {
        receiver.push(piece).expect("push");
    }
    receiver.finish(&copy_path.0).expect("finish");

    let mut follower =
        Store::open(RedbBackend::open(&follower_path.0).expect("redb"), StoreOptions::default()).expect("open");
    put(&mut follower, 1, "stale", "y");
    follower.commit().expect("commit");
    follower.install_file(&copy_path.0).expect("install");
    assert!(!copy_path.0.exists(), "the copy was renamed into place");
    assert_eq!(everything(&follower), at_copy);
    assert_eq!((follower.current_revision(), follower.applied_index()), (revision, applied));
    assert_eq!(follower.durable_applied_index(), applied, "installed durably");
    assert_eq!(follower.compacted_revision(), 1_000);
    assert_eq!(follower.hash_kv(revision).expect("hash").hash, leader.hash_kv(revision).expect("hash").hash);
    let meta = follower.backend().load_meta().expect("meta");
    assert_eq!(meta.get("keel.extra").map(Vec::as_slice), Some(b"members".as_slice()));
    // And it serves on: the next entries apply on top.
    put(&mut follower, applied + 1, "next", "z");
    follower.commit().expect("commit");
    drop(follower);
    let reopened =
        Store::open(RedbBackend::open(&follower_path.0).expect("redb"), StoreOptions::default()).expect("open");
    assert_eq!(reopened.applied_index(), applied + 1, "the installed file is the store from now on");
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_the_store_is_kept() {
    let (path, bogus) = (TempPath::new("keep"), TempPath::new("bogus"));
    let mut store = Store::open(RedbBackend::open(&path.0).expect("redb"), StoreOptions::default()).expect("open");
    put(&mut store, 1, "a", "1");
    store.commit().expect("commit");
    std::fs::write(&bogus.0, b"not a database").expect("write");
    assert!(store.install_file(&bogus.0).is_err());
    drop(store);
    let reopened = Store::open(RedbBackend::open(&path.0).expect("redb"), StoreOptions::default()).expect("open");
    assert_eq!(everything(&reopened).len(), 1, "the old store is intact");
}

#[test]
fn a_cut_or_garbled_stream_is_an_error_and_leaves_no_file() {
    let (source, target) = (TempPath::new("source"), TempPath::new("target"));
    let mut store = Store::open(RedbBackend::open(&source.0).expect("redb"), StoreOptions::default()).expect("open");
    for i in 1..=50 {
        put(&mut store, i, &format!("k{i}"), "v");
    }
    store.commit().expect("commit");
    let mut stream = Vec::new();
    store.begin_copy().expect("copy").expect("file").write_rows(&mut stream, &[]).expect("rows");
    // Cut short: refused at the end.
    let mut receiver = RowReceiver::create(&target.0).expect("receiver");
    receiver.push(&stream[..stream.len() / 2]).expect("push");
    assert!(receiver.finish(&target.0).is_err());
    assert!(!target.0.exists());
    // Garbage anywhere: an error, never a panic.
    for cut in (0..stream.len()).step_by(97) {
        let mut garbled = stream.clone();
        garbled[cut] ^= 0xa5;
        let mut receiver = RowReceiver::create(&target.0).expect("receiver");
        let pushed = receiver.push(&garbled);
        if pushed.is_ok() {
            let _ = receiver.finish(&target.0);
        }
        let _ = std::fs::remove_file(&target.0);
    }
}

/// `keel snapshot restore`: a store becomes the start of a new cluster's log. Its applied index
/// goes back to 0 (the new log starts at 1) and the old cluster's member records go; every key,
/// revision, the compaction and the hash stay, and the new log's entries apply on top.
#[test]
fn a_store_restarted_at_a_new_log_keeps_its_data_and_forgets_the_old_position() {
    let path = TempPath::new("new-log");
    let mut old = Store::open(RedbBackend::open(&path.0).expect("redb"), StoreOptions::default()).expect("open");
    for i in 1..=500u64 {
        put(&mut old, 1_000 + i, &format!("k{:03}", i % 150), &format!("v{i}"));
    }
    old.apply(1_501, &Command::Compact { revision: 300 }).expect("compact");
    old.commit().expect("commit");
    let (data, revision) = (everything(&old), old.current_revision());
    let hash = old.hash_kv(revision).expect("hash").hash;
    drop(old);
    let mut written = RedbBackend::open(&path.0).expect("redb");
    let mut batch = WriteBatch::default();
    batch.meta.insert("keel.members", b"old cluster".to_vec());
    written.commit(&batch).expect("meta");
    written.start_new_log(&["keel.members"]).expect("start a new log");
    drop(written);

    let mut restored = Store::open(RedbBackend::open(&path.0).expect("redb"), StoreOptions::default()).expect("open");
    assert_eq!((restored.applied_index(), restored.durable_applied_index()), (0, 0));
    assert_eq!(everything(&restored), data);
    assert_eq!((restored.current_revision(), restored.compacted_revision()), (revision, 300));
    assert_eq!(restored.hash_kv(revision).expect("hash").hash, hash);
    assert!(!restored.backend().load_meta().expect("meta").contains_key("keel.members"));
    put(&mut restored, 1, "after", "restore");
    restored.commit().expect("commit");
    assert_eq!((restored.applied_index(), restored.current_revision()), (1, revision + 1));
}
