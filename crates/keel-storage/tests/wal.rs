//! The WAL against crashes at random points, torn writes, bit flips, missing segments and a full
//! disk, on the simulated disk — plus the real disk for the basics.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use keel_codec::record::Record;
use keel_raft::{ConfState, Entry, EntryKind, GroupId, HardState, SnapshotMeta};
use keel_storage::wal::{GroupLog, Wal, WalError, WalOptions};
use keel_storage::{Disk, RealDisk, SimDisk};
use proptest::prelude::*;

fn opts(segment_bytes: u64) -> WalOptions {
    WalOptions { segment_bytes, ..WalOptions::default() }
}

fn open(disk: &SimDisk, segment_bytes: u64) -> Result<(Wal, keel_storage::Recovery), WalError> {
    Wal::open(Arc::new(disk.clone()) as Arc<dyn Disk>, opts(segment_bytes))
}

/// A group as the model sees it: hard state, snapshot index, (index, term) of each entry.
type ModelGroup = (HardState, Option<u64>, Vec<(u64, u64)>);

/// Applies records to a model of the groups, as recovery must.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    groups: BTreeMap<GroupId, ModelGroup>,
}

impl Model {
    fn apply(&mut self, record: &Record) {
        let (hs, snap, entries) = self.groups.entry(record.group()).or_default();
        match record {
            Record::HardState { hard_state, .. } => *hs = *hard_state,
            Record::Entries { entries: new, .. } => {
                let first = new[0].index;
                entries.retain(|(i, _)| *i < first);
                entries.extend(new.iter().map(|e| (e.index, e.term)));
            }
            Record::Snapshot { meta, replaces_log, .. } => {
                if *replaces_log {
                    entries.clear();
                    *snap = Some(meta.index);
                } else if meta.index > snap.unwrap_or(0) {
                    entries.retain(|(i, _)| *i > meta.index);
                    *snap = Some(meta.index);
                }
            }
        }
    }

    fn of(groups: &BTreeMap<GroupId, GroupLog>) -> Model {
        Model {
            groups: groups
                .iter()
                .map(|(g, log)| {
                    (
                        *g,
                        (
                            log.hard_state,
                            log.snapshot.as_ref().map(|s| s.index),
                            log.entries.iter().map(|e| (e.index, e.term)).collect(),
                        ),
                    )
                })
                .collect(),
        }
    }
}

/// A random but valid stream of records for up to three groups.
struct Writer {
    last: BTreeMap<GroupId, u64>,
    snap: BTreeMap<GroupId, u64>,
    term: u64,
}

impl Writer {
    fn next(&mut self, choice: u8, group: GroupId, count: u8) -> Record {
        let last = *self.last.get(&group).unwrap_or(&0);
        let snap = *self.snap.get(&group).unwrap_or(&0);
        match choice % 8 {
            0 => {
                self.term += 1;
                Record::HardState { group, hard_state: HardState { term: self.term, vote: group, commit: last } }
            }
            1 if last > snap => {
                // An own snapshot somewhere in the log.
                let index = snap + 1 + (count as u64 % (last - snap));
                self.snap.insert(group, index);
                Record::Snapshot {
                    group,
                    meta: SnapshotMeta { index, term: self.term, conf: ConfState::with_voters([1]) },
                    replaces_log: false,
                }
            }
            2 if last > snap + 2 => {
                // A conflicting suffix replaces the tail.
                let first = last - 1;
                self.last.insert(group, first + count as u64);
                Record::Entries { group, entries: entries(first, count as u64 + 1, self.term + 1) }
            }
            _ => {
                let n = count as u64 % 20 + 1;
                self.last.insert(group, last + n);
                Record::Entries { group, entries: entries(last + 1, n, self.term) }
            }
        }
    }
}

