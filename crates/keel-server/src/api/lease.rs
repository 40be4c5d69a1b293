//! etcd's `Lease` service.
//!
//! Grant and revoke are replicated commands. A keep-alive is replicated too, as a checkpoint of
//! the full TTL: every member's lease clock restarts the lease when it applies it, so a renewal
//! survives a leader change and needs no leader-only state. Expiry is the leader's revoke (see
//! [`crate::lease_clock`]).

use std::sync::Arc;
use std::time::Instant;

use keel_api::etcdserverpb::{self as pb, lease_server::Lease};
use keel_api::tonic::{self, Request, Response, Status, Streaming};
use keel_mvcc::{Command, Response as Applied};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Caller, Shared};

/// Keep-alive responses queued per stream.
const KEEP_ALIVE_QUEUE_MAX: usize = 64;

pub struct LeaseService {
    pub shared: Arc<Shared>,
}

fn unexpected(what: &Applied) -> Status {
    Status::internal(format!("etcdserver: unexpected response {what:?}"))
}

/// A lease id for a grant that asked for none: positive, and unlikely to collide (a collision
/// is refused by the state machine as "lease already exists", never merged).
fn fresh_lease_id(member_id: u64) -> i64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64);
    let mixed = (nanos ^ member_id.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((mixed >> 1) as i64).max(1)
}

impl LeaseService {
    pub async fn grant(
        &self,
        caller: &Caller,
        request: pb::LeaseGrantRequest,
    ) -> Result<pb::LeaseGrantResponse, Status> {
        let id = if request.id != 0 { request.id } else { fresh_lease_id(self.shared.member_id) };
        let ttl_seconds = request.ttl.max(self.shared.min_lease_ttl);
        match self.shared.propose_as(caller, &Command::LeaseGrant { id, ttl_seconds }).await? {
            Applied::LeaseGrant { revision, id, ttl } => {
                Ok(pb::LeaseGrantResponse { header: Some(self.shared.header(revision)), id, ttl, error: String::new() })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Revoking deletes the lease's keys: with auth on, the caller needs write permission on
    /// each (checked as it applies, as etcd does).
    pub async fn revoke(
        &self,
        caller: &Caller,
        request: pb::LeaseRevokeRequest,
    ) -> Result<pb::LeaseRevokeResponse, Status> {
        match self.shared.propose_as(caller, &Command::LeaseRevoke { id: request.id }).await? {
            Applied::LeaseRevoke { revision } => {
                Ok(pb::LeaseRevokeResponse { header: Some(self.shared.header(revision)) })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Renews lease `id` to its full TTL; TTL 0 for a lease that does not exist (as etcd). The
    /// answer comes from the applied renewal: a lease revoked before it applies answers 0.
    pub async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let group = self.shared.group;
        if self.shared.metrics.is_leader.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            // A follower's store may not have applied the grant yet (or be far behind): ask the
            // leader how far the log is committed and wait until that is applied here, so a
            // live lease is never answered "TTL 0", which would end its client's session.
            self.shared.caught_up().await?;
        }
        let granted = self
            .shared
            .inspect(move |node, _| node.machine(group).and_then(|m| m.store().lease_ttl(id)).map(|l| l.granted_ttl))
            .await?;
        let ttl = match granted {
            None => 0,
            Some(granted) => {
                match self.shared.propose(&Command::LeaseCheckpoint { id, remaining_ttl_seconds: granted }).await {
                    Ok(_) => granted,
                    Err(error) if error.code() == tonic::Code::NotFound => 0,
                    Err(error) => return Err(error),
                }
            }
        };
        Ok(pb::LeaseKeepAliveResponse { header: Some(self.shared.header(self.shared.metrics.revision())), id, ttl })
    }

    pub async fn time_to_live(
        &self,
        request: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        // Linearizable, like etcd's: a read-index round first, so a lease granted through
        // another member is visible here.
        self.shared.caught_up().await?;
        let (group, id, with_keys) = (self.shared.group, request.id, request.keys);
        let found = self
            .shared
            .inspect(move |node, hook| {
                let info = node.machine(group).and_then(|m| m.store().lease_ttl(id))?;
                let remaining = hook.leases.remaining_seconds(id, Instant::now()).unwrap_or(info.remaining_ttl);
                Some((info, remaining))
            })
            .await?;
        let header = Some(self.shared.header(self.shared.metrics.revision()));
        Ok(match found {
            // etcd answers an unknown lease with TTL -1 ("lease ... already expired").
            None => pb::LeaseTimeToLiveResponse { header, id, ttl: -1, granted_ttl: 0, keys: Vec::new() },
            Some((info, remaining)) => pb::LeaseTimeToLiveResponse {
                header,
                id,
                ttl: remaining,
                granted_ttl: info.granted_ttl,
                keys: if with_keys { info.keys.into_iter().map(|k| k.to_vec()).collect() } else { Vec::new() },
            },
        })
    }

    pub async fn leases(&self) -> Result<pb::LeaseLeasesResponse, Status> {
        let group = self.shared.group;
        let ids = self
            .shared
            .inspect(move |node, _| {
                node.machine(group).map_or_else(Vec::new, |m| m.store().leases().into_iter().map(|l| l.id).collect())
            })
            .await?;
        Ok(pb::LeaseLeasesResponse {
            header: Some(self.shared.header(self.shared.metrics.revision())),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        })
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.grant(&self.shared.caller(&request)?, request.into_inner()).await.map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.revoke(&self.shared.caller(&request)?, request.into_inner()).await.map(Response::new)
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(KEEP_ALIVE_QUEUE_MAX);
        let service = LeaseService { shared: self.shared.clone() };
        tokio::spawn(async move {
            while let Ok(Some(message)) = incoming.message().await {
                let answer = service.keep_alive_once(message.id).await;
                let failed = answer.is_err();
                if sender.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.time_to_live(request.into_inner()).await.map(Response::new)
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.leases().await.map(Response::new)
    }
}
