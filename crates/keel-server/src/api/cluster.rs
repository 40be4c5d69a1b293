//! etcd's `Cluster` service: members are raft voters or learners plus a replicated record each
//! (name, peer and client URLs; see [`crate::machine::MemberRecord`]).
//!
//! Adding, removing and promoting a member is one raft entry: the membership change carries the
//! member-record command with it (etcd's conf change context), so no crash or lost leader can
//! leave a record without its membership or the reverse. Updating a member's peer URLs is a
//! record change alone. A new member's id derives from its peer URLs and the cluster token, so
//! the member, started later with `--initial-cluster-state existing`, computes the same id by
//! itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_api::etcdserverpb::{self as pb, cluster_server::Cluster};
use keel_api::tonic::{self, Request, Response, Status};
use keel_raft::ConfChange;

use super::Shared;
use crate::config::PeerUrl;
use crate::ids;
use crate::machine::{MemberCommand, MemberRecord};
use crate::status;

pub struct ClusterService {
    pub shared: Arc<Shared>,
}

fn to_wire(record: &MemberRecord) -> pb::Member {
    pb::Member {
        id: record.id,
        name: record.name.clone(),
        peer_ur_ls: record.peer_urls.clone(),
        client_ur_ls: record.client_urls.clone(),
        is_learner: record.learner,
    }
}

impl ClusterService {
    /// The member records as this member has applied them.
    pub async fn records(&self) -> Result<BTreeMap<u64, MemberRecord>, Status> {
        let group = self.shared.group;
        self.shared.inspect(move |node, _| node.machine(group).map(|m| m.members().clone()).unwrap_or_default()).await
    }

    pub async fn members(&self) -> Result<Vec<pb::Member>, Status> {
        Ok(self.records().await?.values().map(to_wire).collect())
    }

    async fn record(&self, id: u64) -> Result<MemberRecord, Status> {
        self.records().await?.remove(&id).ok_or_else(|| Status::not_found(status::MEMBER_NOT_FOUND))
    }

    /// Proposes `change` with the member-record change that goes with it, in one entry (as etcd
    /// carries the member in its conf change's context: a crash can never leave a record without
    /// its membership or the reverse), and waits until this member's raft configuration shows
    /// it. The reply to a change can be lost while it still applies (removing the leader moves
    /// leadership, and the forwarded proposal's reply goes with it): then the configuration is
    /// the answer.
    async fn change_membership(&self, change: ConfChange, record: MemberCommand) -> Result<(), Status> {
        let done = |conf: &keel_raft::ConfState| match change {
            ConfChange::AddLearner(id) => conf.learners.contains(&id) || conf.voters.contains(&id),
            ConfChange::AddVoter(id) => conf.voters.contains(&id),
            ConfChange::Remove(id) => !conf.voters.contains(&id) && !conf.learners.contains(&id),
        };
        let error = match self.shared.propose_conf_change(change, &record).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let group = self.shared.group;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let conf = self.shared.inspect(move |node, _| node.status(group).map(|s| s.conf)).await?;
            if conf.as_ref().is_some_and(done) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(error)
    }

    /// Replicates a member-record change on its own (MemberUpdate), retrying while there is no
    /// leader (an election may be under way); every member command is idempotent, so a retry is
    /// safe.
    async fn record_change(&self, command: MemberCommand) -> Result<(), Status> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.shared.propose_members(&command).await {
                Err(error) if error.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                result => return result,
            }
        }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.shared.header(self.shared.metrics.revision()))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let request = request.into_inner();
        let urls = request
            .peer_ur_ls
            .iter()
            .map(|u| PeerUrl::parse("peer-urls", u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Status::invalid_argument(format!("etcdserver: {error}")))?;
        if urls.is_empty() {
            return Err(Status::invalid_argument("etcdserver: member peer URLs are required"));
        }
        let existing = self.records().await?;
        if existing.values().any(|m| m.peer_urls.iter().any(|u| request.peer_ur_ls.contains(u))) {
            return Err(Status::failed_precondition(status::PEER_URL_EXISTS));
        }
        let id = ids::member_id(&self.shared.token, &urls);
        let record = MemberRecord {
            id,
            name: String::new(),
            peer_urls: urls.iter().map(ToString::to_string).collect(),
            client_urls: Vec::new(),
            learner: request.is_learner,
        };
        let change = if request.is_learner { ConfChange::AddLearner(id) } else { ConfChange::AddVoter(id) };
        self.change_membership(change, MemberCommand::Add(record.clone())).await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(to_wire(&record)),
            members: self.members().await?,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let id = request.into_inner().id;
        self.record(id).await?;
        self.change_membership(ConfChange::Remove(id), MemberCommand::Remove(id)).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: self.header(), members: self.members().await? }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let request = request.into_inner();
        for url in &request.peer_ur_ls {
            PeerUrl::parse("peer-urls", url)
                .map_err(|error| Status::invalid_argument(format!("etcdserver: {error}")))?;
        }
        self.record(request.id).await?;
        self.record_change(MemberCommand::UpdatePeers { id: request.id, peer_urls: request.peer_ur_ls }).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: self.header(), members: self.members().await? }))
    }

    async fn member_list(&self, _: Request<pb::MemberListRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse { header: self.header(), members: self.members().await? }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        // Root only, while auth is on (etcd's IsAdminPermitted).
        self.shared.check_admin(&self.shared.caller(&request)?)?;
        let id = request.into_inner().id;
        let record = self.record(id).await?;
        if !record.learner {
            return Err(Status::failed_precondition(status::NOT_LEARNER));
        }
        self.change_membership(ConfChange::AddVoter(id), MemberCommand::Promote(id)).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: self.header(), members: self.members().await? }))
    }
}
