//! Plain data types of one raft group: entries, persistent state, membership, messages.
//!
//! They carry no encoding; `keel-codec` (later) owns the wire and disk formats so that this crate
//! stays free of IO concerns.

use std::collections::BTreeSet;

use bytes::Bytes;

/// Identifies a raft group. Every message carries one: a process hosts many groups (multi-raft).
pub type GroupId = u64;
/// Identifies a member (a replica) within a group. `0` is never a valid member id.
pub type NodeId = u64;
pub type Term = u64;
/// A log position. Index 0 is the empty-log sentinel; the first real entry has index 1.
pub type Index = u64;

/// The id meaning "nobody" (no vote cast, no leader known).
pub const NO_NODE: NodeId = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Application data. An empty normal entry is the no-op a new leader appends to commit
    /// the entries of earlier terms (Raft §5.4.2).
    Normal,
    /// A membership change; `data` holds an encoded [`ConfChange`] and its context (see
    /// [`ConfChange::encode_with`]).
    ConfChange,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Approximate in-memory/wire size, used for byte limits on batches.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + 24
    }
}

/// State that must be durable before certain messages leave (see the crate docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    /// The candidate this member voted for in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    pub commit: Index,
}

/// The membership of a group: voters decide, learners only replicate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState { voters: voters.into_iter().collect(), learners: BTreeSet::new() }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// One membership change at a time (Raft dissertation §4.1, with learners as in etcd):
/// add a learner, let it catch up, then promote it; or remove any member, the leader included.
/// Any majority of the old and of the new voter set overlap, so a single change is safe as long
/// as a leader never has two changes pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    AddLearner(NodeId),
    /// Adds a voter, or promotes a learner to voter.
    AddVoter(NodeId),
    Remove(NodeId),
}

impl ConfChange {
    const TAG_ADD_LEARNER: u8 = 1;
    const TAG_ADD_VOTER: u8 = 2;
    const TAG_REMOVE: u8 = 3;

    /// Bytes an encoded change takes before its context.
    const ENCODED_LEN: usize = 9;

    pub fn encode(&self) -> Bytes {
        self.encode_with(&[])
    }

    /// The change followed by `context`: bytes raft carries in the same entry without reading
    /// them, for the state machine (etcd's `ConfChange.Context`: the member record that the
    /// change adds, so the record and the membership change commit atomically).
    pub fn encode_with(&self, context: &[u8]) -> Bytes {
        let (tag, id) = match *self {
            ConfChange::AddLearner(id) => (Self::TAG_ADD_LEARNER, id),
            ConfChange::AddVoter(id) => (Self::TAG_ADD_VOTER, id),
            ConfChange::Remove(id) => (Self::TAG_REMOVE, id),
        };
        let mut out = Vec::with_capacity(Self::ENCODED_LEN + context.len());
        out.push(tag);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(context);
        Bytes::from(out)
    }

    /// Decodes a change (its context aside); `None` for anything malformed (entries may come
    /// from a corrupt peer).
    pub fn decode(data: &[u8]) -> Option<ConfChange> {
        if data.len() < Self::ENCODED_LEN {
            return None;
        }
        let id = u64::from_le_bytes(data[1..Self::ENCODED_LEN].try_into().ok()?);
        if id == NO_NODE {
            return None;
        }
        match data[0] {
            Self::TAG_ADD_LEARNER => Some(ConfChange::AddLearner(id)),
            Self::TAG_ADD_VOTER => Some(ConfChange::AddVoter(id)),
            Self::TAG_REMOVE => Some(ConfChange::Remove(id)),
            _ => None,
        }
    }

    /// The context an encoded change carries (empty for none, or for data too short to be one).
    pub fn context(data: &[u8]) -> &[u8] {
        data.get(Self::ENCODED_LEN..).unwrap_or_default()
    }

    /// The membership after this change.
    pub fn apply_to(&self, conf: &ConfState) -> ConfState {
        let mut next = conf.clone();
        match *self {
            ConfChange::AddLearner(id) => {
                // Adding an existing voter as learner would be a demotion; keel does not demote.
                if !next.voters.contains(&id) {
                    next.learners.insert(id);
                }
            }
            ConfChange::AddVoter(id) => {
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            ConfChange::Remove(id) => {
                next.voters.remove(&id);
                next.learners.remove(&id);
            }
        }
        next
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub conf: ConfState,
}

/// A state-machine snapshot covering the log up to and including `meta.index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    pub group: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for a pre-vote request (and a granted pre-vote response), the term the
    /// pre-candidate would campaign at, which it has not adopted yet.
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageBody {
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    /// Every vote response carries the responder's commit index and the term of its entry there:
    /// a fact about the log any member may learn, whoever says it (by Log Matching, a member
    /// holding that entry holds everything before it). A candidate that lags in commit learns it
    /// from a refusal: a leader removed by a conf change refuses votes while it holds a longer
    /// log, and a voter that never heard the removal committed would otherwise count that
    /// refusal under the old configuration for ever (simulator seed 10028156).
    PreVoteResponse {
        reject: bool,
        commit: Index,
        commit_term: Term,
    },
    /// `transfer` marks a campaign started by TimeoutNow: voters then skip the leader-lease check.
    Vote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        reject: bool,
        commit: Index,
        commit_term: Term,
    },
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// On success `index` is the follower's last index that matches the leader and `log_term` the
    /// term of its entry there (so the acknowledgement names exactly what is durable). On rejection
    /// `index` is the `prev_index` that did not match, and (`hint_index`, `log_term`) point the
    /// leader at the follower's last entry that may still match (etcd's fast backtracking).
    AppendResponse {
        reject: bool,
        index: Index,
        log_term: Term,
        hint_index: Index,
    },
    /// `read_round` lets one heartbeat round confirm leadership for a batch of ReadIndex requests.
    Heartbeat {
        commit: Index,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// A follower asks the leader for a read index; `id` is the follower's own request id.
    ReadIndex {
        id: u64,
    },
    /// The leader's answer; `index` is [`None`]-like 0 when the leader refused (for instance while
    /// it transfers leadership).
    ReadIndexResponse {
        id: u64,
        index: Index,
    },
    /// Leader transfer: the target starts an election at once.
    TimeoutNow,
}

impl MessageBody {
    /// A short name, for traces and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}

/// A ReadIndex request that has been confirmed: once the state machine has applied `index`, the
/// read identified by `id` may be served and is linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadState {
    pub id: u64,
    pub index: Index,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state worth telling the host about when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}
