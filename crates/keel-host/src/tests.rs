//! The host's part of the persistence contract, on the simulated disk: what compaction removes,
//! what it must keep, and that recovery still finds everything the durable state needs.

use std::sync::Arc;

use bytes::Bytes;
use keel_node::{GroupWrite, WriteBatch};
use keel_raft::{ConfState, Entry, EntryKind, Snapshot, SnapshotMeta};
use keel_storage::{Disk, NodeStorage, SimDisk, StorageOptions};

use super::*;

const GROUP: GroupId = 1;

fn options() -> StorageOptions {
    let mut opts = StorageOptions::new();
    opts.wal.segment_bytes = 16 << 10;
    opts
}

fn entries(from: Index, count: u64) -> Vec<Entry> {
    (from..from + count)
        .map(|index| Entry { term: 1, index, kind: EntryKind::Normal, data: Bytes::from(vec![7u8; 200]) })
        .collect()
}

fn marker(index: Index) -> Snapshot {
    Snapshot { meta: SnapshotMeta { index, term: 1, conf: ConfState::with_voters([1, 2, 3]) }, data: Bytes::new() }
}

/// Writes `rounds` batches of 100 entries, each after the first with an own snapshot 50 entries
/// behind its start, compacting once each is durable as the hosts do.
fn run(disk: &SimDisk, rounds: u64, retention: Retention) -> (NodeStorage, Compactions) {
    let (mut storage, _, _) = NodeStorage::open(Arc::new(disk.clone()), options()).expect("opens");
    let mut compactions = Compactions::default();
    for round in 0..rounds {
        let first = round * 100 + 1;
        let own_snapshot = (round > 0).then(|| marker(first - 50));
        let hard_state = Some(HardState { term: 1, vote: 1, commit: first + 99 });
        let batch = WriteBatch {
            id: round + 1,
            groups: vec![GroupWrite {
                group: GROUP,
                hard_state,
                own_snapshot,
                entries: entries(first, 100),
                ..Default::default()
            }],
            must_sync: true,
        };
        write(&mut storage, &batch.groups).expect("write");
        compactions.written(&batch);
        storage.sync().expect("sync");
        compactions.durable(&mut storage, retention).expect("compaction");
    }
    (storage, compactions)
}

#[test]
fn compaction_bounds_wal_segments_and_snapshot_files_under_steady_writes() {
    let disk = SimDisk::new();
    let (storage, _) = run(&disk, 200, Retention::MINIMAL);
    // 20,000 entries of ~200 bytes went through 16 KiB segments: hundreds of segments were cut.
    assert!(storage.wal.segment_count() <= 3, "{} segments kept", storage.wal.segment_count());
    assert_eq!(disk.list("snap").expect("list").len(), 1, "only the newest snapshot file is kept");
}

#[test]
fn retention_keeps_the_newest_obsolete_files_up_to_its_counts_and_recovery_reads_only_the_live_ones() {
    let disk = SimDisk::new();
    let (storage, _) = run(&disk, 200, Retention { wal_segments: 8, snapshots: 3 });
    assert_eq!(disk.list(&options().wal.dir).expect("list").len(), 8, "eight WAL files in all");
    let live = storage.wal.segment_count();
    assert!(live <= 3, "{live} live segments: the covered ones are retired, not read at a restart");
    assert_eq!(storage.wal.retired_count(), 8 - live);
    assert_eq!(disk.list("snap").expect("list").len(), 3);
    drop(storage);
    let (reopened, _, recovery) = NodeStorage::open(Arc::new(disk.clone()), options()).expect("reopens");
    assert_eq!(recovery.segments, live, "recovery read only the live segments");
    assert_eq!(reopened.wal.retired_count(), 8 - live, "the retired ones are still counted");
}

#[test]
fn nothing_is_removed_before_the_write_naming_the_snapshot_is_durable() {
    let disk = SimDisk::new();
    let (mut storage, mut compactions) = run(&disk, 50, Retention::MINIMAL);
    let segments = storage.wal.segment_count();
    // A big batch with a new snapshot: written, not yet durable.
    let batch = WriteBatch {
        id: 99,
        groups: vec![GroupWrite {
            group: GROUP,
            own_snapshot: Some(marker(4_990)),
            entries: entries(5_001, 300),
            ..Default::default()
        }],
        must_sync: true,
    };
    write(&mut storage, &batch.groups).expect("write");
    compactions.written(&batch);
    // A crash now: the hosts forget the pending compaction, and recovery has every entry after
    // the last durable snapshot.
    compactions.forget();
    drop(storage);
    disk.crash(7);
    let (_, groups, _) = NodeStorage::open(Arc::new(disk.clone()), options()).expect("reopens");
    let group = &groups[&GROUP];
    let snapshot = group.snapshot.as_ref().expect("a durable snapshot").meta.index;
    assert!(snapshot < 4_990, "the undurable snapshot was not recovered");
    assert_eq!(group.entries.first().map(|e| e.index), Some(snapshot + 1), "the log continues the snapshot");
    assert!(segments >= 1);
}

#[test]
fn recovery_after_compaction_starts_at_the_snapshot_with_the_log_intact_after_it() {
    let disk = SimDisk::new();
    let (storage, _) = run(&disk, 120, Retention::MINIMAL);
    drop(storage);
    let (_, groups, _) = NodeStorage::open(Arc::new(disk), options()).expect("reopens");
    let group = &groups[&GROUP];
    let snapshot = group.snapshot.as_ref().expect("snapshot").meta.index;
    assert_eq!(snapshot, 119 * 100 + 1 - 50);
    let indexes: Vec<Index> = group.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes.first(), Some(&(snapshot + 1)));
    assert_eq!(indexes.last(), Some(&12_000));
    assert!(indexes.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
}

#[test]
fn bootstrap_is_the_same_founding_log_on_every_member() {
    let a = bootstrap_write(GROUP, &[1, 2, 3]);
    let b = bootstrap_write(GROUP, &[1, 2, 3]);
    assert_eq!(a, b);
    assert_eq!(a.entries.len(), 3);
    assert_eq!(bootstrapped(&a).0.commit, 3);
}
