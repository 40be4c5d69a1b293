//! # keel-placement — which members hold each shard, and which of them leads
//!
//! Sans-IO like `keel-raft`: no clock, no threads, no randomness that is not a fixed hash of
//! the inputs. Given the members (an id, a failure domain such as a zone, and whether it may
//! hold replicas), the shards (raft groups) and a replication factor, it decides every shard's
//! replicas and preferred leader. Whoever drives placement (the server, the simulator) calls
//! [`Placement::recompute`] with the previous placement and the current members and shards,
//! and carries out [`Placement::changes`] at its own pace: conf changes for replicas, leader
//! transfers for leaders. Every process that computes a placement from the same inputs gets
//! the same one, whatever order it listed them in.
//!
//! ```
//! use keel_placement::{Member, MemberId, Placement, PlacementConfig, ShardId};
//!
//! let members: Vec<Member> = (1..=6).map(|id| Member::new(MemberId(id), format!("zone-{}", id % 3))).collect();
//! let shards: Vec<ShardId> = (0..24).map(ShardId).collect();
//! let placement = Placement::empty(PlacementConfig::default())?.recompute(&members, &shards)?;
//! assert!(placement.iter().all(|shard| shard.replicas.len() == 3));
//!
//! // Member 6 dies: only its replicas move, each to a zone its shard does not use yet.
//! let survivors: Vec<Member> = members.iter().map(|m| m.clone().with_eligible(m.id != MemberId(6))).collect();
//! let next = placement.recompute(&survivors, &shards)?;
//! for change in placement.changes(&next) {
//!     assert!(change.removed.iter().all(|&member| member == MemberId(6)));
//! }
//! # Ok::<(), keel_placement::PlacementError>(())
//! ```
//!
//! ## Why not a consistent-hash ring
//!
//! The seeds place data with consistent hashing: members own hashed points ("virtual nodes")
//! on a ring, and a key's replicas are the first distinct members clockwise from its point.
//! It is stateless (every process derives the same answer from the member list) and a join or
//! leave moves about 1/N of the data. But its balance is only statistical: with 256 virtual
//! nodes per member and 64 shards per member, the busiest member holds 1.15–1.3 times the
//! mean number of replicas and leads 1.2–1.4 times the mean number of shards (the example
//! `placement-bench` prints both next to ours), and more virtual nodes only shrink that
//! slowly. Failure domains make it worse (the walk skips members, which biases it), and a
//! leaver's replicas all go to its ring successors.
//!
//! keel's shards are raft groups, and their current replicas are known (raft's own
//! configuration is the record). So placement can be **stateful**: the previous placement is
//! an input. Minimal movement then holds by construction, since whatever may stay stays, and
//! balance comes from *choosing* (the least-loaded valid member) rather than from hashing.
//! Hashes only break ties, so that every process breaks them alike.
//!
//! ## The algorithm
//!
//! One recomputation, from the previous placement:
//!
//! 1. **Carry** every replica whose member is still eligible, and the leader if it stayed.
//! 2. **Trim** shards that break the rules now: more replicas than the replication factor (it was
//!    lowered), or two in one failure domain while there are enough domains (a member was
//!    relabelled, or the assignment came from outside). The replica dropped is on the member
//!    furthest above its fair share; the leader goes last.
//! 3. **Fill** missing replicas shard by shard. Each goes to the least-loaded valid member:
//!    eligible, not holding the shard, in a domain the shard may still use. Ties go to the
//!    first member met on a walk over the members whose start and (coprime) stride are hashes
//!    of (shard, replica ordinal); the walk stops at the first member as light as a lower bound
//!    kept per domain allows, so it is short. The round also has a quota, so that the new
//!    replicas spread: member `m` should receive between ⌊placing × share(m) / replicas⌋ and
//!    ⌈…⌉ of them. Members under their ceiling are preferred, and a levelling pass swaps this
//!    round's new replicas along the shortest chain of receivers (a → b → c: only the ends
//!    change count) until nobody is outside its quota or no valid chain remains.
//! 4. **Rebalance** only members outside the bounded-load band: a member with fewer than
//!    ⌊share × (1 − ε)⌋ replicas is *starved* (a newcomer always is) and takes replicas from the
//!    members furthest above their share until it holds ⌊share⌋. A member with more than
//!    ⌈share × (1 + ε)⌉ hands replicas to the lightest valid members until it holds ⌈share⌉.
//!    Filling to the share and not to the band's edge is hysteresis: the next small change does
//!    not start another round of moves.
//! 5. **Leaders**: a leader stays if it is still a replica; an orphaned shard gets its replica
//!    leading fewest. Members outside the band around λ = shards / eligible members then take
//!    or hand over leaderships, again along the shortest chain of co-replicas. Leader moves
//!    are cheap (a raft leader transfer), so this runs on every recomputation.
//!
//! A first placement is the same computation from [`Placement::empty`]: everything is missing.
//!
//! ## Definitions
//!
//! - **Fair share** of a member ([`Placement::fair_share`]): the mean (replicas / eligible
//!   members), unless failure
//!   domains cap it. A domain may hold at most `limit` replicas of each shard, so its members
//!   together hold at most `shards × limit`. Shares are therefore water-filled: the most even
//!   assignment the domains allow (three zones and RF 3 put one replica of *every* shard in
//!   each zone, so a member of a small zone holds more than the mean; a zone with half the
//!   members holds one replica per shard, and its members less than the mean).
//! - **Domain limit**: 1 while at least `replication` domains have eligible members; with fewer,
//!   the smallest limit that still fits a shard, so replicas spread as evenly as possible.
//! - **Band** (bounded loads): ε = [`PlacementConfig::slack_per_mille`], 5 % by default.
//! - **Join, ideal movement**: the newcomer's fair share, total replicas / new member count.
//! - **Leave, receivers' fair share**: the leaver's replicas / (N − 1) per receiver. Where that
//!   is below one replica, it is taken as 1: nobody can receive less than a whole replica.
//!
//! ## What holds (each pinned by a test in `tests/acceptance`)
//!
//! - Every shard has min(RF, eligible members) distinct replicas, all on eligible members, and
//!   its leader is one of them. Asserted at the end of every recomputation.
//! - No two replicas of a shard share a failure domain while at least RF domains have eligible
//!   members (also asserted).
//! - A replica on a still-eligible member moves only if its shard breaks the rules (step 2) or
//!   some member is outside the band (step 4). A join always is: the newcomer holds nothing, so
//!   it takes about its fair share (at most ⌊share⌋), all of it from others, and nothing else
//!   moves. A leave from a balanced placement moves exactly the leaver's replicas.
//! - Determinism: the output depends on the inputs' contents only. The hashes are written out
//!   in this crate and pinned by a test, because a change to them would make two versions of
//!   keel disagree.
//! - Figures for 64 shards per member and RF 3, over many seeds and N = 10, 100 and 1,000:
//!   replica max/mean ≤ 1.05 and leader max/mean ≤ 1.10; a join moves ≤ 1.1 × the ideal; a
//!   leave's replicas go to ≥ min(N − 1, count) receivers, none receiving more than 1.5 × its
//!   fair share.
//!
//! Where the rules cannot give more:
//!
//! - With exactly RF domains, a shard already uses every other domain, so a leaver's
//!   replicas can only go to the members of its own domain. They spread evenly over those.
//! - With one domain much larger than the others, that domain is capped and its members hold
//!   less than the mean. Balance is then measured against the fair share, not the mean.
//! - Levelling moves only this round's new replicas. If the domain rule leaves no valid chain,
//!   a receiver can end above its ceiling. The placement stays valid; only the spread is
//!   worse.
//!
//! ## Complexity
//!
//! For N members, S shards and R replicas per shard:
//!
//! - carrying, trimming, checking and building the result: O(S·R), plus O(N log N) to sort the
//!   members (and O(S log S) if the shards are not passed in order);
//! - each new replica: a walk that usually ends within a few steps and never takes more than N;
//! - levelling and leader chains: breadth-first searches over members, O(placed × N) and
//!   O(S·R) per remaining violation, run only for the few violations the direct choice left;
//! - rebalancing: O(S·R) to index which member holds what, then O(replicas per member) per move.
//!
//! For N = 1,000 and 64,000 shards, a recomputation after a join or a leave takes a few
//! milliseconds and a first placement a few tens (`placement-bench` prints both).
//!
//! ## Replacing one dead voter
//!
//! [`Placement::replacement`] answers the single-group question the server asks before full
//! multi-raft placement exists: which spare should replace a dead replica of this shard? It
//! prefers a domain none of the survivors uses, then the least-loaded member, then a
//! rendezvous hash. If every spare shares a domain with a survivor, it still names the best
//! one, marked [`Replacement::SharedDomain`], and the caller's policy decides. It returns
//! None only when there is no spare at all. [`Placement::from_assignments`] builds the
//! placement to ask from the groups' actual configurations.
//!
//! [`repair::Repairer`] builds on it: the raft leader's decision of the next conf change
//! (add the spare as a learner, promote it once caught up, remove the dead voter) that heals
//! its group, one replacement at a time, never at the cost of the group's live majority.

