//! # keel-machine — the etcd state machine of a raft group
//!
//! keel-mvcc's store (on redb in the server, on memory in the simulator), the lease clock's
//! changes and the member records, as keel-node's [`StateMachine`]. Its own crate so that the
//! deterministic simulator runs exactly what the server runs.
//!
//! Durability: every command is applied in memory as raft hands it out, and each poll's worth of
//! commands is committed to redb in one transaction together with the applied raft index
//! ([`StateMachine::flush`]). That commit does not wait for the disk: the raft log is already
//! durable and holds every applied entry, so the store needs its own fsync only now and then
//! ([`DURABLE_COMMIT_INTERVAL`]), to bound replay. On restart the store's durable applied index
//! is the group's applied index, so raft replays only the log tail after it; if a snapshot has
//! replaced the log beyond it, the store is restored from that snapshot first (see
//! `keel_server::server`).

mod auth;

pub use auth::{check_command, needs_admin, unwrap, wrap, SharedAuth, AUTHED_TAG, AUTH_META_KEY};
pub use keel_auth;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keel_mvcc::redb_backend::StoreCopy;

use bytes::Bytes;
use keel_auth::AuthCommand;
use keel_codec::{DecodeError, Reader, Writer};
use keel_mvcc::{
    ApplyOutcome, Backend, Command, MvccError, RangeRequest, RangeResponse, ReadView, Response, StorageError, Store,
};
use keel_node::StateMachine;
use keel_raft::Index;

/// Why a command produced no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The client's error (etcd's message, e.g. "mvcc: required revision has been compacted").
    Client(MvccError),
    /// The entry does not hold a command this version understands.
    Undecodable(String),
    /// The entry was already applied before a restart (its effect is in the store).
    AlreadyApplied,
    /// The backend failed; the store refuses everything until it is reopened.
    Fatal(String),
    /// Refused by authentication or access control (etcd's auth errors); nothing changed.
    Auth(keel_auth::AuthError),
}

/// What an applied entry answers its proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// An etcd command's response.
    Kv(Response),
    /// A member record was written.
    Members,
    /// An auth command was applied.
    Auth,
}

pub type CommandResult = Result<Applied, ApplyError>;

/// Entries whose first byte is this hold a [`MemberCommand`], not an etcd command (those start
/// with their format version, 1).
pub const MEMBER_COMMAND_TAG: u8 = 0xa0;
const MEMBER_ADD: u8 = 1;
const MEMBER_REMOVE: u8 = 2;
const MEMBER_PUBLISH: u8 = 3;
const MEMBER_PROMOTE: u8 = 4;
const MEMBER_UPDATE_PEERS: u8 = 5;
const MEMBER_ALARM: u8 = 6;
/// Marks the alarms after the member records in their encoding (absent when there are none, so
/// records without alarms encode as they always did).
const ALARMS_TRAILER: u8 = 1;
/// Then, if any, the ids of members removed from the cluster.
const REMOVED_TRAILER: u8 = 2;
/// Snapshots of this machine start with this, then the etcd store's snapshot and the members.
const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSM1\0";
/// A snapshot that names a store file instead of holding the state (see [`FileTicket`]).
const FILE_TICKET_MAGIC: &[u8; 8] = b"KEELFIL1";
/// The meta key under which a store file sent to a follower carries the member records, so
/// that they arrive with the data they belong to, in one file, installed at once.
pub const MEMBERS_META_KEY: &str = "keel.members";

/// A snapshot's data when the state travels as a stream: the leader's machine opens a
/// consistent view of its store and hands raft a ticket naming it ([`SnapshotOutbox`]); the
/// transport streams the view's rows to the follower on a connection of its own (as etcd
/// streams its bolt file from a read transaction), the follower builds a database file from
/// them and its raft gets a ticket naming that file; the follower's machine installs it by
/// renaming it over its store. No side holds the state in memory, and its size is bounded only
/// by the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTicket {
    /// The store's applied index in the view (at or past the snapshot's index).
    pub applied: Index,
    /// On the leader: the view's number in its [`SnapshotOutbox`]; on the follower: 0.
    pub source: u64,
    /// On the follower: the received file; on the leader: empty.
    pub path: String,
}

/// Views of the store handed out for followers' snapshots, waiting for the transport to take
/// and stream them, and the streams under way. Shared by the machine (which opens views) and
/// the transport (which streams them).
///
/// While a stream runs, and for [`STREAM_GRACE`] after, the log is not compacted past its
/// view's index (as etcd pauses compaction while it sends a snapshot): the follower needs the
/// entries right after it to catch up.
#[derive(Default)]
pub struct SnapshotOutbox {
    views: Mutex<BTreeMap<u64, OutboxView>>,
    next: std::sync::atomic::AtomicU64,
    /// Streams by view number: the view's index, and when the stream ended (`None`: running).
    streams: Mutex<BTreeMap<u64, (Index, Option<std::time::Instant>)>>,
}

/// A view waiting in the outbox: its applied index, the view, the encoded member records.
pub type OutboxView = (Index, StoreCopy, Vec<u8>);

/// Views waiting for the transport; older ones are dropped (a read view pins the store's pages).
const OUTBOX_VIEWS_MAX: usize = 4;
/// How long after a stream the log stays uncompacted past its view.
pub const STREAM_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl SnapshotOutbox {
    fn register(&self, applied: Index, view: StoreCopy, members: Vec<u8>) -> u64 {
        let source = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut views = self.views.lock().expect("outbox lock");
        views.insert(source, (applied, view, members));
        while views.len() > OUTBOX_VIEWS_MAX {
            views.pop_first();
        }
        source
    }

    /// Takes view `source` to stream it, with the member records that go with it.
    pub fn take(&self, source: u64) -> Option<OutboxView> {
        let taken = self.views.lock().expect("outbox lock").remove(&source);
        if let Some((applied, _, _)) = &taken {
            self.streams.lock().expect("outbox lock").insert(source, (*applied, None));
        }
        taken
    }

    /// The stream of view `source` ended (delivered or not).
    pub fn stream_ended(&self, source: u64) {
        if let Some(stream) = self.streams.lock().expect("outbox lock").get_mut(&source) {
            stream.1 = Some(std::time::Instant::now());
        }
    }

    /// The index the log must not be compacted past, while streams run or lately ran.
    pub fn compaction_floor(&self) -> Option<Index> {
        let mut streams = self.streams.lock().expect("outbox lock");
        streams.retain(|_, (_, ended)| ended.is_none_or(|at| at.elapsed() < STREAM_GRACE));
        streams.values().map(|(applied, _)| *applied).min()
    }
}

