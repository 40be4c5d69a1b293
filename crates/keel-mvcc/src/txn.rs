//! Txn: duplicate-key check, compares, prechecks and execution, in etcd's order
//! (`checkTxnRequest` + `checkIntervals` at the API, then `compareToPath`,
//! `checkRequestPut`, `checkRequestRange` and `applyTxn` at apply time).

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::backend::Backend;
use crate::error::MvccError;
use crate::kv::KeyValue;
use crate::range::KeyRange;
use crate::request::{Compare, CompareResult, CompareTarget, RequestOp, ResponseOp, TxnRequest, TxnResponse};
use crate::store::Store;
use crate::write::WriteTxn;
use crate::MAX_TXN_DEPTH;

/// Which branch each txn on the executed path takes: the txn's own decision, then one
/// entry per nested txn of the chosen branch, in op order.
#[derive(Debug)]
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// Visits, in order, every non-txn op of the branches `path` chose, nested txns included.
fn for_each_op_on_path(
    t: &TxnRequest,
    path: &TxnPath,
    visit: &mut dyn FnMut(&RequestOp) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let ops = if path.succeeded { &t.success } else { &t.failure };
    let mut nested = path.nested.iter();
    for op in ops {
        match op {
            RequestOp::Txn(n) => {
                let p = nested.next().expect("one path entry per nested txn");
                for_each_op_on_path(n, p, visit)?;
            }
            other => visit(other)?,
        }
    }
    Ok(())
}

fn check_depth(t: &TxnRequest, depth: usize) -> Result<(), MvccError> {
    if depth > MAX_TXN_DEPTH {
        return Err(MvccError::TxnTooDeep);
    }
    for op in t.success.iter().chain(&t.failure) {
        if let RequestOp::Txn(n) = op {
            check_depth(n, depth + 1)?;
        }
    }
    Ok(())
}

fn check_provided(t: &TxnRequest) -> Result<(), MvccError> {
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Put(p) => crate::write::check_put_provided(p)?,
            RequestOp::Txn(n) => check_provided(n)?,
            _ => {}
        }
    }
    Ok(())
}

/// Delete ranges in etcd's interval semantics: `[key, end)` with an empty end meaning a
/// single key and `"\0"` meaning every key from `key` on. etcd 3.4 up to main read `"\0"`
/// literally here, so `[Delete(a.."\0"), Put(b, ignore_value)]` passed the check and then
/// crashed every member at apply (etcd issue 22445; fixed as here by etcd PR 22395).
#[derive(Debug, Default, Clone)]
struct Deletes(Vec<(Bytes, Bytes)>);

impl Deletes {
    fn intersects(&self, k: &Bytes) -> bool {
        self.0.iter().any(|(s, e)| match e.as_ref() {
            [] => s == k,
            [0] => s <= k,
            _ => s <= k && k < e,
        })
    }
}

