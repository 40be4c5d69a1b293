//! etcd's JSON gateway: every route of etcd's grpc-gateway, under `/v3` and (as etcd 3.4 still
//! serves them, for its older clients) `/v3beta` and `/v3alpha`, plus `GET /version`.
//!
//! Nothing here is written field by field: the routes come from the protos' `google.api.http`
//! options ([`GATEWAY_ROUTES`], read at build time), the JSON form of every request and response
//! from the protos too (`pbjson`, with the proto field names as etcd's gateway marshals them),
//! and each route calls the gRPC service's own method. The gateway cannot drift from the gRPC
//! API: a route the dispatch does not know fails `every_route_of_the_protos_is_served`.
//!
//! Streams answer as grpc-gateway does: chunked, one `{"result": ...}` object per line (or
//! `{"error": ...}`). A client-streaming body (watch, lease keep-alive) is a sequence of JSON
//! requests; a watch stays open after the body ends, until the client goes away.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keel_api::etcdserverpb::{
    self as pb, auth_server::Auth, cluster_server::Cluster, kv_server::Kv, lease_server::Lease,
    maintenance_server::Maintenance,
};
use keel_api::tonic::{self, Code, Status};
use keel_api::v3electionpb::election_server::Election;
use keel_api::v3lockpb::lock_server::Lock;
use keel_api::{GatewayRoute, GATEWAY_ROUTES};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tokio_stream::{Stream, StreamExt};

use crate::api::auth::AuthService;
use crate::api::cluster::ClusterService;
use crate::api::concurrency::{ElectionService, LockService};
use crate::api::kv::KvService;
use crate::api::lease::LeaseService;
use crate::api::maintenance::{MaintenanceService, API_VERSION};
use crate::api::Shared;

/// The prefixes etcd 3.4 serves the gateway under.
const PREFIXES: &[&str] = &["/v3", "/v3beta", "/v3alpha"];

/// What `GET /version` says (etcd's shape): the server's version and the cluster's.
const CLUSTER_VERSION: &str = "3.5.0";

pub fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    for &route in GATEWAY_ROUTES {
        let rest = route.path.strip_prefix("/v3").expect("every gateway route is under /v3");
        for prefix in PREFIXES {
            let path = format!("{prefix}{rest}");
            router = router.route(
                &path,
                post(move |State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap, body: Bytes| {
                    dispatch(shared, route, headers, body)
                }),
            );
        }
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), refuse_named_certificates))
        .route("/version", get(version))
        .with_state(shared)
}

/// etcd's gateway never takes a client certificate's common name as the user (it calls its own
/// gRPC server with its own certificate); so that nobody believes otherwise, while auth is on
/// it refuses a request whose certificate names one, with etcd 3.4's 400 and text.
async fn refuse_named_certificates(
    State(shared): State<Arc<Shared>>,
    request: HttpRequest,
    next: axum::middleware::Next,
) -> Response {
    let named = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::tls::listener::ClientAddr>>()
        .is_some_and(|info| info.0.common_name.as_deref().is_some_and(|name| !name.is_empty()));
    if named && shared.auth.is_enabled() {
        // Read the body first: an HTTP/2 stream answered before its request ended is reset,
        // and curl reports the reset instead of the answer.
        let _ = axum::body::to_bytes(request.into_body(), shared.max_request_bytes).await;
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "CommonName of client sending a request against gateway will be ignored and not used as expected\n",
        )
            .into_response();
    }
    next.run(request).await
}

async fn version() -> Response {
    json_response(StatusCode::OK, &json!({"etcdserver": API_VERSION, "etcdcluster": CLUSTER_VERSION}))
}

/// What answers paths nobody serves: gRPC clients get gRPC's Unimplemented (as tonic's own
/// fallback would say), everybody else etcd's 404.
pub async fn not_found(request: HttpRequest) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return Status::unimplemented(format!("unknown method {}", request.uri().path())).into_http::<Body>();
    }
    if PREFIXES.iter().any(|prefix| request.uri().path().starts_with(&format!("{prefix}/"))) {
        // grpc-gateway's answer to a path under its prefix it has no route for.
        json_response(StatusCode::NOT_FOUND, &json!({"error": "Not Found", "message": "Not Found", "code": 5}))
    } else {
        (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "404 page not found\n")
            .into_response()
    }
}

