//! HTTP on the client URLs, next to gRPC: `/health`, `/metrics` (Prometheus text) and etcd's
//! JSON gateway (`/v3/kv/range`, `/v3/kv/put`, ...), so curl and gateway clients work.
//!
//! The gateway speaks grpc-gateway's JSON as etcd configures it: proto field names, bytes as
//! base64, 64-bit integers as strings (numbers are accepted too), zero values left out.

use std::sync::Arc;

use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use keel_api::etcdserverpb as pb;
use keel_api::mvccpb;
use keel_api::tonic::{Code, Status};
use serde_json::{json, Map, Value};

use crate::api::cluster::ClusterService;
use crate::api::kv::KvService;
use crate::api::lease::LeaseService;
use crate::api::maintenance::MaintenanceService;
use crate::api::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    let router = if shared.faults.is_some() {
        Router::new()
            .route("/debug/fault/fsync-delay-ms", post(set_fsync_delay))
            .route("/debug/fault/stale-reads", post(set_stale_reads))
    } else {
        Router::new()
    };
    router
        .route("/health", get(health))
        .route("/membership", get(membership))
        .route("/metrics", get(metrics))
        .route("/v3/kv/range", post(kv_range))
        .route("/v3/kv/put", post(kv_put))
        .route("/v3/kv/deleterange", post(kv_delete))
        .route("/v3/kv/compaction", post(kv_compact))
        .route("/v3/kv/txn", post(kv_txn))
        .route("/v3/lease/grant", post(lease_grant))
        .route("/v3/lease/revoke", post(lease_revoke))
        .route("/v3/kv/lease/revoke", post(lease_revoke))
        .route("/v3/lease/timetolive", post(lease_ttl))
        .route("/v3/kv/lease/timetolive", post(lease_ttl))
        .route("/v3/maintenance/status", post(status))
        .route("/v3/cluster/member/list", post(member_list))
        .with_state(shared)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    // etcd: healthy when there is a leader and no alarm. keel adds its fail-slow verdict: a
    // member whose disk is slow is one to route clients away from.
    if shared.metrics.nospace_alarm.load(std::sync::atomic::Ordering::Relaxed) == 1 {
        json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"health": "false", "reason": "ALARM NOSPACE"}))
    } else if shared.metrics.disk_slow.load(std::sync::atomic::Ordering::Relaxed) == 1 {
        json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"health": "false", "reason": "SLOW DISK"}))
    } else if shared.metrics.leader() != 0 {
        // A voter dead and not replaced yet: the cluster serves, with less margin. Said, not
        // failed: a load balancer must not route clients away from a serving member for it.
        let under = shared.metrics.under_replicated.load(std::sync::atomic::Ordering::Relaxed);
        if under > 0 {
            let reason = format!("UNDER-REPLICATED: {under} dead voter(s) not replaced yet");
            json_response(StatusCode::OK, json!({"health": "true", "reason": reason, "under_replicated_voters": under}))
        } else {
            json_response(StatusCode::OK, json!({"health": "true", "reason": ""}))
        }
    } else if is_waiting_spare(&shared).await {
        // Not serving either, but nothing is wrong: say so, so an operator does not go looking.
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"health": "false", "reason": "SPARE: holds no replica until a leader adds it"}),
        )
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"health": "false", "reason": "RAFT NO LEADER"}))
    }
}

/// This process was started as a spare (`--spare`) and no configuration names it yet.
async fn is_waiting_spare(shared: &Arc<Shared>) -> bool {
    let (me, group) = (shared.member_id, shared.group);
    let spare = {
        let view = shared.gossip.read().expect("gossip view lock");
        view.members.get(&me).and_then(|seen| seen.meta.as_ref()).is_some_and(|meta| meta.spare)
    };
    spare
        && shared
            .inspect(move |node, _| node.status(group).is_none_or(|s| !s.conf.members().any(|id| id == me)))
            .await
            .unwrap_or(false)
}

/// `--unsafe-fault-injection` only: the body is the delay added to every WAL write, in
/// milliseconds (0 restores the disk).
async fn set_fsync_delay(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let Some(faults) = shared.faults.as_ref() else { return StatusCode::NOT_FOUND.into_response() };
    let Some(ms) = std::str::from_utf8(&body).ok().and_then(|text| text.trim().parse::<u64>().ok()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "the body must be a whole number of milliseconds"}),
        );
    };
    faults.set_fsync_delay(std::time::Duration::from_millis(ms));
    json_response(StatusCode::OK, json!({"fsync_delay_ms": faults.fsync_delay().as_millis() as u64}))
}

