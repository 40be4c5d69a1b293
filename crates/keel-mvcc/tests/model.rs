//! Differential test: random command sequences against a naive reference model that keeps
//! a full copy of the key space per revision. Every read result, error and event must match.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::TempPath;
use keel_mvcc::*;
use proptest::prelude::*;

const KEYS: [&str; 5] = ["a", "ab", "b", "c", "d"];

type State = BTreeMap<Bytes, KeyValue>;

/// The reference: `history[r]` is the whole state at revision `r` (index 0 unused).
struct Model {
    history: Vec<State>,
    compacted: i64,
    events: Vec<(EventKind, KeyValue, Option<KeyValue>)>,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        e => k >= key && k < e,
    }
}

impl Model {
    fn new() -> Self {
        Model { history: vec![State::new(), State::new()], compacted: -1, events: Vec::new() }
    }
    fn cur(&self) -> i64 {
        self.history.len() as i64 - 1
    }

    fn range(&self, state: &State, q: &RangeRequest, header: i64) -> RangeResponse {
        let all: Vec<KeyValue> = state.values().filter(|kv| in_range(&kv.key, &q.key, &q.range_end)).cloned().collect();
        let count = all.len() as i64;
        let limit = if q.limit > 0 { q.limit as usize } else { usize::MAX };
        let more = all.len() > limit;
        RangeResponse { revision: header, kvs: all.into_iter().take(limit).collect(), more, count }
    }

    fn read(&self, q: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.read_as_of(q, self.cur())
    }

    /// A read as the store answered it when its revision was `cur` (with today's compaction).
    fn read_as_of(&self, q: &RangeRequest, cur: i64) -> Result<RangeResponse, MvccError> {
        if q.revision > cur {
            return Err(MvccError::FutureRevision);
        }
        let at = if q.revision <= 0 { cur } else { q.revision };
        if at < self.compacted {
            return Err(MvccError::Compacted);
        }
        Ok(self.range(&self.history[at as usize], q, cur))
    }

    fn write_put(&mut self, w: &mut State, key: &Bytes, value: &Bytes, rev: i64) {
        let prev = w.get(key).cloned();
        let kv = KeyValue {
            key: key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: value.clone(),
            lease: 0,
        };
        w.insert(key.clone(), kv.clone());
        self.events.push((EventKind::Put, kv, prev));
    }

    fn write_delete(&mut self, w: &mut State, key: &Bytes, end: &Bytes, rev: i64) -> Vec<KeyValue> {
        let gone: Vec<KeyValue> = w.values().filter(|kv| in_range(&kv.key, key, end)).cloned().collect();
        for kv in &gone {
            w.remove(&kv.key);
            let tomb = KeyValue { key: kv.key.clone(), mod_revision: rev, ..Default::default() };
            self.events.push((EventKind::Delete, tomb, Some(kv.clone())));
        }
        gone
    }

    fn commit_state(&mut self, w: State, changed: bool) {
        if changed {
            self.history.push(w);
        }
    }

    fn apply(&mut self, cmd: &Command) -> Result<Response, MvccError> {
        let cur = self.cur();
        let mut w = self.history[cur as usize].clone();
        match cmd {
            Command::Put(p) => {
                let prev = w.get(&p.key).cloned();
                self.write_put(&mut w, &p.key, &p.value, cur + 1);
                self.commit_state(w, true);
                Ok(Response::Put(PutResponse { revision: cur + 1, prev_kv: if p.prev_kv { prev } else { None } }))
            }
            Command::DeleteRange(d) => {
                let gone = self.write_delete(&mut w, &d.key, &d.range_end, cur + 1);
                let changed = !gone.is_empty();
                self.commit_state(w, changed);
                Ok(Response::DeleteRange(DeleteRangeResponse {
                    revision: if changed { cur + 1 } else { cur },
                    deleted: gone.len() as i64,
                    prev_kvs: if d.prev_kv { gone } else { Vec::new() },
                }))
            }
            Command::Compact { revision } => {
                if *revision <= self.compacted {
                    return Err(MvccError::Compacted);
                }
                if *revision > cur {
                    return Err(MvccError::FutureRevision);
                }
                self.compacted = *revision;
                Ok(Response::Compact { revision: cur })
            }
            Command::Txn(t) => self.txn(t, w),
            other => panic!("model does not do {other:?}"),
        }
    }

