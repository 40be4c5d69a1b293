//! The requests a host waits on, and the proposals it forwards to the leader.
//!
//! A client may reach any member. A read is served through raft's ReadIndex from wherever it
//! arrives. A proposal that reaches a follower is forwarded to the leader
//! ([`PeerFrame::Forward`]); the leader answers with the log slot it took, and the follower then
//! waits for its *own* apply of that slot ([`Node::track`]): every replica computes the same
//! response, so nothing but the slot crosses the wire, and an entry that loses its slot to
//! another leader's is reported dropped.
//!
//! A forwarded proposal whose answer never comes (the leader died, or lost an election) has an
//! unknown outcome: the old leader may have replicated it. It is failed as [`RequestError::Timeout`]
//! and never re-sent on the client's behalf, or it could apply twice (the planted bug
//! [`Plant::ReforwardUnknown`] does exactly that, and the simulator catches it).
//!
//! Sans-IO: the caller hands in the node, peer frames and ticks, and carries out the
//! [`Effects`] (frames to send, answers to deliver). The server's driver and the simulator both
//! run this code; `W` is whatever a host keeps to answer a request (a reply channel, a client's
//! request id). Time is counted in ticks, as the node counts it.
//!
//! Many groups: every request names its group, forwards go to that group's leader, and one
//! `Requests` serves every group on the member.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_codec::peer::{ForwardOutcome, PeerFrame, RefusalKind};
use keel_node::{Answer, Node, Outcome, RequestError, RequestId, StateMachine};
use keel_raft::{ConfChange, GroupId, NodeId, Plant, Plants, RaftError, NO_NODE};

/// A forwarded proposal whose leader turned out not to lead is re-forwarded this many times.
pub const FORWARD_HOPS_MAX: u8 = 3;
/// Ticks a forwarded proposal waits for the leader's reply (as keel-node's request timeout).
pub const FORWARD_TIMEOUT_TICKS: u64 = 50;
/// Most forwarded proposals in flight at once; more are refused as busy.
pub const FORWARDING_MAX: usize = 16_384;

/// What a proposal proposes.
#[derive(Clone, Debug)]
pub enum Proposal {
    Command(Bytes),
    /// A membership change and its context for the state machine, in the same entry.
    ConfChange {
        change: ConfChange,
        context: Bytes,
    },
}

/// What became of a request: its answer, or why there is none.
pub type RequestResult<R, Q> = Result<Answer<R, Q>, RequestError>;

/// What a host must carry out after handing something to [`Requests`].
pub struct Effects<W, R, Q> {
    /// Frames for peers: forwarded proposals and the leader's replies to them.
    pub frames: Vec<(NodeId, PeerFrame)>,
    /// Requests that have their answer.
    pub answers: Vec<(W, RequestResult<R, Q>)>,
    /// Commands this member's log took as leader (its own or forwarded), in order.
    pub proposed: Vec<Bytes>,
}

impl<W, R, Q> Default for Effects<W, R, Q> {
    fn default() -> Self {
        Effects { frames: Vec::new(), answers: Vec::new(), proposed: Vec::new() }
    }
}

impl<W, R, Q> Effects<W, R, Q> {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.answers.is_empty() && self.proposed.is_empty()
    }
}

/// The effects of a node whose machine is `S`.
pub type EffectsOf<S, W> = Effects<W, <S as StateMachine>::Response, <S as StateMachine>::QueryResult>;

/// A proposal sent to the leader, waiting for the slot it took.
struct Forwarding<W> {
    group: GroupId,
    /// The member it was sent to.
    to: NodeId,
    proposal: Proposal,
    waiter: W,
    deadline: u64,
    hops: u8,
}

/// One member's requests in flight, for every group it hosts.
pub struct Requests<W> {
    next_id: RequestId,
    ticks: u64,
    waiting: BTreeMap<RequestId, W>,
    forwarding: BTreeMap<RequestId, Forwarding<W>>,
    plants: Plants,
}

impl<W> Requests<W> {
    /// Request ids count up from `first_id`. They double as ReadIndex ids, which a leader echoes
    /// back, so a host must pick a start that a previous incarnation never reached (the server
    /// takes the wall clock in nanoseconds): a response meant for a read before a restart must
    /// never be taken for a new one.
    pub fn new(first_id: RequestId, plants: Plants) -> Self {
        Requests { next_id: first_id, ticks: 0, waiting: BTreeMap::new(), forwarding: BTreeMap::new(), plants }
    }

    /// Requests waiting for an outcome (local or forwarded).
    pub fn in_flight(&self) -> usize {
        self.waiting.len() + self.forwarding.len()
    }

    /// Requests waiting for an outcome (local or forwarded) whose waiter is `counted`: a walk of
    /// them all, for metrics now and then, not for every request.
    pub fn in_flight_where(&self, counted: impl Fn(&W) -> bool) -> usize {
        self.waiting.values().filter(|w| counted(w)).count()
            + self.forwarding.values().filter(|f| counted(&f.waiter)).count()
    }

