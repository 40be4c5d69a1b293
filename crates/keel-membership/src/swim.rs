//! SWIM membership with the Lifeguard refinements, sans-IO.
//!
//! Every member runs one [`Swim`]. The host feeds it time ([`Swim::tick`] at
//! [`Swim::next_deadline`]) and the messages other members sent ([`Swim::step`]); it takes the
//! messages to send from [`Swim::take_outbox`] and the changes it concluded from
//! [`Swim::take_events`]. Nothing here reads a clock, opens a socket or draws entropy of its own,
//! so the simulator ([`crate::sim`]) runs exactly this code for thousands of members in virtual
//! time.
//!
//! ## The protocol (Das et al., "SWIM", 2002; Dadgar et al., "Lifeguard", 2017)
//! - **Probes.** Once per protocol period a member pings one other member. No ack within half
//!   the probe timeout → the ping goes once more (a lost ping or ack is the common case of a
//!   missing answer, and one message is cheaper than k relays and a suspicion everyone must
//!   hear and the target must refute); no ack within the probe timeout → it asks
//!   `indirect_checks` (k) others to ping the target for it (ping-req), and each relay resends
//!   its ping the same way; no ack, direct or relayed, by the indirect deadline → it *suspects*
//!   the target. Resends happen only on loss: at 0 % loss a probe costs a ping and an ack.
//! - **Who probes whom.** Not each member's own shuffled round-robin (SWIM, memberlist) but one
//!   permutation per period that every member computes alike: members sorted by a hash of their
//!   id, each probing the one `offset(period)` places after itself, the offset drawn from the
//!   period number. Every live member is then probed by *someone* in every period (with
//!   independent round-robins the first probe of a crashed member of 100 comes after 4.6
//!   periods at p99; here after at most one), and each period a different member probes it, so
//!   suspicions of a crashed member are confirmed by independent accusers one period apart.
//!   The period number comes from the host's clock: members whose clocks disagree by a few
//!   milliseconds only make a few probes collide near the boundaries.
//! - **Suspicion, not death.** A suspect has `suspicion timeout` to refute. The timeout starts at
//!   its maximum and shrinks logarithmically with each independent confirmation (Lifeguard's
//!   dynamic suspicion): a crashed member, confirmed by its probers period after period, is
//!   declared dead quickly, while a lone suspicion caused by a lost packet waits long enough for
//!   the refutation.
//! - **Incarnations.** A member that hears itself suspected (or declared dead) bumps its
//!   incarnation and announces itself alive; a higher incarnation wins, and at equal ones
//!   dead > suspect > alive. Probes of a suspect carry the suspicion (Lifeguard's buddy
//!   system), so the suspect hears it within a period even if gossip missed it.
//! - **Dissemination.** Updates ride on every ping, ack and ping-req (each update at most
//!   `retransmit_mult × ⌈log10(n + 1)⌉` times, least-sent first, except that when the queue
//!   holds more than a message carries, a quarter of the slots go to the oldest queued updates:
//!   under a storm of suspicions fresh news would otherwise take every slot, and older news
//!   would stop spreading halfway). A *change* — a new suspicion,
//!   a death, a refutation, a join — is also pushed at once to `gossip_fanout` random members by
//!   each member that learns it (rumour mongering): the probes cost two messages per member per
//!   period whatever happens, and news costs `fanout × n` messages once, reaching almost
//!   everyone within a few network delays instead of a few periods. Anti-entropy: every
//!   `sync_interval` a member exchanges its whole table with a random member (retried each
//!   period until answered), which repairs whatever gossip lost.
//! - **Local health** (Lifeguard). A member that fails probes, misses the nacks its relays owe
//!   it, or has to refute a suspicion of itself is likely the sick one: its local-health score
//!   stretches its own probe timeouts and interval (×(1 + score)), and it recovers one point per
//!   successful probe. And a member whose timers fire long after they were due — its process was
//!   stopped or starved — first reads what arrived meanwhile before it concludes anything
//!   (a grace period on every pending deadline), instead of accusing the members whose acks are
//!   sitting unread in its socket.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::wire;

pub type MemberId = u64;
pub type Incarnation = u64;

/// What a member believes of another. At equal incarnation the later variant wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    Alive,
    Suspect,
    Dead,
    /// It said goodbye: dead without anyone's doubt.
    Left,
}

impl Liveness {
    pub fn is_gone(self) -> bool {
        matches!(self, Liveness::Dead | Liveness::Left)
    }
}

/// One fact about one member, as gossip carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub member: MemberId,
    pub incarnation: Incarnation,
    pub liveness: Liveness,
    /// Who concluded it (for suspicions: the accuser; independent accusers confirm).
    pub by: MemberId,
    /// The member's description (address, zone, role) at `incarnation`, opaque here. Every
    /// update carries it as the sender knows it: a description only changes with a new
    /// incarnation, so whoever first hears of that incarnation through a suspicion still
    /// learns it.
    pub meta: Bytes,
}

/// Everything members say to each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Are you there? `target` lets a member reached at a stale address answer only for itself.
    Ping {
        seq: u32,
        target: MemberId,
        updates: Vec<Update>,
    },
    Ack {
        seq: u32,
        updates: Vec<Update>,
    },
    /// Ping `target` for me and forward its ack (or a nack if it does not answer).
    PingReq {
        seq: u32,
        target: MemberId,
        updates: Vec<Update>,
    },
    /// The relay asked to ping for `seq` got no answer (proof the relay itself is reachable).
    Nack {
        seq: u32,
    },
    /// News pushed at once.
    Gossip {
        updates: Vec<Update>,
    },
    /// Anti-entropy: a member's whole table; `reply` asks for the receiver's in return.
    Sync {
        updates: Vec<Update>,
        reply: bool,
    },
}

