//! The baseline to beat: a plain consistent-hash ring with virtual nodes (Karger et al. 1997;
//! Dynamo's and Cassandra's original scheme). Each member owns `virtual_nodes` points; a shard's
//! replicas are the first `replication` distinct members clockwise from the shard's point, and
//! the first of them leads. Stateless: the placement is a pure function of the member set.

/// A ring of members' virtual nodes.
pub struct Ring {
    /// (point, member id), sorted.
    points: Vec<(u64, u64)>,
}

/// SplitMix64's finalizer, as a stand-alone hash (the crate's own is private on purpose).
pub fn mix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Ring {
    pub fn new(members: &[u64], virtual_nodes: u64) -> Ring {
        let mut points: Vec<(u64, u64)> = members
            .iter()
            .flat_map(|&member| {
                (0..virtual_nodes).map(move |node| (mix64(mix64(member) ^ mix64(node ^ 0xA5A5)), member))
            })
            .collect();
        points.sort_unstable();
        Ring { points }
    }

    /// The first `replication` distinct members clockwise from the shard's point.
    pub fn replicas(&self, shard: u64, replication: usize) -> Vec<u64> {
        let start = self.points.partition_point(|&(point, _)| point < mix64(shard ^ 0x5EED));
        let mut replicas = Vec::with_capacity(replication);
        for step in 0..self.points.len() {
            let (_, member) = self.points[(start + step) % self.points.len()];
            if !replicas.contains(&member) {
                replicas.push(member);
                if replicas.len() == replication {
                    break;
                }
            }
        }
        replicas
    }
}
