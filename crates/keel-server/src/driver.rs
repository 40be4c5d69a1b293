//! The node driver: the loop that executes keel-node's output on real IO, on its own thread.
//!
//! Each turn: deliver missed ticks first (a leader's lease depends on it, see keel-raft's
//! `ReadMode::LeaseBased`), take the queued inputs (proposals, reads, peer frames), poll the
//! node, write its batch to the WAL with one fsync, and only then release the messages that
//! waited for it. Inputs that arrive during an fsync queue up and form the next batch: that is
//! the group commit.
//!
//! Requests and their forwarding to the leader are keel-host's [`Requests`], the same code the
//! simulator runs; the driver only carries out what it asks for.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_host::{Compactions, Effects, EffectsOf, Proposal, Requests, Retention};
use keel_node::{Answer, Node, RequestError, StateMachine};
use keel_raft::{ConfChange, GroupId, RaftError};
use keel_storage::{NodeStorage, StorageError};

use crate::transport::{Incoming, Outgoing};

/// Most inputs taken into one turn (a bound on batch size and on latency for the rest).
const INPUTS_PER_TURN_MAX: usize = 4_096;
/// Most polls in one turn before inputs and ticks get their turn again.
const POLLS_PER_TURN_MAX: usize = 8;
/// How often a write that found the disk full is tried again.
/// How often the proposals waiting here are counted for `etcd_server_proposals_pending` (a walk
/// of every request in flight).
const PENDING_COUNT_INTERVAL: Duration = Duration::from_millis(250);
const DISK_FULL_RETRY: Duration = Duration::from_millis(100);

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
    /// A membership change with its context for the machine (the member record it changes);
    /// answered once applied.
    ConfChange {
        group: GroupId,
        change: ConfChange,
        context: Bytes,
        reply: Reply<()>,
    },
    Peer(Incoming),
    /// A graceful shutdown: groups led here are handed to another voter first (as etcd does:
    /// no election timeout for the rest), then the run returns and the node with its stores is
    /// dropped, so the store file is closed cleanly (redb's next open then skips its repair walk
    /// over the whole file, which a kill -9 costs: about 1.3 s per GiB).
    Stop,
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
    /// Client proposals waiting for their outcome here, now and then (for metrics).
    fn on_pending_proposals(&mut self, _proposals: usize) {}
}

impl<S: StateMachine> Hook<S> for () {
    fn after_turn(&mut self, _: &mut Node<S>, _: Instant, _: &mut Vec<(GroupId, Bytes)>) {}
}

/// What the driver keeps to answer a request.
enum Waiter<S: StateMachine> {
    Propose(Reply<S::Response>),
    Read(Reply<S::QueryResult>),
    ConfChange(Reply<()>),
}

impl<S: StateMachine> Waiter<S> {
    /// Hands `result` to the client (a dropped reply receiver means the client gave up).
    fn answer(self, result: Result<Answer<S::Response, S::QueryResult>, RequestError>) {
        match (self, result) {
            (Waiter::Propose(reply), Ok(Answer::Applied(response))) => reply(Ok(response)),
            (Waiter::Read(reply), Ok(Answer::Read(result))) => reply(Ok(result)),
            (Waiter::ConfChange(reply), Ok(Answer::Membership)) => reply(Ok(())),
            (Waiter::Propose(reply), Err(error)) => reply(Err(error)),
            (Waiter::Read(reply), Err(error)) => reply(Err(error)),
            (Waiter::ConfChange(reply), Err(error)) => reply(Err(error)),
            (Waiter::Propose(reply), Ok(_)) => {
                reply(Err(RequestError::Refused(RaftError::InvalidConfChange("not a command"))))
            }
            (Waiter::Read(reply), Ok(_)) => reply(Err(RequestError::Dropped)),
            (Waiter::ConfChange(reply), Ok(_)) => reply(Err(RequestError::Dropped)),
        }
    }
}

