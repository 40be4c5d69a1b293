//! Membership through etcd's Cluster API on real processes: a learner joins and catches up, is
//! promoted, and an original member is removed, with writes going on throughout.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use etcd_client::{GetOptions, MemberAddOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_a_member_is_removed() {
    let mut cluster = Cluster::start("members", 3);
    let mut client = cluster.client(0).await;
    for n in 0..20 {
        let key = format!("/m/{n}");
        eventually("write", || {
            let mut c = client.clone();
            let key = key.clone();
            async move { c.put(key, "v", None).await }
        })
        .await;
    }
    // Each member publishes its name and client URLs once it runs.
    eventually("every member's client URLs", || {
        let mut c = client.clone();
        async move {
            let listed = c.member_list().await?;
            assert_eq!(listed.members().len(), 3);
            assert!(listed.members().iter().all(|m| !m.is_learner()));
            match listed.members().iter().all(|m| !m.client_urls().is_empty() && !m.name().is_empty()) {
                true => Ok(()),
                false => Err(etcd_client::Error::InvalidArgs("not all published yet".into())),
            }
        }
    })
    .await;

    // Add a learner, then start it: it joins with --initial-cluster-state existing.
    let slot = cluster.add_slot();
    let added = client
        .member_add([cluster.peer_url(slot)], Some(MemberAddOptions::new().with_is_learner()))
        .await
        .expect("member add");
    let new_id = added.member().expect("the new member").id();
    assert!(added.member().expect("member").is_learner());
    assert_eq!(client.member_list().await.expect("member list").members().len(), 4);
    // Not yet: it has run not at all, so it holds none of the leader's log (etcd's answer).
    let early = client.member_promote(new_id).await.expect_err("a learner that never ran is not promoted");
    assert!(early.to_string().contains("can only promote a learner member which is in sync with leader"), "{early}");
    cluster.spawn_joining(slot);
    cluster.wait_ready();

    // It catches up: every earlier write is readable on it (serializably: from its own state).
    let mut on_learner = cluster.client(slot).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = on_learner.get("/m/", Some(GetOptions::new().with_prefix().with_serializable())).await;
        if got.as_ref().is_ok_and(|g| g.count() == 20) {
            break;
        }
        assert!(Instant::now() < deadline, "the learner never caught up: {got:?}\n{}", cluster.log(slot));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It published its name and client URL into the member records.
    let record = eventually("the learner's record", || {
        let mut c = client.clone();
        async move {
            let list = c.member_list().await?;
            match list.members().iter().find(|m| m.id() == new_id && !m.name().is_empty()) {
                Some(m) => Ok(m.clone()),
                None => Err(etcd_client::Error::InvalidArgs("not published yet".into())),
            }
        }
    })
    .await;
    assert_eq!(record.name(), "m4");
    assert!(record.is_learner());

    // Promote it; a non-learner cannot be promoted.
    eventually("promote", || {
        let mut c = client.clone();
        async move { c.member_promote(new_id).await }
    })
    .await;
    let listed = client.member_list().await.expect("member list");
    assert!(listed.members().iter().all(|m| !m.is_learner()), "promoted: {:?}", listed.members());
    assert!(client.member_promote(new_id).await.is_err());

    // Remove an original member; the cluster keeps writing, and reads on the new member see it.
    let removed = cluster.member_id(0).await;
    let mut via_new = cluster.client(slot).await;
    via_new.member_remove(removed).await.expect("member remove");
    cluster.kill9(0);
    let listed = via_new.member_list().await.expect("member list");
    assert_eq!(listed.members().len(), 3);
    assert!(listed.members().iter().all(|m| m.id() != removed));
    eventually("a write after the removal", || {
        let mut c = via_new.clone();
        async move { c.put("/m/after", "v", None).await }
    })
    .await;
    let got = via_new.get("/m/", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("get");
    assert_eq!(got.count(), 21);
    assert!(via_new.member_remove(removed).await.is_err(), "removing an unknown member is an error");
}
