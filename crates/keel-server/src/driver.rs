//! The node driver: the loop that executes keel-node's output on real IO, on its own thread.
//!
//! Each turn: deliver missed ticks first (a leader's lease depends on it, see keel-raft's
//! `ReadMode::LeaseBased`), take the queued inputs (proposals, reads, peer frames), poll the
//! node, write its batch to the WAL with one fsync, and only then release the messages that
//! waited for it. Inputs that arrive during an fsync queue up and form the next batch: that is
//! the group commit.
//!
//! A proposal that reaches a follower is forwarded to the leader ([`PeerFrame::Forward`]). The
//! leader answers with the log slot it took, and the follower then waits for its *own* apply of
//! that slot ([`Node::track`]): every replica computes the same response, so nothing but the slot
//! crosses the wire, and an entry that loses its slot to another leader's is reported dropped.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_codec::peer::{ForwardOutcome, PeerFrame, RefusalKind};
use keel_host::{Compactions, Retention};
use keel_node::{Answer, Node, RequestError, RequestId, StateMachine};
use keel_raft::{ConfChange, GroupId, NodeId, RaftError, NO_NODE};
use keel_storage::{NodeStorage, StorageError};

use crate::transport::{Incoming, Outgoing};

/// Most inputs taken into one turn (a bound on batch size and on latency for the rest).
const INPUTS_PER_TURN_MAX: usize = 4_096;
/// Most polls in one turn before inputs and ticks get their turn again.
const POLLS_PER_TURN_MAX: usize = 8;
/// A forwarded proposal whose leader turned out not to lead is re-forwarded this many times.
const FORWARD_HOPS_MAX: u8 = 3;
/// Ticks a forwarded proposal waits for the leader's reply (as keel-node's request timeout).
const FORWARD_TIMEOUT_TICKS: u32 = 50;

/// Where the answer to a request goes: called exactly once, on the driver thread (so it must
/// not block: send on a channel).
pub type Reply<T> = Box<dyn FnOnce(Result<T, RequestError>) + Send>;

/// A [`Reply`] that sends the answer on a std channel (for hosts and tests without async).
pub fn reply_to<T: Send + 'static>(sender: std::sync::mpsc::Sender<Result<T, RequestError>>) -> Reply<T> {
    Box::new(move |result| drop(sender.send(result)))
}

/// Work for the driver thread that needs the node and the host's own state.
pub type Inspect<S, H> = Box<dyn FnOnce(&mut Node<S>, &mut H) + Send>;

/// Peer traffic waiting for the driver, kept apart from client requests: a heartbeat or vote
/// must never queue behind thousands of client requests, or a busy member would miss election
/// timeouts. The driver drains it at the start of every turn, before any client input.
pub struct PeerInbox {
    queue: std::sync::Mutex<std::collections::VecDeque<Incoming>>,
}

/// Messages the inbox holds before it drops new ones (raft retransmits what matters).
const PEER_INBOX_MAX: usize = 65_536;

impl Default for PeerInbox {
    fn default() -> Self {
        PeerInbox { queue: std::sync::Mutex::new(std::collections::VecDeque::new()) }
    }
}

impl PeerInbox {
    /// Queues `incoming`; returns whether the inbox was empty (the caller then wakes the driver
    /// with [`Input::Wake`]).
    pub fn push(&self, incoming: Incoming) -> bool {
        let mut queue = self.queue.lock().expect("peer inbox lock");
        let was_empty = queue.is_empty();
        if queue.len() < PEER_INBOX_MAX {
            queue.push_back(incoming);
        }
        was_empty
    }

    fn take(&self) -> std::collections::VecDeque<Incoming> {
        std::mem::take(&mut *self.queue.lock().expect("peer inbox lock"))
    }
}

