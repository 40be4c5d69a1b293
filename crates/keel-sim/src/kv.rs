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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvMachine {
    pub data: BTreeMap<u64, u64>,
    /// (index, command hash) of every command applied since the last drain: the simulator
    /// checks that every member applies the same command at each index.
    pub applied: Vec<(Index, u64)>,
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

    fn snapshot(&self) -> Result<Bytes, String> {
        let mut out = Vec::with_capacity(self.data.len() * 16);
        for (key, value) in &self.data {
            push_u64(&mut out, *key);
            push_u64(&mut out, *value);
        }
        Ok(Bytes::from(out))
    }

    fn restore(&mut self, data: &Bytes) {
        self.data.clear();
        for chunk in data.chunks_exact(16) {
            let key = read_u64(chunk, 0).expect("16-byte chunk");
            let value = read_u64(chunk, 8).expect("16-byte chunk");
            self.data.insert(key, value);
        }
    }
}
