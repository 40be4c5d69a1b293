//! Fault injection: crashes that lose unsynced writes, partitions of every shape, paused members,
//! leader transfers and membership changes under load. Rates come from the seed's swarm.

use super::*;
use crate::disk::DurableModel;
use keel_machine::{MemberCommand, MemberRecord};

const PPM: u64 = 1_000_000;

impl Cluster {
    fn roll(&mut self, ppm: u64) -> bool {
        ppm > 0 && self.rng.range(0, PPM) < ppm
    }

    pub(super) fn inject_faults(&mut self) {
        if self.roll(self.swarm.crash_ppm) {
            self.crash_random();
        }
        if !self.partitioned && self.roll(self.swarm.partition_ppm) {
            self.partition();
        }
        if self.roll(self.swarm.disk_full_ppm) {
            self.fill_disk();
        }
        if self.roll(self.swarm.pause_ppm) {
            self.pause_random();
        }
        if self.roll(self.swarm.transfer_ppm) {
            self.transfer_random();
        }
        if self.roll(self.swarm.membership_ppm) {
            self.change_membership();
        }
        if self.roll(self.swarm.bit_rot_ppm) {
            self.rot_disk();
        }
        if self.roll(self.swarm.slow_disk_ppm) {
            self.slow_disk();
        }
        if self.roll(self.swarm.kill_ppm) {
            self.kill_for_good();
        }
        if self.roll(self.swarm.auth_ppm) {
            self.change_auth();
        }
    }

    /// Proposes a change to users, roles or permissions, or turns auth on or off, as root (the
    /// server's Auth service does the same): many are refused (an unknown role, root's role
    /// while auth is on), which must happen alike on every member, and every member must end
    /// with the same auth store — across crashes, replays and snapshots.
    fn change_auth(&mut self) {
        use keel_machine::keel_auth::{AuthCommand, Permission, PermissionKind};
        let group = FIRST_GROUP + self.rng.range(0, self.swarm.groups);
        let Some(leader) = self.leader_of(group) else { return };
        let name = |n: u64| ["root", "alice", "app"][n as usize].to_string();
        let (a, b) = (self.rng.range(0, 3), self.rng.range(0, 3));
        let key = format!("k{:04}", self.rng.range(0, self.swarm.keys)).into_bytes();
        let command = match self.rng.range(0, 12) {
            0 => AuthCommand::Enable,
            1 => AuthCommand::Disable,
            2 => AuthCommand::UserAdd { name: name(a), password_hash: Some(b"hash".to_vec()) },
            3 => AuthCommand::UserDelete { name: name(a) },
            4 => AuthCommand::UserGrantRole { user: name(a), role: name(b) },
            5 => AuthCommand::UserRevokeRole { user: name(a), role: name(b) },
            6 => AuthCommand::RoleAdd { name: name(a) },
            7 => AuthCommand::RoleDelete { name: name(a) },
            8 => {
                let kind = [PermissionKind::Read, PermissionKind::Write, PermissionKind::ReadWrite][b as usize];
                AuthCommand::RoleGrantPermission {
                    role: name(a),
                    permission: Permission { kind, key, range_end: Vec::new() },
                }
            }
            9 => AuthCommand::RoleRevokePermission { role: name(a), key, range_end: Vec::new() },
            10 => AuthCommand::UserChangePassword { name: name(a), password_hash: b"new".to_vec() },
            _ => AuthCommand::Authenticate { user: name(a), token: format!("t{}", self.next_request) },
        };
        let request = self.next_request;
        self.next_request += 1;
        let data = Bytes::from(keel_machine::wrap("root", u64::MAX, &command.encode()));
        let node = self.members.get_mut(&leader).and_then(|m| m.node.as_mut()).expect("leader runs");
        if node.propose(group, request, data).is_ok() {
            self.fault(format_args!("auth g{group} {command:?} via n{leader}"));
        }
    }

    /// A member's disk turns slow for a while (its fsyncs take 20 times as long): it keeps
    /// working, only slowly — the gray failure heartbeats do not see.
    fn slow_disk(&mut self) {
        let running = self.running_members();
        let Some(id) = self.pick(&running) else { return };
        let until = self.now + self.rng.range(200, 1_500);
        self.members.get_mut(&id).expect("picked").slow_until = until;
        self.fault(format_args!("disk of n{id} slow until {until}"));
    }

