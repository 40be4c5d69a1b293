//! Peer frames: what members send each other over their peer URLs.
//!
//! A connection starts with a [`PeerFrame::Hello`] naming the cluster and both members; the
//! receiver refuses it (see [`check_hello`]) if the cluster differs or the caller is not a
//! member, so a message from another cluster or an unknown member never reaches raft. After
//! that, frames carry batches of raft messages (coalesced per peer). Every frame is
//! length-prefixed and CRC32C-checksummed; [`FrameReader`] decodes a byte stream into frames
//! and never panics or allocates beyond [`FrameReader`]'s limit on hostile input.

use bytes::Bytes;
use keel_raft::{GroupId, Message, NodeId};
use thiserror::Error;

use crate::frame::{decode_frame, encode_frame, FrameError, FRAME_HEADER_BYTES};
use crate::raft::{get_message, put_message};
use crate::reader::{DecodeError, Reader};
use crate::writer::Writer;

/// 2: a membership change's log entry may carry its member record after the change (a member of
/// version 1 would skip such an entry and its membership would part from the others': the two
/// refuse each other's connections instead).
pub const PEER_PROTOCOL_VERSION: u8 = 2;
const KIND_HELLO: u8 = 1;
const KIND_MESSAGES: u8 = 2;
const KIND_FORWARD: u8 = 3;
const KIND_FORWARD_REPLY: u8 = 4;
const KIND_ATTRIBUTES: u8 = 5;
const KIND_FORWARD_CONF_CHANGE: u8 = 6;
const KIND_CHUNK: u8 = 7;
const KIND_FILE_CHUNK: u8 = 8;
const KIND_FILE_END: u8 = 9;
const KIND_MEMBERSHIP: u8 = 10;
const KIND_REMOVED: u8 = 11;
/// Most client URLs a member may advertise.
pub const CLIENT_URLS_MAX: usize = 64;
const OUTCOME_ACCEPTED: u8 = 1;
const OUTCOME_NOT_LEADER: u8 = 2;
const OUTCOME_BUSY: u8 = 3;
const OUTCOME_REFUSED: u8 = 4;
/// The smallest encoded raft message (ids, term, type byte): bounds a hostile message count.
const MESSAGE_MIN_BYTES: usize = 8 * 4 + 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    /// The first frame of a connection.
    Hello { cluster_id: u64, from: NodeId, to: NodeId },
    /// Raft messages, batched per peer.
    Messages(Vec<Message>),
    /// A client's command that reached a follower, forwarded to the member it believes leads
    /// `group`. `request` is the follower's own id for it, echoed in the reply.
    Forward { group: GroupId, request: u64, data: Bytes },
    /// The leader's answer to a [`PeerFrame::Forward`]. It is sent on the same connection before
    /// the appends that carry the entry, so the follower learns the slot before it applies it.
    ForwardReply { request: u64, outcome: ForwardOutcome },
    /// A membership change that reached a follower, forwarded like [`PeerFrame::Forward`];
    /// `change` is a [`keel_raft::ConfChange`]'s encoding.
    ForwardConfChange { group: GroupId, request: u64, change: Bytes },
    /// A piece of an encoded frame too large to send whole (one carrying a snapshot): the pieces
    /// of one frame follow each other on a connection, and the `last` one completes it.
    Chunk { last: bool, bytes: Bytes },
    /// Sent after the hello: the sender's name and client URLs (for logs).
    Attributes { name: String, client_urls: Vec<String> },
    /// A piece of a file streamed on a connection of its own (a store for a follower's
    /// snapshot): the receiver writes it to disk at `offset`, never holding the file in memory.
    FileChunk { offset: u64, bytes: Bytes },
    /// The streamed file is complete: `size` bytes with this CRC-32C. The raft message that
    /// needs the file follows on the same connection.
    FileEnd { size: u64, crc: u32 },
    /// A message of the membership protocol (SWIM), encoded by `keel_membership::wire`. It is
    /// the one frame a process that holds no replica (a spare) may send.
    Membership(Bytes),
    /// Written back on a connection from a member that was removed from the cluster (replaced
    /// while it was down): it must not rejoin with its stale state.
    Removed,
}

/// What became of a forwarded proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Proposed at this log slot; whether it commits there is up to raft.
    Accepted { index: u64, term: u64 },
    /// The receiver does not lead the group; `leader` is its guess (0 = none known).
    NotLeader { leader: NodeId },
    /// The leader's queue of pending proposals is full.
    Busy,
    /// The leader refused it for a reason of its own ([`RefusalKind`]); nothing was proposed.
    Refused(RefusalKind),
}