/// `--unsafe-fault-injection` only: body `true` serves linearizable reads without ReadIndex.
async fn set_stale_reads(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let Some(faults) = shared.faults.as_ref() else { return StatusCode::NOT_FOUND.into_response() };
    let on = match std::str::from_utf8(&body).map(str::trim) {
        Ok("true") => true,
        Ok("false") => false,
        _ => return json_response(StatusCode::BAD_REQUEST, json!({"error": "the body must be true or false"})),
    };
    faults.set_stale_reads(on);
    json_response(StatusCode::OK, json!({"stale_reads": on}))
}

/// keel's own: every process the membership protocol knows — members and spares — with its
/// liveness, zone and URLs (spares are not raft members, so MemberList cannot show them).
async fn membership(State(shared): State<Arc<Shared>>) -> Response {
    let view = shared.gossip.read().expect("gossip view lock").clone();
    let group = shared.group;
    // The role comes from raft's configuration as this member applied it; a process in none is
    // a spare if it says so (a removed member that came back says it is not).
    let conf = shared.inspect(move |node, _| node.status(group).map(|s| s.conf)).await.ok().flatten();
    let role = |id: u64, spare: bool| match &conf {
        Some(conf) if conf.voters.contains(&id) => "voter",
        Some(conf) if conf.learners.contains(&id) => "learner",
        _ if spare => "spare",
        _ => "none",
    };
    let now_us = crate::gossip::process_us();
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|(&id, m)| {
            let meta = m.meta.clone();
            json!({
                "id": format!("{id:x}"),
                "name": meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
                "liveness": format!("{:?}", m.liveness).to_lowercase(),
                "incarnation": m.incarnation,
                "spare": role(id, meta.as_ref().is_some_and(|m| m.spare)) == "spare",
                "role": role(id, meta.as_ref().is_some_and(|m| m.spare)),
                "zone": meta.as_ref().map(|m| m.zone.clone()).unwrap_or_default(),
                "peer_url": meta.as_ref().map(|m| m.peer_url.clone()).unwrap_or_default(),
                "client_urls": meta.map(|m| m.client_urls).unwrap_or_default(),
                "for_seconds": now_us.saturating_sub(m.since_us) as f64 / 1e6,
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({"me": format!("{:x}", view.me), "members": members}))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

fn json_response(code: StatusCode, value: Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// grpc-gateway's error body, with the HTTP status it maps the gRPC code to.
fn error_response(status: Status) -> Response {
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = status.message().to_string();
    json_response(http, json!({"error": message, "message": message, "code": status.code() as i32}))
}

fn parse(body: &Body) -> Result<Map<String, Value>, Status> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Status::invalid_argument("the request body must be a JSON object")),
        Err(error) => Err(Status::invalid_argument(format!("malformed JSON: {error}"))),
    }
}

fn bytes_field(map: &Map<String, Value>, name: &str) -> Result<Vec<u8>, Status> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => {
            BASE64.decode(text).map_err(|_| Status::invalid_argument(format!("{name}: not base64")))
        }
        Some(_) => Err(Status::invalid_argument(format!("{name}: expected a base64 string"))),
    }
}

fn int_field(map: &Map<String, Value>, names: &[&str]) -> Result<i64, Status> {
    for name in names {
        match map.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) => {
                return n.as_i64().ok_or_else(|| Status::invalid_argument(format!("{name}: not an integer")))
            }
            Some(Value::String(s)) => {
                return s.parse().map_err(|_| Status::invalid_argument(format!("{name}: not an integer")))
            }
            Some(_) => return Err(Status::invalid_argument(format!("{name}: expected an integer"))),
        }
    }
    Ok(0)
}

fn bool_field(map: &Map<String, Value>, name: &str) -> bool {
    matches!(map.get(name), Some(Value::Bool(true)))
}