/// Calls the route's gRPC method with the request the body holds, and the token the
/// `Authorization` header holds (etcd's gateway passes it on as the `token` metadata).
async fn dispatch(shared: Arc<Shared>, route: GatewayRoute, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let token = headers.get(header::AUTHORIZATION).cloned();
    let token = token.as_ref();
    macro_rules! req {
        ($message:expr) => {
            with_token($message, token)
        };
    }
    let auth = || AuthService { shared: shared.clone() };
    let kv = || KvService { shared: shared.clone() };
    let lease = || LeaseService { shared: shared.clone() };
    let cluster = || ClusterService { shared: shared.clone() };
    let maintenance = || MaintenanceService { shared: shared.clone() };
    let lock = || LockService { shared: shared.clone() };
    let election = || ElectionService { shared: shared.clone() };
    match (route.service, route.method) {
        ("etcdserverpb.KV", "Range") => unary(&body, |r| async move { Kv::range(&kv(), req!(r)).await }).await,
        ("etcdserverpb.KV", "Put") => unary(&body, |r| async move { Kv::put(&kv(), req!(r)).await }).await,
        ("etcdserverpb.KV", "DeleteRange") => {
            unary(&body, |r| async move { Kv::delete_range(&kv(), req!(r)).await }).await
        }
        ("etcdserverpb.KV", "Txn") => unary(&body, |r| async move { Kv::txn(&kv(), req!(r)).await }).await,
        ("etcdserverpb.KV", "Compact") => unary(&body, |r| async move { Kv::compact(&kv(), req!(r)).await }).await,
        ("etcdserverpb.Watch", "Watch") => {
            watch(shared.clone(), &body, token.and_then(|t| t.to_str().ok()).map(str::to_string))
        }
        ("etcdserverpb.Lease", "LeaseGrant") => {
            unary(&body, |r| async move { Lease::lease_grant(&lease(), req!(r)).await }).await
        }
        ("etcdserverpb.Lease", "LeaseRevoke") => {
            unary(&body, |r| async move { Lease::lease_revoke(&lease(), req!(r)).await }).await
        }
        ("etcdserverpb.Lease", "LeaseKeepAlive") => keep_alive(lease(), &body),
        ("etcdserverpb.Lease", "LeaseTimeToLive") => {
            unary(&body, |r| async move { Lease::lease_time_to_live(&lease(), req!(r)).await }).await
        }
        ("etcdserverpb.Lease", "LeaseLeases") => {
            unary(&body, |r| async move { Lease::lease_leases(&lease(), req!(r)).await }).await
        }
        ("etcdserverpb.Cluster", "MemberAdd") => {
            unary(&body, |r| async move { Cluster::member_add(&cluster(), req!(r)).await }).await
        }
        ("etcdserverpb.Cluster", "MemberRemove") => {
            unary(&body, |r| async move { Cluster::member_remove(&cluster(), req!(r)).await }).await
        }
        ("etcdserverpb.Cluster", "MemberUpdate") => {
            unary(&body, |r| async move { Cluster::member_update(&cluster(), req!(r)).await }).await
        }
        ("etcdserverpb.Cluster", "MemberList") => {
            unary(&body, |r| async move { Cluster::member_list(&cluster(), req!(r)).await }).await
        }
        ("etcdserverpb.Cluster", "MemberPromote") => {
            unary(&body, |r| async move { Cluster::member_promote(&cluster(), req!(r)).await }).await
        }
        ("etcdserverpb.Maintenance", "Alarm") => {
            unary(&body, |r| async move { Maintenance::alarm(&maintenance(), req!(r)).await }).await
        }
        ("etcdserverpb.Maintenance", "Status") => {
            unary(&body, |r| async move { Maintenance::status(&maintenance(), req!(r)).await }).await
        }
        ("etcdserverpb.Maintenance", "Defragment") => {
            unary(&body, |r| async move { Maintenance::defragment(&maintenance(), req!(r)).await }).await
        }
        ("etcdserverpb.Maintenance", "Hash") => {
            unary(&body, |r| async move { Maintenance::hash(&maintenance(), req!(r)).await }).await
        }
        ("etcdserverpb.Maintenance", "HashKV") => {
            unary(&body, |r| async move { Maintenance::hash_kv(&maintenance(), req!(r)).await }).await
        }
        ("etcdserverpb.Maintenance", "Snapshot") => {
            server_stream(&body, |r: pb::SnapshotRequest| async move {
                Maintenance::snapshot(&maintenance(), req!(r)).await
            })
            .await
        }
        ("etcdserverpb.Maintenance", "MoveLeader") => {
            unary(&body, |r| async move { Maintenance::move_leader(&maintenance(), req!(r)).await }).await
        }
        ("etcdserverpb.Maintenance", "Downgrade") => {
            unary(&body, |r| async move { Maintenance::downgrade(&maintenance(), req!(r)).await }).await
        }
        ("v3lockpb.Lock", "Lock") => unary(&body, |r| async move { Lock::lock(&lock(), req!(r)).await }).await,
        ("v3lockpb.Lock", "Unlock") => unary(&body, |r| async move { Lock::unlock(&lock(), req!(r)).await }).await,
        ("v3electionpb.Election", "Campaign") => {
            unary(&body, |r| async move { Election::campaign(&election(), req!(r)).await }).await
        }
        ("v3electionpb.Election", "Proclaim") => {
            unary(&body, |r| async move { Election::proclaim(&election(), req!(r)).await }).await
        }
        ("v3electionpb.Election", "Leader") => {
            unary(&body, |r| async move { Election::leader(&election(), req!(r)).await }).await
        }
        ("v3electionpb.Election", "Observe") => {
            server_stream(&body, |r: keel_api::v3electionpb::LeaderRequest| async move {
                Election::observe(&election(), req!(r)).await
            })
            .await
        }
        ("v3electionpb.Election", "Resign") => {
            unary(&body, |r| async move { Election::resign(&election(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "AuthEnable") => {
            unary(&body, |r| async move { Auth::auth_enable(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "AuthDisable") => {
            unary(&body, |r| async move { Auth::auth_disable(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "AuthStatus") => {
            unary(&body, |r| async move { Auth::auth_status(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "Authenticate") => {
            unary(&body, |r| async move { Auth::authenticate(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "UserAdd") => {
            unary(&body, |r| async move { Auth::user_add(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "UserGet") => {
            unary(&body, |r| async move { Auth::user_get(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "UserList") => {
            unary(&body, |r| async move { Auth::user_list(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "UserDelete") => {
            unary(&body, |r| async move { Auth::user_delete(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "UserChangePassword") => {
            unary(&body, |r| async move { Auth::user_change_password(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "UserGrantRole") => {
            unary(&body, |r| async move { Auth::user_grant_role(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "UserRevokeRole") => {
            unary(&body, |r| async move { Auth::user_revoke_role(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "RoleAdd") => {
            unary(&body, |r| async move { Auth::role_add(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "RoleGet") => {
            unary(&body, |r| async move { Auth::role_get(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "RoleList") => {
            unary(&body, |r| async move { Auth::role_list(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "RoleDelete") => {
            unary(&body, |r| async move { Auth::role_delete(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "RoleGrantPermission") => {
            unary(&body, |r| async move { Auth::role_grant_permission(&auth(), req!(r)).await }).await
        }
        ("etcdserverpb.Auth", "RoleRevokePermission") => {
            unary(&body, |r| async move { Auth::role_revoke_permission(&auth(), req!(r)).await }).await
        }
        (service, method) => error_response(&Status::unimplemented(format!("{service}/{method}: no gateway route"))),
    }
}

fn with_token<T>(message: T, token: Option<&axum::http::HeaderValue>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = token.and_then(|t| t.to_str().ok()).and_then(|t| t.parse().ok());
    if let Some(token) = token {
        request.metadata_mut().insert("token", token);
    }
    request
}

/// A request from the body: empty means the empty request (as etcd's gateway reads it).
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| Status::invalid_argument(format!("malformed request: {error}")))
}

/// Every request in a client-streaming body (JSON objects one after another).
fn decode_all<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, Status> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|error| Status::invalid_argument(format!("malformed request: {error}")))
}

async fn unary<Req, Resp, F, Fut>(body: &[u8], call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    answer(body, call, |response: Resp| json_response(StatusCode::OK, &response)).await
}

async fn server_stream<Req, Resp, S, F, Fut>(body: &[u8], call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    answer(body, call, stream_response).await
}

/// Decodes the request, calls the method, and answers with `respond` or the error.
async fn answer<Req, T, F, Fut>(body: &[u8], call: F, respond: impl FnOnce(T) -> Response) -> Response
where
    Req: DeserializeOwned + Default,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let request = match decode::<Req>(body) {
        Ok(request) => request,
        Err(status) => return error_response(&status),
    };
    match call(request).await {
        Ok(response) => respond(response.into_inner()),
        Err(status) => error_response(&status),
    }
}

/// `POST /v3/watch`: the body's requests open (or cancel) watches on one watch stream, which
/// stays open after the body ends, as etcd's does.
fn watch(shared: Arc<Shared>, body: &[u8], token: Option<String>) -> Response {
    let requests = match decode_all::<pb::WatchRequest>(body) {
        Ok(requests) => requests,
        Err(status) => return error_response(&status),
    };
    let incoming = tokio_stream::iter(requests.into_iter().map(Ok)).chain(tokio_stream::pending());
    // A certificate never speaks for a gateway request (etcd's gateway ignores it the same way).
    let credentials = crate::api::Credentials { token, common_name: None };
    stream_response(crate::api::watch::open(shared, Box::pin(incoming), credentials))
}

/// `POST /v3/lease/keepalive`: each request in the body renews its lease once.
fn keep_alive(service: LeaseService, body: &[u8]) -> Response {
    let requests = match decode_all::<pb::LeaseKeepAliveRequest>(body) {
        Ok(requests) => requests,
        Err(status) => return error_response(&status),
    };
    let answers = tokio_stream::iter(requests).then(move |request| {
        let service = LeaseService { shared: service.shared.clone() };
        async move { service.keep_alive_once(request.id).await }
    });
    stream_response(answers)
}

/// A stream of answers, chunked, one JSON object per line; the first error ends it.
fn stream_response<Resp, S>(answers: S) -> Response
where
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let mut failed = false;
    let lines = answers
        .take_while(move |answer| {
            let go_on = !failed;
            failed |= answer.is_err();
            go_on
        })
        .map(|answer| {
            let line = match answer {
                Ok(message) => serde_json::to_vec(&Line::Result(message)),
                Err(status) => serde_json::to_vec(&Line::<Resp>::Error(error_body(&status))),
            };
            let mut line = line.unwrap_or_else(|error| {
                json!({"error": {"error": error.to_string(), "code": Code::Internal as i32}}).to_string().into_bytes()
            });
            line.push(b'\n');
            Ok::<_, Infallible>(Bytes::from(line))
        });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(lines)).into_response()
}

/// One line of a stream, as grpc-gateway writes it (the message's own field order kept).
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Line<T> {
    Result(T),
    Error(serde_json::Value),
}

fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => error_response(&Status::internal(format!("encoding the answer: {error}"))),
    }
}

fn error_body(status: &Status) -> serde_json::Value {
    let message = status.message();
    json!({"error": message, "message": message, "code": status.code() as i32})
}

/// grpc-gateway's error body, with the HTTP status it maps the gRPC code to.
pub fn error_response(status: &Status) -> Response {
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        // grpc-gateway v1, which etcd 3.4 serves, answers 412 here (v2 changed it to 400).
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_response(http, &error_body(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_protos_is_served() {
        // The dispatch's match arms, as (service, method): a route the protos add (a new etcd
        // version's) and nobody wired fails here, not at a user's request.
        let source = include_str!("gateway.rs");
        for route in GATEWAY_ROUTES {
            let arm = format!("(\"{}\", \"{}\")", route.service, route.method);
            assert!(source.contains(&arm), "no gateway dispatch for {arm} ({})", route.path);
        }
        assert!(GATEWAY_ROUTES.len() >= 50, "the routes come from the protos: {}", GATEWAY_ROUTES.len());
    }

    #[test]
    fn requests_and_answers_speak_etcds_json() {
        let request: pb::RangeRequest =
            decode(br#"{"key":"Zm9v","range_end":"Zm9w","limit":"10","sort_order":"DESCEND"}"#).unwrap();
        assert_eq!(request.key, b"foo");
        assert_eq!(request.range_end, b"fop");
        assert_eq!(request.limit, 10);
        assert_eq!(request.sort_order, pb::range_request::SortOrder::Descend as i32);
        assert_eq!(decode::<pb::RangeRequest>(b"").unwrap(), pb::RangeRequest::default(), "empty is empty");
        assert!(decode::<pb::RangeRequest>(b"{\"key\": 3").is_err());
        let answer = pb::LeaseKeepAliveResponse { header: None, id: 7, ttl: 60 };
        assert_eq!(serde_json::to_value(answer).unwrap(), json!({"ID": "7", "TTL": "60"}), "proto names, strings");
        let requests: Vec<pb::LeaseKeepAliveRequest> = decode_all(br#"{"ID":"1"} {"ID":2}"#).unwrap();
        assert_eq!(requests.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
    }
}