    fn txn(&mut self, t: &TxnRequest, mut w: State) -> Result<Response, MvccError> {
        let cur = self.cur();
        // flat txns only: duplicate check = a put key put again or inside a delete interval
        for ops in [&t.success, &t.failure] {
            let dels: Vec<_> =
                ops.iter().filter_map(|o| if let RequestOp::DeleteRange(d) = o { Some(d) } else { None }).collect();
            let mut puts = std::collections::BTreeSet::new();
            for o in ops.iter() {
                if let RequestOp::Put(p) = o {
                    // "\0" as the end: every key from `key` on (etcd PR 22395).
                    let in_del = dels.iter().any(|d| match d.range_end.as_ref() {
                        [] => d.key == p.key,
                        [0] => d.key <= p.key,
                        _ => d.key <= p.key && p.key < d.range_end,
                    });
                    if !puts.insert(p.key.clone()) || in_del {
                        return Err(MvccError::DuplicateKey);
                    }
                }
            }
        }
        let state = &self.history[cur as usize];
        let ok = t.compare.iter().all(|c| {
            let kv = state.get(&c.key);
            match (&c.target, kv) {
                (CompareTarget::Version(v), kv) => kv.map_or(0, |k| k.version) == *v,
                (CompareTarget::Value(_), None) => false,
                (CompareTarget::Value(v), Some(k)) => k.value == *v,
                _ => unreachable!(),
            }
        });
        let ops = if ok { &t.success } else { &t.failure };
        let mut changed = false;
        let mut responses = Vec::new();
        for op in ops {
            let rev_now = if changed { cur + 1 } else { cur };
            responses.push(match op {
                RequestOp::Range(q) => ResponseOp::Range(self.range(&w, q, rev_now)),
                RequestOp::Put(p) => {
                    let prev = w.get(&p.key).cloned();
                    self.write_put(&mut w, &p.key, &p.value, cur + 1);
                    changed = true;
                    ResponseOp::Put(PutResponse { revision: cur + 1, prev_kv: if p.prev_kv { prev } else { None } })
                }
                RequestOp::DeleteRange(d) => {
                    let gone = self.write_delete(&mut w, &d.key, &d.range_end, cur + 1);
                    changed |= !gone.is_empty();
                    ResponseOp::DeleteRange(DeleteRangeResponse {
                        revision: if changed { cur + 1 } else { cur },
                        deleted: gone.len() as i64,
                        prev_kvs: if d.prev_kv { gone } else { Vec::new() },
                    })
                }
                RequestOp::Txn(_) => unreachable!(),
            });
        }
        self.commit_state(w, changed);
        Ok(Response::Txn(TxnResponse { revision: self.cur(), succeeded: ok, responses }))
    }
}

/// What follows an applied command.
#[derive(Debug, Clone, Copy)]
enum Then {
    Nothing,
    /// `commit`: durable.
    Commit,
    /// `commit_buffered`: kept in memory, read from there.
    CommitBuffered,
    /// `commit_buffered` then `write_buffered`: in the backend, not yet durable.
    CommitAndWriteBuffered,
    /// `commit_in_background`: in the backend, made durable on another thread.
    CommitInBackground,
}

#[derive(Debug, Clone)]
enum Step {
    /// A command, what follows it, and whether its events read the values it replaces
    /// (`Store::set_events_prev_kv`: off while no watcher asks for them).
    Cmd(Command, Then, bool),
    Read(RangeRequest),
    Compaction(usize),
    /// Write the key index checkpoint begun at the last such step, and begin another.
    Checkpoint,
}