pub enum Input<S: StateMachine, H = ()> {
    Propose {
        group: GroupId,
        data: Bytes,
        reply: Reply<S::Response>,
    },
    Read {
        group: GroupId,
        query: S::Query,
        reply: Reply<S::QueryResult>,
    },
    /// A membership change; answered once applied.
    ConfChange {
        group: GroupId,
        change: ConfChange,
        reply: Reply<()>,
    },
    Peer(Incoming),
    /// Runs on the driver thread between polls: status, serializable reads, watch registration.
    Inspect(Inspect<S, H>),
    /// The peer inbox has something.
    Wake,
}

/// The host's part of each turn, run on the driver thread after the node's writes are durable.
pub trait Hook<S: StateMachine>: Send {
    /// Sees the node after a turn (to publish watch events, track leases, update metrics) and
    /// may queue commands of its own (a lease's revoke) in `propose`; nobody waits for them.
    fn after_turn(&mut self, node: &mut Node<S>, now: Instant, propose: &mut Vec<(GroupId, Bytes)>);
    /// The WAL's latest fsync took `took` (for metrics).
    fn on_fsync(&mut self, _took: Duration) {}
    /// Compaction removed obsolete WAL segments or snapshot files.
    fn on_compacted(&mut self, _removed: keel_host::Removed) {}
    /// This member's raft log took a command it proposed as leader (its own or a forwarded one).
    fn on_proposed(&mut self, _data: &Bytes, _now: Instant) {}
}

impl<S: StateMachine> Hook<S> for () {
    fn after_turn(&mut self, _: &mut Node<S>, _: Instant, _: &mut Vec<(GroupId, Bytes)>) {}
}

enum Waiter<S: StateMachine> {
    Propose(Reply<S::Response>),
    Read(Reply<S::QueryResult>),
    ConfChange(Reply<()>),
}

/// What a forwarded proposal proposes.
enum Proposal {
    Command(Bytes),
    ConfChange(ConfChange),
}

/// A proposal sent to the leader, waiting for the slot it took.
struct Forwarding<S: StateMachine> {
    group: GroupId,
    /// The member it was sent to.
    to: NodeId,
    proposal: Proposal,
    /// A `Propose` or `ConfChange` waiter.
    waiter: Waiter<S>,
    deadline: Instant,
    hops: u8,
}

impl<S: StateMachine> Waiter<S> {
    fn fail(self, error: RequestError) {
        match self {
            Waiter::Propose(reply) => reply(Err(error)),
            Waiter::Read(reply) => reply(Err(error)),
            Waiter::ConfChange(reply) => reply(Err(error)),
        }
    }
}

pub struct Driver<S: StateMachine, H: Hook<S> = ()> {
    node: Node<S>,
    storage: NodeStorage,
    compactions: Compactions,
    retention: Retention,
    inputs: Receiver<Input<S, H>>,
    inbox: Arc<PeerInbox>,
    send: Box<dyn FnMut(Outgoing) + Send>,
    hook: H,
    tick: Duration,
    next_tick: Instant,
    next_request: RequestId,
    waiting: BTreeMap<RequestId, Waiter<S>>,
    forwarding: BTreeMap<RequestId, Forwarding<S>>,
}

