//! etcd's `Watch` service: one bidirectional stream carries many watchers.
//!
//! Requests on the stream (create, cancel, progress) are handled by one task per stream. Events
//! reach the stream's bounded queue from the driver thread (see [`crate::watch_hub`]); a watcher
//! that falls behind, or starts from a past revision, is brought up to date from history by the
//! same task, in bounded steps: from read views on blocking threads while it is far behind, on the
//! driver thread for the last few revisions (see [`crate::watch_hub`]).

use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::{self as pb, watch_request::RequestUnion, watch_server::Watch, WatchResponse};
use keel_api::tonic::{self, Request, Response, Status, Streaming};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::Shared;
use crate::status;
use crate::watch_hub::{
    compacted_response, CaughtUp, Created, StreamId, WatchSpec, CATCH_UP_EVENTS_MAX, CATCH_UP_ON_DRIVER_MAX,
    STREAM_QUEUE_MAX, WATCHERS_PER_STREAM_MAX,
};

/// How often a stream with lagging watchers takes a catch-up step.
const CATCH_UP_EVERY: Duration = Duration::from_millis(20);
/// etcd's default interval for progress notifications to watchers that asked for them.
const PROGRESS_NOTIFY_EVERY: Duration = Duration::from_secs(600);
/// The watch id of a progress response that answers a progress request (etcd's InvalidWatchID).
const PROGRESS_WATCH_ID: i64 = -1;

pub struct WatchService {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let credentials = super::Credentials::of(&request);
        Ok(Response::new(open(self.shared.clone(), request.into_inner(), credentials)))
    }
}

/// A watch stream serving the requests `incoming` brings (a gRPC stream, or the JSON gateway's
/// requests); it ends when they end or fail, or when nobody reads the responses any more. With
/// auth on, each watch created on it needs read permission on its range for the holder of
/// `credentials` (looked up again at each create, as etcd does).
pub fn open<S>(
    shared: Arc<Shared>,
    incoming: S,
    credentials: super::Credentials,
) -> ReceiverStream<Result<WatchResponse, Status>>
where
    S: Stream<Item = Result<pb::WatchRequest, Status>> + Unpin + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(STREAM_QUEUE_MAX);
    let stream = shared.hub.lock().expect("watch hub lock").open_stream(sender.clone());
    tokio::spawn(serve_stream(shared, stream, incoming, sender, credentials));
    ReceiverStream::new(receiver)
}

async fn serve_stream<S>(
    shared: Arc<Shared>,
    stream: StreamId,
    mut incoming: S,
    sender: mpsc::Sender<Result<WatchResponse, Status>>,
    credentials: super::Credentials,
) where
    S: Stream<Item = Result<pb::WatchRequest, Status>> + Unpin + Send + 'static,
{
    shared.metrics.watch_streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut next_watch_id: i64 = 0;
    let mut catch_up = tokio::time::interval(CATCH_UP_EVERY);
    catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval(PROGRESS_NOTIFY_EVERY);
    progress.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            message = incoming.next() => {
                let Some(Ok(message)) = message else { break };
                let Some(request) = message.request_union else { continue };
                if !handle(&shared, stream, request, &sender, &mut next_watch_id, &credentials).await {
                    break;
                }
            }
            _ = catch_up.tick() => {
                let lagging = shared.hub.lock().expect("watch hub lock").is_lagging(stream);
                if lagging && step_catch_up(&shared, stream).await.is_err() {
                    break;
                }
            }
            _ = progress.tick() => {
                let hub = shared.hub.lock().expect("watch hub lock");
                for watch_id in hub.progress_watchers(stream) {
                    let response = WatchResponse { header: Some(hub.header()), watch_id, ..Default::default() };
                    let _ = sender.try_send(Ok(response));
                }
            }
            _ = sender.closed() => break,
        }
    }
    let mut hub = shared.hub.lock().expect("watch hub lock");
    let watchers = hub.watcher_count(stream) as i64;
    hub.close_stream(stream);
    shared.metrics.watchers.fetch_sub(watchers, std::sync::atomic::Ordering::Relaxed);
    shared.metrics.watch_streams.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// One catch-up step for the lagging watchers of `stream`: near the head on the driver thread;
