//! `keel server`: one member, from etcd's flags to serving etcd's API.
//!
//! Threads: the node driver (raft, WAL, state machine) owns all replicated state; the peer
//! transport has a sender thread per peer and a thread per incoming connection; client requests
//! (gRPC and HTTP on the client URLs) run on a tokio runtime and reach the driver through one
//! bounded queue.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use keel_api::tonic;
use keel_api::v3electionpb::election_server::ElectionServer;
use keel_api::v3lockpb::lock_server::LockServer;
use keel_codec::peer::PeerFrame;
use keel_mvcc::{RedbBackend, Store, StoreOptions};
use keel_node::{DetectionConfig, HealthConfig, Node, NodeConfig};
use keel_raft::{Config, NodeId, RecoveredState};
use keel_storage::{Disk, NodeStorage, RealDisk, StorageOptions};
use thiserror::Error;

use crate::api::auth::AuthService;
use crate::api::cluster::ClusterService;
use crate::api::concurrency::{ElectionService, LockService};
use crate::api::kv::KvService;
use crate::api::lease::LeaseService;
use crate::api::maintenance::MaintenanceService;
use crate::api::watch::WatchService;
use crate::api::Shared;
use crate::config::{ClusterState, PeerUrl, ServerConfig};
use crate::driver::{Driver, Input, PeerInbox};
use crate::hook::{Machine, ServerHook};
use crate::machine::{
    read_members_file, split_snapshot, FileTicket, MemberRecord, MvccMachine, Roster, SnapshotOutbox,
};
use crate::metrics::Metrics;
use crate::transport::{resolve_host, start_listener_with_files, Admission, Incoming, PeerAddress, PeerSender};
use crate::watch_hub::{HeaderBase, WatchHub};
use crate::{http, ids};

