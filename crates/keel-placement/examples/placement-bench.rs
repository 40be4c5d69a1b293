//! Placement figures, next to a plain consistent-hash ring with 256 virtual nodes.
//!
//! `cargo run --release -p keel-placement --example placement-bench`
//!
//! For N = 10, 100 and 1,000 members in 5 zones, 64 shards per member, RF 3: replica and leader
//! max/mean (keel-placement and the ring), replicas moved by one join against the ideal (the
//! newcomer's fair share), where one leaver's replicas went, and how long a recomputation from
//! the previous placement takes. Times are measurements, printed and never asserted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_placement::{Member, MemberId, Placement, PlacementConfig, ShardId};

#[path = "../tests/acceptance/ring.rs"]
mod ring;

const SHARDS_PER_MEMBER: usize = 64;
const REPLICATION: usize = 3;
const ZONES: u64 = 5;
const VIRTUAL_NODES: u64 = 256;
/// Timed recomputations per figure; the median is printed.
const TIMING_RUNS: usize = 15;

/// A SplitMix64 stream: the bench's inputs are the same on every run.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        ring::mix64(self.0)
    }
}

fn max_over_mean(counts: impl Iterator<Item = u64>) -> f64 {
    let counts: Vec<u64> = counts.collect();
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts.iter().copied().max().unwrap_or(0) as f64 / mean
}

fn median_ms(mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    runs[runs.len() / 2].as_secs_f64() * 1e3
}

fn timed(runs: usize, mut work: impl FnMut() -> Placement) -> (Placement, f64) {
    let mut times = Vec::with_capacity(runs);
    let mut result = None;
    for _ in 0..runs {
        let start = Instant::now();
        result = Some(work());
        times.push(start.elapsed());
    }
    (result.expect("at least one run"), median_ms(times))
}

fn ring_figures(members: &[Member], shards: &[ShardId]) -> (f64, f64) {
    let ids: Vec<u64> = members.iter().map(|member| member.id.0).collect();
    let ring = ring::Ring::new(&ids, VIRTUAL_NODES);
    let mut replicas: BTreeMap<u64, u64> = ids.iter().map(|&id| (id, 0)).collect();
    let mut leaders = replicas.clone();
    for shard in shards {
        let chosen = ring.replicas(shard.0, REPLICATION);
        for member in &chosen {
            *replicas.entry(*member).or_default() += 1;
        }
        *leaders.entry(chosen[0]).or_default() += 1;
    }
    (max_over_mean(replicas.into_values()), max_over_mean(leaders.into_values()))
}

fn main() -> Result<(), keel_placement::PlacementError> {
    let config = PlacementConfig { replication_factor: REPLICATION, ..PlacementConfig::default() };
    println!("{SHARDS_PER_MEMBER} shards per member, RF {REPLICATION}, {ZONES} zones; ring = {VIRTUAL_NODES} virtual nodes per member");
    println!();
    println!("members | replica max/mean: keel  ring | leader max/mean: keel  ring | initial ms");
    let mut churn = Vec::new();
    for members_count in [10usize, 100, 1000] {
        let mut stream = Stream(members_count as u64);
        let members: Vec<Member> = (0..members_count as u64)
            .map(|index| Member::new(MemberId(stream.next()), format!("zone-{}", index % ZONES)))
            .collect();
        let shards: Vec<ShardId> = (0..members_count * SHARDS_PER_MEMBER).map(|_| ShardId(stream.next())).collect();
        let empty = Placement::empty(config)?;
        let (initial, initial_ms) = timed(3, || empty.recompute(&members, &shards).expect("valid inputs"));
        let replica_ratio = max_over_mean(members.iter().map(|member| initial.replica_count(member.id)));
        let leader_ratio = max_over_mean(members.iter().map(|member| initial.leader_count(member.id)));
        let (ring_replicas, ring_leaders) = ring_figures(&members, &shards);
        println!(
            "{members_count:>7} | {replica_ratio:>22.3} {ring_replicas:>5.3} | {leader_ratio:>21.3} {ring_leaders:>5.3} | {initial_ms:>10.1}"
        );
        // A server passes its groups in id order (its group map is ordered), which spares the
        // recomputation a sort: the churn figures below do the same.
        let shards = initial.shards().to_vec();
        churn.push((members, shards, initial, stream));
    }
    println!();
    println!("members | join: moved  ideal  ratio  replica/leader max/mean   ms | leave: moved  others  receivers  max got  fair share   ms");
    for (members, shards, initial, mut stream) in churn {
        let count = members.len();
        let mut joined = members.clone();
        joined.push(Member::new(MemberId(stream.next()), format!("zone-{}", stream.next() % ZONES)));
        let (after_join, join_ms) = timed(TIMING_RUNS, || initial.recompute(&joined, &shards).expect("valid inputs"));
        let moved: usize = initial.changes(&after_join).iter().map(|change| change.added.len()).sum();
        let ideal = (shards.len() * REPLICATION) as f64 / (count + 1) as f64;
        let join_replicas = max_over_mean(joined.iter().map(|member| after_join.replica_count(member.id)));
        let join_leaders = max_over_mean(joined.iter().map(|member| after_join.leader_count(member.id)));

        let leaver = members[(stream.next() % count as u64) as usize].id;
        let remaining: Vec<Member> = members.iter().filter(|member| member.id != leaver).cloned().collect();
        let (after_leave, leave_ms) =
            timed(TIMING_RUNS, || initial.recompute(&remaining, &shards).expect("valid inputs"));
        let changes = initial.changes(&after_leave);
        let moved_leave: usize = changes.iter().map(|change| change.added.len()).sum();
        let others: usize =
            changes.iter().flat_map(|change| &change.removed).filter(|&&member| member != leaver).count();
        let mut received: BTreeMap<MemberId, u64> = BTreeMap::new();
        for member in changes.iter().flat_map(|change| &change.added) {
            *received.entry(*member).or_default() += 1;
        }
        let max_got = received.values().copied().max().unwrap_or(0);
        let fair = (initial.replica_count(leaver) as f64 / (count - 1) as f64).max(1.0);
        println!(
            "{count:>7} | {moved:>11} {ideal:>6.1} {ratio:>6.3} {join_replicas:>13.3} / {join_leaders:<5.3} {join_ms:>7.2} | {moved_leave:>12} {others:>7} {receivers:>10} {max_got:>8} {fair:>11.2} {leave_ms:>5.2}",
            ratio = moved as f64 / ideal,
            receivers = received.len(),
        );
    }
    Ok(())
}