    fn request_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Proposes `proposal` in `group`: here if this member leads, else forwarded to the leader.
    pub fn propose<S: StateMachine>(
        &mut self,
        node: &mut Node<S>,
        group: GroupId,
        proposal: Proposal,
        waiter: W,
        out: &mut EffectsOf<S, W>,
    ) {
        self.propose_hop(node, group, proposal, waiter, 0, out)
    }

    /// A linearizable read of `query` in `group`, answered once the read index is applied here.
    pub fn read<S: StateMachine>(
        &mut self,
        node: &mut Node<S>,
        group: GroupId,
        query: S::Query,
        waiter: W,
        out: &mut EffectsOf<S, W>,
    ) {
        let id = self.request_id();
        match node.read(group, id, query) {
            Ok(()) => {
                self.waiting.insert(id, waiter);
            }
            Err(error) => out.answers.push((waiter, Err(RequestError::Refused(error)))),
        }
    }

    fn propose_hop<S: StateMachine>(
        &mut self,
        node: &mut Node<S>,
        group: GroupId,
        proposal: Proposal,
        waiter: W,
        hops: u8,
        out: &mut EffectsOf<S, W>,
    ) {
        let id = self.request_id();
        let proposed = match &proposal {
            Proposal::Command(data) => {
                let proposed = node.propose(group, id, data.clone());
                if proposed.is_ok() {
                    out.proposed.push(data.clone());
                }
                proposed
            }
            Proposal::ConfChange { change, context } => node.propose_conf_change(group, id, *change, context),
        };
        match proposed {
            Ok(_) => {
                self.waiting.insert(id, waiter);
            }
            Err(RaftError::NotLeader { leader }) if leader != NO_NODE && leader != node.id() => {
                if hops >= FORWARD_HOPS_MAX {
                    out.answers.push((waiter, Err(RequestError::Refused(RaftError::NotLeader { leader }))));
                    return;
                }
                if self.forwarding.len() >= FORWARDING_MAX {
                    out.answers.push((waiter, Err(RequestError::Refused(RaftError::Busy("forwarded proposals")))));
                    return;
                }
                let frame = match &proposal {
                    Proposal::Command(data) => PeerFrame::Forward { group, request: id, data: data.clone() },
                    Proposal::ConfChange { change, context } => {
                        PeerFrame::ForwardConfChange { group, request: id, change: change.encode_with(context) }
                    }
                };
                out.frames.push((leader, frame));
                let deadline = self.ticks + FORWARD_TIMEOUT_TICKS;
                self.forwarding
                    .insert(id, Forwarding { group, to: leader, proposal, waiter, deadline, hops: hops + 1 });
            }
            Err(error) => out.answers.push((waiter, Err(RequestError::Refused(error)))),
        }
    }

    /// A forwarding frame from a peer: a follower's proposal to lead, or the leader's answer to
    /// ours. Other frames are not requests and are ignored.
    pub fn on_frame<S: StateMachine>(
        &mut self,
        node: &mut Node<S>,
        from: NodeId,
        frame: PeerFrame,
        out: &mut EffectsOf<S, W>,
    ) {
        match frame {
            PeerFrame::Forward { group, request, data } => {
                let id = self.request_id();
                // The proposal's outcome is the follower's business (it applies the entry too);
                // here nobody waits for it.
                let proposed = node.propose(group, id, data.clone());
                if proposed.is_ok() {
                    out.proposed.push(data);
                }
                reply_to_forward(node, from, group, request, proposed, out);
            }
            PeerFrame::ForwardConfChange { group, request, change } => {
                let id = self.request_id();
                let proposed = match ConfChange::decode(&change) {
                    Some(decoded) => node.propose_conf_change(group, id, decoded, ConfChange::context(&change)),
                    None => Err(RaftError::InvalidConfChange("undecodable forwarded membership change")),
                };
                reply_to_forward(node, from, group, request, proposed, out);
            }
            PeerFrame::ForwardReply { request, outcome } => {
                let Some(forwarding) = self.forwarding.remove(&request) else { return };
                match outcome {
                    ForwardOutcome::Accepted { index, term } => {
                        match node.track(forwarding.group, request, index, term) {
                            Ok(()) => {
                                self.waiting.insert(request, forwarding.waiter);
                            }
                            // Already applied here before the reply came: the outcome is unknown.
                            Err(_) => out.answers.push((forwarding.waiter, Err(RequestError::Timeout))),
                        }
                    }
                    ForwardOutcome::NotLeader { .. } => {
                        // Our view of the leader may have moved on meanwhile: try again from here.
                        // Safe: that member did not take the proposal.
                        self.propose_hop(
                            node,
                            forwarding.group,
                            forwarding.proposal,
                            forwarding.waiter,
                            forwarding.hops,
                            out,
                        )
                    }
                    ForwardOutcome::Busy => {
                        out.answers.push((forwarding.waiter, Err(RequestError::Refused(RaftError::Busy("proposals")))))
                    }
                    ForwardOutcome::Refused(kind) => {
                        let error = match kind {
                            RefusalKind::ConfChangePending => RaftError::ConfChangePending,
                            RefusalKind::InvalidConfChange => RaftError::InvalidConfChange("refused by the leader"),
                            RefusalKind::TransferInProgress => RaftError::TransferInProgress,
                            RefusalKind::LearnerNotInSync => RaftError::LearnerNotInSync,
                            RefusalKind::Other => RaftError::InvalidConfig("refused by the leader"),
                        };
                        out.answers.push((forwarding.waiter, Err(RequestError::Refused(error))))
                    }
                }
            }
            PeerFrame::Hello { .. }
            | PeerFrame::Messages(_)
            | PeerFrame::Attributes { .. }
            | PeerFrame::Membership(_)
            | PeerFrame::Removed
            | PeerFrame::Chunk { .. }
            | PeerFrame::FileChunk { .. }
            | PeerFrame::FileEnd { .. } => {}
        }
    }

