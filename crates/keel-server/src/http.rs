//! HTTP on the client URLs, next to gRPC and etcd's JSON gateway ([`crate::gateway`]):
//! `/health`, `/metrics` (Prometheus text), keel's `/membership`, and the fault switches of
//! `--unsafe-fault-injection`.

use std::sync::Arc;

use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

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
