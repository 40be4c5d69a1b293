//! etcd's gRPC services over the driver: each handler turns a request into a command to
//! propose, a read, or an inspection on the driver thread, and maps the answer back to etcd's
//! wire types and errors (see [`crate::status`]).

pub mod auth;
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
use keel_api::tonic::{self, Status};
use keel_mvcc::redb_backend::RedbView;
use keel_mvcc::{Command, LatestView, MvccError, RangeRequest, RangeResponse, ReadView, Response};
use keel_node::Node;
use keel_raft::{ConfChange, GroupId};
use tokio::sync::oneshot;

use crate::driver::Input;
use crate::hook::{Machine, ServerHook};
use crate::machine::{Applied, MemberCommand, SharedAuth};
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
    /// The store's latest read view: serializable reads take it without a turn of the driver.
    pub latest_view: Arc<LatestView<RedbView>>,
    pub metrics: Arc<Metrics>,
    /// Snapshot RPC streams running (each pins a read view: redb reuses no page freed after it).
    pub snapshot_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Reads running off the driver thread at once (each holds a blocking thread and a view);
    /// more wait here, in the order they came.
    pub read_slots: Arc<tokio::sync::Semaphore>,
    /// `--unsafe-fault-injection` only (see [`crate::faults`]).
    pub faults: Option<Arc<crate::faults::InjectedFaults>>,
    /// What the membership protocol knows (`/membership`, `keel spares`).
    pub gossip: Arc<std::sync::RwLock<crate::gossip::GossipView>>,
    /// Users, roles and permissions as this member has applied them, and the tokens it knows.
    pub auth: SharedAuth,
    /// `--client-cert-auth`: a gRPC request without a token acts as the common name of the
    /// client certificate its connection verified (etcd's `AuthInfoFromTLS`).
    pub common_name_is_user: bool,
    /// `--auth-token jwt,...`: tokens are signed, and verified instead of looked up.
    pub jwt: Option<Arc<crate::jwt::JwtTokens>>,
}

/// Who made a request, as its token says, while auth is on; `None` when auth was off as it
/// arrived (nothing is checked, as in etcd).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(Option<(String, u64)>);

impl Caller {
    /// The user's name; `""` for a request without a token (or with auth off).
    pub fn user(&self) -> &str {
        self.0.as_ref().map_or("", |(user, _)| user)
    }
}

/// The gRPC metadata keys a token may come under: etcd's clients send `token`; its gateway
/// passes the HTTP `Authorization` header on.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// The token `request` carries, if any.
pub fn token_of<T>(request: &tonic::Request<T>) -> Option<&str> {
    TOKEN_KEYS.iter().find_map(|key| request.metadata().get(*key)).and_then(|value| value.to_str().ok())
}

/// What a gRPC request says about who sent it: its token, and the common name of the client
/// certificate its connection verified (the caller's name when there is no token and
/// `--client-cert-auth` is on).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub common_name: Option<Arc<str>>,
}

impl Credentials {
    pub fn of<T>(request: &tonic::Request<T>) -> Credentials {
        let connection = request.extensions().get::<axum::extract::ConnectInfo<crate::tls::listener::ClientAddr>>();
        Credentials {
            token: token_of(request).map(str::to_string),
            common_name: connection.and_then(|info| info.0.common_name.clone()),
        }
    }
}

/// Reads that may run at once on blocking threads (see [`Shared::read_slots`]).
pub const READS_AT_ONCE: usize = 64;

/// Times a read of the current state is run again on a newer view when a compaction passed the
/// view's revision while it ran (see [`Shared::range`]).
const COMPACTED_RETRIES: usize = 3;

