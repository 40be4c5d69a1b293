//! The membership protocol on the network: one thread runs `keel_membership`'s SWIM for this
//! process, over the peer port (frames of their own, [`PeerFrame::Membership`], on connections
//! of their own, with the cluster checks of raft traffic). Members and spares alike run it, so
//! every process knows who is alive, what each one is (a member or a spare, its zone, its URLs),
//! and since when a dead one has been dead. The leader's repairer ([`crate::healing`]) reads that
//! view; nothing here changes raft membership.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_codec::peer::PeerFrame;
use keel_membership::{wire, Liveness, Swim, SwimConfig};
use keel_raft::NodeId;

use crate::config::PeerUrl;
use crate::metrics::Metrics;
use crate::transport::{OnRemoved, Outgoing, PeerAddress, PeerSender};

/// Membership messages queued for the protocol thread before new ones are dropped (SWIM
/// tolerates loss; a flood must not grow memory).
const INBOX_MAX: usize = 4_096;

pub use keel_host::membership::{MemberMeta, MembershipView as GossipView};

/// How long a connection to a dead member stays up after the protocol last wrote to it.
const RECONNECT_PERIODS: u32 = 3;

/// Where `id` listens: what it says of itself, else the flags.
fn known_address(view: &GossipView, seeds: &BTreeMap<NodeId, PeerAddress>, id: NodeId) -> Option<PeerAddress> {
    let meta = view.members.get(&id).and_then(|seen| seen.meta.as_ref());
    meta.and_then(address).or_else(|| seeds.get(&id).cloned())
}

/// Where process `id` listens for peers, as the membership protocol last heard it say.
pub fn address_of(view: &GossipView, id: NodeId) -> Option<PeerAddress> {
    view.members.get(&id).and_then(|seen| seen.meta.as_ref()).and_then(address)
}

fn address(meta: &MemberMeta) -> Option<PeerAddress> {
    let url = PeerUrl::parse("peer-urls", &meta.peer_url).ok()?;
    Some(PeerAddress { host: url.host, port: url.port })
}

/// Microseconds on the process's monotonic clock: the membership view's times and the healer's
/// "now" must come from one clock.
pub fn process_us() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The handle: hands received membership frames to the protocol thread and shares its view.
pub struct Gossip {
    inbox: SyncSender<(NodeId, Bytes)>,
    pub view: Arc<RwLock<GossipView>>,
}

pub struct GossipSettings {
    pub cluster_id: u64,
    pub me: NodeId,
    pub meta: MemberMeta,
    /// Who to contact first: the members named by the flags and the replicated records.
    pub seeds: BTreeMap<NodeId, PeerAddress>,
    pub period: Duration,
    pub on_removed: Option<OnRemoved>,
    /// The cluster's members as this process's records name them: a spare that became one is
    /// no longer counted as a spare (its description keeps saying where it came from).
    pub members: Arc<RwLock<std::collections::BTreeSet<NodeId>>>,
    /// Peer TLS, as the raft traffic uses it.
    pub tls: Option<Arc<crate::tls::peer::PeerTls>>,
}

impl Gossip {
    pub fn start(settings: GossipSettings, metrics: Arc<Metrics>) -> std::io::Result<Gossip> {
        let (inbox, receiver) = mpsc::sync_channel(INBOX_MAX);
        let view = Arc::new(RwLock::new(GossipView::new(settings.me)));
        let shared = view.clone();
        std::thread::Builder::new()
            .name("keel-gossip".into())
            .spawn(move || run(settings, receiver, shared, metrics))?;
        Ok(Gossip { inbox, view })
    }

    /// A membership frame from `from` (already admitted by the peer listener).
    pub fn deliver(&self, from: NodeId, bytes: Bytes) {
        match self.inbox.try_send((from, bytes)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => tracing::debug!("membership inbox full; dropping a message"),
        }
    }
}

