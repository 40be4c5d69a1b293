//! WAL record payloads. One WAL per node holds the records of every raft group on it, each tagged
//! with its group, so that one fsync covers all groups.
//!
//! A record payload is `[version: u8][kind: u8][group: u64][body]`, framed by [`crate::frame`].

use keel_raft::{Entry, GroupId, HardState, SnapshotMeta};

use crate::raft::{get_entries, get_hard_state, get_snapshot_meta, put_entries, put_hard_state, put_snapshot_meta};
use crate::reader::{DecodeError, Reader};
use crate::writer::Writer;

pub const RECORD_VERSION: u8 = 1;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Entries to append; the first replaces any entry at its index and everything after it.
    Entries {
        group: GroupId,
        entries: Vec<Entry>,
    },
    HardState {
        group: GroupId,
        hard_state: HardState,
    },
    /// A durable snapshot file now covers the log up to `meta.index`. If `replaces_log`, the
    /// snapshot came from the leader and every entry of the group before this record is void.
    Snapshot {
        group: GroupId,
        meta: SnapshotMeta,
        replaces_log: bool,
    },
}

impl Record {
    pub fn group(&self) -> GroupId {
        match self {
            Record::Entries { group, .. } | Record::HardState { group, .. } | Record::Snapshot { group, .. } => *group,
        }
    }

    pub fn encode_into(&self, w: &mut Writer) {
        w.u8(RECORD_VERSION);
        match self {
            Record::Entries { group, entries } => {
                w.u8(KIND_ENTRIES).u64(*group);
                put_entries(w, entries);
            }
            Record::HardState { group, hard_state } => {
                w.u8(KIND_HARD_STATE).u64(*group);
                put_hard_state(w, hard_state);
            }
            Record::Snapshot { group, meta, replaces_log } => {
                w.u8(KIND_SNAPSHOT).u64(*group).bool(*replaces_log);
                put_snapshot_meta(w, meta);
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_into(&mut w);
        w.into_vec()
    }

    pub fn decode(data: &[u8]) -> Result<Record, DecodeError> {
        let mut r = Reader::new(data);
        let version = r.u8("record version")?;
        if version != RECORD_VERSION {
            return Err(r.error("record version", format!("unsupported version {version}")));
        }
        let kind = r.u8("record kind")?;
        let group = r.u64("record group")?;
        let record = match kind {
            KIND_ENTRIES => Record::Entries { group, entries: get_entries(&mut r)? },
            KIND_HARD_STATE => Record::HardState { group, hard_state: get_hard_state(&mut r)? },
            KIND_SNAPSHOT => {
                let replaces_log = r.bool("replaces log")?;
                Record::Snapshot { group, meta: get_snapshot_meta(&mut r)?, replaces_log }
            }
            other => return Err(r.error("record kind", format!("unknown kind {other}"))),
        };
        r.finish("record")?;
        Ok(record)
    }
}
