//! Between etcd's wire types (keel-api, generated from etcd's protos) and keel-mvcc's.
//!
//! Unknown enum values are refused with etcd's "invalid argument" treatment rather than guessed.

use bytes::Bytes;
use keel_api::etcdserverpb as pb;
use keel_api::mvccpb;
use keel_api::tonic::Status;
use keel_mvcc as mvcc;

/// etcd's `ErrGRPCInvalidSortOption`: clients map the message back to a typed error.
fn invalid_sort_option() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

pub fn range_request(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    let sort_order = match r.sort_order {
        0 => mvcc::SortOrder::None,
        1 => mvcc::SortOrder::Ascend,
        2 => mvcc::SortOrder::Descend,
        _ => return Err(invalid_sort_option()),
    };
    let sort_target = match r.sort_target {
        0 => mvcc::SortTarget::Key,
        1 => mvcc::SortTarget::Version,
        2 => mvcc::SortTarget::Create,
        3 => mvcc::SortTarget::Mod,
        4 => mvcc::SortTarget::Value,
        _ => return Err(invalid_sort_option()),
    };
    Ok(mvcc::RangeRequest {
        key: Bytes::from(r.key),
        range_end: Bytes::from(r.range_end),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put_request(r: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: Bytes::from(r.key),
        value: Bytes::from(r.value),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_request(r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest { key: Bytes::from(r.key), range_end: Bytes::from(r.range_end), prev_kv: r.prev_kv }
}

fn compare(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::TargetUnion;
    let result = match c.result {
        0 => mvcc::CompareResult::Equal,
        1 => mvcc::CompareResult::Greater,
        2 => mvcc::CompareResult::Less,
        3 => mvcc::CompareResult::NotEqual,
        other => return Err(Status::invalid_argument(format!("etcdserver: invalid compare result {other}"))),
    };
    // As etcd: the target names which member of the union counts; a missing operand is zero.
    let union = c.target_union;
    let target = match c.target {
        0 => mvcc::CompareTarget::Version(match union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        1 => mvcc::CompareTarget::Create(match union {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        2 => mvcc::CompareTarget::Mod(match union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        3 => mvcc::CompareTarget::Value(match union {
            Some(TargetUnion::Value(v)) => Bytes::from(v),
            _ => Bytes::new(),
        }),
        4 => mvcc::CompareTarget::Lease(match union {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        other => return Err(Status::invalid_argument(format!("etcdserver: invalid compare target {other}"))),
    };
    Ok(mvcc::Compare { key: Bytes::from(c.key), range_end: Bytes::from(c.range_end), target, result })
}

fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(mvcc::RequestOp::Range(range_request(r)?)),
        Some(Request::RequestPut(r)) => Ok(mvcc::RequestOp::Put(put_request(r))),
        Some(Request::RequestDeleteRange(r)) => Ok(mvcc::RequestOp::DeleteRange(delete_request(r))),
        Some(Request::RequestTxn(r)) => Ok(mvcc::RequestOp::Txn(txn_request(r)?)),
        None => Err(Status::invalid_argument("etcdserver: key not found")),
    }
}

pub fn txn_request(r: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
        compare: r.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: r.success.into_iter().map(request_op).collect::<Result<_, _>>()?,
        failure: r.failure.into_iter().map(request_op).collect::<Result<_, _>>()?,
    })
}

/// etcd's `checkTxnRequest`, before anything is proposed: the compare list and each branch may
/// hold `max_ops` entries, a nested txn only what its parent left of that budget; no compare or
/// op may have an empty key; an op must name a request. Nesting deeper than the command format
/// carries ([`mvcc::MAX_TXN_DEPTH`]) is refused as too many operations, never proposed.
pub fn check_txn(r: &pb::TxnRequest, max_ops: usize) -> Result<(), Status> {
    check_txn_at(r, max_ops, 1)
}

fn check_txn_at(r: &pb::TxnRequest, max_ops: usize, depth: usize) -> Result<(), Status> {
    use pb::request_op::Request;
    let used = r.compare.len().max(r.success.len()).max(r.failure.len());
    if used > max_ops || depth > mvcc::MAX_TXN_DEPTH {
        return Err(crate::status::too_many_ops());
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(crate::status::empty_key());
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(q)) if q.key.is_empty() => return Err(crate::status::empty_key()),
            Some(Request::RequestPut(p)) if p.key.is_empty() => return Err(crate::status::empty_key()),
            Some(Request::RequestDeleteRange(d)) if d.key.is_empty() => return Err(crate::status::empty_key()),
            Some(Request::RequestTxn(nested)) => check_txn_at(nested, max_ops - used, depth + 1)?,
            Some(_) => {}
            None => return Err(Status::invalid_argument("etcdserver: key not found")),
        }
    }
    Ok(())
}

pub fn kv(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

pub fn event(e: mvcc::Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            mvcc::EventKind::Put => mvccpb::event::EventType::Put as i32,
            mvcc::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv(e.kv)),
        prev_kv: e.prev_kv.map(kv),
    }
}

pub fn range_response(r: mvcc::RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse { header: Some(header), kvs: r.kvs.into_iter().map(kv).collect(), more: r.more, count: r.count }
}

pub fn put_response(r: mvcc::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse { header: Some(header), prev_kv: r.prev_kv.map(kv) }
}

pub fn delete_response(r: mvcc::DeleteRangeResponse, header: pb::ResponseHeader) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

/// `header` is the txn's; nested responses carry the same header, as etcd's do.
pub fn txn_response(r: mvcc::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                mvcc::ResponseOp::Range(r) => Response::ResponseRange(range_response(r, header)),
                mvcc::ResponseOp::Put(r) => Response::ResponsePut(put_response(r, header)),
                mvcc::ResponseOp::DeleteRange(r) => Response::ResponseDeleteRange(delete_response(r, header)),
                mvcc::ResponseOp::Txn(r) => Response::ResponseTxn(txn_response(r, header)),
            }),
        })
        .collect();
    pb::TxnResponse { header: Some(header), succeeded: r.succeeded, responses }
}

