use thiserror::Error;

use crate::types::NodeId;

/// Errors a caller of [`crate::RawNode`] can act on. Small and comparable, like raft-rs's.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RaftError {
    #[error("invalid raft configuration: {0}")]
    InvalidConfig(&'static str),
    /// This member is not the leader; `leader` is who it believes leads (0 = unknown).
    #[error("not the leader (leader is {leader})")]
    NotLeader { leader: NodeId },
    /// The leader is handing leadership over and refuses new proposals meanwhile.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A membership change is still pending; only one may be in flight.
    #[error("a membership change is already pending")]
    ConfChangePending,
    #[error("invalid membership change: {0}")]
    InvalidConfChange(&'static str),
    /// A learner may become a voter only once it holds nearly all of the leader's log
    /// ([`crate::learner_in_sync`]); a lagging voter could not help commit for a while.
    #[error("the learner is not in sync with the leader")]
    LearnerNotInSync,
    /// Too much is queued already; retry later.
    #[error("too many pending {0}")]
    Busy(&'static str),
}
