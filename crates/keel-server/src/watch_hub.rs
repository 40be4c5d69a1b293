//! Watchers, and the fan-out of applied events to them.
//!
//! The driver thread publishes each turn's events ([`WatchHub::publish`]) with `try_send` into
//! each watch stream's bounded channel. A stream whose client reads too slowly fills its channel;
//! its watchers are then marked *lagging* and skipped, so a slow watcher never blocks writes or
//! other watchers. A lagging watcher catches up from the store's history in bounded batches,
//! exactly as a watcher that starts from a past revision does:
//! - far behind, from a read view on a blocking thread ([`WatchHub::lagging_watchers`], then
//!   [`WatchHub::deliver`]): the driver only takes the view, and the history scan, however long,
//!   never holds it up;
//! - within [`CATCH_UP_ON_DRIVER_MAX`] revisions of the head, on the driver thread
//!   ([`WatchHub::catch_up`]), so no event can slip in between the history it reads and the live
//!   events it rejoins (under steady writes the head moves on while a view is read, so a view
//!   alone would never quite catch up).

use std::collections::BTreeMap;

use keel_api::etcdserverpb::{ResponseHeader, WatchResponse};
use keel_api::tonic::Status;
use keel_mvcc::{Backend, Event, EventBatch, EventKind, MvccError, Store};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use crate::convert;

/// Responses queued per watch stream before its watchers count as lagging.
pub const STREAM_QUEUE_MAX: usize = 256;
/// Most events read from history for one watcher in one catch-up step.
pub const CATCH_UP_EVENTS_MAX: usize = 1_000;
/// Most watchers on one stream.
pub const WATCHERS_PER_STREAM_MAX: usize = 10_000;
/// A stream whose lagging watchers are all at most this many revisions behind the head takes its
/// last catch-up step on the driver thread; further behind, steps run off it, on read views.
pub const CATCH_UP_ON_DRIVER_MAX: i64 = 256;

/// A lagging watcher as a catch-up off the driver reads it: its id, what it watches, and the
/// first revision it has not been sent.
pub type LaggingWatcher = (i64, WatchSpec, i64);

/// History read for a [`LaggingWatcher`]: its id, the revision the batch starts at, the batch.
pub type CaughtUp = (i64, i64, Result<EventBatch, MvccError>);

pub type StreamId = u64;
pub type WatchSender = Sender<Result<WatchResponse, Status>>;

#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
}

impl WatchSpec {
    /// etcd's range conventions: no end = the key alone; end "\0" = every key from `key` on.
    fn covers(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else if self.range_end == b"\0" {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }

    fn wants(&self, event: &Event) -> bool {
        let filtered = match event.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        !filtered && self.covers(&event.kv.key)
    }
}

struct Watcher {
    spec: WatchSpec,
    /// The first revision this watcher has not been sent yet.
    next_revision: i64,
    /// Behind the live events: catches up from history before it gets live events again.
    lagging: bool,
}

struct Stream {
    sender: WatchSender,
    watchers: BTreeMap<i64, Watcher>,
}

/// Header fields that do not change per response.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderBase {
    pub cluster_id: u64,
    pub member_id: u64,
}

#[derive(Default)]
pub struct WatchHub {
    base: HeaderBase,
    streams: BTreeMap<StreamId, Stream>,
    next_stream: StreamId,
    /// The store's revision as of the last publish.
    revision: i64,
    compacted: i64,
    raft_term: u64,
    /// Whether some watcher asks for `prev_kv`; `None` once the watchers changed.
    wants_prev_kv: Option<bool>,
}

pub enum Created {
    Ok,
    /// The start revision is compacted; the watcher was not created (etcd answers "created",
    /// then cancels with the compact revision).
    Compacted(i64),
}

impl WatchHub {
    pub fn new(base: HeaderBase) -> WatchHub {
        WatchHub { base, ..WatchHub::default() }
    }

    pub fn header(&self) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.base.cluster_id,
            member_id: self.base.member_id,
            revision: self.revision,
            raft_term: self.raft_term,
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn open_stream(&mut self, sender: WatchSender) -> StreamId {
        self.next_stream += 1;
        self.streams.insert(self.next_stream, Stream { sender, watchers: BTreeMap::new() });
        self.next_stream
    }

    pub fn close_stream(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
        self.wants_prev_kv = None;
    }

    /// Whether any watcher asks for `prev_kv`: the store reads the value each change replaces
    /// only then ([`Store::set_events_prev_kv`]). A watcher created after a change was applied
    /// without it reads that change back from history (see [`WatchHub::publish`]).
    pub fn wants_prev_kv(&mut self) -> bool {
        let streams = &self.streams;
        *self.wants_prev_kv.get_or_insert_with(|| streams.values().any(|s| s.watchers.values().any(|w| w.spec.prev_kv)))
    }

