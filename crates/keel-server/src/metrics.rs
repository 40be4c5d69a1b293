//! What the member exposes about itself: the raft view the API needs (leader, term, indexes)
//! and the Prometheus metrics, under etcd's metric names where etcd has one.
//!
//! Written by the driver thread after each turn, read lock-free by request handlers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub is_leader: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub revision: AtomicI64,
    pub compacted_revision: AtomicI64,
    pub leader_changes: AtomicU64,
    /// Times this member suspected its leader (a silence the phi-accrual detector found too long)
    /// and campaigned; each either elected a new leader or cost a refused pre-vote.
    pub leader_suspicions: AtomicU64,
    /// This member's disk is judged slow (1) or not (0) by fail-slow detection.
    pub disk_slow: AtomicU64,
    pub disk_slow_flags: AtomicU64,
    /// Groups this member led and handed over because its disk was slow.
    pub slow_hand_offs: AtomicU64,
    /// Median WAL write latency of the last judged second, and the healthy baseline
    /// (microseconds; 0 while unknown).
    pub disk_write_recent_us: AtomicU64,
    pub disk_write_baseline_us: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub db_size: AtomicI64,
    pub keys: AtomicI64,
    pub leases: AtomicI64,
    pub watch_streams: AtomicI64,
    pub watchers: AtomicI64,
    /// A NOSPACE alarm is raised for some member (1) or not (0): writes that grow the data are
    /// refused. Follows the replicated alarms, so every member refuses the same writes.
    pub nospace_alarm: AtomicU64,
    /// The raised alarms, as this member applied them (for Status and the Alarm RPC).
    pub alarms: std::sync::Mutex<Vec<crate::machine::AlarmMember>>,
    /// Obsolete WAL segments and snapshot files compaction removed.
    pub wal_segments_removed: AtomicU64,
    pub snapshot_files_removed: AtomicU64,
    /// The membership protocol's view: members alive, suspected, dead; spares alive.
    pub gossip_alive: AtomicU64,
    pub gossip_suspect: AtomicU64,
    pub gossip_dead: AtomicU64,
    pub spares: AtomicU64,
    /// This process's own side of the protocol: suspicions it raised, times it refuted one of
    /// itself, and its Lifeguard local-health score (0 healthy; higher stretches its timeouts).
    pub gossip_suspicions_raised: AtomicU64,
    pub gossip_refutations: AtomicU64,
    pub gossip_local_health: AtomicU64,
    /// Tables this process offered to members it believed dead (a partition that healed, or a
    /// member that is really gone).
    pub gossip_reconnects: AtomicU64,
    /// Voters confirmed dead and not replaced yet (as the leader sees them; 0 elsewhere).
    pub under_replicated: AtomicU64,
    /// Steps of automatic replacement this member proposed as leader, counted once applied.
    pub replacements_started: AtomicU64,
    pub replacements_promoted: AtomicU64,
    pub replacements_removed: AtomicU64,
    pub replacements_abandoned: AtomicU64,
    /// Client proposals waiting for their outcome here (forwarded ones included).
    pub proposals_pending: AtomicU64,
    /// The WAL's fsyncs, and the store's durable commits (etcd's backend commits).
    pub wal_fsync: LatencyHistogram,
    pub backend_commit: LatencyHistogram,
    /// gRPC calls by method and code, and the bytes clients sent and received.
    pub grpc: crate::grpc_metrics::GrpcMetrics,
    /// Bytes to and from peers.
    pub peer: std::sync::Arc<crate::transport::PeerTraffic>,
}

/// Buckets of etcd's disk latency histograms: 1 ms doubling up to 8.192 s.
const LATENCY_BUCKETS: usize = 14;