fn key() -> impl Strategy<Value = Bytes> {
    (0..KEYS.len()).prop_map(|i| Bytes::from_static(KEYS[i].as_bytes()))
}
fn end() -> impl Strategy<Value = Bytes> {
    prop_oneof![Just(Bytes::new()), Just(Bytes::from_static(b"\0")), key()]
}
fn value() -> impl Strategy<Value = Bytes> {
    (0u8..4).prop_map(|v| Bytes::from(vec![b'0' + v]))
}
fn put() -> impl Strategy<Value = PutRequest> {
    (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| PutRequest {
        key,
        value,
        prev_kv,
        ..Default::default()
    })
}
fn del() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest { key, range_end, prev_kv })
}
fn read(max_rev: i64) -> impl Strategy<Value = RangeRequest> {
    (key(), end(), 0..max_rev, 0i64..4).prop_map(|(key, range_end, revision, limit)| RangeRequest {
        key,
        range_end,
        revision,
        limit,
        ..Default::default()
    })
}
fn op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        put().prop_map(RequestOp::Put),
        del().prop_map(RequestOp::DeleteRange),
        read(1).prop_map(RequestOp::Range),
    ]
}
fn compare() -> impl Strategy<Value = Compare> {
    (key(), prop_oneof![(0i64..3).prop_map(CompareTarget::Version), value().prop_map(CompareTarget::Value)])
        .prop_map(|(key, target)| Compare { key, range_end: Bytes::new(), target, result: CompareResult::Equal })
}
fn step() -> impl Strategy<Value = Step> {
    let cmd = prop_oneof![
        4 => put().prop_map(Command::Put),
        2 => del().prop_map(Command::DeleteRange),
        2 => (prop::collection::vec(compare(), 0..2), prop::collection::vec(op(), 0..4), prop::collection::vec(op(), 0..3))
            .prop_map(|(compare, success, failure)| Command::Txn(TxnRequest { compare, success, failure })),
        1 => (0i64..40).prop_map(|revision| Command::Compact { revision }),
    ];
    prop_oneof![
        6 => (cmd, prop_oneof![Just(Then::Nothing), Just(Then::Commit), Just(Then::CommitBuffered), Just(Then::CommitAndWriteBuffered), Just(Then::CommitInBackground)], prop::bool::weighted(0.8))
            .prop_map(|(c, then, events_prev_kv)| Step::Cmd(c, then, events_prev_kv)),
        3 => read(40).prop_map(Step::Read),
        1 => (1usize..6).prop_map(Step::Compaction),
        1 => Just(Step::Checkpoint),
    ]
}

