use std::sync::Arc;

use bytes::Bytes;
use keel_codec::record::Record;
use keel_raft::{Entry, EntryKind};
use keel_storage::group_commit::GroupCommitter;
use keel_storage::wal::{Wal, WalOptions};
use keel_storage::{Disk, SimDisk};

#[test]
fn many_writers_share_fsyncs_and_every_record_is_durable_when_acknowledged() {
    let disk = SimDisk::new();
    let (wal, _) = Wal::open(
        Arc::new(disk.clone()) as Arc<dyn Disk>,
        WalOptions { segment_bytes: 1 << 20, ..WalOptions::default() },
    )
    .unwrap();
    let committer = Arc::new(GroupCommitter::new(wal));
    let writers = 8u64;
    let per_writer = 200u64;
    std::thread::scope(|scope| {
        for writer in 0..writers {
            let committer = committer.clone();
            scope.spawn(move || {
                for i in 0..per_writer {
                    // Each writer is its own group, so entries stay contiguous per group.
                    let entry = Entry {
                        term: 1,
                        index: i + 1,
                        kind: EntryKind::Normal,
                        data: Bytes::from(vec![writer as u8; 16]),
                    };
                    committer.commit(Record::Entries { group: writer + 1, entries: vec![entry] }).unwrap();
                }
            });
        }
    });
    let rounds = committer.rounds();
    assert!(rounds < writers * per_writer, "no batching: {rounds} fsync rounds for {} records", writers * per_writer);
    // Everything acknowledged survives a crash.
    drop(committer);
    disk.crash(11);
    let (_, recovery) =
        Wal::open(Arc::new(disk) as Arc<dyn Disk>, WalOptions { segment_bytes: 1 << 20, ..WalOptions::default() })
            .unwrap();
    for writer in 0..writers {
        assert_eq!(recovery.groups[&(writer + 1)].last_index(), per_writer);
    }
}
