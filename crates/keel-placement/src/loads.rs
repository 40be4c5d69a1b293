//! Replica counts per member, with the least count of every failure domain kept current.
//!
//! The candidate search walks the ring from a shard's point and may stop at the first valid
//! member whose load equals the least load any valid member could have. That lower bound is the
//! least "domain minimum" among the domains the shard may still use, which this structure
//! answers in O(replication) from an ordered histogram of domain minimums, while loads change
//! one replica at a time.

use std::collections::BTreeMap;

/// Per-member loads plus, per domain, the least load of its eligible members.
#[derive(Clone, Debug)]
pub(crate) struct Loads {
    load: Vec<u32>,
    domain_of: Vec<u32>,
    /// Eligible members of each domain (member indices).
    domain_members: Vec<Vec<u32>>,
    domain_min: Vec<u32>,
    /// How many members of the domain sit at `domain_min`.
    domain_at_min: Vec<u32>,
    /// Domain minimum → how many domains have it. Domains without eligible members are absent.
    levels: BTreeMap<u32, u32>,
}

impl Loads {
    /// `load[m]` for every member (ineligible ones must be 0), `domain_of[m]` and the eligible
    /// members of each domain.
    pub(crate) fn new(load: Vec<u32>, domain_of: Vec<u32>, domain_members: Vec<Vec<u32>>) -> Loads {
        assert_eq!(load.len(), domain_of.len());
        let domain_count = domain_members.len();
        let mut loads = Loads {
            load,
            domain_of,
            domain_members,
            domain_min: vec![0; domain_count],
            domain_at_min: vec![0; domain_count],
            levels: BTreeMap::new(),
        };
        for domain in 0..domain_count {
            if !loads.domain_members[domain].is_empty() {
                loads.rescan(domain);
                *loads.levels.entry(loads.domain_min[domain]).or_insert(0) += 1;
            }
        }
        loads
    }

    pub(crate) fn get(&self, member: u32) -> u32 {
        self.load[member as usize]
    }

    pub(crate) fn all(&self) -> &[u32] {
        &self.load
    }

    /// One more replica on `member` (which must be eligible).
    pub(crate) fn add(&mut self, member: u32) {
        let domain = self.domain_of[member as usize] as usize;
        let before = self.load[member as usize];
        debug_assert!(before >= self.domain_min[domain], "a load below its domain's minimum");
        self.load[member as usize] = before + 1;
        if before == self.domain_min[domain] {
            self.domain_at_min[domain] -= 1;
            if self.domain_at_min[domain] == 0 {
                // The last member at the minimum moved up: the minimum rises (amortised: each
                // rescan follows |domain| additions at this level).
                self.level_remove(before);
                self.rescan(domain);
                self.level_insert(self.domain_min[domain]);
            }
        }
    }

    /// One replica fewer on `member`.
    pub(crate) fn remove(&mut self, member: u32) {
        let domain = self.domain_of[member as usize] as usize;
        let before = self.load[member as usize];
        assert!(before > 0, "removing a replica from a member that holds none");
        let after = before - 1;
        self.load[member as usize] = after;
        let minimum = self.domain_min[domain];
        if after < minimum {
            self.level_remove(minimum);
            self.level_insert(after);
            self.domain_min[domain] = after;
            self.domain_at_min[domain] = 1;
        } else if after == minimum {
            self.domain_at_min[domain] += 1;
        }
    }

    /// The least load of any member in a domain not listed in `full_domains` (distinct domain
    /// indices): a lower bound on
    /// the load of every member a shard whose `full_domains` are full may still take. None when
    /// every domain is full.
    pub(crate) fn lower_bound(&self, full_domains: &[u32]) -> Option<u32> {
        for (&level, &domains) in &self.levels {
            let blocked = full_domains
                .iter()
                .map(|&domain| domain as usize)
                .filter(|&domain| !self.domain_members[domain].is_empty() && self.domain_min[domain] == level)
                .count();
            if domains as usize > blocked {
                return Some(level);
            }
        }
        None
    }

    fn rescan(&mut self, domain: usize) {
        let members = &self.domain_members[domain];
        let minimum = members.iter().map(|&m| self.load[m as usize]).min().unwrap_or(0);
        let at_minimum = members.iter().filter(|&&m| self.load[m as usize] == minimum).count();
        self.domain_min[domain] = minimum;
        self.domain_at_min[domain] = u32::try_from(at_minimum).unwrap_or(u32::MAX);
    }

    fn level_insert(&mut self, level: u32) {
        *self.levels.entry(level).or_insert(0) += 1;
    }

    fn level_remove(&mut self, level: u32) {
        let Some(count) = self.levels.get_mut(&level) else {
            unreachable!("domain minimum {level} missing from the histogram");
        };
        *count -= 1;
        if *count == 0 {
            self.levels.remove(&level);
        }
    }

    /// Recomputes everything from the loads and compares: the incremental bookkeeping must agree
    /// with a rescan.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn is_consistent(&self) -> bool {
        let fresh = Loads::new(self.load.clone(), self.domain_of.clone(), self.domain_members.clone());
        fresh.domain_min == self.domain_min && fresh.domain_at_min == self.domain_at_min && fresh.levels == self.levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_bound(load: &[u32], domain_of: &[u32], full: &[u32]) -> Option<u32> {
        (0..load.len()).filter(|&m| !full.contains(&domain_of[m])).map(|m| load[m]).min()
    }

    proptest! {
        #[test]
        fn bookkeeping_matches_a_rescan(
            domains in 1u32..6,
            members in 1usize..24,
            steps in proptest::collection::vec((any::<u16>(), any::<bool>()), 0..300),
            full in proptest::collection::vec(0u32..6, 0..3),
        ) {
            let domain_of: Vec<u32> = (0..members).map(|m| m as u32 % domains).collect();
            let mut domain_members = vec![Vec::new(); domains as usize];
            for (m, &d) in domain_of.iter().enumerate() {
                domain_members[d as usize].push(m as u32);
            }
            // As the caller passes them: distinct, existing domains.
            let mut full: Vec<u32> = full.into_iter().filter(|&domain| domain < domains).collect();
            full.sort_unstable();
            full.dedup();
            let mut loads = Loads::new(vec![0; members], domain_of.clone(), domain_members);
            for (pick, add) in steps {
                let member = u32::from(pick) % members as u32;
                if add || loads.get(member) == 0 {
                    loads.add(member);
                } else {
                    loads.remove(member);
                }
                prop_assert!(loads.is_consistent());
                prop_assert_eq!(loads.lower_bound(&full), naive_bound(loads.all(), &domain_of, &full));
            }
        }
    }
}
