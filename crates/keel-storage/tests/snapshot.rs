use std::sync::Arc;

use bytes::Bytes;
use keel_raft::{ConfState, Snapshot, SnapshotMeta};
use keel_storage::snapshot::{decode_snapshot, SnapshotError, SnapshotStore};
use keel_storage::{Disk, SimDisk};
use proptest::prelude::*;

fn snapshot(index: u64, len: usize) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta { index, term: 2, conf: ConfState::with_voters([1, 2, 3]) },
        data: Bytes::from((0..len).map(|i| (i % 253) as u8).collect::<Vec<u8>>()),
    }
}

#[test]
fn a_saved_snapshot_loads_back_verified() {
    let disk = SimDisk::new();
    let store = SnapshotStore::open(Arc::new(disk.clone()), "snap").unwrap();
    let snap = snapshot(42, 3 << 20);
    store.save(7, &snap).unwrap();
    assert_eq!(store.load(7, &snap.meta).unwrap(), snap);
    // Durable: a crash right after keeps it.
    disk.crash(1);
    let store = SnapshotStore::open(Arc::new(disk), "snap").unwrap();
    assert_eq!(store.load(7, &snap.meta).unwrap(), snap);
}

#[test]
fn a_flipped_bit_is_detected_before_use() {
    let disk = SimDisk::new();
    let store = SnapshotStore::open(Arc::new(disk.clone()), "snap").unwrap();
    let snap = snapshot(5, 1000);
    let path = store.save(1, &snap).unwrap();
    assert!(disk.flip_bit(&path, 500, 2));
    match store.load(1, &snap.meta) {
        Err(SnapshotError::Corrupt { file, .. }) => assert_eq!(file, path),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_crash_mid_write_leaves_no_snapshot_and_the_leftover_is_cleaned_up() {
    let disk = SimDisk::new();
    let store = SnapshotStore::open(Arc::new(disk.clone()), "snap").unwrap();
    let snap = snapshot(9, 10_000);
    let mut writer = store.writer(3, &snap.meta).unwrap();
    writer.write_chunk(&snap.data[..4000]).unwrap();
    // The follower restarts here, before `finish`.
    drop(writer);
    disk.crash(3);
    let store = SnapshotStore::open(Arc::new(disk.clone()), "snap").unwrap();
    assert!(matches!(store.load(3, &snap.meta), Err(SnapshotError::Missing { .. })));
    assert!(disk.list("snap").unwrap().is_empty());
    // Receiving it again in chunks works.
    let mut writer = store.writer(3, &snap.meta).unwrap();
    for chunk in snap.data.chunks(777) {
        writer.write_chunk(chunk).unwrap();
    }
    writer.finish().unwrap();
    assert_eq!(store.load(3, &snap.meta).unwrap(), snap);
}

#[test]
fn older_snapshots_are_removed() {
    let disk = SimDisk::new();
    let store = SnapshotStore::open(Arc::new(disk.clone()), "snap").unwrap();
    for index in [10, 20, 30] {
        store.save(1, &snapshot(index, 10)).unwrap();
    }
    store.save(2, &snapshot(5, 10)).unwrap();
    store.remove_older(1, 30).unwrap();
    assert_eq!(disk.list("snap").unwrap().len(), 2);
    assert!(store.load(1, &snapshot(30, 10).meta).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, .. ProptestConfig::default() })]

    #[test]
    fn the_snapshot_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_snapshot(&data);
    }

    #[test]
    fn the_snapshot_decoder_never_panics_on_a_valid_file_with_a_fixed_checksum(cut in 0usize..200, flip in 0usize..200) {
        // Corrupt the body, then recompute the checksum so the decoder must survive the contents.
        let disk = SimDisk::new();
        let store = SnapshotStore::open(Arc::new(disk.clone()), "snap").unwrap();
        let path = store.save(1, &snapshot(4, 50)).unwrap();
        let mut data = disk.open(&path, false).unwrap().read_all().unwrap();
        let body_len = data.len() - 4;
        let mut body = data[..body_len].to_vec();
        let at = flip % body.len();
        body[at] ^= 0xff;
        body.truncate(cut.min(body.len()));
        let crc = crc32c_of(&body);
        data = body;
        data.extend_from_slice(&crc.to_le_bytes());
        let _ = decode_snapshot(&data);
    }
}

fn crc32c_of(data: &[u8]) -> u32 {
    keel_codec::crc32c(data)
}
