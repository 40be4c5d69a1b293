//! Self-healing in the simulator (in the runs whose swarm switches it on): every process —
//! members and spares — runs the membership protocol ([`Swim`]) over the simulated network, as
//! [`PeerFrame::Membership`] frames in the server's wire encoding, keeps the server's
//! [`MembershipView`], and polls the server's healer ([`keel_host::healing`]) for each group it
//! leads, proposing what it decides as the server does: the same view, decisions, member records
//! and conf changes. Voters are killed for good (their machine is gone) while faults of every
//! other kind go on; at the end of the run every dead voter must have been replaced wherever a
//! spare could replace it.

use keel_host::healing::{self, Healer, RaftView};
use keel_host::membership::{MemberMeta, MembershipView};
use keel_membership::{wire, Swim, SwimConfig};

use super::*;

/// The protocol period: the fast profile (sim ticks are 10 ms where the server's are 100 ms,
/// so this is the server's 1 s period on the simulator's time scale, roughly).
const SWIM_PERIOD_US: u64 = 200_000;
/// `--replace-dead-after`, on the simulator's time scale.
const REPLACE_DEAD_AFTER_US: u64 = 500_000;
/// How often a member polls its healers (the server polls every 200 ms).
const HEAL_POLL_MS: u64 = 100;

/// A process's membership protocol and healers: in memory, so a crash loses them and a restart
/// starts afresh at a higher incarnation (the server takes the wall clock).
pub(super) struct Gossip {
    swim: Swim,
    view: MembershipView,
    healers: BTreeMap<GroupId, Healer>,
    next_poll: Time,
}

/// How the cluster sees a process for self-healing.
#[derive(Clone, Debug, Default)]
pub(super) struct Role {
    /// Started as a spare (`--spare`): no replica until a leader adds it.
    pub spare: bool,
    /// Its `--zone` (empty: none).
    pub zone: String,
}

fn peer_url(id: NodeId) -> String {
    format!("http://n{id}:2380")
}

impl Cluster {
    /// The spares a self-healing run starts beside the founding members: processes that hold
    /// every group's (empty) state but are in no configuration, as `keel server --spare` does.
    pub(super) fn found_spares(&mut self) {
        if !self.swarm.self_healing {
            return;
        }
        for _ in 0..self.swarm.spares {
            let id = self.next_node_id;
            self.next_node_id += 1;
            let zone = self.draw_zone();
            let groups = self.group_ids().into_iter().collect();
            self.add_member(id, SimDisk::new(), DurableModel::default(), groups, Role { spare: true, zone });
        }
    }

    /// A zone for a new process: one of three (so some spares share one with a voter), or none.
    pub(super) fn draw_zone(&mut self) -> String {
        if !self.swarm.zones {
            return String::new();
        }
        ["a", "b", "c"][self.rng.range(0, 3) as usize].to_string()
    }

    /// The membership protocol of a member that just (re)started.
    pub(super) fn start_gossip(&mut self, id: NodeId) {
        if !self.swarm.self_healing {
            return;
        }
        let peers: Vec<NodeId> = self.members.keys().copied().collect();
        let now_us = self.now * 1_000;
        let member = self.members.get_mut(&id).expect("started");
        let meta = MemberMeta {
            name: format!("n{id}"),
            peer_url: peer_url(id),
            client_urls: Vec::new(),
            zone: member.role.zone.clone(),
            spare: member.role.spare,
        };
        // Higher than any incarnation of its previous lives: what the others remember of them
        // (dead, at some incarnation) must not outrank the restarted process.
        let incarnation = self.now + 1;
        let seed = self.opts.seed ^ id.rotate_left(17) ^ incarnation;
        let swim =
            Swim::new(SwimConfig::with_period(SWIM_PERIOD_US), id, incarnation, meta.encode(), &peers, seed, now_us);
        let cfg = healing::repair_config(REPLACE_DEAD_AFTER_US);
        let healers = member.groups.iter().map(|&group| (group, Healer::new(group, cfg.clone()))).collect();
        member.gossip = Some(Box::new(Gossip { swim, view: MembershipView::new(id), healers, next_poll: self.now }));
        self.flush_gossip(id);
    }

    /// At each of the member's ticks: the protocol's timers, then (every [`HEAL_POLL_MS`]) its
    /// healers.
    pub(super) fn tick_gossip(&mut self, id: NodeId) {
        let now_us = self.now * 1_000;
        let Some(gossip) = self.members.get_mut(&id).and_then(|m| m.gossip.as_mut()) else { return };
        if now_us >= gossip.swim.next_deadline() {
            gossip.swim.tick(now_us);
        }
        let poll = self.now >= gossip.next_poll;
        if poll {
            gossip.next_poll = self.now + HEAL_POLL_MS;
        }
        self.flush_gossip(id);
        if poll {
            self.heal(id);
        }
    }

    /// A membership frame arrived: decoded as the server decodes it (a bad one is dropped).
    pub(super) fn gossip_frame(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        let now_us = self.now * 1_000;
        let Some(gossip) = self.members.get_mut(&to).and_then(|m| m.gossip.as_mut()) else { return };
        match wire::decode(bytes) {
            Ok(message) => gossip.swim.step(now_us, from, message),
            Err(error) => {
                self.invariants.violation(format!("n{to}: a membership frame from n{from} does not decode: {error}"));
                return;
            }
        }
        self.flush_gossip(to);
    }