fn run<B: Backend>(backend: B, steps: &[Step], per_commit: usize) {
    let opts = StoreOptions { compaction_batch_per_commit: per_commit, ..Default::default() };
    let mut s = Store::open(backend, opts).unwrap();
    let mut m = Model::new();
    let mut index = 0;
    // Views taken along the way, with the revision each was taken at: every later read through
    // one must still answer as the store did then, while it applies, commits and compacts on.
    let mut views: Vec<(ReadView<B::View>, i64)> = Vec::new();
    // A key index checkpoint begun at one step (as of the durable revision) and written at the
    // next checkpoint step: the index changes, commits and compacts in between, as while a
    // background checkpoint walks it.
    let mut checkpoint: Option<IndexCheckpoint> = None;
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Cmd(cmd, then, events_prev_kv) => {
                index += 1;
                s.set_events_prev_kv(*events_prev_kv);
                let got = match s.apply(index, cmd).unwrap() {
                    ApplyOutcome::Applied(r) => r,
                    ApplyOutcome::Skipped => panic!("skipped"),
                };
                let events_before = m.events.len();
                let want = m.apply(cmd);
                assert_eq!(got, want, "step {i}: {cmd:?}");
                // With the option off, an event may still carry prev_kv when the command read it
                // anyway (a request with prev_kv); when it says it was read, it must be right.
                let events = s.take_events();
                assert!(!events_prev_kv || events.iter().all(|e| e.prev_kv_read), "step {i}: prev_kv not read");
                // Read afterwards (for a watcher that came meanwhile), prev_kv is as if read at once.
                let mut filled = events.clone();
                s.fill_prev_kv(&mut filled).unwrap();
                let filled: Vec<_> = filled.into_iter().map(|e| (e.kind, e.kv, e.prev_kv)).collect();
                assert_eq!(filled, m.events[events_before..].to_vec(), "events of step {i}, prev_kv read after");
                let read: Vec<bool> = events.iter().map(|e| e.prev_kv_read).collect();
                let got_ev: Vec<_> = events.into_iter().map(|e| (e.kind, e.kv, e.prev_kv)).collect();
                let mut want_ev = m.events[events_before..].to_vec();
                for (want, read) in want_ev.iter_mut().zip(&read) {
                    if !read {
                        want.2 = None;
                    }
                }
                assert_eq!(got_ev, want_ev, "events of step {i}");
                match then {
                    Then::Nothing => {}
                    Then::Commit => s.commit().unwrap(),
                    Then::CommitBuffered => s.commit_buffered().unwrap(),
                    Then::CommitAndWriteBuffered => {
                        s.commit_buffered().unwrap();
                        s.write_buffered().unwrap();
                    }
                    Then::CommitInBackground => s.commit_in_background().unwrap(),
                }
            }
            Step::Read(q) => {
                assert_eq!(s.range(q), m.read(q), "step {i}: {q:?}");
                // The view other threads share until the next apply must never be older.
                let shared = s.shared_read_view().unwrap();
                assert_eq!(shared.range(q), m.read(q), "step {i}: {q:?} through the shared view");
                for (view, cur) in &views {
                    assert_eq!(view.range(q), m.read_as_of(q, *cur), "step {i}: {q:?} through a view at {cur}");
                    let (through_view, store) = (view.hash_kv(0), s.hash_kv(*cur));
                    assert_eq!(through_view.map(|h| h.hash), store.map(|h| h.hash), "step {i}: hash at {cur}");
                }
                views.push((s.read_view().unwrap(), m.cur()));
                if views.len() > 3 {
                    views.remove(0);
                }
            }
            Step::Compaction(n) => {
                s.compaction_step(*n).unwrap();
            }
            Step::Checkpoint => {
                if let Some(begun) = checkpoint.take() {
                    begun.write().unwrap();
                }
                checkpoint = s.begin_index_checkpoint();
            }
        }
        assert_eq!(s.current_revision(), m.cur());
    }
    // history read back equals the events, from just above the compacted revision
    let start = m.compacted.max(1) + 1;
    let hist: Vec<_> = s.events_since(start, b"\0", b"\0").unwrap().into_iter().map(|e| (e.kind, e.kv)).collect();
    let want: Vec<_> = m.events.iter().filter(|e| e.1.mod_revision >= start).map(|e| (e.0, e.1.clone())).collect();
    assert_eq!(hist, want, "events_since({start})");
    // every readable revision, after a reopen from the committed state plus replay: with the key
    // index saved at a clean close (a file backend then loads it), or as after a crash (from the
    // last checkpoint written, if one fits, and the records after it; else rebuilt from them all)
    if let Some(begun) = checkpoint.take() {
        begun.write().unwrap();
    }
    if steps.len().is_multiple_of(2) {
        s.save_index().unwrap();
    } else {
        s.commit().unwrap();
    }
    let s = Store::open(s.into_backend(), StoreOptions::default()).unwrap();
    for rev in 0..=m.cur() + 1 {
        let q = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            revision: rev,
            ..Default::default()
        };
        assert_eq!(s.range(&q), m.read(&q), "after reopen, revision {rev}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mem_store_matches_model(steps in prop::collection::vec(step(), 1..80), per_commit in 0usize..4) {
        run(MemBackend::new(), &steps, per_commit);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn redb_store_matches_model(steps in prop::collection::vec(step(), 1..40), per_commit in 0usize..4) {
        let tmp = TempPath::new("model");
        run(RedbBackend::open(&tmp.0).unwrap(), &steps, per_commit);
    }
}