impl Shared {
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.metrics.term(),
        }
    }

    /// Who sent `request` (see [`Caller`]): the holder of its token; without a token, and with
    /// `--client-cert-auth`, the common name of the connection's verified client certificate.
    /// A token this member does not know is refused with etcd's "invalid auth token" (expired,
    /// from before a restart, or forged). Gateway requests carry no certificate name, so a
    /// certificate never speaks for them (etcd's gateway ignores its name the same way).
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        // With auth off nothing is checked: not even the token is copied out of the request.
        if !self.auth.is_enabled() {
            return Ok(Caller(None));
        }
        self.caller_from(&Credentials::of(request))
    }

    /// Who holds `credentials` (see [`Shared::caller`]).
    pub fn caller_from(&self, credentials: &Credentials) -> Result<Caller, Status> {
        if !self.auth.is_enabled() {
            return Ok(Caller(None));
        }
        match (&credentials.token, &credentials.common_name) {
            (None, Some(common_name)) if self.common_name_is_user => {
                let revision = self.auth.lock().revision();
                Ok(Caller(Some((common_name.to_string(), revision))))
            }
            (None, _) => Ok(Caller(Some((String::new(), 0)))),
            (Some(token), _) => {
                let (user, revision) = match &self.jwt {
                    Some(jwt) => {
                        jwt.verify(token).ok_or_else(|| status::from_auth(keel_auth::AuthError::InvalidAuthToken))?
                    }
                    None => {
                        let info = self.auth.lock().token_info(token).map_err(status::from_auth)?;
                        (info.user, info.revision)
                    }
                };
                Ok(Caller(Some((user, revision))))
            }
        }
    }

    /// Whether `caller` may read `key`..`range_end` here and now (etcd checks reads at the member
    /// serving them).
    pub fn check_read(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        let Some((user, revision)) = &caller.0 else { return Ok(()) };
        let range = keel_auth::KeyRange::new(key, range_end);
        self.auth.lock().check(user, *revision, range, false).map_err(status::from_auth)
    }

    /// Whether `caller` may manage the cluster: the root role, while auth is on.
    pub fn check_admin(&self, caller: &Caller) -> Result<(), Status> {
        if caller.0.is_none() {
            return Ok(());
        }
        self.auth.lock().check_admin(caller.user()).map_err(status::from_auth)
    }

    fn submit(&self, input: Input<Machine, ServerHook>) -> Result<(), Status> {
        match self.inputs.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(status::too_many_requests()),
            Err(TrySendError::Disconnected(_)) => Err(status::stopped()),
        }
    }

    /// Replicates `command` as the cluster's own (not checked against any user's permissions)
    /// and returns its applied response. Refused whole, before anything is proposed, if it is
    /// larger than `--max-request-bytes`.
    pub async fn propose(&self, command: &Command) -> Result<Response, Status> {
        self.propose_as(&Caller(None), command).await
    }

    /// Replicates a client's `command`; while auth is on it carries its caller, and every
    /// member checks the caller's permissions as it applies it.
    pub async fn propose_as(&self, caller: &Caller, command: &Command) -> Result<Response, Status> {
        if self.metrics.nospace_alarm.load(std::sync::atomic::Ordering::Relaxed) == 1 && grows(command) {
            return Err(status::no_space());
        }
        let data = match &caller.0 {
            None => command.encode(),
            Some((user, revision)) => crate::machine::wrap(user, *revision, &command.encode()),
        };
        match self.propose_bytes(Bytes::from(data)).await? {
            Applied::Kv(response) => Ok(response),
            other => Err(Status::internal(format!("etcdserver: a command was applied as {other:?}"))),
        }
    }

    /// Replicates a change to users, roles or permissions, as `caller` asked it.
    pub async fn propose_auth(&self, caller: &Caller, command: &keel_auth::AuthCommand) -> Result<(), Status> {
        let (user, revision) = caller.0.clone().unwrap_or_default();
        let data = crate::machine::wrap(&user, revision, &command.encode());
        match self.propose_bytes(Bytes::from(data)).await? {
            Applied::Auth => Ok(()),
            other => Err(Status::internal(format!("etcdserver: an auth command was applied as {other:?}"))),
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

    /// Waits until this member has applied everything committed when it was called: a
    /// read-index round that reads nothing (for answers served from local state).
    pub async fn caught_up(&self) -> Result<(), Status> {
        self.read(RangeRequest { key: "\0".into(), limit: 1, count_only: true, ..Default::default() }).await.map(drop)
    }

    /// A linearizable read (ReadIndex; reads queued together share one leadership check).
    pub async fn read(&self, query: RangeRequest) -> Result<RangeResponse, Status> {
        self.range(RangeRequest { serializable: false, ..query }).await
    }

    /// Waits until the driver clears a linearizable read: the answer holds a view of the store
    /// as of that moment, to be run off the driver thread.
    async fn clear_read(&self, query: RangeRequest) -> Result<keel_machine::ClearedRead<RedbView>, Status> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |result| drop(tx.send(result)));
        self.submit(Input::Read { group: self.group, query, reply })?;
        match rx.await {
            Ok(Ok(cleared)) => Ok(cleared),
            Ok(Err(error)) => Err(status::from_request(&error)),
            Err(_) => Err(status::stopped()),
        }
    }

    /// A view of this member's store as it is now, for a read off the driver thread: the store's
    /// latest view, or (when something was applied since it was taken) a new one from the driver
    /// (taking it is all the driver does: a read transaction, no walk).
    pub async fn view(&self) -> Result<Arc<ReadView<RedbView>>, Status> {
        if let Some(view) = self.latest_view.get() {
            return Ok(view);
        }
        let group = self.group;
        self.inspect(move |node, _| node.machine(group).map(|m| m.store().shared_read_view()))
            .await?
            .ok_or_else(status::stopped)?
            .map_err(|error| status::from_mvcc(&MvccError::Storage(error)))
    }

    /// Runs `work` (a read through a view) on a blocking thread, at most [`READS_AT_ONCE`] at once.
    pub async fn off_driver<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
        let _slot = self.read_slots.acquire().await.map_err(|_| status::stopped())?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|error| Status::internal(format!("etcdserver: a read failed: {error}")))
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

    /// Runs a read of `query` here when it is of one key (a lookup in the index and one record:
    /// microseconds, less than handing it to another thread), else on a blocking thread.
    async fn run_read<T: Send + 'static>(
        &self,
        query: &RangeRequest,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        if query.range_end.is_empty() {
            Ok(work())
        } else {
            self.off_driver(work).await
        }
    }

    /// Serves a range from this member's applied state (`serializable`), or linearizably. Either
    /// way the driver only takes a view; a range of many keys runs on a blocking thread.
    pub async fn range(&self, query: RangeRequest) -> Result<RangeResponse, Status> {
        let mut retries = 0;
        loop {
            let unsafe_stale = self.faults.as_ref().is_some_and(|faults| faults.stale_reads());
            let result = if query.serializable || unsafe_stale {
                let view = self.view().await?;
                let q = query.clone();
                self.run_read(&query, move || view.range(&q)).await?
            } else {
                let cleared = self.clear_read(query.clone()).await?;
                self.run_read(&query, move || cleared.run()).await?
            };
            match result {
                // The view's revision was compacted away while the read ran (a compaction to a
                // newer revision was applied meanwhile): a read of the current state runs again.
                Err(MvccError::Compacted) if query.revision <= 0 && retries < COMPACTED_RETRIES => retries += 1,
                other => return other.map_err(|error| status::from_mvcc(&error)),
            }
        }
    }
}
