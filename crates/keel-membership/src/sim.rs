//! A deterministic simulator of [`Swim`] groups in virtual time: thousands of members, message
//! loss and delay, crashes, and stalls (a member's process stops; what is sent to it waits in
//! its socket and is read when it resumes). It runs the protocol code itself, so the figures it
//! gives are the protocol's, and a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use bytes::Bytes;

use crate::swim::{Liveness, MemberId, Message, Swim, SwimConfig};

/// One run's world.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub members: usize,
    pub swim: SwimConfig,
    /// Each message is lost with this probability, independently.
    pub loss: f64,
    /// One-way delay, uniform in `[lo, hi]` microseconds.
    pub latency_us: (u64, u64),
    /// Time before anything is measured (members settle, phases spread).
    pub warmup_us: u64,
    /// Time measured after the warm-up.
    pub run_us: u64,
    /// Crash one random member within the first period after the warm-up, and measure how long
    /// until every other member marks it dead.
    pub crash: bool,
    /// This fraction of members stall again and again.
    pub stall_fraction: f64,
    /// A stall's length, uniform in `[lo, hi]`.
    pub stall_us: (u64, u64),
    /// The time between one stall's end and the next one's start, uniform in `[lo, hi]`.
    pub stall_gap_us: (u64, u64),
    /// After the warm-up, one random member changes its description: measure how long until
    /// every member has it.
    pub news: bool,
    /// After the warm-up, the first `members` members are cut off from the rest (both ways)
    /// for `length_us`: measure how long after it heals until every member believes every
    /// other alive again.
    pub partition: Option<Partition>,
}

#[derive(Clone, Copy, Debug)]
pub struct Partition {
    pub members: usize,
    pub length_us: u64,
}