/// Enum fields come as names ("DESCEND") or numbers.
fn enum_field(map: &Map<String, Value>, name: &str, names: &[&str]) -> Result<i32, Status> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => names
            .iter()
            .position(|n| n == s)
            .map(|i| i as i32)
            .ok_or_else(|| Status::invalid_argument(format!("{name}: unknown value {s}"))),
        Some(Value::Number(n)) => Ok(n.as_i64().unwrap_or(-1) as i32),
        Some(_) => Err(Status::invalid_argument(format!("{name}: expected a name or a number"))),
    }
}

/// Adds `value` under `name` unless it is the zero value (as grpc-gateway leaves those out).
fn put_int(out: &mut Map<String, Value>, name: &str, value: i64) {
    if value != 0 {
        out.insert(name.into(), Value::String(value.to_string()));
    }
}

fn put_uint(out: &mut Map<String, Value>, name: &str, value: u64) {
    if value != 0 {
        out.insert(name.into(), Value::String(value.to_string()));
    }
}

fn put_bytes(out: &mut Map<String, Value>, name: &str, value: &[u8]) {
    if !value.is_empty() {
        out.insert(name.into(), Value::String(BASE64.encode(value)));
    }
}

fn header_json(header: Option<pb::ResponseHeader>) -> Value {
    let header = header.unwrap_or_default();
    let mut out = Map::new();
    put_uint(&mut out, "cluster_id", header.cluster_id);
    put_uint(&mut out, "member_id", header.member_id);
    put_int(&mut out, "revision", header.revision);
    put_uint(&mut out, "raft_term", header.raft_term);
    Value::Object(out)
}

fn kv_json(kv: &mvccpb::KeyValue) -> Value {
    let mut out = Map::new();
    put_bytes(&mut out, "key", &kv.key);
    put_int(&mut out, "create_revision", kv.create_revision);
    put_int(&mut out, "mod_revision", kv.mod_revision);
    put_int(&mut out, "version", kv.version);
    put_bytes(&mut out, "value", &kv.value);
    put_int(&mut out, "lease", kv.lease);
    Value::Object(out)
}

fn respond(result: Result<Value, Status>) -> Response {
    match result {
        Ok(value) => json_response(StatusCode::OK, value),
        Err(status) => error_response(status),
    }
}

async fn kv_range(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let m = parse(&body)?;
            let request = range_from(&m)?;
            let response = KvService { shared }.range(request).await?;
            let mut out = Map::new();
            out.insert("header".into(), header_json(response.header));
            if !response.kvs.is_empty() {
                out.insert("kvs".into(), Value::Array(response.kvs.iter().map(kv_json).collect()));
            }
            if response.more {
                out.insert("more".into(), Value::Bool(true));
            }
            put_int(&mut out, "count", response.count);
            Ok(Value::Object(out))
        }
        .await,
    )
}

async fn kv_put(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let m = parse(&body)?;
            let request = pb::PutRequest {
                key: bytes_field(&m, "key")?,
                value: bytes_field(&m, "value")?,
                lease: int_field(&m, &["lease"])?,
                prev_kv: bool_field(&m, "prev_kv"),
                ignore_value: bool_field(&m, "ignore_value"),
                ignore_lease: bool_field(&m, "ignore_lease"),
            };
            let response = KvService { shared }.put(request).await?;
            let mut out = Map::new();
            out.insert("header".into(), header_json(response.header));
            if let Some(prev) = &response.prev_kv {
                out.insert("prev_kv".into(), kv_json(prev));
            }
            Ok(Value::Object(out))
        }
        .await,
    )
}

async fn kv_delete(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let m = parse(&body)?;
            let request = pb::DeleteRangeRequest {
                key: bytes_field(&m, "key")?,
                range_end: bytes_field(&m, "range_end")?,
                prev_kv: bool_field(&m, "prev_kv"),
            };
            let response = KvService { shared }.delete_range(request).await?;
            let mut out = Map::new();
            out.insert("header".into(), header_json(response.header));
            put_int(&mut out, "deleted", response.deleted);
            if !response.prev_kvs.is_empty() {
                out.insert("prev_kvs".into(), Value::Array(response.prev_kvs.iter().map(kv_json).collect()));
            }
            Ok(Value::Object(out))
        }
        .await,
    )
}

