//! What a process's membership protocol ([`keel_membership::Swim`]) knows, as the rest of the
//! host reads it: who is alive, since when a dead one has been dead, and what each process says
//! of itself (a member or a spare, its zone, its URLs). The server's membership thread and the
//! simulator's members both keep one of these, refreshed from their `Swim` after it ran; the
//! leader's healer ([`crate::healing`]) reads it. Times are the host's microseconds (the
//! server's process clock, the simulator's virtual one).

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_membership::{Liveness, Swim};
use keel_raft::NodeId;

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
}

/// One process as this one's membership protocol sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub liveness: Liveness,
    pub incarnation: u64,
    /// None until heard from (a member named only by the flags).
    pub meta: Option<MemberMeta>,
    /// When this process last saw its liveness change (host microseconds).
    pub since_us: u64,
}

/// A liveness change, for the host's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub member: NodeId,
    pub from: Liveness,
    pub to: Liveness,
}

/// Everything a process's membership protocol knows.
#[derive(Clone, Debug, Default)]
pub struct MembershipView {
    pub me: NodeId,
    pub members: BTreeMap<NodeId, Seen>,
}

impl MembershipView {
    pub fn new(me: NodeId) -> MembershipView {
        MembershipView { me, members: BTreeMap::new() }
    }

    /// Takes in what `swim` believes now; returns the liveness changes of other processes.
    pub fn refresh(&mut self, swim: &Swim, now_us: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (id, liveness, incarnation) in swim.members() {
            let meta = swim.meta(id).and_then(|bytes| MemberMeta::decode(bytes));
            let entry = self.members.entry(id).or_insert(Seen { liveness, incarnation, meta: None, since_us: now_us });
            if entry.liveness != liveness {
                entry.since_us = now_us;
                if id != self.me {
                    changes.push(Change { member: id, from: entry.liveness, to: liveness });
                }
            }
            entry.liveness = liveness;
            entry.incarnation = incarnation;
            if meta.is_some() {
                entry.meta = meta;
            }
        }
        changes
    }

    /// How long `id` has been confirmed dead (None: alive, suspected or unknown).
    pub fn dead_for_us(&self, id: NodeId, now_us: u64) -> Option<u64> {
        let member = self.members.get(&id)?;
        member.liveness.is_gone().then(|| now_us.saturating_sub(member.since_us))
    }

    /// Alive processes that say they are spares, with their description (whether one already
    /// became a member is raft's to say, not gossip's: see [`crate::healing`]).
    pub fn spares(&self) -> impl Iterator<Item = (NodeId, &MemberMeta)> + '_ {
        self.members.iter().filter_map(|(&id, m)| match &m.meta {
            Some(meta) if meta.spare && m.liveness == Liveness::Alive => Some((id, meta)),
            _ => None,
        })
    }

    pub fn zone(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id)?.meta.as_ref().map(|m| m.zone.as_str())
    }

    /// A process's failure domain: its `--zone`, else its own (nothing says which members fail
    /// together, and on one test machine every member shares a host).
    pub fn domain(&self, id: NodeId) -> String {
        match self.zone(id).filter(|zone| !zone.is_empty()) {
            Some(zone) => format!("zone:{zone}"),
            None => format!("member:{id:x}"),
        }
    }

    /// Processes in each liveness (for metrics).
    pub fn count(&self, liveness: Liveness) -> u64 {
        self.members.values().filter(|m| m.liveness == liveness).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_membership::{Message, SwimConfig, Update};

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

    #[test]
    fn the_view_follows_the_protocol_and_times_each_death_from_when_it_was_seen() {
        let spare = MemberMeta {
            name: "s".into(),
            peer_url: "http://s:2380".into(),
            client_urls: vec![],
            zone: "b".into(),
            spare: true,
        };
        let mut swim = Swim::new(SwimConfig::lan(), 1, 1, Bytes::new(), &[1, 2, 3], 7, 0);
        let mut view = MembershipView::new(1);
        assert!(view.refresh(&swim, 10).is_empty(), "first sight is no change");
        assert_eq!(view.spares().count(), 0, "nobody said it is a spare yet");
        let news = vec![
            Update { member: 3, incarnation: 5, liveness: Liveness::Alive, by: 3, meta: spare.encode() },
            Update { member: 2, incarnation: 0, liveness: Liveness::Dead, by: 3, meta: Bytes::new() },
        ];
        swim.step(20, 3, Message::Gossip { updates: news });
        let changes = view.refresh(&swim, 20);
        assert_eq!(changes, vec![Change { member: 2, from: Liveness::Alive, to: Liveness::Dead }]);
        assert_eq!(view.dead_for_us(2, 1_020), Some(1_000));
        assert_eq!(view.dead_for_us(3, 1_020), None, "alive");
        assert_eq!(view.spares().map(|(id, _)| id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(view.domain(3), "zone:b");
        assert_eq!(view.domain(2), "member:2", "no zone: a domain of its own");
        assert!(view.refresh(&swim, 30).is_empty(), "nothing new");
        assert_eq!(view.dead_for_us(2, 1_020), Some(1_000), "the death keeps its time");
    }
}