impl FileTicket {
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        w.u64(self.applied).u64(self.source).bytes(self.path.as_bytes());
        let mut out = FILE_TICKET_MAGIC.to_vec();
        out.extend(w.into_vec());
        Bytes::from(out)
    }

    /// `None` unless `data` is a ticket (a state snapshot is not).
    pub fn decode(data: &[u8]) -> Option<FileTicket> {
        let rest = data.strip_prefix(FILE_TICKET_MAGIC.as_slice())?;
        let mut r = Reader::new(rest);
        let applied = r.u64("ticket applied").ok()?;
        let source = r.u64("ticket source").ok()?;
        let path = String::from_utf8(r.bytes("ticket path").ok()?.to_vec()).ok()?;
        r.finish("file ticket").ok()?;
        Some(FileTicket { applied, source, path })
    }
}

/// A member as the cluster records it (etcd's `Member`): replicated through the log, so every
/// member lists the same members, and in snapshots, so a new member learns them too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: u64,
    /// Empty until the member has started and published it.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

/// An alarm kind, numbered as etcd's `AlarmType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// The member is out of space (its database over quota, or its disk nearly full): the
    /// cluster refuses writes that grow the data until an operator disarms it.
    NoSpace = 1,
    /// The member's data failed a consistency check.
    Corrupt = 2,
}

impl AlarmKind {
    pub fn from_code(code: i32) -> Option<AlarmKind> {
        match code {
            1 => Some(AlarmKind::NoSpace),
            2 => Some(AlarmKind::Corrupt),
            _ => None,
        }
    }

    /// etcd's name for it (in `Status` errors and logs).
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }
}

/// An alarm raised for a member (etcd's `AlarmMember`). Alarms are replicated through the log
/// like member records, so every member refuses the same writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlarmMember {
    pub member: u64,
    pub kind: AlarmKind,
}

/// The raised alarms.
pub type Alarms = BTreeSet<AlarmMember>;

/// A change to the member records. Each changes only what it names, so one never undoes
/// another made meanwhile; all but `Add` are no-ops on an unknown member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberCommand {
    /// Adds (or replaces) the record with this id.
    Add(MemberRecord),
    Remove(u64),
    /// A running member's own name and client URLs.
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// A learner became a voter.
    Promote(u64),
    UpdatePeers {
        id: u64,
        peer_urls: Vec<String>,
    },
    /// Raises (`active`) or disarms an alarm.
    Alarm {
        alarm: AlarmMember,
        active: bool,
    },
}

fn put_strings(w: &mut Writer, strings: &[String]) {
    w.u32(u32::try_from(strings.len()).expect("fewer than 4G strings"));
    for s in strings {
        w.bytes(s.as_bytes());
    }
}

fn get_strings(r: &mut Reader, what: &'static str) -> Result<Vec<String>, DecodeError> {
    let count = r.count(what, 4)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(String::from_utf8_lossy(&r.bytes(what)?).into_owned());
    }
    Ok(out)
}

fn put_record(w: &mut Writer, m: &MemberRecord) {
    w.u64(m.id).bytes(m.name.as_bytes());
    put_strings(w, &m.peer_urls);
    put_strings(w, &m.client_urls);
    w.bool(m.learner);
}

fn get_alarm(r: &mut Reader) -> Result<AlarmMember, DecodeError> {
    let member = r.u64("alarm member")?;
    let code = r.u8("alarm kind")?;
    let kind = AlarmKind::from_code(i32::from(code)).ok_or_else(|| r.error("alarm kind", format!("unknown {code}")))?;
    Ok(AlarmMember { member, kind })
}

fn get_record(r: &mut Reader) -> Result<MemberRecord, DecodeError> {
    Ok(MemberRecord {
        id: r.u64("member id")?,
        name: String::from_utf8_lossy(&r.bytes("member name")?).into_owned(),
        peer_urls: get_strings(r, "peer urls")?,
        client_urls: get_strings(r, "client urls")?,
        learner: r.bool("learner")?,
    })
}

impl MemberCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(MEMBER_COMMAND_TAG);
        match self {
            MemberCommand::Add(record) => {
                w.u8(MEMBER_ADD);
                put_record(&mut w, record);
            }
            MemberCommand::Remove(id) => {
                w.u8(MEMBER_REMOVE).u64(*id);
            }
            MemberCommand::Publish { id, name, client_urls } => {
                w.u8(MEMBER_PUBLISH).u64(*id).bytes(name.as_bytes());
                put_strings(&mut w, client_urls);
            }
            MemberCommand::Promote(id) => {
                w.u8(MEMBER_PROMOTE).u64(*id);
            }
            MemberCommand::UpdatePeers { id, peer_urls } => {
                w.u8(MEMBER_UPDATE_PEERS).u64(*id);
                put_strings(&mut w, peer_urls);
            }
            MemberCommand::Alarm { alarm, active } => {
                w.u8(MEMBER_ALARM).u64(alarm.member).u8(alarm.kind as u8).bool(*active);
            }
        }
        w.into_vec()
    }

    pub fn decode(data: &[u8]) -> Result<MemberCommand, DecodeError> {
        let mut r = Reader::new(data);
        if r.u8("member command tag")? != MEMBER_COMMAND_TAG {
            return Err(r.error("member command tag", "not a member command"));
        }
        let command = match r.u8("member command kind")? {
            MEMBER_ADD => MemberCommand::Add(get_record(&mut r)?),
            MEMBER_REMOVE => MemberCommand::Remove(r.u64("member id")?),
            MEMBER_PUBLISH => MemberCommand::Publish {
                id: r.u64("member id")?,
                name: String::from_utf8_lossy(&r.bytes("member name")?).into_owned(),
                client_urls: get_strings(&mut r, "client urls")?,
            },
            MEMBER_PROMOTE => MemberCommand::Promote(r.u64("member id")?),
            MEMBER_UPDATE_PEERS => {
                MemberCommand::UpdatePeers { id: r.u64("member id")?, peer_urls: get_strings(&mut r, "peer urls")? }
            }
            MEMBER_ALARM => MemberCommand::Alarm { alarm: get_alarm(&mut r)?, active: r.bool("alarm active")? },
            other => return Err(r.error("member command kind", format!("unknown kind {other}"))),
        };
        r.finish("member command")?;
        Ok(command)
    }
}

