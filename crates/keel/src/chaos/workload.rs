//! The chaos workload: clients doing get, put and compare-and-set on a small key space through
//! the etcd API, so operations conflict, each recorded with its invocation and completion time
//! for keel-check.
//!
//! Values are unique (client id and a counter), written as decimal strings. A write whose
//! answer did not come (an error, a timeout) may or may not have happened: it is recorded with
//! an unknown outcome. A read that failed changed nothing and is left out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::etcdserverpb as pb;
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::tonic::transport::{Channel, Endpoint};
use keel_check::{KvInput, KvOutput, Operation};
use keel_raft::SplitMix64;

use crate::local_cluster::PORTS;

/// One client request gives up after this long (its outcome then is unknown).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that got an error waits this long and tries the next member; each further error in
/// a row doubles the wait, up to [`BACKOFF_MAX`]. (Retrying every 20 ms through a 30-second
/// outage left tens of thousands of writes of unknown outcome, each of which the checker must
/// try everywhere after its call: a 10-minute history could not be checked in 5 minutes.)
const BACKOFF: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub type Op = Operation<KvInput, KvOutput>;

/// What the clients recorded.
pub struct Recorder {
    pub start: Instant,
    ops: Mutex<Vec<Op>>,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// The latest invocation time of a write that was acknowledged.
    last_write_acked_call: AtomicU64,
    stop: AtomicBool,
}

impl Recorder {
    pub fn new(start: Instant) -> Arc<Recorder> {
        Arc::new(Recorder {
            start,
            ops: Mutex::new(Vec::new()),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_write_acked_call: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    pub fn record(&self, op: Op) {
        if op.ret.is_some() && !matches!(op.input, KvInput::Get { .. }) {
            self.last_write_acked_call.fetch_max(op.call, Relaxed);
        }
        self.ops.lock().expect("history lock").push(op);
    }

    /// Whether a write sent at `since_us` or later has been acknowledged.
    pub fn served_since(&self, since_us: u64) -> bool {
        self.last_write_acked_call.load(Relaxed) >= since_us
    }

    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().expect("history lock"))
    }
}

pub fn key_name(key: u64) -> Vec<u8> {
    format!("chaos/r/{key:03}").into_bytes()
}

fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

pub fn client_to(member: usize) -> anyhow::Result<KvClient<Channel>> {
    client_with_timeout(member, REQUEST_TIMEOUT)
}

fn client_with_timeout(member: usize, timeout: Duration) -> anyhow::Result<KvClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", PORTS[member].0))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy();
    Ok(KvClient::new(channel))
}

/// One request, answered or not: `None` when the outcome is unknown.
pub async fn execute(client: &mut KvClient<Channel>, input: &KvInput) -> Option<KvOutput> {
    execute_within(client, input, REQUEST_TIMEOUT).await
}

async fn execute_within(client: &mut KvClient<Channel>, input: &KvInput, timeout: Duration) -> Option<KvOutput> {
    let request = async {
        match *input {
            KvInput::Get { key } => {
                let response =
                    client.range(pb::RangeRequest { key: key_name(key), ..Default::default() }).await.ok()?;
                let value = response.into_inner().kvs.first().and_then(|kv| parse_value(&kv.value));
                Some(KvOutput::Get(value))
            }
            KvInput::Put { key, value } => {
                let put =
                    pb::PutRequest { key: key_name(key), value: value.to_string().into_bytes(), ..Default::default() };
                client.put(put).await.ok()?;
                Some(KvOutput::Put)
            }
            KvInput::Delete { key } => {
                client.delete_range(pb::DeleteRangeRequest { key: key_name(key), ..Default::default() }).await.ok()?;
                Some(KvOutput::Delete)
            }
            KvInput::Cas { key, expected, new } => {
                let compare = match expected {
                    Some(value) => pb::Compare {
                        key: key_name(key),
                        target: pb::compare::CompareTarget::Value as i32,
                        result: pb::compare::CompareResult::Equal as i32,
                        target_union: Some(pb::compare::TargetUnion::Value(value.to_string().into_bytes())),
                        ..Default::default()
                    },
                    None => pb::Compare {
                        key: key_name(key),
                        target: pb::compare::CompareTarget::Create as i32,
                        result: pb::compare::CompareResult::Equal as i32,
                        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                        ..Default::default()
                    },
                };
                let put = pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: key_name(key),
                        value: new.to_string().into_bytes(),
                        ..Default::default()
                    })),
                };
                let txn = pb::TxnRequest { compare: vec![compare], success: vec![put], failure: Vec::new() };
                let response = client.txn(txn).await.ok()?;
                Some(KvOutput::Cas { ok: response.into_inner().succeeded })
            }
        }
    };
    tokio::time::timeout(timeout + Duration::from_millis(100), request).await.ok().flatten()
}