fn range_from(m: &Map<String, Value>) -> Result<pb::RangeRequest, Status> {
    Ok(pb::RangeRequest {
        key: bytes_field(m, "key")?,
        range_end: bytes_field(m, "range_end")?,
        limit: int_field(m, &["limit"])?,
        revision: int_field(m, &["revision"])?,
        sort_order: enum_field(m, "sort_order", &["NONE", "ASCEND", "DESCEND"])?,
        sort_target: enum_field(m, "sort_target", &["KEY", "VERSION", "CREATE", "MOD", "VALUE"])?,
        serializable: bool_field(m, "serializable"),
        keys_only: bool_field(m, "keys_only"),
        count_only: bool_field(m, "count_only"),
        min_mod_revision: int_field(m, &["min_mod_revision"])?,
        max_mod_revision: int_field(m, &["max_mod_revision"])?,
        min_create_revision: int_field(m, &["min_create_revision"])?,
        max_create_revision: int_field(m, &["max_create_revision"])?,
    })
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Status> {
    value.as_object().ok_or_else(|| Status::invalid_argument(format!("{what} must be a JSON object")))
}

fn list<'a>(m: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], Status> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(Status::invalid_argument(format!("{name} must be a list"))),
    }
}

/// Nesting of txns inside txns accepted from JSON (the state machine bounds it again).
const GATEWAY_TXN_DEPTH_MAX: usize = 8;

fn txn_from(m: &Map<String, Value>, depth: usize) -> Result<pb::TxnRequest, Status> {
    use pb::compare::TargetUnion;
    if depth > GATEWAY_TXN_DEPTH_MAX {
        return Err(Status::invalid_argument("etcdserver: txn nested too deeply"));
    }
    let mut compare = Vec::new();
    for item in list(m, "compare")? {
        let c = object(item, "a compare")?;
        let target = enum_field(c, "target", &["VERSION", "CREATE", "MOD", "VALUE", "LEASE"])?;
        let union = match target {
            0 => Some(TargetUnion::Version(int_field(c, &["version"])?)),
            1 => Some(TargetUnion::CreateRevision(int_field(c, &["create_revision"])?)),
            2 => Some(TargetUnion::ModRevision(int_field(c, &["mod_revision"])?)),
            3 => Some(TargetUnion::Value(bytes_field(c, "value")?)),
            4 => Some(TargetUnion::Lease(int_field(c, &["lease"])?)),
            _ => None,
        };
        compare.push(pb::Compare {
            result: enum_field(c, "result", &["EQUAL", "GREATER", "LESS", "NOT_EQUAL"])?,
            target,
            key: bytes_field(c, "key")?,
            target_union: union,
            range_end: bytes_field(c, "range_end")?,
        });
    }
    let ops = |name: &str| -> Result<Vec<pb::RequestOp>, Status> {
        use pb::request_op::Request;
        let mut out = Vec::new();
        for item in list(m, name)? {
            let op = object(item, "a txn operation")?;
            let request = if let Some(r) = op.get("request_range") {
                Request::RequestRange(range_from(object(r, "request_range")?)?)
            } else if let Some(r) = op.get("request_put") {
                let r = object(r, "request_put")?;
                Request::RequestPut(pb::PutRequest {
                    key: bytes_field(r, "key")?,
                    value: bytes_field(r, "value")?,
                    lease: int_field(r, &["lease"])?,
                    prev_kv: bool_field(r, "prev_kv"),
                    ignore_value: bool_field(r, "ignore_value"),
                    ignore_lease: bool_field(r, "ignore_lease"),
                })
            } else if let Some(r) = op.get("request_delete_range") {
                let r = object(r, "request_delete_range")?;
                Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: bytes_field(r, "key")?,
                    range_end: bytes_field(r, "range_end")?,
                    prev_kv: bool_field(r, "prev_kv"),
                })
            } else if let Some(r) = op.get("request_txn") {
                Request::RequestTxn(txn_from(object(r, "request_txn")?, depth + 1)?)
            } else {
                return Err(Status::invalid_argument("a txn operation names no request"));
            };
            out.push(pb::RequestOp { request: Some(request) });
        }
        Ok(out)
    };
    Ok(pb::TxnRequest { compare, success: ops("success")?, failure: ops("failure")? })
}