/// A latency histogram with etcd's disk buckets, updated from any thread.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (k, bucket) in self.buckets.iter().enumerate() {
            if seconds <= 0.001 * f64::from(1u32 << k) {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (k, bucket) in self.buckets.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {}", 0.001 * f64::from(1u32 << k), bucket.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_nanos.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Metrics {
    pub fn leader(&self) -> u64 {
        self.leader.load(Relaxed)
    }

    pub fn term(&self) -> u64 {
        self.term.load(Relaxed)
    }

    pub fn revision(&self) -> i64 {
        self.revision.load(Relaxed)
    }

    pub fn observe_fsync(&self, took: Duration) {
        self.wal_fsync.observe(took);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let has_leader = u64::from(self.leader.load(Relaxed) != 0);
        gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            "gauge",
            has_leader.to_string(),
        );
        gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader.",
            "gauge",
            self.is_leader.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            "counter",
            self.leader_changes.load(Relaxed).to_string(),
        );
        gauge(
            "keel_leader_suspicions_total",
            "The number of times this member suspected its leader and campaigned.",
            "counter",
            self.leader_suspicions.load(Relaxed).to_string(),
        );
        gauge(
            "keel_membership_members",
            "Members (and spares) the membership protocol holds alive.",
            "gauge",
            self.gossip_alive.load(Relaxed).to_string(),
        );
        gauge(
            "keel_membership_suspects",
            "Members the membership protocol suspects.",
            "gauge",
            self.gossip_suspect.load(Relaxed).to_string(),
        );
        gauge(
            "keel_membership_dead",
            "Members the membership protocol confirmed dead.",
            "gauge",
            self.gossip_dead.load(Relaxed).to_string(),
        );
        gauge(
            "keel_spares",
            "Alive spares: processes ready to replace a dead voter.",
            "gauge",
            self.spares.load(Relaxed).to_string(),
        );
        gauge(
            "keel_membership_suspicions_raised_total",
            "Members this process suspected after a failed direct and indirect probe.",
            "counter",
            self.gossip_suspicions_raised.load(Relaxed).to_string(),
        );
        gauge(
            "keel_membership_refutations_total",
            "Times this process heard itself suspected or declared dead and refuted it.",
            "counter",
            self.gossip_refutations.load(Relaxed).to_string(),
        );
        gauge(
            "keel_membership_reconnects_total",
            "Tables this process offered to members it believed dead, in case they are not.",
            "counter",
            self.gossip_reconnects.load(Relaxed).to_string(),
        );
        gauge(
            "keel_membership_local_health",
            "Lifeguard's local-health score of this process (0: healthy).",
            "gauge",
            self.gossip_local_health.load(Relaxed).to_string(),
        );
        gauge(
            "keel_under_replicated_voters",
            "Voters confirmed dead and not yet replaced (reported by the leader).",
            "gauge",
            self.under_replicated.load(Relaxed).to_string(),
        );
        gauge(
            "keel_replacements_started_total",
            "Spares this member, as leader, added as learners to replace a dead voter (applied).",
            "counter",
            self.replacements_started.load(Relaxed).to_string(),
        );
        gauge(
            "keel_replacements_promoted_total",
            "Replacements this member, as leader, promoted to voter (applied).",
            "counter",
            self.replacements_promoted.load(Relaxed).to_string(),
        );
        gauge(
            "keel_replacements_removed_total",
            "Dead voters this member, as leader, removed (applied).",
            "counter",
            self.replacements_removed.load(Relaxed).to_string(),
        );
        gauge(
            "keel_replacements_abandoned_total",
            "Learners this member, as leader, removed because they died or did not catch up (applied).",
            "counter",
            self.replacements_abandoned.load(Relaxed).to_string(),
        );
        gauge(
            "keel_disk_slow",
            "Whether fail-slow detection judges this member's disk slow (1) or not (0).",
            "gauge",
            self.disk_slow.load(Relaxed).to_string(),
        );
        gauge(
            "keel_disk_slow_flags_total",
            "The number of times this member's disk was judged slow.",
            "counter",
            self.disk_slow_flags.load(Relaxed).to_string(),
        );
        gauge(
            "keel_slow_leader_hand_offs_total",
            "The number of times this member handed leadership over because its disk was slow.",
            "counter",
            self.slow_hand_offs.load(Relaxed).to_string(),
        );
        gauge(
            "keel_disk_write_recent_seconds",
            "Median WAL write latency over the last judged second.",
            "gauge",
            (self.disk_write_recent_us.load(Relaxed) as f64 / 1e6).to_string(),
        );
        gauge(
            "keel_disk_write_baseline_seconds",
            "The healthy baseline of the median WAL write latency (0 while still learned).",
            "gauge",
            (self.disk_write_baseline_us.load(Relaxed) as f64 / 1e6).to_string(),
        );
        gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            "gauge",
            self.commit_index.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            "gauge",
            self.applied_index.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            "counter",
            self.proposals_failed.load(Relaxed).to_string(),
        );
        gauge(
            "keel_wal_segments_removed_total",
            "WAL segments removed once snapshots covered them.",
            "counter",
            self.wal_segments_removed.load(Relaxed).to_string(),
        );
        gauge(
            "keel_snapshot_files_removed_total",
            "Snapshot files removed once newer ones were durable.",
            "counter",
            self.snapshot_files_removed.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database in bytes.",
            "gauge",
            self.db_size.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            "gauge",
            self.revision.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            "gauge",
            self.compacted_revision.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_server_quota_backend_bytes_exceeded",
            "Whether the NOSPACE alarm is raised on this member (1) or not (0).",
            "gauge",
            self.nospace_alarm.load(Relaxed).to_string(),
        );
        gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", "gauge", self.keys.load(Relaxed).to_string());
        gauge("etcd_debugging_lease_total", "The number of leases.", "gauge", self.leases.load(Relaxed).to_string());
        gauge(
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
            "gauge",
            self.watch_streams.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            "gauge",
            self.watchers.load(Relaxed).to_string(),
        );
        // The name etcd's Grafana dashboard queries for the same figure.
        gauge(
            "etcd_debugging_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            self.db_size.load(Relaxed).to_string(),
        );
        // Prometheus's process collector, as Go's client serves it for etcd (read at scrape time).
        if let Some(process) = ProcessFigures::read() {
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
                process.resident_bytes.to_string(),
            );
            gauge(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                "counter",
                format!("{:.2}", process.cpu_seconds),
            );
            gauge("process_open_fds", "Number of open file descriptors.", "gauge", process.open_fds.to_string());
        }
        gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            "gauge",
            self.proposals_pending.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            "counter",
            self.peer.sent.load(Relaxed).to_string(),
        );
        gauge(
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            "counter",
            self.peer.received.load(Relaxed).to_string(),
        );
        self.wal_fsync.render(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        );
        self.backend_commit.render(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        self.grpc.render(&mut out);
        out
    }
}

