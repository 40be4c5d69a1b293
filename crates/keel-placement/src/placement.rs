//! [`Placement`]: which members hold each shard's replicas, and which of them leads.

use crate::share::Share;
use crate::{Member, MemberId, PlacementConfig, PlacementError, ShardId, MAX_REPLICATION_FACTOR};

/// "No member" in a slot or a leader field.
pub(crate) const NO_MEMBER: u32 = u32::MAX;

/// An assignment of every shard to its replicas and preferred leader.
///
/// Immutable: [`Placement::recompute`] returns the next one and leaves this one as it was, so a
/// caller can diff the two ([`Placement::changes`]) and carry the difference out (conf changes,
/// leader transfers) at its own pace. Two placements compare equal exactly when they have the
/// same configuration, members and assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub(crate) config: PlacementConfig,
    /// Every member this placement was computed for (eligible or not), sorted by id; replicas
    /// and leaders are indices into it.
    pub(crate) members: Vec<Member>,
    /// Sorted, distinct.
    pub(crate) shards: Vec<ShardId>,
    /// Slots per shard in `slots` and `replica_ids` (at least the replication factor it was
    /// computed with; an assignment given by the caller may be wider).
    pub(crate) stride: usize,
    /// `shards.len() × stride` member indices; shard `i`'s replicas are the first `counts[i]` of
    /// its row, ascending (so ascending by id too).
    pub(crate) slots: Vec<u32>,
    /// The same as `slots`, as ids, so that [`Placement::replicas`] can hand out a slice.
    pub(crate) replica_ids: Vec<MemberId>,
    pub(crate) counts: Vec<u8>,
    /// Per shard: a member index, or `NO_MEMBER` for a shard without replicas.
    pub(crate) leaders: Vec<u32>,
    /// Per member index: replicas held and shards led.
    pub(crate) replica_load: Vec<u32>,
    pub(crate) leader_load: Vec<u32>,
    /// Per member index: its fair share of replicas (zero for ineligible members).
    pub(crate) shares: Vec<Share>,
}

/// One shard's assignment, as [`Placement::iter`] yields it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardView<'a> {
    pub shard: ShardId,
    /// Ascending by id.
    pub replicas: &'a [MemberId],
    /// One of `replicas`; None only when the shard has no replica (no eligible member).
    pub leader: Option<MemberId>,
}

/// What to do to one shard to go from one placement to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardChange {
    pub shard: ShardId,
    /// Members that gain a replica (ascending).
    pub added: Vec<MemberId>,
    /// Members that lose their replica (ascending).
    pub removed: Vec<MemberId>,
    pub leader_before: Option<MemberId>,
    pub leader_after: Option<MemberId>,
}

/// A shard's current replicas, as the caller knows them (for [`Placement::from_assignments`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub shard: ShardId,
    pub replicas: Vec<MemberId>,
    pub leader: Option<MemberId>,
}

impl Placement {
    /// No shards, no members: the starting point of a first [`Placement::recompute`].
    pub fn empty(config: PlacementConfig) -> Result<Placement, PlacementError> {
        config.validate()?;
        Ok(Placement {
            config,
            members: Vec::new(),
            shards: Vec::new(),
            stride: config.replication_factor,
            slots: Vec::new(),
            replica_ids: Vec::new(),
            counts: Vec::new(),
            leaders: Vec::new(),
            replica_load: Vec::new(),
            leader_load: Vec::new(),
            shares: Vec::new(),
        })
    }