    pub(super) fn fault(&mut self, what: std::fmt::Arguments) {
        self.faults += 1;
        self.faults.hash(&mut self.trace);
        self.log(format_args!("FAULT {what}"));
    }

    fn running_members(&self) -> Vec<NodeId> {
        self.members.iter().filter(|(_, m)| m.node.is_some() && !m.retired).map(|(id, _)| *id).collect()
    }

    pub(super) fn pick(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.rng.range(0, ids.len() as u64) as usize])
    }

    fn crash_random(&mut self) {
        let running = self.running_members();
        let Some(id) = self.pick(&running) else { return };
        self.crash(id);
    }

    pub(super) fn crash(&mut self, id: NodeId) {
        // Power loss: the disk keeps what was synced plus a random prefix of the rest, the last
        // write possibly torn (decided by the simulated disk from this seed).
        let crash_seed = self.rng.next_u64();
        let member = self.members.get_mut(&id).expect("picked from members");
        let pending = member.durable.pending_count();
        member.disk.crash(crash_seed);
        member.storage = None;
        member.compactions.forget();
        let suspicions = member.node.as_ref().map_or(0, |node| node.detection_stats().suspicions);
        self.slow_hand_offs += member.node.as_ref().and_then(|node| node.health_stats()).map_or(0, |h| h.hand_offs);
        member.node = None;
        member.gossip = None;
        member.paused = false;
        member.stalled = None;
        member.held.clear();
        self.suspicions += suspicions;
        let restart = self.now + self.rng.range(20, 1_000);
        self.schedule(restart, Event::Restart { node: id });
        self.fault(format_args!("crash n{id} ({pending} unsynced records at risk), restart at {restart}"));
        // A dead process's connections close: the others notice at once (as the server's
        // transport reports a closed peer connection). Messages already in flight may still
        // arrive afterwards, as they would from a socket's buffer.
        for (&other, member) in self.members.iter_mut() {
            if other != id && !member.paused {
                if let Some(node) = member.node.as_mut() {
                    node.report_peer_lost(id);
                }
            }
        }
    }

    fn partition(&mut self) {
        let ids: Vec<NodeId> = self.members.iter().filter(|(_, m)| !m.retired).map(|(id, _)| *id).collect();
        if ids.len() < 2 {
            return;
        }
        let kind = self.rng.range(0, 4);
        let mut shuffled = ids.clone();
        for i in (1..shuffled.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            shuffled.swap(i, j);
        }
        let (description, pairs): (&str, Vec<(NodeId, NodeId)>) = match kind {
            0 => {
                // Isolate the leader of the first group (or anyone, if there is none).
                let leader = self.leader_of(FIRST_GROUP).unwrap_or(shuffled[0]);
                (
                    "isolate leader",
                    ids.iter().filter(|&&o| o != leader).flat_map(|&o| [(leader, o), (o, leader)]).collect(),
                )
            }
            1 => {
                let cut = self.rng.range(1, shuffled.len() as u64) as usize;
                let (a, b) = shuffled.split_at(cut);
                ("split", a.iter().flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)])).collect())
            }
            2 => {
                // One-way: the victim hears nobody but everyone hears it.
                let victim = shuffled[0];
                ("asymmetric", ids.iter().filter(|&&o| o != victim).map(|&o| (o, victim)).collect())
            }
            _ => {
                // Bridge: two halves that only talk through one member.
                let rest = &shuffled[1..]; // shuffled[0] is the bridge
                let cut = rest.len() / 2;
                let (a, b) = rest.split_at(cut);
                ("bridge", a.iter().flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)])).collect())
            }
        };
        self.blocked = pairs.into_iter().collect();
        self.partitioned = true;
        let heal = self.now + self.rng.range(50, 1_500);
        self.schedule(heal, Event::HealPartition);
        let links = format!("{:?}", self.blocked);
        self.fault(format_args!("partition {description} {links}, heal at {heal}"));
    }

    fn pause_random(&mut self) {
        let running: Vec<NodeId> = self.running_members().into_iter().filter(|id| !self.members[id].paused).collect();
        let Some(id) = self.pick(&running) else { return };
        let member = self.members.get_mut(&id).expect("picked");
        member.paused = true;
        member.paused_at = self.now;
        let resume = self.now + self.rng.range(20, 1_000);
        self.schedule(resume, Event::Unpause { node: id });
        self.fault(format_args!("pause n{id} until {resume}"));
    }

    /// Bit rot: a member crashes, and a bit flips in WAL data it had already made durable. At
    /// restart the WAL must refuse to open, naming the damage (`start` checks it does); the member
    /// then stays down, and membership changes replace it. One damaged member at a time, so a
    /// quorum stays. Never in the last durable batch of the log: a flip there reads exactly as a
    /// write the crash tore, which no log without a commit record after each sync can tell apart
    /// (etcd's cannot either), and truncating it would lose entries this member acknowledged.
    fn rot_disk(&mut self) {
        if self.members.values().any(|m| m.disk_dead || m.rotted) {
            return;
        }
        let running = self.running_members();
        let Some(id) = self.pick(&running) else { return };
        self.crash(id);
        let member = &self.members[&id];
        let ranges = cold_wal_ranges(&member.disk);
        let total: u64 = ranges.iter().map(|(_, lo, hi)| hi - lo).sum();
        if total == 0 {
            return;
        }
        let mut at = self.rng.range(0, total);
        let bit = self.rng.range(0, 8) as u8;
        for (path, lo, hi) in ranges {
            if at < hi - lo {
                let flipped = self.members[&id].disk.flip_bit(&path, lo + at, bit);
                debug_assert!(flipped, "the range lies within the file");
                self.members.get_mut(&id).expect("picked").rotted = true;
                self.fault(format_args!("bit rot in n{id}'s {path} at byte {}", lo + at));
                return;
            }
            at -= hi - lo;
        }
    }

    /// A member's disk fills up: a few KiB are left, and some time later the operator frees
    /// space.
    fn fill_disk(&mut self) {
        let running = self.running_members();
        let Some(id) = self.pick(&running) else { return };
        let room = self.rng.range(0, 16 << 10);
        let disk = &self.members[&id].disk;
        disk.set_capacity(Some(disk.used_bytes() + room));
        let freed = self.now + self.rng.range(50, 1_500);
        self.schedule(freed, Event::FreeDisk { node: id });
        self.fault(format_args!("disk of n{id} full ({room} bytes left) until {freed}"));
    }

    pub(super) fn unpause(&mut self, id: NodeId) {
        let Some(member) = self.members.get_mut(&id) else { return };
        // A member waiting for disk space stays stopped until its write fits.
        if !member.paused || member.stalled.is_some() {
            return;
        }
        member.paused = false;
        // A paused process's clock keeps running (SIGSTOP, a long GC pause): on resume the host
        // sees the time that passed and delivers the missed ticks before anything else. Leases
        // depend on it — a leader that served a lease read on a clock that had stopped would
        // serve stale data (the first 100,000-seed soak found exactly that when the simulated
        // pause also stopped the member's ticks). A VM freeze that also stops the guest's
        // monotonic clock breaks the drift bound; use ReadIndex reads (the default) there.
        let missed = self.now.saturating_sub(member.paused_at) / member.tick_ms;
        let mut effects = SimEffects::default();
        if let Some(node) = member.node.as_mut() {
            for _ in 0..missed {
                node.tick();
                member.requests.tick(node, &mut effects);
            }
        }
        let held = std::mem::take(&mut member.held);
        self.carry_out(id, effects);
        for event in held {
            self.handle(event);
        }
        self.log(format_args!("n{id} resumed after {missed} missed ticks"));
    }

    pub(super) fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        self.members.iter().find_map(|(id, m)| {
            let status = m.node.as_ref()?.status(group)?;
            (status.role == Role::Leader && !m.paused).then_some(*id)
        })
    }

    fn transfer_random(&mut self) {
        let group = FIRST_GROUP + self.rng.range(0, self.swarm.groups);
        let Some(leader) = self.leader_of(group) else { return };
        let voters: Vec<NodeId> = self.members[&leader]
            .node
            .as_ref()
            .and_then(|n| n.status(group))
            .map(|s| s.conf.voters.into_iter().filter(|&v| v != leader).collect())
            .unwrap_or_default();
        let Some(target) = self.pick(&voters) else { return };
        let node = self.members.get_mut(&leader).and_then(|m| m.node.as_mut()).expect("leader runs");
        if node.transfer_leader(group, target).is_ok() {
            self.fault(format_args!("transfer leadership of g{group} n{leader} -> n{target}"));
        }
    }

    /// Adds a fresh member as learner, promotes a caught-up learner, or removes a voter (maybe
    /// the leader). Removed members never come back under the same id, as in etcd.
    fn change_membership(&mut self) {
        let group = FIRST_GROUP + self.rng.range(0, self.swarm.groups);
        let Some(leader) = self.leader_of(group) else { return };
        let Some(status) = self.members[&leader].node.as_ref().and_then(|n| n.status(group)) else { return };
        let learner = status.conf.learners.iter().next().copied();
        let dead = status.conf.voters.iter().copied().find(|v| self.members.get(v).is_some_and(|m| m.disk_dead));
        let (change, new_member) = if let Some(learner) = learner {
            (ConfChange::AddVoter(learner), None)
        } else if let Some(dead) = dead.filter(|_| status.conf.voters.len() > 3) {
            // A member whose disk died goes once a replacement has joined (it was added below).
            (ConfChange::Remove(dead), None)
        } else if status.conf.voters.len() > 3 && self.rng.range(0, 2) == 0 {
            let voters: Vec<NodeId> = status.conf.voters.iter().copied().collect();
            let victim = self.pick(&voters).expect("non-empty");
            (ConfChange::Remove(victim), None)
        } else if status.conf.voters.len() < 5 {
            let id = self.next_node_id;
            (ConfChange::AddLearner(id), Some(id))
        } else {
            return;
        };
        let request = self.next_request;
        self.next_request += 1;
        // The member record goes in the same entry, as the server sends it.
        let record = match change {
            ConfChange::AddLearner(id) => MemberCommand::Add(MemberRecord {
                id,
                name: format!("n{id}"),
                peer_urls: vec![format!("http://n{id}:2380")],
                client_urls: Vec::new(),
                learner: true,
            }),
            ConfChange::AddVoter(id) => MemberCommand::Promote(id),
            ConfChange::Remove(id) => MemberCommand::Remove(id),
        };
        let node = self.members.get_mut(&leader).and_then(|m| m.node.as_mut()).expect("leader runs");
        if node.propose_conf_change(group, request, change, &record.encode()).is_err() {
            return;
        }
        if let Some(id) = new_member {
            self.next_node_id += 1;
            let role = healing::Role { spare: false, zone: self.draw_zone() };
            self.add_member(id, SimDisk::new(), DurableModel::default(), [group].into_iter().collect(), role);
        }
        if let ConfChange::Remove(victim) = change {
            self.invariants.on_removed(victim, group);
            self.removed_ids.insert(victim);
        }
        self.fault(format_args!("membership g{group} {change:?} via n{leader}"));
    }
}

/// The WAL bytes of `disk` a bit may rot in for the test to mean something: every frame of live
/// segments, except from the start of the last complete batch on (see `Cluster::rot_disk`), as
/// (file, first byte, end).
fn cold_wal_ranges(disk: &SimDisk) -> Vec<(String, u64, u64)> {
    use keel_storage::wal::{is_live_segment, segment_layout};
    use keel_storage::Disk;
    let wal = storage_options().wal;
    let Ok(names) = disk.list(&wal.dir) else { return Vec::new() };
    let live: Vec<String> = names.into_iter().filter(|n| is_live_segment(n)).collect();
    let mut ranges = Vec::new();
    for (position, name) in live.iter().enumerate() {
        let path = keel_storage::disk::join(&wal.dir, name);
        let Ok(data) = disk.open(&path, false).and_then(|f| f.read_all()) else { continue };
        let Some(layout) = segment_layout(&data, wal.max_record_bytes) else { continue };
        let end =
            if position + 1 == live.len() { layout.last_complete_batch.unwrap_or(layout.body) } else { layout.end };
        if end > layout.body {
            ranges.push((path, layout.body as u64, end as u64));
        }
    }
    ranges
}