/// further behind, the driver only takes a read view and the history is read on a blocking thread.
pub async fn step_catch_up(shared: &Arc<Shared>, stream: StreamId) -> Result<(), Status> {
    let hub = shared.hub.clone();
    let group = shared.group;
    let far_behind = shared
        .inspect(move |node, _| {
            let machine = node.machine(group)?;
            let mut hub = hub.lock().expect("watch hub lock");
            if hub.lag(stream)? <= CATCH_UP_ON_DRIVER_MAX {
                hub.catch_up(stream, machine.store());
                return None;
            }
            Some((machine.store().read_view(), hub.lagging_watchers(stream)))
        })
        .await?;
    let Some((view, watchers)) = far_behind else { return Ok(()) };
    let view = view.map_err(|error| status::from_mvcc(&keel_mvcc::MvccError::Storage(error)))?;
    let batches: Vec<CaughtUp> = shared
        .off_driver(move || {
            watchers
                .into_iter()
                .map(|(watch_id, spec, from)| {
                    let batch = view.events_batch(from, &spec.key, &spec.range_end, CATCH_UP_EVENTS_MAX, spec.prev_kv);
                    (watch_id, from, batch)
                })
                .collect()
        })
        .await?;
    shared.hub.lock().expect("watch hub lock").deliver(stream, batches);
    Ok(())
}

/// Handles one request; false ends the stream.
async fn handle(
    shared: &Arc<Shared>,
    stream: StreamId,
    request: RequestUnion,
    sender: &mpsc::Sender<Result<WatchResponse, Status>>,
    next_watch_id: &mut i64,
    credentials: &super::Credentials,
) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match request {
        RequestUnion::CreateRequest(create) => {
            let permitted = shared
                .caller_from(credentials)
                .and_then(|caller| shared.check_read(&caller, &create.key, &create.range_end));
            if let Err(refused) = permitted {
                // etcd cancels it at once, with the gRPC error's text as the reason.
                let response = WatchResponse {
                    header: Some(shared.hub.lock().expect("watch hub lock").header()),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: format!("rpc error: code = {:?} desc = {}", refused.code(), refused.message()),
                    ..Default::default()
                };
                return sender.try_send(Ok(response)).is_ok();
            }
            let spec = WatchSpec {
                key: create.key,
                range_end: create.range_end,
                prev_kv: create.prev_kv,
                no_put: create.filters.contains(&(pb::watch_create_request::FilterType::Noput as i32)),
                no_delete: create.filters.contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
                progress_notify: create.progress_notify,
            };
            let catch_up = {
                let mut hub = shared.hub.lock().expect("watch hub lock");
                let header = hub.header();
                let watch_id = if create.watch_id != 0 { create.watch_id } else { *next_watch_id };
                let refused = if hub.has_watcher(stream, watch_id) {
                    Some("etcdserver: duplicate watch id") // etcd: mvcc.ErrWatcherDuplicateID
                } else if hub.watcher_count(stream) >= WATCHERS_PER_STREAM_MAX {
                    Some("etcdserver: too many watchers on one stream")
                } else {
                    None
                };
                if let Some(reason) = refused {
                    let response = WatchResponse {
                        header: Some(header),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: reason.to_string(),
                        ..Default::default()
                    };
                    return sender.try_send(Ok(response)).is_ok();
                }
                if create.watch_id == 0 {
                    *next_watch_id += 1;
                }
                // "created" goes out under the hub's lock, so no event of this watcher can
                // overtake it.
                let created = WatchResponse { header: Some(header), watch_id, created: true, ..Default::default() };
                if sender.try_send(Ok(created)).is_err() {
                    return false;
                }
                match hub.create(stream, watch_id, spec, create.start_revision) {
                    Created::Ok => {
                        shared.metrics.watchers.fetch_add(1, Relaxed);
                        hub.is_lagging(stream)
                    }
                    Created::Compacted(compacted) => {
                        return sender.try_send(Ok(compacted_response(header, watch_id, compacted))).is_ok();
                    }
                }
            };
            if catch_up {
                return step_catch_up(shared, stream).await.is_ok();
            }
            true
        }
        RequestUnion::CancelRequest(cancel) => {
            let mut hub = shared.hub.lock().expect("watch hub lock");
            if hub.cancel(stream, cancel.watch_id) {
                shared.metrics.watchers.fetch_sub(1, Relaxed);
                let response = WatchResponse {
                    header: Some(hub.header()),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                return sender.try_send(Ok(response)).is_ok();
            }
            true
        }
        RequestUnion::ProgressRequest(_) => {
            let hub = shared.hub.lock().expect("watch hub lock");
            // As etcd: only when every watcher of the stream is caught up, so the revision is a
            // promise that no earlier event is still to come.
            if !hub.is_lagging(stream) {
                let response =
                    WatchResponse { header: Some(hub.header()), watch_id: PROGRESS_WATCH_ID, ..Default::default() };
                return sender.try_send(Ok(response)).is_ok();
            }
            true
        }
    }
}
