//! etcd's API on a real 3-member keel cluster, driven by the Rust `etcd-client` crate exactly as
//! an application would drive etcd.

mod common;

use std::time::Duration;

use common::{eventually, Cluster};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};

fn grpc_message(error: etcd_client::Error) -> (etcd_client::Error, String) {
    let message = match &error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => other.to_string(),
    };
    (error, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_txn_work_through_every_member_with_etcds_errors() {
    let cluster = Cluster::start("kv", 3);
    let mut c1 = cluster.client(0).await;
    let first = eventually("first put", || {
        let mut c = c1.clone();
        async move { c.put("/kv/a", "1", None).await }
    })
    .await;
    let rev_a = first.header().expect("header").revision();
    assert!(rev_a >= 2, "the first write takes revision 2 or later");
    // Writes through followers are forwarded to the leader; reads on every member are
    // linearizable, so each sees every write acknowledged before it.
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        let put = c.put(format!("/kv/m{i}"), format!("v{i}"), None).await.expect("put through member");
        let got = c.get("/kv/", Some(GetOptions::new().with_prefix())).await.expect("prefix get");
        assert_eq!(got.count(), i as i64 + 2, "member {i} sees every earlier write");
        assert_eq!(got.header().expect("header").revision(), put.header().expect("header").revision());
        let header = got.header().expect("header");
        assert_ne!(header.cluster_id(), 0);
        assert_ne!(header.member_id(), 0);
        assert!(header.raft_term() >= 1);
    }
    // prev_kv and delete.
    let put = c1.put("/kv/a", "2", Some(PutOptions::new().with_prev_key())).await.expect("put");
    assert_eq!(put.prev_key().expect("prev kv").value(), b"1");
    let deleted = c1.delete("/kv/m0", None).await.expect("delete");
    assert_eq!(deleted.deleted(), 1);

    // Txn: compare-and-swap, both branches.
    let cas = |expect: &str, new: &str| {
        Txn::new()
            .when([Compare::value("/kv/a", CompareOp::Equal, expect)])
            .and_then([TxnOp::put("/kv/a", new, None)])
            .or_else([TxnOp::get("/kv/a", None)])
    };
    let won = c1.txn(cas("2", "3")).await.expect("txn");
    assert!(won.succeeded());
    let lost = c1.txn(cas("2", "4")).await.expect("txn");
    assert!(!lost.succeeded());
    match &lost.op_responses()[..] {
        [TxnOpResponse::Get(get)] => assert_eq!(get.kvs()[0].value(), b"3"),
        other => panic!("the failure branch's get: {other:?}"),
    }

    // Old revisions, compaction, and etcd's errors for compacted and future revisions.
    let old = c1.get("/kv/a", Some(GetOptions::new().with_revision(rev_a))).await.expect("old revision");
    assert_eq!(old.kvs()[0].value(), b"1");
    let now = c1.get("/kv/a", None).await.expect("get").header().expect("header").revision();
    c1.compact(now, None).await.expect("compact");
    let (_, message) = grpc_message(c1.get("/kv/a", Some(GetOptions::new().with_revision(rev_a))).await.unwrap_err());
    assert_eq!(message, "etcdserver: mvcc: required revision has been compacted");
    let (_, message) =
        grpc_message(c1.get("/kv/a", Some(GetOptions::new().with_revision(now + 1000))).await.unwrap_err());
    assert_eq!(message, "etcdserver: mvcc: required revision is a future revision");

    // Limits: refused whole, nothing written.
    let big = vec![b'x'; 1_600_000];
    let (_, message) = grpc_message(c1.put("/kv/big", big, None).await.unwrap_err());
    assert_eq!(message, "etcdserver: request is too large");
    let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("/kv/many/{i}"), "x", None)).collect();
    let (_, message) = grpc_message(c1.txn(Txn::new().and_then(ops)).await.unwrap_err());
    assert_eq!(message, "etcdserver: too many operations in txn request");
    let none = c1.get("/kv/many/", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("get");
    assert_eq!(none.count(), 0, "a refused txn wrote nothing");
    assert_eq!(c1.get("/kv/big", None).await.expect("get").count(), 0);
    let (_, message) =
        grpc_message(c1.put("/kv/leased", "x", Some(PutOptions::new().with_lease(12345))).await.unwrap_err());
    assert_eq!(message, "etcdserver: requested lease not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_live_events_and_replays_history_from_a_past_revision() {
    let cluster = Cluster::start("watch", 3);
    let mut writer = cluster.client(0).await;
    let first = eventually("first put", || {
        let mut c = writer.clone();
        async move { c.put("/w/a", "1", None).await }
    })
    .await
    .header()
    .expect("header")
    .revision();

    // A live watch on a follower-or-leader, with prev_kv. A watch without a start revision
    // begins after the revision its member has applied (as in etcd), so a linearizable read
    // through that member first makes sure it has applied the first put.
    let mut watcher = cluster.client(1).await;
    watcher.get("/w/a", None).await.expect("linearizable read through the watching member");
    let mut stream =
        watcher.watch("/w/", Some(WatchOptions::new().with_prefix().with_prev_key())).await.expect("watch");
    let created = stream.message().await.expect("stream").expect("created response");
    assert!(created.created());
    writer.put("/w/a", "2", None).await.expect("put");
    writer.delete("/w/a", None).await.expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events arrive")
            .expect("stream")
            .expect("response");
        for event in response.events() {
            let kv = event.kv().expect("kv");
            let prev = event.prev_kv().map(|p| p.value().to_vec());
            seen.push((event.event_type(), kv.value().to_vec(), prev));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, b"2".to_vec(), Some(b"1".to_vec())),
            (EventType::Delete, Vec::new(), Some(b"2".to_vec()))
        ]
    );

    // From a past revision: history first, in order, then live.
    let mut replay = cluster.client(2).await;
    let mut stream =
        replay.watch("/w/a", Some(WatchOptions::new().with_start_revision(first))).await.expect("watch from the past");
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("history arrives")
            .expect("stream")
            .expect("response");
        kinds.extend(response.events().iter().map(|e| (e.event_type(), e.kv().expect("kv").mod_revision())));
    }
    assert_eq!(kinds[0], (EventType::Put, first));
    assert_eq!(kinds.iter().map(|k| k.0).collect::<Vec<_>>(), vec![EventType::Put, EventType::Put, EventType::Delete]);
    assert!(kinds.windows(2).all(|w| w[0].1 < w[1].1), "revisions increase: {kinds:?}");

    // A watch from a compacted revision is cancelled with the compact revision.
    let now = writer.put("/w/b", "x", None).await.expect("put").header().expect("header").revision();
    writer.compact(now, None).await.expect("compact");
    let mut stream = replay.watch("/w/a", Some(WatchOptions::new().with_start_revision(first))).await.expect("watch");
    let mut compacted = None;
    while compacted.is_none() {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a response")
            .expect("stream")
            .expect("response");
        if response.canceled() {
            compacted = Some(response.compact_revision());
        }
    }
    assert_eq!(compacted, Some(now));
}

