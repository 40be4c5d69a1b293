//! etcd's `Maintenance` service.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::{self as pb, maintenance_server::Maintenance};
use keel_api::tonic::{self, Request, Response, Status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use crate::machine::{AlarmKind, AlarmMember, MemberCommand, MEMBERS_META_KEY};
use crate::status;

/// The etcd API version keel answers to (clients gate features on it).
pub const API_VERSION: &str = "3.5.0";
/// Snapshot stream chunk size.
const SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;
/// How long MoveLeader waits for the new leader to take over.
const MOVE_LEADER_WAIT: Duration = Duration::from_secs(5);

/// Snapshot RPC streams at once; more are refused (each holds a read view open, which keeps redb
/// from reusing pages freed after it, and a blocking thread).
const SNAPSHOT_STREAMS_MAX: usize = 2;
/// A Snapshot RPC client that takes nothing for this long is dropped, and its read view with it.
const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// etcd ends a snapshot with the SHA-256 of what came before, which is a multiple of this (bolt's
/// pages): `etcdctl snapshot save` refuses a stream whose length is not `k * 512 + 32`.
const SNAPSHOT_ALIGN: u64 = 512;

/// Cuts the Snapshot RPC's byte stream into messages (blocking: it runs on a blocking thread).
struct SnapshotChunks {
    sender: mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
    header: pb::ResponseHeader,
    buf: Vec<u8>,
    sent: u64,
    estimate: u64,
    digest: sha2::Sha256,
}

impl SnapshotChunks {
    fn send(&mut self, remaining_bytes: u64) -> std::io::Result<()> {
        let blob = std::mem::take(&mut self.buf);
        self.sent += blob.len() as u64;
        let mut response = Ok(pb::SnapshotResponse { header: Some(self.header), remaining_bytes, blob });
        let deadline = Instant::now() + SNAPSHOT_STALL_TIMEOUT;
        loop {
            match self.sender.try_send(response) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) if Instant::now() < deadline => {
                    response = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading"))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
                }
            }
        }
    }

    /// The last message: whatever is left, zeros up to a multiple of [`SNAPSHOT_ALIGN`], the
    /// SHA-256 of all that, and `remaining_bytes` 0.
    fn finish(&mut self) -> std::io::Result<()> {
        use sha2::Digest;
        let length = self.sent + self.buf.len() as u64;
        let padding = (SNAPSHOT_ALIGN - length % SNAPSHOT_ALIGN) % SNAPSHOT_ALIGN;
        let zeros = vec![0u8; padding as usize];
        self.digest.update(&zeros);
        self.buf.extend_from_slice(&zeros);
        let sum = std::mem::take(&mut self.digest).finalize();
        self.buf.extend_from_slice(&sum);
        self.send(0)
    }
}

