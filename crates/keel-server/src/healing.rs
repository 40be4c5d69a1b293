//! The leader's self-healing loop: a voter the membership protocol confirmed dead for
//! `--replace-dead-after` is replaced by a spare, through the same raft conf changes an operator
//! would propose (MemberAddAsLearner, MemberPromote, MemberRemove). The decisions are
//! `keel_placement::repair::Repairer`'s (pure, tested there); this file only gathers its view —
//! raft's configuration and progress from the driver, liveness and spares from [`crate::gossip`]
//! — and proposes what it returns. It never changes membership any other way, so a detector
//! that is wrong can cost a replacement, never the quorum.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_host::healing::{self, Healer as Decisions, RaftView, RepairStep};

use crate::api::Shared;
use crate::config::PeerUrl;
use crate::gossip::{process_us, GossipView};

/// How often the leader looks.
const POLL: Duration = Duration::from_millis(200);

pub struct Healer {
    pub shared: Arc<Shared>,
    pub gossip: Arc<RwLock<GossipView>>,
    pub replace_dead_after: Duration,
}

impl Healer {
    /// Runs until the runtime stops. With `--replace-dead-after 0` it only reports.
    pub async fn run(self) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let group = self.shared.group;
        let mut decisions = Decisions::new(group, healing::repair_config(micros(self.replace_dead_after)));
        loop {
            tokio::time::sleep(POLL).await;
            let raft = self
                .shared
                .inspect(move |node, _| {
                    let raft = RaftView::of(node.raw(group)?)?;
                    // The cluster's members by its records, and the removed ones: neither is a
                    // spare, whatever its description says.
                    let not_spares: BTreeSet<u64> = node
                        .machine(group)
                        .map(|m| m.members().keys().chain(m.removed_members()).copied().collect())
                        .unwrap_or_default();
                    Some((raft, not_spares))
                })
                .await;
            let (raft, not_spares) = raft.ok().flatten().unzip();
            let poll = {
                let gossip = self.gossip.read().expect("gossip view lock");
                decisions.poll(process_us(), raft.as_ref(), &gossip, &not_spares.unwrap_or_default())
            };
            if let Some((dead, learner)) = poll.adopted {
                tracing::info!(
                    dead = %format!("{dead:x}"),
                    learner = %format!("{learner:x}"),
                    "continuing a replacement a previous leader started"
                );
            }
            self.shared.metrics.under_replicated.store(poll.under_replicated, Relaxed);
            if let Some(step) = poll.step {
                if !self.carry_out(step).await {
                    // Decided again at the next poll. Safe whatever the failure was: a step that
                    // did reach the log shows in the next view (a pending conf change), and raft
                    // refuses a second one while it is.
                    decisions.refused(step);
                }
            }
        }
    }

    /// Proposes `step` and does not wait past the proposal's answer: the next poll sees
    /// whether it applied (the repairer infers progress from the view). False if it failed.
    async fn carry_out(&self, step: RepairStep) -> bool {
        let spare = match step {
            RepairStep::AddLearner { spare, .. } => self.spare_record(spare.0),
            _ => None,
        };
        let Some((change, command)) = healing::conf_change(step, spare) else { return false };
        match step {
            RepairStep::AddLearner { spare, replacing, shares_domain } => tracing::warn!(
                spare = %format!("{:x}", spare.0),
                dead = %format!("{:x}", replacing.0),
                shares_domain,
                "replacing a dead voter: adding a spare as learner"
            ),
            RepairStep::Promote { learner, replacing } => tracing::warn!(
                learner = %format!("{:x}", learner.0),
                dead = %format!("{:x}", replacing.0),
                "replacing a dead voter: promoting its caught-up replacement"
            ),
            RepairStep::RemoveDead { dead } => {
                tracing::warn!(dead = %format!("{:x}", dead.0), "replacing a dead voter: removing it")
            }
            RepairStep::RemoveLearner { learner } => {
                tracing::warn!(learner = %format!("{:x}", learner.0), "abandoning a replacement that did not catch up")
            }
        }
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
                true
            }
            Err(error) => {
                tracing::info!(?step, %error, "a replacement step was not applied (retried at the next poll)");
                false
            }
        }
    }

    /// The member record a spare gets: from what it says of itself, if the id its peer URL
    /// gives is the one it goes by (the spare computed its own id the same way).
    fn spare_record(&self, id: u64) -> Option<keel_machine::MemberRecord> {
        let gossip = self.gossip.read().expect("gossip view lock");
        healing::spare_record(&gossip, id, |id, meta| {
            let Ok(url) = PeerUrl::parse("peer-urls", &meta.peer_url) else { return false };
            let derived = crate::ids::member_id(&self.shared.token, std::slice::from_ref(&url));
            if derived != id {
                tracing::warn!(
                    spare = %format!("{id:x}"),
                    derived = %format!("{derived:x}"),
                    "a spare's id does not match its peer URL; not using it"
                );
            }
            derived == id
        })
        .map(|mut record| {
            // As the flags write it, so the record matches what the member itself publishes.
            for url in &mut record.peer_urls {
                if let Ok(parsed) = PeerUrl::parse("peer-urls", url) {
                    *url = parsed.to_string();
                }
            }
            record
        })
    }
}
