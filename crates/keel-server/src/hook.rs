//! The server's part of each driver turn: publish applied events to watchers, keep the lease
//! clock and revoke expired leases (on the leader), and refresh the metrics.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_mvcc::{Command, RedbBackend};
use keel_node::Node;
use keel_raft::{GroupId, Role};

use crate::auto_compaction::AutoCompactor;
use crate::driver::Hook;
use crate::lease_clock::LeaseClock;
use crate::machine::{AlarmKind, AlarmMember, MemberCommand, MemberRecord, MvccMachine};
use crate::metrics::Metrics;
use crate::transport::PeerSender;
use crate::watch_hub::WatchHub;

pub type Machine = MvccMachine<RedbBackend>;

/// How often the database file's size is read for metrics and Status.
const DB_SIZE_REFRESH: Duration = Duration::from_secs(1);
/// A member short of space proposes its NOSPACE alarm again after this long if it has not
/// been applied (the proposal may have been lost with a leader).
const ALARM_RETRY: Duration = Duration::from_secs(2);
/// A member whose published name or client URLs are not (yet) in the member records proposes
/// them again after this long.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// Keeps the transport in step with the replicated member records, and publishes this member's
/// own name and client URLs into them (as etcd members publish their attributes).
pub struct MembershipSync {
    own: MemberRecord,
    peers: Arc<PeerSender>,
    /// Who the peer listener accepts.
    member_ids: Arc<std::sync::RwLock<std::collections::BTreeSet<u64>>>,
    last_publish: Option<Instant>,
    /// The removed member ids as the replicated records keep them (the listener tells such a
    /// member so if it comes back), and whether this process is in the records itself.
    removed: Option<Arc<std::sync::RwLock<std::collections::BTreeSet<u64>>>>,
    joined: Option<Arc<std::sync::atomic::AtomicBool>>,
}

pub struct ServerHook {
    pub group: GroupId,
    pub hub: Arc<Mutex<WatchHub>>,
    pub metrics: Arc<Metrics>,
    pub leases: LeaseClock,
    pub db_path: PathBuf,
    /// This member's id (the alarms it raises name it).
    pub member_id: u64,
    /// `--quota-backend-bytes`: past it the NOSPACE alarm is raised.
    pub quota_bytes: u64,
    /// `--experimental-min-free-bytes`: with less free on the data dir's filesystem, too.
    pub min_free_bytes: u64,
    last_alarm_proposal: Option<Instant>,
    /// A new leader's grace for every lease (the election timeout).
    pub lease_grace: Duration,
    restores_seen: u64,
    last_role: Option<Role>,
    last_leader: u64,
    db_size_read: Option<Instant>,
    membership: Option<MembershipSync>,
    pub auto_compaction: AutoCompactor,
}

impl ServerHook {
    pub fn new(group: GroupId, hub: Arc<Mutex<WatchHub>>, metrics: Arc<Metrics>, db_path: PathBuf) -> ServerHook {
        ServerHook {
            group,
            hub,
            metrics,
            leases: LeaseClock::default(),
            db_path,
            member_id: 0,
            quota_bytes: u64::MAX,
            min_free_bytes: 0,
            last_alarm_proposal: None,
            lease_grace: Duration::from_secs(1),
            restores_seen: 0,
            last_role: None,
            last_leader: 0,
            db_size_read: None,
            membership: None,
            auto_compaction: AutoCompactor::new(crate::config::AutoCompaction::Off),
        }
    }

    pub fn with_membership(
        mut self,
        own: MemberRecord,
        peers: Arc<PeerSender>,
        member_ids: Arc<std::sync::RwLock<std::collections::BTreeSet<u64>>>,
    ) -> ServerHook {
        self.membership =
            Some(MembershipSync { own, peers, member_ids, last_publish: None, removed: None, joined: None });
        self
    }

    /// Keeps `removed` equal to the records' removed member ids, and `joined` to whether this
    /// process is in the records (see [`ServerHook::with_membership`], which must come first).
    pub fn track_removals(
        &mut self,
        removed: Arc<std::sync::RwLock<std::collections::BTreeSet<u64>>>,
        joined: Arc<std::sync::atomic::AtomicBool>,
    ) {
        if let Some(sync) = self.membership.as_mut() {
            sync.removed = Some(removed);
            sync.joined = Some(joined);
        }
    }

    /// Keeps the metrics' view of the alarms in step with the applied ones.
    fn follow_alarms(&self, alarms: &crate::machine::Alarms) {
        let m = &self.metrics;
        let mut seen = m.alarms.lock().expect("alarms lock");
        if !seen.iter().eq(alarms.iter()) {
            *seen = alarms.iter().copied().collect();
            let nospace = alarms.iter().any(|a| a.kind == AlarmKind::NoSpace);
            if m.nospace_alarm.swap(u64::from(nospace), Relaxed) != u64::from(nospace) {
                tracing::warn!(alarms = ?*seen, "alarms changed");
            }
        }
    }
}