    /// What the protocol sent goes onto the network; what it concluded into the view.
    fn flush_gossip(&mut self, id: NodeId) {
        let now_us = self.now * 1_000;
        let Some(gossip) = self.members.get_mut(&id).and_then(|m| m.gossip.as_mut()) else { return };
        let changes = gossip.view.refresh(&gossip.swim, now_us);
        let outbox = gossip.swim.take_outbox();
        let _ = gossip.swim.take_events();
        for change in changes {
            self.log(format_args!("n{id} sees n{} {:?} -> {:?}", change.member, change.from, change.to));
        }
        for (to, message) in outbox {
            self.send_frame(id, to, PeerFrame::Membership(Bytes::from(wire::encode(&message))));
        }
    }

    /// Polls the member's healers; a leader proposes the step its healer decides.
    fn heal(&mut self, id: NodeId) {
        let now_us = self.now * 1_000;
        let removed = self.removed_ids.clone();
        let mut next_request = self.next_request;
        let member = self.members.get_mut(&id).expect("polled");
        let (Some(node), Some(gossip)) = (member.node.as_mut(), member.gossip.as_mut()) else { return };
        let mut done = Vec::new();
        let mut removals = Vec::new();
        for (&group, healer) in gossip.healers.iter_mut() {
            let raft = node.raw(group).and_then(RaftView::of);
            let poll = healer.poll(now_us, raft.as_ref(), &gossip.view, &removed);
            if let Some((dead, learner)) = poll.adopted {
                done.push(format!("g{group}: n{learner} adopted as n{dead}'s replacement"));
            }
            let Some(step) = poll.step else { continue };
            let spare = match step {
                healing::RepairStep::AddLearner { spare, .. } => {
                    healing::spare_record(&gossip.view, spare.0, |id, meta| meta.peer_url == peer_url(id))
                }
                _ => None,
            };
            let Some((change, command)) = healing::conf_change(step, spare) else { continue };
            let request = next_request;
            next_request += 1;
            if node.propose_conf_change(group, request, change, &command.encode()).is_err() {
                healer.refused(step);
                continue;
            }
            if let ConfChange::Remove(victim) = change {
                removals.push((victim, group));
            }
            done.push(format!("g{group}: {step:?} proposed as {change:?}"));
        }
        self.next_request = next_request;
        for (victim, group) in removals {
            self.invariants.on_removed(victim, group);
            self.removed_ids.insert(victim);
        }
        for what in done {
            self.healing_steps += 1;
            self.healing_steps.hash(&mut self.trace);
            self.log(format_args!("HEAL n{id} {what}"));
        }
    }

    /// Processes that could replace a dead voter of `group`: running spares in none of its
    /// configurations and never removed from one.
    fn eligible_spares(&self, group: GroupId, conf: &keel_raft::ConfState) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(id, m)| {
                m.role.spare
                    && m.node.is_some()
                    && !m.disk_dead
                    && m.groups.contains(&group)
                    && !conf.members().any(|member| member == **id)
                    && !self.removed_ids.contains(id)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// A voter dies for good: its machine is gone and it never comes back. Only one at a time,
    /// and only while a spare could replace it (otherwise the run would end with a group that
    /// cannot heal, which the liveness check rightly refuses to judge).
    pub(super) fn kill_for_good(&mut self) {
        // Not beside a damaged disk (one whose WAL will refuse to open at restart): the two
        // together can leave a group without a live majority, which no repair can fix.
        if !self.swarm.self_healing || self.members.values().any(|m| m.disk_dead || m.rotted) {
            return;
        }
        let group = FIRST_GROUP + self.rng.range(0, self.swarm.groups);
        let Some(leader) = self.leader_of(group) else { return };
        let Some(status) = self.members[&leader].node.as_ref().and_then(|n| n.status(group)) else { return };
        if self.eligible_spares(group, &status.conf).is_empty() {
            return;
        }
        let voters: Vec<NodeId> = status.conf.voters.iter().copied().collect();
        let Some(victim) = self.pick(&voters) else { return };
        self.crash(victim);
        self.members.get_mut(&victim).expect("picked").disk_dead = true;
        self.killed += 1;
        self.fault(format_args!("kill n{victim} for good (a voter of g{group})"));
    }

    /// The end of a self-healing run: no group keeps a dead voter while a spare could replace it.
    pub(super) fn check_healed(&mut self, deadline: Time) -> bool {
        if !self.swarm.self_healing {
            return true;
        }
        loop {
            let mut waiting = None;
            for group in self.group_ids() {
                let Some(leader) = self.leader_of(group) else {
                    waiting = Some(format!("g{group} has no leader"));
                    break;
                };
                let Some(status) = self.members[&leader].node.as_ref().and_then(|n| n.status(group)) else { continue };
                // Voters only: a dead learner costs no tolerance, and one an operator added is
                // the operator's to remove.
                let dead: Vec<NodeId> = status
                    .conf
                    .voters
                    .iter()
                    .copied()
                    .filter(|id| self.members.get(id).is_some_and(|m| m.disk_dead))
                    .collect();
                let spares = self.eligible_spares(group, &status.conf);
                // A spare already added as a learner is a replacement under way (a learner an
                // operator added is the operator's business: the healer leaves it alone).
                let replacing =
                    status.conf.learners.iter().any(|id| self.members.get(id).is_some_and(|m| m.role.spare));
                if !dead.is_empty() && (!spares.is_empty() || replacing) {
                    waiting = Some(format!(
                        "g{group} still has dead voters {dead:?} (voters {:?}, learners {:?}) with spares {spares:?}",
                        status.conf.voters, status.conf.learners
                    ));
                    break;
                }
            }
            let Some(waiting) = waiting else { return true };
            if self.now >= deadline || !self.invariants.violations.is_empty() {
                self.invariants.violation(format!("liveness: self-healing: {waiting} at the end of the run"));
                return false;
            }
            self.step();
        }
    }
}
