//! Replicated commands: what goes into raft log entries, and their encoding.
//!
//! Format: one version byte ([`COMMAND_FORMAT_V1`]), a tag byte, then the fields as
//! fixed-width big-endian integers and `u32`-length-prefixed byte strings. No checksum:
//! the WAL record around it has one. The decoder is total: any input gives a command or
//! a [`DecodeError`], never a panic, and nesting is bounded by [`crate::MAX_TXN_DEPTH`].

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::request::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, SortOrder,
    SortTarget, TxnRequest,
};
use crate::MAX_TXN_DEPTH;

/// Version byte of the command encoding.
pub const COMMAND_FORMAT_V1: u8 = 1;

/// A state-machine command, applied in raft log order on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// etcd `Put`.
    Put(PutRequest),
    /// etcd `DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// etcd `Txn`.
    Txn(TxnRequest),
    /// etcd `Compact`: drop history below `revision`.
    Compact {
        /// Compact at this revision.
        revision: i64,
    },
    /// etcd `LeaseGrant` with the id already chosen by the proposer.
    LeaseGrant {
        /// Lease id (non-zero).
        id: i64,
        /// TTL in seconds.
        ttl_seconds: i64,
    },
    /// etcd `LeaseRevoke` (also proposed by the leader when a lease expires).
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
    /// etcd `LeaseCheckpoint`: persist a lease's remaining TTL across leader changes.
    LeaseCheckpoint {
        /// Lease id.
        id: i64,
        /// Remaining TTL in seconds.
        remaining_ttl_seconds: i64,
    },
}

mod tag {
    pub(super) const PUT: u8 = 1;
    pub(super) const DELETE_RANGE: u8 = 2;
    pub(super) const TXN: u8 = 3;
    pub(super) const COMPACT: u8 = 4;
    pub(super) const LEASE_GRANT: u8 = 5;
    pub(super) const LEASE_REVOKE: u8 = 6;
    pub(super) const LEASE_CHECKPOINT: u8 = 7;
    pub(super) const OP_RANGE: u8 = 1;
    pub(super) const OP_PUT: u8 = 2;
    pub(super) const OP_DELETE_RANGE: u8 = 3;
    pub(super) const OP_TXN: u8 = 4;
}

impl Command {
    /// Encodes the command for a raft log entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(COMMAND_FORMAT_V1);
        match self {
            Command::Put(p) => {
                w.u8(tag::PUT);
                put_put(&mut w, p);
            }
            Command::DeleteRange(d) => {
                w.u8(tag::DELETE_RANGE);
                put_delete(&mut w, d);
            }
            Command::Txn(t) => {
                w.u8(tag::TXN);
                put_txn(&mut w, t);
            }
            Command::Compact { revision } => {
                w.u8(tag::COMPACT);
                w.i64(*revision);
            }
            Command::LeaseGrant { id, ttl_seconds } => {
                w.u8(tag::LEASE_GRANT);
                w.i64(*id);
                w.i64(*ttl_seconds);
            }
            Command::LeaseRevoke { id } => {
                w.u8(tag::LEASE_REVOKE);
                w.i64(*id);
            }
            Command::LeaseCheckpoint { id, remaining_ttl_seconds } => {
                w.u8(tag::LEASE_CHECKPOINT);
                w.i64(*id);
                w.i64(*remaining_ttl_seconds);
            }
        }
        w.finish()
    }

    /// Decodes a command; malformed input is an error, never a panic.
    /// The lease a command renews (a `LeaseCheckpoint`) and to what TTL, read without decoding
    /// anything else: hosts check every proposal for this.
    pub fn lease_renewal(input: &[u8]) -> Option<(i64, i64)> {
        if input.get(1) != Some(&tag::LEASE_CHECKPOINT) {
            return None;
        }
        match Command::decode(input) {
            Ok(Command::LeaseCheckpoint { id, remaining_ttl_seconds }) => Some((id, remaining_ttl_seconds)),
            _ => None,
        }
    }

    pub fn decode(input: &[u8]) -> Result<Command, DecodeError> {
        let mut r = Reader::new(input, "command");
        let version = r.u8()?;
        if version != COMMAND_FORMAT_V1 {
            return Err(DecodeError::new("command", 0, format!("unknown format version {version}")));
        }
        let t = r.u8()?;
        let cmd = match t {
            tag::PUT => Command::Put(get_put(&mut r)?),
            tag::DELETE_RANGE => Command::DeleteRange(get_delete(&mut r)?),
            tag::TXN => Command::Txn(get_txn(&mut r, 1)?),
            tag::COMPACT => Command::Compact { revision: r.i64()? },
            tag::LEASE_GRANT => Command::LeaseGrant { id: r.i64()?, ttl_seconds: r.i64()? },
            tag::LEASE_REVOKE => Command::LeaseRevoke { id: r.i64()? },
            tag::LEASE_CHECKPOINT => Command::LeaseCheckpoint { id: r.i64()?, remaining_ttl_seconds: r.i64()? },
            other => return Err(DecodeError::new("command", 1, format!("unknown tag {other}"))),
        };
        r.expect_end()?;
        Ok(cmd)
    }
}