/// The client id of the probe.
pub const PROBE_CLIENT: u64 = 999_999;
/// A probe write gives up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Pause between probe writes.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// Writes to its own key (`probe_key`) through each member in turn, each with a short timeout,
/// so the first write a cluster can take after a fault is seen within a few tens of
/// milliseconds (the workload's clients may be stuck in requests sent before the fault).
/// Recorded in the history like any client.
pub async fn probe(recorder: Arc<Recorder>, probe_key: u64) -> anyhow::Result<()> {
    let mut clients = [
        client_with_timeout(0, PROBE_TIMEOUT)?,
        client_with_timeout(1, PROBE_TIMEOUT)?,
        client_with_timeout(2, PROBE_TIMEOUT)?,
    ];
    let mut n = 0u64;
    while !recorder.stop.load(Relaxed) {
        n += 1;
        let input = KvInput::Put { key: probe_key, value: (PROBE_CLIENT << 32) | n };
        let call = recorder.now_us();
        let output = execute_within(&mut clients[(n % 3) as usize], &input, PROBE_TIMEOUT).await;
        record(&recorder, PROBE_CLIENT, input, call, output);
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok(())
}

/// Records `input`'s outcome: a failed read is left out, a failed write has an unknown one.
pub fn record(recorder: &Recorder, client_id: u64, input: KvInput, call: u64, output: Option<KvOutput>) {
    let ret = recorder.now_us();
    match output {
        Some(output) => {
            recorder.completed.fetch_add(1, Relaxed);
            recorder.record(Op { client_id, input, call, output, ret: Some(ret) });
        }
        None => {
            recorder.failed.fetch_add(1, Relaxed);
            if !matches!(input, KvInput::Get { .. }) {
                recorder.record(Op { client_id, input, call, output: KvOutput::Unknown, ret: None });
            }
        }
    }
}

/// One client until the recorder stops: random operations on `keys` keys, starting at member
/// `client_id % 3` and moving to the next member after an error.
pub async fn client(recorder: Arc<Recorder>, client_id: u64, seed: u64, keys: u64) -> anyhow::Result<()> {
    let mut rng = SplitMix64::new(seed ^ client_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut clients = [client_to(0)?, client_to(1)?, client_to(2)?];
    let mut target = (client_id % 3) as usize;
    let mut counter = 0u64;
    let mut failures = 0u32;
    // The last value this client saw per key: compare-and-set expects it (often stale).
    let mut seen: Vec<Option<u64>> = vec![None; keys as usize];
    while !recorder.stop.load(Relaxed) {
        let key = rng.range(0, keys);
        counter += 1;
        let value = (client_id << 32) | counter;
        let input = match rng.range(0, 10) {
            0..=3 => KvInput::Get { key },
            4..=6 => KvInput::Put { key, value },
            _ => KvInput::Cas { key, expected: seen[key as usize], new: value },
        };
        let call = recorder.now_us();
        let output = execute(&mut clients[target], &input).await;
        match (&input, &output) {
            (KvInput::Get { .. }, Some(KvOutput::Get(read))) => seen[key as usize] = *read,
            (KvInput::Put { value, .. }, Some(_)) => seen[key as usize] = Some(*value),
            (KvInput::Cas { new, .. }, Some(KvOutput::Cas { ok: true })) => seen[key as usize] = Some(*new),
            _ => {}
        }
        let failed = output.is_none();
        record(&recorder, client_id, input, call, output);
        if failed {
            target = (target + 1) % 3;
            tokio::time::sleep((BACKOFF * (1 << failures.min(6))).min(BACKOFF_MAX)).await;
            failures += 1;
        } else {
            failures = 0;
        }
    }
    Ok(())
}

/// Acknowledged writes that the final reads no longer show: for each key, the final value must
/// come from a write that was not over before some acknowledged write began (anything older
/// was overwritten by that acknowledged write, or the write was lost). Returns a description of
/// each key that breaks this.
pub fn lost_writes(ops: &[Op], finals: &[(u64, Option<u64>)]) -> Vec<String> {
    let mut lost = Vec::new();
    for &(key, final_value) in finals {
        let writes: Vec<&Op> = ops
            .iter()
            .filter(|op| op.input.key() == key)
            .filter(|op| match (&op.input, &op.output) {
                (KvInput::Put { .. }, _) => true,
                (KvInput::Cas { .. }, KvOutput::Cas { ok }) => *ok,
                (KvInput::Cas { .. }, KvOutput::Unknown) => true,
                _ => false,
            })
            .collect();
        let acked_start = writes.iter().filter(|w| w.ret.is_some()).map(|w| w.call).max();
        let Some(acked_start) = acked_start else { continue };
        let written = |w: &&Op| match w.input {
            KvInput::Put { value, .. } => Some(value),
            KvInput::Cas { new, .. } => Some(new),
            _ => None,
        };
        let candidates: Vec<u64> =
            writes.iter().filter(|w| w.ret.is_none_or(|ret| ret >= acked_start)).filter_map(written).collect();
        if !final_value.is_some_and(|v| candidates.contains(&v)) {
            lost.push(format!(
                "key {key}: the final value is {final_value:?}, not one of the latest writes {candidates:?}"
            ));
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: u64, value: u64, call: u64, ret: Option<u64>) -> Op {
        let output = if ret.is_some() { KvOutput::Put } else { KvOutput::Unknown };
        Op { client_id: 0, input: KvInput::Put { key, value }, call, output, ret }
    }

    #[test]
    fn the_final_value_must_come_from_the_latest_writes() {
        // 1 is acknowledged, then 2 starts and is acknowledged: 1 was overwritten.
        let ops = vec![put(7, 1, 0, Some(10)), put(7, 2, 20, Some(30)), put(7, 3, 25, None)];
        assert!(lost_writes(&ops, &[(7, Some(2))]).is_empty());
        assert!(lost_writes(&ops, &[(7, Some(3))]).is_empty(), "an unknown write may have landed last");
        assert_eq!(lost_writes(&ops, &[(7, Some(1))]).len(), 1, "an overwritten value came back");
        assert_eq!(lost_writes(&ops, &[(7, None)]).len(), 1, "acknowledged writes vanished");
    }
}