    /// Adds a watcher from `start_revision` (0 = from the next change on).
    pub fn create(&mut self, stream: StreamId, watch_id: i64, spec: WatchSpec, start_revision: i64) -> Created {
        // As etcd: the compacted revision itself is still readable; only below it is gone.
        if start_revision > 0 && start_revision < self.compacted {
            return Created::Compacted(self.compacted);
        }
        let (next_revision, lagging) = if start_revision <= 0 || start_revision > self.revision {
            (start_revision.max(self.revision + 1), false)
        } else {
            (start_revision, true)
        };
        if let Some(stream) = self.streams.get_mut(&stream) {
            stream.watchers.insert(watch_id, Watcher { spec, next_revision, lagging });
            self.wants_prev_kv = None;
        }
        Created::Ok
    }

    pub fn has_watcher(&self, stream: StreamId, watch_id: i64) -> bool {
        self.streams.get(&stream).is_some_and(|s| s.watchers.contains_key(&watch_id))
    }

    pub fn watcher_count(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.watchers.len())
    }

    pub fn cancel(&mut self, stream: StreamId, watch_id: i64) -> bool {
        self.wants_prev_kv = None;
        self.streams.get_mut(&stream).is_some_and(|s| s.watchers.remove(&watch_id).is_some())
    }

    pub fn is_lagging(&self, stream: StreamId) -> bool {
        self.streams.get(&stream).is_some_and(|s| s.watchers.values().any(|w| w.lagging))
    }

    /// Watchers of `stream` that asked for progress notifications and are caught up.
    pub fn progress_watchers(&self, stream: StreamId) -> Vec<i64> {
        self.streams.get(&stream).map_or_else(Vec::new, |s| {
            s.watchers.iter().filter(|(_, w)| w.spec.progress_notify && !w.lagging).map(|(&id, _)| id).collect()
        })
    }

    /// The store was replaced by a snapshot: events in between were never seen here, so every
    /// watcher catches up from history (or learns it was compacted away).
    pub fn mark_all_lagging(&mut self) {
        for stream in self.streams.values_mut() {
            for watcher in stream.watchers.values_mut() {
                watcher.lagging = true;
            }
        }
    }

    /// One turn's applied events (in revision order), with the store's revision after them.
    pub fn publish(&mut self, events: &[Event], revision: i64, compacted: i64, raft_term: u64) {
        self.revision = revision;
        self.compacted = compacted;
        self.raft_term = raft_term;
        let header = self.header();
        let mut closed = Vec::new();
        for (&stream_id, stream) in self.streams.iter_mut() {
            for (&watch_id, watcher) in stream.watchers.iter_mut() {
                if watcher.lagging {
                    continue;
                }
                let wanted =
                    events.iter().filter(|e| e.kv.mod_revision >= watcher.next_revision && watcher.spec.wants(e));
                if watcher.spec.prev_kv && wanted.clone().any(|e| !e.prev_kv_read) {
                    // Applied before this watcher's wish for prev_kv reached the store: read
                    // these changes back from history, where prev_kv is read for it.
                    watcher.lagging = true;
                    continue;
                }
                let picked: Vec<_> = wanted.map(|e| to_wire(e, watcher.spec.prev_kv)).collect();
                if !picked.is_empty() {
                    let response =
                        WatchResponse { header: Some(header), watch_id, events: picked, ..Default::default() };
                    match stream.sender.try_send(Ok(response)) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            watcher.lagging = true;
                            continue;
                        }
                        Err(TrySendError::Closed(_)) => {
                            closed.push(stream_id);
                            break;
                        }
                    }
                }
                watcher.next_revision = watcher.next_revision.max(revision + 1);
            }
        }
        for stream in closed {
            self.streams.remove(&stream);
            self.wants_prev_kv = None;
        }
    }

    /// Moves every lagging watcher of `stream` forward from history, one bounded batch each.
    /// Run on the driver thread (between publishes). A watcher whose history is compacted away
    /// gets etcd's compacted response and is removed.
    pub fn catch_up<B: Backend>(&mut self, stream_id: StreamId, store: &Store<B>) {
        let batches = self
            .lagging_watchers(stream_id)
            .into_iter()
            .map(|(watch_id, spec, from)| {
                let batch = store.events_batch(from, &spec.key, &spec.range_end, CATCH_UP_EVENTS_MAX, spec.prev_kv);
                (watch_id, from, batch)
            })
            .collect();
        self.deliver(stream_id, batches);
    }

    /// The lagging watchers of `stream`, for a catch-up step.
    pub fn lagging_watchers(&self, stream_id: StreamId) -> Vec<LaggingWatcher> {
        self.streams.get(&stream_id).map_or_else(Vec::new, |stream| {
            stream
                .watchers
                .iter()
                .filter(|(_, w)| w.lagging)
                .map(|(&id, w)| (id, w.spec.clone(), w.next_revision))
                .collect()
        })
    }

    /// Revisions between the head and the furthest-behind lagging watcher of `stream` (`None`
    /// when none lags).
    pub fn lag(&self, stream_id: StreamId) -> Option<i64> {
        let stream = self.streams.get(&stream_id)?;
        stream.watchers.values().filter(|w| w.lagging).map(|w| self.revision + 1 - w.next_revision).max()
    }

    /// Hands lagging watchers the history read for them (on the driver thread, or off it from a
    /// read view taken at or after the last publish). A watcher that went, or moved on since the
    /// batch was read, is left alone. A watcher is caught up once it is past the last published
    /// revision: publishes (under the same lock) carry everything after.
    pub fn deliver(&mut self, stream_id: StreamId, batches: Vec<CaughtUp>) {
        let header = self.header();
        let (head, compacted) = (self.revision, self.compacted);
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        let mut removed = Vec::new();
        for (watch_id, from, batch) in batches {
            let Some(watcher) = stream.watchers.get_mut(&watch_id) else { continue };
            if !watcher.lagging || watcher.next_revision != from {
                continue;
            }
            let batch = match batch {
                Ok(batch) => batch,
                Err(MvccError::Compacted) => {
                    let response = compacted_response(header, watch_id, compacted);
                    if stream.sender.try_send(Ok(response)).is_ok() {
                        removed.push(watch_id);
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "watch catch-up could not read history");
                    continue;
                }
            };
            let picked: Vec<_> = batch
                .events
                .iter()
                .filter(|e| watcher.spec.wants(e))
                .map(|e| to_wire(e, watcher.spec.prev_kv))
                .collect();
            if !picked.is_empty() {
                let response = WatchResponse { header: Some(header), watch_id, events: picked, ..Default::default() };
                if stream.sender.try_send(Ok(response)).is_err() {
                    continue; // still full: try again on the next step
                }
            }
            // Never backwards: a watcher created for a future revision stays there, whatever
            // the store went through meanwhile (a snapshot install makes every watcher lag,
            // and history then ends below its start).
            watcher.next_revision = watcher.next_revision.max(batch.next_revision);
            if watcher.next_revision > head {
                watcher.lagging = false;
            }
        }
        for watch_id in &removed {
            stream.watchers.remove(watch_id);
        }
        if !removed.is_empty() {
            self.wants_prev_kv = None;
        }
    }
}