fn put_range(w: &mut Writer, q: &RangeRequest) {
    w.bytes(&q.key);
    w.bytes(&q.range_end);
    w.i64(q.limit);
    w.i64(q.revision);
    w.u8(match q.sort_order {
        SortOrder::None => 0,
        SortOrder::Ascend => 1,
        SortOrder::Descend => 2,
    });
    w.u8(match q.sort_target {
        SortTarget::Key => 0,
        SortTarget::Version => 1,
        SortTarget::Create => 2,
        SortTarget::Mod => 3,
        SortTarget::Value => 4,
    });
    w.bool(q.serializable);
    w.bool(q.keys_only);
    w.bool(q.count_only);
    w.i64(q.min_mod_revision);
    w.i64(q.max_mod_revision);
    w.i64(q.min_create_revision);
    w.i64(q.max_create_revision);
}

fn get_range(r: &mut Reader<'_>) -> Result<RangeRequest, DecodeError> {
    let key = r.bytes()?;
    let range_end = r.bytes()?;
    let limit = r.i64()?;
    let revision = r.i64()?;
    let sort_order = match r.u8()? {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        o => return Err(r.err(format!("sort order {o}"))),
    };
    let sort_target = match r.u8()? {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        t => return Err(r.err(format!("sort target {t}"))),
    };
    Ok(RangeRequest {
        key,
        range_end,
        limit,
        revision,
        sort_order,
        sort_target,
        serializable: r.bool()?,
        keys_only: r.bool()?,
        count_only: r.bool()?,
        min_mod_revision: r.i64()?,
        max_mod_revision: r.i64()?,
        min_create_revision: r.i64()?,
        max_create_revision: r.i64()?,
    })
}

fn put_put(w: &mut Writer, p: &PutRequest) {
    w.bytes(&p.key);
    w.bytes(&p.value);
    w.i64(p.lease);
    w.bool(p.prev_kv);
    w.bool(p.ignore_value);
    w.bool(p.ignore_lease);
}

fn get_put(r: &mut Reader<'_>) -> Result<PutRequest, DecodeError> {
    Ok(PutRequest {
        key: r.bytes()?,
        value: r.bytes()?,
        lease: r.i64()?,
        prev_kv: r.bool()?,
        ignore_value: r.bool()?,
        ignore_lease: r.bool()?,
    })
}

fn put_delete(w: &mut Writer, d: &DeleteRangeRequest) {
    w.bytes(&d.key);
    w.bytes(&d.range_end);
    w.bool(d.prev_kv);
}

fn get_delete(r: &mut Reader<'_>) -> Result<DeleteRangeRequest, DecodeError> {
    Ok(DeleteRangeRequest { key: r.bytes()?, range_end: r.bytes()?, prev_kv: r.bool()? })
}

fn put_compare(w: &mut Writer, c: &Compare) {
    w.bytes(&c.key);
    w.bytes(&c.range_end);
    w.u8(match c.result {
        CompareResult::Equal => 0,
        CompareResult::Greater => 1,
        CompareResult::Less => 2,
        CompareResult::NotEqual => 3,
    });
    match &c.target {
        CompareTarget::Version(v) => {
            w.u8(0);
            w.i64(*v);
        }
        CompareTarget::Create(v) => {
            w.u8(1);
            w.i64(*v);
        }
        CompareTarget::Mod(v) => {
            w.u8(2);
            w.i64(*v);
        }
        CompareTarget::Value(v) => {
            w.u8(3);
            w.bytes(v);
        }
        CompareTarget::Lease(v) => {
            w.u8(4);
            w.i64(*v);
        }
    }
}

