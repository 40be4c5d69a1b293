use bytes::Bytes;
use keel_raft::{ConfState, Entry, EntryKind, HardState, Message, MessageBody, Snapshot, SnapshotMeta};
use proptest::prelude::*;

use crate::frame::{decode_frame, encode_frame, FrameError};
use crate::raft::{decode_message, encode_message};
use crate::record::Record;

fn entries(first: u64, count: u64) -> Vec<Entry> {
    (first..first + count)
        .map(|index| Entry { term: 3, index, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; 5]) })
        .collect()
}

#[test]
fn records_round_trip() {
    let records = vec![
        Record::Entries { group: 7, entries: entries(10, 3) },
        Record::HardState { group: 7, hard_state: HardState { term: 4, vote: 2, commit: 9 } },
        Record::Snapshot {
            group: 9,
            meta: SnapshotMeta {
                index: 100,
                term: 5,
                conf: ConfState { voters: [1, 2, 3].into(), learners: [4].into() },
            },
            replaces_log: true,
        },
    ];
    for record in records {
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
    }
}

#[test]
fn messages_round_trip() {
    let bodies = vec![
        MessageBody::PreVote { last_index: 1, last_term: 2 },
        MessageBody::VoteResponse { reject: true, commit: 7, commit_term: 2 },
        MessageBody::PreVoteResponse { reject: false, commit: 9, commit_term: 3 },
        MessageBody::Append { prev_index: 9, prev_term: 3, entries: entries(10, 2), commit: 8 },
        MessageBody::AppendResponse { reject: false, index: 11, log_term: 3, hint_index: 0 },
        MessageBody::Heartbeat { commit: 5, read_round: 6 },
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta { index: 3, term: 1, conf: ConfState::with_voters([1]) },
                data: Bytes::from_static(b"x"),
            },
        },
        MessageBody::ReadIndexResponse { id: 1, index: 2 },
        MessageBody::TimeoutNow,
    ];
    for body in bodies {
        let msg = Message { group: 1, from: 2, to: 3, term: 4, body };
        assert_eq!(decode_message(&encode_message(&msg)).unwrap(), msg);
    }
}

#[test]
fn a_corrupt_frame_is_reported_with_its_offset() {
    let mut data = vec![0u8; 3];
    encode_frame(&mut data, b"hello world");
    data[3 + 10] ^= 0x40;
    match decode_frame(&data, 3, 1 << 20) {
        Err(FrameError::Checksum { offset: 3, .. }) => {}
        other => panic!("expected a checksum error at 3, got {other:?}"),
    }
}

#[test]
fn zeros_read_as_the_end_and_a_short_tail_as_truncation() {
    assert_eq!(decode_frame(&[0u8; 16], 0, 100), Err(FrameError::End));
    let mut data = Vec::new();
    encode_frame(&mut data, b"payload");
    data.truncate(data.len() - 2);
    assert!(matches!(decode_frame(&data, 0, 100), Err(FrameError::TruncatedPayload { .. })));
}

#[test]
fn a_gap_in_entries_is_refused() {
    let mut record = Record::Entries { group: 1, entries: entries(1, 3) }.encode();
    // Entry layout: term(8) index(8) kind(1) len(4) data(5) = 26 bytes; the second entry's index
    // sits after the header (1+1+8), the count (4), the first entry (26) and its term (8).
    let at = 1 + 1 + 8 + 4 + 26 + 8;
    record[at] = 9;
    assert!(Record::decode(&record).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, .. ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Record::decode(&data);
        let _ = decode_message(&data);
        let _ = decode_frame(&data, 0, 1 << 16);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_input(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let mut data = Record::Entries { group: 3, entries: entries(5, 4) }.encode();
        for (at, value) in flips {
            let len = data.len();
            data[at % len] = value;
        }
        let keep = cut % (data.len() + 1);
        let _ = Record::decode(&data[..keep]);
        let _ = decode_message(&data[..keep]);
    }
}

#[test]
fn member_ids_must_be_sorted_and_unique() {
    // Found by the wal_record fuzz target: duplicate ids decoded, then re-encoded differently.
    let record = Record::Snapshot {
        group: 1,
        meta: SnapshotMeta { index: 1, term: 1, conf: ConfState::with_voters([1, 2]) },
        replaces_log: false,
    };
    let mut bytes = record.encode();
    // voters: count at 1+1+8+1+8+8 = 27, then ids 1 and 2; make the second id 1 too.
    let second_id = 27 + 4 + 8;
    bytes[second_id] = 1;
    assert!(Record::decode(&bytes).is_err());
}

#[test]
fn an_entry_index_at_the_top_of_the_range_is_an_error_not_an_overflow() {
    // Found by the wal_record fuzz target: `prev.index + 1` overflowed on u64::MAX.
    let mut last = entries(1, 2);
    last[0].index = u64::MAX;
    last[1].index = 0;
    let record = Record::Entries { group: 1, entries: last }.encode();
    assert!(Record::decode(&record).is_err());
}