impl std::io::Write for SnapshotChunks {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.digest, bytes);
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= SNAPSHOT_CHUNK_BYTES {
            let rest = self.buf.split_off(SNAPSHOT_CHUNK_BYTES);
            let remaining = self.estimate.saturating_sub(self.sent + SNAPSHOT_CHUNK_BYTES as u64).max(1);
            self.send(remaining)?;
            self.buf = rest;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct MaintenanceService {
    pub shared: Arc<Shared>,
}

impl MaintenanceService {
    pub fn status(&self) -> pb::StatusResponse {
        let m = &self.shared.metrics;
        let mut errors = Vec::new();
        if m.leader() == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        for alarm in m.alarms.lock().expect("alarms lock").iter() {
            errors.push(format!("memberID:{} alarm:{} ", alarm.member, alarm.kind.name()));
        }
        pb::StatusResponse {
            header: Some(self.shared.header(m.revision())),
            version: API_VERSION.to_string(),
            db_size: m.db_size.load(Relaxed),
            leader: m.leader(),
            raft_index: m.commit_index.load(Relaxed),
            raft_term: m.term(),
            raft_applied_index: m.applied_index.load(Relaxed),
            errors,
            db_size_in_use: m.db_size.load(Relaxed),
            is_learner: false,
        }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let request = request.into_inner();
        let action = AlarmAction::try_from(request.action)
            .map_err(|_| Status::invalid_argument(format!("etcdserver: unknown alarm action {}", request.action)))?;
        // As etcd: alarms go through the log, so every member raises and disarms them alike
        // (a member id of 0 names this member). Disarming while still short of space is
        // followed by the member raising it again at its next check.
        let kind = AlarmKind::from_code(request.alarm);
        let member = if request.member_id == 0 { self.shared.member_id } else { request.member_id };
        let acted_on = match (action, kind) {
            (AlarmAction::Activate | AlarmAction::Deactivate, Some(kind)) => {
                let alarm = AlarmMember { member, kind };
                let active = action == AlarmAction::Activate;
                self.shared.propose_members(&MemberCommand::Alarm { alarm, active }).await?;
                Some(alarm)
            }
            _ => None,
        };
        let alarms: Vec<AlarmMember> = match (action, acted_on) {
            (AlarmAction::Get, _) => {
                let raised = self.shared.metrics.alarms.lock().expect("alarms lock").clone();
                raised.into_iter().filter(|a| kind.is_none_or(|k| a.kind == k)).collect()
            }
            (_, Some(alarm)) => vec![alarm],
            (_, None) => Vec::new(),
        };
        let alarms =
            alarms.into_iter().map(|a| pb::AlarmMember { member_id: a.member, alarm: a.kind as i32 }).collect();
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.shared.header(self.shared.metrics.revision())),
            alarms,
        }))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(MaintenanceService::status(self)))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        // redb reuses freed pages itself; there is no stop-the-world step to run.
        Ok(Response::new(pb::DefragmentResponse { header: Some(self.shared.header(self.shared.metrics.revision())) }))
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let view = self.shared.view().await?;
        let hash = self.shared.off_driver(move || view.hash_kv(0)).await?.map_err(|error| status::from_mvcc(&error))?;
        Ok(Response::new(pb::HashResponse { header: Some(self.shared.header(hash.revision)), hash: hash.hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let revision = request.into_inner().revision;
        let view = self.shared.view().await?;
        let hash =
            self.shared.off_driver(move || view.hash_kv(revision)).await?.map_err(|error| status::from_mvcc(&error))?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.shared.header(hash.revision)),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    /// The store as keel streams it to a follower (rows a `RowReceiver` builds a store file from,
    /// member records included), zero-padded and ended with its SHA-256 as etcd's snapshots are,
    /// read from a redb read view on a blocking thread: the driver only opens the view, so a
    /// backup of any size neither stalls raft nor is held in memory. The stream's length is not
    /// known in advance: `remaining_bytes` is the store file's size less what was sent (at least
    /// 1) until the last message, which says 0.
    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let streams = self.shared.snapshot_streams.clone();
        if streams.fetch_add(1, Relaxed) >= SNAPSHOT_STREAMS_MAX {
            streams.fetch_sub(1, Relaxed);
            return Err(Status::resource_exhausted("etcdserver: too many snapshots in progress"));
        }
        // Counted until the stream ends, however it ends.
        struct Running(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        let running = Running(streams);
        let group = self.shared.group;
        let (view, members) = self
            .shared
            .inspect(move |node, _| node.machine_mut(group).map(|m| m.store_view()))
            .await?
            .ok_or_else(status::stopped)?
            .map_err(|error| Status::unavailable(format!("etcdserver: snapshot: {error}")))?
            .ok_or_else(|| Status::unavailable("etcdserver: snapshot: the store is not a file"))?;
        let header = self.shared.header(self.shared.metrics.revision());
        let estimate = u64::try_from(self.shared.metrics.db_size.load(Relaxed)).unwrap_or(0);
        let (sender, receiver) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _running = running;
            let mut out = SnapshotChunks {
                sender,
                header,
                buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
                sent: 0,
                estimate,
                digest: Default::default(),
            };
            let written = view
                .write_rows(&mut out, &[(MEMBERS_META_KEY, members)])
                .map_err(|error| error.to_string())
                .and_then(|()| out.finish().map_err(|error| error.to_string()));
            if let Err(error) = written {
                // Nobody to tell if the client left or stalled; otherwise the stream ends with it.
                let _ = out.sender.try_send(Err(Status::internal(format!("etcdserver: snapshot: {error}"))));
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let (group, target) = (self.shared.group, request.into_inner().target_id);
        self.shared.inspect(move |node, _| node.transfer_leader(group, target)).await?.map_err(
            |error| match error {
                keel_raft::RaftError::NotLeader { .. } => Status::failed_precondition("etcdserver: not leader"),
                other => Status::failed_precondition(format!("etcdserver: {other}")),
            },
        )?;
        let deadline = Instant::now() + MOVE_LEADER_WAIT;
        while self.shared.metrics.leader() != target {
            if Instant::now() >= deadline {
                return Err(Status::unavailable("etcdserver: request timed out, leader transfer took too long"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Response::new(pb::MoveLeaderResponse { header: Some(self.shared.header(self.shared.metrics.revision())) }))
    }

    async fn downgrade(&self, _: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented("keel: downgrade is not supported"))
    }
}