/// Received stores are named `received-<from>-<nanos>.db`: once one is installed, those received
/// before it can never be (raft takes only newer snapshots) and go. Later ones may still be on
/// their way to raft and stay.
fn remove_older_received(installed: &Path) {
    fn received_at(name: &str) -> Option<u128> {
        name.strip_prefix("received-")?.strip_suffix(".db")?.rsplit('-').next()?.parse().ok()
    }
    let Some(installed_at) = installed.file_name().and_then(|n| received_at(&n.to_string_lossy())) else { return };
    let Some(dir) = installed.parent() else { return };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if received_at(&entry.file_name().to_string_lossy()).is_some_and(|at| at < installed_at) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What the cluster records of its members: their records, their raised alarms, and the ids of
/// members removed (as etcd keeps them: a removed member that comes back is told so and refused,
/// by every member, also after restarts, since this is replicated state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    pub members: BTreeMap<u64, MemberRecord>,
    pub alarms: Alarms,
    pub removed: std::collections::BTreeSet<u64>,
}

impl Roster {
    pub fn new(members: BTreeMap<u64, MemberRecord>) -> Roster {
        Roster { members, alarms: Alarms::new(), removed: Default::default() }
    }
}

/// Every member record and alarm, encoded (for snapshots and the members file).
pub fn encode_members(roster: &Roster) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(u32::try_from(roster.members.len()).expect("fewer than 4G members"));
    for record in roster.members.values() {
        put_record(&mut w, record);
    }
    if !roster.alarms.is_empty() {
        w.u8(ALARMS_TRAILER).u32(u32::try_from(roster.alarms.len()).expect("fewer than 4G alarms"));
        for alarm in &roster.alarms {
            w.u64(alarm.member).u8(alarm.kind as u8);
        }
    }
    if !roster.removed.is_empty() {
        w.u8(REMOVED_TRAILER).u32(u32::try_from(roster.removed.len()).expect("fewer than 4G removed members"));
        for &id in &roster.removed {
            w.u64(id);
        }
    }
    w.into_vec()
}

pub fn decode_members(data: &[u8]) -> Result<Roster, DecodeError> {
    let mut r = Reader::new(data);
    let count = r.count("member count", 8)?;
    let mut roster = Roster::default();
    for _ in 0..count {
        let record = get_record(&mut r)?;
        roster.members.insert(record.id, record);
    }
    // Trailers, each at most once and in this order (older files have fewer).
    let mut last_trailer = 0;
    while r.remaining() > 0 {
        let trailer = r.u8("members trailer")?;
        if trailer <= last_trailer {
            return Err(r.error("members trailer", "trailers out of order or repeated"));
        }
        last_trailer = trailer;
        match trailer {
            ALARMS_TRAILER => {
                for _ in 0..r.count("alarm count", 9)? {
                    roster.alarms.insert(get_alarm(&mut r)?);
                }
            }
            REMOVED_TRAILER => {
                for _ in 0..r.count("removed member count", 8)? {
                    roster.removed.insert(r.u64("removed member id")?);
                }
            }
            _ => return Err(r.error("members trailer", "unknown trailer")),
        }
    }
    r.finish("members")?;
    Ok(roster)
}

/// A machine snapshot's parts: the etcd store's snapshot, the member records (`None` for a bare
/// store snapshot), the encoded auth store (`None` from a version before auth).
pub type SnapshotParts = (Bytes, Option<Roster>, Option<Bytes>);

/// Splits this machine's snapshot into its parts.
pub fn split_snapshot(data: &[u8]) -> Result<SnapshotParts, DecodeError> {
    let Some(rest) = data.strip_prefix(SNAPSHOT_MAGIC.as_slice()) else {
        return Ok((Bytes::copy_from_slice(data), None, None));
    };
    let mut r = Reader::new(rest);
    let store = r.bytes("store snapshot")?;
    let members = decode_members(&r.bytes("members")?)?;
    let auth = if r.remaining() > 0 { Some(r.bytes("auth store")?) } else { None };
    r.finish("machine snapshot")?;
    Ok((store, Some(members), auth))
}

/// Writes the members file atomically: a crash leaves the old or the new file, never a mix.
pub fn write_members_file(path: &std::path::Path, roster: &Roster) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    let body = encode_members(roster);
    let mut framed = Vec::with_capacity(body.len() + 8);
    keel_codec::frame::encode_frame(&mut framed, &body);
    file.write_all(&framed)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the members file; `None` if there is none. A damaged file is an error (with where).
pub fn read_members_file(path: &std::path::Path) -> Result<Option<Roster>, String> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("read {}: {error}", path.display())),
    };
    let (payload, _) = keel_codec::frame::decode_frame(&data, 0, data.len())
        .map_err(|error| format!("{}: {error}", path.display()))?;
    decode_members(payload).map(Some).map_err(|error| format!("{}: {error}", path.display()))
}

/// Durable commit timings kept for a host that does not take them (the simulator).
const COMMIT_TIMINGS_MAX: usize = 64;

/// How often the store waits for the disk (etcd's backend commits every 100 ms too).
pub const DURABLE_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A change to a lease's clock, as applied: the server's lease clock follows these on every
/// member, so whichever member leads next already knows each lease's remaining time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Granted, or renewed by a keep-alive (a checkpoint at the full TTL): expires `ttl` seconds
    /// from when this member applied it.
    Started {
        id: i64,
        ttl_seconds: i64,
    },
    Revoked {
        id: i64,
    },
}

pub struct MvccMachine<B: Backend> {
    store: Store<B>,
    /// Commands applied by this process (not skipped as already applied).
    applied_commands: u64,
    /// Entries raft handed to this machine, commands or not, skipped or not: after a restart this
    /// shows how much of the log was replayed.
    entries_handed: u64,
    fatal: Option<String>,
    lease_changes: Vec<LeaseChange>,
    durable_interval: std::time::Duration,
    last_durable_commit: std::time::Instant,
    /// How long recent durable commits took, for the host's metrics (at most
    /// [`COMMIT_TIMINGS_MAX`] kept until taken). Measured only: nothing here depends on them.
    commit_timings: Vec<std::time::Duration>,
    /// Durable every this many flushes instead of by time (deterministic: the simulator's).
    durable_every_flushes: Option<u32>,
    flushes: u64,
    roster: Roster,
    /// Where member records are kept (written at every change); `None` keeps them in memory.
    members_path: Option<PathBuf>,
    members_changed: bool,
    /// Snapshots installed: each replaced the state (and skipped its events) wholesale.
    restores: u64,
    /// Where views of the store for followers' snapshots go; `None` sends the state in the
    /// snapshot itself.
    outbox: Option<Arc<SnapshotOutbox>>,
    /// Users, roles and permissions, as of the applied index (see [`auth`]).
    auth: SharedAuth,
    /// Bugs planted on purpose, for the simulator to prove it catches them.
    plants: keel_raft::Plants,
    /// When the last background checkpoint of the key index began.
    last_index_checkpoint: std::time::Instant,
    /// [`INDEX_CHECKPOINT_EVERY_REVISIONS`] and [`INDEX_CHECKPOINT_MIN_INTERVAL`], unless a test
    /// wants them sooner.
    index_checkpoint_every: (i64, std::time::Duration),
}