impl Message {
    /// The updates it carries (none for a nack).
    pub fn updates(&self) -> &[Update] {
        match self {
            Message::Ping { updates, .. }
            | Message::Ack { updates, .. }
            | Message::PingReq { updates, .. }
            | Message::Gossip { updates }
            | Message::Sync { updates, .. } => updates,
            Message::Nack { .. } => &[],
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Ack { .. } => "ack",
            Message::PingReq { .. } => "ping-req",
            Message::Nack { .. } => "nack",
            Message::Gossip { .. } => "gossip",
            Message::Sync { .. } => "sync",
        }
    }
}

/// A change in what this member believes of another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub member: MemberId,
    pub liveness: Liveness,
    pub incarnation: Incarnation,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SwimConfig {
    /// The protocol period: one probe per member per period (microseconds).
    pub probe_interval_us: u64,
    /// How long a direct ping waits for its ack before asking relays.
    pub probe_timeout_us: u64,
    /// How long after the ping-reqs the probe waits for a relayed ack before suspecting.
    pub indirect_timeout_us: u64,
    /// k: members asked to relay a failed probe.
    pub indirect_checks: usize,
    /// α: the least suspicion timeout is α × max(1, log10 n) periods.
    pub suspicion_min_mult: f64,
    /// β: a suspicion nobody confirms waits β × the least timeout.
    pub suspicion_max_mult: f64,
    /// λ: each update rides on at most λ × ⌈log10(n + 1)⌉ messages.
    pub retransmit_mult: u32,
    /// Most updates carried by one message.
    pub max_piggyback: usize,
    /// Most bytes of updates (as [`crate::wire`] encodes them) carried by one message. Members
    /// talk over the peer port's TCP connections, not 1,400-byte UDP datagrams as memberlist
    /// does, so a message may carry a storm's worth of news: at 30 % loss a group of 1,000
    /// raises ~100 suspicions a period, and 64 slots per message left news ~35 periods late.
    pub max_piggyback_bytes: usize,
    /// News is pushed at once to this many random members by each member that learns it
    /// (0: only piggybacked, as in SWIM's paper).
    pub gossip_fanout: usize,
    /// Pushes leave a member at most once per this interval, each carrying all news gathered
    /// meanwhile: under a storm of news (heavy loss suspects many) a member sends at most
    /// `gossip_fanout` pushes per interval, not `gossip_fanout` per item of news.
    pub gossip_interval_us: u64,
    /// Anti-entropy: how often a member exchanges its whole table with a random member.
    pub sync_interval_us: u64,
    /// How often a member offers its table to one member it believes dead (0: never). Without
    /// it a partition that heals leaves each side believing the other dead for good: nobody
    /// probes the dead, so nothing ever crosses again (Serf reconnects to failed members the
    /// same way). A member that was dead by mistake hears it, refutes, and answers with its
    /// table; a member that is really dead costs one message per interval.
    pub reconnect_interval_us: u64,
    /// Lifeguard's local health: probe timing stretched by the score, and a grace period after
    /// the member's own stall. Off only to measure what it buys.
    pub local_health: bool,
    /// The local-health score's ceiling.
    pub max_local_health: u32,
    /// A member whose timers fire this much later than due counts itself stalled.
    pub stall_slack_us: u64,
    /// Most relayed probes a member keeps in flight for others.
    pub max_relays: usize,
    /// A direct ping unanswered after half the probe timeout is sent once more (only on loss:
    /// without it no message is added).
    pub resend_probes: bool,
}

impl SwimConfig {
    /// A protocol period of 1 s, as memberlist's LAN profile (probe 1/s, k = 3).
    pub fn lan() -> SwimConfig {
        SwimConfig::with_period(1_000_000)
    }

    /// A protocol period of 200 ms: five times the messages per second, five times faster.
    pub fn fast() -> SwimConfig {
        SwimConfig::with_period(200_000)
    }

    /// Every timing a fixed fraction of the period.
    pub fn with_period(period_us: u64) -> SwimConfig {
        let period_us = period_us.max(1_000);
        SwimConfig {
            probe_interval_us: period_us,
            probe_timeout_us: period_us / 4,
            indirect_timeout_us: period_us / 4,
            indirect_checks: 3,
            suspicion_min_mult: 0.5,
            suspicion_max_mult: 4.0,
            retransmit_mult: 4,
            max_piggyback: 256,
            max_piggyback_bytes: 32 * 1024,
            gossip_fanout: 3,
            gossip_interval_us: period_us / 10,
            sync_interval_us: 30 * period_us,
            reconnect_interval_us: 10 * period_us,
            local_health: true,
            max_local_health: 8,
            stall_slack_us: period_us / 4,
            max_relays: 64,
            resend_probes: true,
        }
    }
}

/// What this member counted (for metrics and the simulator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    pub probes: u64,
    pub failed_probes: u64,
    /// Direct pings sent a second time (no ack after half the probe timeout).
    pub resent_probes: u64,
    pub suspicions_raised: u64,
    pub refutations: u64,
    pub declared_dead: u64,
    /// Times this member found its own timers late by more than the slack.
    pub stalls_noticed: u64,
    /// Tables offered to members believed dead.
    pub reconnects: u64,
}

