//! Wire-format checks of the generated etcd messages.
//!
//! Each test encodes a message, compares the bytes against hand-assembled
//! protobuf wire format (so any renumbered or retyped field in the vendored
//! `.proto` files fails here), and decodes the bytes back.

use keel_api::etcdserverpb::{
    compare, request_op, watch_create_request::FilterType, watch_request::RequestUnion, Compare, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchRequest,
};
use keel_api::mvccpb::{event::EventType, Event, KeyValue};
use keel_api::prost::Message;
use keel_api::v3lockpb::{LockRequest, LockResponse};

/// Encodes `msg`, checks the exact bytes, decodes them back and checks equality.
fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, wire: &[u8]) {
    let bytes = msg.encode_to_vec();
    assert_eq!(bytes, wire, "encoding of {msg:?}");
    assert_eq!(msg.encoded_len(), wire.len());
    let back = M::decode(wire).expect("decode");
    assert_eq!(&back, msg);
}

#[test]
fn put_request_fields_1_to_6() {
    let put = PutRequest {
        key: b"foo".to_vec(),
        value: b"bar".to_vec(),
        lease: 7,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    roundtrip(
        &put,
        &[
            0x0a, 3, b'f', b'o', b'o', // 1: key (bytes)
            0x12, 3, b'b', b'a', b'r', // 2: value (bytes)
            0x18, 7, // 3: lease (int64)
            0x20, 1, // 4: prev_kv (bool)
            0x28, 1, // 5: ignore_value (bool)
            0x30, 1, // 6: ignore_lease (bool)
        ],
    );
    // proto3 defaults are not written at all.
    assert!(PutRequest::default().encode_to_vec().is_empty());
}

#[test]
fn range_request_fields() {
    let req = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        limit: 10,
        revision: 4,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        max_create_revision: 5,
        ..Default::default()
    };
    roundtrip(
        &req,
        &[
            0x0a, 1, b'a', // 1: key
            0x12, 1, b'b', // 2: range_end
            0x18, 10, // 3: limit
            0x20, 4, // 4: revision
            0x38, 1, // 7: serializable
            0x40, 1, // 8: keys_only
            0x48, 1, // 9: count_only
            0x50, 1, // 10: min_mod_revision
            0x58, 2, // 11: max_mod_revision
            0x60, 3, // 12: min_create_revision
            0x68, 5, // 13: max_create_revision
        ],
    );
}

#[test]
fn range_response_with_kvs() {
    let resp = RangeResponse {
        header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 5, raft_term: 3 }),
        kvs: vec![KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 2,
            value: b"v".to_vec(),
            lease: 0,
        }],
        more: true,
        count: 1,
    };
    roundtrip(
        &resp,
        &[
            // 1: header (ResponseHeader), 8 bytes
            0x0a, 8, //
            0x08, 1, // cluster_id = 1
            0x10, 2, // member_id = 2
            0x18, 5, // revision = 3
            0x20, 3, // raft_term = 4
            // 2: kvs[0] (mvccpb.KeyValue), 12 bytes
            0x12, 12, //
            0x0a, 1, b'a', // key = 1
            0x10, 2, // create_revision = 2
            0x18, 5, // mod_revision = 3
            0x20, 2, // version = 4
            0x2a, 1, b'v', // value = 5
            0x18, 1, // 3: more
            0x20, 1, // 4: count
        ],
    );
}

#[test]
fn watch_create_request_inside_watch_request() {
    let req = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            start_revision: 10,
            progress_notify: true,
            filters: vec![FilterType::Nodelete as i32],
            prev_kv: true,
            watch_id: 3,
            fragment: true,
        })),
    };
    roundtrip(
        &req,
        &[
            // 1: create_request (oneof request_union), 19 bytes
            0x0a, 19, //
            0x0a, 1, b'k', // key = 1
            0x12, 1, b'l', // range_end = 2
            0x18, 10, // start_revision = 3
            0x20, 1, // progress_notify = 4
            0x2a, 1, 1, // filters = 5, packed repeated enum: [NODELETE = 1]
            0x30, 1, // prev_kv = 6
            0x38, 3, // watch_id = 7
            0x40, 1, // fragment = 8
        ],
    );
    assert_eq!(FilterType::Noput as i32, 0);

    let cancel = WatchRequest { request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 3 })) };
    // 2: cancel_request { watch_id = 1 }
    roundtrip(&cancel, &[0x12, 2, 0x08, 3]);

    let progress = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(Default::default())) };
    // 3: progress_request {} (an empty oneof member is still written)
    roundtrip(&progress, &[0x1a, 0]);
}

