//! etcd's `Maintenance` service.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::{self as pb, maintenance_server::Maintenance};
use keel_api::tonic::{self, Request, Response, Status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use crate::machine::{AlarmKind, AlarmMember, MemberCommand};
use crate::status;

/// The etcd API version keel answers to (clients gate features on it).
pub const API_VERSION: &str = "3.5.0";
/// Snapshot stream chunk size.
const SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;
/// How long MoveLeader waits for the new leader to take over.
const MOVE_LEADER_WAIT: Duration = Duration::from_secs(5);

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

    async fn defragment(&self, _: Request<pb::DefragmentRequest>) -> Result<Response<pb::DefragmentResponse>, Status> {
        // redb reuses freed pages itself; there is no stop-the-world step to run.
        Ok(Response::new(pb::DefragmentResponse { header: Some(self.shared.header(self.shared.metrics.revision())) }))
    }

    async fn hash(&self, _: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let group = self.shared.group;
        let hash = self
            .shared
            .inspect(move |node, _| node.machine(group).map(|m| m.store().hash_kv(0)))
            .await?
            .ok_or_else(status::stopped)?
            .map_err(|error| status::from_mvcc(&error))?;
        Ok(Response::new(pb::HashResponse { header: Some(self.shared.header(hash.revision)), hash: hash.hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let (group, revision) = (self.shared.group, request.into_inner().revision);
        let hash = self
            .shared
            .inspect(move |node, _| node.machine(group).map(|m| m.store().hash_kv(revision)))
            .await?
            .ok_or_else(status::stopped)?
            .map_err(|error| status::from_mvcc(&error))?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.shared.header(hash.revision)),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    async fn snapshot(&self, _: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let group = self.shared.group;
        let data = self
            .shared
            .inspect(move |node, _| node.machine(group).map(|m| m.store().snapshot()))
            .await?
            .ok_or_else(status::stopped)?
            .map_err(|error| Status::internal(format!("etcdserver: snapshot: {error}")))?;
        let header = self.shared.header(self.shared.metrics.revision());
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut remaining = data.len();
            for chunk in data.chunks(SNAPSHOT_CHUNK_BYTES) {
                remaining -= chunk.len();
                let response = pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: remaining as u64,
                    blob: chunk.to_vec(),
                };
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
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
