//! The state machine a simulated member runs: the toy [`KvMachine`] (in memory, or persistent),
//! or the server's own etcd machine (`keel_machine::MvccMachine`, keel-mvcc on a memory backend)
//! — the same apply, snapshot, restore and durable-index code the server runs on redb.
//!
//! The clients speak the checker's tiny KV language; for the etcd machine each operation is
//! encoded as the etcd command the server would propose (a put, a delete, a compare-and-swap txn,
//! a range) and its etcd response is read back into the checker's answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keel_check::KvInput;
use keel_machine::{Applied, MvccMachine};
use keel_mvcc::{
    Command, Compare, CompareResult, CompareTarget, MemBackend, PutRequest, RangeRequest, RequestOp, Response, Store,
    StoreOptions, TxnRequest,
};
use keel_node::StateMachine;
use keel_raft::Index;

use crate::kv::{self, hash_bytes, KvDisk, KvMachine};

/// What a machine answers for an entry it skipped because its state already held it (restored
/// from its disk, or from a snapshot newer than the log position): the effect is in the state,
/// but the answer is unknown.
pub const SKIPPED: &[u8] = &[0xff];

/// Where [`SimMachine::state`] puts the auth store (clients write only `k....` keys).
const AUTH_STATE_KEY: &[u8] = b"\xffauth";

/// What an etcd machine holds durably: the memory backend as of its last durable commit (a
/// clone of a memory backend is exactly its committed state). Survives the member's crashes.
pub type EtcdDisk = Arc<Mutex<Option<MemBackend>>>;

pub enum SimMachine {
    Kv(KvMachine),
    Etcd(Box<EtcdMachine>),
}

pub struct EtcdMachine {
    inner: MvccMachine<MemBackend>,
    applied: Vec<(Index, u64)>,
    disk: EtcdDisk,
    durable_seen: Index,
}

fn key_bytes(key: u64) -> Bytes {
    Bytes::copy_from_slice(format!("k{key:04}").as_bytes())
}

