//! The node driver: the loop that executes keel-node's output on real IO, on its own thread.
//!
//! Each turn: deliver missed ticks first (a leader's lease depends on it, see keel-raft's
//! `ReadMode::LeaseBased`), take the queued inputs (proposals, reads, peer messages), poll the
//! node, write its batch to the WAL with one fsync, and only then release the messages that
//! waited for it. Inputs that arrive during an fsync queue up and form the next batch: that is
//! the group commit.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_node::{Answer, GroupWrite, Node, RequestError, RequestId, StateMachine};
use keel_raft::{GroupId, Message, RaftError};
use keel_storage::{GroupPersist, NodeStorage, StorageError};

/// Most inputs taken into one turn (a bound on batch size and on latency for the rest).
const INPUTS_PER_TURN_MAX: usize = 4_096;
/// Most polls in one turn before inputs and ticks get their turn again.
const POLLS_PER_TURN_MAX: usize = 8;

pub enum Input<S: StateMachine> {
    Propose { group: GroupId, data: Bytes, reply: Sender<Result<S::Response, RequestError>> },
    Read { group: GroupId, query: S::Query, reply: Sender<Result<S::QueryResult, RequestError>> },
    Peer(Message),
}

enum Waiter<S: StateMachine> {
    Propose(Sender<Result<S::Response, RequestError>>),
    Read(Sender<Result<S::QueryResult, RequestError>>),
}

/// Writes one batch's groups to the WAL and makes them durable.
pub fn persist(storage: &mut NodeStorage, writes: &[GroupWrite]) -> Result<(), StorageError> {
    let parts: Vec<GroupPersist> = writes
        .iter()
        .map(|w| GroupPersist {
            group: w.group,
            hard_state: w.hard_state,
            installed_snapshot: w.installed_snapshot.as_ref(),
            own_snapshot: w.own_snapshot.as_ref(),
            entries: &w.entries,
        })
        .collect();
    storage.write(&parts)?;
    storage.sync()
}

pub struct Driver<S: StateMachine> {
    node: Node<S>,
    storage: NodeStorage,
    inputs: Receiver<Input<S>>,
    send: Box<dyn FnMut(Message) + Send>,
    tick: Duration,
    next_tick: Instant,
    next_request: RequestId,
    waiting: BTreeMap<RequestId, Waiter<S>>,
}

impl<S: StateMachine> Driver<S> {
    /// `send` delivers a raft message to its peer (the transport; it must not block).
    pub fn new(
        node: Node<S>,
        storage: NodeStorage,
        inputs: Receiver<Input<S>>,
        send: Box<dyn FnMut(Message) + Send>,
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
            inputs,
            send,
            tick,
            next_tick: Instant::now() + tick,
            next_request,
            waiting: BTreeMap::new(),
        }
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
            while self.next_tick <= now {
                self.node.tick();
                self.next_tick += self.tick;
            }
            if let Some(input) = first {
                self.take(input);
                for input in self.inputs.try_iter().take(INPUTS_PER_TURN_MAX - 1).collect::<Vec<_>>() {
                    self.take(input);
                }
            }
            self.turn()?;
        }
    }

    fn take(&mut self, input: Input<S>) {
        let id = self.next_request;
        self.next_request += 1;
        match input {
            Input::Peer(msg) => self.node.step(msg),
            Input::Propose { group, data, reply } => match self.node.propose(group, id, data) {
                Ok(_) => {
                    self.waiting.insert(id, Waiter::Propose(reply));
                }
                Err(error) => {
                    let _ = reply.send(Err(RequestError::Refused(error)));
                }
            },
            Input::Read { group, query, reply } => match self.node.read(group, id, query) {
                Ok(()) => {
                    self.waiting.insert(id, Waiter::Read(reply));
                }
                Err(error) => {
                    let _ = reply.send(Err(RequestError::Refused(error)));
                }
            },
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
            (self.send)(msg);
        }
        for outcome in output.outcomes {
            let Some(waiter) = self.waiting.remove(&outcome.id) else { continue };
            // A closed reply channel means the client gave up; nothing to do.
            match (waiter, outcome.result) {
                (Waiter::Propose(reply), Ok(Answer::Applied(response))) => drop(reply.send(Ok(response))),
                (Waiter::Read(reply), Ok(Answer::Read(result))) => drop(reply.send(Ok(result))),
                (Waiter::Propose(reply), Err(error)) => drop(reply.send(Err(error))),
                (Waiter::Read(reply), Err(error)) => drop(reply.send(Err(error))),
                (Waiter::Propose(reply), Ok(_)) => {
                    drop(reply.send(Err(RequestError::Refused(RaftError::InvalidConfChange("not a command")))))
                }
                (Waiter::Read(reply), Ok(_)) => drop(reply.send(Err(RequestError::Dropped))),
            }
        }
        let Some(write) = output.write else { return Ok(false) };
        persist(&mut self.storage, &write.groups)?;
        for msg in self.node.on_write_durable(write.id) {
            (self.send)(msg);
        }
        Ok(true)
    }
}