fn txn_json(response: &pb::TxnResponse) -> Value {
    use pb::response_op::Response as Op;
    let mut out = Map::new();
    out.insert("header".into(), header_json(response.header));
    if response.succeeded {
        out.insert("succeeded".into(), Value::Bool(true));
    }
    let responses: Vec<Value> = response
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(Op::ResponseRange(r)) => {
                let mut range = Map::new();
                range.insert("header".into(), header_json(r.header));
                if !r.kvs.is_empty() {
                    range.insert("kvs".into(), Value::Array(r.kvs.iter().map(kv_json).collect()));
                }
                put_int(&mut range, "count", r.count);
                json!({"response_range": range})
            }
            Some(Op::ResponsePut(r)) => json!({"response_put": {"header": header_json(r.header)}}),
            Some(Op::ResponseDeleteRange(r)) => {
                let mut deleted = Map::new();
                deleted.insert("header".into(), header_json(r.header));
                put_int(&mut deleted, "deleted", r.deleted);
                json!({"response_delete_range": deleted})
            }
            Some(Op::ResponseTxn(r)) => json!({"response_txn": txn_json(r)}),
            None => json!({}),
        })
        .collect();
    if !responses.is_empty() {
        out.insert("responses".into(), Value::Array(responses));
    }
    Value::Object(out)
}

async fn kv_txn(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let request = txn_from(&parse(&body)?, 0)?;
            let response = KvService { shared }.txn(request).await?;
            Ok(txn_json(&response))
        }
        .await,
    )
}

async fn kv_compact(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let m = parse(&body)?;
            let request =
                pb::CompactionRequest { revision: int_field(&m, &["revision"])?, physical: bool_field(&m, "physical") };
            let response = KvService { shared }.compact(request).await?;
            Ok(json!({"header": header_json(response.header)}))
        }
        .await,
    )
}

async fn lease_grant(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let m = parse(&body)?;
            let request =
                pb::LeaseGrantRequest { ttl: int_field(&m, &["TTL", "ttl"])?, id: int_field(&m, &["ID", "id"])? };
            let response = LeaseService { shared }.grant(request).await?;
            Ok(json!({
                "header": header_json(response.header),
                "ID": response.id.to_string(),
                "TTL": response.ttl.to_string(),
            }))
        }
        .await,
    )
}

async fn lease_revoke(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let m = parse(&body)?;
            let request = pb::LeaseRevokeRequest { id: int_field(&m, &["ID", "id"])? };
            let response = LeaseService { shared }.revoke(request).await?;
            Ok(json!({"header": header_json(response.header)}))
        }
        .await,
    )
}

async fn lease_ttl(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    respond(
        async {
            let m = parse(&body)?;
            let request =
                pb::LeaseTimeToLiveRequest { id: int_field(&m, &["ID", "id"])?, keys: bool_field(&m, "keys") };
            let response = LeaseService { shared }.time_to_live(request).await?;
            let keys: Vec<Value> = response.keys.iter().map(|k| Value::String(BASE64.encode(k))).collect();
            Ok(json!({
                "header": header_json(response.header),
                "ID": response.id.to_string(),
                "TTL": response.ttl.to_string(),
                "grantedTTL": response.granted_ttl.to_string(),
                "keys": keys,
            }))
        }
        .await,
    )
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let response = MaintenanceService { shared }.status();
    let mut out = Map::new();
    out.insert("header".into(), header_json(response.header));
    out.insert("version".into(), Value::String(response.version));
    put_int(&mut out, "dbSize", response.db_size);
    put_uint(&mut out, "leader", response.leader);
    put_uint(&mut out, "raftIndex", response.raft_index);
    put_uint(&mut out, "raftTerm", response.raft_term);
    put_uint(&mut out, "raftAppliedIndex", response.raft_applied_index);
    put_int(&mut out, "dbSizeInUse", response.db_size_in_use);
    json_response(StatusCode::OK, Value::Object(out))
}

async fn member_list(State(shared): State<Arc<Shared>>) -> Response {
    let members = match (ClusterService { shared: shared.clone() }).members().await {
        Ok(members) => members,
        Err(status) => return error_response(status),
    };
    let members: Vec<Value> = members
        .into_iter()
        .map(|m| {
            json!({
                "ID": m.id.to_string(),
                "name": m.name,
                "peerURLs": m.peer_ur_ls,
                "clientURLs": m.client_ur_ls,
                "isLearner": m.is_learner,
            })
        })
        .collect();
    let header = shared.header(shared.metrics.revision());
    json_response(StatusCode::OK, json!({"header": header_json(Some(header)), "members": members}))
}
