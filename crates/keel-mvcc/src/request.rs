//! Requests and responses, shaped like etcd's `etcdserverpb` messages (headers carry only
//! the revision; the server adds cluster id, member id and raft term).

use bytes::Bytes;

use crate::kv::KeyValue;

/// Order of a range's results (etcd's `RangeRequest.SortOrder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// No sorting requested: results come in key order (ascending).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// Field a range sorts by (etcd's `RangeRequest.SortTarget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd's `RangeRequest`. `range_end` empty = the single `key`; `"\0"` = every key `>= key`;
/// otherwise `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    /// First key.
    pub key: Bytes,
    /// End of the range (see the type docs).
    pub range_end: Bytes,
    /// At most this many kvs; 0 or negative = no limit.
    pub limit: i64,
    /// Read at this revision; 0 or negative = the current revision.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Serializable read: decided by the server, ignored here.
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop kvs whose mod revision is below this (0 = off).
    pub min_mod_revision: i64,
    /// Drop kvs whose mod revision is above this (0 = off).
    pub max_mod_revision: i64,
    /// Drop kvs whose create revision is below this (0 = off).
    pub min_create_revision: i64,
    /// Drop kvs whose create revision is above this (0 = off).
    pub max_create_revision: i64,
}

/// etcd's `PutRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    /// Key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous kv.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// etcd's `DeleteRangeRequest` (same `range_end` conventions as [`RangeRequest`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeRequest {
    /// First key.
    pub key: Bytes,
    /// End of the range.
    pub range_end: Bytes,
    /// Return the deleted kvs.
    pub prev_kv: bool,
}

/// What a compare looks at, with the operand (etcd's `Compare.target` + `target_union`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    Create(i64),
    /// The mod revision (0 for a missing key).
    Mod(i64),
    /// The value (a compare on a missing key's value is always false).
    Value(Bytes),
    /// The lease (0 for none or a missing key).
    Lease(i64),
}

/// etcd's `Compare.result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// `==`
    Equal,
    /// `>`
    Greater,
    /// `<`
    Less,
    /// `!=`
    NotEqual,
}

/// One txn guard. With a `range_end` (same conventions as ranges) it holds if it holds
/// for every key in the range (etcd 3.4+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// Key.
    pub key: Bytes,
    /// End of the range; empty = the single key.
    pub range_end: Bytes,
    /// Target and operand.
    pub target: CompareTarget,
    /// Relation.
    pub result: CompareResult,
}

/// One operation of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// etcd's `TxnRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    /// Guards; all must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Ops run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Ops run otherwise.
    pub failure: Vec<RequestOp>,
}

/// etcd's `RangeResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// Header revision: the store's revision when the read ran.
    pub revision: i64,
    /// The kvs, after filters, sorting and limit.
    pub kvs: Vec<KeyValue>,
    /// The limit cut the results.
    pub more: bool,
    /// Number of keys in the range at the read revision, before filters and limit.
    pub count: i64,
}

/// etcd's `PutResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    /// Header revision: the put's revision.
    pub revision: i64,
    /// The previous kv, if asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeResponse {
    /// Header revision: the delete's revision (unchanged when nothing was deleted).
    pub revision: i64,
    /// Number of keys deleted.
    pub deleted: i64,
    /// Deleted kvs, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// One response of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    /// For a range.
    Range(RangeResponse),
    /// For a put.
    Put(PutResponse),
    /// For a delete.
    DeleteRange(DeleteRangeResponse),
    /// For a nested txn.
    Txn(TxnResponse),
}

/// etcd's `TxnResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// Header revision: the store's revision after the txn.
    pub revision: i64,
    /// Whether the compares held (the success branch ran).
    pub succeeded: bool,
    /// One response per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// Lease information (etcd's `LeaseTimeToLiveResponse` minus the clock-derived part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Lease id.
    pub id: i64,
    /// TTL granted, seconds.
    pub granted_ttl: i64,
    /// Remaining TTL as last checkpointed, or the granted TTL if never checkpointed.
    /// The leader's clock (outside this crate) refines it.
    pub remaining_ttl: i64,
    /// Attached keys, sorted.
    pub keys: Vec<Bytes>,
}

/// The outcome of one applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// For [`crate::Command::Put`].
    Put(PutResponse),
    /// For [`crate::Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// For [`crate::Command::Txn`].
    Txn(TxnResponse),
    /// For [`crate::Command::Compact`]: the header revision.
    Compact {
        /// Current revision.
        revision: i64,
    },
    /// For [`crate::Command::LeaseGrant`].
    LeaseGrant {
        /// Current revision.
        revision: i64,
        /// Granted id.
        id: i64,
        /// Granted TTL.
        ttl: i64,
    },
    /// For [`crate::Command::LeaseRevoke`]: the revision after deleting attached keys.
    LeaseRevoke {
        /// Current revision.
        revision: i64,
    },
    /// For [`crate::Command::LeaseCheckpoint`].
    LeaseCheckpoint {
        /// Current revision.
        revision: i64,
    },
}