/// This process's figures from `/proc/self` (Linux; elsewhere nothing is reported).
struct ProcessFigures {
    resident_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
}

impl ProcessFigures {
    fn read() -> Option<ProcessFigures> {
        // 4 KiB pages (x86-64, and the usual arm64 kernels); USER_HZ is 100 (the kernel ABI).
        const PAGE_BYTES: u64 = 4096;
        const TICKS_PER_SECOND: f64 = 100.0;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; here, after pid and comm, 11 and 12.
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(ProcessFigures {
            resident_bytes: resident_pages * PAGE_BYTES,
            cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
            open_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe_fsync(Duration::from_micros(500));
        metrics.observe_fsync(Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 2\n"), "{text}");
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_count 2\n"), "{text}");
        assert!(text.contains("etcd_server_has_leader 0\n"), "{text}");
    }

    #[test]
    fn the_process_figures_are_this_process() {
        let process = ProcessFigures::read().expect("/proc/self on Linux");
        assert!(process.resident_bytes > 1 << 20, "a test process holds more than 1 MiB");
        assert!(process.open_fds >= 3, "stdin, stdout and stderr at least");
        // Spend CPU, and the counter moves.
        let before = process.cpu_seconds;
        let mut x = 0u64;
        while ProcessFigures::read().expect("read").cpu_seconds < before + 0.05 {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        assert_ne!(x, 1);
        let text = Metrics::default().render();
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\netcd_debugging_mvcc_db_total_size_in_bytes 0\n"), "{text}");
    }
}