#[cfg(test)]
mod check_txn_tests {
    use keel_api::tonic::Code;

    use super::*;

    fn put(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    fn nested(success: Vec<pb::RequestOp>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest { success, ..Default::default() })),
        }
    }

    fn refusal(txn: pb::TxnRequest, max_ops: usize) -> Option<(Code, String)> {
        check_txn(&txn, max_ops).err().map(|status| (status.code(), status.message().to_string()))
    }

    #[test]
    fn the_checks_before_proposing_are_etcds() {
        let ok = |success: Vec<pb::RequestOp>| pb::TxnRequest { success, ..Default::default() };
        assert_eq!(refusal(ok(vec![put("a"), nested(vec![put("b")])]), 3), None);
        // The nested txn gets what its parent left: 3 - 2 = 1.
        let too_many = (Code::InvalidArgument, "etcdserver: too many operations in txn request".to_string());
        assert_eq!(refusal(ok(vec![put("a"), nested(vec![put("b"), put("c")])]), 3), Some(too_many.clone()));
        let empty_key = (Code::InvalidArgument, "etcdserver: key is not provided".to_string());
        assert_eq!(refusal(ok(vec![nested(vec![put("")])]), 128), Some(empty_key));
        let no_request = (Code::InvalidArgument, "etcdserver: key not found".to_string());
        assert_eq!(refusal(ok(vec![pb::RequestOp { request: None }]), 128), Some(no_request));
        // Deeper than the command format carries, even with a huge budget.
        let mut deep = ok(vec![put("a")]);
        for _ in 0..mvcc::MAX_TXN_DEPTH {
            deep = ok(vec![nested(deep.success)]);
        }
        assert_eq!(refusal(deep, usize::MAX), Some(too_many));
    }
}
