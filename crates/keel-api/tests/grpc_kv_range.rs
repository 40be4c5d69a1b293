//! End to end over a real socket: a tonic server implementing only
//! `etcdserverpb.KV/Range` on 127.0.0.1:0, called by the generated client.
//! Proves the codegen, the service paths and the transport wiring work.

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::kv_server::{Kv, KvServer};
use keel_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use keel_api::mvccpb::KeyValue;
use keel_api::tonic::{self, Request, Response, Status};

/// Answers Range with one key-value echoing the requested key; nothing else.
struct EchoKv;

#[tonic::async_trait]
impl Kv for EchoKv {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        Ok(Response::new(RangeResponse {
            header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 42, raft_term: 3 }),
            kvs: vec![KeyValue {
                key: req.key,
                value: b"hello".to_vec(),
                create_revision: 40,
                mod_revision: 42,
                version: 2,
                lease: 0,
            }],
            more: false,
            count: 1,
        }))
    }

    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("put"))
    }

    async fn delete_range(&self, _: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("delete_range"))
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }

    async fn compact(&self, _: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("compact"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_range_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(KvServer::new(EchoKv)).serve_with_incoming_shutdown(
            incoming,
            async {
                let _ = stop_rx.await;
            },
        ),
    );

    let mut client =
        tokio::time::timeout(std::time::Duration::from_secs(10), KvClient::connect(format!("http://{addr}")))
            .await
            .expect("connect timed out")
            .expect("connect");

    let resp = client
        .range(RangeRequest { key: b"greeting".to_vec(), ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(resp.header.as_ref().map(|h| h.revision), Some(42));
    assert_eq!(resp.count, 1);
    assert_eq!(resp.kvs.len(), 1);
    assert_eq!(resp.kvs[0].key, b"greeting");
    assert_eq!(resp.kvs[0].value, b"hello");

    // Errors travel as gRPC statuses, as etcd's do.
    let err = client.range(RangeRequest::default()).await.expect_err("empty key must be rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");

    let err = client.put(PutRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // A service that is not registered answers Unimplemented too (here: Lock).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let err = keel_api::v3lockpb::lock_client::LockClient::new(channel)
        .lock(keel_api::v3lockpb::LockRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
