//! Fair shares: how many replicas each member *should* hold, as exact fractions.
//!
//! Without failure domains the fair share is simply the mean, `replicas / members`. Failure
//! domains cap it: a domain may hold at most `per_domain` replicas of each shard, so its members
//! together hold at most `shards × per_domain` (with one replica per domain per shard, a zone of
//! 2 members among 3 zones of a 3-way-replicated cluster holds a replica of *every* shard, however
//! many members the other zones have). The shares are therefore computed by water-filling:
//! raise one level for every member until a domain hits its cap, freeze that domain at its cap,
//! share the rest among the others, repeat. This is the most even assignment the domains allow,
//! and it is achievable: list every domain's total, in order, along a tape of `shards ×
//! replication` cells and deal cell `i` to shard `i mod shards`; a domain never gets one shard
//! more than `per_domain` times because its total is at most `shards × per_domain`.
//!
//! Fractions, not floats: every process must compute the same thresholds to the last bit.

use std::cmp::Ordering;

/// A non-negative fraction `numer / denom` (`denom > 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    numer: u64,
    denom: u64,
}

impl Share {
    pub(crate) const ZERO: Share = Share { numer: 0, denom: 1 };

    pub(crate) fn new(numer: u64, denom: u64) -> Share {
        assert!(denom > 0, "a share of zero members");
        Share { numer, denom }
    }

    /// ⌊self × numer / denom⌋.
    pub(crate) fn floor_times(self, numer: u64, denom: u64) -> u64 {
        let scaled = u128::from(self.numer) * u128::from(numer);
        let whole = scaled / (u128::from(self.denom) * u128::from(denom.max(1)));
        u64::try_from(whole).unwrap_or(u64::MAX)
    }

    /// ⌈self × numer / denom⌉.
    pub(crate) fn ceil_times(self, numer: u64, denom: u64) -> u64 {
        let scaled = u128::from(self.numer) * u128::from(numer);
        let whole = scaled.div_ceil(u128::from(self.denom) * u128::from(denom.max(1)));
        u64::try_from(whole).unwrap_or(u64::MAX)
    }

    /// ⌊self × per_mille / 1000⌋.
    pub(crate) fn floor_scaled(self, per_mille: u64) -> u64 {
        self.floor_times(per_mille, 1000)
    }

    /// ⌈self × per_mille / 1000⌉.
    pub(crate) fn ceil_scaled(self, per_mille: u64) -> u64 {
        self.ceil_times(per_mille, 1000)
    }

    /// For reports only: decisions use the exact fraction.
    pub(crate) fn to_f64(self) -> f64 {
        self.numer as f64 / self.denom as f64
    }

    pub(crate) fn floor(self) -> u64 {
        self.floor_scaled(1000)
    }

    pub(crate) fn ceil(self) -> u64 {
        self.ceil_scaled(1000)
    }

    /// How far `load` is above this share (negative: below), comparable across shares with
    /// different denominators.
    pub(crate) fn excess(self, load: u64) -> Excess {
        let over = i128::from(load) * i128::from(self.denom) - i128::from(self.numer);
        Excess { over, denom: self.denom }
    }
}

/// `load − share`, kept as the exact fraction `over / denom`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Excess {
    over: i128,
    denom: u64,
}

impl Ord for Excess {
    fn cmp(&self, other: &Excess) -> Ordering {
        // Both denominators are positive, so cross-multiplying keeps the order. The products
        // stay far inside i128: `over` is below 2^64 × 2^64 only in theory, in practice below
        // (replicas × members) < 2^80.
        (self.over * i128::from(other.denom)).cmp(&(other.over * i128::from(self.denom)))
    }
}

