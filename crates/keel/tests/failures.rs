//! Real processes, real SIGKILL: a leader dies and the survivors take over; every member dies
//! mid-load and no acknowledged write is lost. And SIGTERM: a member stops cleanly.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use etcd_client::{Client, GetOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivors_take_over_after_kill_9_of_the_leader_and_it_rejoins() {
    let mut cluster = Cluster::start("failover", 3);
    let leader = cluster.leader().await;
    let mut before = cluster.client(leader).await;
    before.put("/f/before", "1", None).await.expect("put before the kill");

    cluster.kill9(leader);
    let survivor = (leader + 1) % 3;
    let mut client = cluster.client(survivor).await;
    let started = Instant::now();
    eventually("a write through the survivors", || {
        let mut c = client.clone();
        async move { c.put("/f/after", "2", None).await }
    })
    .await;
    // Reported, not asserted: timing belongs to benchmarks (see the README for measured figures).
    eprintln!("first write after kill -9 of the leader: {:?}", started.elapsed());
    assert_ne!(cluster.leader().await, leader);
    let got = client.get("/f/", Some(GetOptions::new().with_prefix())).await.expect("get");
    assert_eq!(got.count(), 2, "the write acknowledged before the kill is still there");

    // The old leader restarts on its data and catches up.
    cluster.spawn(leader);
    cluster.wait_ready();
    let rejoined = cluster.client(leader).await;
    let got = eventually("a read on the restarted member", || {
        let mut c = rejoined.clone();
        async move { c.get("/f/after", None).await }
    })
    .await;
    assert_eq!(got.kvs()[0].value(), b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_with_sigterm_closes_its_store_and_a_killed_one_is_repaired_at_start() {
    const REPAIRED: &str = "the store file was not closed cleanly";
    const LOADED: &str = "loaded the key index from its checkpoint";
    let mut cluster = Cluster::start("stop", 3);
    let client = cluster.client(0).await;
    for n in 0..50 {
        eventually("write", || {
            let mut c = client.clone();
            async move { c.put(format!("/s/{n}"), "v", None).await }
        })
        .await;
    }
    cluster.stop(1);
    assert!(cluster.log(1).contains("stores closed"), "log:\n{}", cluster.log(1));
    assert!(cluster.log(1).contains("saved the key index"), "log:\n{}", cluster.log(1));
    cluster.spawn(1);
    cluster.kill9(2);
    cluster.spawn(2);
    cluster.wait_ready();
    assert!(!cluster.log(1).contains(REPAIRED), "a stopped member's store opens without repair:\n{}", cluster.log(1));
    assert!(cluster.log(2).contains(REPAIRED), "a killed member's store is repaired:\n{}", cluster.log(2));
    assert!(cluster.log(1).contains(LOADED), "a stopped member loads its saved key index:\n{}", cluster.log(1));
    // 50 revisions are far fewer than a background checkpoint waits for: nothing to load.
    assert!(!cluster.log(2).contains(LOADED), "a killed member rebuilds its key index:\n{}", cluster.log(2));
    for member in [1, 2] {
        let restarted = cluster.client(member).await;
        let got = eventually("a read on the restarted member", || {
            let mut c = restarted.clone();
            async move { c.get("/s/", Some(GetOptions::new().with_prefix().with_count_only())).await }
        })
        .await;
        assert_eq!(got.count(), 50, "member {member} has every write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over_first() {
    let mut cluster = Cluster::start("handoff", 3);
    let leader = cluster.leader().await;
    let mut client = cluster.client(leader).await;
    client.put("/h/before", "1", None).await.expect("put");
    cluster.stop(leader);
    let log = cluster.log(leader);
    assert!(log.contains("stopping: handing leadership over"), "log:\n{log}");
    assert!(!log.contains("stopping while leading"), "the hand-off finished before the stop:\n{log}");
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    let mut survivor = cluster.client(next).await;
    survivor.put("/h/after", "2", None).await.expect("a write through the new leader");
    let got = survivor.get("/h/", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("get");
    assert_eq!(got.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_after_kill_9_of_every_member() {
    let mut cluster = Cluster::start("killall", 3);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..6 {
        let endpoint = cluster.members[w % 3].endpoint();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let Ok(mut client) = Client::connect([endpoint], None).await else { return };
            for n in 0.. {
                let key = format!("/k/{w}/{n}");
                match client.put(key.clone(), "v", None).await {
                    Ok(_) => acked.lock().expect("lock").push(key),
                    // Once the members are gone, writes fail: stop.
                    Err(_) if n > 0 => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    // Let the load run, then kill every member mid-flight.
    while acked.lock().expect("lock").len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..3 {
        cluster.kill9(i);
    }
    for writer in writers {
        let _ = writer.await;
    }
    let acked = acked.lock().expect("lock").clone();

    for i in 0..3 {
        cluster.spawn(i);
    }
    cluster.wait_ready();
    let client = cluster.client(0).await;
    let got = eventually("read back", || {
        let mut c = client.clone();
        async move { c.get("/k/", Some(GetOptions::new().with_prefix().with_keys_only())).await }
    })
    .await;
    let present: std::collections::BTreeSet<Vec<u8>> = got.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !present.contains(k.as_bytes())).collect();
    eprintln!("{} acknowledged writes, {} keys after restart", acked.len(), present.len());
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_compacted_log_catches_up_from_a_streamed_store_file() {
    // A snapshot every 100 entries, keeping only 10 behind it for followers that lag: the log a
    // stopped member needs is gone by the time it returns.
    let mut cluster = Cluster::start_with(
        "snapshot",
        3,
        &["--snapshot-count", "100", "--experimental-snapshot-catchup-entries", "10"],
    );
    let leader = cluster.leader().await;
    let behind = (leader + 1) % 3;
    cluster.kill9(behind);
    let client = cluster.client(leader).await;
    // 3 MiB of values: the store file crosses the wire in several 1 MiB chunks.
    let value = vec![b'x'; 1024];
    for n in 0..3_000 {
        let key = format!("/s/{n:05}");
        let value = value.clone();
        eventually("write", || {
            let mut c = client.clone();
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await;
    }
    cluster.spawn(behind);
    cluster.wait_ready();
    let mut returned = cluster.client(behind).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got =
            returned.get("/s/", Some(GetOptions::new().with_prefix().with_count_only().with_serializable())).await;
        if got.as_ref().is_ok_and(|g| g.count() == 3_000) {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {got:?}\n{}", cluster.log(behind));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = returned.get("/s/02999", Some(GetOptions::new().with_serializable())).await.expect("get");
    assert_eq!(got.kvs()[0].value(), value.as_slice());
    assert!(
        cluster.log(behind).contains("installed a snapshot from the leader"),
        "caught up from the log, not a snapshot: the test no longer tests what it names"
    );
    assert!(
        (0..3).filter(|&i| i != behind).any(|i| cluster.log(i).contains("streamed the store for a snapshot")),
        "the store did not travel as a streamed file"
    );
}

/// A member whose write-ahead log was removed (an operator's cleanup, a disk swapped for the
/// WAL's directory) but whose store was kept must not start: a new log would give new writes
/// the indexes the store already applied, and they would be skipped — acknowledged, then gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_log_is_gone_but_whose_store_is_not_refuses_to_start() {
    let mut cluster = Cluster::start("lostwal", 1);
    let client = cluster.client(0).await;
    for n in 0..20 {
        let key = format!("/w/{n}");
        eventually("write", || {
            let mut c = client.clone();
            let key = key.clone();
            async move { c.put(key, "v", None).await }
        })
        .await;
    }
    cluster.stop(0);
    std::fs::remove_dir_all(cluster.data_dir(0).join("member").join("wal")).expect("remove the WAL");
    for attempt in 0..2 {
        let mut started = cluster
            .server_command(0, cluster.token())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run keel server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while started.try_wait().expect("poll").is_none() {
            if Instant::now() > deadline {
                let _ = started.kill();
                panic!("attempt {attempt}: the member started on a store without its log");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = started.wait_with_output().expect("its output");
        assert!(!out.status.success(), "attempt {attempt}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("has applied the log up to index") && stderr.contains("holds no log"), "{stderr}");
    }
}
