//! Encodings of keel-raft's types.

use keel_raft::{ConfState, Entry, EntryKind, HardState, Message, MessageBody, Snapshot, SnapshotMeta};

use crate::reader::{DecodeError, Reader};
use crate::writer::Writer;

/// Smallest possible encoded entry: term, index, kind, data length.
pub const ENTRY_MIN_BYTES: usize = 8 + 8 + 1 + 4;

pub fn put_entry(w: &mut Writer, entry: &Entry) {
    w.u64(entry.term).u64(entry.index);
    w.u8(match entry.kind {
        EntryKind::Normal => 0,
        EntryKind::ConfChange => 1,
    });
    w.bytes(&entry.data);
}

pub fn get_entry(r: &mut Reader) -> Result<Entry, DecodeError> {
    let term = r.u64("entry term")?;
    let index = r.u64("entry index")?;
    let kind = match r.u8("entry kind")? {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        other => return Err(r.error("entry kind", format!("unknown kind {other}"))),
    };
    let data = r.bytes("entry data")?;
    Ok(Entry { term, index, kind, data })
}

/// Entries must be contiguous; a decoder that accepted gaps would hand raft a broken log.
pub fn get_entries(r: &mut Reader) -> Result<Vec<Entry>, DecodeError> {
    let count = r.count("entry count", ENTRY_MIN_BYTES)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = get_entry(r)?;
        if let Some(prev) = entries.last() {
            let prev: &Entry = prev;
            if prev.index.checked_add(1) != Some(entry.index) {
                return Err(r.error("entries", format!("index {} after {}", entry.index, prev.index)));
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

pub fn put_entries(w: &mut Writer, entries: &[Entry]) {
    w.u32(u32::try_from(entries.len()).expect("fewer than 4G entries"));
    for entry in entries {
        put_entry(w, entry);
    }
}

pub fn put_hard_state(w: &mut Writer, hs: &HardState) {
    w.u64(hs.term).u64(hs.vote).u64(hs.commit);
}

pub fn get_hard_state(r: &mut Reader) -> Result<HardState, DecodeError> {
    Ok(HardState {
        term: r.u64("hard state term")?,
        vote: r.u64("hard state vote")?,
        commit: r.u64("hard state commit")?,
    })
}

fn put_ids(w: &mut Writer, ids: impl ExactSizeIterator<Item = u64>) {
    w.u32(u32::try_from(ids.len()).expect("fewer than 4G members"));
    for id in ids {
        w.u64(id);
    }
}

/// Member ids are written sorted and unique (they come from a set); anything else is malformed,
/// which also keeps the encoding canonical (decode then encode gives the same bytes).
fn get_ids(r: &mut Reader, what: &'static str) -> Result<Vec<u64>, DecodeError> {
    let count = r.count(what, 8)?;
    let mut ids: Vec<u64> = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.u64(what)?;
        if ids.last().is_some_and(|&last| id <= last) {
            return Err(r.error(what, format!("member ids not strictly increasing ({id})")));
        }
        ids.push(id);
    }
    Ok(ids)
}

pub fn put_conf(w: &mut Writer, conf: &ConfState) {
    put_ids(w, conf.voters.iter().copied());
    put_ids(w, conf.learners.iter().copied());
}

pub fn get_conf(r: &mut Reader) -> Result<ConfState, DecodeError> {
    let voters = get_ids(r, "voters")?.into_iter().collect();
    let learners = get_ids(r, "learners")?.into_iter().collect();
    Ok(ConfState { voters, learners })
}

pub fn put_snapshot_meta(w: &mut Writer, meta: &SnapshotMeta) {
    w.u64(meta.index).u64(meta.term);
    put_conf(w, &meta.conf);
}

pub fn get_snapshot_meta(r: &mut Reader) -> Result<SnapshotMeta, DecodeError> {
    Ok(SnapshotMeta { index: r.u64("snapshot index")?, term: r.u64("snapshot term")?, conf: get_conf(r)? })
}

const MSG_PRE_VOTE: u8 = 1;
const MSG_PRE_VOTE_RESPONSE: u8 = 2;
const MSG_VOTE: u8 = 3;
const MSG_VOTE_RESPONSE: u8 = 4;
const MSG_APPEND: u8 = 5;
const MSG_APPEND_RESPONSE: u8 = 6;
const MSG_HEARTBEAT: u8 = 7;
const MSG_HEARTBEAT_RESPONSE: u8 = 8;
const MSG_INSTALL_SNAPSHOT: u8 = 9;
const MSG_READ_INDEX: u8 = 10;
const MSG_READ_INDEX_RESPONSE: u8 = 11;
const MSG_TIMEOUT_NOW: u8 = 12;

pub fn put_message(w: &mut Writer, msg: &Message) {
    w.u64(msg.group).u64(msg.from).u64(msg.to).u64(msg.term);
    match &msg.body {
        MessageBody::PreVote { last_index, last_term } => {
            w.u8(MSG_PRE_VOTE).u64(*last_index).u64(*last_term);
        }
        MessageBody::PreVoteResponse { reject, commit, commit_term } => {
            w.u8(MSG_PRE_VOTE_RESPONSE).bool(*reject).u64(*commit).u64(*commit_term);
        }
        MessageBody::Vote { last_index, last_term, transfer } => {
            w.u8(MSG_VOTE).u64(*last_index).u64(*last_term).bool(*transfer);
        }
        MessageBody::VoteResponse { reject, commit, commit_term } => {
            w.u8(MSG_VOTE_RESPONSE).bool(*reject).u64(*commit).u64(*commit_term);
        }
        MessageBody::Append { prev_index, prev_term, entries, commit } => {
            w.u8(MSG_APPEND).u64(*prev_index).u64(*prev_term).u64(*commit);
            put_entries(w, entries);
        }
        MessageBody::AppendResponse { reject, index, log_term, hint_index } => {
            w.u8(MSG_APPEND_RESPONSE).bool(*reject).u64(*index).u64(*log_term).u64(*hint_index);
        }
        MessageBody::Heartbeat { commit, read_round } => {
            w.u8(MSG_HEARTBEAT).u64(*commit).u64(*read_round);
        }
        MessageBody::HeartbeatResponse { read_round } => {
            w.u8(MSG_HEARTBEAT_RESPONSE).u64(*read_round);
        }
        MessageBody::InstallSnapshot { snapshot } => {
            w.u8(MSG_INSTALL_SNAPSHOT);
            put_snapshot_meta(w, &snapshot.meta);
            w.bytes(&snapshot.data);
        }
        MessageBody::ReadIndex { id } => {
            w.u8(MSG_READ_INDEX).u64(*id);
        }
        MessageBody::ReadIndexResponse { id, index } => {
            w.u8(MSG_READ_INDEX_RESPONSE).u64(*id).u64(*index);
        }
        MessageBody::TimeoutNow => {
            w.u8(MSG_TIMEOUT_NOW);
        }
    }
}

pub fn get_message(r: &mut Reader) -> Result<Message, DecodeError> {
    let group = r.u64("message group")?;
    let from = r.u64("message from")?;
    let to = r.u64("message to")?;
    let term = r.u64("message term")?;
    let body = match r.u8("message type")? {
        MSG_PRE_VOTE => MessageBody::PreVote { last_index: r.u64("last index")?, last_term: r.u64("last term")? },
        MSG_PRE_VOTE_RESPONSE => MessageBody::PreVoteResponse {
            reject: r.bool("reject")?,
            commit: r.u64("commit")?,
            commit_term: r.u64("commit term")?,
        },
        MSG_VOTE => MessageBody::Vote {
            last_index: r.u64("last index")?,
            last_term: r.u64("last term")?,
            transfer: r.bool("transfer")?,
        },
        MSG_VOTE_RESPONSE => MessageBody::VoteResponse {
            reject: r.bool("reject")?,
            commit: r.u64("commit")?,
            commit_term: r.u64("commit term")?,
        },
        MSG_APPEND => {
            let prev_index = r.u64("prev index")?;
            let prev_term = r.u64("prev term")?;
            let commit = r.u64("commit")?;
            let entries = get_entries(r)?;
            if entries.first().is_some_and(|e| e.index != prev_index.wrapping_add(1)) {
                return Err(r.error("append entries", "first entry does not follow prev index"));
            }
            MessageBody::Append { prev_index, prev_term, entries, commit }
        }
        MSG_APPEND_RESPONSE => MessageBody::AppendResponse {
            reject: r.bool("reject")?,
            index: r.u64("index")?,
            log_term: r.u64("log term")?,
            hint_index: r.u64("hint index")?,
        },
        MSG_HEARTBEAT => MessageBody::Heartbeat { commit: r.u64("commit")?, read_round: r.u64("read round")? },
        MSG_HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse { read_round: r.u64("read round")? },
        MSG_INSTALL_SNAPSHOT => {
            let meta = get_snapshot_meta(r)?;
            let data = r.bytes("snapshot data")?;
            MessageBody::InstallSnapshot { snapshot: Snapshot { meta, data } }
        }
        MSG_READ_INDEX => MessageBody::ReadIndex { id: r.u64("read id")? },
        MSG_READ_INDEX_RESPONSE => {
            MessageBody::ReadIndexResponse { id: r.u64("read id")?, index: r.u64("read index")? }
        }
        MSG_TIMEOUT_NOW => MessageBody::TimeoutNow,
        other => return Err(r.error("message type", format!("unknown type {other}"))),
    };
    Ok(Message { group, from, to, term, body })
}

pub fn encode_message(msg: &Message) -> Vec<u8> {
    let mut w = Writer::new();
    put_message(&mut w, msg);
    w.into_vec()
}

pub fn decode_message(data: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(data);
    let msg = get_message(&mut r)?;
    r.finish("message")?;
    Ok(msg)
}