    /// The placement the cluster actually has (say, read from every group's raft
    /// configuration), so the next recomputation starts from reality rather than from the last
    /// plan. Replicas may break the domain rule or the replication factor; the next
    /// [`Placement::recompute`] repairs that. A missing leader is left missing.
    pub fn from_assignments(
        config: PlacementConfig,
        members: &[Member],
        assignments: impl IntoIterator<Item = Assignment>,
    ) -> Result<Placement, PlacementError> {
        config.validate()?;
        let members = crate::sorted_members(members)?;
        let mut assignments: Vec<Assignment> = assignments.into_iter().collect();
        assignments.sort_by_key(|assignment| assignment.shard);
        if let Some(pair) = assignments.windows(2).find(|pair| pair[0].shard == pair[1].shard) {
            return Err(PlacementError::DuplicateShard(pair[0].shard));
        }
        let widest = assignments.iter().map(|assignment| assignment.replicas.len()).max().unwrap_or(0);
        let stride = config.replication_factor.max(widest);
        let index_of = |shard: ShardId, member: MemberId| {
            members
                .binary_search_by_key(&member, |known| known.id)
                .map(|index| index as u32)
                .map_err(|_| PlacementError::UnknownMember { shard, member })
        };
        let mut placement = Placement::empty(config)?;
        placement.stride = stride;
        for assignment in &assignments {
            let shard = assignment.shard;
            if assignment.replicas.len() > MAX_REPLICATION_FACTOR {
                return Err(PlacementError::TooManyReplicas { shard, count: assignment.replicas.len() });
            }
            let mut row: Vec<u32> =
                assignment.replicas.iter().map(|&member| index_of(shard, member)).collect::<Result<_, _>>()?;
            row.sort_unstable();
            if let Some(pair) = row.windows(2).find(|pair| pair[0] == pair[1]) {
                let member = members[pair[0] as usize].id;
                return Err(PlacementError::DuplicateReplica { shard, member });
            }
            let leader = match assignment.leader {
                None => NO_MEMBER,
                Some(leader) => match index_of(shard, leader) {
                    Ok(index) if row.contains(&index) => index,
                    _ => return Err(PlacementError::LeaderNotReplica { shard, leader }),
                },
            };
            placement.shards.push(shard);
            placement.counts.push(row.len() as u8);
            placement.leaders.push(leader);
            row.resize(stride, NO_MEMBER);
            placement.slots.extend_from_slice(&row);
        }
        placement.shares = crate::recompute::fair_shares(&members, config.replication_factor, placement.shards.len());
        placement.members = members;
        placement.derive();
        Ok(placement)
    }

    /// The same assignment under another configuration (say, a new replication factor); the
    /// next [`Placement::recompute`] applies it.
    pub fn with_config(&self, config: PlacementConfig) -> Result<Placement, PlacementError> {
        config.validate()?;
        let shares = crate::recompute::fair_shares(&self.members, config.replication_factor, self.shards.len());
        Ok(Placement { config, shares, ..self.clone() })
    }

    /// Fills `replica_ids`, `replica_load` and `leader_load` from `slots`, `counts`, `leaders`.
    pub(crate) fn derive(&mut self) {
        let no_id = MemberId(0);
        self.replica_ids = self
            .slots
            .iter()
            .map(|&slot| if slot == NO_MEMBER { no_id } else { self.members[slot as usize].id })
            .collect();
        let mut replica_load = vec![0; self.members.len()];
        let mut leader_load = vec![0; self.members.len()];
        for shard in 0..self.shards.len() {
            for &member in self.row(shard) {
                replica_load[member as usize] += 1;
            }
            if self.leaders[shard] != NO_MEMBER {
                leader_load[self.leaders[shard] as usize] += 1;
            }
        }
        self.replica_load = replica_load;
        self.leader_load = leader_load;
    }

    /// Shard `index`'s replicas as member indices.
    pub(crate) fn row(&self, index: usize) -> &[u32] {
        let start = index * self.stride;
        &self.slots[start..start + usize::from(self.counts[index])]
    }

    pub fn config(&self) -> PlacementConfig {
        self.config
    }

    /// The members this placement was computed for, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every shard placed, ascending.
    pub fn shards(&self) -> &[ShardId] {
        &self.shards
    }

    fn shard_index(&self, shard: ShardId) -> Option<usize> {
        self.shards.binary_search(&shard).ok()
    }

    fn member_index(&self, member: MemberId) -> Option<usize> {
        self.members.binary_search_by_key(&member, |known| known.id).ok()
    }

