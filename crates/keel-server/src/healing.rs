//! The leader's self-healing loop: a voter the membership protocol confirmed dead for
//! `--replace-dead-after` is replaced by a spare, through the same raft conf changes an operator
//! would propose (MemberAddAsLearner, MemberPromote, MemberRemove). The decisions are
//! `keel_placement::repair::Repairer`'s (pure, tested there); this file only gathers its view —
//! raft's configuration and progress from the driver, liveness and spares from [`crate::gossip`]
//! — and proposes what it returns. It never changes membership any other way, so a detector
//! that is wrong can cost a replacement, never the quorum.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keel_placement::repair::{GroupView, Peer, RepairConfig, RepairStep, Repairer, Spare};
use keel_placement::{MemberId, ShardId};
use keel_raft::{ConfChange, Role};

use crate::api::Shared;
use crate::config::PeerUrl;
use crate::gossip::GossipView;
use crate::machine::{MemberCommand, MemberRecord};

/// How often the leader looks.
const POLL: Duration = Duration::from_millis(200);

/// What the driver tells the healer each poll (only when this member leads).
struct RaftView {
    voters: Vec<(u64, u64)>,
    learners: Vec<(u64, u64)>,
    last_index: u64,
    conf_change_pending: bool,
    records: BTreeMap<u64, MemberRecord>,
}

pub struct Healer {
    pub shared: Arc<Shared>,
    pub gossip: Arc<RwLock<GossipView>>,
    pub replace_dead_after: Duration,
}

impl Healer {
    /// Runs until the runtime stops. With `--replace-dead-after 0` it only reports.
    pub async fn run(self) {
        let start = Instant::now();
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let cfg = RepairConfig {
            replace_dead_after_us: micros(self.replace_dead_after),
            // One replacement at a time, at most one starting per replace-dead-after (and at
            // least a few seconds apart): a wave of deaths is repaired one by one.
            min_interval_us: micros(self.replace_dead_after).clamp(2_000_000, 30_000_000),
            // Restoring the replica count beats waiting for a spare in a new zone: three voters
            // in two zones survive any one member's failure, two voters survive none. A spare in
            // a zone the survivors do not use is still always preferred.
            allow_shared_domain: true,
            ..RepairConfig::default()
        };
        let mut repairer: Option<Repairer> = None;
        let group = self.shared.group;
        loop {
            tokio::time::sleep(POLL).await;
            let raft = self
                .shared
                .inspect(move |node, _| {
                    let raw = node.raw(group)?;
                    let status = raw.status();
                    if status.role != Role::Leader {
                        return None;
                    }
                    let matched = |id: u64| raw.raft().progress_of(id).map_or(0, |p| p.matched);
                    Some(RaftView {
                        voters: status.conf.voters.iter().map(|&id| (id, matched(id))).collect(),
                        learners: status.conf.learners.iter().map(|&id| (id, matched(id))).collect(),
                        last_index: status.last_index,
                        conf_change_pending: raw.raft().conf_change_pending(),
                        records: node.machine(group).map(|m| m.members().clone()).unwrap_or_default(),
                    })
                })
                .await;
            let Ok(Some(raft)) = raft else {
                // Not the leader (or stopping): a later leadership starts from a fresh view.
                repairer = None;
                self.shared.metrics.under_replicated.store(0, Relaxed);
                continue;
            };
            let fresh = repairer.is_none();
            let repairer = repairer.get_or_insert_with(|| Repairer::new(cfg.clone()));
            let now = Instant::now();
            let now_us = micros(now.duration_since(start));
            let (voters, learners, spares) = {
                let gossip = self.gossip.read().expect("gossip view lock");
                let peer = |&(id, matched): &(u64, u64)| Peer {
                    id: MemberId(id),
                    domain: domain(&gossip, id),
                    dead_since_us: gossip.dead_for(id, now).map(|dead| now_us.saturating_sub(micros(dead))),
                    matched,
                };
                let voters: Vec<Peer> = raft.voters.iter().map(peer).collect();
                let learners: Vec<Peer> = raft.learners.iter().map(peer).collect();
                let spares: Vec<Spare> = gossip
                    .spares()
                    .filter(|(id, _)| !raft.records.contains_key(id))
                    .map(|(id, _)| Spare { id: MemberId(id), domain: domain(&gossip, id) })
                    .collect();
                (voters, learners, spares)
            };
            let view = GroupView {
                now_us,
                shard: ShardId(group),
                voters: &voters,
                learners: &learners,
                spares: &spares,
                last_index: raft.last_index,
                conf_change_pending: raft.conf_change_pending,
            };
            if fresh && repairer.in_progress().is_none() {
                // A new leadership: a learner that is a spare (one a previous leader added to
                // replace a dead voter) is adopted, not left beside a second replacement.
                adopt(repairer, &voters, &learners, &self.gossip, now_us);
            }
            let step = repairer.next_step(&view);
            let under = repairer.under_replicated(&view).len() as u64;
            self.shared.metrics.under_replicated.store(under, Relaxed);
            if let Some(step) = step {
                self.carry_out(step).await;
            }
        }
    }

