//! etcd's `Lock` and `Election` services, built (as etcd builds them) from keys under a prefix
//! owned by leases: a waiter creates `name/<lease id>` and holds the lock, or leads, once no key
//! under `name/` has a smaller create revision. The create revision is the fencing token.
//!
//! A waiter whose lease expires loses its key; it is never told it holds the lock: after the
//! wait, its key is read back linearizably and must still be the one it created.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_api::etcdserverpb::ResponseHeader;
use keel_api::tonic::{self, Request, Response, Status};
use keel_api::v3electionpb::{self as epb, election_server::Election};
use keel_api::v3lockpb::{self as lpb, lock_server::Lock};
use keel_mvcc::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Event, EventKind, KeyValue, PutRequest,
    RangeRequest, RequestOp, Response as Applied, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Caller, Shared};
use crate::convert;
use crate::watch_hub::{Created, StreamId, WatchSpec};

/// etcd's v3election errors (returned as-is, so with gRPC code Unknown, as etcd does).
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
/// How often a waiter's internal watch takes a catch-up step.
const WATCH_STEP: Duration = Duration::from_millis(20);

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

fn owned_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend(format!("{lease:x}").bytes());
    key
}

fn unexpected(what: &Applied) -> Status {
    Status::internal(format!("etcdserver: unexpected response {what:?}"))
}

/// Locks and elections act for their caller: with auth on, their keys need the caller's
/// permissions (etcd's lock and election services call its KV service with the caller's token).
async fn txn(shared: &Shared, caller: &Caller, txn: TxnRequest) -> Result<TxnResponse, Status> {
    match shared.propose_as(caller, &Command::Txn(txn)).await? {
        Applied::Txn(response) => Ok(response),
        other => Err(unexpected(&other)),
    }
}

/// Events from one internal watcher, fed by the watch hub like a client's watch stream.
struct Subscription {
    shared: Arc<Shared>,
    stream: StreamId,
    receiver: mpsc::Receiver<Result<keel_api::etcdserverpb::WatchResponse, Status>>,
}

impl Subscription {
    /// Watches `spec` from `start_revision`; `None` if that revision is already compacted.
    async fn open(shared: &Arc<Shared>, spec: WatchSpec, start_revision: i64) -> Result<Option<Subscription>, Status> {
        let (sender, receiver) = mpsc::channel(64);
        let (stream, created) = {
            let mut hub = shared.hub.lock().expect("watch hub lock");
            let stream = hub.open_stream(sender);
            (stream, hub.create(stream, 0, spec, start_revision))
        };
        let subscription = Subscription { shared: shared.clone(), stream, receiver };
        Ok(match created {
            Created::Ok => Some(subscription),
            Created::Compacted(_) => None,
        })
    }

    /// The next events (caught up from history first if the watcher lags).
    async fn next(&mut self) -> Result<Vec<Event>, Status> {
        loop {
            let lagging = self.shared.hub.lock().expect("watch hub lock").is_lagging(self.stream);
            if lagging {
                super::watch::step_catch_up(&self.shared, self.stream).await?;
            }
            match tokio::time::timeout(WATCH_STEP, self.receiver.recv()).await {
                Ok(Some(Ok(response))) => {
                    if response.canceled {
                        return Err(Status::unavailable("etcdserver: watch canceled (compacted)"));
                    }
                    return Ok(response.events.into_iter().map(wire_event).collect());
                }
                Ok(Some(Err(status))) => return Err(status),
                Ok(None) => return Err(Status::unavailable("etcdserver: server stopped")),
                Err(_) => continue,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut hub) = self.shared.hub.lock() {
            hub.close_stream(self.stream);
        }
    }
}

fn wire_event(event: keel_api::mvccpb::Event) -> Event {
    let kv = event.kv.unwrap_or_default();
    Event {
        kind: if event.r#type == keel_api::mvccpb::event::EventType::Delete as i32 {
            EventKind::Delete
        } else {
            EventKind::Put
        },
        kv: KeyValue {
            key: Bytes::from(kv.key),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: Bytes::from(kv.value),
            lease: kv.lease,
        },
        prev_kv: None,
        prev_kv_read: false,
    }
}