fn value_bytes(value: u64) -> Bytes {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

/// The etcd command (or, for a get, the range) a client operation becomes.
pub fn encode_etcd(input: &KvInput) -> Bytes {
    let command = match *input {
        KvInput::Put { key, value } => {
            Command::Put(PutRequest { key: key_bytes(key), value: value_bytes(value), ..Default::default() })
        }
        KvInput::Delete { key } => Command::DeleteRange(keel_mvcc::DeleteRangeRequest {
            key: key_bytes(key),
            range_end: Bytes::new(),
            prev_kv: false,
        }),
        KvInput::Cas { key, expected, new } => {
            let compare = match expected {
                Some(value) => Compare {
                    key: key_bytes(key),
                    range_end: Bytes::new(),
                    target: CompareTarget::Value(value_bytes(value)),
                    result: CompareResult::Equal,
                },
                // Absent: etcd's idiom, create revision 0.
                None => Compare {
                    key: key_bytes(key),
                    range_end: Bytes::new(),
                    target: CompareTarget::Create(0),
                    result: CompareResult::Equal,
                },
            };
            let put = PutRequest { key: key_bytes(key), value: value_bytes(new), ..Default::default() };
            Command::Txn(TxnRequest { compare: vec![compare], success: vec![RequestOp::Put(put)], failure: vec![] })
        }
        // Reads are queries, not commands: the key alone, decoded by `query`.
        KvInput::Get { key } => return key_bytes(key),
    };
    Bytes::from(command.encode())
}

impl EtcdMachine {
    /// Starts from what `disk` holds (nothing, for a new member), durable every `every` flushes.
    pub fn open(disk: EtcdDisk, every: u32, plants: keel_raft::Plants) -> EtcdMachine {
        let backend = disk.lock().expect("etcd disk").clone().unwrap_or_default();
        let store = Store::open(backend, StoreOptions::default()).expect("a memory backend's committed state opens");
        let durable_seen = store.durable_applied_index();
        let inner = MvccMachine::with_durable_every(store, every).with_plants(plants);
        EtcdMachine { inner, applied: Vec::new(), disk, durable_seen }
    }

    /// Copies the backend to the disk whenever the store made more durable.
    fn sync_disk(&mut self) {
        let durable = self.inner.store().durable_applied_index();
        if durable != self.durable_seen {
            self.durable_seen = durable;
            *self.disk.lock().expect("etcd disk") = Some(self.inner.store().backend().clone());
        }
    }

    /// The keys, and the auth store under a key no client writes: members must agree on both.
    fn state(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let all =
            RangeRequest { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0"), ..Default::default() };
        let mut state: BTreeMap<Vec<u8>, Vec<u8>> = match self.inner.store().range(&all) {
            Ok(response) => response.kvs.into_iter().map(|kv| (kv.key.to_vec(), kv.value.to_vec())).collect(),
            Err(_) => BTreeMap::new(),
        };
        state.insert(AUTH_STATE_KEY.to_vec(), self.inner.auth().lock().encode());
        state
    }
}

impl SimMachine {
    /// Command hashes of every entry applied since the last call (for state-machine safety).
    pub fn take_applied(&mut self) -> Vec<(Index, u64)> {
        match self {
            SimMachine::Kv(m) => std::mem::take(&mut m.applied),
            SimMachine::Etcd(m) => std::mem::take(&mut m.applied),
        }
    }

    /// The visible data, comparable across members.
    pub fn state(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        match self {
            SimMachine::Kv(m) => {
                m.data.iter().map(|(k, v)| (k.to_le_bytes().to_vec(), v.to_le_bytes().to_vec())).collect()
            }
            SimMachine::Etcd(m) => m.state(),
        }
    }

    /// The last index the machine's state holds.
    pub fn applied_index(&self) -> Index {
        match self {
            SimMachine::Kv(m) => m.applied_index,
            SimMachine::Etcd(m) => m.inner.store().applied_index(),
        }
    }

    /// A client operation as this machine's command or query. With `as_root`, an etcd command
    /// carries the user root, as the server's do while auth is on, so it is checked as it applies
    /// (root's role allows everything: the answers do not change, only the path they take).
    pub fn encode(etcd: bool, as_root: bool, input: &KvInput) -> Bytes {
        match (etcd, input) {
            (false, _) => kv::encode(input),
            (true, KvInput::Get { .. }) => encode_etcd(input),
            // A revision no store reaches: root's requests are never refused as stale.
            (true, _) if as_root => Bytes::from(keel_machine::wrap("root", u64::MAX, &encode_etcd(input))),
            (true, _) => encode_etcd(input),
        }
    }
}

impl StateMachine for SimMachine {
    type Response = Bytes;
    type Query = Bytes;
    type QueryResult = Bytes;

    fn apply(&mut self, index: Index, data: &Bytes) -> Bytes {
        let m = match self {
            SimMachine::Kv(m) => return m.apply(index, data),
            SimMachine::Etcd(m) => m,
        };
        m.applied.push((index, hash_bytes(data)));
        match m.inner.apply(index, data) {
            Ok(Applied::Kv(Response::Txn(txn))) => Bytes::from(vec![u8::from(txn.succeeded)]),
            Ok(_) => Bytes::new(),
            Err(keel_machine::ApplyError::AlreadyApplied) => Bytes::from_static(SKIPPED),
            // A client error is an answer like any other (none of the sim's commands has one).
            Err(error) => Bytes::from(format!("{error:?}").into_bytes()),
        }
    }

    fn apply_empty(&mut self, index: Index) {
        match self {
            SimMachine::Kv(m) => m.apply_empty(index),
            SimMachine::Etcd(m) => m.inner.apply_empty(index),
        }
    }

    fn apply_conf_change(&mut self, index: Index, context: &[u8]) {
        match self {
            SimMachine::Kv(m) => m.apply_conf_change(index, context),
            SimMachine::Etcd(m) => {
                m.applied.push((index, hash_bytes(context)));
                m.inner.apply_conf_change(index, context)
            }
        }
    }

    fn flush(&mut self) {
        match self {
            SimMachine::Kv(m) => m.flush(),
            SimMachine::Etcd(m) => {
                m.inner.flush();
                m.sync_disk();
            }
        }
    }

    fn query(&self, query: &Bytes) -> Bytes {
        let m = match self {
            SimMachine::Kv(m) => return m.query(query),
            SimMachine::Etcd(m) => m,
        };
        let range = RangeRequest { key: query.clone(), ..Default::default() };
        match m.inner.query(&range).run() {
            Ok(response) => match response.kvs.first() {
                Some(kv) => {
                    let mut out = vec![1];
                    out.extend_from_slice(&kv.value);
                    Bytes::from(out)
                }
                None => Bytes::from_static(&[0]),
            },
            Err(_) => Bytes::new(),
        }
    }

    fn snapshot(&mut self, at_least: Index) -> Result<Bytes, String> {
        match self {
            SimMachine::Kv(m) => m.snapshot(at_least),
            SimMachine::Etcd(m) => m.inner.snapshot(at_least),
        }
    }

    fn restore(&mut self, data: &Bytes) {
        match self {
            SimMachine::Kv(m) => m.restore(data),
            SimMachine::Etcd(m) => {
                m.inner.restore(data);
                // A restore replaces the store durably (as redb's does).
                m.sync_disk();
            }
        }
    }

    fn durable_index(&self) -> Option<Index> {
        match self {
            SimMachine::Kv(m) => m.durable_index(),
            SimMachine::Etcd(m) => m.inner.durable_index(),
        }
    }
}

/// The crash-surviving state of one group's machine on one member.
#[derive(Clone, Debug, Default)]
pub struct MachineDisk {
    pub kv: Arc<Mutex<KvDisk>>,
    pub etcd: EtcdDisk,
}