/// Why a leader refused a forwarded proposal (other than not leading or being busy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Another membership change is still in flight.
    ConfChangePending,
    /// The membership change is not valid (e.g. it would remove the last voter).
    InvalidConfChange,
    /// Leadership is being handed over.
    TransferInProgress,
    /// A learner's promotion was asked for before it caught up with the leader.
    LearnerNotInSync,
    Other,
}

impl RefusalKind {
    fn code(self) -> u8 {
        match self {
            RefusalKind::ConfChangePending => 1,
            RefusalKind::InvalidConfChange => 2,
            RefusalKind::TransferInProgress => 3,
            RefusalKind::Other => 4,
            RefusalKind::LearnerNotInSync => 5,
        }
    }

    /// Unknown codes (from a newer peer) read as `Other`.
    fn from_code(code: u8) -> RefusalKind {
        match code {
            1 => RefusalKind::ConfChangePending,
            2 => RefusalKind::InvalidConfChange,
            3 => RefusalKind::TransferInProgress,
            5 => RefusalKind::LearnerNotInSync,
            _ => RefusalKind::Other,
        }
    }
}

impl PeerFrame {
    /// The frame with its length and checksum, ready for the socket.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(PEER_PROTOCOL_VERSION);
        match self {
            PeerFrame::Hello { cluster_id, from, to } => {
                w.u8(KIND_HELLO).u64(*cluster_id).u64(*from).u64(*to);
            }
            PeerFrame::Messages(messages) => {
                w.u8(KIND_MESSAGES).u32(u32::try_from(messages.len()).expect("fewer than 4G messages per batch"));
                for message in messages {
                    put_message(&mut w, message);
                }
            }
            PeerFrame::Forward { group, request, data } => {
                w.u8(KIND_FORWARD).u64(*group).u64(*request).bytes(data);
            }
            PeerFrame::ForwardConfChange { group, request, change } => {
                w.u8(KIND_FORWARD_CONF_CHANGE).u64(*group).u64(*request).bytes(change);
            }
            PeerFrame::Chunk { last, bytes } => {
                w.u8(KIND_CHUNK).bool(*last).bytes(bytes);
            }
            PeerFrame::FileChunk { offset, bytes } => {
                w.u8(KIND_FILE_CHUNK).u64(*offset).bytes(bytes);
            }
            PeerFrame::FileEnd { size, crc } => {
                w.u8(KIND_FILE_END).u64(*size).u32(*crc);
            }
            PeerFrame::Membership(bytes) => {
                w.u8(KIND_MEMBERSHIP).bytes(bytes);
            }
            PeerFrame::Removed => {
                w.u8(KIND_REMOVED);
            }
            PeerFrame::Attributes { name, client_urls } => {
                w.u8(KIND_ATTRIBUTES).bytes(name.as_bytes());
                w.u32(u32::try_from(client_urls.len()).expect("fewer than 4G urls"));
                for url in client_urls {
                    w.bytes(url.as_bytes());
                }
            }
            PeerFrame::ForwardReply { request, outcome } => {
                w.u8(KIND_FORWARD_REPLY).u64(*request);
                match *outcome {
                    ForwardOutcome::Accepted { index, term } => w.u8(OUTCOME_ACCEPTED).u64(index).u64(term),
                    ForwardOutcome::NotLeader { leader } => w.u8(OUTCOME_NOT_LEADER).u64(leader),
                    ForwardOutcome::Busy => w.u8(OUTCOME_BUSY),
                    ForwardOutcome::Refused(kind) => w.u8(OUTCOME_REFUSED).u8(kind.code()),
                };
            }
        }
        let mut out = Vec::with_capacity(w.len() + FRAME_HEADER_BYTES);
        encode_frame(&mut out, &w.into_vec());
        out
    }

    /// Decodes a frame's payload (without the length and checksum).
    pub fn decode_payload(payload: &[u8]) -> Result<PeerFrame, DecodeError> {
        let mut r = Reader::new(payload);
        let version = r.u8("peer protocol version")?;
        if version != PEER_PROTOCOL_VERSION {
            return Err(r.error("peer protocol version", format!("unsupported version {version}")));
        }
        let frame = match r.u8("peer frame kind")? {
            KIND_HELLO => PeerFrame::Hello { cluster_id: r.u64("cluster id")?, from: r.u64("from")?, to: r.u64("to")? },
            KIND_MESSAGES => {
                let count = r.count("message count", MESSAGE_MIN_BYTES)?;
                let mut messages = Vec::with_capacity(count);
                for _ in 0..count {
                    messages.push(get_message(&mut r)?);
                }
                PeerFrame::Messages(messages)
            }
            KIND_FORWARD => {
                PeerFrame::Forward { group: r.u64("group")?, request: r.u64("request")?, data: r.bytes("command")? }
            }
            KIND_FORWARD_CONF_CHANGE => PeerFrame::ForwardConfChange {
                group: r.u64("group")?,
                request: r.u64("request")?,
                change: r.bytes("conf change")?,
            },
            KIND_CHUNK => PeerFrame::Chunk { last: r.bool("last chunk")?, bytes: r.bytes("chunk")? },
            KIND_FILE_CHUNK => PeerFrame::FileChunk { offset: r.u64("file offset")?, bytes: r.bytes("file chunk")? },
            KIND_FILE_END => PeerFrame::FileEnd { size: r.u64("file size")?, crc: r.u32("file crc")? },
            KIND_MEMBERSHIP => PeerFrame::Membership(r.bytes("membership message")?),
            KIND_REMOVED => PeerFrame::Removed,
            KIND_ATTRIBUTES => {
                let name = String::from_utf8_lossy(&r.bytes("member name")?).into_owned();
                let count = r.count("client url count", 4)?;
                if count > CLIENT_URLS_MAX {
                    return Err(r.error("client url count", format!("{count} urls, at most {CLIENT_URLS_MAX}")));
                }
                let mut client_urls = Vec::with_capacity(count);
                for _ in 0..count {
                    client_urls.push(String::from_utf8_lossy(&r.bytes("client url")?).into_owned());
                }
                PeerFrame::Attributes { name, client_urls }
            }
            KIND_FORWARD_REPLY => {
                let request = r.u64("request")?;
                let outcome = match r.u8("forward outcome")? {
                    OUTCOME_ACCEPTED => ForwardOutcome::Accepted { index: r.u64("index")?, term: r.u64("term")? },
                    OUTCOME_NOT_LEADER => ForwardOutcome::NotLeader { leader: r.u64("leader")? },
                    OUTCOME_BUSY => ForwardOutcome::Busy,
                    OUTCOME_REFUSED => ForwardOutcome::Refused(RefusalKind::from_code(r.u8("refusal")?)),
                    other => return Err(r.error("forward outcome", format!("unknown outcome {other}"))),
                };
                PeerFrame::ForwardReply { request, outcome }
            }
            other => return Err(r.error("peer frame kind", format!("unknown kind {other}"))),
        };
        r.finish("peer frame")?;
        Ok(frame)
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PeerRefusal {
    #[error("peer belongs to cluster {theirs:#x}, this member to {ours:#x} (check --initial-cluster-token)")]
    ClusterMismatch { ours: u64, theirs: u64 },
    #[error("peer {0:#x} is not a member of this cluster")]
    UnknownMember(NodeId),
    #[error("peer addressed member {to:#x}, this is {me:#x}")]
    WrongTarget { me: NodeId, to: NodeId },
    #[error("the first frame of a peer connection must be a hello")]
    NoHello,
}

/// Appends `frame`'s encoding to `out`, split into [`PeerFrame::Chunk`]s of at most
/// `chunk_bytes` when it is larger than that.
pub fn encode_chunked(out: &mut Vec<u8>, frame: &PeerFrame, chunk_bytes: usize) {
    let encoded = frame.encode();
    if encoded.len() <= chunk_bytes {
        out.extend(encoded);
        return;
    }
    let pieces = encoded.chunks(chunk_bytes.max(1));
    let count = pieces.len();
    for (i, piece) in pieces.enumerate() {
        out.extend(PeerFrame::Chunk { last: i + 1 == count, bytes: Bytes::copy_from_slice(piece) }.encode());
    }
}

/// Reassembles chunked frames; bounded by `max_bytes` per frame.
#[derive(Debug)]
pub struct Reassembly {
    buf: Vec<u8>,
    max_bytes: usize,
}

impl Reassembly {
    pub fn new(max_bytes: usize) -> Reassembly {
        Reassembly { buf: Vec::new(), max_bytes }
    }

    /// Takes one chunk; the whole frame once its last chunk is in.
    pub fn push(&mut self, last: bool, bytes: &[u8]) -> Result<Option<PeerFrame>, PeerStreamError> {
        if self.buf.len() + bytes.len() > self.max_bytes {
            let len = self.buf.len() + bytes.len();
            self.buf.clear();
            return Err(PeerStreamError::Frame(FrameError::TooLong { offset: 0, len, limit: self.max_bytes }));
        }
        self.buf.extend_from_slice(bytes);
        if !last {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.buf);
        let mut reader = FrameReader::new(self.max_bytes);
        reader.push(&whole);
        match reader.next_frame()? {
            Some(PeerFrame::Chunk { .. }) | None => Err(PeerStreamError::Decode(DecodeError {
                what: "chunked frame",
                offset: 0,
                problem: "the chunks do not make one frame".into(),
            })),
            Some(frame) if reader.buf.is_empty() => Ok(Some(frame)),
            Some(_) => Err(PeerStreamError::Decode(DecodeError {
                what: "chunked frame",
                offset: 0,
                problem: "bytes after the frame".into(),
            })),
        }
    }
}

/// Decides whether to accept a connection whose first frame is `hello`.
pub fn check_hello(
    hello: &PeerFrame,
    cluster_id: u64,
    me: NodeId,
    is_member: impl Fn(NodeId) -> bool,
) -> Result<NodeId, PeerRefusal> {
    let PeerFrame::Hello { cluster_id: theirs, from, to } = *hello else {
        return Err(PeerRefusal::NoHello);
    };
    if theirs != cluster_id {
        return Err(PeerRefusal::ClusterMismatch { ours: cluster_id, theirs });
    }
    if to != me {
        return Err(PeerRefusal::WrongTarget { me, to });
    }
    if !is_member(from) {
        return Err(PeerRefusal::UnknownMember(from));
    }
    Ok(from)
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PeerStreamError {
    #[error("corrupt peer frame: {0}")]
    Frame(FrameError),
    #[error("undecodable peer frame: {0}")]
    Decode(DecodeError),
}

/// Turns a byte stream into frames. Feed it what the socket gives; it keeps partial frames.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    max_frame_bytes: usize,
}

impl FrameReader {
    pub fn new(max_frame_bytes: usize) -> FrameReader {
        FrameReader { buf: Vec::new(), max_frame_bytes }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` if more bytes are needed. After an error the stream is
    /// unusable (frame boundaries are lost): close the connection.
    pub fn next_frame(&mut self) -> Result<Option<PeerFrame>, PeerStreamError> {
        if self.buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        match decode_frame(&self.buf, 0, self.max_frame_bytes) {
            Ok((payload, next)) => {
                let frame = PeerFrame::decode_payload(payload).map_err(PeerStreamError::Decode)?;
                self.buf.drain(..next);
                Ok(Some(frame))
            }
            Err(FrameError::TruncatedPayload { .. }) | Err(FrameError::TruncatedHeader { .. }) => Ok(None),
            // A zero header on the wire is no "end of data": nothing sends empty frames.
            Err(error) => Err(PeerStreamError::Frame(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keel_raft::{Entry, EntryKind, MessageBody};
    use proptest::prelude::*;

    use super::*;

    fn batch() -> PeerFrame {
        let entries = vec![Entry { term: 2, index: 5, kind: EntryKind::Normal, data: Bytes::from_static(b"v") }];
        PeerFrame::Messages(vec![
            Message {
                group: 1,
                from: 1,
                to: 2,
                term: 2,
                body: MessageBody::Append { prev_index: 4, prev_term: 2, entries, commit: 4 },
            },
            Message { group: 7, from: 1, to: 2, term: 9, body: MessageBody::Heartbeat { commit: 3, read_round: 8 } },
        ])
    }

    #[test]
    fn every_refusal_kind_survives_the_wire_and_unknown_codes_read_as_other() {
        use RefusalKind::*;
        for kind in [ConfChangePending, InvalidConfChange, TransferInProgress, LearnerNotInSync, Other] {
            assert_eq!(RefusalKind::from_code(kind.code()), kind);
        }
        assert_eq!(RefusalKind::from_code(200), Other, "a newer peer's reason");
    }

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let hello = PeerFrame::Hello { cluster_id: 0xabc, from: 1, to: 2 };
        let forward = PeerFrame::Forward { group: 3, request: 77, data: Bytes::from_static(b"put x") };
        let conf = PeerFrame::ForwardConfChange { group: 3, request: 80, change: Bytes::from_static(b"\x01") };
        let chunk = PeerFrame::Chunk { last: false, bytes: Bytes::from_static(b"part") };
        let file = [
            PeerFrame::FileChunk { offset: 4096, bytes: Bytes::from_static(b"store bytes") },
            PeerFrame::FileEnd { size: 4107, crc: 0xdead_beef },
            PeerFrame::Membership(Bytes::from_static(b"\x01\x04\x00\x00\x00\x07")),
            PeerFrame::Removed,
        ];
        let replies = [
            PeerFrame::ForwardReply { request: 77, outcome: ForwardOutcome::Accepted { index: 9, term: 2 } },
            PeerFrame::ForwardReply { request: 78, outcome: ForwardOutcome::NotLeader { leader: 3 } },
            PeerFrame::ForwardReply { request: 79, outcome: ForwardOutcome::Busy },
            PeerFrame::ForwardReply { request: 81, outcome: ForwardOutcome::Refused(RefusalKind::ConfChangePending) },
        ];
        let attributes = PeerFrame::Attributes { name: "m1".into(), client_urls: vec!["http://127.0.0.1:2379".into()] };
        let mut stream = hello.encode();
        stream.extend(attributes.encode());
        stream.extend(batch().encode());
        stream.extend(forward.encode());
        stream.extend(conf.encode());
        stream.extend(chunk.encode());
        for reply in file.iter().chain(&replies) {
            stream.extend(reply.encode());
        }
        for split in 0..stream.len() {
            let mut reader = FrameReader::new(1 << 20);
            reader.push(&stream[..split]);
            let mut got = Vec::new();
            while let Some(frame) = reader.next_frame().unwrap() {
                got.push(frame);
            }
            reader.push(&stream[split..]);
            while let Some(frame) = reader.next_frame().unwrap() {
                got.push(frame);
            }
            let mut want =
                vec![hello.clone(), attributes.clone(), batch(), forward.clone(), conf.clone(), chunk.clone()];
            want.extend(file.iter().chain(&replies).cloned());
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn a_large_frame_goes_in_chunks_and_comes_back_whole() {
        let big = PeerFrame::Forward { group: 1, request: 2, data: Bytes::from(vec![7u8; 10_000]) };
        let mut stream = Vec::new();
        encode_chunked(&mut stream, &big, 1_000);
        encode_chunked(&mut stream, &batch(), 1_000_000);
        let mut reader = FrameReader::new(2_000);
        reader.push(&stream);
        let mut reassembly = Reassembly::new(20_000);
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(frame) = reader.next_frame().unwrap() {
            match frame {
                PeerFrame::Chunk { last, bytes } => {
                    chunks += 1;
                    got.extend(reassembly.push(last, &bytes).unwrap());
                }
                other => got.push(other),
            }
        }
        assert!(chunks >= 10);
        assert_eq!(got, vec![big.clone(), batch()]);
        // Past its bound, reassembly refuses rather than grows.
        let mut small = Reassembly::new(5_000);
        let mut stream = Vec::new();
        encode_chunked(&mut stream, &big, 1_000);
        let mut reader = FrameReader::new(2_000);
        reader.push(&stream);
        let mut refused = false;
        while let Some(PeerFrame::Chunk { last, bytes }) = reader.next_frame().unwrap() {
            if small.push(last, &bytes).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    #[test]
    fn another_cluster_or_an_unknown_member_is_refused() {
        let members = |id: NodeId| id == 1 || id == 2;
        let hello = |cluster_id, from, to| PeerFrame::Hello { cluster_id, from, to };
        assert_eq!(check_hello(&hello(7, 1, 2), 7, 2, members), Ok(1));
        assert_eq!(
            check_hello(&hello(8, 1, 2), 7, 2, members),
            Err(PeerRefusal::ClusterMismatch { ours: 7, theirs: 8 })
        );
        assert_eq!(check_hello(&hello(7, 9, 2), 7, 2, members), Err(PeerRefusal::UnknownMember(9)));
        assert_eq!(check_hello(&hello(7, 1, 3), 7, 2, members), Err(PeerRefusal::WrongTarget { me: 2, to: 3 }));
        assert_eq!(check_hello(&batch(), 7, 2, members), Err(PeerRefusal::NoHello));
    }

    #[test]
    fn a_corrupt_or_oversized_frame_is_an_error() {
        let mut bytes = batch().encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut reader = FrameReader::new(1 << 20);
        reader.push(&bytes);
        assert!(matches!(reader.next_frame(), Err(PeerStreamError::Frame(FrameError::Checksum { .. }))));
        let mut reader = FrameReader::new(16);
        reader.push(&batch().encode());
        assert!(matches!(reader.next_frame(), Err(PeerStreamError::Frame(FrameError::TooLong { .. }))));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, .. ProptestConfig::default() })]

        #[test]
        fn the_stream_decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut reader = FrameReader::new(1 << 16);
            for chunk in chunks {
                reader.push(&chunk);
                while let Ok(Some(_)) = reader.next_frame() {}
            }
            let _ = PeerFrame::decode_payload(&[]);
        }
    }
}
