//! The etcd state machine (keel-mvcc on redb) as a raft group's [`StateMachine`].
//!
//! Durability: every command is applied in memory as raft hands it out, and each poll's worth of
//! commands is committed to redb in one transaction together with the applied raft index
//! ([`StateMachine::flush`]). That commit does not wait for the disk: the raft log is already
//! durable and holds every applied entry, so the store needs its own fsync only now and then
//! ([`DURABLE_COMMIT_INTERVAL`]), to bound replay. On restart the store's durable applied index
//! is the group's applied index, so raft replays only the log tail after it; if a snapshot has
//! replaced the log beyond it, the store is restored from that snapshot first (see
//! `keel_server::server`).

use bytes::Bytes;
use keel_mvcc::{ApplyOutcome, Backend, Command, MvccError, RangeRequest, RangeResponse, Response, Store};
use keel_node::StateMachine;
use keel_raft::Index;

/// Why a command produced no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The client's error (etcd's message, e.g. "mvcc: required revision has been compacted").
    Client(MvccError),
    /// The entry does not hold a command this version understands.
    Undecodable(String),
    /// The entry was already applied before a restart (its effect is in the store).
    AlreadyApplied,
    /// The backend failed; the store refuses everything until it is reopened.
    Fatal(String),
}

pub type CommandResult = Result<Response, ApplyError>;

/// How often the store waits for the disk (etcd's backend commits every 100 ms too).
pub const DURABLE_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100_000);

/// A change to a lease's clock, as applied: the server's lease clock follows these on every
/// member, so whichever member leads next already knows each lease's remaining time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Granted, or renewed by a keep-alive (a checkpoint at the full TTL): expires `ttl` seconds
    /// from when this member applied it.
    Started {
        id: i64,
        ttl_seconds: i64,
    },
    Revoked {
        id: i64,
    },
}

pub struct MvccMachine<B: Backend> {
    store: Store<B>,
    /// Commands applied by this process (not skipped as already applied).
    applied_commands: u64,
    /// Entries raft handed to this machine, commands or not, skipped or not: after a restart this
    /// shows how much of the log was replayed.
    entries_handed: u64,
    fatal: Option<String>,
    lease_changes: Vec<LeaseChange>,
    durable_interval: std::time::Duration,
    last_durable_commit: std::time::Instant,
}

impl<B: Backend> MvccMachine<B> {
    pub fn new(store: Store<B>) -> MvccMachine<B> {
        MvccMachine::with_durable_interval(store, DURABLE_COMMIT_INTERVAL)
    }

    /// `interval` zero: every flush waits for the disk.
    pub fn with_durable_interval(store: Store<B>, interval: std::time::Duration) -> MvccMachine<B> {
        MvccMachine {
            store,
            applied_commands: 0,
            entries_handed: 0,
            fatal: None,
            lease_changes: Vec::new(),
            durable_interval: interval,
            last_durable_commit: std::time::Instant::now(),
        }
    }

    pub fn store(&self) -> &Store<B> {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store<B> {
        &mut self.store
    }

    /// Lease grants, renewals and revokes applied since the last call.
    pub fn take_lease_changes(&mut self) -> Vec<LeaseChange> {
        std::mem::take(&mut self.lease_changes)
    }

    pub fn applied_commands(&self) -> u64 {
        self.applied_commands
    }

    pub fn entries_handed(&self) -> u64 {
        self.entries_handed
    }

    /// The backend failed: nothing more can be applied until the node restarts.
    pub fn fatal_error(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    fn fail(&mut self, error: impl ToString) -> ApplyError {
        let text = error.to_string();
        tracing::error!(error = %text, "state machine backend failed");
        self.fatal.get_or_insert(text.clone());
        ApplyError::Fatal(text)
    }
}

impl<B: Backend> StateMachine for MvccMachine<B> {
    type Response = CommandResult;
    type Query = RangeRequest;
    type QueryResult = Result<RangeResponse, MvccError>;

    fn apply(&mut self, index: Index, data: &Bytes) -> CommandResult {
        self.entries_handed += 1;
        let command = match Command::decode(data) {
            Ok(command) => command,
            Err(error) => {
                // Still consumes the index, so every replica stays at the same applied index.
                if let Err(error) = self.store.advance_applied(index) {
                    return Err(self.fail(error));
                }
                return Err(ApplyError::Undecodable(error.to_string()));
            }
        };
        match self.store.apply(index, &command) {
            Ok(ApplyOutcome::Applied(result)) => {
                self.applied_commands += 1;
                if result.is_ok() {
                    match command {
                        Command::LeaseGrant { id, ttl_seconds } => {
                            self.lease_changes.push(LeaseChange::Started { id, ttl_seconds })
                        }
                        // A checkpoint of an unknown lease is a no-op (as in etcd).
                        Command::LeaseCheckpoint { id, remaining_ttl_seconds }
                            if self.store.lease_ttl(id).is_some() =>
                        {
                            self.lease_changes.push(LeaseChange::Started { id, ttl_seconds: remaining_ttl_seconds })
                        }
                        Command::LeaseRevoke { id } => self.lease_changes.push(LeaseChange::Revoked { id }),
                        _ => {}
                    }
                }
                result.map_err(ApplyError::Client)
            }
            Ok(ApplyOutcome::Skipped) => Err(ApplyError::AlreadyApplied),
            Err(error) => Err(self.fail(error)),
        }
    }

    fn apply_empty(&mut self, index: Index) {
        self.entries_handed += 1;
        if index > self.store.applied_index() {
            if let Err(error) = self.store.advance_applied(index) {
                self.fail(error);
            }
        }
    }

    fn flush(&mut self) {
        let now = std::time::Instant::now();
        let result = if now.duration_since(self.last_durable_commit) >= self.durable_interval {
            self.last_durable_commit = now;
            self.store.commit()
        } else {
            self.store.commit_buffered()
        };
        if let Err(error) = result {
            self.fail(error);
        }
    }

    fn query(&self, query: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range(query)
    }

    fn snapshot(&self) -> Result<Bytes, String> {
        self.store.snapshot().map(Bytes::from).map_err(|e| e.to_string())
    }

    fn restore(&mut self, data: &Bytes) {
        if let Err(error) = self.store.restore(data) {
            self.fail(error);
        }
    }
}