mod hash;
mod loads;
mod placement;
mod recompute;
pub mod repair;
mod replacement;
mod share;

use std::fmt;

pub use placement::{Assignment, Placement, ShardChange, ShardView};
pub use repair::{GroupView, Peer, RepairConfig, RepairStats, RepairStep, Repairer, Spare};
pub use replacement::Replacement;

/// The most replicas one shard may have. Raft groups beyond 7 voters buy little (etcd advises
/// at most 7) and every write waits for a majority; 9 leaves room for odd configurations while
/// keeping a shard's replicas in a fixed-size array on the hot path.
pub const MAX_REPLICATION_FACTOR: usize = 9;

/// A member (a keel server process) by its cluster-wide id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub u64);

/// A shard (one raft group) by its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u64);

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member {}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// A member as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    /// Its failure domain: members that can fail together (a zone, a rack, a host) share one.
    /// A member with nothing better to give should use its host name: then no two members on
    /// one machine hold replicas of the same shard.
    pub domain: String,
    /// Whether it may hold replicas. An ineligible member (dead, draining, being decommissioned)
    /// holds none after the next recomputation.
    pub eligible: bool,
}

impl Member {
    /// An eligible member.
    pub fn new(id: MemberId, domain: impl Into<String>) -> Member {
        Member { id, domain: domain.into(), eligible: true }
    }

