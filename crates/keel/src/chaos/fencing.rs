//! The lock workload: clients take a lease-backed lock and, holding it, write to a resource that
//! rejects stale fencing tokens (Kleppmann's fencing, as a store-side compare).
//!
//! A client grants a lease, takes the lock key with it if nobody holds it (a transaction on its
//! create revision), and uses the revision its lock was created at as its fencing token: a later
//! holder always has a larger one. Holding the lock, it writes the resource in a transaction
//! that succeeds only if the fence (the highest token written so far, zero-padded so string
//! order is number order) is not above its own, and raises the fence to it. A holder whose lease
//! ran out during a fault (a pause, a partition) may still believe it holds the lock; the fence
//! is what keeps its late write out.
//!
//! The check: ordered by the revision the store gave them, the tokens of the accepted writes
//! never go down. A store that let a stale token through (a lost compare, a stale read inside a
//! transaction) breaks it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::etcdserverpb as pb;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::tonic::transport::{Channel, Endpoint};

use super::workload::Recorder;
use crate::local_cluster::PORTS;

const LOCK_KEY: &[u8] = b"chaos/lock";
const FENCE_KEY: &[u8] = b"chaos/fence";
const RESOURCE_KEY: &[u8] = b"chaos/fenced-resource";
/// Seconds a lock's lease lives: short, so holders lose it during faults.
const LEASE_TTL: i64 = 2;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// A write the resource accepted.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub token: i64,
    /// The revision of the accepting transaction.
    pub revision: i64,
    pub client: u64,
}

/// What the lock clients saw.
#[derive(Default)]
pub struct Fencing {
    pub accepted: Mutex<Vec<Accepted>>,
    pub rejected_stale: std::sync::atomic::AtomicU64,
    pub acquisitions: std::sync::atomic::AtomicU64,
}

fn channel(member: usize) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{}", PORTS[member].0))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy())
}

fn padded(token: i64) -> Vec<u8> {
    format!("{token:020}").into_bytes()
}

fn put(key: &[u8], value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// One lock client until the recorder stops.
pub async fn client(recorder: Arc<Recorder>, fencing: Arc<Fencing>, client_id: u64) -> anyhow::Result<()> {
    let mut member = (client_id % 3) as usize;
    let mut round = 0u64;
    while !recorder.stopped() {
        round += 1;
        if hold_once(&fencing, client_id, member, round).await.is_err() {
            member = (member + 1) % 3;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Takes the lock (or finds it taken), writes the resource a few times while holding it, and
/// lets it go. An error (an unreachable member) ends the round.
async fn hold_once(fencing: &Fencing, client_id: u64, member: usize, round: u64) -> anyhow::Result<()> {
    let mut kv = pb::kv_client::KvClient::new(channel(member)?);
    let mut leases = LeaseClient::new(channel(member)?);
    let lease = leases.lease_grant(pb::LeaseGrantRequest { ttl: LEASE_TTL, id: 0 }).await?.into_inner().id;
    let take = pb::TxnRequest {
        compare: vec![pb::Compare {
            key: LOCK_KEY.to_vec(),
            target: pb::compare::CompareTarget::Create as i32,
            result: pb::compare::CompareResult::Equal as i32,
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![put(LOCK_KEY, format!("{client_id}/{round}").into_bytes(), lease)],
        failure: Vec::new(),
    };
    let taken = kv.txn(take).await?.into_inner();
    if !taken.succeeded {
        let _ = leases.lease_revoke(pb::LeaseRevokeRequest { id: lease }).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        return Ok(());
    }
    fencing.acquisitions.fetch_add(1, Relaxed);
    let token = taken.header.map_or(0, |h| h.revision);
    for write in 0..3 {
        let fenced = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: FENCE_KEY.to_vec(),
                target: pb::compare::CompareTarget::Value as i32,
                // The fence is not above our token: fence <= token, i.e. not (fence > token).
                result: pb::compare::CompareResult::Greater as i32,
                target_union: Some(pb::compare::TargetUnion::Value(padded(token))),
                ..Default::default()
            }],
            // Compare "fence > token" holds: stale; otherwise (or no fence yet) write.
            success: Vec::new(),
            failure: vec![
                put(FENCE_KEY, padded(token), 0),
                put(RESOURCE_KEY, format!("{client_id}/{round}/{write}").into_bytes(), 0),
            ],
        };
        let response = kv.txn(fenced).await?.into_inner();
        if response.succeeded {
            fencing.rejected_stale.fetch_add(1, Relaxed);
            break;
        }
        let revision = response.header.map_or(0, |h| h.revision);
        fencing.accepted.lock().expect("fencing lock").push(Accepted { token, revision, client: client_id });
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let _ = leases.lease_revoke(pb::LeaseRevokeRequest { id: lease }).await;
    Ok(())
}

/// Accepted writes whose token is below an earlier accepted one (by store revision).
pub fn breaches(accepted: &[Accepted]) -> Vec<String> {
    let mut sorted = accepted.to_vec();
    sorted.sort_by_key(|a| a.revision);
    let mut highest: Option<Accepted> = None;
    let mut out = Vec::new();
    for a in sorted {
        match highest {
            Some(h) if a.token < h.token => out.push(format!(
                "client {} wrote with token {} at revision {} after client {} wrote with token {} at revision {}",
                a.client, a.token, a.revision, h.client, h.token, h.revision
            )),
            _ => highest = Some(a),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_with_a_token_below_an_earlier_accepted_one_is_a_breach() {
        let a = |token, revision| Accepted { token, revision, client: 1 };
        assert!(breaches(&[a(5, 10), a(5, 11), a(9, 12)]).is_empty());
        assert_eq!(breaches(&[a(9, 12), a(5, 13)]).len(), 1);
        assert!(breaches(&[a(9, 13), a(5, 12)]).is_empty(), "ordered by revision, not by arrival");
    }
}
