//! etcd's gRPC services over the driver: each handler turns a request into a command to
//! propose, a read, or an inspection on the driver thread, and maps the answer back to etcd's
//! wire types and errors (see [`crate::status`]).

pub mod cluster;
pub mod concurrency;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keel_api::etcdserverpb::ResponseHeader;
use keel_api::tonic::Status;
use keel_mvcc::{Command, RangeRequest, RangeResponse, Response};
use keel_node::Node;
use keel_raft::{ConfChange, GroupId};
use tokio::sync::oneshot;

use crate::driver::Input;
use crate::hook::{Machine, ServerHook};
use crate::machine::{Applied, MemberCommand};
use crate::metrics::Metrics;
use crate::status;
use crate::watch_hub::WatchHub;

pub type Inputs = SyncSender<Input<Machine, ServerHook>>;

/// Whether `command` may grow the database: refused while the NOSPACE alarm is raised (reads,
/// deletes, revokes and compaction, which free space, still go through, as in etcd).
fn grows(command: &Command) -> bool {
    match command {
        Command::Put(_) | Command::LeaseGrant { .. } => true,
        Command::Txn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op, keel_mvcc::RequestOp::Put(_) | keel_mvcc::RequestOp::Txn(_))),
        Command::DeleteRange(_) | Command::Compact { .. } | Command::LeaseRevoke { .. } => false,
        Command::LeaseCheckpoint { .. } => false,
    }
}

/// What every service shares: the way into the driver, the member's identity and limits.
pub struct Shared {
    pub inputs: Inputs,
    pub group: GroupId,
    pub cluster_id: u64,
    pub member_id: u64,
    /// `--initial-cluster-token`: new members' ids derive from it.
    pub token: String,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Leases shorter than this are granted this TTL (etcd: 1.5 election timeouts, rounded up).
    pub min_lease_ttl: i64,
    pub hub: Arc<Mutex<WatchHub>>,
    pub metrics: Arc<Metrics>,
    /// Snapshot RPC streams running (each pins a read view: redb reuses no page freed after it).
    pub snapshot_streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl Shared {
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.metrics.term(),
        }
    }

    fn submit(&self, input: Input<Machine, ServerHook>) -> Result<(), Status> {
        match self.inputs.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(status::too_many_requests()),
            Err(TrySendError::Disconnected(_)) => Err(status::stopped()),
        }
    }

    /// Replicates `command` and returns its applied response. Refused whole, before anything is
    /// proposed, if it is larger than `--max-request-bytes`.
    pub async fn propose(&self, command: &Command) -> Result<Response, Status> {
        if self.metrics.nospace_alarm.load(std::sync::atomic::Ordering::Relaxed) == 1 && grows(command) {
            return Err(status::no_space());
        }
        match self.propose_bytes(Bytes::from(command.encode())).await? {
            Applied::Kv(response) => Ok(response),
            Applied::Members => Err(Status::internal("etcdserver: a command was applied as a member record")),
        }
    }

    /// Replicates a change to the member records.
    pub async fn propose_members(&self, command: &MemberCommand) -> Result<(), Status> {
        self.propose_bytes(Bytes::from(command.encode())).await.map(drop)
    }

    async fn propose_bytes(&self, data: Bytes) -> Result<Applied, Status> {
        if data.len() > self.max_request_bytes {
            return Err(status::too_large());
        }
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |result| drop(tx.send(result)));
        self.submit(Input::Propose { group: self.group, data, reply })?;
        match rx.await {
            Ok(Ok(Ok(applied))) => Ok(applied),
            Ok(Ok(Err(error))) => Err(status::from_apply(&error)),
            Ok(Err(error)) => Err(status::from_request(&error)),
            Err(_) => Err(status::stopped()),
        }
    }

    /// Replicates a raft membership change and the member-record change that goes with it, in
    /// one entry; returns once it is applied here.
    pub async fn propose_conf_change(&self, change: ConfChange, record: &MemberCommand) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |result| drop(tx.send(result)));
        let context = Bytes::from(record.encode());
        self.submit(Input::ConfChange { group: self.group, change, context, reply })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(status::from_request(&error)),
            Err(_) => Err(status::stopped()),
        }
    }

    /// A linearizable read (ReadIndex; reads queued together share one leadership check).
    pub async fn read(&self, query: RangeRequest) -> Result<RangeResponse, Status> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |result| drop(tx.send(result)));
        self.submit(Input::Read { group: self.group, query, reply })?;
        match rx.await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(error))) => Err(status::from_mvcc(&error)),
            Ok(Err(error)) => Err(status::from_request(&error)),
            Err(_) => Err(status::stopped()),
        }
    }

    /// Runs `f` on the driver thread against this member's current state (not linearizable).
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node<Machine>, &mut ServerHook) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.submit(Input::Inspect(Box::new(move |node, hook| drop(tx.send(f(node, hook))))))?;
        rx.await.map_err(|_| status::stopped())
    }

    /// Serves a range from this member's applied state (`serializable`), or linearizably.
    pub async fn range(&self, query: RangeRequest) -> Result<RangeResponse, Status> {
        if query.serializable {
            let group = self.group;
            let result = self
                .inspect(move |node, _| match node.machine(group) {
                    Some(machine) => machine.store().range(&query),
                    None => Err(keel_mvcc::MvccError::Storage(keel_mvcc::StorageError::Poisoned)),
                })
                .await?;
            result.map_err(|error| status::from_mvcc(&error))
        } else {
            self.read(query).await
        }
    }
}