impl<S: StateMachine, H: Hook<S>> Driver<S, H> {
    /// `send` delivers a message or frame to its peer (the transport; it must not block).
    pub fn new(
        node: Node<S>,
        storage: NodeStorage,
        inputs: Receiver<Input<S, H>>,
        inbox: Arc<PeerInbox>,
        send: Box<dyn FnMut(Outgoing) + Send>,
        hook: H,
        tick: Duration,
    ) -> Self {
        // Request ids double as ReadIndex ids, which a leader echoes back: starting from the wall
        // clock keeps them unique across restarts, so a response meant for a read before a
        // restart can never be taken for a new one.
        let next_request = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64);
        Driver {
            node,
            storage,
            compactions: Compactions::default(),
            retention: Retention::ETCD,
            inputs,
            inbox,
            send,
            hook,
            tick,
            next_tick: Instant::now() + tick,
            next_request,
            waiting: BTreeMap::new(),
            forwarding: BTreeMap::new(),
        }
    }

    /// Keeps `retention` of the obsolete WAL segments and snapshot files (etcd's defaults
    /// otherwise).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Runs until every input sender is gone. A storage error stops the node: what it could
    /// not make durable it must not acknowledge.
    pub fn run(mut self) -> Result<(), StorageError> {
        loop {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            let first = match self.inputs.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            // Time first: every tick that is due, before any input is looked at.
            let now = Instant::now();
            if self.next_tick <= now {
                while self.next_tick <= now {
                    self.node.tick();
                    self.next_tick += self.tick;
                }
                self.expire_forwards(now);
            }
            let mut inputs = Vec::new();
            if let Some(input) = first {
                inputs.push(input);
                inputs.extend(self.inputs.try_iter().take(INPUTS_PER_TURN_MAX - 1));
            }
            // Peers before clients. The inbox is emptied only after every queued `Wake` is
            // consumed: a message pushed after this point finds it empty and sends a fresh
            // `Wake`, so none can sit here unseen until the next tick.
            for incoming in self.inbox.take() {
                self.take(Input::Peer(incoming));
            }
            for input in inputs {
                self.take(input);
            }
            self.turn()?;
            self.abandon_forwards_to_former_leaders();
            let mut proposals = Vec::new();
            self.hook.after_turn(&mut self.node, Instant::now(), &mut proposals);
            if !proposals.is_empty() {
                for (group, data) in proposals {
                    // Nobody waits: the hook sees the effect when the command applies. Through
                    // `propose`, so a follower's proposals are forwarded to the leader.
                    self.propose(group, Proposal::Command(data), Waiter::Propose(Box::new(|_| {})), 0);
                }
                self.turn()?;
            }
        }
    }

    fn request_id(&mut self) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    fn take(&mut self, input: Input<S, H>) {
        match input {
            Input::Peer(Incoming::Raft(msg)) => self.node.step(msg),
            Input::Peer(Incoming::Frame { from, frame }) => self.on_frame(from, frame),
            Input::Peer(Incoming::PeerLost(peer)) => {
                tracing::info!(peer = %format!("{peer:x}"), "a peer's connection closed");
                self.node.report_peer_lost(peer)
            }
            Input::Propose { group, data, reply } => {
                self.propose(group, Proposal::Command(data), Waiter::Propose(reply), 0)
            }
            Input::ConfChange { group, change, reply } => {
                self.propose(group, Proposal::ConfChange(change), Waiter::ConfChange(reply), 0)
            }
            Input::Read { group, query, reply } => {
                let id = self.request_id();
                match self.node.read(group, id, query) {
                    Ok(()) => {
                        self.waiting.insert(id, Waiter::Read(reply));
                    }
                    Err(error) => reply(Err(RequestError::Refused(error))),
                }
            }
            Input::Inspect(inspect) => inspect(&mut self.node, &mut self.hook),
            Input::Wake => {}
        }
    }

    fn propose(&mut self, group: GroupId, proposal: Proposal, waiter: Waiter<S>, hops: u8) {
        let id = self.request_id();
        let proposed = match &proposal {
            Proposal::Command(data) => {
                let proposed = self.node.propose(group, id, data.clone());
                if proposed.is_ok() {
                    self.hook.on_proposed(data, Instant::now());
                }
                proposed
            }
            Proposal::ConfChange(change) => self.node.propose_conf_change(group, id, *change),
        };
        match proposed {
            Ok(_) => {
                self.waiting.insert(id, waiter);
            }
            Err(RaftError::NotLeader { leader }) if leader != NO_NODE && leader != self.node.id() => {
                if hops >= FORWARD_HOPS_MAX {
                    waiter.fail(RequestError::Refused(RaftError::NotLeader { leader }));
                    return;
                }
                let frame = match &proposal {
                    Proposal::Command(data) => PeerFrame::Forward { group, request: id, data: data.clone() },
                    Proposal::ConfChange(change) => {
                        PeerFrame::ForwardConfChange { group, request: id, change: change.encode() }
                    }
                };
                (self.send)(Outgoing::Frame { to: leader, frame });
                let deadline = Instant::now() + self.tick * FORWARD_TIMEOUT_TICKS;
                self.forwarding
                    .insert(id, Forwarding { group, to: leader, proposal, waiter, deadline, hops: hops + 1 });
            }
            Err(error) => waiter.fail(RequestError::Refused(error)),
        }
    }

    fn on_frame(&mut self, from: NodeId, frame: PeerFrame) {
        match frame {
            PeerFrame::Forward { group, request, data } => {
                let id = self.request_id();
                // The proposal's outcome is the follower's business (it applies the entry too);
                // here nobody waits for it.
                let proposed = self.node.propose(group, id, data.clone());
                if proposed.is_ok() {
                    self.hook.on_proposed(&data, Instant::now());
                }
                self.reply_to_forward(from, group, request, proposed);
            }
            PeerFrame::ForwardConfChange { group, request, change } => {
                let id = self.request_id();
                let proposed = match ConfChange::decode(&change) {
                    Some(change) => self.node.propose_conf_change(group, id, change),
                    None => Err(RaftError::InvalidConfChange("undecodable forwarded membership change")),
                };
                self.reply_to_forward(from, group, request, proposed);
            }
            PeerFrame::ForwardReply { request, outcome } => {
                let Some(forwarding) = self.forwarding.remove(&request) else { return };
                match outcome {
                    ForwardOutcome::Accepted { index, term } => {
                        match self.node.track(forwarding.group, request, index, term) {
                            Ok(()) => {
                                self.waiting.insert(request, forwarding.waiter);
                            }
                            // Already applied here before the reply came: the outcome is unknown.
                            Err(_) => forwarding.waiter.fail(RequestError::Timeout),
                        }
                    }
                    ForwardOutcome::NotLeader { .. } => {
                        // Our view of the leader may have moved on meanwhile: try again from here.
                        self.propose(forwarding.group, forwarding.proposal, forwarding.waiter, forwarding.hops)
                    }
                    ForwardOutcome::Busy => forwarding.waiter.fail(RequestError::Refused(RaftError::Busy("proposals"))),
                    ForwardOutcome::Refused(kind) => forwarding.waiter.fail(RequestError::Refused(match kind {
                        RefusalKind::ConfChangePending => RaftError::ConfChangePending,
                        RefusalKind::InvalidConfChange => RaftError::InvalidConfChange("refused by the leader"),
                        RefusalKind::TransferInProgress => RaftError::TransferInProgress,
                        RefusalKind::Other => RaftError::InvalidConfig("refused by the leader"),
                    })),
                }
            }
            PeerFrame::Hello { .. }
            | PeerFrame::Messages(_)
            | PeerFrame::Attributes { .. }
            | PeerFrame::Chunk { .. }
            | PeerFrame::FileChunk { .. }
            | PeerFrame::FileEnd { .. } => {}
        }
    }

    fn reply_to_forward(&mut self, from: NodeId, group: GroupId, request: u64, proposed: Result<u64, RaftError>) {
        let outcome = match proposed {
            Ok(index) => {
                let term = self.node.status(group).map_or(0, |s| s.hard_state.term);
                ForwardOutcome::Accepted { index, term }
            }
            Err(RaftError::Busy(_)) => ForwardOutcome::Busy,
            Err(RaftError::NotLeader { leader }) => ForwardOutcome::NotLeader { leader },
            Err(RaftError::ConfChangePending) => ForwardOutcome::Refused(RefusalKind::ConfChangePending),
            Err(RaftError::InvalidConfChange(_)) => ForwardOutcome::Refused(RefusalKind::InvalidConfChange),
            Err(RaftError::TransferInProgress) => ForwardOutcome::Refused(RefusalKind::TransferInProgress),
            Err(_) => ForwardOutcome::Refused(RefusalKind::Other),
        };
        (self.send)(Outgoing::Frame { to: from, frame: PeerFrame::ForwardReply { request, outcome } });
    }

    /// A proposal forwarded to a member that no longer leads (it died, or lost an election) may
    /// never be answered: tell the client now rather than at the timeout, so it retries against
    /// the new leader. Its outcome is unknown (the old leader may have replicated it), so it is
    /// never re-sent on the client's behalf.
    fn abandon_forwards_to_former_leaders(&mut self) {
        if self.forwarding.is_empty() {
            return;
        }
        let node = &self.node;
        let abandoned: Vec<RequestId> = self
            .forwarding
            .iter()
            .filter(|(_, f)| node.status(f.group).is_some_and(|s| s.leader != f.to))
            .map(|(&id, _)| id)
            .collect();
        for id in abandoned {
            let forwarding = self.forwarding.remove(&id).expect("listed above");
            forwarding.waiter.fail(RequestError::Timeout);
        }
    }

    fn expire_forwards(&mut self, now: Instant) {
        let expired: Vec<RequestId> =
            self.forwarding.iter().filter(|(_, f)| f.deadline <= now).map(|(&id, _)| id).collect();
        for id in expired {
            let forwarding = self.forwarding.remove(&id).expect("listed above");
            forwarding.waiter.fail(RequestError::Timeout);
        }
    }

    /// Polls until the node has nothing more to write: a durable write lets raft hand out more
    /// (commits, applies), which must not wait for the next input or tick.
    fn turn(&mut self) -> Result<(), StorageError> {
        for _ in 0..POLLS_PER_TURN_MAX {
            if !self.poll_once()? {
                break;
            }
        }
        Ok(())
    }

    /// One poll; returns whether it wrote something.
    fn poll_once(&mut self) -> Result<bool, StorageError> {
        let output = self.node.poll();
        for msg in output.messages {
            (self.send)(Outgoing::Raft(msg));
        }
        for outcome in output.outcomes {
            let Some(waiter) = self.waiting.remove(&outcome.id) else { continue };
            // A dropped reply receiver means the client gave up; nothing to do.
            match (waiter, outcome.result) {
                (Waiter::Propose(reply), Ok(Answer::Applied(response))) => reply(Ok(response)),
                (Waiter::Read(reply), Ok(Answer::Read(result))) => reply(Ok(result)),
                (Waiter::Propose(reply), Err(error)) => reply(Err(error)),
                (Waiter::Read(reply), Err(error)) => reply(Err(error)),
                (Waiter::Propose(reply), Ok(_)) => {
                    reply(Err(RequestError::Refused(RaftError::InvalidConfChange("not a command"))))
                }
                (Waiter::Read(reply), Ok(_)) => reply(Err(RequestError::Dropped)),
                (Waiter::ConfChange(reply), Ok(Answer::Membership)) => reply(Ok(())),
                (Waiter::ConfChange(reply), Ok(_)) => reply(Err(RequestError::Dropped)),
                (Waiter::ConfChange(reply), Err(error)) => reply(Err(error)),
            }
        }
        let Some(write) = output.write else { return Ok(false) };
        let started = Instant::now();
        keel_host::persist(&mut self.storage, &write.groups)?;
        self.compactions.written(&write);
        self.hook.on_fsync(started.elapsed());
        for msg in self.node.on_write_durable(write.id) {
            (self.send)(Outgoing::Raft(msg));
        }
        // After the release: removing files is not on the acknowledgement's path.
        let removed = self.compactions.durable(&mut self.storage, self.retention)?;
        if removed != keel_host::Removed::default() {
            self.hook.on_compacted(removed);
        }
        Ok(true)
    }
}