impl MembershipSync {
    fn after_turn(&mut self, machine: &mut Machine, has_leader: bool, now: Instant) -> Option<Bytes> {
        let me = self.own.id;
        if machine.take_members_changed() {
            let members = machine.members();
            self.peers.set_peers(&crate::server::peer_addresses(members, me));
            let mut ids: std::collections::BTreeSet<u64> = members.keys().copied().collect();
            if let Some(joined) = &self.joined {
                joined.store(ids.contains(&me), std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(removed) = &self.removed {
                // Replicated (the member records keep removed ids), so every member refuses a
                // removed one alike, restarted or not.
                *removed.write().expect("removed ids lock") = machine.removed_members().clone();
            }
            ids.insert(me);
            *self.member_ids.write().expect("member ids lock") = ids;
        }
        let recorded = machine.members().get(&me)?;
        let published = recorded.name == self.own.name && recorded.client_urls == self.own.client_urls;
        if published || !has_leader || self.last_publish.is_some_and(|at| now.duration_since(at) < PUBLISH_RETRY) {
            return None;
        }
        self.last_publish = Some(now);
        let publish =
            MemberCommand::Publish { id: me, name: self.own.name.clone(), client_urls: self.own.client_urls.clone() };
        Some(Bytes::from(publish.encode()))
    }
}

impl Hook<Machine> for ServerHook {
    fn after_turn(&mut self, node: &mut Node<Machine>, now: Instant, propose: &mut Vec<(GroupId, Bytes)>) {
        self.metrics.leader_suspicions.store(node.detection_stats().suspicions, Relaxed);
        if let Some(health) = node.health_stats() {
            self.metrics.disk_slow.store(u64::from(health.disk.slow), Relaxed);
            self.metrics.disk_slow_flags.store(health.disk.flags, Relaxed);
            self.metrics.slow_hand_offs.store(health.hand_offs, Relaxed);
            self.metrics.disk_write_recent_us.store(health.disk.recent_us.unwrap_or(0), Relaxed);
            self.metrics.disk_write_baseline_us.store(health.disk.baseline_us.unwrap_or(0), Relaxed);
        }
        let Some(status) = node.status(self.group) else { return };
        let Some(machine) = node.machine_mut(self.group) else { return };
        for took in machine.take_commit_timings() {
            self.metrics.backend_commit.observe(took);
        }
        if let Some(sync) = self.membership.as_mut() {
            if let Some(publish) = sync.after_turn(machine, status.leader != 0, now) {
                propose.push((self.group, publish));
            }
        }
        if let Some(error) = machine.fatal_error() {
            // What this member applied can no longer be kept in step with its log: stop, as on
            // a WAL failure, rather than serve (and vote) from a broken state machine.
            tracing::error!(%error, "state machine failed; stopping this member");
            std::process::exit(1);
        }
        let nospace = AlarmMember { member: self.member_id, kind: AlarmKind::NoSpace };
        let own_nospace_raised = machine.alarms().contains(&nospace);
        self.follow_alarms(machine.alarms());
        let restored = machine.restores() != self.restores_seen;
        self.restores_seen = machine.restores();
        if restored {
            tracing::info!(
                applied = machine.store().applied_index(),
                revision = machine.store().current_revision(),
                "installed a snapshot from the leader"
            );
        }
        let changes = machine.take_lease_changes();
        let store = machine.store_mut();
        let mut events = store.take_events();
        let revision = store.current_revision();
        let compacted = store.compacted_revision();
        {
            let mut hub = self.hub.lock().expect("watch hub lock");
            if restored {
                hub.mark_all_lagging();
            }
            if hub.wants_prev_kv() && events.iter().any(|e| !e.prev_kv_read) {
                // A prev_kv watcher came while these were applied without it: read the values
                // now, while they are still there (else the hub has it read history back).
                if let Err(error) = store.fill_prev_kv(&mut events) {
                    tracing::warn!(%error, "could not read prev_kv for watch events");
                }
            }
            hub.publish(&events, revision, compacted, status.hard_state.term);
            store.set_events_prev_kv(hub.wants_prev_kv());
        }

        for change in changes {
            self.leases.apply(change, now);
        }
        let became_leader = status.role == Role::Leader && self.last_role != Some(Role::Leader);
        if restored {
            // The snapshot replaced log this clock never saw: start every lease afresh.
            self.leases.restart_all(store.leases().into_iter().map(|l| (l.id, l.remaining_ttl)), now);
        } else if self.last_role.is_none() || became_leader {
            self.leases.reconcile(store.leases().into_iter().map(|l| (l.id, l.remaining_ttl)), now);
        }
        if became_leader {
            self.leases.extend_all(now, self.lease_grace);
        }
        if status.role == Role::Leader {
            for id in self.leases.due(now) {
                propose.push((self.group, Bytes::from(Command::LeaseRevoke { id }.encode())));
            }
        }
        if let Some(revision) = self.auto_compaction.observe(now, revision, compacted, status.role == Role::Leader) {
            tracing::info!(revision, "auto-compaction: compacting history");
            propose.push((self.group, Bytes::from(Command::Compact { revision }.encode())));
        }

        let m = &self.metrics;
        if status.leader != self.last_leader && status.leader != 0 {
            m.leader_changes.fetch_add(1, Relaxed);
            tracing::info!(leader = %format!("{:x}", status.leader), term = status.hard_state.term, "leader elected");
        }
        self.last_leader = status.leader;
        self.last_role = Some(status.role);
        m.leader.store(status.leader, Relaxed);
        m.term.store(status.hard_state.term, Relaxed);
        m.is_leader.store(u64::from(status.role == Role::Leader), Relaxed);
        m.commit_index.store(status.hard_state.commit, Relaxed);
        m.applied_index.store(status.applied, Relaxed);
        m.revision.store(revision, Relaxed);
        m.compacted_revision.store(compacted, Relaxed);
        m.keys.store(store.indexed_keys() as i64, Relaxed);
        m.leases.store(self.leases.len() as i64, Relaxed);
        if self.db_size_read.is_none_or(|at| now.duration_since(at) >= DB_SIZE_REFRESH) {
            self.db_size_read = Some(now);
            let db_bytes = std::fs::metadata(&self.db_path).map_or(0, |meta| stored_bytes(&meta));
            m.db_size.store(db_bytes as i64, Relaxed);
            let free_bytes = self.db_path.parent().and_then(|dir| keel_storage::disk::available_bytes(dir).ok());
            // As etcd: the alarm is raised once the database outgrows its quota, and stays raised
            // until an operator disarms it (after compacting and freeing space). keel also raises
            // it while the disk still has room, so a full disk never stops the WAL.
            let short = if db_bytes > self.quota_bytes {
                Some("database over quota")
            } else if free_bytes.is_some_and(|free| free < self.min_free_bytes) {
                Some("disk nearly full")
            } else {
                None
            };
            let retry_due = self.last_alarm_proposal.is_none_or(|at| now.duration_since(at) >= ALARM_RETRY);
            if let Some(reason) = short.filter(|_| !own_nospace_raised && status.leader != 0 && retry_due) {
                self.last_alarm_proposal = Some(now);
                tracing::warn!(
                    reason,
                    db_bytes,
                    quota = self.quota_bytes,
                    free_bytes,
                    min_free = self.min_free_bytes,
                    "raising the NOSPACE alarm: the cluster refuses writes that grow the data"
                );
                let raise = MemberCommand::Alarm { alarm: nospace, active: true };
                propose.push((self.group, Bytes::from(raise.encode())));
            }
        }
    }

    fn on_proposed(&mut self, data: &Bytes, now: Instant) {
        // A renewal counts from when it enters the leader's log, not when it applies: a revoke
        // proposed after it would otherwise overtake a renewal the client is about to be told of.
        if let Some((id, ttl_seconds)) = Command::lease_renewal(data) {
            self.leases.renew_if_known(id, ttl_seconds, now);
        }
    }

    fn on_pending_proposals(&mut self, proposals: usize) {
        self.metrics.proposals_pending.store(proposals as u64, Relaxed);
    }

    fn on_fsync(&mut self, took: Duration) {
        self.metrics.observe_fsync(took);
    }

    fn on_compacted(&mut self, removed: keel_host::Removed) {
        self.metrics.wal_segments_removed.fetch_add(removed.wal_segments as u64, Relaxed);
        self.metrics.snapshot_files_removed.fetch_add(removed.snapshot_files as u64, Relaxed);
    }
}

/// The bytes a store file takes on disk. redb grows its file ahead of need, by large steps and
/// sparsely, so the length overstates what it holds: a 10-minute run of 1 KiB puts left a file of
/// 2.16 GB holding 1.03 GB, and a quota checked against the length raised NOSPACE at etcd's default
/// 2 GiB and stopped every write. The blocks actually written are what the disk loses.
fn stored_bytes(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.blocks().saturating_mul(512)
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_file_counts_the_bytes_it_holds_not_its_length() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("keel-sparse-{}-{nanos}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        // Grown ahead of need, as redb grows its file: long, but nearly nothing written.
        file.set_len(256 << 20).unwrap();
        std::io::Write::write_all(&mut &file, &[1u8; 64 << 10]).unwrap();
        file.sync_all().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(meta.len(), 256 << 20);
        let stored = stored_bytes(&meta);
        assert!((64 << 10..16 << 20).contains(&stored), "{stored} bytes counted for 64 KiB written");
    }
}