impl Scenario {
    pub fn new(members: usize, swim: SwimConfig) -> Scenario {
        let period = swim.probe_interval_us;
        Scenario {
            members,
            swim,
            loss: 0.0,
            latency_us: (100, 1_000),
            warmup_us: 5 * period,
            run_us: 60 * period,
            crash: false,
            stall_fraction: 0.0,
            stall_us: (500_000, 3_000_000),
            stall_gap_us: (5_000_000, 20_000_000),
            news: false,
            partition: None,
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// From the crash until every other member marked the crashed one dead.
    pub detection_us: Option<u64>,
    /// From the crash until the first member suspected it.
    pub first_suspicion_us: Option<u64>,
    /// From the news until every member had it.
    pub news_spread_us: Option<u64>,
    /// From the partition's end until every member believed every other alive again.
    pub rejoined_us: Option<u64>,
    /// Whether, during the partition, some member believed one across it dead (the partition
    /// lasted long enough to matter).
    pub partition_declared_dead: bool,
    /// Members declared dead (by anyone) while running: distinct (member, incarnation).
    pub false_dead: u64,
    /// The same, counting only members that never stall.
    pub false_dead_never_stalled: u64,
    /// The same, counting only members that were running when declared dead and had been for
    /// [`RESPONSIVE_WINDOW_PERIODS`]: they could answer, so their death came from somebody
    /// else's trouble (the harm local health exists to prevent). The rest of `false_dead` are
    /// members still stopped, or just resumed, after seconds without answering, which a
    /// failure detector is right to notice.
    pub false_dead_responsive: u64,
    /// (observer, member) pairs behind `false_dead`.
    pub false_dead_marks: u64,
    /// Messages sent after the warm-up, by kind.
    pub messages: BTreeMap<&'static str, u64>,
    /// Their bytes as [`crate::wire`] encodes them.
    pub bytes: u64,
    /// Updates they carried (piggybacked, pushed or in anti-entropy tables).
    pub updates_carried: u64,
    /// Member-periods after the warm-up (members running × periods).
    pub member_periods: f64,
    pub stalls: u64,
}

/// How long after resuming from a stall a member may still be declared dead with cause. On
/// resuming it reads its socket, finds the suspicion (the pings that probed it carry it) and
/// refutes at once; the refutation then needs about a period to reach the others. A death
/// declared later than this, or of a member that never stopped, is a false accusation.
pub const RESPONSIVE_WINDOW_PERIODS: u64 = 2;

impl Outcome {
    pub fn messages_total(&self) -> u64 {
        self.messages.values().sum()
    }

    pub fn messages_per_member_period(&self) -> f64 {
        self.messages_total() as f64 / self.member_periods.max(1.0)
    }

    /// Bytes sent per member per period, had every update carried a description of
    /// `description_bytes` (the simulated members mostly know each other's as empty; the
    /// server's — name, URLs, zone — are 50–100 bytes).
    pub fn bytes_per_member_period(&self, description_bytes: u64) -> f64 {
        (self.bytes + self.updates_carried * description_bytes) as f64 / self.member_periods.max(1.0)
    }
}

enum Happening {
    Deliver {
        to: usize,
        from: MemberId,
        message: Message,
    },
    Tick(usize),
    Crash(usize),
    StallStart(usize),
    StallEnd(usize),
    News(usize),
    PartitionEnd,
    /// Every period after a partition heals: does everyone believe everyone alive?
    CheckRejoined,
    Stop,
}

struct Queued {
    at: u64,
    seq: u64,
    happening: Happening,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo + 1)
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

struct World<'a> {
    scenario: &'a Scenario,
    rng: Rng,
    members: Vec<Swim>,
    crashed: Vec<bool>,
    stalled: Vec<bool>,
    stall_prone: Vec<bool>,
    /// When each member last resumed from a stall (None: never stalled).
    resumed_at: Vec<Option<u64>>,
    inbox: Vec<Vec<(MemberId, Message)>>,
    scheduled: Vec<u64>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    now: u64,
    outcome: Outcome,
    crash_at: Option<(usize, u64)>,
    detected_by: BTreeSet<usize>,
    news_at: Option<(usize, u64, u64)>,
    news_known_by: BTreeSet<usize>,
    false_dead_seen: BTreeSet<(MemberId, u64)>,
    /// Members cut off from the rest while a partition lasts.
    cut_off: Option<usize>,
    partition_end: Option<u64>,
}

fn id_of(index: usize) -> MemberId {
    index as MemberId + 1
}

fn index_of(id: MemberId) -> usize {
    (id - 1) as usize
}

/// Runs one seed of a scenario.
pub fn run(scenario: &Scenario, seed: u64) -> Outcome {
    let n = scenario.members;
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x51_4D);
    let ids: Vec<MemberId> = (0..n).map(id_of).collect();
    let members: Vec<Swim> =
        (0..n).map(|i| Swim::new(scenario.swim.clone(), id_of(i), 0, Bytes::new(), &ids, rng.next(), 0)).collect();
    let stall_prone: Vec<bool> = (0..n).map(|_| rng.chance(scenario.stall_fraction)).collect();
    let mut world = World {
        scenario,
        rng,
        members,
        crashed: vec![false; n],
        stalled: vec![false; n],
        stall_prone,
        resumed_at: vec![None; n],
        inbox: vec![Vec::new(); n],
        scheduled: vec![u64::MAX; n],
        queue: BinaryHeap::new(),
        seq: 0,
        now: 0,
        outcome: Outcome::default(),
        crash_at: None,
        detected_by: BTreeSet::new(),
        news_at: None,
        news_known_by: BTreeSet::new(),
        false_dead_seen: BTreeSet::new(),
        cut_off: None,
        partition_end: None,
    };
    world.run();
    world.outcome
}

