//! Legal-but-hostile requests against a real 3-member cluster: each is refused with etcd's
//! error before it reaches the log (or applied identically everywhere), and every member stays
//! up and serving. The first one crashed every etcd 3.4 member, and every keel member, for good.

mod common;

use common::{eventually, message, Cluster};
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_with_etcds_errors_and_every_member_stays_up() {
    let cluster = Cluster::start("hostile", 3);
    let mut client = cluster.client(0).await;
    eventually("first put", || {
        let mut c = client.clone();
        async move { c.put("/h/b", "kept", None).await }
    })
    .await;

    // A delete to the end of the key space, then a put that needs the key it deleted.
    for from in ["/h/a", ""] {
        let txn = Txn::new().and_then([
            TxnOp::delete(from, Some(DeleteOptions::new().with_from_key())),
            TxnOp::put("/h/b", "", Some(PutOptions::new().with_ignore_value())),
        ]);
        let error = client.txn(txn).await.expect_err("refused");
        assert_eq!(message(error), "etcdserver: duplicate key given in txn request", "delete from {from:?}");
    }

    // Nesting far deeper than any real client needs: refused up front, not proposed.
    let mut deep = Txn::new().and_then([TxnOp::put("/h/deep", "x", None)]);
    for _ in 0..40 {
        deep = Txn::new().and_then([TxnOp::txn(deep)]);
    }
    let error = client.txn(deep).await.expect_err("refused");
    assert_eq!(message(error), "etcdserver: too many operations in txn request");

    // etcd's op budget: a nested txn gets only what its parent left of --max-txn-ops (128).
    let mut ops: Vec<TxnOp> = (0..127).map(|i| TxnOp::put(format!("/h/budget/{i}"), "x", None)).collect();
    ops.push(TxnOp::txn(Txn::new().and_then([TxnOp::put("/h/n1", "x", None), TxnOp::put("/h/n2", "x", None)])));
    let error = client.txn(Txn::new().and_then(ops)).await.expect_err("refused");
    assert_eq!(message(error), "etcdserver: too many operations in txn request");

    // Empty keys anywhere in a txn.
    let empty_compare = Txn::new().when([Compare::version("", CompareOp::Equal, 0)]);
    assert_eq!(message(client.txn(empty_compare).await.expect_err("refused")), "etcdserver: key is not provided");
    let empty_put = Txn::new().and_then([TxnOp::txn(Txn::new().and_then([TxnOp::put("", "x", None)]))]);
    assert_eq!(message(client.txn(empty_put).await.expect_err("refused")), "etcdserver: key is not provided");

    // Every member is still up, agrees, and serves writes and linearizable reads.
    let mut revisions = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        let put = c.put(format!("/h/after/{i}"), "ok", None).await.expect("put after the hostile requests");
        let got = c.get("/h/", Some(GetOptions::new().with_prefix())).await.expect("get");
        assert!(got.kvs().iter().any(|kv| kv.key() == b"/h/b" && kv.value() == b"kept"), "member {i} lost /h/b");
        assert!(!got.kvs().iter().any(|kv| kv.key().starts_with(b"/h/budget")), "a refused txn wrote something");
        revisions.push(put.header().expect("header").revision());
    }
    assert!(revisions.windows(2).all(|w| w[1] == w[0] + 1), "one revision per put: {revisions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_at_most_max_concurrent_streams_at_once_and_the_rest_wait() {
    let cluster = Cluster::start_with("streams", 1, &["--max-concurrent-streams", "2"]);
    let client = cluster.client(0).await;
    // Two watch streams hold the connection's two streams.
    let (mut w1, mut w2) = (client.watch_client(), client.watch_client());
    let first = w1.watch("/a", None).await.expect("first watch");
    let _second = w2.watch("/b", None).await.expect("second watch");
    // A third request on the same connection waits for a stream (the client queues it, as HTTP/2
    // says it must) ...
    let mut kv = client.kv_client();
    let third = tokio::spawn(async move { kv.put("/c", "v", None).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third stream opened on a connection limited to two");
    // ... while another connection is served at once.
    let mut other = cluster.client(0).await;
    other.put("/d", "v", None).await.expect("another connection");
    // A stream freed: the waiting request goes through.
    drop(first);
    third.await.expect("task").expect("the third request once a stream is free");
}
