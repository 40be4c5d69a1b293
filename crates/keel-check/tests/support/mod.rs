//! Helpers shared by the integration tests: history builders, a brute-force
//! reference checker and a generator of histories of an atomic KV store.
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use keel_check::{check_operations, CheckResult, KvInput, KvModel, KvOutput, Operation, Value};

pub type Op = Operation<KvInput, KvOutput>;

fn op(client_id: u64, input: KvInput, output: KvOutput, call: u64, ret: Option<u64>) -> Op {
    Operation { client_id, input, call, output, ret }
}

pub fn get(client: u64, key: u64, read: Option<Value>, call: u64, ret: u64) -> Op {
    op(client, KvInput::Get { key }, KvOutput::Get(read), call, Some(ret))
}

pub fn put(client: u64, key: u64, value: Value, call: u64, ret: u64) -> Op {
    op(client, KvInput::Put { key, value }, KvOutput::Put, call, Some(ret))
}

/// A put whose client timed out: it may or may not have happened.
pub fn put_unknown(client: u64, key: u64, value: Value, call: u64) -> Op {
    op(client, KvInput::Put { key, value }, KvOutput::Unknown, call, None)
}

pub fn delete(client: u64, key: u64, call: u64, ret: u64) -> Op {
    op(client, KvInput::Delete { key }, KvOutput::Delete, call, Some(ret))
}

pub fn cas(client: u64, key: u64, expected: Option<Value>, new: Value, ok: bool, call: u64, ret: u64) -> Op {
    op(client, KvInput::Cas { key, expected, new }, KvOutput::Cas { ok }, call, Some(ret))
}

/// Applies one operation to a whole multi-key store, written independently
/// of `KvModel` so that the brute-force checker is a real second opinion.
/// Returns false if the output is impossible.
pub fn apply(store: &mut BTreeMap<u64, Value>, input: &KvInput, output: &KvOutput) -> bool {
    let key = input.key();
    let current = store.get(&key).copied();
    match (input, output) {
        (KvInput::Get { .. }, KvOutput::Unknown) => true,
        (KvInput::Get { .. }, KvOutput::Get(read)) => *read == current,
        (KvInput::Put { value, .. }, KvOutput::Put | KvOutput::Unknown) => {
            store.insert(key, *value);
            true
        }
        (KvInput::Delete { .. }, KvOutput::Delete | KvOutput::Unknown) => {
            store.remove(&key);
            true
        }
        (KvInput::Cas { expected, new, .. }, KvOutput::Cas { ok }) => {
            let matches = current == *expected;
            if matches && *ok {
                store.insert(key, *new);
            }
            matches == *ok
        }
        (KvInput::Cas { expected, new, .. }, KvOutput::Unknown) => {
            if current == *expected {
                store.insert(key, *new);
            }
            true
        }
        _ => false,
    }
}

