//! Choosing a spare for one shard whose replica died: the single-group case of automatic
//! re-replication, usable before (and without) a full [`Placement::recompute`].

use std::cmp::Reverse;

use crate::hash::affinity;
use crate::{Member, MemberId, Placement, ShardId};

/// The spare [`Placement::replacement`] picked, and whether it keeps the domain rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// In a failure domain no surviving replica of the shard uses: the shard keeps one replica
    /// per domain.
    NewDomain(MemberId),
    /// Every candidate shares a failure domain with a surviving replica (say, a whole zone is
    /// down and only two zones remain); this one shares with the fewest. Restoring the replica
    /// count this way buys tolerance of one more *member* failure at the price of a domain
    /// failure taking out two replicas at once: the caller's policy decides whether to take it
    /// now or wait for the domain to come back.
    SharedDomain(MemberId),
}

impl Replacement {
    pub fn member(self) -> MemberId {
        match self {
            Replacement::NewDomain(member) | Replacement::SharedDomain(member) => member,
        }
    }

    pub fn keeps_domain_rule(self) -> bool {
        matches!(self, Replacement::NewDomain(_))
    }
}

impl Placement {
    /// A spare to replace `dead`'s replica of `shard`.
    ///
    /// `members` is the current member list, as for [`Placement::recompute`]; candidates are its
    /// eligible members other than `dead` and the shard's surviving replicas. The choice, in
    /// order: a domain none of the survivors uses (or, failing that, the domain fewest of them
    /// use), then the fewest replicas held in this placement (so that in a multi-raft cluster
    /// repeated replacements spread out), then the highest rendezvous score of (shard, member),
    /// so every process picks the same spare. Survivors' domains come from `members`, or from
    /// this placement's member list for a survivor no longer in it.
    ///
    /// None only when there is no candidate at all. For a shard this placement does not know,
    /// every candidate is as good as any other domain-wise.
    pub fn replacement(&self, shard: ShardId, dead: MemberId, members: &[Member]) -> Option<Replacement> {
        let survivors: Vec<MemberId> =
            self.replicas(shard).unwrap_or(&[]).iter().copied().filter(|&member| member != dead).collect();
        let known = |id: MemberId| {
            members.iter().find(|member| member.id == id).or_else(|| {
                self.members.binary_search_by_key(&id, |member| member.id).ok().map(|index| &self.members[index])
            })
        };
        let survivor_domains: Vec<&str> =
            survivors.iter().filter_map(|&id| known(id)).map(|member| member.domain.as_str()).collect();
        let mut candidates: Vec<&Member> = members
            .iter()
            .filter(|member| member.eligible && member.id != dead && !survivors.contains(&member.id))
            .collect();
        candidates.sort_by_key(|member| member.id);
        let best = candidates.into_iter().min_by_key(|member| {
            let sharing = survivor_domains.iter().filter(|&&domain| domain == member.domain).count();
            (sharing, self.replica_count(member.id), Reverse(affinity(shard.0, member.id.0)))
        })?;
        let sharing = survivor_domains.contains(&best.domain.as_str());
        Some(if sharing { Replacement::SharedDomain(best.id) } else { Replacement::NewDomain(best.id) })
    }
}
