//! etcd's Lock and Election services on a real keel cluster, through `etcd-client`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Cluster};
use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_holders_exclude_each_other_and_fencing_tokens_increase() {
    let cluster = Cluster::start("lock", 3);
    let probe = cluster.client(0).await;
    eventually("cluster answers", || {
        let mut c = probe.clone();
        async move { c.put("/ready", "", None).await }
    })
    .await;
    let inside = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut client = cluster.client(t % 3).await;
        let (inside, entries) = (inside.clone(), entries.clone());
        tasks.push(tokio::spawn(async move {
            let lease = client.lease_grant(30, None).await.expect("grant").id();
            let mut tokens = Vec::new();
            for _ in 0..3 {
                let locked =
                    client.lock("/locks/counter", Some(LockOptions::new().with_lease(lease))).await.expect("lock");
                let token = locked.header().expect("header").revision();
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                entries.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.store(false, Ordering::SeqCst);
                client.unlock(locked.key().to_vec()).await.expect("unlock");
                tokens.push(token);
            }
            tokens
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.extend(task.await.expect("task"));
    }
    assert_eq!(entries.load(Ordering::SeqCst), 12);
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 12, "every hold has its own fencing token (the lock key's revision)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_expired_is_never_told_it_holds_the_lock() {
    let cluster = Cluster::start("lockexpiry", 3);
    let mut holder = cluster.client(0).await;
    let long = eventually("grant", || {
        let mut c = holder.clone();
        async move { c.lease_grant(60, None).await }
    })
    .await
    .id();
    let held = holder.lock("/locks/x", Some(LockOptions::new().with_lease(long))).await.expect("lock");

    // The waiter's lease is short and never renewed: it expires while the waiter waits.
    let mut waiter = cluster.client(1).await;
    let short = waiter.lease_grant(2, None).await.expect("grant").id();
    let waiting =
        tokio::spawn(async move { waiter.lock("/locks/x", Some(LockOptions::new().with_lease(short))).await });
    eventually("the waiter's lease expires", || {
        let mut c = holder.clone();
        async move {
            match c.lease_time_to_live(short, None).await?.ttl() {
                -1 => Ok(()),
                _ => Err(etcd_client::Error::InvalidArgs("still alive".into())),
            }
        }
    })
    .await;
    holder.unlock(held.key().to_vec()).await.expect("unlock");
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the waiter returns").expect("task");
    assert!(outcome.is_err(), "a waiter without a lease was told it holds the lock: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_observe_and_resign() {
    let cluster = Cluster::start("election", 3);
    let mut c1 = cluster.client(0).await;
    let lease1 = eventually("grant", || {
        let mut c = c1.clone();
        async move { c.lease_grant(30, None).await }
    })
    .await
    .id();
    let won = c1.campaign("/election/e", "p1", lease1).await.expect("campaign");
    let leader1 = won.leader().expect("leader key").clone();
    let shown = c1.leader("/election/e").await.expect("leader");
    assert_eq!(shown.kv().expect("kv").value(), b"p1");

    let mut observer = cluster.client(2).await;
    let mut observed = observer.observe("/election/e").await.expect("observe");
    let first = observed.message().await.expect("stream").expect("first");
    assert_eq!(first.kv().expect("kv").value(), b"p1");

    // A second candidate waits while p1 leads.
    let mut c2 = cluster.client(1).await;
    let lease2 = c2.lease_grant(30, None).await.expect("grant").id();
    let second = tokio::spawn(async move { c2.campaign("/election/e", "p2", lease2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "p2 won while p1 still leads");

    c1.proclaim("p1-again", Some(ProclaimOptions::new().with_leader(leader1.clone()))).await.expect("proclaim");
    let next = observed.message().await.expect("stream").expect("proclaimed");
    assert_eq!(next.kv().expect("kv").value(), b"p1-again");

    c1.resign(Some(ResignOptions::new().with_leader(leader1.clone()))).await.expect("resign");
    let won2 =
        tokio::time::timeout(Duration::from_secs(10), second).await.expect("p2 wins").expect("task").expect("campaign");
    assert!(won2.leader().is_some());
    assert_eq!(c1.leader("/election/e").await.expect("leader").kv().expect("kv").value(), b"p2");
    let next = observed.message().await.expect("stream").expect("new leader");
    assert_eq!(next.kv().expect("kv").value(), b"p2");
    // The former leader can no longer proclaim.
    assert!(c1.proclaim("stale", Some(ProclaimOptions::new().with_leader(leader1))).await.is_err());
}