pub fn compacted_response(header: ResponseHeader, watch_id: i64, compact_revision: i64) -> WatchResponse {
    WatchResponse { header: Some(header), watch_id, canceled: true, compact_revision, ..Default::default() }
}

fn to_wire(event: &Event, with_prev_kv: bool) -> keel_api::mvccpb::Event {
    let mut event = event.clone();
    if !with_prev_kv {
        event.prev_kv = None;
    }
    convert::event(event)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keel_mvcc::{Command, MemBackend, PutRequest, StoreOptions};

    use super::*;

    fn put(store: &mut Store<MemBackend>, index: u64, key: &str) {
        let put = PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        store.apply(index, &Command::Put(put)).expect("apply");
        store.commit().expect("commit");
    }

    fn spec(key: &str) -> WatchSpec {
        WatchSpec {
            key: key.as_bytes().to_vec(),
            range_end: b"\0".to_vec(),
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        }
    }

    fn revisions(receiver: &mut Receiver) -> Vec<i64> {
        let mut out = Vec::new();
        while let Ok(Ok(response)) = receiver.try_recv() {
            out.extend(response.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision));
        }
        out
    }

    type Receiver = tokio::sync::mpsc::Receiver<Result<WatchResponse, Status>>;

    /// A store with five puts to "/a" (revisions 2..=6), all published, and one open stream.
    fn five_puts_published_and_a_stream() -> (Store<MemBackend>, WatchHub, StreamId, Receiver) {
        let mut store = keel_mvcc::Store::open(MemBackend::default(), StoreOptions::default()).expect("store");
        for index in 1..=5 {
            put(&mut store, index, "/a");
        }
        let mut hub = WatchHub::new(HeaderBase::default());
        hub.publish(&store.take_events(), store.current_revision(), store.compacted_revision(), 1);
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_QUEUE_MAX);
        let stream = hub.open_stream(sender);
        (store, hub, stream, receiver)
    }

    #[test]
    fn a_watch_from_a_future_revision_gets_nothing_earlier_even_after_a_snapshot_install() {
        let (mut store, mut hub, stream, mut receiver) = five_puts_published_and_a_stream();
        assert!(matches!(hub.create(stream, 1, spec("/"), 10), Created::Ok));
        // A snapshot install: every watcher lags and catches up from history, which ends at 6.
        hub.mark_all_lagging();
        hub.catch_up(stream, &store);
        for index in 6..=12 {
            put(&mut store, index, "/a");
            hub.publish(&store.take_events(), store.current_revision(), store.compacted_revision(), 1);
            hub.catch_up(stream, &store);
        }
        let got = revisions(&mut receiver);
        assert_eq!(got.first(), Some(&10), "events before the start revision were sent: {got:?}");
        assert_eq!(got, (10..=13).collect::<Vec<_>>());
    }

    #[test]
    fn history_read_from_a_view_while_writes_go_on_then_the_driver_finishes_every_event_once() {
        let (mut store, mut hub, stream, mut receiver) = five_puts_published_and_a_stream();
        assert!(matches!(hub.create(stream, 1, spec("/"), 2), Created::Ok));
        assert_eq!(hub.lag(stream), Some(5));

        // Off the driver: a view at revision 6 is read while three more writes are published.
        let view = store.read_view().expect("view");
        let watchers = hub.lagging_watchers(stream);
        for index in 6..=8 {
            put(&mut store, index, "/a");
            hub.publish(&store.take_events(), store.current_revision(), store.compacted_revision(), 1);
        }
        let batches = watchers
            .into_iter()
            .map(|(id, spec, from)| (id, from, view.events_batch(from, &spec.key, &spec.range_end, 100, false)))
            .collect();
        hub.deliver(stream, batches);
        assert_eq!(revisions(&mut receiver), (2..=6).collect::<Vec<_>>());
        assert!(hub.is_lagging(stream), "the head moved on while the view was read");
        assert_eq!(hub.lag(stream), Some(3));

        // The same batches delivered twice (a late step) change nothing: the watcher moved on.
        let stale = vec![(1, 2, view.events_batch(2, b"/", b"\0", 100, false))];
        hub.deliver(stream, stale);
        assert!(revisions(&mut receiver).is_empty());

        // The last few revisions on the driver; then live events.
        hub.catch_up(stream, &store);
        assert!(!hub.is_lagging(stream));
        put(&mut store, 9, "/a");
        hub.publish(&store.take_events(), store.current_revision(), store.compacted_revision(), 1);
        assert_eq!(revisions(&mut receiver), (7..=10).collect::<Vec<_>>());
    }

    /// The previous values each event carried, in order (`None` where it had none).
    fn prev_values(receiver: &mut Receiver) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        while let Ok(Ok(response)) = receiver.try_recv() {
            out.extend(response.events.iter().map(|e| e.prev_kv.as_ref().map(|kv| kv.value.clone())));
        }
        out
    }

    #[test]
    fn prev_kv_is_read_only_while_a_watcher_wants_it_and_one_that_arrives_late_still_gets_it() {
        let (mut store, mut hub, stream, mut receiver) = five_puts_published_and_a_stream();
        assert!(matches!(hub.create(stream, 1, spec("/"), 0), Created::Ok));
        assert!(!hub.wants_prev_kv());
        store.set_events_prev_kv(hub.wants_prev_kv());
        put(&mut store, 6, "/a");
        let events = store.take_events();
        assert!(!events[0].prev_kv_read, "nobody asked for prev_kv, so it was not read");
        hub.publish(&events, store.current_revision(), store.compacted_revision(), 1);
        assert_eq!(prev_values(&mut receiver), vec![None]);

        // A watcher with prev_kv arrives after the next change was applied without it.
        put(&mut store, 7, "/a");
        let with_prev = WatchSpec { prev_kv: true, ..spec("/") };
        assert!(matches!(hub.create(stream, 2, with_prev, 0), Created::Ok));
        assert!(hub.wants_prev_kv());
        hub.publish(&store.take_events(), store.current_revision(), store.compacted_revision(), 1);
        store.set_events_prev_kv(hub.wants_prev_kv());
        assert_eq!(prev_values(&mut receiver), vec![None], "watcher 1 only: watcher 2 must not get a bare event");
        assert!(hub.is_lagging(stream));
        hub.catch_up(stream, &store);
        assert_eq!(prev_values(&mut receiver), vec![Some(b"v".to_vec())], "read back from history with prev_kv");
        assert!(!hub.is_lagging(stream));

        // From now on the store reads prev_kv as it applies, and the watcher is served live.
        put(&mut store, 8, "/a");
        let events = store.take_events();
        assert!(events[0].prev_kv_read);
        hub.publish(&events, store.current_revision(), store.compacted_revision(), 1);
        assert_eq!(prev_values(&mut receiver), vec![None, Some(b"v".to_vec())]);
        assert!(!hub.is_lagging(stream));

        // Once it is cancelled, nobody wants prev_kv any more.
        assert!(hub.cancel(stream, 2));
        assert!(!hub.wants_prev_kv());
    }
}
