//! The simulator's state machine: a tiny KV store of u64 keys and values, with the operations
//! the linearizability checker models (get, put, delete, compare-and-set).

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_check::{KvInput, KvOutput};
use keel_node::StateMachine;
use keel_raft::Index;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CAS: u8 = 3;
const TAG_GET: u8 = 4;

fn push_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// Encodes a client operation as a command (writes) or a query (reads).
pub fn encode(input: &KvInput) -> Bytes {
    let mut out = Vec::with_capacity(26);
    match *input {
        KvInput::Put { key, value } => {
            out.push(TAG_PUT);
            push_u64(&mut out, key);
            push_u64(&mut out, value);
        }
        KvInput::Delete { key } => {
            out.push(TAG_DELETE);
            push_u64(&mut out, key);
        }
        KvInput::Cas { key, expected, new } => {
            out.push(TAG_CAS);
            push_u64(&mut out, key);
            out.push(expected.is_some() as u8);
            push_u64(&mut out, expected.unwrap_or(0));
            push_u64(&mut out, new);
        }
        KvInput::Get { key } => {
            out.push(TAG_GET);
            push_u64(&mut out, key);
        }
    }
    Bytes::from(out)
}

/// Turns a machine's result bytes back into the checker's output for `input`.
pub fn decode_output(input: &KvInput, result: &[u8]) -> Option<KvOutput> {
    Some(match input {
        KvInput::Put { .. } => KvOutput::Put,
        KvInput::Delete { .. } => KvOutput::Delete,
        KvInput::Cas { .. } => KvOutput::Cas { ok: *result.first()? == 1 },
        KvInput::Get { .. } => KvOutput::Get(if *result.first()? == 1 { Some(read_u64(result, 1)?) } else { None }),
    })
}

#[derive(Clone, Debug, Default)]
pub struct KvMachine {
    pub data: BTreeMap<u64, u64>,
    /// (index, command hash) of every command applied since the last drain: the simulator
    /// checks that every member applies the same command at each index.
    pub applied: Vec<(Index, u64)>,
    /// The last index whose command is in `data`.
    pub applied_index: Index,
    /// Set for a machine that keeps its state on disk, as keel's etcd machine does on redb.
    pub persistence: Option<Persistence>,
}

/// What a persistent machine holds durably: survives its member's crashes (the simulator keeps
/// the other end of the handle).
#[derive(Clone, Debug, Default)]
pub struct KvDisk {
    pub index: Index,
    pub data: BTreeMap<u64, u64>,
}

/// A persistent machine writes its state durably at every `every`-th flush only (the server's
/// store commits durably every 100 ms, not at every apply): after a crash it is back at the last
/// durable write, behind what it had applied, and the log must still hold what comes after.
#[derive(Clone, Debug)]
pub struct Persistence {
    pub disk: std::sync::Arc<std::sync::Mutex<KvDisk>>,
    pub every: u32,
    flushes: u32,
}

impl KvMachine {
    /// A persistent machine, started from what its disk holds.
    pub fn persistent(disk: std::sync::Arc<std::sync::Mutex<KvDisk>>, every: u32) -> KvMachine {
        let (index, data) = {
            let held = disk.lock().expect("machine disk");
            (held.index, held.data.clone())
        };
        KvMachine {
            data,
            applied: Vec::new(),
            applied_index: index,
            persistence: Some(Persistence { disk, every: every.max(1), flushes: 0 }),
        }
    }

    fn write_durably(&mut self) {
        if let Some(persistence) = &self.persistence {
            let mut disk = persistence.disk.lock().expect("machine disk");
            disk.index = self.applied_index;
            disk.data = self.data.clone();
        }
    }
}

pub fn hash_bytes(data: &[u8]) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher's keys.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in data {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

impl StateMachine for KvMachine {
    type Response = Bytes;
    type Query = Bytes;
    type QueryResult = Bytes;

    fn apply(&mut self, index: Index, data: &Bytes) -> Bytes {
        self.applied.push((index, hash_bytes(data)));
        if index <= self.applied_index {
            // Already in the state (restored from disk or from a newer snapshot): as keel's
            // store does, skip it; its answer is unknown.
            return Bytes::from_static(crate::machine::SKIPPED);
        }
        self.applied_index = index;
        let key = read_u64(data, 1);
        match (data.first().copied(), key) {
            (Some(TAG_PUT), Some(key)) => {
                if let Some(value) = read_u64(data, 9) {
                    self.data.insert(key, value);
                }
                Bytes::new()
            }
            (Some(TAG_DELETE), Some(key)) => {
                self.data.remove(&key);
                Bytes::new()
            }
            (Some(TAG_CAS), Some(key)) => {
                let expected = match (data.get(9), read_u64(data, 10)) {
                    (Some(1), Some(value)) => Some(value),
                    _ => None,
                };
                let Some(new) = read_u64(data, 18) else { return Bytes::from_static(&[0]) };
                if self.data.get(&key).copied() == expected {
                    self.data.insert(key, new);
                    Bytes::from_static(&[1])
                } else {
                    Bytes::from_static(&[0])
                }
            }
            _ => Bytes::new(), // malformed commands are deterministic no-ops
        }
    }

    fn query(&self, query: &Bytes) -> Bytes {
        match (query.first().copied(), read_u64(query, 1)) {
            (Some(TAG_GET), Some(key)) => match self.data.get(&key) {
                Some(value) => {
                    let mut out = vec![1];
                    push_u64(&mut out, *value);
                    Bytes::from(out)
                }
                None => Bytes::from_static(&[0]),
            },
            _ => Bytes::new(),
        }
    }

    fn apply_empty(&mut self, index: Index) {
        self.applied_index = self.applied_index.max(index);
    }

    fn flush(&mut self) {
        let Some(persistence) = self.persistence.as_mut() else { return };
        persistence.flushes += 1;
        if persistence.flushes.is_multiple_of(persistence.every) {
            self.write_durably();
        }
    }

    fn durable_index(&self) -> Option<Index> {
        self.persistence.as_ref().map(|p| p.disk.lock().expect("machine disk").index)
    }

    fn snapshot(&mut self, _: Index) -> Result<Bytes, String> {
        let mut out = Vec::with_capacity(8 + self.data.len() * 16);
        push_u64(&mut out, self.applied_index);
        for (key, value) in &self.data {
            push_u64(&mut out, *key);
            push_u64(&mut out, *value);
        }
        Ok(Bytes::from(out))
    }

    fn restore(&mut self, data: &Bytes) {
        self.data.clear();
        self.applied_index = read_u64(data, 0).unwrap_or(0);
        for chunk in data.get(8..).unwrap_or_default().chunks_exact(16) {
            let key = read_u64(chunk, 0).expect("16-byte chunk");
            let value = read_u64(chunk, 8).expect("16-byte chunk");
            self.data.insert(key, value);
        }
        // A persistent machine replaces its store durably before it is used (as redb does).
        self.write_durably();
    }
}
