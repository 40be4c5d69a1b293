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

/// What a process says about itself in the membership protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberMeta {
    pub name: String,
    pub peer_url: String,
    pub client_urls: Vec<String>,
    /// Its failure domain (`--zone`).
    pub zone: String,
    /// A spare (`--spare`): it holds no replica yet.
    pub spare: bool,
}

impl MemberMeta {
    /// Fields separated by NUL (none of them can hold one: they come from flags).
    pub fn encode(&self) -> Bytes {
        let fields = [
            self.name.as_str(),
            self.peer_url.as_str(),
            &self.client_urls.join(","),
            self.zone.as_str(),
            if self.spare { "spare" } else { "member" },
        ];
        Bytes::from(fields.join("\0"))
    }

    /// None for anything not made by [`MemberMeta::encode`] (an empty description included: a
    /// member known only from the flags, not heard from yet).
    pub fn decode(bytes: &[u8]) -> Option<MemberMeta> {
        let text = std::str::from_utf8(bytes).ok()?;
        let fields: Vec<&str> = text.split('\0').collect();
        let [name, peer_url, client_urls, zone, role] = fields.as_slice() else { return None };
        let spare = match *role {
            "spare" => true,
            "member" => false,
            _ => return None,
        };
        let client_urls = client_urls.split(',').filter(|u| !u.is_empty()).map(str::to_string).collect();
        Some(MemberMeta {
            name: name.to_string(),
            peer_url: peer_url.to_string(),
            client_urls,
            zone: zone.to_string(),
            spare,
        })
    }

    fn address(&self) -> Option<PeerAddress> {
        let url = PeerUrl::parse("peer-urls", &self.peer_url).ok()?;
        Some(PeerAddress { host: url.host, port: url.port })
    }
}

/// One process as this one's membership protocol sees it.
#[derive(Clone, Debug)]
pub struct GossipMember {
    pub liveness: Liveness,
    pub incarnation: u64,
    /// None until heard from (a member named only by the flags).
    pub meta: Option<MemberMeta>,
    /// When this process last saw its liveness change (for "dead for how long").
    pub since: Instant,
}

/// Everything the protocol thread knows, shared read-only with the rest of the server.
#[derive(Clone, Debug, Default)]
pub struct GossipView {
    pub me: NodeId,
    pub members: BTreeMap<NodeId, GossipMember>,
}

impl GossipView {
    /// How long `id` has been confirmed dead (None: alive, suspected or unknown).
    pub fn dead_for(&self, id: NodeId, now: Instant) -> Option<Duration> {
        let member = self.members.get(&id)?;
        member.liveness.is_gone().then(|| now.saturating_duration_since(member.since))
    }

    /// Alive spares, with their description.
    pub fn spares(&self) -> impl Iterator<Item = (NodeId, &MemberMeta)> + '_ {
        self.members.iter().filter_map(|(&id, m)| match &m.meta {
            Some(meta) if meta.spare && m.liveness == Liveness::Alive => Some((id, meta)),
            _ => None,
        })
    }

    pub fn zone(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id)?.meta.as_ref().map(|m| m.zone.as_str())
    }
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
}

impl Gossip {
    pub fn start(settings: GossipSettings, metrics: Arc<Metrics>) -> std::io::Result<Gossip> {
        let (inbox, receiver) = mpsc::sync_channel(INBOX_MAX);
        let view = Arc::new(RwLock::new(GossipView { me: settings.me, members: BTreeMap::new() }));
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
    let GossipSettings { cluster_id, me, meta, seeds, period, on_removed, members: recorded } = settings;
    let start = Instant::now();
    let now_us = || start.elapsed().as_micros() as u64;
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
    let mut sender = PeerSender::start(cluster_id, me, &BTreeMap::new());
    if let Some(on_removed) = on_removed {
        sender = sender.with_on_removed(on_removed);
    }
    sender.set_peers(&addresses);
    let mut members: BTreeMap<NodeId, GossipMember> = BTreeMap::new();
    let mut published = false;
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
            let at = Instant::now();
            // Connections only to processes believed alive (or suspected): the protocol sends
            // nothing to the dead, and a sender thread per dead member would redial it ten
            // times a second for as long as this process runs. One that comes back is heard
            // from first, and gets its connection again.
            let mut wanted = BTreeMap::new();
            for (id, liveness, incarnation) in swim.members() {
                let meta = swim.meta(id).and_then(|bytes| MemberMeta::decode(bytes));
                if id != me && !liveness.is_gone() {
                    let address = meta.as_ref().and_then(MemberMeta::address).or_else(|| seeds.get(&id).cloned());
                    if let Some(address) = address {
                        wanted.insert(id, address);
                    }
                }
                let entry = members.entry(id).or_insert(GossipMember { liveness, incarnation, meta: None, since: at });
                if entry.liveness != liveness {
                    entry.since = at;
                    if id != me {
                        tracing::info!(member = %format!("{id:x}"), from = ?entry.liveness, to = ?liveness, "membership changed");
                    }
                }
                entry.liveness = liveness;
                entry.incarnation = incarnation;
                if meta.is_some() {
                    entry.meta = meta;
                }
            }
            if wanted != addresses {
                addresses = wanted;
                sender.set_peers(&addresses);
            }
            let count = |l: Liveness| members.values().filter(|m| m.liveness == l).count() as u64;
            metrics.gossip_alive.store(count(Liveness::Alive), Relaxed);
            metrics.gossip_suspect.store(count(Liveness::Suspect), Relaxed);
            metrics.gossip_dead.store(count(Liveness::Dead), Relaxed);
            let mut shared = view.write().expect("gossip view lock");
            shared.members = members.clone();
        }
        if changed || ticked {
            // Also at ticks: a spare becomes a member through raft, not through gossip.
            let recorded = recorded.read().expect("member ids lock");
            let spares = members
                .iter()
                .filter(|(id, m)| {
                    m.liveness == Liveness::Alive
                        && m.meta.as_ref().is_some_and(|meta| meta.spare)
                        && !recorded.contains(id)
                })
                .count();
            metrics.spares.store(spares as u64, Relaxed);
        }
        let stats = swim.stats();
        metrics.gossip_suspicions_raised.store(stats.suspicions_raised, Relaxed);
        metrics.gossip_refutations.store(stats.refutations, Relaxed);
        metrics.gossip_local_health.store(u64::from(swim.local_health()), Relaxed);
        for (to, message) in swim.take_outbox() {
            let frame = PeerFrame::Membership(Bytes::from(wire::encode(&message)));
            sender.send_out(Outgoing::Frame { to, frame });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_survives_the_round_trip_and_garbage_is_refused() {
        let meta = MemberMeta {
            name: "spare-1".into(),
            peer_url: "http://127.0.0.1:2480".into(),
            client_urls: vec!["http://127.0.0.1:2479".into(), "http://10.0.0.1:2479".into()],
            zone: "zone-b".into(),
            spare: true,
        };
        assert_eq!(MemberMeta::decode(&meta.encode()), Some(meta));
        assert_eq!(MemberMeta::decode(b""), None, "a member known only from the flags");
        assert_eq!(MemberMeta::decode(b"a\0b\0c\0d\0king"), None);
        assert_eq!(MemberMeta::decode(&[0xff, 0, 0, 0, 0]), None);
    }
}
