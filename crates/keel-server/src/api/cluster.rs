//! etcd's `Cluster` service. Membership changes through the API are not wired yet: they answer
//! Unimplemented rather than pretend.

use std::sync::Arc;

use keel_api::etcdserverpb::{self as pb, cluster_server::Cluster};
use keel_api::tonic::{self, Request, Response, Status};

use super::Shared;

pub struct ClusterService {
    pub shared: Arc<Shared>,
}

impl ClusterService {
    pub fn members(&self) -> Vec<pb::Member> {
        let members = self.shared.members.lock().expect("members lock");
        members
            .values()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: false,
            })
            .collect()
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("keel: {what} is not supported yet"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }

    async fn member_list(&self, _: Request<pb::MemberListRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.shared.header(self.shared.metrics.revision())),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }
}