/// A watch that starts thousands of revisions back is brought up from history on read views, off
/// the driver thread, while writes go on; it then finishes on the driver and goes live. Every
/// event must arrive once, in order, with nothing skipped at the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_far_behind_catches_up_while_writes_go_on_and_gets_every_event_once() {
    let cluster = Cluster::start("watchfar", 3);
    let mut writer = cluster.client(0).await;
    let first = eventually("first put", || {
        let mut c = writer.clone();
        async move { c.put("/far/0", "0", None).await }
    })
    .await
    .header()
    .expect("header")
    .revision();
    const BEFORE: i64 = 3_000;
    const DURING: i64 = 1_000;
    for i in 1..BEFORE {
        writer.put(format!("/far/{}", i % 97), i.to_string(), None).await.expect("put");
    }
    let mut watcher = cluster.client(1).await;
    let mut stream = watcher
        .watch("/far/", Some(WatchOptions::new().with_prefix().with_start_revision(first)))
        .await
        .expect("watch from far behind");
    let writes = tokio::spawn(async move {
        for i in BEFORE..BEFORE + DURING {
            writer.put(format!("/far/{}", i % 97), i.to_string(), None).await.expect("put during catch-up");
        }
    });
    let mut values = Vec::new();
    let mut revisions = Vec::new();
    while values.len() < (BEFORE + DURING) as usize {
        let response = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("events keep arriving")
            .expect("stream")
            .expect("response");
        assert!(!response.canceled(), "the watch was cancelled: {response:?}");
        for event in response.events() {
            let kv = event.kv().expect("kv");
            values.push(String::from_utf8(kv.value().to_vec()).expect("utf-8").parse::<i64>().expect("number"));
            revisions.push(kv.mod_revision());
        }
    }
    writes.await.expect("writer");
    assert_eq!(values, (0..BEFORE + DURING).collect::<Vec<_>>(), "every event once, in order");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions increase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_attach_keys_renew_expire_and_keep_their_ttl_across_a_leader_change() {
    let cluster = Cluster::start("lease", 3);
    let mut c = cluster.client(0).await;
    let lease = eventually("grant", || {
        let mut c = c.clone();
        async move { c.lease_grant(30, None).await }
    })
    .await;
    let id = lease.id();
    assert_eq!(lease.ttl(), 30);
    c.put("/l/key", "v", Some(PutOptions::new().with_lease(id))).await.expect("put with lease");
    let ttl = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
    assert_eq!(ttl.granted_ttl(), 30);
    assert!(ttl.ttl() > 25 && ttl.ttl() <= 30, "remaining {}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"/l/key".to_vec()]);
    let leases = c.leases().await.expect("leases");
    assert!(leases.leases().iter().any(|l| l.id() == id));

    // Keep-alive renews to the full TTL.
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.expect("keep alive");
    keeper.keep_alive().await.expect("send keep alive");
    let renewed = responses.message().await.expect("stream").expect("response");
    assert_eq!(renewed.ttl(), 30);

    // The remaining TTL survives a leader change: etcd would reset it to 30.
    let short = c.lease_grant(6, None).await.expect("grant").id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let target_id = cluster.member_id(target).await;
    let mut to_leader = cluster.client(leader).await;
    to_leader.move_leader(target_id).await.expect("move leader");
    assert_eq!(cluster.leader().await, target);
    let mut on_new_leader = cluster.client(target).await;
    let left = on_new_leader.lease_time_to_live(short, None).await.expect("ttl").ttl();
    assert!((1..=4).contains(&left), "6 s lease after 3 s and a leader change has {left} s left");

    // Expiry: the leader revokes it and its keys go; TimeToLive then answers -1.
    on_new_leader.put("/l/short", "v", Some(PutOptions::new().with_lease(short))).await.expect("put");
    let gone = eventually("expiry", || {
        let mut c = on_new_leader.clone();
        async move {
            let got = c.get("/l/short", None).await?;
            if got.count() == 0 {
                Ok(())
            } else {
                Err(etcd_client::Error::InvalidArgs("not expired yet".into()))
            }
        }
    });
    gone.await;
    assert_eq!(on_new_leader.lease_time_to_live(short, None).await.expect("ttl").ttl(), -1);

    // Revoke deletes the attached keys at once.
    c.lease_revoke(id).await.expect("revoke");
    assert_eq!(c.get("/l/key", None).await.expect("get").count(), 0);
    let (_, message) = grpc_message(c.lease_revoke(id).await.unwrap_err());
    assert_eq!(message, "etcdserver: requested lease not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_backend_quota_writes_are_refused_with_nospace_and_reads_and_deletes_go_on() {
    let cluster = Cluster::start_with("quota", 3, &["--quota-backend-bytes", "3000000"]);
    let mut c = cluster.client(0).await;
    eventually("first put", || {
        let mut c = c.clone();
        async move { c.put("/q/first", "v", None).await }
    })
    .await;
    let value = vec![b'q'; 8 * 1024];
    let mut refusal = None;
    for n in 0..4_000 {
        match c.put(format!("/q/{n:05}"), value.clone(), None).await {
            Ok(_) => continue,
            Err(error) => {
                refusal = Some(grpc_message(error).1);
                break;
            }
        }
    }
    assert_eq!(refusal.as_deref(), Some("etcdserver: mvcc: database space exceeded"));
    let alarms = c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.expect("alarms");
    assert!(alarms.alarms().iter().any(|a| a.alarm() == etcd_client::AlarmType::Nospace), "{alarms:?}");
    // Reads and deletes still work: deleting is how an operator makes room.
    assert_eq!(c.get("/q/first", None).await.expect("get").count(), 1);
    c.delete("/q/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.expect("delete under the alarm");
}

/// Puts through `c` until one is refused with etcd's NOSPACE error (within 20 s).
async fn until_refused_for_space(c: &mut etcd_client::Client, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = c.put(key, "v", None).await.map_err(|error| grpc_message(error).1);
        match outcome {
            Err(message) if message == "etcdserver: mvcc: database space exceeded" => return,
            other => {
                assert!(std::time::Instant::now() < deadline, "puts still not refused for space: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_raised_through_one_member_refuses_writes_on_every_member_until_disarmed_through_another() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let cluster = Cluster::start("alarms", 3);
    let (mut first, mut second, mut third) =
        (cluster.client(0).await, cluster.client(1).await, cluster.client(2).await);
    eventually("first put", || {
        let mut c = third.clone();
        async move { c.put("/alarm/before", "v", None).await }
    })
    .await;
    let member = cluster.member_id(0).await;
    let mut options = AlarmOptions::new();
    options.with_member(member);
    first.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options.clone())).await.expect("activate");

    // Replicated: the other members refuse writes that grow the data, and list the alarm.
    until_refused_for_space(&mut third, "/alarm/refused").await;
    until_refused_for_space(&mut second, "/alarm/refused").await;
    let listed = third.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarm list");
    let listed: Vec<(u64, AlarmType)> = listed.alarms().iter().map(|a| (a.member_id(), a.alarm())).collect();
    assert_eq!(listed, vec![(member, AlarmType::Nospace)]);
    let status = third.status().await.expect("status");
    assert!(status.errors().iter().any(|e| e.contains("alarm:NOSPACE")), "{:?}", status.errors());
    // Reads and deletes still go through: deleting is how an operator makes room.
    assert_eq!(second.get("/alarm/before", None).await.expect("get").count(), 1);
    second.delete("/alarm/before", None).await.expect("delete under the alarm");

    // Disarmed through another member: writes go through everywhere again.
    second.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options)).await.expect("deactivate");
    for c in [&mut first, &mut second, &mut third] {
        eventually("a put after the disarm", || {
            let mut c = c.clone();
            async move { c.put("/alarm/after", "v", None).await }
        })
        .await;
    }
    let listed = first.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarm list");
    assert!(listed.alarms().is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_short_of_disk_raises_nospace_before_the_disk_is_full_and_again_after_a_disarm() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    // Every filesystem has less free than this: each member finds itself short at once.
    let cluster = Cluster::start_with("disk-low", 3, &["--experimental-min-free-bytes", "18446744073709551615"]);
    let mut c = cluster.client(1).await;
    until_refused_for_space(&mut c, "/disk/refused").await;
    let raised = eventually("every member's alarm", || {
        let mut c = c.clone();
        async move {
            let listed = c.alarm(AlarmAction::Get, AlarmType::Nospace, None).await?;
            match listed.alarms().len() {
                3 => Ok(listed),
                n => Err(etcd_client::Error::InvalidArgs(format!("{n} alarms so far"))),
            }
        }
    })
    .await;
    assert!(raised.alarms().iter().all(|a| a.alarm() == AlarmType::Nospace));
    assert!(cluster.log(1).contains("disk nearly full"), "the member says why");
    // Still short of disk: a disarmed alarm comes back.
    let member = cluster.member_id(1).await;
    let mut options = AlarmOptions::new();
    options.with_member(member);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options)).await.expect("deactivate");
    eventually("the alarm raised again", || {
        let mut c = c.clone();
        async move {
            let listed = c.alarm(AlarmAction::Get, AlarmType::Nospace, None).await?;
            match listed.alarms().iter().any(|a| a.member_id() == member) {
                true => Ok(()),
                false => Err(etcd_client::Error::InvalidArgs("not yet".into())),
            }
        }
    })
    .await;
}

/// etcd's Snapshot RPC (what `etcdctl snapshot save` calls): the store streamed from a read view,
/// in the row format a follower receives, which builds a store file holding every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_rpc_streams_a_store_that_rebuilds_with_every_key() {
    let cluster = Cluster::start("snapshot-rpc", 3);
    let client = cluster.client(0).await;
    for n in 0..200 {
        eventually("put", || {
            let mut c = client.clone();
            async move { c.put(format!("/snap/{n:03}"), format!("value {n}"), None).await }
        })
        .await;
    }
    // Through a follower too: every member serves its own store.
    let mut c = cluster.client(1).await;
    eventually("a linearizable read on member 2", || {
        let mut c = c.clone();
        async move { c.get("/snap/199", None).await }
    })
    .await;
    let mut stream = c.snapshot().await.expect("snapshot stream");
    let mut bytes = Vec::new();
    let mut last_remaining = None;
    while let Some(message) = stream.message().await.expect("snapshot message") {
        bytes.extend_from_slice(message.blob());
        last_remaining = Some(message.remaining_bytes());
    }
    assert_eq!(last_remaining, Some(0), "the last message says nothing remains");
    // As etcd's: a multiple of 512 bytes, then their SHA-256 (what `etcdctl snapshot save` checks).
    assert_eq!(bytes.len() % 512, 32, "{} bytes", bytes.len());
    let (rows, sum) = bytes.split_at(bytes.len() - 32);
    assert_eq!(sum, <sha2::Sha256 as sha2::Digest>::digest(rows).as_slice());
    let path = std::env::temp_dir().join(format!("keel-snapshot-rpc-{}.db", std::process::id()));
    let mut receiver = keel_mvcc::redb_backend::RowReceiver::create(&path).expect("receiver");
    receiver.push(rows).expect("well-formed rows");
    receiver.finish(&path).expect("a whole store");
    let store =
        keel_mvcc::Store::open(keel_mvcc::RedbBackend::open(&path).expect("redb"), Default::default()).expect("store");
    let all = store
        .range(&keel_mvcc::RangeRequest { key: "/snap/".into(), range_end: "/snap0".into(), ..Default::default() })
        .expect("range");
    assert_eq!(all.kvs.len(), 200);
    assert_eq!(all.kvs[7].value, "value 7".as_bytes());
    drop(store);
    let _ = std::fs::remove_file(&path);

    // `keel snapshot status` on the saved file: the revision, the keys, and the HashKV the
    // cluster itself gives at that revision.
    let saved = std::env::temp_dir().join(format!("keel-snapshot-saved-{}.db", std::process::id()));
    std::fs::write(&saved, &bytes).expect("save");
    let status = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["snapshot", "status", "-w", "json"])
            .arg(file)
            .output()
            .expect("run keel snapshot status")
    };
    let out = status(&saved);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let described: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let revision = described["revision"].as_i64().expect("revision");
    assert!(revision >= 201, "{described}");
    assert_eq!(described["totalKey"], 200, "{described}");
    assert_eq!(described["totalSize"], bytes.len(), "{described}");
    let hash = c.hash_kv(revision).await.expect("hashkv").hash();
    assert_eq!(described["hash"], hash, "the cluster's HashKV at the snapshot's revision");
    // A flipped byte, or a file cut short, is refused with what is wrong.
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0x40;
    std::fs::write(&saved, &damaged).expect("save");
    let out = status(&saved);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"), "{out:?}");
    std::fs::write(&saved, &bytes[..bytes.len() - 100]).expect("save");
    let out = status(&saved);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"), "{out:?}");
    let _ = std::fs::remove_file(&saved);
}