impl PartialOrd for Excess {
    fn partial_cmp(&self, other: &Excess) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Excess {
    fn eq(&self, other: &Excess) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Excess {}

/// The fewest replicas of one shard any domain must be allowed to hold so that `replication`
/// replicas fit at all: 1 when there are at least `replication` domains, more only when there
/// are fewer (then the shard spreads over every domain as evenly as their sizes allow).
pub(crate) fn per_domain_limit(domain_sizes: &[u64], replication: u64) -> u64 {
    let fits = |limit: u64| domain_sizes.iter().map(|&size| size.min(limit)).sum::<u64>() >= replication;
    let largest = domain_sizes.iter().copied().max().unwrap_or(0);
    let limit = (1..=largest).find(|&limit| fits(limit)).unwrap_or(largest.max(1));
    debug_assert!(replication == 0 || fits(limit), "replication exceeds the eligible members");
    limit
}

/// Each domain's fair share per member, by water-filling (see the module doc). `domain_sizes`
/// are the eligible members per domain, all positive; the result is indexed like them.
pub(crate) fn water_fill(domain_sizes: &[u64], per_domain: u64, shard_count: u64, replication: u64) -> Vec<Share> {
    assert!(domain_sizes.iter().all(|&size| size > 0), "a domain without eligible members");
    let capacity = |domain: usize| shard_count * domain_sizes[domain].min(per_domain);
    // Ascending by capacity per member: the domains that saturate first come first.
    let mut order: Vec<usize> = (0..domain_sizes.len()).collect();
    order.sort_by(|&a, &b| {
        let left = u128::from(capacity(a)) * u128::from(domain_sizes[b]);
        let right = u128::from(capacity(b)) * u128::from(domain_sizes[a]);
        left.cmp(&right).then(a.cmp(&b))
    });
    let mut shares = vec![Share::ZERO; domain_sizes.len()];
    let mut remaining_replicas = shard_count * replication;
    let mut remaining_members: u64 = domain_sizes.iter().sum();
    let mut uncapped_from = order.len();
    for (position, &domain) in order.iter().enumerate() {
        let size = domain_sizes[domain];
        // Capped when its capacity per member is at most the level the rest would reach.
        let capped = u128::from(capacity(domain)) * u128::from(remaining_members)
            <= u128::from(remaining_replicas) * u128::from(size);
        if !capped {
            uncapped_from = position;
            break;
        }
        shares[domain] = Share::new(capacity(domain), size);
        remaining_replicas -= capacity(domain);
        remaining_members -= size;
    }
    for &domain in &order[uncapped_from..] {
        shares[domain] = Share::new(remaining_replicas, remaining_members);
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(sizes: &[u64], shares: &[Share]) -> (u64, u64) {
        // Sum of size × share, as a floor and a ceiling (the shares are fractions).
        let floor = sizes.iter().zip(shares).map(|(&size, share)| Share::new(share.numer * size, share.denom).floor());
        let ceil = sizes.iter().zip(shares).map(|(&size, share)| Share::new(share.numer * size, share.denom).ceil());
        (floor.sum(), ceil.sum())
    }

    #[test]
    fn without_a_binding_domain_everyone_gets_the_mean() {
        let shares = water_fill(&[4, 4, 4, 4, 4], 1, 640, 3);
        assert!(shares.iter().all(|&share| share == Share::new(1920, 20)));
    }

    #[test]
    fn a_small_zone_among_exactly_rf_zones_holds_one_replica_of_every_shard() {
        // Three zones, RF 3: every shard has exactly one replica per zone.
        let shares = water_fill(&[2, 3, 5], 1, 300, 3);
        assert_eq!(shares[0], Share::new(300, 2));
        assert_eq!(shares[1], Share::new(300, 3));
        assert_eq!(shares[2], Share::new(300, 5));
    }

    #[test]
    fn a_huge_zone_is_capped_and_the_rest_share_the_remainder() {
        // 5 zones, one with 10 of 18 members: at the mean it would hold 10/18 × 3 of each shard's
        // replicas, more than its one per shard.
        let sizes = [10, 2, 2, 2, 2];
        let shares = water_fill(&sizes, 1, 100, 3);
        assert_eq!(shares[0], Share::new(100, 10));
        assert!(shares[1..].iter().all(|&share| share == Share::new(200, 8)));
        assert_eq!(total(&sizes, &shares), (300, 300));
    }

    #[test]
    fn fewer_domains_than_replicas_allow_more_than_one_per_domain() {
        assert_eq!(per_domain_limit(&[5, 5], 3), 2);
        assert_eq!(per_domain_limit(&[1, 10], 5), 4);
        assert_eq!(per_domain_limit(&[1, 1, 1], 3), 1);
        assert_eq!(per_domain_limit(&[7], 3), 3);
    }

    #[test]
    fn scaled_rounding_is_exact() {
        let share = Share::new(1920, 10); // 192
        assert_eq!((share.floor(), share.ceil()), (192, 192));
        assert_eq!(share.floor_scaled(950), 182); // 182.4
        assert_eq!(share.ceil_scaled(1050), 202); // 201.6
        let third = Share::new(1, 3);
        assert_eq!((third.floor(), third.ceil()), (0, 1));
        // 4 − 3.5 = 0.5 is less excess than 4 − 3.33…
        assert!(Share::new(7, 2).excess(4) < Share::new(10, 3).excess(4));
        assert_eq!(Share::new(8, 2).excess(4), Share::new(12, 3).excess(4));
    }
}
