//! Swarm testing (TigerBeetle's `options_swarm`): the seed draws not only the events of a run
//! but its whole shape — cluster size, groups, timing, and which faults are switched on at what
//! intensity — so that across seeds, rare fault mixes get explored too.

use keel_raft::SplitMix64;

/// Probabilities are per simulated millisecond, in parts per million.
#[derive(Clone, Debug)]
pub struct Swarm {
    pub founding_members: u64,
    pub groups: u64,
    pub clients: u64,
    pub keys: u64,
    pub drop_percent: u64,
    pub duplicate_percent: u64,
    pub delay_ms_max: u64,
    pub fsync_ms_max: u64,
    pub crash_ppm: u64,
    pub partition_ppm: u64,
    pub pause_ppm: u64,
    pub transfer_ppm: u64,
    pub membership_ppm: u64,
    /// Changes to users, roles and permissions (and auth on or off) proposed under load, on the
    /// etcd machine; the clients' requests then carry a user, checked as they apply.
    pub auth_ppm: u64,
    pub snapshot_interval_entries: u64,
    /// Members tick every 10 ms ± this much (clock drift between members).
    pub tick_drift_ms: u64,
    pub safety_ms: u64,
    /// Leaders step down without a quorum (and followers ignore campaigns while they hear one).
    /// Off in some runs: ReadIndex must stay linearizable without it, and an isolated leader
    /// then keeps leading, which exercises reads against a deposed leader for a long time.
    pub check_quorum: bool,
    /// Clients only write (the benchmark).
    pub writes_only: bool,
    /// Percent of operations a client sends to a random member instead of the leader it knows:
    /// clients that all stick to one leader never notice that another member took over.
    pub retarget_percent: u64,
    /// Serve reads from the leader's lease instead of a ReadIndex round.
    pub lease_reads: bool,
    /// How long a client waits for an answer before it counts the outcome as unknown.
    pub client_timeout_ms: u64,
    /// The state machine keeps its state on disk (as the etcd machine on redb does): snapshots
    /// carry no data, the log is compacted behind the machine's durable index, and a follower
    /// that needs a snapshot gets the machine's current state.
    pub persistent_machine: bool,
    /// A persistent machine writes durably every this many flushes.
    pub durable_every_flushes: u32,
    /// Entries kept behind a persistent machine's snapshot for lagging followers.
    pub catch_up_entries: u64,
    /// The members run the server's etcd machine (keel-mvcc on a memory backend) instead of the
    /// toy KV machine; it persists its own state, so `persistent_machine` holds too.
    pub etcd_machine: bool,
    /// Members campaign within a few ticks of starting (the server's setting) instead of after
    /// a whole election timeout.
    pub campaign_soon_at_start: bool,
    /// A member's disk fills up (and is freed again later): its write waits, as the server's.
    pub disk_full_ppm: u64,
    /// A bit flips in WAL data a member already made durable, and the member crashes: at restart
    /// its WAL must refuse to open (the member stays down until membership replaces it).
    pub bit_rot_ppm: u64,
    /// Followers suspect a silent leader by phi-accrual and campaign at once (the server's
    /// setting), instead of waiting out the election timeout.
    pub leader_detection: bool,
    /// Members judge their own disk by its write latency and a slow one hands off leadership
    /// and stands back from elections (the server's setting; see keel-node's `HealthConfig`).
    pub fail_slow: bool,
    /// A member's fsyncs become 20 times slower for a while.
    pub slow_disk_ppm: u64,
    /// Every process runs the membership protocol and the leader's healer, spares stand by, and
    /// voters die for good: the server's self-healing, under every other fault.
    pub self_healing: bool,
    /// Spares started beside the founding members (self-healing runs).
    pub spares: u64,
    /// A voter dies for good (one at a time, only while a spare could replace it).
    pub kill_ppm: u64,
    /// Processes get one of three zones (failure domains) instead of none.
    pub zones: bool,
}

fn maybe(rng: &mut SplitMix64, ppm_max: u64) -> u64 {
    // Each fault is off in about a third of the runs, so that every subset of faults is explored.
    if rng.range(0, 3) == 0 {
        0
    } else {
        rng.range(1, ppm_max + 1)
    }
}

