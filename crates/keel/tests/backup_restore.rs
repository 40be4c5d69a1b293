//! Backups and disaster recovery as operators do them with etcd: `etcdctl snapshot save` from a
//! loaded 3-member keel, `keel snapshot restore` into the data dirs of a new 3-member cluster,
//! and the new cluster serving every key at the same revision with the same hash.

mod common;

use std::path::Path;
use std::process::Command;

use common::{etcdctl, eventually, Cluster};
use etcd_client::{GetOptions, PutOptions};

/// Every key, as a serializable read of one member answers it (key, value, create, mod, version,
/// lease), and the revision it answered at.
async fn everything(cluster: &Cluster, i: usize) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>) {
    let mut client = cluster.client(i).await;
    let got = client
        .get(vec![0u8], Some(GetOptions::new().with_from_key().with_serializable()))
        .await
        .expect("read every key");
    let revision = got.header().expect("header").revision();
    let kvs = got
        .kvs()
        .iter()
        .map(|kv| {
            (kv.key().to_vec(), kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease())
        })
        .collect();
    (revision, kvs)
}

fn restore(snapshot: &Path, cluster: &Cluster, i: usize, token: &str, data_dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .args(["--name", &cluster.members[i].name])
        .args(["--initial-cluster", &cluster.initial_cluster()])
        .args(["--initial-cluster-token", token])
        .args(["--initial-advertise-peer-urls", &cluster.peer_url(i)])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run keel snapshot restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_saved_with_etcdctl_restores_into_a_new_cluster_with_every_key_revision_and_hash() {
    let old = Cluster::start("backup", 3);
    let client = old.client(0).await;
    // A loaded store with history: overwrites, deletes, a compaction, and keys under a lease.
    for n in 0..1_500u32 {
        eventually("put", || {
            let mut c = client.clone();
            async move { c.put(format!("/data/{:04}", n % 600), format!("value {n} {}", "x".repeat(100)), None).await }
        })
        .await;
    }
    let mut c = client.clone();
    for n in (0..600u32).step_by(7) {
        c.delete(format!("/data/{n:04}"), None).await.expect("delete");
    }
    let compact_at = c.get("/data/0001", None).await.expect("get").header().expect("header").revision() - 100;
    c.compact(compact_at, None).await.expect("compact");
    let lease = c.lease_grant(3_600, None).await.expect("lease").id();
    for n in 0..5 {
        c.put(format!("/leased/{n}"), "held", Some(PutOptions::new().with_lease(lease))).await.expect("leased put");
    }
    let old_ids: Vec<u64> = c.member_list().await.expect("members").members().iter().map(|m| m.id()).collect();

    // Saved through a follower with etcd's own tool, beside the new cluster's (empty) data dirs.
    let new = Cluster::prepare("restored", 3);
    let leader = old.leader().await;
    let follower = (leader + 1) % 3;
    let snapshot = new.dir.join("backup.db");
    let saved = etcdctl(&old.members[follower].endpoint(), &["snapshot", "save", &snapshot.to_string_lossy()]);
    assert!(saved.status.success(), "etcdctl snapshot save: {}", String::from_utf8_lossy(&saved.stderr));
    let (revision, data) = everything(&old, follower).await;
    assert_eq!(data.len(), 600 - 86 + 5, "the keys the load left");
    let hash = c.hash_kv(revision).await.expect("hashkv").hash();

    // A cut file is refused with where, and leaves no data dir to start by mistake.
    let bytes = std::fs::read(&snapshot).expect("read the snapshot");
    let cut = new.dir.join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    let refused = restore(&cut, &new, 0, "keel-restored", &new.data_dir(0));
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("truncated"), "{refused:?}");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 1;
    std::fs::write(&cut, &flipped).expect("write");
    let refused = restore(&cut, &new, 0, "keel-restored", &new.data_dir(0));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("corrupt"), "{refused:?}");
    assert!(!new.data_dir(0).exists(), "a refused restore leaves nothing behind");

    // The old cluster is lost; the new one is restored from the file, member by member.
    drop(old);
    let mut new = new;
    for i in 0..3 {
        let out = restore(&snapshot, &new, i, new.token(), &new.data_dir(i));
        assert!(out.status.success(), "restore m{}: {}", i + 1, String::from_utf8_lossy(&out.stderr));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains(&format!("revision {revision}")) && said.contains(&format!("hash {hash}")), "{said}");
    }
    // Restoring over a data dir is refused.
    let again = restore(&snapshot, &new, 0, new.token(), &new.data_dir(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{again:?}");
    for i in 0..3 {
        new.spawn(i);
    }
    new.wait_ready();

    for i in 0..3 {
        let (at, restored) = everything(&new, i).await;
        assert_eq!(at, revision, "member {i} serves the snapshot's revision");
        assert!(restored == data, "member {i} holds every key as it was");
        let mut client = new.client(i).await;
        assert_eq!(client.hash_kv(revision).await.expect("hashkv").hash(), hash, "member {i}'s hash");
        let compacted = client.get("/data/0001", Some(GetOptions::new().with_revision(compact_at - 1))).await;
        assert!(compacted.is_err(), "history before the compaction stays compacted");
    }
    let mut client = new.client(0).await;
    let leases = client.leases().await.expect("leases");
    assert!(leases.leases().iter().any(|l| l.id() == lease), "the lease came with its keys");
    let members = client.member_list().await.expect("members");
    assert_eq!(members.members().len(), 3);
    assert!(members.members().iter().all(|m| !old_ids.contains(&m.id())), "a new cluster's member ids");
    let put = eventually("a write to the new cluster", || {
        let mut c = client.clone();
        async move { c.put("/after", "restore", None).await }
    })
    .await;
    assert_eq!(put.header().expect("header").revision(), revision + 1);
}

/// A data dir restored for one cluster, started with flags that name another (a different token,
/// so other member ids), is refused at start: founding a log for other members would split it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_member_started_for_another_cluster_is_refused() {
    let old = Cluster::start("backup-other", 1);
    let c = old.client(0).await;
    eventually("put", || {
        let mut c = c.clone();
        async move { c.put("k", "v", None).await }
    })
    .await;
    let snapshot = old.dir.join("backup.db");
    let saved = etcdctl(&old.members[0].endpoint(), &["snapshot", "save", &snapshot.to_string_lossy()]);
    assert!(saved.status.success(), "etcdctl snapshot save: {}", String::from_utf8_lossy(&saved.stderr));

    let new = Cluster::prepare("restored-other", 1);
    let out = restore(&snapshot, &new, 0, "token-one", &new.data_dir(0));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = new.server_command(0, "token-two").output().expect("run keel server");
    assert!(!started.status.success());
    assert!(String::from_utf8_lossy(&started.stderr).contains("restored for another cluster"), "{started:?}");
}