fn run(
    settings: GossipSettings,
    inbox: Receiver<(NodeId, Bytes)>,
    view: Arc<RwLock<GossipView>>,
    metrics: Arc<Metrics>,
) {
    let GossipSettings { cluster_id, me, meta, seeds, period, on_removed, members: recorded, tls } = settings;
    let now_us = process_us;
    // A restarted process must outrank what the others remember of its previous life (dead at
    // some incarnation): the wall clock in milliseconds does, with no state kept on disk.
    let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
    let period_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
    let mut peers: Vec<NodeId> = seeds.keys().copied().collect();
    peers.push(me);
    let seed = incarnation ^ me.rotate_left(17);
    let mut swim =
        Swim::new(SwimConfig::with_period(period_us), me, incarnation, meta.encode(), &peers, seed, now_us());
    let mut seeds = seeds;
    seeds.remove(&me);
    let mut addresses = seeds.clone();
    let mut sender = PeerSender::start(cluster_id, me, &BTreeMap::new()).with_tls(tls);
    if let Some(on_removed) = on_removed {
        sender = sender.with_on_removed(on_removed);
    }
    sender.set_peers(&addresses);
    let mut members = GossipView::new(me);
    let mut published = false;
    let mut reconnecting: BTreeMap<NodeId, Instant> = BTreeMap::new();
    loop {
        let wait = swim.next_deadline().saturating_sub(now_us());
        match inbox.recv_timeout(Duration::from_micros(wait)) {
            Ok((from, bytes)) => match wire::decode(&bytes) {
                Ok(message) => swim.step(now_us(), from, message),
                Err(error) => tracing::debug!(from = %format!("{from:x}"), %error, "dropping a bad membership message"),
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = now_us();
        let ticked = now >= swim.next_deadline();
        if ticked {
            swim.tick(now);
        }
        let events = swim.take_events();
        let changed = !events.is_empty() || !published;
        if changed {
            published = true;
            for change in members.refresh(&swim, now) {
                tracing::info!(member = %format!("{:x}", change.member), from = ?change.from, to = ?change.to, "membership changed");
            }
            metrics.gossip_alive.store(members.count(Liveness::Alive), Relaxed);
            metrics.gossip_suspect.store(members.count(Liveness::Suspect), Relaxed);
            metrics.gossip_dead.store(members.count(Liveness::Dead), Relaxed);
            *view.write().expect("gossip view lock") = members.clone();
        }
        if changed || ticked {
            // Also at ticks: a spare becomes a member through raft, not through gossip.
            let recorded = recorded.read().expect("member ids lock");
            let spares = members.spares().filter(|(id, _)| !recorded.contains(id)).count();
            metrics.spares.store(spares as u64, Relaxed);
        }
        let stats = swim.stats();
        metrics.gossip_suspicions_raised.store(stats.suspicions_raised, Relaxed);
        metrics.gossip_refutations.store(stats.refutations, Relaxed);
        metrics.gossip_reconnects.store(stats.reconnects, Relaxed);
        metrics.gossip_local_health.store(u64::from(swim.local_health()), Relaxed);
        let outbox = swim.take_outbox();
        // Connections only to processes believed alive (or suspected), and for a few periods
        // to a dead one the protocol writes to (its reconnect offers, and the answers to them):
        // a sender thread per dead member would otherwise redial it ten times a second for as
        // long as this process runs.
        let at = Instant::now();
        let before = reconnecting.len();
        reconnecting.retain(|_, since| at.duration_since(*since) < period * RECONNECT_PERIODS);
        let mut rewire = changed || reconnecting.len() != before;
        for (to, _) in &outbox {
            if !addresses.contains_key(to) && known_address(&members, &seeds, *to).is_some() {
                reconnecting.insert(*to, at);
                rewire = true;
            }
        }
        if rewire {
            let wanted: BTreeMap<NodeId, PeerAddress> = members
                .members
                .iter()
                .filter(|&(&id, seen)| id != me && (!seen.liveness.is_gone() || reconnecting.contains_key(&id)))
                .filter_map(|(&id, _)| Some((id, known_address(&members, &seeds, id)?)))
                .collect();
            if wanted != addresses {
                addresses = wanted;
                sender.set_peers(&addresses);
            }
        }
        for (to, message) in outbox {
            let frame = PeerFrame::Membership(Bytes::from(wire::encode(&message)));
            sender.send_out(Outgoing::Frame { to, frame });
        }
    }
}
