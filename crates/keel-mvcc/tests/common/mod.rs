//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use keel_mvcc::*;

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A store plus the next raft index; commits after every command.
pub struct Db<B: Backend> {
    pub s: Store<B>,
    pub index: u64,
}

impl<B: Backend> Db<B> {
    pub fn new(backend: B) -> Self {
        let s = Store::open(backend, StoreOptions::default()).expect("open");
        let index = s.applied_index();
        Db { s, index }
    }

    pub fn apply(&mut self, cmd: Command) -> Result<Response, MvccError> {
        self.index += 1;
        let out = self.s.apply(self.index, &cmd).expect("storage");
        self.s.commit().expect("commit");
        match out {
            ApplyOutcome::Applied(r) => r,
            ApplyOutcome::Skipped => panic!("fresh index skipped"),
        }
    }

    pub fn put_req(&mut self, p: PutRequest) -> Result<PutResponse, MvccError> {
        match self.apply(Command::Put(p))? {
            Response::Put(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn put(&mut self, k: &str, v: &str) -> PutResponse {
        self.put_req(PutRequest { key: b(k), value: b(v), ..Default::default() }).expect("put")
    }

    pub fn put_lease(&mut self, k: &str, v: &str, lease: i64) -> Result<PutResponse, MvccError> {
        self.put_req(PutRequest { key: b(k), value: b(v), lease, ..Default::default() })
    }

    pub fn del_req(&mut self, d: DeleteRangeRequest) -> DeleteRangeResponse {
        match self.apply(Command::DeleteRange(d)).expect("delete") {
            Response::DeleteRange(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn del(&mut self, k: &str, end: &str) -> DeleteRangeResponse {
        self.del_req(DeleteRangeRequest { key: b(k), range_end: b(end), prev_kv: false })
    }

    pub fn txn(&mut self, t: TxnRequest) -> Result<TxnResponse, MvccError> {
        match self.apply(Command::Txn(t))? {
            Response::Txn(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        self.apply(Command::Compact { revision }).map(|_| ())
    }

    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<Response, MvccError> {
        self.apply(Command::LeaseGrant { id, ttl_seconds: ttl })
    }

    pub fn range(&self, q: RangeRequest) -> Result<RangeResponse, MvccError> {
        self.s.range(&q)
    }

    pub fn get(&self, k: &str) -> Option<KeyValue> {
        self.get_at(k, 0).expect("get")
    }

    pub fn get_at(&self, k: &str, revision: i64) -> Result<Option<KeyValue>, MvccError> {
        let mut r = self.range(RangeRequest { key: b(k), revision, ..Default::default() })?;
        Ok(r.kvs.pop())
    }

    /// Keys of a range, as strings.
    pub fn keys(&self, q: RangeRequest) -> Vec<String> {
        self.range(q).expect("range").kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }
}

pub fn mem_db() -> Db<MemBackend> {
    Db::new(MemBackend::new())
}

/// A unique temp file path, removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("keel-mvcc-test-{}-{tag}-{n}.redb", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempPath(p)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn redb_db(tag: &str) -> (Db<RedbBackend>, TempPath) {
    let tmp = TempPath::new(tag);
    let backend = RedbBackend::open(&tmp.0).expect("open redb");
    (Db::new(backend), tmp)
}
