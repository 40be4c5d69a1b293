//! etcd's `KV` service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use keel_api::etcdserverpb::{self as pb, kv_server::Kv};
use keel_api::tonic::{self, Request, Response, Status};
use keel_mvcc::{Command, Response as Applied};

use super::{Caller, Shared};
use crate::{convert, status};

pub struct KvService {
    pub shared: Arc<Shared>,
}

fn unexpected(what: &Applied) -> Status {
    Status::internal(format!("etcdserver: unexpected response {what:?}"))
}

impl KvService {
    pub async fn range(&self, caller: &Caller, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        if request.key.is_empty() {
            return Err(status::empty_key());
        }
        let query = convert::range_request(request)?;
        let (key, range_end) = (query.key.clone(), query.range_end.clone());
        // Refused before any walk when this member already knows it is forbidden (a forbidden
        // range may hold millions of keys).
        self.shared.check_read(caller, &key, &range_end)?;
        let response = self.shared.range(query).await?;
        // Checked once the read has run, against this member's auth store as of then: at least
        // as new as the state read, so a permission revoked before the read is never missed.
        self.shared.check_read(caller, &key, &range_end)?;
        let header = self.shared.header(response.revision);
        Ok(convert::range_response(response, header))
    }

    pub async fn put(&self, caller: &Caller, request: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        if request.key.is_empty() {
            return Err(status::empty_key());
        }
        match self.shared.propose_as(caller, &Command::Put(convert::put_request(request))).await? {
            Applied::Put(put) => {
                let header = self.shared.header(put.revision);
                Ok(convert::put_response(put, header))
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn delete_range(
        &self,
        caller: &Caller,
        request: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, Status> {
        if request.key.is_empty() {
            return Err(status::empty_key());
        }
        match self.shared.propose_as(caller, &Command::DeleteRange(convert::delete_request(request))).await? {
            Applied::DeleteRange(deleted) => {
                let header = self.shared.header(deleted.revision);
                Ok(convert::delete_response(deleted, header))
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn txn(&self, caller: &Caller, request: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        convert::check_txn(&request, self.shared.max_txn_ops)?;
        let txn = convert::txn_request(request)?;
        match self.shared.propose_as(caller, &Command::Txn(txn)).await? {
            Applied::Txn(txn) => {
                let header = self.shared.header(txn.revision);
                Ok(convert::txn_response(txn, header))
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn compact(
        &self,
        caller: &Caller,
        request: pb::CompactionRequest,
    ) -> Result<pb::CompactionResponse, Status> {
        match self.shared.propose_as(caller, &Command::Compact { revision: request.revision }).await? {
            Applied::Compact { revision } => Ok(pb::CompactionResponse { header: Some(self.shared.header(revision)) }),
            other => Err(unexpected(&other)),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        KvService::range(self, &self.shared.caller(&request)?, request.into_inner()).await.map(Response::new)
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        KvService::put(self, &self.shared.caller(&request)?, request.into_inner()).await.map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        KvService::delete_range(self, &self.shared.caller(&request)?, request.into_inner()).await.map(Response::new)
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        KvService::txn(self, &self.shared.caller(&request)?, request.into_inner()).await.map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        KvService::compact(self, &self.shared.caller(&request)?, request.into_inner()).await.map(Response::new)
    }
}