/// Creates `name/<lease>` (or finds it, if this lease already waits) and returns its create
/// revision, once it is the oldest key under `name/`.
/// Also says whether this call created the key (a lease that already waited finds its own).
/// A linearizable read as `caller`.
async fn read_as(shared: &Shared, caller: &Caller, query: RangeRequest) -> Result<keel_mvcc::RangeResponse, Status> {
    let (key, range_end) = (query.key.clone(), query.range_end.clone());
    shared.check_read(caller, &key, &range_end)?;
    let response = shared.read(query).await?;
    shared.check_read(caller, &key, &range_end)?;
    Ok(response)
}

async fn acquire(
    shared: &Arc<Shared>,
    caller: &Caller,
    name: &[u8],
    lease: i64,
    value: Bytes,
) -> Result<(Vec<u8>, i64, bool), Status> {
    let key = owned_key(name, lease);
    let key_bytes = Bytes::from(key.clone());
    let created = txn(
        shared,
        caller,
        TxnRequest {
            compare: vec![Compare {
                key: key_bytes.clone(),
                range_end: Bytes::new(),
                target: CompareTarget::Create(0),
                result: CompareResult::Equal,
            }],
            success: vec![RequestOp::Put(PutRequest { key: key_bytes.clone(), value, lease, ..Default::default() })],
            failure: vec![RequestOp::Range(RangeRequest { key: key_bytes.clone(), ..Default::default() })],
        },
    )
    .await?;
    let my_revision = if created.succeeded {
        created.revision
    } else {
        match created.responses.first() {
            Some(ResponseOp::Range(range)) if !range.kvs.is_empty() => range.kvs[0].create_revision,
            _ => return Err(Status::internal("etcdserver: lock key vanished while being created")),
        }
    };
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    loop {
        // The newest key created before ours: we wait for it, not for all of them at once.
        let older = read_as(
            shared,
            caller,
            RangeRequest {
                key: Bytes::from(prefix.clone()),
                range_end: Bytes::from(prefix_end(&prefix)),
                max_create_revision: my_revision - 1,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Create,
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
        let Some(waiting_for) = older.kvs.first() else { break };
        let spec = WatchSpec {
            key: waiting_for.key.to_vec(),
            range_end: Vec::new(),
            prev_kv: false,
            no_put: true,
            no_delete: false,
            progress_notify: false,
        };
        if let Some(mut subscription) = Subscription::open(shared, spec, older.revision + 1).await? {
            while !subscription.next().await?.iter().any(|e| e.kind == EventKind::Delete) {}
        }
    }
    // A waiter whose lease expired meanwhile lost its key: it must not be told it holds the lock.
    let mine = read_as(shared, caller, RangeRequest { key: key_bytes, ..Default::default() }).await?;
    match mine.kvs.first() {
        Some(kv) if kv.create_revision == my_revision => Ok((key, my_revision, created.succeeded)),
        _ => Err(Status::failed_precondition("etcdserver: lock lost: the waiter's lease expired")),
    }
}

pub struct LockService {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<lpb::LockRequest>) -> Result<Response<lpb::LockResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        let (key, revision, _) = acquire(&self.shared, &caller, &request.name, request.lease, Bytes::new()).await?;
        Ok(Response::new(lpb::LockResponse { header: Some(self.shared.header(revision)), key }))
    }

    async fn unlock(&self, request: Request<lpb::UnlockRequest>) -> Result<Response<lpb::UnlockResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let key = Bytes::from(request.into_inner().key);
        let deleted = match self
            .shared
            .propose_as(
                &caller,
                &Command::DeleteRange(DeleteRangeRequest { key, range_end: Bytes::new(), prev_kv: false }),
            )
            .await?
        {
            Applied::DeleteRange(deleted) => deleted,
            other => return Err(unexpected(&other)),
        };
        Ok(Response::new(lpb::UnlockResponse { header: Some(self.shared.header(deleted.revision)) }))
    }
}

pub struct ElectionService {
    pub shared: Arc<Shared>,
}