    /// A shard's replicas, ascending by id; None for a shard this placement does not know.
    pub fn replicas(&self, shard: ShardId) -> Option<&[MemberId]> {
        let index = self.shard_index(shard)?;
        let start = index * self.stride;
        Some(&self.replica_ids[start..start + usize::from(self.counts[index])])
    }

    /// A shard's preferred leader (one of its replicas).
    pub fn leader(&self, shard: ShardId) -> Option<MemberId> {
        let index = self.shard_index(shard)?;
        self.leader_id(index)
    }

    fn leader_id(&self, index: usize) -> Option<MemberId> {
        let leader = self.leaders[index];
        (leader != NO_MEMBER).then(|| self.members[leader as usize].id)
    }

    /// Every shard's assignment, ascending by shard.
    pub fn iter(&self) -> impl Iterator<Item = ShardView<'_>> + '_ {
        (0..self.shards.len()).map(move |index| {
            let start = index * self.stride;
            ShardView {
                shard: self.shards[index],
                replicas: &self.replica_ids[start..start + usize::from(self.counts[index])],
                leader: self.leader_id(index),
            }
        })
    }

    /// Replicas `member` holds (0 for a member this placement does not know).
    pub fn replica_count(&self, member: MemberId) -> u64 {
        self.member_index(member).map_or(0, |index| u64::from(self.replica_load[index]))
    }

    /// Shards `member` is the preferred leader of.
    pub fn leader_count(&self, member: MemberId) -> u64 {
        self.member_index(member).map_or(0, |index| u64::from(self.leader_load[index]))
    }

    /// The number of replicas `member` would hold in a perfectly balanced placement under the
    /// domain rule: the mean, unless failure domains cap it (see the crate doc). For reports
    /// and metrics; the placement itself decides with the exact fraction. 0 for a member this
    /// placement does not know or that is ineligible.
    pub fn fair_share(&self, member: MemberId) -> f64 {
        self.member_index(member).map_or(0.0, |index| self.shares[index].to_f64())
    }

    /// The shards `member` holds a replica of, ascending (a scan of every shard).
    pub fn shards_of(&self, member: MemberId) -> Vec<ShardId> {
        let Some(index) = self.member_index(member) else { return Vec::new() };
        let index = index as u32;
        (0..self.shards.len())
            .filter(|&shard| self.row(shard).contains(&index))
            .map(|shard| self.shards[shard])
            .collect()
    }

    /// What changes, shard by shard, to go from `self` to `next` (shards whose replicas and
    /// leader stay the same are left out). A shard only in `self` shows every replica removed;
    /// one only in `next`, every replica added.
    pub fn changes(&self, next: &Placement) -> Vec<ShardChange> {
        let mut changes = Vec::new();
        let (mut before, mut after) = (self.iter().peekable(), next.iter().peekable());
        loop {
            let (old, new) = match (before.peek(), after.peek()) {
                (None, None) => break,
                (Some(old), Some(new)) if old.shard == new.shard => (before.next(), after.next()),
                (Some(old), Some(new)) if old.shard < new.shard => (before.next(), None),
                (Some(_), None) => (before.next(), None),
                _ => (None, after.next()),
            };
            let shard = old.or(new).map(|view| view.shard).unwrap_or(ShardId(0));
            let old_replicas = old.map_or(&[][..], |view| view.replicas);
            let new_replicas = new.map_or(&[][..], |view| view.replicas);
            let change = ShardChange {
                shard,
                added: new_replicas.iter().filter(|member| !old_replicas.contains(member)).copied().collect(),
                removed: old_replicas.iter().filter(|member| !new_replicas.contains(member)).copied().collect(),
                leader_before: old.and_then(|view| view.leader),
                leader_after: new.and_then(|view| view.leader),
            };
            if !change.added.is_empty() || !change.removed.is_empty() || change.leader_before != change.leader_after {
                changes.push(change);
            }
        }
        changes
    }
}