/// The one raft group today (multi-raft placement comes later).
pub const GROUP: u64 = 1;
/// Client requests queued for the driver before new ones are refused as "too many requests".
const CLIENT_QUEUE_MAX: usize = 65_536;
/// gRPC allows this much framing on top of `--max-request-bytes` (etcd's grpcOverheadBytes), so
/// that an oversized request reaches the server's own check and gets etcd's message.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("storage: {0}")]
    Storage(#[from] keel_storage::StorageError),
    #[error("state machine: {0}")]
    Mvcc(#[from] keel_mvcc::StorageError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// Resolves a URL's host as peers dial it ([`resolve_host`]: IPv4 first).
pub fn resolve(url: &PeerUrl) -> Result<SocketAddr, ServerError> {
    resolve_host(&url.host, url.port).map_err(io(format!("resolve {url}")))
}

/// Who is in the cluster, as configured by the flags.
pub struct Membership {
    pub me: u64,
    pub cluster_id: u64,
    pub members: BTreeMap<u64, MemberRecord>,
}

pub fn membership(config: &ServerConfig) -> Result<Membership, ServerError> {
    let token = &config.initial_cluster_token;
    let mut members = BTreeMap::new();
    for (name, urls) in &config.initial_cluster {
        let id = ids::member_id(token, urls);
        // Client URLs are not in the flags: each member publishes its own through the log once
        // it runs, so every member's records agree.
        let peer_urls = urls.iter().map(ToString::to_string).collect();
        members.insert(id, MemberRecord { id, name: name.clone(), peer_urls, client_urls: Vec::new(), learner: false });
    }
    // A spare is not in --initial-cluster: its id comes from its own peer URLs, as the id a
    // MemberAdd of those URLs gives (so the leader adds it under the id it already uses).
    let me = if config.spare {
        ids::member_id(token, &config.initial_advertise_peer_urls)
    } else {
        members
            .values()
            .find(|m| m.name == config.name)
            .map(|m| m.id)
            .ok_or_else(|| ServerError::Config(format!("--name {} is not in --initial-cluster", config.name)))?
    };
    Ok(Membership { me, cluster_id: ids::cluster_id(token), members })
}

/// Where each member other than `me` listens for peers (names are resolved by the transport's
/// threads when they connect: this runs on the driver thread).
pub fn peer_addresses(members: &BTreeMap<u64, MemberRecord>, me: u64) -> BTreeMap<NodeId, PeerAddress> {
    let mut out = BTreeMap::new();
    for record in members.values().filter(|m| m.id != me) {
        let Some(url) = record.peer_urls.first() else { continue };
        match PeerUrl::parse("peer-urls", url) {
            Ok(url) => {
                out.insert(record.id, PeerAddress { host: url.host, port: url.port });
            }
            Err(error) => tracing::warn!(member = %format!("{:x}", record.id), %error, "cannot reach a member"),
        }
    }
    out
}

/// Where a member keeps its files under `--data-dir` (etcd's `member/`): the WAL (`wal/`), the
/// store, the member records and received snapshots.
pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

/// The member records in a member's dir (the log replays every change after them).
pub fn members_file(member_dir: &Path) -> PathBuf {
    member_dir.join("members")
}

/// The state machine's store file in a member's dir.
pub fn store_file(member_dir: &Path) -> PathBuf {
    member_dir.join("db.redb")
}

/// Opens the state machine's store, restored from the raft snapshot if a crash left it behind
/// one. The store commits without fsync between its periodic durable commits, so a crash can
/// take it back behind a snapshot that already replaced that part of the log: it must then start
/// from the snapshot (the log after the snapshot replays the rest).
pub fn open_store(db_path: &Path, snapshot: Option<&keel_raft::Snapshot>) -> Result<Store<RedbBackend>, ServerError> {
    store_up_to(open_store_file(db_path)?, snapshot)
}

/// Opens the store file and rebuilds its key index (what takes time at a restart).
fn open_store_file(db_path: &Path) -> Result<Store<RedbBackend>, ServerError> {
    let backend = RedbBackend::open(db_path)?;
    Ok(Store::open(backend, StoreOptions::default())?)
}

/// Brings an open store up to the raft snapshot the log starts from, if it is behind.
fn store_up_to(
    mut store: Store<RedbBackend>,
    snapshot: Option<&keel_raft::Snapshot>,
) -> Result<Store<RedbBackend>, ServerError> {
    if let Some(snapshot) = snapshot {
        if store.durable_applied_index() < snapshot.meta.index {
            tracing::info!(
                store = store.durable_applied_index(),
                snapshot = snapshot.meta.index,
                "the store is behind the raft snapshot; restoring it from the snapshot"
            );
            if let Some(ticket) = FileTicket::decode(&snapshot.data) {
                // A store file received from the leader, made durable before its snapshot
                // record; the crash came before it was renamed into place.
                store.install_file(Path::new(&ticket.path)).map_err(|error| {
                    ServerError::Config(format!("install the received store file {}: {error}", ticket.path))
                })?;
            } else if snapshot.data.is_empty() {
                return Err(ServerError::Config(format!(
                    "the store (durable to index {}) is behind the log's snapshot at {}, which holds no data: \
                     the store file was replaced or lost",
                    store.durable_applied_index(),
                    snapshot.meta.index
                )));
            } else {
                let (store_snapshot, _, auth) =
                    split_snapshot(&snapshot.data).map_err(|e| ServerError::Config(e.to_string()))?;
                let host_meta = auth.map(|auth| vec![(keel_machine::AUTH_META_KEY, auth.to_vec())]).unwrap_or_default();
                store.restore_with_meta(&store_snapshot, host_meta).map_err(|error| {
                    ServerError::Config(format!("restore the store from the raft snapshot: {error}"))
                })?;
            }
        }
    }
    Ok(store)
}

/// Where stores streamed from the leader for snapshots are received. Once the store is open (a
/// received file a crash left uninstalled is installed by then), whatever is left there is a
/// left-over and goes.
pub fn snapshot_files_dir(member_dir: &Path) -> PathBuf {
    member_dir.join("snap-db")
}

fn clean_snapshot_files(dir: &Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    for entry in std::fs::read_dir(dir).map_err(io(format!("list {}", dir.display())))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.starts_with("outgoing-") || name.starts_with("received-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn hex_ids(ids: &[u64]) -> String {
    ids.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>().join(", ")
}

/// Opens (or bootstraps) this member's WAL and store and builds its node.
fn open_node(
    config: &ServerConfig,
    dir: &Path,
    me: u64,
    initial_members: &BTreeMap<u64, MemberRecord>,
    outbox: Arc<SnapshotOutbox>,
) -> Result<(Node<Machine>, NodeStorage), ServerError> {
    let voters: Vec<u64> = initial_members.keys().copied().collect();
    let wal_dir = dir.join("wal");
    std::fs::create_dir_all(&wal_dir).map_err(io(format!("create {}", wal_dir.display())))?;
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(&wal_dir));
    // The store and the WAL are independent until the store is checked against the log's
    // snapshot: open them side by side (indexing a 1M-key store takes a second or more, reading
    // the WAL's live segments a few hundred ms).
    let db_path = store_file(dir);
    let opening = std::time::Instant::now();
    let store_opening = std::thread::Builder::new()
        .name("open-store".into())
        .spawn(move || open_store_file(&db_path).map(|store| (store, opening.elapsed())))
        .map_err(io("start the store-opening thread"))?;
    let (mut storage, mut groups, recovery) = NodeStorage::open(disk, StorageOptions::new())?;
    tracing::info!(?recovery, ms = opening.elapsed().as_millis() as u64, "write-ahead log recovered");
    // Member records: the members file if this member has one (written as the log applies
    // membership changes, or by `keel snapshot restore`), else the log's snapshot's, else the
    // flags' (the log after either replays every change since).
    let members_path = members_file(dir);
    let members_on_disk = read_members_file(&members_path).map_err(ServerError::Config)?;
    let log_found = groups.contains_key(&GROUP);
    // A new log's founding write waits until the store is known to be new too (below).
    let mut founding_write = None;
    let mut state = match groups.remove(&GROUP) {
        Some(group) => group.raft_state(),
        // Joining a running cluster (after MemberAdd): start empty; the leader sends the log
        // (or a snapshot), membership included.
        None if config.initial_cluster_state == ClusterState::Existing => RecoveredState::default(),
        None => {
            // A data dir restored from a snapshot for other members than the flags name (another
            // --initial-cluster, or token): founding a log for these would split the cluster.
            if let Some(restored) = &members_on_disk {
                let restored_ids: Vec<u64> = restored.members.keys().copied().collect();
                if restored_ids != voters {
                    return Err(ServerError::Config(format!(
                        "{} holds the member records of members {} (restored for another cluster?), but \
                         --initial-cluster and --initial-cluster-token give members {}",
                        members_path.display(),
                        hex_ids(&restored_ids),
                        hex_ids(&voters)
                    )));
                }
            }
            let founding = keel_host::bootstrap_write(GROUP, &voters);
            let (hard_state, entries) = keel_host::bootstrapped(&founding);
            founding_write = Some(founding);
            RecoveredState { hard_state, entries, ..Default::default() }
        }
    };
    std::fs::create_dir_all(snapshot_files_dir(dir)).map_err(io("create the snapshot files dir"))?;
    let (store, store_took) =
        store_opening.join().map_err(|_| ServerError::Config("opening the store panicked".into()))??;
    let store = store_up_to(store, state.snapshot.as_ref())?;
    // A store that applied entries of a log this member no longer has (its WAL removed or
    // replaced): a new log's entries would take the same indexes and be skipped as applied —
    // acknowledged writes gone. Refused, with what to do.
    if !log_found && store.durable_applied_index() > 0 {
        return Err(ServerError::Config(format!(
            "the store {} has applied the log up to index {}, but the write-ahead log in {} holds no log: \
             it was removed or replaced. Restore this member from a snapshot (`keel snapshot restore`), \
             or remove its data dir and add it to the cluster again as a new member",
            store_file(dir).display(),
            store.durable_applied_index(),
            wal_dir.display()
        )));
    }
    if let Some(founding) = founding_write {
        keel_host::persist_durably(&mut storage, std::slice::from_ref(&founding))?;
    }
    tracing::info!(
        keys = store.indexed_keys(),
        applied = store.durable_applied_index(),
        ms = store_took.as_millis() as u64,
        "store opened"
    );
    clean_snapshot_files(&snapshot_files_dir(dir))?;
    let snapshot_members = match &state.snapshot {
        Some(snapshot) => split_snapshot(&snapshot.data).map_err(|e| ServerError::Config(e.to_string()))?.1,
        None => None,
    };
    let members = match members_on_disk {
        Some(members) => members,
        None => snapshot_members.unwrap_or_else(|| Roster::new(initial_members.clone())),
    };
    // The store's durable applied index: raft hands out only what comes after it.
    state.applied = state.applied.max(store.durable_applied_index());
    let mut node_config = NodeConfig::new(me);
    node_config.snapshot_interval_entries = config.snapshot_count.max(1);
    node_config.catch_up_entries = config.snapshot_catchup_entries;
    if config.leader_suspicion_phi > 0.0 {
        let mut detection = DetectionConfig::for_heartbeat_interval(config.heartbeat_interval_ms.max(1) * 1_000);
        detection.suspect_phi = config.leader_suspicion_phi;
        detection.doubt_phi = detection.doubt_phi.min(config.leader_suspicion_phi);
        node_config.detection = Some(detection);
    }
    if config.fail_slow_factor > 0.0 {
        let mut health = HealthConfig::default_thresholds();
        health.slow.factor = config.fail_slow_factor;
        node_config.health = Some(health);
    }
    let mut node = Node::new(node_config);
    let mut raft = Config::new(me, GROUP);
    raft.campaign_soon_at_start = true;
    raft.election_ticks =
        u32::try_from(config.election_timeout_ms / config.heartbeat_interval_ms.max(1)).unwrap_or(u32::MAX).max(2);
    let machine = MvccMachine::new(store).with_members(members, members_path).with_snapshot_outbox(outbox);
    node.add_group(raft, state, machine)
        .map_err(|error| ServerError::Config(format!("raft refused the recovered state: {error}")))?;
    Ok((node, storage))
}

/// Forgets simple tokens nobody used for `ttl_seconds` (etcd's `--auth-token-ttl`), checking
/// every second.
async fn sweep_tokens(auth: crate::machine::SharedAuth, ttl_seconds: u64) {
    let started = std::time::Instant::now();
    auth.lock().tokens().set_ttl_ms(ttl_seconds.saturating_mul(1000));
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        auth.lock().tokens().sweep(now_ms);
    }
}

/// Runs the member until Ctrl-C or SIGTERM.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let membership = membership(&config)?;
    // Certificates first: a member whose TLS cannot start must not touch its data.
    let (client_tls, peer_tls) = tls_of(&config)?;
    let jwt = match &config.auth_token_jwt {
        None => None,
        Some(options) => Some(Arc::new(
            crate::jwt::JwtTokens::load(options).map_err(|e| ServerError::Config(format!("--auth-token: {e}")))?,
        )),
    };
    let me = membership.me;
    let dir = member_dir(Path::new(&config.data_dir));
    std::fs::create_dir_all(&dir).map_err(io(format!("create data dir {}", dir.display())))?;
    let outbox = Arc::new(SnapshotOutbox::default());
    let (node, storage) = open_node(&config, &dir, me, &membership.members, outbox.clone())?;
    let latest_view = node.machine(GROUP).expect("the group was just added").store().latest_view();
    let current_members = node.machine(GROUP).map(|m| m.members().clone()).unwrap_or_default();
    let auth = node.machine(GROUP).map(|m| m.auth()).unwrap_or_default();

    let metrics = Arc::new(Metrics::default());
    let base = HeaderBase { cluster_id: membership.cluster_id, member_id: me };
    let hub = Arc::new(Mutex::new(WatchHub::new(base)));
    let member_ids: Arc<std::sync::RwLock<BTreeSet<u64>>> = Arc::new(std::sync::RwLock::new(
        current_members.keys().copied().chain(membership.members.keys().copied()).collect(),
    ));
    let (inputs, receiver) = mpsc::sync_channel::<Input<Machine, ServerHook>>(CLIENT_QUEUE_MAX);

    // Peers.
    let peer_listen = resolve(&config.listen_peer_urls[0])?;
    let listener = TcpListener::bind(peer_listen).map_err(io(format!("listen on peer URL {peer_listen}")))?;
    let attributes = PeerFrame::Attributes {
        name: config.name.clone(),
        client_urls: config.advertise_client_urls.iter().map(ToString::to_string).collect(),
    };
    let mut addresses = peer_addresses(&membership.members, me);
    addresses.extend(peer_addresses(&current_members, me));
    let peers = Arc::new(
        PeerSender::start_with(membership.cluster_id, me, &BTreeMap::new(), Some(attributes))
            .with_tls(peer_tls.clone())
            .with_outbox(outbox)
            .with_on_removed(Arc::new(removed_from_cluster))
            .with_traffic(metrics.peer.clone()),
    );
    peers.set_peers(&addresses);
    let peer_inputs = inputs.clone();
    let inbox = Arc::new(PeerInbox::default());
    let peer_inbox = inbox.clone();
    let known = member_ids.clone();
    // Members removed from the cluster (replaced while down, or by an operator), as the
    // replicated member records keep them: told so if they come back.
    let removed: Arc<std::sync::RwLock<BTreeSet<u64>>> =
        Arc::new(std::sync::RwLock::new(node.machine(GROUP).map(|m| m.removed_members().clone()).unwrap_or_default()));
    // Whether this process is in the cluster's member records yet (a spare is not until the
    // leader adds it): until then it accepts raft traffic from any process of the cluster,
    // since the leader that adds it may be one its flags did not name.
    let joined = Arc::new(std::sync::atomic::AtomicBool::new(current_members.contains_key(&me)));
    let gossip = crate::gossip::Gossip::start(
        crate::gossip::GossipSettings {
            cluster_id: membership.cluster_id,
            me,
            meta: crate::gossip::MemberMeta {
                name: config.name.clone(),
                peer_url: config.initial_advertise_peer_urls.first().map(ToString::to_string).unwrap_or_default(),
                client_urls: config.advertise_client_urls.iter().map(ToString::to_string).collect(),
                zone: config.zone.clone(),
                spare: config.spare,
            },
            seeds: addresses.clone(),
            period: config.membership_probe_interval,
            on_removed: Some(Arc::new(removed_from_cluster)),
            members: member_ids.clone(),
            tls: peer_tls.clone(),
        },
        metrics.clone(),
    )
    .map_err(io("start the membership thread"))?;
    let gossip_view = gossip.view.clone();
    let view_for_peers = gossip_view.clone();
    peers.set_address_fallback(Arc::new(move |id| {
        crate::gossip::address_of(&view_for_peers.read().expect("gossip view lock"), id)
    }));
    let (admit_removed, admit_joined) = (removed.clone(), joined.clone());
    start_listener_with_files(
        listener,
        membership.cluster_id,
        me,
        Arc::new(move |id| {
            if admit_removed.read().expect("removed ids lock").contains(&id) {
                Admission::Removed
            } else if known.read().expect("member ids lock").contains(&id)
                || !admit_joined.load(std::sync::atomic::Ordering::Relaxed)
            {
                Admission::Member
            } else {
                Admission::Guest
            }
        }),
        Arc::new(move |incoming| match incoming {
            Incoming::Frame { from, frame: PeerFrame::Attributes { name, client_urls } } => {
                tracing::debug!(peer = %format!("{from:x}"), %name, ?client_urls, "peer connected");
            }
            Incoming::Frame { from, frame: PeerFrame::Membership(bytes) } => gossip.deliver(from, bytes),
            incoming => {
                if peer_inbox.push(incoming) {
                    // A full client queue means the driver is busy and drains the inbox anyway.
                    let _ = peer_inputs.try_send(Input::Wake);
                }
            }
        }),
        crate::transport::ListenerOptions {
            files_dir: Some(snapshot_files_dir(&dir)),
            traffic: metrics.peer.clone(),
            tls: peer_tls,
        },
    );

    // The driver.
    let own = MemberRecord {
        id: me,
        name: config.name.clone(),
        peer_urls: config.initial_advertise_peer_urls.iter().map(ToString::to_string).collect(),
        client_urls: config.advertise_client_urls.iter().map(ToString::to_string).collect(),
        learner: false,
    };
    let mut hook = ServerHook::new(GROUP, hub.clone(), metrics.clone(), store_file(&dir)).with_membership(
        own,
        peers.clone(),
        member_ids,
    );
    hook.track_removals(removed, joined);
    hook.quota_bytes = config.quota_bytes();
    hook.member_id = me;
    hook.min_free_bytes = config.min_free_bytes;
    hook.lease_grace = Duration::from_millis(config.election_timeout_ms);
    let tick = Duration::from_millis(config.heartbeat_interval_ms.max(1));
    hook.auto_compaction = crate::auto_compaction::AutoCompactor::new(config.auto_compaction);
    let faults = config.unsafe_fault_injection.then(|| {
        tracing::warn!("--unsafe-fault-injection is on: this member's disk can be slowed over HTTP");
        Arc::new(crate::faults::InjectedFaults::default())
    });
    let mut driver = Driver::new(node, storage, receiver, inbox, Box::new(move |out| peers.send_out(out)), hook, tick)
        .with_retention(config.retention());
    if let Some(faults) = &faults {
        driver = driver.with_injected_faults(faults.clone());
    }
    let (stopped, driver_stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("keel-driver".into())
        .spawn(move || {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run())) {
                // The driver and everything it held are dropped by now.
                Ok(Ok(())) => drop(stopped.send(())),
                // What could not be made durable must not be acknowledged: stop the member.
                Ok(Err(error)) => {
                    tracing::error!(%error, "storage failed; stopping this member");
                    std::process::exit(1);
                }
                // Without its driver a member can only answer "stopped": end the process so a
                // supervisor restarts it (from its durable state).
                Err(_) => {
                    tracing::error!("the driver thread panicked; stopping this member");
                    std::process::exit(1);
                }
            }
        })
        .map_err(io("spawn the driver thread"))?;

    let election_ms = config.election_timeout_ms as i64;
    let shared = Arc::new(Shared {
        inputs,
        group: GROUP,
        cluster_id: membership.cluster_id,
        member_id: me,
        token: config.initial_cluster_token.clone(),
        max_request_bytes: usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX),
        max_txn_ops: usize::try_from(config.max_txn_ops).unwrap_or(usize::MAX),
        // etcd: 1.5 election timeouts, in whole seconds, rounded up.
        min_lease_ttl: (3 * election_ms / 2 + 999) / 1000,
        hub,
        latest_view,
        metrics,
        snapshot_streams: Arc::default(),
        read_slots: Arc::new(tokio::sync::Semaphore::new(crate::api::READS_AT_ONCE)),
        faults,
        gossip: gossip_view.clone(),
        auth,
        common_name_is_user: config.client_tls.client_cert_auth,
        jwt,
    });

    tracing::info!(
        name = %config.name,
        id = %format!("{me:016x}"),
        cluster_id = %format!("{:016x}", membership.cluster_id),
        client_urls = %join(&config.listen_client_urls),
        peer_urls = %join(&config.listen_peer_urls),
        data_dir = %config.data_dir,
        cluster_state = ?config.initial_cluster_state,
        "keel member starting"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keel-api")
        .build()
        .map_err(io("start the async runtime"))?;
    runtime.spawn(
        crate::healing::Healer {
            shared: shared.clone(),
            gossip: gossip_view,
            replace_dead_after: config.replace_dead_after,
        }
        .run(),
    );
    runtime.spawn(sweep_tokens(shared.auth.clone(), config.auth_token_ttl_seconds));
    let served = runtime.block_on(serve_clients(config, shared.clone(), client_tls));
    // A graceful stop (the signal came; the client listeners still answer until the runtime
    // goes, but the driver takes nothing after this turn): it drops the node and so closes the
    // store (the next start need not repair it, unless a snapshot stream still held a read view
    // of it). A driver that does not finish in time is left to the exit.
    let deadline = std::time::Instant::now() + DRIVER_STOP_WAIT;
    let mut stop = Input::Stop;
    let closed = loop {
        match shared.inputs.try_send(stop) {
            Ok(()) => {
                break driver_stopped
                    .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .is_ok()
            }
            Err(std::sync::mpsc::TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                stop = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => break false,
        }
    };
    if closed {
        tracing::info!("stores closed");
    } else {
        tracing::warn!("the driver did not stop in time: the store will be repaired at the next start");
    }
    served
}

/// A member answered this one's connection with "you were removed from the cluster": it was
/// replaced while it was down (or removed by an operator). Its state is stale and the cluster
/// no longer counts it, so it stops, as etcd's removed members do, rather than run unheard.
fn removed_from_cluster(by: u64) {
    tracing::error!(
        by = %format!("{by:x}"),
        "this member has been removed from the cluster (replaced while it was down?); stopping. \
         To bring this machine back, wipe its data dir and start it as a --spare with new peer \
         URLs (the cluster refuses the old ones' member id)"
    );
    std::process::exit(2);
}

/// How long a graceful stop waits for the driver to close the stores.
const DRIVER_STOP_WAIT: Duration = Duration::from_secs(10);

fn join(urls: &[PeerUrl]) -> String {
    urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The client port's TLS: the handshake's configuration, and what it demands of certificates.
type ClientTls = (Arc<rustls::ServerConfig>, Arc<crate::tls::Side>);

/// The client port's TLS configuration (when a client URL is `https://`) and the peer
/// transport's (when the peer URL is), from etcd's flags.
#[allow(clippy::type_complexity)]
fn tls_of(config: &ServerConfig) -> Result<(Option<ClientTls>, Option<Arc<crate::tls::peer::PeerTls>>), ServerError> {
    let validity = std::time::Duration::from_secs(config.self_signed_cert_validity_years.saturating_mul(365 * 86_400));
    let fixtures = Path::new(&config.data_dir).join("fixtures");
    let hosts = |urls: &[&[PeerUrl]]| -> Vec<String> {
        let mut hosts: Vec<String> = urls
            .iter()
            .flat_map(|list| list.iter())
            .map(|url| url.host.trim_start_matches('[').trim_end_matches(']').to_string())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    };
    let client = if config.serves_clients_with_tls() {
        let client_hosts = hosts(&[&config.listen_client_urls, &config.advertise_client_urls]);
        let side = crate::tls::Side::from_flags(&config.client_tls, &fixtures.join("client"), &client_hosts, validity)?;
        // One port serves gRPC (h2) and the JSON gateway (h2 or HTTP/1.1), as etcd's does.
        Some((Arc::new(side.server_config(&[b"h2", b"http/1.1"])?), Arc::new(side)))
    } else {
        None
    };
    let peer = if config.peers_use_tls() {
        let peer_hosts = hosts(&[&config.listen_peer_urls, &config.initial_advertise_peer_urls]);
        let side = crate::tls::Side::from_flags(&config.peer_tls, &fixtures.join("peer"), &peer_hosts, validity)?;
        Some(Arc::new(crate::tls::peer::PeerTls::new(&side, &config.peer_cert_allowed_cn)?))
    } else {
        None
    };
    Ok((client, peer))
}

async fn serve_clients(config: ServerConfig, shared: Arc<Shared>, tls: Option<ClientTls>) -> Result<(), ServerError> {
    let max_message = shared.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
    let (reporter, health) = keel_api::tonic_health::server::health_reporter();
    reporter.set_service_status("", keel_api::tonic_health::ServingStatus::Serving).await;
    let routes = tonic::service::Routes::new(health)
        .add_service(KvServer::new(KvService { shared: shared.clone() }).max_decoding_message_size(max_message))
        .add_service(WatchServer::new(WatchService { shared: shared.clone() }).max_decoding_message_size(max_message))
        .add_service(LeaseServer::new(LeaseService { shared: shared.clone() }).max_decoding_message_size(max_message))
        .add_service(ClusterServer::new(ClusterService { shared: shared.clone() }))
        .add_service(MaintenanceServer::new(MaintenanceService { shared: shared.clone() }))
        .add_service(LockServer::new(LockService { shared: shared.clone() }))
        .add_service(ElectionServer::new(ElectionService { shared: shared.clone() }))
        .add_service(AuthServer::new(AuthService { shared: shared.clone() }));
    // Unknown paths: etcd's 404, or gRPC's Unimplemented for gRPC clients (the fallback set
    // last replaces tonic's, which answered every unknown path 200 with grpc-status 12).
    let app = routes
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(shared.metrics.clone(), crate::grpc_metrics::count))
        .merge(http::router(shared.clone()))
        .merge(crate::gateway::router(shared.clone()))
        .fallback(crate::gateway::not_found);

    let http2 = crate::client_port::Http2Settings { max_concurrent_streams: config.max_concurrent_streams };
    let mut servers = Vec::new();
    for url in &config.listen_client_urls {
        let addr = resolve(url)?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(io(format!("listen on client URL {url}")))?;
        let (app, settings) = (app.clone(), http2);
        if let (true, Some(tls)) = (url.is_tls(), &tls) {
            let listener = crate::tls::listener::TlsListener::start(listener, tls.0.clone(), tls.1.clone());
            servers.push(tokio::spawn(crate::client_port::serve_tls(listener, app, settings)));
        } else {
            servers.push(tokio::spawn(crate::client_port::serve_plain(listener, app, settings)));
        }
    }
    tracing::info!(name = %config.name, "serving clients");
    shutdown_signal().await;
    tracing::info!(name = %config.name, "stopping (everything acknowledged is durable)");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, peer_url: &str) -> MemberRecord {
        MemberRecord {
            id,
            name: format!("m{id}"),
            peer_urls: vec![peer_url.into()],
            client_urls: Vec::new(),
            learner: false,
        }
    }

    /// Runs on the driver thread at every membership change: it must not wait on DNS. A name is
    /// kept as it is (the transport resolves it when it connects); only a malformed URL is left out.
    #[test]
    fn peer_addresses_are_not_resolved_on_the_way() {
        let members: BTreeMap<u64, MemberRecord> = [
            record(1, "http://127.0.0.1:2380"),
            record(2, "http://no-such-host.invalid:2380"),
            record(3, "not a url"),
            record(4, "http://[::1]:2381"),
        ]
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
        let addresses = peer_addresses(&members, 1);
        let hosts: Vec<(u64, String)> = addresses.iter().map(|(&id, a)| (id, a.to_string())).collect();
        assert_eq!(hosts, [(2, "no-such-host.invalid:2380".to_string()), (4, "[::1]:2381".to_string())]);
        // Dialing resolves them, brackets and all.
        assert_eq!(addresses[&4].resolve().expect("an IPv6 literal"), "[::1]:2381".parse().unwrap());
        let local = PeerAddress { host: "127.0.0.1".into(), port: 2380 };
        assert_eq!(local.resolve().expect("an IPv4 literal"), "127.0.0.1:2380".parse().unwrap());
    }
}