/// Revisions made durable between background checkpoints of the key index: a start after kill -9
/// replays at most about this many records on top of the checkpoint (0.1 s here), instead of
/// rebuilding the index from every record (1.7 s for 1M keys).
pub const INDEX_CHECKPOINT_EVERY_REVISIONS: i64 = 50_000;
/// The least time between two background checkpoints, whatever the write rate or the compactions:
/// a checkpoint walks the whole index (about 0.15 s of one core for 1M keys), so at most 1.5 % of it.
pub const INDEX_CHECKPOINT_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A machine dropped in an orderly way (a member stopping on SIGTERM drops its node) checkpoints
/// the store's key index as of its last revision, so the next start loads it and replays nothing.
/// Not after a backend failure, nor while a panic unwinds (the state may be half-applied).
impl<B: Backend> Drop for MvccMachine<B> {
    fn drop(&mut self) {
        // A store in memory (the simulator's) has nowhere to keep an index, and nothing to close.
        let in_memory = self.store.backend().index_checkpoint_path().is_none();
        if in_memory || self.fatal.is_some() || std::thread::panicking() {
            return;
        }
        let started = std::time::Instant::now();
        match self.store.save_index() {
            Ok(true) => tracing::info!(
                keys = self.store.indexed_keys(),
                ms = started.elapsed().as_millis() as u64,
                "saved the key index for the next start"
            ),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not save the key index: the next start rebuilds it"),
        }
    }
}

impl<B: Backend> MvccMachine<B> {
    pub fn new(store: Store<B>) -> MvccMachine<B> {
        MvccMachine::with_durable_interval(store, DURABLE_COMMIT_INTERVAL)
    }

    /// `interval` zero: every flush waits for the disk.
    pub fn with_durable_interval(store: Store<B>, interval: std::time::Duration) -> MvccMachine<B> {
        let mut machine = MvccMachine {
            store,
            applied_commands: 0,
            entries_handed: 0,
            fatal: None,
            lease_changes: Vec::new(),
            durable_interval: interval,
            last_durable_commit: std::time::Instant::now(),
            commit_timings: Vec::new(),
            durable_every_flushes: None,
            flushes: 0,
            roster: Roster::default(),
            members_path: None,
            members_changed: false,
            restores: 0,
            outbox: None,
            auth: SharedAuth::default(),
            plants: keel_raft::Plants::NONE,
            last_index_checkpoint: std::time::Instant::now(),
            index_checkpoint_every: (INDEX_CHECKPOINT_EVERY_REVISIONS, INDEX_CHECKPOINT_MIN_INTERVAL),
        };
        machine.load_auth();
        machine
    }

    /// Plants `plants` (with the `planted-bugs` feature; otherwise they do nothing).
    pub fn with_plants(mut self, plants: keel_raft::Plants) -> Self {
        self.plants = plants;
        self
    }

    /// The auth store, shared with the server.
    pub fn auth(&self) -> SharedAuth {
        self.auth.clone()
    }

    /// Reads the auth store from the store's meta (empty when there is none: a store from
    /// before auth, or a new one). A damaged one stops the machine: applying without it would
    /// check requests differently than the other members.
    fn load_auth(&mut self) {
        let loaded = self.store.backend().load_meta().map_err(|error| error.to_string()).and_then(|meta| {
            match meta.get(AUTH_META_KEY) {
                None => Ok(keel_auth::AuthStore::new()),
                Some(bytes) => keel_auth::AuthStore::decode(bytes).map_err(|error| format!("the auth store: {error}")),
            }
        });
        match loaded {
            Ok(store) => self.auth.replace(store),
            Err(error) => {
                self.fail(error);
            }
        }
    }

    /// Applies an auth command requested by `user` (admin commands need the root role while
    /// auth is on); a refusal still consumes the index.
    fn apply_auth_command(&mut self, index: Index, user: &str, data: &[u8]) -> CommandResult {
        if index <= self.store.applied_index() {
            return Err(ApplyError::AlreadyApplied);
        }
        let decoded = AuthCommand::decode(data);
        let result = match &decoded {
            Err(error) => Err(ApplyError::Undecodable(error.to_string())),
            Ok(command) => {
                let auth = self.auth.clone();
                let mut store = auth.lock();
                let applied = if needs_admin(command) { store.check_admin(user) } else { Ok(()) }
                    .and_then(|()| store.apply(command));
                match applied {
                    Ok(()) => {
                        auth.refresh_enabled(&store);
                        let planted = self.plants.is(keel_raft::Plant::AuthApartFromData);
                        if !matches!(command, AuthCommand::Authenticate { .. }) && !planted {
                            self.store.stage_host_meta(AUTH_META_KEY, store.encode());
                        }
                        self.applied_commands += 1;
                        Ok(Applied::Auth)
                    }
                    Err(error) => Err(ApplyError::Auth(error)),
                }
            }
        };
        if let Err(error) = self.store.advance_applied(index) {
            return Err(self.fail(error));
        }
        result
    }

    /// A client's request with its user: checked against the user's permissions as of this
    /// index, then applied like any command.
    fn apply_authed(&mut self, index: Index, data: &Bytes) -> CommandResult {
        let (user, revision, inner) = match unwrap(data) {
            Ok(parts) => parts,
            Err(error) => return self.refuse_undecodable(index, error.to_string()),
        };
        if AuthCommand::is_auth_command(inner) {
            return self.apply_auth_command(index, &user, inner);
        }
        let command = match Command::decode(inner) {
            Ok(command) => command,
            Err(error) => return self.refuse_undecodable(index, error.to_string()),
        };
        if index > self.store.applied_index() && self.auth.is_enabled() {
            let store = &self.store;
            let lease_keys = |id: i64| store.lease_ttl(id).map(|lease| lease.keys).unwrap_or_default();
            let checked = check_command(&self.auth.lock(), &user, revision, &command, &lease_keys);
            if let Err(error) = checked {
                if let Err(error) = self.store.advance_applied(index) {
                    return Err(self.fail(error));
                }
                return Err(ApplyError::Auth(error));
            }
        }
        self.apply_command(index, command)
    }