    /// Proposes `step` and does not wait past the proposal's answer: the next poll sees
    /// whether it applied (the repairer infers progress from the view).
    async fn carry_out(&self, step: RepairStep) {
        let (change, command) = match step {
            RepairStep::AddLearner { spare, replacing, shares_domain } => {
                let Some(record) = self.spare_record(spare.0) else { return };
                tracing::warn!(
                    spare = %format!("{:x}", spare.0),
                    name = %record.name,
                    dead = %format!("{:x}", replacing.0),
                    shares_domain,
                    "replacing a dead voter: adding a spare as learner"
                );
                (ConfChange::AddLearner(spare.0), MemberCommand::Add(record))
            }
            RepairStep::Promote { learner, replacing } => {
                tracing::warn!(
                    learner = %format!("{:x}", learner.0),
                    dead = %format!("{:x}", replacing.0),
                    "replacing a dead voter: promoting its caught-up replacement"
                );
                (ConfChange::AddVoter(learner.0), MemberCommand::Promote(learner.0))
            }
            RepairStep::RemoveDead { dead } => {
                tracing::warn!(dead = %format!("{:x}", dead.0), "replacing a dead voter: removing it");
                (ConfChange::Remove(dead.0), MemberCommand::Remove(dead.0))
            }
            RepairStep::RemoveLearner { learner } => {
                tracing::warn!(learner = %format!("{:x}", learner.0), "abandoning a replacement that did not catch up");
                (ConfChange::Remove(learner.0), MemberCommand::Remove(learner.0))
            }
        };
        match self.shared.propose_conf_change(change, &command).await {
            // Answered once applied: counted here, by the member that proposed it, whatever
            // happens to its leadership next.
            Ok(()) => {
                let m = &self.shared.metrics;
                let counter = match step {
                    RepairStep::AddLearner { .. } => &m.replacements_started,
                    RepairStep::Promote { .. } => &m.replacements_promoted,
                    RepairStep::RemoveDead { .. } => &m.replacements_removed,
                    RepairStep::RemoveLearner { .. } => &m.replacements_abandoned,
                };
                counter.fetch_add(1, Relaxed);
            }
            Err(error) => tracing::info!(?step, %error, "a replacement step was not applied (retried later)"),
        }
    }

    /// The member record a spare gets: from what it says of itself, with the id its peer URL
    /// gives (the spare computed its own id the same way, so the two agree).
    fn spare_record(&self, id: u64) -> Option<MemberRecord> {
        let gossip = self.gossip.read().expect("gossip view lock");
        let meta = gossip.members.get(&id)?.meta.clone()?;
        let url = PeerUrl::parse("peer-urls", &meta.peer_url).ok()?;
        let derived = crate::ids::member_id(&self.shared.token, std::slice::from_ref(&url));
        if derived != id {
            tracing::warn!(
                spare = %format!("{id:x}"),
                derived = %format!("{derived:x}"),
                "a spare's id does not match its peer URL; not using it"
            );
            return None;
        }
        Some(MemberRecord {
            id,
            name: meta.name,
            peer_urls: vec![url.to_string()],
            client_urls: meta.client_urls,
            learner: true,
        })
    }
}

/// Adopts the longest-dead voter's replacement a previous leader left as a learner, if any.
fn adopt(repairer: &mut Repairer, voters: &[Peer], learners: &[Peer], gossip: &RwLock<GossipView>, now_us: u64) {
    let Some(dead) = voters.iter().filter_map(|p| p.dead_since_us.map(|since| (since, p.id))).min() else {
        return;
    };
    let gossip = gossip.read().expect("gossip view lock");
    let spare_learner = learners.iter().find(|learner| {
        learner.dead_since_us.is_none()
            && gossip.members.get(&learner.id.0).and_then(|m| m.meta.as_ref()).is_some_and(|meta| meta.spare)
    });
    if let Some(learner) = spare_learner {
        if repairer.adopt(dead.1, learner.id, now_us) {
            tracing::info!(
                dead = %format!("{:x}", dead.1 .0),
                learner = %format!("{:x}", learner.id.0),
                "continuing a replacement a previous leader started"
            );
        }
    }
}

/// A member's failure domain: its `--zone`, else its own (nothing says which members fail
/// together, and on one test machine every member shares a host).
fn domain(gossip: &GossipView, id: u64) -> String {
    match gossip.zone(id).filter(|zone| !zone.is_empty()) {
        Some(zone) => format!("zone:{zone}"),
        None => format!("member:{id:x}"),
    }
}