/// Brute force: is there a subset of the unknown-outcome operations and an
/// order of (known + chosen) operations that respects real time and is legal?
/// Exponential; only for a handful of operations.
pub fn brute_force_linearizable(ops: &[Op]) -> bool {
    assert!(ops.len() <= 12, "brute force is for tiny histories");
    let unknown: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_none()).collect();
    (0u32..1 << unknown.len()).any(|mask| {
        let chosen: Vec<usize> = (0..ops.len())
            .filter(|&i| match unknown.iter().position(|&u| u == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        some_order_works(ops, &chosen, &mut vec![false; ops.len()], &BTreeMap::new())
    })
}

fn some_order_works(ops: &[Op], chosen: &[usize], placed: &mut Vec<bool>, store: &BTreeMap<u64, Value>) -> bool {
    let pending: Vec<usize> = chosen.iter().copied().filter(|&i| !placed[i]).collect();
    if pending.is_empty() {
        return true;
    }
    pending.iter().any(|&next| {
        // `next` may go now unless some other pending op returned before it was called.
        let must_wait = pending.iter().any(|&other| ops[other].ret.is_some_and(|ret| ret < ops[next].call));
        if must_wait {
            return false;
        }
        let mut after = store.clone();
        if !apply(&mut after, &ops[next].input, &ops[next].output) {
            return false;
        }
        placed[next] = true;
        let works = some_order_works(ops, chosen, placed, &after);
        placed[next] = false;
        works
    })
}

/// Checks what an `Illegal` verdict promises: a non-empty failing
/// sub-history that is drawn from the input and is itself illegal, and a
/// longest prefix that is a legal, real-time-respecting partial order.
pub fn assert_well_formed_failure(ops: &[Op], result: &CheckResult<KvInput, KvOutput>) {
    let CheckResult::Illegal { failing, longest_prefix, .. } = result else {
        panic!("expected Illegal, got {result:?}");
    };
    assert!(!failing.is_empty(), "empty failing sub-history");
    for op in failing {
        assert!(ops.contains(op), "failing op {op:?} is not from the history");
    }
    assert!(
        check_operations(&KvModel, failing, None).is_illegal(),
        "the failing sub-history is linearizable: {failing:#?}"
    );

    let mut store = BTreeMap::new();
    for (position, op) in longest_prefix.iter().enumerate() {
        assert!(ops.contains(op), "prefix op {op:?} is not from the history");
        assert!(apply(&mut store, &op.input, &op.output), "longest prefix is not legal at {op:?}");
        for later in &longest_prefix[position + 1..] {
            assert!(
                later.ret.is_none_or(|ret| ret >= op.call),
                "longest prefix puts {op:?} before {later:?}, which returned before it was called"
            );
        }
    }
}

/// SplitMix64: a tiny deterministic generator, enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Shape of a generated history.
pub struct Workload {
    pub clients: u64,
    pub ops_per_client: u64,
    pub keys: u64,
    /// Percent of operations on the `hot_keys` first keys.
    pub hot_percent: u64,
    pub hot_keys: u64,
    /// Percent of operations whose client times out (outcome unknown).
    pub unknown_percent: u64,
}

/// Simulates `clients` sequential clients against an atomic KV store: every
/// operation takes effect at one instant inside its [call, ret] window (an
/// unknown-outcome one at some instant after its call, or never), and its
/// output is what the store held then. Written values are unique, so the
/// history is linearizable and a read identifies the write it observed.
pub fn atomic_history(seed: u64, w: &Workload) -> Vec<Op> {
    const TIMEOUT: u64 = 30;
    let mut rng = Rng::new(seed);
    let mut ops: Vec<Op> = Vec::new();
    // Per op: the instant it takes effect, or None if it never does.
    let mut effect_at: Vec<Option<u64>> = Vec::new();
    let mut next_value: Value = 1;
    // The latest value issued per key, to make CAS succeed now and then.
    let mut issued: HashMap<u64, Vec<Value>> = HashMap::new();

    for client in 0..w.clients {
        let mut now = rng.below(10);
        for _ in 0..w.ops_per_client {
            let key = if rng.chance(w.hot_percent) { rng.below(w.hot_keys) } else { rng.below(w.keys) };
            let roll = rng.below(100);
            let input = if roll < 40 {
                KvInput::Get { key }
            } else if roll < 70 || roll < 90 && !issued.contains_key(&key) {
                next_value += 1;
                issued.entry(key).or_default().push(next_value);
                KvInput::Put { key, value: next_value }
            } else if roll < 80 {
                KvInput::Delete { key }
            } else {
                let history = issued.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                let expected = match rng.below(4) {
                    0 => None,
                    1 if !history.is_empty() => Some(history[rng.below(history.len() as u64) as usize]),
                    _ => history.last().copied(),
                };
                next_value += 1;
                issued.entry(key).or_default().push(next_value);
                KvInput::Cas { key, expected, new: next_value }
            };

            let call = now;
            if rng.chance(w.unknown_percent) {
                // The request may still be applied long after the client gave up.
                let effect = rng.chance(50).then(|| call + rng.below(3 * TIMEOUT));
                ops.push(Operation { client_id: client, input, call, output: KvOutput::Unknown, ret: None });
                effect_at.push(effect);
                now = call + TIMEOUT + rng.below(5);
            } else {
                let ret = call + rng.below(20);
                ops.push(Operation {
                    client_id: client,
                    input,
                    call,
                    output: KvOutput::Unknown, // filled in below
                    ret: Some(ret),
                });
                effect_at.push(Some(call + rng.below(ret - call + 1)));
                // May equal `ret`: the checker treats that as concurrent,
                // which is consistent with effects inside closed windows.
                now = ret + rng.below(3);
            }
        }
    }

    let mut order: Vec<(u64, usize)> =
        effect_at.iter().enumerate().filter_map(|(i, at)| at.map(|at| (at, i))).collect();
    order.sort_unstable();
    let mut store = BTreeMap::new();
    for (_, i) in order {
        let key = ops[i].input.key();
        let current = store.get(&key).copied();
        let output = match ops[i].input {
            KvInput::Get { .. } => KvOutput::Get(current),
            KvInput::Put { value, .. } => {
                store.insert(key, value);
                KvOutput::Put
            }
            KvInput::Delete { .. } => {
                store.remove(&key);
                KvOutput::Delete
            }
            KvInput::Cas { expected, new, .. } => {
                let ok = current == expected;
                if ok {
                    store.insert(key, new);
                }
                KvOutput::Cas { ok }
            }
        };
        if ops[i].ret.is_some() {
            ops[i].output = output;
        }
    }
    ops
}