    /// Applies a decoded etcd command (already checked, if it came from a client).
    fn apply_command(&mut self, index: Index, command: Command) -> CommandResult {
        // A keep-alive is a checkpoint at the full TTL; the store ignores one for an unknown
        // lease, but its sender must learn the lease is gone (decided here, at apply, the same
        // way on every replica).
        let renews_unknown_lease =
            matches!(command, Command::LeaseCheckpoint { id, .. } if self.store.lease_ttl(id).is_none());
        match self.store.apply(index, &command) {
            Ok(ApplyOutcome::Applied(_)) if renews_unknown_lease => {
                self.applied_commands += 1;
                Err(ApplyError::Client(MvccError::LeaseNotFound))
            }
            Ok(ApplyOutcome::Applied(result)) => {
                self.applied_commands += 1;
                if result.is_ok() {
                    match command {
                        Command::LeaseGrant { id, ttl_seconds } => {
                            self.lease_changes.push(LeaseChange::Started { id, ttl_seconds })
                        }
                        // A checkpoint of an unknown lease is a no-op (as in etcd).
                        Command::LeaseCheckpoint { id, remaining_ttl_seconds }
                            if self.store.lease_ttl(id).is_some() =>
                        {
                            self.lease_changes.push(LeaseChange::Started { id, ttl_seconds: remaining_ttl_seconds })
                        }
                        Command::LeaseRevoke { id } => self.lease_changes.push(LeaseChange::Revoked { id }),
                        _ => {}
                    }
                }
                result.map(Applied::Kv).map_err(ApplyError::Client)
            }
            Ok(ApplyOutcome::Skipped) => Err(ApplyError::AlreadyApplied),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// An entry this version cannot read still consumes its index, so every replica stays at
    /// the same applied index.
    fn refuse_undecodable(&mut self, index: Index, error: String) -> CommandResult {
        if index > self.store.applied_index() {
            if let Err(error) = self.store.advance_applied(index) {
                return Err(self.fail(error));
            }
        }
        Err(ApplyError::Undecodable(error))
    }

    /// Background checkpoints of the key index every `revisions` made durable, at most one per
    /// `min_interval`.
    pub fn with_index_checkpoints(mut self, revisions: i64, min_interval: std::time::Duration) -> Self {
        self.index_checkpoint_every = (revisions, min_interval);
        self
    }

    /// Every `flushes`-th flush waits for the disk; the others do not. No clock is read, so a
    /// simulated run replays exactly.
    pub fn with_durable_every(store: Store<B>, flushes: u32) -> MvccMachine<B> {
        let mut machine = MvccMachine::with_durable_interval(store, std::time::Duration::ZERO);
        machine.durable_every_flushes = Some(flushes.max(1));
        machine
    }

    /// Keeps member records in `path` (rewritten at every change), starting from `roster`.
    pub fn with_members(mut self, roster: Roster, path: PathBuf) -> Self {
        self.roster = roster;
        self.members_path = Some(path);
        self.members_changed = true;
        self
    }

    /// A follower that needs a snapshot gets the store streamed from a consistent view (see
    /// [`FileTicket`]), when the backend is a file.
    pub fn with_snapshot_outbox(mut self, outbox: Arc<SnapshotOutbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Installs a received store file; its member records come with it.
    fn install_file(&mut self, ticket: &FileTicket) {
        if let Err(error) = self.store.install_file(Path::new(&ticket.path)) {
            self.fail(format!("install the received store {}: {error}", ticket.path));
            return;
        }
        self.restores += 1;
        remove_older_received(Path::new(&ticket.path));
        // Its auth store came in its meta, with the data.
        self.load_auth();
        match self.store.backend().load_meta() {
            Ok(meta) => {
                if let Some(roster) = meta.get(MEMBERS_META_KEY).and_then(|m| decode_members(m).ok()) {
                    self.set_members(roster);
                }
            }
            Err(error) => {
                self.fail(error);
            }
        }
    }

    /// How long the durable commits since the last call took (etcd's backend commits; here each
    /// background sync, on its own thread, from its start to the disk's answer).
    pub fn take_commit_timings(&mut self) -> impl Iterator<Item = std::time::Duration> + '_ {
        self.commit_timings.drain(..)
    }

    /// How many snapshots replaced this machine's state so far.
    pub fn restores(&self) -> u64 {
        self.restores
    }

    pub fn members(&self) -> &BTreeMap<u64, MemberRecord> {
        &self.roster.members
    }

    /// The raised alarms, as applied.
    pub fn alarms(&self) -> &Alarms {
        &self.roster.alarms
    }

    /// Members removed from the cluster, as applied.
    pub fn removed_members(&self) -> &std::collections::BTreeSet<u64> {
        &self.roster.removed
    }

    /// Whether member records changed since the last call.
    pub fn take_members_changed(&mut self) -> bool {
        std::mem::take(&mut self.members_changed)
    }

    fn set_members(&mut self, roster: Roster) {
        self.roster = roster;
        self.members_changed = true;
        if let Some(path) = &self.members_path {
            if let Err(error) = write_members_file(path, &self.roster) {
                self.fail(format!("write {}: {error}", path.display()));
            }
        }
    }

    fn apply_member_command(&mut self, index: Index, data: &[u8]) -> CommandResult {
        let command = MemberCommand::decode(data).map_err(|error| ApplyError::Undecodable(error.to_string()));
        if index > self.store.applied_index() {
            if let Err(error) = self.store.advance_applied(index) {
                return Err(self.fail(error));
            }
        }
        // Every member command is idempotent: replaying it after a restart is harmless.
        let mut roster = self.roster.clone();
        let members = &mut roster.members;
        match command? {
            MemberCommand::Add(record) => {
                // Ids derive from peer URLs, so a member added again with the same URLs has its
                // old id: welcome again (etcd, whose ids are random, never meets this).
                roster.removed.remove(&record.id);
                members.insert(record.id, record);
            }
            MemberCommand::Remove(id) => {
                if members.remove(&id).is_some() {
                    roster.removed.insert(id);
                }
            }
            MemberCommand::Publish { id, name, client_urls } => {
                if let Some(record) = members.get_mut(&id) {
                    record.name = name;
                    record.client_urls = client_urls;
                }
            }
            MemberCommand::Promote(id) => {
                if let Some(record) = members.get_mut(&id) {
                    record.learner = false;
                }
            }
            MemberCommand::UpdatePeers { id, peer_urls } => {
                if let Some(record) = members.get_mut(&id) {
                    record.peer_urls = peer_urls;
                }
            }
            MemberCommand::Alarm { alarm, active: true } => {
                roster.alarms.insert(alarm);
            }
            MemberCommand::Alarm { alarm, active: false } => {
                roster.alarms.remove(&alarm);
            }
        }
        self.set_members(roster);
        Ok(Applied::Members)
    }

    /// A consistent view of the committed store, with the member records to stream beside it
    /// (under [`MEMBERS_META_KEY`]), for a reader on another thread: etcd's Snapshot RPC. Taking
    /// it is cheap (a redb read transaction); `None` for a store that is not a file.
    pub fn store_view(&mut self) -> Result<Option<(keel_mvcc::redb_backend::StoreCopy, Vec<u8>)>, String> {
        self.store.write_buffered().map_err(|e| e.to_string())?;
        let view = self.store.begin_copy().map_err(|e| e.to_string())?;
        Ok(view.map(|view| (view, encode_members(&self.roster))))
    }

    pub fn store(&self) -> &Store<B> {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store<B> {
        &mut self.store
    }

    /// Lease grants, renewals and revokes applied since the last call.
    pub fn take_lease_changes(&mut self) -> Vec<LeaseChange> {
        std::mem::take(&mut self.lease_changes)
    }

    pub fn applied_commands(&self) -> u64 {
        self.applied_commands
    }

    pub fn entries_handed(&self) -> u64 {
        self.entries_handed
    }

    /// Starts a background checkpoint of the key index (see `keel_mvcc::IndexCheckpoint`) when one
    /// is due, on a thread of its own: it walks the index a few thousand keys per lock, so apply
    /// goes on meanwhile.
    fn checkpoint_index_if_due(&mut self) {
        // A store in memory (the simulator's) has nowhere to keep one: no clock is read for it.
        if self.store.backend().index_checkpoint_path().is_none()
            || !self.store.index_checkpoint_due(self.index_checkpoint_every.0)
            || self.last_index_checkpoint.elapsed() < self.index_checkpoint_every.1
        {
            return;
        }
        let Some(checkpoint) = self.store.begin_index_checkpoint() else { return };
        self.last_index_checkpoint = std::time::Instant::now();
        let spawned = std::thread::Builder::new().name("index-checkpoint".into()).spawn(move || {
            let (started, revision) = (std::time::Instant::now(), checkpoint.revision());
            match checkpoint.write() {
                Ok(written) => tracing::info!(
                    revision,
                    written,
                    ms = started.elapsed().as_millis() as u64,
                    "checkpointed the key index"
                ),
                Err(error) => tracing::warn!(%error, revision, "could not checkpoint the key index"),
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start a key index checkpoint");
        }
    }

    /// The backend failed: nothing more can be applied until the node restarts.
    pub fn fatal_error(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    fn fail(&mut self, error: impl ToString) -> ApplyError {
        let text = error.to_string();
        tracing::error!(error = %text, "state machine backend failed");
        self.fatal.get_or_insert(text.clone());
        ApplyError::Fatal(text)
    }
}

/// A read the node has cleared (for a linearizable one: leadership confirmed and everything up
/// to its read index applied), with a view of the store at that moment. Running it — walking the
/// index and reading values — is left to the host, on any thread: the driver thread only drives
/// (a range over a million keys must not hold up heartbeats and applies).
pub struct ClearedRead<V> {
    pub query: RangeRequest,
    view: Result<Arc<ReadView<V>>, StorageError>,
}

impl<V> std::fmt::Debug for ClearedRead<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClearedRead").field("query", &self.query).field("view", &self.view).finish()
    }
}

impl<V: keel_mvcc::RevisionSource> ClearedRead<V> {
    /// The read, as of the moment it was cleared.
    pub fn run(self) -> Result<RangeResponse, MvccError> {
        self.view?.range(&self.query)
    }
}

impl<B: Backend> StateMachine for MvccMachine<B> {
    type Response = CommandResult;
    type Query = RangeRequest;
    type QueryResult = ClearedRead<B::View>;

    fn apply(&mut self, index: Index, data: &Bytes) -> CommandResult {
        self.entries_handed += 1;
        match data.first() {
            Some(&MEMBER_COMMAND_TAG) => return self.apply_member_command(index, data),
            Some(&AUTHED_TAG) => return self.apply_authed(index, data),
            // The cluster's own (none are proposed today); applied as by root.
            Some(&AuthCommand::TAG) => return self.apply_auth_command(index, "", data),
            _ => {}
        }
        let command = match Command::decode(data) {
            Ok(command) => command,
            Err(error) => return self.refuse_undecodable(index, error.to_string()),
        };
        self.apply_command(index, command)
    }

    /// The member record a membership change carries is applied with it, in the same entry. A
    /// change without one (a founding entry, or one from a peer of an older version whose record
    /// came in its own entry) only advances the applied index; so does an undecodable context,
    /// the same way on every replica.
    fn apply_conf_change(&mut self, index: Index, context: &[u8]) {
        if context.first() != Some(&MEMBER_COMMAND_TAG) {
            return self.apply_empty(index);
        }
        self.entries_handed += 1;
        let _ = self.apply_member_command(index, context);
    }

    fn apply_empty(&mut self, index: Index) {
        self.entries_handed += 1;
        if index > self.store.applied_index() {
            if let Err(error) = self.store.advance_applied(index) {
                self.fail(error);
            }
        }
    }

    fn flush(&mut self) {
        self.flushes += 1;
        let durable = match self.durable_every_flushes {
            Some(every) => self.flushes.is_multiple_of(u64::from(every)),
            None => {
                let now = std::time::Instant::now();
                let due = now.duration_since(self.last_durable_commit) >= self.durable_interval;
                if due {
                    self.last_durable_commit = now;
                }
                due
            }
        };
        // A sync that finished moves the durable applied index (the log is kept behind it).
        if let Err(error) = self.store.poll_sync() {
            self.fail(error);
            return;
        }
        let result = if durable {
            // The fsync runs on the backend's own thread: the driver pays for the write only.
            self.store.commit_in_background()
        } else {
            self.store.commit_buffered()
        };
        if let Some(took) = self.store.take_finished_sync() {
            if self.commit_timings.len() < COMMIT_TIMINGS_MAX {
                self.commit_timings.push(took);
            }
        }
        match result {
            Err(error) => {
                self.fail(error);
            }
            Ok(()) if durable => self.checkpoint_index_if_due(),
            Ok(()) => {}
        }
    }

    fn query(&self, query: &RangeRequest) -> ClearedRead<B::View> {
        // Reads cleared together (and serializable ones until the next apply) share one view.
        ClearedRead { query: query.clone(), view: self.store.shared_read_view() }
    }

    /// The store's durably committed applied index (etcd's consistent index): the store is the
    /// checkpoint, so the log is compacted behind it with snapshots that carry no data.
    fn durable_index(&self) -> Option<Index> {
        Some(self.store.durable_applied_index())
    }

    fn compaction_floor(&self) -> Option<Index> {
        self.outbox.as_ref().and_then(|outbox| outbox.compaction_floor())
    }

    fn snapshot(&mut self, at_least: Index) -> Result<Bytes, String> {
        if let Some(outbox) = &self.outbox {
            // The copy is of the store's file: everything committed goes there first.
            self.store.write_buffered().map_err(|e| e.to_string())?;
            if let Some(view) = self.store.begin_copy().map_err(|e| e.to_string())? {
                let applied = self.store.applied_index();
                debug_assert!(applied >= at_least, "a view at {applied} for a snapshot at {at_least}");
                let source = outbox.register(applied, view, encode_members(&self.roster));
                return Ok(FileTicket { applied, source, path: String::new() }.encode());
            }
        }
        let store = self.store.snapshot().map_err(|e| e.to_string())?;
        let mut w = Writer::with_capacity(store.len() + 256);
        w.bytes(&store).bytes(&encode_members(&self.roster)).bytes(&self.auth.lock().encode());
        let mut out = SNAPSHOT_MAGIC.to_vec();
        out.extend(w.into_vec());
        Ok(Bytes::from(out))
    }

    fn restore(&mut self, data: &Bytes) {
        if let Some(ticket) = FileTicket::decode(data) {
            self.install_file(&ticket);
            return;
        }
        let (store, members, auth) = match split_snapshot(data) {
            Ok(parts) => parts,
            Err(error) => {
                self.fail(format!("undecodable snapshot: {error}"));
                return;
            }
        };
        // The auth store goes into the store's meta in the same write as the data it belongs to.
        let host_meta = auth.map(|auth| vec![(AUTH_META_KEY, auth.to_vec())]).unwrap_or_default();
        if let Err(error) = self.store.restore_with_meta(&store, host_meta) {
            self.fail(error);
            return;
        }
        self.load_auth();
        self.restores += 1;
        if let Some(roster) = members {
            self.set_members(roster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> MemberRecord {
        MemberRecord {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: vec!["http://127.0.0.1:2379".into()],
            learner: id.is_multiple_of(2),
        }
    }

    #[test]
    fn member_commands_round_trip_and_garbage_is_an_error() {
        let commands = [
            MemberCommand::Add(record(7)),
            MemberCommand::Remove(7),
            MemberCommand::Publish { id: 7, name: "m7".into(), client_urls: vec!["http://x:1".into()] },
            MemberCommand::Promote(7),
            MemberCommand::UpdatePeers { id: 7, peer_urls: vec!["http://y:2".into()] },
            MemberCommand::Alarm { alarm: AlarmMember { member: 7, kind: AlarmKind::NoSpace }, active: true },
        ];
        for command in commands {
            let encoded = command.encode();
            assert_eq!(encoded[0], MEMBER_COMMAND_TAG);
            assert_eq!(MemberCommand::decode(&encoded), Ok(command.clone()));
            for cut in 0..encoded.len() {
                assert!(MemberCommand::decode(&encoded[..cut]).is_err(), "{command:?} cut at {cut}");
            }
        }
        assert!(MemberCommand::decode(&[MEMBER_COMMAND_TAG, 99]).is_err());
    }

    #[test]
    fn installing_a_received_store_removes_only_those_received_before_it() {
        let dir = std::env::temp_dir().join(format!("keel-machine-received-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for name in ["received-00000000000000aa-100.db", "received-00000000000000aa-300.db", "other.db"] {
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        // The installed one was renamed over the store already; only its name is left.
        remove_older_received(&dir.join("received-00000000000000bb-200.db"));
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).expect("list").flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["other.db", "received-00000000000000aa-300.db"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_without_alarms_encode_as_before_and_alarms_follow_them() {
        let roster = Roster::new([record(1)].into_iter().map(|r| (r.id, r)).collect());
        let plain = encode_members(&roster);
        let mut w = Writer::new();
        w.u32(1);
        put_record(&mut w, &record(1));
        assert_eq!(plain, w.into_vec(), "a members file written before alarms existed still reads");
        let mut alarmed = roster.clone();
        alarmed.alarms.insert(AlarmMember { member: 1, kind: AlarmKind::Corrupt });
        alarmed.alarms.insert(AlarmMember { member: 9, kind: AlarmKind::NoSpace });
        let encoded = encode_members(&alarmed);
        assert_eq!(decode_members(&encoded), Ok(alarmed));
        for cut in plain.len() + 1..encoded.len() {
            assert!(decode_members(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        let mut unknown = encoded.clone();
        unknown[plain.len()] = 7;
        assert!(decode_members(&unknown).is_err(), "an unknown trailer is an error");
    }

    /// The machine starts key index checkpoints itself as durable revisions pile up, on a thread
    /// of its own; each is as of a durable revision (what a restart after kill -9 starts from:
    /// `keel_mvcc`'s tests show the store reopened from one equals one rebuilt).
    #[test]
    fn a_machine_checkpoints_its_key_index_in_the_background_as_revisions_become_durable() {
        let dir = std::env::temp_dir().join(format!("keel-machine-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let store =
            Store::open(keel_mvcc::RedbBackend::open(dir.join("db.redb")).unwrap(), Default::default()).unwrap();
        let mut machine =
            MvccMachine::with_durable_every(store, 1).with_index_checkpoints(100, std::time::Duration::ZERO);
        assert_eq!(machine.store().index_checkpoint_revision(), None);
        let mut checkpoints = Vec::new();
        for index in 1..=400u64 {
            let put = keel_mvcc::PutRequest {
                key: Bytes::from(format!("k{:03}", index % 150)),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            };
            assert!(matches!(machine.apply(index, &Bytes::from(Command::Put(put).encode())), Ok(Applied::Kv(_))));
            machine.flush();
            if let Some(revision) = machine.store().index_checkpoint_revision() {
                if checkpoints.last() != Some(&revision) {
                    checkpoints.push(revision);
                }
            }
            // Let the walk run now and then (it is tiny here).
            if index % 50 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        assert!(!checkpoints.is_empty(), "checkpoints were written");
        assert!(checkpoints.iter().all(|&r| r <= machine.store().current_revision()));
        assert!(checkpoints.windows(2).all(|w| w[1] - w[0] >= 100), "at most one per 100 revisions: {checkpoints:?}");
        assert!(dir.join("db.index").exists());
        drop(machine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn alarms_are_raised_and_disarmed_through_the_log() {
        let mut machine = MvccMachine::new(Store::open(keel_mvcc::MemBackend::default(), Default::default()).unwrap());
        let alarm = AlarmMember { member: 5, kind: AlarmKind::NoSpace };
        let raise = Bytes::from(MemberCommand::Alarm { alarm, active: true }.encode());
        assert!(matches!(machine.apply(1, &raise), Ok(Applied::Members)));
        assert!(machine.alarms().contains(&alarm));
        assert!(machine.take_members_changed());
        let disarm = Bytes::from(MemberCommand::Alarm { alarm, active: false }.encode());
        assert!(matches!(machine.apply(2, &disarm), Ok(Applied::Members)));
        assert!(machine.alarms().is_empty());
        let mut bad = raise.to_vec();
        bad[1 + 1 + 8] = 0;
        assert!(MemberCommand::decode(&bad).is_err(), "alarm kind 0 is not an alarm");
    }

    #[test]
    fn a_membership_change_applies_the_member_record_it_carries() {
        let mut machine = MvccMachine::new(Store::open(keel_mvcc::MemBackend::default(), Default::default()).unwrap());
        machine.apply_conf_change(1, &MemberCommand::Add(record(4)).encode());
        assert_eq!(machine.members().get(&4), Some(&record(4)));
        assert_eq!(machine.store().applied_index(), 1, "the entry is applied");
        assert!(machine.take_members_changed());
        machine.apply_conf_change(2, &MemberCommand::Promote(4).encode());
        assert!(!machine.members()[&4].learner);
        // A change without a record (a founding entry), or with garbage, changes no record and
        // still consumes its index.
        machine.apply_conf_change(3, &[]);
        machine.apply_conf_change(4, &[MEMBER_COMMAND_TAG, 99]);
        assert_eq!((machine.members().len(), machine.store().applied_index()), (1, 4));
        machine.apply_conf_change(5, &MemberCommand::Remove(4).encode());
        assert!(machine.members().is_empty());
        assert!(machine.removed_members().contains(&4), "a removed member is remembered");
        // Added again (the same peer URLs give the same id): no longer refused.
        machine.apply_conf_change(6, &MemberCommand::Add(record(4)).encode());
        assert!(machine.removed_members().is_empty());
    }

    #[test]
    fn removed_members_survive_the_members_file_after_the_alarms() {
        let mut roster = Roster::new([record(1)].into_iter().map(|r| (r.id, r)).collect());
        roster.removed.extend([7, 9]);
        assert_eq!(decode_members(&encode_members(&roster)), Ok(roster.clone()), "without alarms");
        roster.alarms.insert(AlarmMember { member: 1, kind: AlarmKind::NoSpace });
        let encoded = encode_members(&roster);
        assert_eq!(decode_members(&encoded), Ok(roster.clone()), "after the alarms");
        // The trailers in the wrong order, or one twice, are refused.
        let mut only_removed = Roster::new(roster.members.clone());
        only_removed.removed = roster.removed.clone();
        let tail = encode_members(&only_removed)[encode_members(&Roster::new(roster.members.clone())).len()..].to_vec();
        let mut twice = encoded.clone();
        twice.extend(&tail);
        assert!(decode_members(&twice).is_err(), "a trailer repeated");
    }

    #[test]
    fn a_file_ticket_round_trips_and_nothing_else_reads_as_one() {
        let ticket = FileTicket { applied: 99, source: 3, path: "/data/snap-db/received-1-2.db".into() };
        assert_eq!(FileTicket::decode(&ticket.encode()), Some(ticket.clone()));
        let encoded = ticket.encode();
        for cut in 0..encoded.len() {
            assert_eq!(FileTicket::decode(&encoded[..cut]), None);
        }
        assert_eq!(FileTicket::decode(b"KEELSM1\0rest"), None);
        assert_eq!(FileTicket::decode(b""), None);
    }

    #[test]
    fn member_records_and_alarms_survive_the_snapshot_envelope() {
        let members: BTreeMap<u64, MemberRecord> = [record(1), record(2)].into_iter().map(|r| (r.id, r)).collect();
        let mut roster = Roster::new(members);
        roster.alarms.insert(AlarmMember { member: 2, kind: AlarmKind::NoSpace });
        let mut w = Writer::new();
        w.bytes(b"store bytes").bytes(&encode_members(&roster));
        let mut snapshot = SNAPSHOT_MAGIC.to_vec();
        snapshot.extend(w.into_vec());
        let (store, decoded, auth) = split_snapshot(&snapshot).expect("splits");
        assert_eq!(&store[..], b"store bytes");
        assert_eq!((decoded, auth), (Some(roster), None), "no auth store: from a version before auth");
        // A bare store snapshot (from before member records) passes through whole.
        let (store, decoded, auth) = split_snapshot(b"KEELMVCC...").expect("bare");
        assert_eq!((&store[..], decoded, auth), (&b"KEELMVCC..."[..], None, None));
    }
}

#[cfg(test)]
mod lease_renewal_tests {
    use keel_mvcc::{MemBackend, StoreOptions};

    use super::*;

    #[test]
    fn renewing_a_lease_that_is_gone_is_an_error_on_every_replica() {
        let store = Store::open(MemBackend::default(), StoreOptions::default()).expect("store");
        let mut machine = MvccMachine::with_durable_interval(store, std::time::Duration::ZERO);
        let command = |c: Command| Bytes::from(c.encode());
        assert!(machine.apply(1, &command(Command::LeaseGrant { id: 5, ttl_seconds: 10 })).is_ok());
        assert_eq!(
            machine.apply(2, &command(Command::LeaseCheckpoint { id: 5, remaining_ttl_seconds: 10 })),
            Ok(Applied::Kv(Response::LeaseCheckpoint { revision: 1 }))
        );
        assert!(machine.apply(3, &command(Command::LeaseRevoke { id: 5 })).is_ok());
        // The keep-alive that lost the race with the revoke: its sender is told the lease is gone.
        assert_eq!(
            machine.apply(4, &command(Command::LeaseCheckpoint { id: 5, remaining_ttl_seconds: 10 })),
            Err(ApplyError::Client(MvccError::LeaseNotFound))
        );
        assert_eq!(machine.store().applied_index(), 4, "the entry still consumed its index");
    }
}