    /// One tick went by (call alongside [`Node::tick`]): forwards past their deadline fail.
    pub fn tick<S: StateMachine>(&mut self, node: &mut Node<S>, out: &mut EffectsOf<S, W>) {
        self.ticks += 1;
        let now = self.ticks;
        let expired: Vec<RequestId> =
            self.forwarding.iter().filter(|(_, f)| f.deadline <= now).map(|(&id, _)| id).collect();
        for id in expired {
            let forwarding = self.forwarding.remove(&id).expect("listed above");
            self.unknown_outcome(node, forwarding, out);
        }
    }

    /// The node's outcomes from a poll: each goes to the request that waits for it.
    pub fn outcomes<R, Q>(&mut self, outcomes: Vec<Outcome<R, Q>>, out: &mut Effects<W, R, Q>) {
        for outcome in outcomes {
            if let Some(waiter) = self.waiting.remove(&outcome.id) {
                out.answers.push((waiter, outcome.result));
            }
        }
    }

    /// A proposal forwarded to a member that no longer leads (it died, or lost an election) may
    /// never be answered: tell the client now rather than at the timeout, so it retries against
    /// the new leader. Call after every poll.
    pub fn abandon_forwards_to_former_leaders<S: StateMachine>(
        &mut self,
        node: &mut Node<S>,
        out: &mut EffectsOf<S, W>,
    ) {
        if self.forwarding.is_empty() {
            return;
        }
        // Called after every poll with possibly thousands of forwards in flight: each group's
        // leader is looked up once (a status is a copy of the group's configuration).
        let mut leaders: BTreeMap<GroupId, Option<NodeId>> = BTreeMap::new();
        let abandoned: Vec<RequestId> = self
            .forwarding
            .iter()
            .filter(|(_, f)| {
                let leader = *leaders.entry(f.group).or_insert_with(|| node.status(f.group).map(|s| s.leader));
                leader.is_some_and(|leader| leader != f.to)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in abandoned {
            let forwarding = self.forwarding.remove(&id).expect("listed above");
            self.unknown_outcome(node, forwarding, out);
        }
    }

    /// A forward with no answer: the old leader may have replicated it, so its outcome is
    /// unknown, and it is never re-sent.
    fn unknown_outcome<S: StateMachine>(
        &mut self,
        node: &mut Node<S>,
        forwarding: Forwarding<W>,
        out: &mut EffectsOf<S, W>,
    ) {
        if self.plants.is(Plant::ReforwardUnknown) && forwarding.hops < FORWARD_HOPS_MAX {
            // The planted bug: retry on the client's behalf, as if nothing had been proposed.
            let Forwarding { group, proposal, waiter, hops, .. } = forwarding;
            self.propose_hop(node, group, proposal, waiter, hops, out);
            return;
        }
        out.answers.push((forwarding.waiter, Err(RequestError::Timeout)));
    }
}

fn reply_to_forward<S: StateMachine, W>(
    node: &Node<S>,
    from: NodeId,
    group: GroupId,
    request: u64,
    proposed: Result<u64, RaftError>,
    out: &mut EffectsOf<S, W>,
) {
    let outcome = match proposed {
        Ok(index) => {
            let term = node.status(group).map_or(0, |s| s.hard_state.term);
            ForwardOutcome::Accepted { index, term }
        }
        Err(RaftError::Busy(_)) => ForwardOutcome::Busy,
        Err(RaftError::NotLeader { leader }) => ForwardOutcome::NotLeader { leader },
        Err(RaftError::ConfChangePending) => ForwardOutcome::Refused(RefusalKind::ConfChangePending),
        Err(RaftError::InvalidConfChange(_)) => ForwardOutcome::Refused(RefusalKind::InvalidConfChange),
        Err(RaftError::TransferInProgress) => ForwardOutcome::Refused(RefusalKind::TransferInProgress),
        Err(RaftError::LearnerNotInSync) => ForwardOutcome::Refused(RefusalKind::LearnerNotInSync),
        Err(_) => ForwardOutcome::Refused(RefusalKind::Other),
    };
    out.frames.push((from, PeerFrame::ForwardReply { request, outcome }));
}

#[cfg(test)]
mod tests;