impl World<'_> {
    fn push(&mut self, at: u64, happening: Happening) {
        self.seq += 1;
        self.queue.push(Reverse(Queued { at, seq: self.seq, happening }));
    }

    fn run(&mut self) {
        let s = self.scenario;
        let period = s.swim.probe_interval_us;
        let end = s.warmup_us + s.run_us;
        for i in 0..s.members {
            self.reschedule(i);
            if self.stall_prone[i] {
                let at = self.rng.uniform(0, s.stall_gap_us.1);
                self.push(at, Happening::StallStart(i));
            }
        }
        if s.crash {
            let victim = (self.rng.next() % s.members as u64) as usize;
            let at = s.warmup_us + self.rng.uniform(0, period);
            self.push(at, Happening::Crash(victim));
        }
        if s.news {
            let who = (self.rng.next() % s.members as u64) as usize;
            let at = s.warmup_us + self.rng.uniform(0, period);
            self.push(at, Happening::News(who));
        }
        if let Some(partition) = s.partition {
            self.cut_off = Some(partition.members);
            self.push(s.warmup_us + partition.length_us, Happening::PartitionEnd);
        }
        self.push(end, Happening::Stop);
        while let Some(Reverse(next)) = self.queue.pop() {
            self.now = next.at;
            match next.happening {
                Happening::Stop => break,
                Happening::Tick(i) => {
                    if self.scheduled[i] != next.at {
                        continue;
                    }
                    self.scheduled[i] = u64::MAX;
                    if self.crashed[i] || self.stalled[i] {
                        continue;
                    }
                    self.members[i].tick(self.now);
                    self.after(i);
                }
                Happening::Deliver { to, from, message } => {
                    if self.crashed[to] {
                        continue;
                    }
                    if self.stalled[to] {
                        self.inbox[to].push((from, message));
                        continue;
                    }
                    self.members[to].step(self.now, from, message);
                    self.after(to);
                }
                Happening::Crash(i) => {
                    self.crashed[i] = true;
                    self.crash_at = Some((i, self.now));
                }
                Happening::StallStart(i) => {
                    if self.crashed[i] {
                        continue;
                    }
                    self.stalled[i] = true;
                    if self.now >= s.warmup_us {
                        self.outcome.stalls += 1;
                    }
                    let length = self.rng.uniform(s.stall_us.0, s.stall_us.1);
                    self.push(self.now + length, Happening::StallEnd(i));
                }
                Happening::StallEnd(i) => {
                    self.stalled[i] = false;
                    self.resumed_at[i] = Some(self.now);
                    // The process resumes: its overdue timers fire, then it reads its socket.
                    self.members[i].tick(self.now);
                    self.after(i);
                    for (from, message) in std::mem::take(&mut self.inbox[i]) {
                        self.members[i].step(self.now, from, message);
                        self.after(i);
                    }
                    let gap = self.rng.uniform(s.stall_gap_us.0, s.stall_gap_us.1);
                    self.push(self.now + gap, Happening::StallStart(i));
                }
                Happening::PartitionEnd => {
                    self.cut_off = None;
                    self.partition_end = Some(self.now);
                    self.push(self.now + period, Happening::CheckRejoined);
                }
                Happening::CheckRejoined => {
                    let everyone_alive = self.members.iter().enumerate().all(|(i, m)| {
                        self.crashed[i]
                            || m.members()
                                .all(|(id, liveness, _)| liveness == Liveness::Alive || self.crashed[index_of(id)])
                    });
                    if everyone_alive {
                        self.outcome.rejoined_us = Some(self.now - self.partition_end.expect("healed"));
                    } else {
                        self.push(self.now + period, Happening::CheckRejoined);
                    }
                }
                Happening::News(i) => {
                    let member = &mut self.members[i];
                    member.set_meta(Bytes::from_static(b"new description"));
                    let incarnation = member.incarnation();
                    self.news_at = Some((i, self.now, incarnation));
                    self.news_known_by.insert(i);
                    self.after(i);
                }
            }
            if self.finished() {
                break;
            }
        }
        let measured = self.now.min(end).saturating_sub(s.warmup_us) as f64 / period as f64;
        let running = self.crashed.iter().filter(|c| !**c).count() as f64;
        self.outcome.member_periods = measured * running;
    }

    /// Detection and spreading runs stop once measured (no point simulating on).
    fn finished(&self) -> bool {
        let s = self.scenario;
        let crash_done = !s.crash || self.outcome.detection_us.is_some();
        let news_done = !s.news || self.outcome.news_spread_us.is_some();
        let partition_done = s.partition.is_none() || self.outcome.rejoined_us.is_some();
        (s.crash || s.news || s.partition.is_some()) && crash_done && news_done && partition_done
    }

    /// After member `i` ran: send what it sent, learn what it concluded, wake it when due.
    fn after(&mut self, i: usize) {
        let s = self.scenario;
        let from = id_of(i);
        for (to, message) in self.members[i].take_outbox() {
            if self.now >= s.warmup_us {
                *self.outcome.messages.entry(message.kind()).or_default() += 1;
                self.outcome.bytes += crate::wire::encoded_len(&message) as u64;
                self.outcome.updates_carried += message.updates().len() as u64;
            }
            if self.rng.chance(s.loss) {
                continue;
            }
            if self.cut_off.is_some_and(|k| (i < k) != (index_of(to) < k)) {
                continue;
            }
            let delay = self.rng.uniform(s.latency_us.0, s.latency_us.1);
            self.push(self.now + delay, Happening::Deliver { to: index_of(to), from, message });
        }
        for event in self.members[i].take_events() {
            let subject = index_of(event.member);
            match event.liveness {
                Liveness::Dead | Liveness::Left if !self.crashed[subject] => {
                    if self.cut_off.is_some_and(|k| (i < k) != (subject < k)) {
                        self.outcome.partition_declared_dead = true;
                    }
                    self.outcome.false_dead_marks += 1;
                    if self.false_dead_seen.insert((event.member, event.incarnation)) {
                        self.outcome.false_dead += 1;
                        if !self.stall_prone[subject] {
                            self.outcome.false_dead_never_stalled += 1;
                        }
                        let window = RESPONSIVE_WINDOW_PERIODS * s.swim.probe_interval_us;
                        let responsive = !self.stalled[subject]
                            && self.resumed_at[subject].is_none_or(|at| self.now.saturating_sub(at) > window);
                        if responsive {
                            self.outcome.false_dead_responsive += 1;
                        }
                    }
                }
                Liveness::Dead if self.crash_at.is_some_and(|(victim, _)| victim == subject) => {
                    self.detected_by.insert(i);
                    let (_, at) = self.crash_at.expect("crashed");
                    let running = self.crashed.iter().filter(|c| !**c).count();
                    if self.detected_by.len() == running && self.outcome.detection_us.is_none() {
                        self.outcome.detection_us = Some(self.now - at);
                    }
                }
                Liveness::Suspect
                    if self.crash_at.is_some_and(|(victim, _)| victim == subject)
                        && self.outcome.first_suspicion_us.is_none() =>
                {
                    let (_, at) = self.crash_at.expect("crashed");
                    self.outcome.first_suspicion_us = Some(self.now - at);
                }
                _ => {}
            }
            if let Some((who, at, incarnation)) = self.news_at {
                // Every update carries the description, so any belief at the new incarnation
                // (even a suspicion) means the member has the news.
                if subject == who && event.incarnation >= incarnation {
                    self.news_known_by.insert(i);
                    let running = self.crashed.iter().filter(|c| !**c).count();
                    if self.news_known_by.len() == running && self.outcome.news_spread_us.is_none() {
                        self.outcome.news_spread_us = Some(self.now - at);
                    }
                }
            }
        }
        self.reschedule(i);
    }

    fn reschedule(&mut self, i: usize) {
        let due = self.members[i].next_deadline().max(self.now);
        if due < self.scheduled[i] {
            self.scheduled[i] = due;
            self.push(due, Happening::Tick(i));
        }
    }
}

/// The `q`-quantile (0..=1) of `values` (sorted in place), or `None` if empty.
pub fn quantile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}