impl ElectionService {
    /// The current leader's key: the oldest under `name/`.
    async fn current(&self, caller: &Caller, name: &[u8]) -> Result<(ResponseHeader, Option<KeyValue>), Status> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let range = read_as(
            &self.shared,
            caller,
            RangeRequest {
                key: Bytes::from(prefix.clone()),
                range_end: Bytes::from(prefix_end(&prefix)),
                sort_order: SortOrder::Ascend,
                sort_target: SortTarget::Create,
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
        Ok((self.shared.header(range.revision), range.kvs.into_iter().next()))
    }

    /// A txn that runs `then` only while `leader` still holds its key.
    async fn while_leading(
        &self,
        caller: &Caller,
        leader: Option<epb::LeaderKey>,
        then: RequestOp,
    ) -> Result<TxnResponse, Status> {
        let leader = leader.ok_or_else(|| Status::invalid_argument("election: leader key is required"))?;
        let response = txn(
            &self.shared,
            caller,
            TxnRequest {
                compare: vec![Compare {
                    key: Bytes::from(leader.key),
                    range_end: Bytes::new(),
                    target: CompareTarget::Create(leader.rev),
                    result: CompareResult::Equal,
                }],
                success: vec![then],
                failure: Vec::new(),
            },
        )
        .await?;
        if response.succeeded {
            Ok(response)
        } else {
            Err(Status::unknown(NOT_LEADER))
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        let value = Bytes::from(request.value);
        let (key, revision, created) =
            acquire(&self.shared, &caller, &request.name, request.lease, value.clone()).await?;
        let leader = epb::LeaderKey { name: request.name, key: key.clone(), rev: revision, lease: request.lease };
        let mut header_revision = revision;
        if !created {
            // A campaign by a lease that already waited keeps its key: proclaim the new value.
            let put =
                RequestOp::Put(PutRequest { key: Bytes::from(key), value, lease: request.lease, ..Default::default() });
            header_revision = self.while_leading(&caller, Some(leader.clone()), put).await?.revision;
        }
        Ok(Response::new(epb::CampaignResponse {
            header: Some(self.shared.header(header_revision)),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        let leader = request.leader.clone();
        let put = RequestOp::Put(PutRequest {
            key: Bytes::from(leader.as_ref().map(|l| l.key.clone()).unwrap_or_default()),
            value: Bytes::from(request.value),
            lease: leader.as_ref().map_or(0, |l| l.lease),
            ..Default::default()
        });
        let response = self.while_leading(&caller, leader, put).await?;
        Ok(Response::new(epb::ProclaimResponse { header: Some(self.shared.header(response.revision)) }))
    }

    async fn leader(&self, request: Request<epb::LeaderRequest>) -> Result<Response<epb::LeaderResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        match self.current(&caller, &request.into_inner().name).await? {
            (header, Some(kv)) => {
                Ok(Response::new(epb::LeaderResponse { header: Some(header), kv: Some(convert::kv(kv)) }))
            }
            (_, None) => Err(Status::unknown(NO_LEADER)),
        }
    }

    type ObserveStream = ReceiverStream<Result<epb::LeaderResponse, Status>>;

    async fn observe(&self, request: Request<epb::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = self.shared.caller(&request)?;
        let name = request.into_inner().name;
        let (sender, receiver) = mpsc::channel(16);
        let service = ElectionService { shared: self.shared.clone() };
        tokio::spawn(async move {
            let mut prefix = name.clone();
            prefix.push(b'/');
            let mut last: Option<(Bytes, i64)> = None;
            loop {
                let (header, leader) = match service.current(&caller, &name).await {
                    Ok(found) => found,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                if let Some(kv) = leader {
                    let seen = Some((kv.key.clone(), kv.mod_revision));
                    if seen != last {
                        last = seen;
                        let response = epb::LeaderResponse { header: Some(header), kv: Some(convert::kv(kv)) };
                        if sender.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                // Anything under the prefix may change the leader or its value.
                let spec = WatchSpec {
                    key: prefix.clone(),
                    range_end: prefix_end(&prefix),
                    prev_kv: false,
                    no_put: false,
                    no_delete: false,
                    progress_notify: false,
                };
                let Ok(Some(mut subscription)) = Subscription::open(&service.shared, spec, header.revision + 1).await
                else {
                    continue;
                };
                tokio::select! {
                    events = subscription.next() => if events.is_err() { return },
                    _ = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn resign(&self, request: Request<epb::ResignRequest>) -> Result<Response<epb::ResignResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let leader = request.into_inner().leader;
        let key = Bytes::from(leader.as_ref().map(|l| l.key.clone()).unwrap_or_default());
        let delete = RequestOp::DeleteRange(DeleteRangeRequest { key, range_end: Bytes::new(), prev_kv: false });
        let response = self.while_leading(&caller, leader, delete).await?;
        Ok(Response::new(epb::ResignResponse { header: Some(self.shared.header(response.revision)) }))
    }
}