#[test]
fn txn_compare_uses_high_field_number_for_range_end() {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b"k".to_vec(),
            range_end: b"z".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(9)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest { key: b"k".to_vec(), ..Default::default() })),
        }],
        failure: vec![],
    };
    roundtrip(
        &txn,
        &[
            // 1: compare[0], 13 bytes
            0x0a, 13, //
            0x08, 1, // result = 1: GREATER = 1
            0x10, 2, // target = 2: MOD = 2
            0x1a, 1, b'k', // key = 3
            0x30, 9, // mod_revision = 6 (oneof target_union)
            0x82, 0x04, 1, b'z', // range_end = 64: tag (64 << 3 | 2) = 514, varint 0x82 0x04
            // 2: success[0] (RequestOp), 5 bytes
            0x12, 5, //
            0x12, 3, // request_put = 2, 3 bytes
            0x0a, 1, b'k', // PutRequest.key = 1
        ],
    );
}

#[test]
fn event_types_and_prev_kv() {
    let ev = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue { key: b"x".to_vec(), mod_revision: 8, ..Default::default() }),
        prev_kv: Some(KeyValue { key: b"x".to_vec(), lease: 300, ..Default::default() }),
    };
    roundtrip(
        &ev,
        &[
            0x08, 1, // 1: type = DELETE (1)
            0x12, 5, 0x0a, 1, b'x', 0x18, 8, // 2: kv { key, mod_revision = 3 }
            0x1a, 6, 0x0a, 1, b'x', 0x30, 0xac, 0x02, // 3: prev_kv { key, lease = 6: 300 }
        ],
    );
    assert_eq!(ev.r#type(), EventType::Delete);
    assert_eq!(EventType::Put as i32, 0);
}

#[test]
fn lock_request_and_response() {
    let req = LockRequest { name: b"mylock".to_vec(), lease: 0x1234 };
    roundtrip(
        &req,
        &[
            0x0a, 6, b'm', b'y', b'l', b'o', b'c', b'k', // 1: name
            0x10, 0xb4, 0x24, // 2: lease = 0x1234 (varint)
        ],
    );

    let resp =
        LockResponse { header: Some(ResponseHeader { revision: 1, ..Default::default() }), key: b"mylock/1".to_vec() };
    let mut wire = vec![0x0a, 2, 0x18, 1, 0x12, 8];
    wire.extend_from_slice(b"mylock/1");
    roundtrip(&resp, &wire);
}

#[test]
fn unknown_fields_are_skipped() {
    // A newer etcd client may send fields this server does not know: proto3
    // decoders must skip them. Field 99 (varint) ahead of a PutRequest key.
    let mut wire = vec![0x98, 0x06, 1]; // tag (99 << 3 | 0) = 792 = 0x98 0x06
    wire.extend_from_slice(&[0x0a, 1, b'k']);
    let put = PutRequest::decode(&wire[..]).unwrap();
    assert_eq!(put.key, b"k");
}

#[test]
fn service_names_match_etcd() {
    use keel_api::{etcdserverpb as pb, v3electionpb, v3lockpb};
    assert_eq!(pb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(pb::watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(pb::lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(pb::cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(pb::maintenance_server::SERVICE_NAME, "etcdserverpb.Maintenance");
    assert_eq!(pb::auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(v3electionpb::election_server::SERVICE_NAME, "v3electionpb.Election");
    assert_eq!(keel_api::ETCD_SERVICE_NAMES.len(), 9);
    assert!(keel_api::ETCD_SERVICE_NAMES.contains(&"grpc.health.v1.Health"));
}