/// The sum of a metric's samples whose labels include every pair of `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() || rest.starts_with('{'))
                && labels.iter().all(|(label, value)| rest.contains(&format!("{label}=\"{value}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Every figure etcd's official Grafana dashboard (Documentation/op-guide/grafana.json) queries,
/// served by each member, and counting what happened: gRPC calls by method, type and code (a
/// closed watch stream counts as handled, so "Active Streams" goes back down), client and peer
/// bytes, the backend's commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_etcds_grafana_dashboard_queries_is_served_and_counts() {
    const DASHBOARD: &[&str] = &[
        "etcd_server_has_leader",
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_disk_backend_commit_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "etcd_network_peer_received_bytes_total",
        "etcd_network_peer_sent_bytes_total",
        "etcd_server_proposals_failed_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_leader_changes_seen_total",
    ];
    let cluster = Cluster::start("dashboard", 3);
    let leader = cluster.leader().await;
    let port = cluster.members[leader].client_port;
    let mut client = cluster.client(leader).await;
    for n in 0..20 {
        client.put(format!("/m/{n}"), "v", None).await.expect("put");
    }
    let future = client.get("/m/0", Some(etcd_client::GetOptions::new().with_revision(1_000_000))).await;
    assert!(future.is_err(), "a future revision is refused (OutOfRange)");
    let stream = client.watch("/m/", None).await.expect("watch");
    drop(stream);

    let metrics = || common::http_get(port, "/metrics").expect("/metrics");
    let body = metrics();
    for name in DASHBOARD {
        assert!(body.lines().any(|line| line.starts_with(name)), "{name} is not served:\n{body}");
    }
    let put = [("grpc_service", "etcdserverpb.KV"), ("grpc_method", "Put"), ("grpc_type", "unary")];
    assert_eq!(sample(&body, "grpc_server_started_total", &put), 20.0);
    let put_ok = [put.as_slice(), &[("grpc_code", "OK")]].concat();
    assert_eq!(sample(&body, "grpc_server_handled_total", &put_ok), 20.0);
    let range_out_of_range = [("grpc_method", "Range"), ("grpc_code", "OutOfRange")];
    assert_eq!(sample(&body, "grpc_server_handled_total", &range_out_of_range), 1.0);
    let watch = [("grpc_service", "etcdserverpb.Watch"), ("grpc_type", "bidi_stream")];
    assert_eq!(sample(&body, "grpc_server_started_total", &watch), 1.0);
    // The dropped watch stream ends on the server once the client's reset arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sample(&metrics(), "grpc_server_handled_total", &watch) != 1.0 {
        assert!(std::time::Instant::now() < deadline, "the closed watch never counted as handled:\n{}", metrics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = metrics();
    assert!(sample(&body, "etcd_network_client_grpc_received_bytes_total", &[]) > 20.0 * 10.0, "{body}");
    assert!(sample(&body, "etcd_network_client_grpc_sent_bytes_total", &[]) > 0.0, "{body}");
    assert!(sample(&body, "etcd_network_peer_sent_bytes_total", &[]) > 0.0, "the leader replicates");
    assert!(sample(&body, "etcd_disk_backend_commit_duration_seconds_count", &[]) > 0.0, "{body}");
    assert_eq!(sample(&body, "etcd_server_proposals_pending", &[]), 0.0);
    let follower = cluster.members[(leader + 1) % 3].client_port;
    let follower_body = common::http_get(follower, "/metrics").expect("/metrics");
    assert!(sample(&follower_body, "etcd_network_peer_received_bytes_total", &[]) > 0.0, "{follower_body}");
}