/// etcd's `checkIntervals`: no key put twice, no key both put and deleted, at one level
/// or across nested txns (a key may be put in both branches of one nested txn).
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Bytes>, Deletes), MvccError> {
    let mut dels = Deletes::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.0.push((d.key.clone(), d.range_end.clone()));
        }
    }
    let mut puts = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.intersects(k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.intersects(k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.0.extend(dels_then.0);
        dels.0.extend(dels_else.0);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || dels.intersects(&p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_ref().cmp(v.as_ref()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

impl<B: Backend> Store<B> {
    /// etcd `Txn` as a command.
    pub(crate) fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, MvccError> {
        check_depth(t, 1)?;
        check_provided(t)?;
        check_intervals(&t.success)?;
        check_intervals(&t.failure)?;
        // Every compare on the path sees the state before the txn, as in etcd.
        let path = self.compare_path(t)?;
        self.check_puts(t, &path)?;
        self.check_ranges(t, &path)?;
        let mut w = WriteTxn::new(self.current_revision);
        let responses = match self.exec(&mut w, t, &path) {
            Ok(r) => r,
            Err(MvccError::Storage(e)) => return Err(e.into()),
            Err(other) => {
                // The prechecks above cover every client error the ops can raise; if one is
                // missed anyway, the ops before it are already in the index. Every replica got
                // here the same way, so it ends the same way on each: the partial write stands
                // at one revision and the client gets the error. Never a panic, which would
                // replay at every restart and take the whole cluster down for good.
                debug_assert!(false, "txn precheck missed {other}");
                tracing::error!(error = %other, "txn precheck missed an error; the txn applied in part");
                self.finish_write(w);
                return Err(other);
            }
        };
        self.finish_write(w);
        let mut resp = TxnResponse { revision: self.current_revision, succeeded: path.succeeded, responses };
        set_nested_revision(&mut resp, self.current_revision);
        Ok(resp)
    }

    fn compare_path(&self, t: &TxnRequest) -> Result<TxnPath, MvccError> {
        let mut succeeded = true;
        for c in &t.compare {
            if !self.compare_holds(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut nested = Vec::new();
        for op in ops {
            if let RequestOp::Txn(n) = op {
                nested.push(self.compare_path(n)?);
            }
        }
        Ok(TxnPath { succeeded, nested })
    }

    /// etcd `applyCompare`: over a range, every key must satisfy it; a missing key
    /// compares as zeroes, except that a value compare on no key is false.
    fn compare_holds(&self, c: &Compare) -> Result<bool, MvccError> {
        let at = self.current_revision;
        let entries = KeyRange::new(&c.key, &c.range_end).alive_at(&self.index.read(), at);
        if entries.is_empty() {
            return Ok(!matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default()));
        }
        if matches!(c.target, CompareTarget::Value(_)) {
            let revs: Vec<_> = entries.iter().map(|(_, e)| e.rev).collect();
            return Ok(self.load_kvs(&revs)?.iter().all(|kv| compare_kv(c, kv)));
        }
        // Other targets come from the index; `at` is current, so the index's lease is
        // the lease at `at`.
        Ok(entries.iter().all(|(k, e)| {
            let kv = KeyValue {
                key: k.clone(),
                create_revision: e.create_revision,
                mod_revision: e.rev.main,
                version: e.version,
                value: Bytes::new(),
                lease: self.index.read().get(k).map_or(0, |ki| ki.lease),
            };
            compare_kv(c, &kv)
        }))
    }

    /// etcd `checkRequestPut` over the path: ignore_* need an existing key, a lease must
    /// be granted. Checked before any write, so a failing txn changes nothing.
    fn check_puts(&self, t: &TxnRequest, path: &TxnPath) -> Result<(), MvccError> {
        // Deletes earlier on the path, in execution order: a put that needs its key to exist
        // must not follow one that removes it (the interval check refuses that already; this
        // keeps the precheck exact on its own, since `exec` cannot roll back).
        let mut deleted = Deletes::default();
        for_each_op_on_path(t, path, &mut |op| {
            match op {
                RequestOp::Put(p) => {
                    // etcd's order: the lease first, then the key.
                    if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                        return Err(MvccError::LeaseNotFound);
                    }
                    if (p.ignore_value || p.ignore_lease)
                        && (deleted.intersects(&p.key) || self.get_kv(&p.key, self.current_revision)?.is_none())
                    {
                        return Err(MvccError::KeyNotFound);
                    }
                }
                RequestOp::DeleteRange(d) => deleted.0.push((d.key.clone(), d.range_end.clone())),
                _ => {}
            }
            Ok(())
        })
    }

    /// etcd `checkRequestRange` over the path, against the revision before the txn.
    fn check_ranges(&self, t: &TxnRequest, path: &TxnPath) -> Result<(), MvccError> {
        for_each_op_on_path(t, path, &mut |op| {
            if let RequestOp::Range(q) = op {
                if q.revision > 0 && q.revision > self.current_revision {
                    return Err(MvccError::FutureRevision);
                }
                // etcd's `checkRange` compares any non-zero revision with the compacted one, so a
                // negative revision in a txn is refused as compacted (alone, a Range reads at
                // the current revision).
                if q.revision != 0 && q.revision < self.compacted_revision() {
                    return Err(MvccError::Compacted);
                }
            }
            Ok(())
        })
    }

    fn exec(&mut self, w: &mut WriteTxn, t: &TxnRequest, path: &TxnPath) -> Result<Vec<ResponseOp>, MvccError> {
        let ops = if path.succeeded { &t.success } else { &t.failure };
        let mut nested = path.nested.iter();
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op {
                RequestOp::Range(q) => ResponseOp::Range(self.range_at(q, w.read_rev())?),
                RequestOp::Put(p) => ResponseOp::Put(self.put_in(w, p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range_in(w, d)?),
                RequestOp::Txn(n) => {
                    let p = nested.next().expect("one path entry per nested txn");
                    ResponseOp::Txn(TxnResponse { revision: 0, succeeded: p.succeeded, responses: self.exec(w, n, p)? })
                }
            };
            out.push(resp);
        }
        Ok(out)
    }
}

/// Nested txn responses report the txn's final revision, like the outer one.
fn set_nested_revision(resp: &mut TxnResponse, rev: i64) {
    for r in &mut resp.responses {
        if let ResponseOp::Txn(n) = r {
            n.revision = rev;
            set_nested_revision(n, rev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{DeleteRangeRequest, PutRequest};

    fn put(k: &'static [u8]) -> RequestOp {
        RequestOp::Put(PutRequest { key: Bytes::from_static(k), ..Default::default() })
    }
    fn del(k: &'static [u8], end: &'static [u8]) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(k),
            range_end: Bytes::from_static(end),
            prev_kv: false,
        })
    }
    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp::Txn(TxnRequest { compare: vec![], success, failure })
    }

    #[test]
    fn interval_check_matches_etcd() {
        let dup = Err(MvccError::DuplicateKey);
        assert_eq!(check_intervals(&[put(b"a"), put(b"a")]).map(|_| ()), dup);
        assert_eq!(check_intervals(&[put(b"a"), del(b"a", b"")]).map(|_| ()), dup);
        assert_eq!(check_intervals(&[del(b"a", b"c"), put(b"b")]).map(|_| ()), dup);
        assert!(check_intervals(&[del(b"a", b"c"), put(b"c")]).is_ok());
        assert!(check_intervals(&[del(b"a", b""), del(b"a", b"z")]).is_ok());
        // then/else of one nested txn are exclusive
        assert!(check_intervals(&[nested(vec![put(b"a")], vec![put(b"a")])]).is_ok());
        assert_eq!(check_intervals(&[nested(vec![put(b"a")], vec![]), put(b"a")]).map(|_| ()), dup);
        assert_eq!(check_intervals(&[nested(vec![del(b"a", b"")], vec![]), put(b"a")]).map(|_| ()), dup);
        // "\0" as a delete's end is "every key from here on" (etcd read it literally up to
        // 2026 and crashed at apply, issue 22445).
        assert_eq!(check_intervals(&[del(b"a", b"\0"), put(b"b")]).map(|_| ()), dup);
        assert_eq!(check_intervals(&[del(b"", b"\0"), put(b"b")]).map(|_| ()), dup);
        assert!(check_intervals(&[del(b"c", b"\0"), put(b"b")]).is_ok());
        assert_eq!(check_intervals(&[nested(vec![del(b"a", b"\0")], vec![]), put(b"zz")]).map(|_| ()), dup);
    }
}