#[derive(Clone, Debug)]
struct Member {
    incarnation: Incarnation,
    liveness: Liveness,
    meta: Bytes,
}

#[derive(Clone, Debug)]
struct Suspicion {
    since_us: u64,
    /// Distinct accusers, first one first; at most `expected confirmations + 1`.
    accusers: Vec<MemberId>,
    deadline_us: u64,
}

#[derive(Clone, Debug)]
struct Probe {
    seq: u32,
    target: MemberId,
    /// When the direct ping is sent once more if no ack came (None: sent twice already).
    resend_us: Option<u64>,
    direct_deadline_us: u64,
    indirect_deadline_us: u64,
    relays_asked: u32,
    nacks: u32,
    acked: bool,
}

#[derive(Clone, Debug)]
struct Relay {
    seq: u32,
    requester: MemberId,
    requester_seq: u32,
    target: MemberId,
    /// When the ping is sent once more if the target has not answered (None: sent twice).
    resend_us: Option<u64>,
    deadline_us: u64,
}

#[derive(Clone, Debug)]
struct Queued {
    update: Update,
    transmits: u32,
    /// When it was queued (a counter): the oldest news gets a share of every message.
    queued_at: u64,
    /// News not yet pushed by rumour mongering.
    push: bool,
}

/// One member's view of the group and its side of the protocol.
pub struct Swim {
    cfg: SwimConfig,
    me: MemberId,
    incarnation: Incarnation,
    meta: Bytes,
    members: BTreeMap<MemberId, Member>,
    suspicions: BTreeMap<MemberId, Suspicion>,
    /// Non-gone members (me included) sorted by `scramble(id)`: the probe permutation's order.
    ring: Vec<MemberId>,
    probe: Option<Probe>,
    next_probe_us: u64,
    relays: Vec<Relay>,
    next_sync_us: u64,
    next_reconnect_us: u64,
    /// An anti-entropy exchange awaiting its answer: (retry at, retries left).
    sync_pending: Option<(u64, u32)>,
    queue: Vec<Queued>,
    /// When the last push left, and when the next one may (`u64::MAX`: nothing waiting).
    last_push_us: Option<u64>,
    next_push_us: u64,
    local_health: u32,
    queued_seq: u64,
    seq: u32,
    rng: u64,
    now_us: u64,
    /// When the host was due to call next (the deadline we last gave it).
    due_us: u64,
    outbox: Vec<(MemberId, Message)>,
    events: Vec<Event>,
    stats: SwimStats,
    left: bool,
}

