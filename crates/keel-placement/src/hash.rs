//! The fixed hashes placement breaks ties with.
//!
//! They are part of the placement's *definition*: two processes (or two versions of keel) that
//! hashed differently would compute different placements from the same inputs. So they are
//! written out here rather than borrowed from the standard library (whose hasher is seeded per
//! process), and `tests::hashes_are_pinned` fails if anyone changes them.

/// SplitMix64's finalizer (Steele, Lea, Flood, "Fast splittable pseudorandom number
/// generators", 2014): a bijection on `u64` whose output bits each depend on every input bit.
pub(crate) fn mix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// Salts keep the two uses independent.
const WALK_SALT: u64 = 0x6B65_656C_2D77_6C6B; // "keel-wlk"
const AFFINITY_SALT: u64 = 0x6B65_656C_2D61_6666; // "keel-aff"

/// The order in which the search for a shard's `ordinal`-th replica visits `len` candidates:
/// from `start`, in steps of `stride`, which is coprime with `len` so that every candidate is
/// visited exactly once.
///
/// Why not a ring (each candidate at a hashed point, walked clockwise)? A walk that skips the
/// domains a shard already uses lands on whoever follows a run of skipped members, so on a
/// ring a member that sits behind many zone-A members is picked disproportionately often as
/// the partner of zone-A replicas. That correlation is invisible in the load figures but
/// concentrates a leaver's re-replication on a few zones. With a stride drawn per shard and
/// replica, "who comes before whom" changes from one search to the next and averages out.
pub(crate) fn walk(shard: u64, ordinal: u64, len: usize) -> (usize, usize) {
    if len == 0 {
        return (0, 1);
    }
    let seed = mix64(mix64(shard ^ WALK_SALT) ^ ordinal.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let start = (seed % len as u64) as usize;
    if len <= 2 {
        return (start, 1);
    }
    // Stride in 1..len; stepping it up until coprime ends at 1 at the latest.
    let mut stride = 1 + (mix64(seed) % (len as u64 - 1)) as usize;
    while greatest_common_divisor(stride, len) != 1 {
        stride = stride % (len - 1) + 1;
    }
    (start, stride)
}

fn greatest_common_divisor(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Rendezvous (highest-random-weight) score of a member for a shard: among otherwise equal
/// choices, the member with the highest score wins, on every process alike.
pub(crate) fn affinity(shard: u64, member: u64) -> u64 {
    mix64(mix64(shard ^ AFFINITY_SALT) ^ member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_pinned() {
        // Changing any of these changes every placement keel computes: a mixed-version cluster
        // would then disagree about where shards live. Change them only with a migration plan.
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix64(1), 0x910A_2DEC_8902_5CC1);
        assert_eq!(affinity(3, 9), 0xE3FD_2896_1EBC_49FA);
        assert_eq!(walk(3, 0, 1000), (538, 661));
        assert_eq!(walk(7, 2, 1009), (614, 400));
    }

    #[test]
    fn a_walk_visits_every_candidate_once() {
        for len in 1..200usize {
            for shard in 0..20u64 {
                let (start, stride) = walk(shard, shard % 3, len);
                let mut seen = vec![false; len];
                let mut position = start;
                for _ in 0..len {
                    assert!(!seen[position], "len {len}: visited {position} twice");
                    seen[position] = true;
                    position = (position + stride) % len;
                }
            }
        }
    }

    #[test]
    fn walks_differ_between_shards_and_replicas() {
        let walks: std::collections::BTreeSet<(usize, usize)> =
            (0..100u64).flat_map(|shard| (0..3).map(move |ordinal| walk(shard, ordinal, 1009))).collect();
        assert!(walks.len() > 290, "{} distinct walks of 300", walks.len());
    }
}