impl Swarm {
    /// A fault-free cluster under write load, for measuring how fast the core commits: 3 members,
    /// one group, `clients` closed-loop writers, `safety_ms` of simulated time.
    pub fn benchmark(clients: u64, safety_ms: u64) -> Swarm {
        Swarm {
            founding_members: 3,
            groups: 1,
            clients,
            keys: 1_000,
            drop_percent: 0,
            duplicate_percent: 0,
            delay_ms_max: 1,
            fsync_ms_max: 1,
            crash_ppm: 0,
            partition_ppm: 0,
            pause_ppm: 0,
            transfer_ppm: 0,
            membership_ppm: 0,
            auth_ppm: 0,
            snapshot_interval_entries: 10_000,
            tick_drift_ms: 0,
            safety_ms,
            client_timeout_ms: 10_000,
            lease_reads: false,
            writes_only: true,
            retarget_percent: 0,
            check_quorum: true,
            persistent_machine: false,
            durable_every_flushes: 1,
            catch_up_entries: 0,
            etcd_machine: false,
            campaign_soon_at_start: true,
            disk_full_ppm: 0,
            bit_rot_ppm: 0,
            leader_detection: true,
            fail_slow: true,
            slow_disk_ppm: 0,
            self_healing: false,
            spares: 0,
            kill_ppm: 0,
            zones: false,
        }
    }

    /// Self-healing, in a third of the runs. Drawn from a stream of its own (from the seed), not
    /// the run's: a dimension added to the swarm must not shift what every other seed draws
    /// after it, or the seeds pinned in tests would silently stop replaying the runs that found
    /// their bugs. (Runs without self-healing replay exactly as before it existed.)
    pub fn draw_self_healing(&mut self, seed: u64) {
        let mut rng = SplitMix64::new(seed ^ 0x4EA1_5E1F_D1E5_0FF5);
        if rng.range(0, 3) == 0 {
            self.self_healing = true;
            self.spares = rng.range(1, 3);
            self.kill_ppm = rng.range(200, 1_001);
            self.zones = rng.range(0, 2) == 0;
            // Time for a replacement (detection, the wait, catch-up, promotion) within the run.
            self.safety_ms = 6_000;
        }
    }

    /// Auth churn, for runs of the etcd machine, from a random stream of its own for the same
    /// reason as [`Swarm::draw_self_healing`]: runs without it replay exactly as before.
    pub fn draw_auth(&mut self, seed: u64) {
        let mut rng = SplitMix64::new(seed ^ 0xA77E_570F_C0DE_5A17);
        if self.etcd_machine && rng.range(0, 2) == 0 {
            self.auth_ppm = rng.range(500, 5_001);
        }
    }

    pub fn draw(rng: &mut SplitMix64) -> Swarm {
        let mut swarm = Swarm {
            founding_members: if rng.range(0, 4) == 0 { 5 } else { 3 },
            groups: rng.range(1, 3),
            clients: rng.range(2, 11),
            keys: rng.range(1, 9),
            drop_percent: if rng.range(0, 2) == 0 { 0 } else { rng.range(1, 21) },
            duplicate_percent: if rng.range(0, 2) == 0 { 0 } else { rng.range(1, 11) },
            delay_ms_max: rng.range(1, 21),
            fsync_ms_max: rng.range(1, 9),
            crash_ppm: maybe(rng, 2_000),
            partition_ppm: maybe(rng, 2_000),
            pause_ppm: maybe(rng, 1_000),
            transfer_ppm: maybe(rng, 1_000),
            membership_ppm: maybe(rng, 1_500),
            auth_ppm: 0,
            snapshot_interval_entries: rng.range(5, 200),
            tick_drift_ms: rng.range(0, 2),
            safety_ms: 3_000,
            client_timeout_ms: rng.range(150, 1_001),
            lease_reads: rng.range(0, 4) == 0,
            writes_only: false,
            retarget_percent: [5, 15, 50][rng.range(0, 3) as usize],
            check_quorum: rng.range(0, 4) != 0,
            persistent_machine: rng.range(0, 2) == 0,
            durable_every_flushes: rng.range(1, 9) as u32,
            catch_up_entries: [0, 3, 20, 100][rng.range(0, 4) as usize],
            etcd_machine: rng.range(0, 2) == 0,
            campaign_soon_at_start: rng.range(0, 2) == 0,
            disk_full_ppm: maybe(rng, 500),
            bit_rot_ppm: maybe(rng, 300),
            leader_detection: rng.range(0, 4) != 0,
            fail_slow: rng.range(0, 4) != 0,
            slow_disk_ppm: maybe(rng, 1_000),
            self_healing: false,
            spares: 0,
            kill_ppm: 0,
            zones: false,
        };

        swarm.persistent_machine |= swarm.etcd_machine;
        // Lease reads are only safe behind check-quorum (keel-raft refuses the combination).
        swarm.check_quorum |= swarm.lease_reads;
        swarm
    }
}