fn get_compare(r: &mut Reader<'_>) -> Result<Compare, DecodeError> {
    let key = r.bytes()?;
    let range_end = r.bytes()?;
    let result = match r.u8()? {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        x => return Err(r.err(format!("compare result {x}"))),
    };
    let target = match r.u8()? {
        0 => CompareTarget::Version(r.i64()?),
        1 => CompareTarget::Create(r.i64()?),
        2 => CompareTarget::Mod(r.i64()?),
        3 => CompareTarget::Value(r.bytes()?),
        4 => CompareTarget::Lease(r.i64()?),
        x => return Err(r.err(format!("compare target {x}"))),
    };
    Ok(Compare { key, range_end, target, result })
}

fn put_ops(w: &mut Writer, ops: &[RequestOp]) {
    w.len(ops.len());
    for op in ops {
        match op {
            RequestOp::Range(q) => {
                w.u8(tag::OP_RANGE);
                put_range(w, q);
            }
            RequestOp::Put(p) => {
                w.u8(tag::OP_PUT);
                put_put(w, p);
            }
            RequestOp::DeleteRange(d) => {
                w.u8(tag::OP_DELETE_RANGE);
                put_delete(w, d);
            }
            RequestOp::Txn(t) => {
                w.u8(tag::OP_TXN);
                put_txn(w, t);
            }
        }
    }
}

fn get_ops(r: &mut Reader<'_>, depth: usize) -> Result<Vec<RequestOp>, DecodeError> {
    // Every op is at least a tag byte plus a few fields; 9 bytes is a safe lower bound.
    let n = r.len(9)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let op = match r.u8()? {
            tag::OP_RANGE => RequestOp::Range(get_range(r)?),
            tag::OP_PUT => RequestOp::Put(get_put(r)?),
            tag::OP_DELETE_RANGE => RequestOp::DeleteRange(get_delete(r)?),
            tag::OP_TXN => RequestOp::Txn(get_txn(r, depth + 1)?),
            x => return Err(r.err(format!("op tag {x}"))),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn put_txn(w: &mut Writer, t: &TxnRequest) {
    w.len(t.compare.len());
    for c in &t.compare {
        put_compare(w, c);
    }
    put_ops(w, &t.success);
    put_ops(w, &t.failure);
}

fn get_txn(r: &mut Reader<'_>, depth: usize) -> Result<TxnRequest, DecodeError> {
    if depth > MAX_TXN_DEPTH {
        return Err(r.err(format!("txn nested deeper than {MAX_TXN_DEPTH}")));
    }
    // A compare is at least two length prefixes, result, target tag and an operand.
    let n = r.len(14)?;
    let mut compare = Vec::with_capacity(n);
    for _ in 0..n {
        compare.push(get_compare(r)?);
    }
    let success = get_ops(r, depth)?;
    let failure = get_ops(r, depth)?;
    Ok(TxnRequest { compare, success, failure })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn roundtrip_every_variant() {
        let txn = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"b"),
                target: CompareTarget::Value(Bytes::from_static(b"v")),
                result: CompareResult::NotEqual,
            }],
            success: vec![
                RequestOp::Range(RangeRequest {
                    key: Bytes::from_static(b"a"),
                    sort_order: SortOrder::Descend,
                    sort_target: SortTarget::Mod,
                    limit: 3,
                    ..Default::default()
                }),
                RequestOp::Txn(TxnRequest::default()),
            ],
            failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"x"),
                range_end: Bytes::new(),
                prev_kv: true,
            })],
        };
        let cmds = [
            Command::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                lease: 5,
                prev_kv: true,
                ignore_value: false,
                ignore_lease: true,
            }),
            Command::Txn(txn),
            Command::Compact { revision: 9 },
            Command::LeaseGrant { id: 1, ttl_seconds: 10 },
            Command::LeaseRevoke { id: 1 },
            Command::LeaseCheckpoint { id: 1, remaining_ttl_seconds: 4 },
        ];
        for c in cmds {
            let enc = c.encode();
            assert_eq!(Command::decode(&enc), Ok(c.clone()));
            for cut in 0..enc.len() {
                assert!(Command::decode(&enc[..cut]).is_err(), "prefix {cut} of {c:?}");
            }
            let mut longer = enc.clone();
            longer.push(0);
            assert!(Command::decode(&longer).is_err());
        }
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut t = TxnRequest::default();
        for _ in 0..MAX_TXN_DEPTH + 1 {
            t = TxnRequest { success: vec![RequestOp::Txn(t)], ..Default::default() };
        }
        let enc = Command::Txn(t).encode();
        assert!(Command::decode(&enc).is_err());
    }
}