    /// The same member, eligible or not.
    pub fn with_eligible(self, eligible: bool) -> Member {
        Member { eligible, ..self }
    }
}

/// What a placement aims for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacementConfig {
    /// Replicas per shard (fewer only while fewer members are eligible).
    pub replication_factor: usize,
    /// ε of the bounded-load band, in thousandths: replicas move to rebalance only when a
    /// member holds fewer than ⌊share × (1 − ε)⌋ or more than ⌈share × (1 + ε)⌉, and leaders
    /// likewise. Larger means fewer moves and looser balance.
    pub slack_per_mille: u32,
}

impl Default for PlacementConfig {
    fn default() -> PlacementConfig {
        PlacementConfig { replication_factor: 3, slack_per_mille: 50 }
    }
}

impl PlacementConfig {
    fn validate(&self) -> Result<(), PlacementError> {
        if !(1..=MAX_REPLICATION_FACTOR).contains(&self.replication_factor) {
            return Err(PlacementError::ReplicationFactor(self.replication_factor));
        }
        if self.slack_per_mille > 1000 {
            return Err(PlacementError::Slack(self.slack_per_mille));
        }
        Ok(())
    }
}

/// Inputs placement refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replication factor {0} is outside 1..={MAX_REPLICATION_FACTOR}")]
    ReplicationFactor(usize),
    #[error("balance slack {0}‰ is above 1000‰")]
    Slack(u32),
    #[error("{0} is listed twice")]
    DuplicateMember(MemberId),
    #[error("{0} is assigned twice")]
    DuplicateShard(ShardId),
    #[error("{shard} names {member}, which is not in the member list")]
    UnknownMember { shard: ShardId, member: MemberId },
    #[error("{shard} lists {member} twice")]
    DuplicateReplica { shard: ShardId, member: MemberId },
    #[error("{shard} has {count} replicas, more than {MAX_REPLICATION_FACTOR}")]
    TooManyReplicas { shard: ShardId, count: usize },
    #[error("{shard}'s leader {leader} is not one of its replicas")]
    LeaderNotReplica { shard: ShardId, leader: MemberId },
}

/// Members sorted by id, so that the order they were given in cannot change the result.
fn sorted_members(members: &[Member]) -> Result<Vec<Member>, PlacementError> {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|member| member.id);
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].id == pair[1].id) {
        return Err(PlacementError::DuplicateMember(pair[0].id));
    }
    Ok(sorted)
}