/// How long a stopping leader waits for its hand-off (raft gives a transfer an election timeout).
const HAND_OFF_WAIT: Duration = Duration::from_secs(2);

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
    /// When the pending proposals are next counted for metrics.
    next_pending_count: Instant,
    /// The origin of the node's clock (see `Node::set_clock`).
    epoch: Instant,
    /// Requests waiting for their outcome, and proposals forwarded to the leader.
    requests: Requests<Waiter<S>>,
    /// What `requests` asked for and the driver has not carried out yet.
    effects: EffectsOf<S, Waiter<S>>,
    /// [`Input::Stop`] came: the run ends once no group is led here (leadership handed off) or
    /// at this deadline.
    stopping: Option<Instant>,
    /// `--unsafe-fault-injection` only: a slow disk on demand.
    faults: Option<Arc<crate::faults::InjectedFaults>>,
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
        let first_request = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64);
        let plants = node.plants();
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
            next_pending_count: Instant::now(),
            epoch: Instant::now(),
            requests: Requests::new(first_request, plants),
            effects: Effects::default(),
            stopping: None,
            faults: None,
        }
    }

    /// Lets `faults` slow this member's WAL writes (see [`crate::faults`]).
    pub fn with_injected_faults(mut self, faults: Arc<crate::faults::InjectedFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The node's clock is the time since the driver started (see `Node::set_clock`).
    fn set_clock(&mut self, now: Instant) {
        self.node.set_clock(now.saturating_duration_since(self.epoch).as_micros() as u64);
    }

    /// Keeps `retention` of the obsolete WAL segments and snapshot files (etcd's defaults
    /// otherwise).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Runs until every input sender is gone or [`Input::Stop`]. A storage error stops the node:
    /// what it could not make durable it must not acknowledge.
    pub fn run(mut self) -> Result<(), StorageError> {
        loop {
            // Awake for the next tick, or sooner when the leader detector falls due.
            let wake = match self.node.next_detection_at() {
                Some(at) => self.next_tick.min(self.epoch + Duration::from_micros(at)),
                None => self.next_tick,
            };
            let wait = wake.saturating_duration_since(Instant::now());
            let first = match self.inputs.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            // Time first: every tick that is due, before any input is looked at.
            let now = Instant::now();
            self.set_clock(now);
            if self.next_tick <= now {
                while self.next_tick <= now {
                    self.node.tick();
                    self.requests.tick(&mut self.node, &mut self.effects);
                    self.next_tick += self.tick;
                }
                self.carry_out();
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
            // After the inputs: a heartbeat that came in with them is heard before the silence
            // before it is judged.
            self.node.detect();
            self.turn()?;
            if let Some(deadline) = self.stopping {
                // Everything taken is carried out; dropping the node closes its stores cleanly.
                let leading = self.node.leads_any();
                if !leading || Instant::now() >= deadline {
                    if leading {
                        tracing::info!("stopping while leading (no other voter took over in time)");
                    }
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= self.next_pending_count {
                self.next_pending_count = now + PENDING_COUNT_INTERVAL;
                let pending =
                    self.requests.in_flight_where(|w| matches!(w, Waiter::Propose(_) | Waiter::ConfChange(_)));
                self.hook.on_pending_proposals(pending);
            }
            let mut proposals = Vec::new();
            self.hook.after_turn(&mut self.node, now, &mut proposals);
            if !proposals.is_empty() {
                for (group, data) in proposals {
                    // Nobody waits: the hook sees the effect when the command applies. Through
                    // `propose`, so a follower's proposals are forwarded to the leader.
                    let waiter = Waiter::Propose(Box::new(|_| {}));
                    self.requests.propose(&mut self.node, group, Proposal::Command(data), waiter, &mut self.effects);
                }
                self.carry_out();
                self.turn()?;
            }
        }
    }

    fn take(&mut self, input: Input<S, H>) {
        let (node, requests, effects) = (&mut self.node, &mut self.requests, &mut self.effects);
        match input {
            Input::Peer(Incoming::Raft(msg)) => node.step(msg),
            Input::Peer(Incoming::Frame { from, frame }) => requests.on_frame(node, from, frame, effects),
            Input::Peer(Incoming::PeerLost(peer)) => {
                tracing::info!(peer = %format!("{peer:x}"), "a peer's connection closed");
                node.report_peer_lost(peer)
            }
            Input::Propose { group, data, reply } => {
                requests.propose(node, group, Proposal::Command(data), Waiter::Propose(reply), effects)
            }
            Input::ConfChange { group, change, context, reply } => {
                let proposal = Proposal::ConfChange { change, context };
                requests.propose(node, group, proposal, Waiter::ConfChange(reply), effects)
            }
            Input::Read { group, query, reply } => requests.read(node, group, query, Waiter::Read(reply), effects),
            Input::Inspect(inspect) => inspect(node, &mut self.hook),
            Input::Wake => {}
            Input::Stop if self.stopping.is_none() => {
                let handed = self.node.hand_off_leadership();
                for (group, to) in &handed {
                    tracing::info!(group, to = %format!("{to:x}"), "stopping: handing leadership over");
                }
                // Nothing handed (a follower, or a leader alone): nothing to wait for.
                let wait = if handed.is_empty() { Duration::ZERO } else { HAND_OFF_WAIT };
                self.stopping = Some(Instant::now() + wait);
            }
            Input::Stop => {}
        }
        self.carry_out();
    }

    /// Sends the frames, answers the clients and tells the hook what this member proposed.
    fn carry_out(&mut self) {
        if self.effects.is_empty() {
            return;
        }
        let effects = std::mem::take(&mut self.effects);
        for (to, frame) in effects.frames {
            (self.send)(Outgoing::Frame { to, frame });
        }
        for (waiter, result) in effects.answers {
            waiter.answer(result);
        }
        let now = Instant::now();
        for data in &effects.proposed {
            self.hook.on_proposed(data, now);
        }
    }

    /// Persists `groups`. A full disk does not stop the member: the WAL reserves space before it
    /// writes, so it wrote nothing, and the same write is tried again until it fits. Meanwhile
    /// this member acknowledges nothing and the cluster carries on without it, as without a slow
    /// member; the NOSPACE alarm (raised while the disk still had room) is what keeps it from
    /// coming to this. Any other storage error stops the node: what it could not make durable it
    /// must not acknowledge.
    fn persist_waiting_for_space(&mut self, batch: &keel_node::WriteBatch) -> Result<(), StorageError> {
        let mut waiting_since: Option<Instant> = None;
        loop {
            match keel_host::persist(&mut self.storage, batch) {
                Ok(()) => {
                    if let Some(since) = waiting_since {
                        tracing::warn!(waited_ms = since.elapsed().as_millis() as u64, "the disk has room again");
                    }
                    return Ok(());
                }
                Err(error) if error.is_no_space() => {
                    if waiting_since.is_none() {
                        tracing::error!(%error, "disk full: this member waits for space (free some to resume)");
                        waiting_since = Some(Instant::now());
                    }
                    std::thread::sleep(DISK_FULL_RETRY);
                }
                Err(error) => return Err(error),
            }
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
        self.requests.outcomes(output.outcomes, &mut self.effects);
        self.requests.abandon_forwards_to_former_leaders(&mut self.node, &mut self.effects);
        self.carry_out();
        let Some(write) = output.write else { return Ok(false) };
        let started = Instant::now();
        // The node times its own writes from here (fail-slow detection), not from the poll.
        self.set_clock(started);
        self.persist_waiting_for_space(&write)?;
        if let Some(faults) = &self.faults {
            faults.after_write();
        }
        self.compactions.written(&write);
        let durable_at = Instant::now();
        if write.must_sync {
            self.hook.on_fsync(durable_at - started);
        }
        // The node times its own writes (fail-slow detection) on its clock.
        self.set_clock(durable_at);
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