fn entries(first: u64, count: u64, term: u64) -> Vec<Entry> {
    (first..first + count)
        .map(|index| Entry { term, index, kind: EntryKind::Normal, data: Bytes::from(vec![(index % 251) as u8; 40]) })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Every record reported durable comes back after a crash at a random point (a random prefix
    /// of unsynced writes survives, the last torn at a random byte), and nothing comes back that
    /// was not written in order before the tear.
    #[test]
    fn every_durable_record_survives_a_crash_and_nothing_after_a_torn_tail_returns(
        ops in proptest::collection::vec((any::<u8>(), 1u64..4, any::<u8>(), any::<bool>(), any::<bool>()), 1..60),
        crash_seed in any::<u64>(),
        segment_kib in 1u64..8,
    ) {
        let disk = SimDisk::new();
        let segment_bytes = segment_kib * 1024;
        let (mut wal, _) = open(&disk, segment_bytes).unwrap();
        let mut writer = Writer { last: BTreeMap::new(), snap: BTreeMap::new(), term: 1 };
        let mut durable = Model::default();
        let mut unsynced: Vec<Record> = Vec::new();
        let mut batch = Vec::new();
        for (choice, group, count, more_in_batch, sync) in ops {
            // Several records per batch, as the node writes every group's Ready in one batch.
            batch.push(writer.next(choice, group, count));
            if more_in_batch {
                continue;
            }
            wal.append(&batch).unwrap();
            unsynced.append(&mut batch);
            if sync {
                wal.sync().unwrap();
                for record in unsynced.drain(..) {
                    durable.apply(&record);
                }
                wal.remove_obsolete_segments().unwrap();
            }
        }
        drop(wal);
        disk.crash(crash_seed);
        let (_, recovery) = open(&disk, segment_bytes).unwrap();
        let recovered = Model::of(&recovery.groups);
        // The recovered state must be the durable state plus some prefix of the unsynced records.
        let mut candidate = durable.clone();
        let mut matched = candidate == recovered;
        for record in &unsynced {
            if matched {
                break;
            }
            candidate.apply(record);
            matched = candidate == recovered;
        }
        prop_assert!(matched, "recovered {recovered:?}\ndurable {durable:?}\nunsynced {}", unsynced.len());
    }
}

fn write_synced_batches(disk: &SimDisk, batches: u64, segment_bytes: u64) -> Vec<(String, u64)> {
    let (mut wal, _) = open(disk, segment_bytes).unwrap();
    let mut starts = Vec::new();
    for batch in 0..batches {
        starts.push(wal.position());
        wal.append(&[Record::Entries { group: 1, entries: entries(batch * 4 + 1, 4, 1) }]).unwrap();
        wal.sync().unwrap();
    }
    starts
}

#[test]
fn a_flipped_bit_before_the_last_batch_is_refused_naming_file_and_offset() {
    for flip in 0..40u64 {
        let disk = SimDisk::new();
        let starts = write_synced_batches(&disk, 30, 1 << 20);
        // Flip a bit inside an early batch (never the last one, which is indistinguishable from a tear).
        let (file, start) = starts[(flip % 25) as usize].clone();
        let offset = start + 9 + flip % 100;
        assert!(disk.flip_bit(&file, offset, (flip % 8) as u8));
        match open(&disk, 1 << 20) {
            Err(WalError::Corrupt { file: bad_file, offset: bad_offset, .. }) => {
                assert_eq!(bad_file, file);
                assert!(
                    bad_offset <= offset && bad_offset >= start,
                    "reported {bad_offset}, flipped {offset}, batch at {start}"
                );
            }
            Err(other) => panic!("flip at {offset}: expected corruption, got {other}"),
            Ok(_) => panic!("flip at {offset}: opened a WAL with a corrupt record before its tail"),
        }
        // With the repair option it opens, cut at the corruption.
        let repaired = Wal::open(
            Arc::new(disk.clone()),
            WalOptions { repair: true, segment_bytes: 1 << 20, ..WalOptions::default() },
        );
        let (_, recovery) = repaired.unwrap();
        assert!(recovery.repaired_at.is_some());
        let last = recovery.groups.get(&1).map_or(0, |g| g.last_index());
        assert!(last < 30 * 4);
    }
}

#[test]
fn a_torn_last_batch_is_truncated_and_the_log_keeps_working() {
    let disk = SimDisk::new();
    let starts = write_synced_batches(&disk, 10, 1 << 20);
    let (file, start) = starts[9].clone();
    assert!(disk.flip_bit(&file, start + 20, 3));
    let (mut wal, recovery) = open(&disk, 1 << 20).unwrap();
    assert_eq!(recovery.torn_tail.as_ref().map(|(f, o)| (f.clone(), *o)), Some((file, start)));
    assert_eq!(recovery.groups[&1].last_index(), 36);
    wal.append(&[Record::Entries { group: 1, entries: entries(37, 2, 2) }]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = open(&disk, 1 << 20).unwrap();
    assert_eq!(recovery.groups[&1].last_index(), 38);
    assert!(recovery.torn_tail.is_none());
}

#[test]
fn a_missing_segment_is_refused_unless_repairing() {
    let disk = SimDisk::new();
    write_synced_batches(&disk, 200, 4096);
    let names = disk.list("wal").unwrap();
    assert!(names.len() >= 4, "{names:?}");
    disk.lose_file(&format!("wal/{}", names[1]));
    match open(&disk, 4096) {
        Err(WalError::MissingSegment { before, after }) => {
            assert_eq!(before, names[0]);
            assert_eq!(after, names[2]);
        }
        other => panic!("expected a missing segment error, got {:?}", other.map(|_| ())),
    }
    let (_, recovery) =
        Wal::open(Arc::new(disk.clone()), WalOptions { repair: true, segment_bytes: 4096, ..WalOptions::default() })
            .unwrap();
    assert!(recovery.repaired_at.is_some());
}

#[test]
fn a_full_disk_fails_the_append_cleanly_and_freeing_space_lets_it_continue() {
    let disk = SimDisk::new();
    disk.set_capacity(Some(3 * 4096));
    let (mut wal, _) = open(&disk, 4096).unwrap();
    let mut written = 0u64;
    let error = loop {
        let record = Record::Entries { group: 1, entries: entries(written + 1, 4, 1) };
        match wal.append(&[record]).and_then(|()| wal.sync()) {
            Ok(()) => written += 4,
            Err(error) => break error,
        }
        assert!(written < 10_000, "the disk never filled");
    };
    assert!(matches!(error, WalError::NoSpace(_)), "{error}");
    // Still consistent and readable: everything acknowledged is there.
    drop(wal);
    let (mut wal, recovery) = open(&disk, 4096).unwrap();
    assert_eq!(recovery.groups[&1].last_index(), written);
    disk.set_capacity(None);
    wal.append(&[Record::Entries { group: 1, entries: entries(written + 1, 4, 1) }]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = open(&disk, 4096).unwrap();
    assert_eq!(recovery.groups[&1].last_index(), written + 4);
}

#[test]
fn appends_into_the_allocated_segment_never_fail_for_space_even_over_capacity() {
    // A crash can undo an unsynced removal and leave the disk holding more than its capacity;
    // writing where the segment is already allocated takes no space (as on a real file system).
    let disk = SimDisk::new();
    let (wal, _) = open(&disk, 1 << 16).unwrap();
    let mut other = disk.open("other.dat", true).unwrap();
    other.write_all_at(0, &[7u8; 4096]).unwrap();
    other.sync_data().unwrap();
    disk.sync_dir("").unwrap();
    disk.remove("other.dat").unwrap(); // not made durable: a crash brings it back
    drop(wal);
    let capacity = disk.used_bytes();
    disk.set_capacity(Some(capacity));
    disk.crash(1);
    assert!(disk.used_bytes() > capacity, "the removed file is back, over the capacity");
    let (mut wal, _) = open(&disk, 1 << 16).unwrap();
    wal.append(&[Record::Entries { group: 1, entries: entries(1, 4, 1) }]).unwrap();
    wal.sync().unwrap();
}

#[test]
fn segments_covered_by_snapshots_are_removed_and_the_rest_recovers() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 4096).unwrap();
    for batch in 0..100u64 {
        wal.append(&[
            Record::Entries { group: 1, entries: entries(batch * 4 + 1, 4, 1) },
            Record::Entries { group: 2, entries: entries(batch + 1, 1, 1) },
        ])
        .unwrap();
    }
    wal.append(&[Record::HardState { group: 2, hard_state: HardState { term: 1, vote: 1, commit: 100 } }]).unwrap();
    wal.sync().unwrap();
    let before = wal.segment_count();
    for group in [1, 2] {
        let index = if group == 1 { 380 } else { 95 };
        wal.append(&[Record::Snapshot {
            group,
            meta: SnapshotMeta { index, term: 1, conf: ConfState::with_voters([1]) },
            replaces_log: false,
        }])
        .unwrap();
    }
    assert_eq!(wal.remove_obsolete_segments().unwrap(), 0, "nothing goes before the snapshot markers are durable");
    wal.sync().unwrap();
    let removed = wal.remove_obsolete_segments().unwrap();
    assert!(removed > 0 && removed < before, "removed {removed} of {before}");
    let next = 401;
    drop(wal);
    let (_, recovery) = open(&disk, 4096).unwrap();
    assert_eq!(recovery.groups[&1].snapshot_index(), 380);
    assert_eq!(recovery.groups[&1].entries.first().map(|e| e.index), Some(381));
    assert_eq!(recovery.groups[&1].last_index(), next - 1);
    assert_eq!(recovery.groups[&2].hard_state.commit, 100);
    assert_eq!(recovery.groups[&2].last_index(), 100);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    /// Arbitrary bytes as a segment: recovery returns a result or an error, never panics.
    #[test]
    fn recovery_never_panics_on_arbitrary_segment_bytes(noise in proptest::collection::vec(any::<u8>(), 0..2000), keep_header in any::<bool>()) {
        let disk = SimDisk::new();
        write_synced_batches(&disk, 3, 1 << 16);
        let mut file = disk.open("wal/0000000000000001.wal", false).unwrap();
        let at = if keep_header { 30 } else { 0 };
        file.write_all_at(at, &noise).unwrap();
        file.sync_data().unwrap();
        let _ = open(&disk, 1 << 16);
    }
}

#[test]
fn the_real_disk_round_trips_with_fsync() {
    let dir = std::env::temp_dir().join(format!("keel-wal-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(&dir));
    {
        let (mut wal, _) = Wal::open(disk.clone(), opts(1 << 16)).unwrap();
        for batch in 0..50u64 {
            wal.append(&[Record::Entries { group: 7, entries: entries(batch * 4 + 1, 4, 1) }]).unwrap();
            wal.sync().unwrap();
        }
    }
    let (_, recovery) = Wal::open(disk, opts(1 << 16)).unwrap();
    assert_eq!(recovery.groups[&7].last_index(), 200);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_header_with_records_after_it_is_refused_not_discarded() {
    // Found in review: a last segment whose header failed to decode was removed as an
    // "interrupted creation" even when synced batches followed it.
    let disk = SimDisk::new();
    write_synced_batches(&disk, 200, 4096);
    let names = disk.list("wal").unwrap();
    let last = format!("wal/{}", names.last().unwrap());
    assert!(disk.flip_bit(&last, 12, 1));
    match open(&disk, 4096) {
        Err(WalError::Corrupt { file, offset: 0, .. }) => assert_eq!(file, last),
        other => panic!("expected corruption at the header, got {:?}", other.map(|_| ())),
    }
}

/// Recovery reads a segment only as far as its frames go (a preallocated segment is mostly
/// zeros), in steps: frames that straddle those steps, a flip far into the file and a torn tail
/// there must all be read as when the segment was read whole.
#[test]
fn frames_far_into_a_large_segment_recover_and_corruption_there_is_still_found() {
    const SEGMENT: u64 = 8 << 20;
    let big = |index: u64| Entry {
        term: 1,
        index,
        kind: EntryKind::Normal,
        // Odd-sized, so frames start at every offset modulo the read step.
        data: Bytes::from(vec![(index % 251) as u8; 100_003]),
    };
    let write = |disk: &SimDisk| {
        let (mut wal, _) = open(disk, SEGMENT).unwrap();
        let mut starts = Vec::new();
        for index in 1..=60 {
            starts.push(wal.position());
            wal.append(&[Record::Entries { group: 1, entries: vec![big(index)] }]).unwrap();
            wal.sync().unwrap();
        }
        starts
    };

    // Clean: every entry comes back, whole, and appends continue where the frames end.
    let disk = SimDisk::new();
    let starts = write(&disk);
    assert!(starts[59].1 > 5 << 20, "the batches reach far into the segment");
    let (mut wal, recovery) = open(&disk, SEGMENT).unwrap();
    let log = &recovery.groups[&1];
    assert_eq!(log.last_index(), 60);
    assert!(log.entries.iter().all(|e| e.data == big(e.index).data));
    wal.append(&[Record::Entries { group: 1, entries: vec![big(61)] }]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = open(&disk, SEGMENT).unwrap();
    assert_eq!(recovery.groups[&1].last_index(), 61);
    assert!(recovery.torn_tail.is_none());

    // A flip in batch 40 (about 4 MB in), with later batches after it: refused, naming it.
    let disk = SimDisk::new();
    let starts = write(&disk);
    let (file, start) = starts[39].clone();
    assert!(disk.flip_bit(&file, start + 50_000, 5));
    match open(&disk, SEGMENT) {
        Err(WalError::Corrupt { file: bad_file, offset, .. }) => {
            assert_eq!(bad_file, file);
            assert_eq!(offset, start);
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("opened a WAL with a corrupt record before its tail"),
    }

    // Damage spanning batches 40..56 (1.6 MB), valid batches after it: only reading past the
    // damage finds them, so this too is refused and not cut as a torn tail.
    let disk = SimDisk::new();
    let starts = write(&disk);
    for (file, start) in &starts[39..55] {
        assert!(disk.flip_bit(file, start + 30_000, 2));
    }
    assert!(
        matches!(open(&disk, SEGMENT), Err(WalError::Corrupt { offset, .. }) if offset == starts[39].1),
        "valid batches far after the damage were taken for a torn tail"
    );

    // A flip in the last batch reads as a torn tail: cut there, the rest kept.
    let disk = SimDisk::new();
    let starts = write(&disk);
    let (file, start) = starts[59].clone();
    assert!(disk.flip_bit(&file, start + 70_000, 1));
    let (_, recovery) = open(&disk, SEGMENT).unwrap();
    assert_eq!(recovery.torn_tail, Some((file, start)));
    assert_eq!(recovery.groups[&1].last_index(), 59);
}

/// The layout recovery sees: the last complete batch starts where the last append began, and the
/// frames end where the next one would go; a torn last batch is not complete.
#[test]
fn the_segment_layout_names_the_last_complete_batch_and_the_end_of_the_frames() {
    use keel_storage::wal::{is_live_segment, segment_layout};
    let disk = SimDisk::new();
    let starts = write_synced_batches(&disk, 10, 1 << 20);
    let (file, last) = starts[9].clone();
    let (mut wal, _) = open(&disk, 1 << 20).unwrap();
    let end = wal.position().1;
    let read = |disk: &SimDisk| disk.open(&file, false).unwrap().read_all().unwrap();
    let layout = segment_layout(&read(&disk), 1 << 20).unwrap();
    assert_eq!(layout.last_complete_batch, Some(last as usize));
    assert_eq!(layout.end as u64, end);
    assert!(layout.body > 0 && layout.body < starts[0].1 as usize + 1);
    assert!(is_live_segment(file.rsplit('/').next().unwrap()));
    assert!(!is_live_segment("0000000000000001.wal.old"));

    // A batch torn mid-write: its frames end the valid ones, and it is not complete.
    wal.append(&[Record::Entries { group: 1, entries: entries(41, 4, 1) }]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert!(disk.flip_bit(&file, end + 20, 1));
    let layout = segment_layout(&read(&disk), 1 << 20).unwrap();
    assert_eq!(layout.last_complete_batch, Some(last as usize));
    assert_eq!(layout.end as u64, end);
}