fn scramble(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Swim {
    /// A member `me` that knows `peers` (alive until proven otherwise) at `now_us`. `incarnation`
    /// should exceed any this member used before (the server passes its start time in seconds);
    /// if others remember a higher one, it adopts theirs + 1 when it hears of it.
    pub fn new(
        cfg: SwimConfig,
        me: MemberId,
        incarnation: Incarnation,
        meta: Bytes,
        peers: &[MemberId],
        seed: u64,
        now_us: u64,
    ) -> Swim {
        let mut swim = Swim {
            me,
            incarnation,
            meta: meta.clone(),
            members: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            ring: Vec::new(),
            probe: None,
            next_probe_us: 0,
            relays: Vec::new(),
            next_sync_us: 0,
            next_reconnect_us: u64::MAX,
            sync_pending: None,
            queue: Vec::new(),
            last_push_us: None,
            next_push_us: u64::MAX,
            local_health: 0,
            queued_seq: 0,
            seq: 0,
            rng: seed ^ scramble(me),
            now_us,
            due_us: now_us,
            outbox: Vec::new(),
            events: Vec::new(),
            stats: SwimStats::default(),
            left: false,
            cfg,
        };
        swim.members.insert(me, Member { incarnation, liveness: Liveness::Alive, meta: meta.clone() });
        for &peer in peers.iter().filter(|&&p| p != me) {
            swim.members.insert(peer, Member { incarnation: 0, liveness: Liveness::Alive, meta: Bytes::new() });
        }
        swim.rebuild_ring();
        // Probe at a random phase of the period, so members do not all probe at one instant.
        let period = swim.cfg.probe_interval_us;
        swim.next_probe_us = now_us + swim.random(period);
        swim.next_sync_us = now_us + swim.cfg.sync_interval_us / 2 + swim.random(swim.cfg.sync_interval_us);
        if swim.cfg.reconnect_interval_us > 0 {
            swim.next_reconnect_us = now_us + swim.random(swim.cfg.reconnect_interval_us) + 1;
        }
        swim.enqueue(Update { member: me, incarnation, liveness: Liveness::Alive, by: me, meta }, true);
        // Stall detection measures lateness against this: a first tick at the first deadline is
        // on time, not a stall.
        swim.due_us = swim.next_deadline();
        swim
    }

    // ------------------------------------------------------------------ the host's side

    pub fn id(&self) -> MemberId {
        self.me
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    pub fn stats(&self) -> &SwimStats {
        &self.stats
    }

    /// What this member believes of `member`.
    pub fn liveness(&self, member: MemberId) -> Option<(Liveness, Incarnation)> {
        self.members.get(&member).map(|m| (m.liveness, m.incarnation))
    }

    pub fn meta(&self, member: MemberId) -> Option<&Bytes> {
        self.members.get(&member).map(|m| &m.meta)
    }

    /// Every member known, with what this member believes of it.
    pub fn members(&self) -> impl Iterator<Item = (MemberId, Liveness, Incarnation)> + '_ {
        self.members.iter().map(|(&id, m)| (id, m.liveness, m.incarnation))
    }

    /// Members believed alive or suspect (me included).
    pub fn live_count(&self) -> usize {
        self.ring.len()
    }

    pub fn take_outbox(&mut self) -> Vec<(MemberId, Message)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The next instant [`Swim::tick`] has work.
    pub fn next_deadline(&self) -> u64 {
        let mut next = self.next_probe_us.min(self.next_sync_us).min(self.next_push_us).min(self.next_reconnect_us);
        if let Some(probe) = &self.probe {
            if !probe.acked {
                let pending =
                    if probe.relays_asked == 0 { probe.direct_deadline_us } else { probe.indirect_deadline_us };
                next = next.min(pending);
                if let (Some(at), 0) = (probe.resend_us, probe.relays_asked) {
                    next = next.min(at);
                }
            }
        }
        if let Some((retry, _)) = self.sync_pending {
            next = next.min(retry);
        }
        for relay in &self.relays {
            next = next.min(relay.deadline_us).min(relay.resend_us.unwrap_or(u64::MAX));
        }
        for suspicion in self.suspicions.values() {
            next = next.min(suspicion.deadline_us);
        }
        next
    }

    /// Changes this member's own description; it spreads as news.
    pub fn set_meta(&mut self, meta: Bytes) {
        self.meta = meta;
        self.bump_incarnation(self.incarnation + 1);
        self.flush_push();
    }

    /// Says goodbye: the others mark this member Left, not Dead.
    pub fn leave(&mut self) {
        self.left = true;
        self.incarnation += 1;
        let update = Update {
            member: self.me,
            incarnation: self.incarnation,
            liveness: Liveness::Left,
            by: self.me,
            meta: self.meta.clone(),
        };
        self.enqueue(update, true);
        self.flush_push();
    }

    /// Time passes: probes, relays, suspicion timers and anti-entropy fall due.
    pub fn tick(&mut self, now_us: u64) {
        self.observe(now_us);
        let now = self.now_us;
        if self.left {
            return;
        }
        self.relays_due(now);
        self.probe_due(now);
        let expired: Vec<MemberId> =
            self.suspicions.iter().filter(|(_, s)| s.deadline_us <= now).map(|(&id, _)| id).collect();
        for member in expired {
            let Some(m) = self.members.get(&member) else { continue };
            let update = Update {
                member,
                incarnation: m.incarnation,
                liveness: Liveness::Dead,
                by: self.me,
                meta: m.meta.clone(),
            };
            self.stats.declared_dead += 1;
            self.merge(update, self.me);
        }
        self.sync_due(now);
        self.reconnect_due(now);
        self.flush_push();
        self.due_us = self.next_deadline();
    }

    /// A message from `from` arrived.
    pub fn step(&mut self, now_us: u64, from: MemberId, message: Message) {
        self.observe(now_us);
        if self.left {
            return;
        }
        let now = self.now_us;
        match message {
            Message::Ping { seq, target, updates } => {
                self.merge_all(updates, from);
                if target == self.me {
                    let updates = self.piggyback(Some(from));
                    self.send(from, Message::Ack { seq, updates });
                }
            }
            Message::Ack { seq, updates } => {
                self.merge_all(updates, from);
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq && !p.acked) {
                    probe.acked = true;
                    self.local_health = self.local_health.saturating_sub(1);
                } else if let Some(at) = self.relays.iter().position(|r| r.seq == seq) {
                    let relay = self.relays.swap_remove(at);
                    let updates = self.piggyback(Some(relay.requester));
                    self.send(relay.requester, Message::Ack { seq: relay.requester_seq, updates });
                }
            }
            Message::PingReq { seq, target, updates } => {
                self.merge_all(updates, from);
                if self.relays.len() < self.cfg.max_relays && target != self.me {
                    let my_seq = self.next_seq();
                    let deadline_us = now + self.cfg.probe_timeout_us;
                    let resend_us = self.cfg.resend_probes.then_some(now + self.cfg.probe_timeout_us / 2);
                    self.relays.push(Relay {
                        seq: my_seq,
                        requester: from,
                        requester_seq: seq,
                        target,
                        resend_us,
                        deadline_us,
                    });
                    let updates = self.piggyback(Some(target));
                    self.send(target, Message::Ping { seq: my_seq, target, updates });
                }
            }
            Message::Nack { seq } => {
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    probe.nacks += 1;
                }
            }
            Message::Gossip { updates } => self.merge_all(updates, from),
            Message::Sync { updates, reply } => {
                for update in updates {
                    self.merge_synced(update, from);
                }
                if reply {
                    let updates = self.table();
                    self.send(from, Message::Sync { updates, reply: false });
                } else {
                    self.sync_pending = None;
                }
            }
        }
        self.flush_push();
        self.due_us = self.next_deadline();
    }

    // ------------------------------------------------------------------ time

    /// Takes the host's time (never backwards) and notices if this member itself was stalled:
    /// called far later than the deadline it asked for.
    fn observe(&mut self, now_us: u64) {
        let now = now_us.max(self.now_us);
        let late = now.saturating_sub(self.due_us.max(self.now_us));
        self.now_us = now;
        if self.cfg.local_health && late > self.cfg.stall_slack_us {
            // What arrived while we were stopped is still unread: give it a moment before any
            // deadline that passed meanwhile convicts somebody.
            self.stats.stalls_noticed += 1;
            self.bump_health(1);
            let grace = now + self.cfg.probe_timeout_us;
            if let Some(probe) = self.probe.as_mut() {
                probe.direct_deadline_us = probe.direct_deadline_us.max(grace);
                probe.indirect_deadline_us = probe.indirect_deadline_us.max(grace);
            }
            for suspicion in self.suspicions.values_mut() {
                suspicion.deadline_us = suspicion.deadline_us.max(grace);
            }
            for relay in self.relays.iter_mut() {
                relay.deadline_us = relay.deadline_us.max(grace);
            }
            // The open probe is judged after the grace too, not cut short by the next period.
            self.next_probe_us = self.next_probe_us.max(grace);
        }
        // A stall long enough to be noticed again must be measured from here.
        self.due_us = self.due_us.max(now);
    }

    fn bump_health(&mut self, points: u32) {
        if self.cfg.local_health {
            self.local_health = (self.local_health + points).min(self.cfg.max_local_health);
        }
    }

    /// Timings stretched by the local-health score.
    fn scaled(&self, us: u64) -> u64 {
        us * (1 + u64::from(self.local_health))
    }

    fn random(&mut self, bound: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        if bound == 0 {
            return 0;
        }
        scramble(self.rng) % bound
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    // ------------------------------------------------------------------ probing

    fn probe_due(&mut self, now: u64) {
        let resend = self.probe.as_ref().and_then(|p| match p.resend_us {
            Some(at) if !p.acked && p.relays_asked == 0 && now >= at && now < p.direct_deadline_us => {
                Some((p.seq, p.target))
            }
            _ => None,
        });
        if let Some((seq, target)) = resend {
            // The ping or its ack may have been lost: one more try before troubling k relays,
            // whose round costs four messages each and, if it fails too, a suspicion that has
            // to be spread and refuted.
            if let Some(probe) = self.probe.as_mut() {
                probe.resend_us = None;
            }
            self.stats.resent_probes += 1;
            let updates = self.piggyback(Some(target));
            self.send(target, Message::Ping { seq, target, updates });
        }
        if let Some(probe) = self.probe.as_ref() {
            if !probe.acked && probe.relays_asked == 0 && now >= probe.direct_deadline_us {
                self.ask_relays(now);
            }
        }
        let finished = self.probe.as_ref().is_some_and(|p| {
            p.acked || (p.relays_asked > 0 && now >= p.indirect_deadline_us) || now >= self.next_probe_us
        });
        if finished {
            self.finish_probe();
        }
        if now >= self.next_probe_us {
            // The next period starts from the scheduled instant, not from `now`, so a late tick
            // does not shift this member's phase for good.
            let interval = self.scaled(self.cfg.probe_interval_us);
            let behind = (now - self.next_probe_us) / interval;
            self.next_probe_us += (behind + 1) * interval;
            self.start_probe(now);
        }
    }

    /// Called whenever a member turns gone or comes back (rare): the ring is then always current.
    fn rebuild_ring(&mut self) {
        self.ring = self.members.iter().filter(|(_, m)| !m.liveness.is_gone()).map(|(&id, _)| id).collect();
        self.ring.sort_unstable_by_key(|&id| (scramble(id), id));
    }

    /// Up to `count` distinct members other than me and `except`, drawn at random from the
    /// ring; `alive_only` skips suspects. Sampling, not a scan: a thousand members cost nothing.
    fn sample(&mut self, count: usize, except: MemberId, alive_only: bool) -> Vec<MemberId> {
        let mut chosen = Vec::with_capacity(count);
        let n = self.ring.len() as u64;
        if n == 0 {
            return chosen;
        }
        for _ in 0..(count * 4 + 8) {
            if chosen.len() == count {
                break;
            }
            let pick = self.random(n) as usize;
            let id = self.ring[pick];
            if id == self.me || id == except || chosen.contains(&id) {
                continue;
            }
            if alive_only && self.members.get(&id).is_none_or(|m| m.liveness != Liveness::Alive) {
                continue;
            }
            chosen.push(id);
        }
        if chosen.len() < count && n <= 64 {
            // Small groups: a scan finds whoever sampling missed.
            let ring = self.ring.clone();
            for id in ring {
                if chosen.len() == count {
                    break;
                }
                let eligible = id != self.me
                    && id != except
                    && !chosen.contains(&id)
                    && (!alive_only || self.members.get(&id).is_some_and(|m| m.liveness == Liveness::Alive));
                if eligible {
                    chosen.push(id);
                }
            }
        }
        chosen
    }

    /// The member this one probes in the period containing `now`: the one `offset` places after
    /// it in the shared order, the offset a hash of the period number.
    fn probe_target(&self, now: u64) -> Option<MemberId> {
        let n = self.ring.len() as u64;
        if n < 2 {
            return None;
        }
        let period = now / self.cfg.probe_interval_us;
        let offset = 1 + scramble(period ^ 0x5157_494D) % (n - 1);
        let me = self.ring.binary_search_by_key(&(scramble(self.me), self.me), |&id| (scramble(id), id)).ok()?;
        Some(self.ring[((me as u64 + offset) % n) as usize])
    }

    fn start_probe(&mut self, now: u64) {
        let Some(target) = self.probe_target(now) else { return };
        let seq = self.next_seq();
        let timeout = self.scaled(self.cfg.probe_timeout_us);
        let indirect = self.scaled(self.cfg.indirect_timeout_us);
        let resend_us = self.cfg.resend_probes.then_some(now + timeout / 2);
        self.probe = Some(Probe {
            seq,
            target,
            resend_us,
            direct_deadline_us: now + timeout,
            indirect_deadline_us: now + timeout + indirect,
            relays_asked: 0,
            nacks: 0,
            acked: false,
        });
        self.stats.probes += 1;
        let mut updates = self.piggyback(Some(target));
        if let Some(suspicion) = self.suspicions.get(&target) {
            // Lifeguard's buddy system: a suspect learns of the suspicion from whoever probes it,
            // even after gossip has stopped carrying it.
            if !updates.iter().any(|u| u.member == target) {
                let (incarnation, meta) =
                    self.members.get(&target).map_or((0, Bytes::new()), |m| (m.incarnation, m.meta.clone()));
                let by = suspicion.accusers.first().copied().unwrap_or(self.me);
                updates.insert(0, Update { member: target, incarnation, liveness: Liveness::Suspect, by, meta });
            }
        }
        self.send(target, Message::Ping { seq, target, updates });
    }

    fn ask_relays(&mut self, now: u64) {
        let Some(probe) = self.probe.as_ref() else { return };
        let (seq, target) = (probe.seq, probe.target);
        let relays = self.sample(self.cfg.indirect_checks, target, true);
        let indirect = self.scaled(self.cfg.indirect_timeout_us);
        if let Some(probe) = self.probe.as_mut() {
            probe.relays_asked = relays.len().max(1) as u32;
            probe.indirect_deadline_us = now + indirect;
        }
        for relay in relays {
            let updates = self.piggyback(Some(relay));
            self.send(relay, Message::PingReq { seq, target, updates });
        }
    }

    fn finish_probe(&mut self) {
        let Some(probe) = self.probe.take() else { return };
        if probe.acked {
            return;
        }
        self.stats.failed_probes += 1;
        // Lifeguard: a failed probe, and each relay that did not even nack, hint that the
        // problem may be ours.
        let missing_nacks = if probe.relays_asked > 0 { probe.relays_asked.saturating_sub(probe.nacks) } else { 0 };
        self.bump_health(1 + missing_nacks.min(1));
        let Some(m) = self.members.get(&probe.target) else { return };
        if m.liveness != Liveness::Alive && m.liveness != Liveness::Suspect {
            return;
        }
        let update = Update {
            member: probe.target,
            incarnation: m.incarnation,
            liveness: Liveness::Suspect,
            by: self.me,
            meta: m.meta.clone(),
        };
        self.stats.suspicions_raised += 1;
        self.merge(update, self.me);
    }

    fn relays_due(&mut self, now: u64) {
        // A relayed ping unanswered after half its time is sent once more, as a direct one is.
        let resends: Vec<(u32, MemberId)> = self
            .relays
            .iter_mut()
            .filter(|r| r.resend_us.is_some_and(|at| now >= at) && now < r.deadline_us)
            .map(|r| {
                r.resend_us = None;
                (r.seq, r.target)
            })
            .collect();
        for (seq, target) in resends {
            self.stats.resent_probes += 1;
            let updates = self.piggyback(Some(target));
            self.send(target, Message::Ping { seq, target, updates });
        }
        let mut i = 0;
        while i < self.relays.len() {
            if self.relays[i].deadline_us <= now {
                let relay = self.relays.swap_remove(i);
                self.send(relay.requester, Message::Nack { seq: relay.requester_seq });
            } else {
                i += 1;
            }
        }
    }

    // ------------------------------------------------------------------ anti-entropy

    fn sync_due(&mut self, now: u64) {
        if now >= self.next_sync_us {
            self.next_sync_us = now + self.cfg.sync_interval_us;
            self.sync_pending = Some((now, 3));
        }
        let Some((retry_at, retries)) = self.sync_pending else { return };
        if now < retry_at {
            return;
        }
        self.sync_pending = if retries > 0 { Some((now + self.cfg.probe_interval_us, retries - 1)) } else { None };
        if let Some(&peer) = self.sample(1, self.me, true).first() {
            let updates = self.table();
            self.send(peer, Message::Sync { updates, reply: true });
        } else {
            self.sync_pending = None;
        }
    }

    fn reconnect_due(&mut self, now: u64) {
        if now < self.next_reconnect_us {
            return;
        }
        self.next_reconnect_us = now + self.cfg.reconnect_interval_us;
        let dead: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(&id, m)| id != self.me && m.liveness == Liveness::Dead)
            .map(|(&id, _)| id)
            .collect();
        if dead.is_empty() {
            return;
        }
        let peer = dead[self.random(dead.len() as u64) as usize];
        self.stats.reconnects += 1;
        let updates = self.table();
        self.send(peer, Message::Sync { updates, reply: true });
    }

    /// This member's whole table, as updates.
    fn table(&self) -> Vec<Update> {
        let mut table: Vec<Update> = self
            .members
            .iter()
            .map(|(&member, m)| Update {
                member,
                incarnation: m.incarnation,
                liveness: m.liveness,
                by: self.suspicions.get(&member).and_then(|s| s.accusers.first().copied()).unwrap_or(self.me),
                meta: m.meta.clone(),
            })
            .collect();
        table.sort_unstable_by_key(|u| u.member);
        table
    }

    /// A table entry from anti-entropy. A death there is only taken as a suspicion (memberlist
    /// does the same): a member must not die for good on one peer's possibly old word.
    fn merge_synced(&mut self, mut update: Update, from: MemberId) {
        if update.liveness == Liveness::Dead && update.member != self.me {
            update.liveness = Liveness::Suspect;
            update.by = from;
        }
        self.merge(update, from);
    }

    // ------------------------------------------------------------------ beliefs

    fn merge_all(&mut self, updates: Vec<Update>, from: MemberId) {
        for update in updates {
            self.merge(update, from);
        }
    }

    /// Applies one update by SWIM's precedence rules; news is queued for gossip.
    fn merge(&mut self, update: Update, _from: MemberId) {
        if update.member == self.me {
            self.merge_about_me(update);
            return;
        }
        let member = update.member;
        let Some(known) = self.members.get(&member) else {
            // A member we never heard of: only its being alive teaches us anything.
            if matches!(update.liveness, Liveness::Alive | Liveness::Suspect) {
                self.members.insert(
                    member,
                    Member { incarnation: update.incarnation, liveness: Liveness::Alive, meta: update.meta.clone() },
                );
                self.rebuild_ring();
                self.emit(member, Liveness::Alive, update.incarnation);
                if update.liveness == Liveness::Suspect {
                    self.merge(update, _from);
                } else {
                    self.enqueue(update, true);
                }
            }
            return;
        };
        let (incarnation, liveness) = (known.incarnation, known.liveness);
        match update.liveness {
            Liveness::Alive => {
                let newer = update.incarnation > incarnation;
                // A member we learnt of by name only (incarnation 0, no description) takes the
                // first full announcement.
                let fills_in = update.incarnation == incarnation && known.meta.is_empty() && !update.meta.is_empty();
                if !newer && !fills_in {
                    return;
                }
                let m = self.members.get_mut(&member).expect("known");
                m.incarnation = update.incarnation;
                m.liveness = Liveness::Alive;
                m.meta = update.meta.clone();
                self.suspicions.remove(&member);
                if liveness.is_gone() {
                    self.rebuild_ring();
                }
                if liveness != Liveness::Alive || newer {
                    self.emit(member, Liveness::Alive, update.incarnation);
                }
                self.enqueue(update, true);
            }
            Liveness::Suspect => {
                if (update.incarnation, Liveness::Suspect) < (incarnation, liveness) {
                    return;
                }
                if liveness == Liveness::Suspect && update.incarnation == incarnation {
                    self.confirm(member, update);
                    return;
                }
                let m = self.members.get_mut(&member).expect("known");
                m.incarnation = update.incarnation;
                m.liveness = Liveness::Suspect;
                if !update.meta.is_empty() {
                    m.meta = update.meta.clone();
                }
                if liveness.is_gone() {
                    self.rebuild_ring();
                }
                let now = self.now_us;
                let deadline_us = now + self.suspicion_timeout(0);
                self.suspicions.insert(member, Suspicion { since_us: now, accusers: vec![update.by], deadline_us });
                self.emit(member, Liveness::Suspect, update.incarnation);
                self.enqueue(update, true);
            }
            Liveness::Dead | Liveness::Left => {
                if (update.incarnation, update.liveness) <= (incarnation, liveness) {
                    return;
                }
                let m = self.members.get_mut(&member).expect("known");
                m.incarnation = update.incarnation;
                m.liveness = update.liveness;
                if !update.meta.is_empty() {
                    m.meta = update.meta.clone();
                }
                self.suspicions.remove(&member);
                if !liveness.is_gone() {
                    self.rebuild_ring();
                }
                self.emit(member, update.liveness, update.incarnation);
                self.enqueue(update, true);
            }
        }
    }

    /// Another independent accuser of a member already suspected at this incarnation: the
    /// timeout shrinks (Lifeguard).
    fn confirm(&mut self, member: MemberId, update: Update) {
        let expected = self.expected_confirmations();
        let Some(suspicion) = self.suspicions.get_mut(&member) else { return };
        if suspicion.accusers.contains(&update.by) || suspicion.accusers.len() > expected {
            return;
        }
        suspicion.accusers.push(update.by);
        let confirmations = suspicion.accusers.len() - 1;
        let since = suspicion.since_us;
        let deadline = since + self.suspicion_timeout(confirmations);
        if let Some(suspicion) = self.suspicions.get_mut(&member) {
            suspicion.deadline_us = deadline;
        }
        // Passed on, so others' timers shrink too; not pushed: it changes no one's belief.
        self.enqueue(update, false);
    }

    fn merge_about_me(&mut self, update: Update) {
        match update.liveness {
            Liveness::Alive => {
                if update.incarnation > self.incarnation {
                    // Others remember a later life of ours (we restarted): outbid it.
                    self.bump_incarnation(update.incarnation + 1);
                }
            }
            Liveness::Suspect | Liveness::Dead | Liveness::Left => {
                if self.left || update.incarnation < self.incarnation {
                    return;
                }
                self.stats.refutations += 1;
                // Being suspected is itself a hint that we are the slow one.
                self.bump_health(1);
                self.bump_incarnation(update.incarnation + 1);
            }
        }
    }

    fn bump_incarnation(&mut self, incarnation: Incarnation) {
        self.incarnation = incarnation.max(self.incarnation);
        let me = self.members.get_mut(&self.me).expect("a member knows itself");
        me.incarnation = self.incarnation;
        me.meta = self.meta.clone();
        let update = Update {
            member: self.me,
            incarnation: self.incarnation,
            liveness: Liveness::Alive,
            by: self.me,
            meta: self.meta.clone(),
        };
        self.enqueue(update, true);
    }

    /// Expected independent confirmations of a real failure: the relays a prober asks.
    fn expected_confirmations(&self) -> usize {
        let others = self.live_count().saturating_sub(2);
        self.cfg.indirect_checks.min(others)
    }

    fn suspicion_timeout(&self, confirmations: usize) -> u64 {
        let n = self.live_count().max(1) as f64;
        let min = self.cfg.suspicion_min_mult * n.log10().max(1.0) * self.cfg.probe_interval_us as f64;
        let max = self.cfg.suspicion_max_mult * min;
        let expected = self.expected_confirmations();
        let timeout = if expected == 0 {
            min
        } else {
            let fraction = ((confirmations as f64) + 1.0).ln() / ((expected as f64) + 1.0).ln();
            (max - (max - min) * fraction).max(min)
        };
        timeout as u64
    }

    fn emit(&mut self, member: MemberId, liveness: Liveness, incarnation: Incarnation) {
        self.events.push(Event { member, liveness, incarnation });
    }

    // ------------------------------------------------------------------ dissemination

    /// Queues an update for piggybacking (replacing older news of the same member); `push`
    /// marks it as news to spread at once.
    fn enqueue(&mut self, update: Update, push: bool) {
        self.queued_seq += 1;
        let push = push && self.cfg.gossip_fanout > 0;
        if let Some(queued) = self.queue.iter_mut().find(|q| q.update.member == update.member) {
            let queued_at = self.queued_seq;
            *queued = Queued { update, transmits: 0, queued_at, push: push || queued.push };
        } else {
            let queued_at = self.queued_seq;
            self.queue.push(Queued { update, transmits: 0, queued_at, push });
        }
    }

    fn transmit_limit(&self) -> u32 {
        let n = self.live_count() as f64;
        self.cfg.retransmit_mult * ((n + 1.0).log10().ceil().max(1.0) as u32)
    }

    /// Updates to ride on a message to `to`: news of `to` itself first (so a suspect hears it is
    /// suspected from whoever probes it), then the least-sent.
    fn piggyback(&mut self, to: Option<MemberId>) -> Vec<Update> {
        if self.queue.is_empty() {
            return Vec::new();
        }
        let limit = self.transmit_limit();
        // Ties among the least-sent go by a hash salted afresh for each message: under a storm
        // of news (heavy loss suspects many) a fixed order, by member id, would starve the same
        // members' news every time.
        let salt = self.random(u64::MAX);
        self.queue.sort_by_key(|q| (Some(q.update.member) != to, q.transmits, scramble(q.update.member ^ salt)));
        let take = self.queue.len().min(self.cfg.max_piggyback);
        // Under a storm fresh news fills every slot and older news never finishes spreading:
        // a quarter of the slots go to the oldest queued updates instead.
        let fresh = if self.queue.len() > take { take - take / 4 } else { take };
        if fresh < take {
            self.queue[fresh..].sort_by_key(|q| q.queued_at);
        }
        let mut updates = Vec::with_capacity(take);
        let mut bytes = 0;
        for queued in self.queue.iter_mut().take(take) {
            // An update that does not fit is skipped, not a stop: the oldest news at the end
            // keeps its share when a big description fills the fresh slots.
            let size = wire::update_bytes(&queued.update);
            if bytes + size > self.cfg.max_piggyback_bytes && !updates.is_empty() {
                continue;
            }
            bytes += size;
            queued.transmits += 1;
            updates.push(queued.update.clone());
        }
        self.queue.retain(|q| q.transmits < limit);
        updates
    }

    /// Rumour mongering: news not yet pushed goes, in one message, to `gossip_fanout` random
    /// live members.
    fn flush_push(&mut self) {
        if !self.queue.iter().any(|q| q.push) {
            self.next_push_us = u64::MAX;
            return;
        }
        let allowed_at = self.last_push_us.map_or(0, |at| at + self.cfg.gossip_interval_us);
        if self.now_us < allowed_at {
            self.next_push_us = allowed_at;
            return;
        }
        self.last_push_us = Some(self.now_us);
        self.next_push_us = u64::MAX;
        let mut news = Vec::new();
        let mut bytes = 0;
        for queued in self.queue.iter_mut().filter(|q| q.push) {
            let size = wire::update_bytes(&queued.update);
            if news.len() == self.cfg.max_piggyback || (bytes + size > self.cfg.max_piggyback_bytes && !news.is_empty())
            {
                // Left marked: the next push carries it.
                break;
            }
            bytes += size;
            queued.push = false;
            news.push(queued.update.clone());
        }
        let targets = self.sample(self.cfg.gossip_fanout, self.me, false);
        // The push is on top of the piggybacking budget: members that all learnt the news from
        // one push would otherwise all stop carrying it at once, leaving the few the push
        // missed to anti-entropy.
        for target in targets {
            self.send(target, Message::Gossip { updates: news.clone() });
        }
    }

    fn send(&mut self, to: MemberId, message: Message) {
        debug_assert_ne!(to, self.me, "a member never messages itself");
        self.outbox.push((to, message));
    }
}

#[cfg(test)]
mod tests;
