//! The faults `keel chaos` injects into a local cluster, on a schedule drawn from its seed.

use std::time::Duration;

use keel_raft::SplitMix64;

/// A kind of fault, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of a member (the leader or any), restarted after a while.
    Kill,
    /// SIGSTOP of a member (a hung process that keeps its sockets), SIGCONT after a while.
    Pause,
    /// Network partition of the peer traffic: one member isolated, or cut one way.
    Partition,
    /// A member's WAL writes become slow (injected in the process; `--unsafe-fault-injection`).
    SlowDisk,
    /// kill -9 of every member at once, all restarted.
    CrashAll,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] =
        [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::SlowDisk, FaultKind::CrashAll];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::SlowDisk => "slow-disk",
            FaultKind::CrashAll => "crash-all",
        }
    }

    pub fn parse_list(text: &str) -> anyhow::Result<Vec<FaultKind>> {
        let mut kinds = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let kind = FaultKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
                anyhow::anyhow!("unknown fault {name:?} (known: kill, pause, partition, slow-disk, crash-all)")
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            anyhow::bail!("--faults names no fault");
        }
        Ok(kinds)
    }
}

/// Which member a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    Follower,
    Any,
}

/// The shape of a partition, around the member hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Cut off from both others, both ways.
    Isolated,
    /// Hears the others but is not heard.
    Mute,
    /// Is heard but hears nobody.
    Deaf,
}

/// One fault as planned: what, whom, how long.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub kind: FaultKind,
    pub target: Target,
    pub shape: Shape,
    /// Healthy time before it.
    pub after: Duration,
    /// How long it lasts.
    pub hold: Duration,
}

/// Draws the next fault from `rng`. Kinds come from `bag`, refilled with every kind in a
/// shuffled order when empty, so a run of a minute sees every kind at least once.
pub fn next(rng: &mut SplitMix64, kinds: &[FaultKind], bag: &mut Vec<FaultKind>) -> Plan {
    if bag.is_empty() {
        bag.extend_from_slice(kinds);
        for i in (1..bag.len()).rev() {
            let j = rng.range(0, i as u64 + 1) as usize;
            bag.swap(i, j);
        }
    }
    let kind = bag.pop().expect("refilled");
    let target = [Target::Leader, Target::Leader, Target::Follower, Target::Any][rng.range(0, 4) as usize];
    let shape = [Shape::Isolated, Shape::Isolated, Shape::Mute, Shape::Deaf][rng.range(0, 4) as usize];
    let after = Duration::from_millis(rng.range(2_000, 5_000));
    let hold = match kind {
        // Fail-slow detection needs a few seconds of slow writes to judge.
        FaultKind::SlowDisk => Duration::from_millis(rng.range(5_000, 8_000)),
        FaultKind::CrashAll => Duration::from_millis(rng.range(300, 1_500)),
        _ => Duration::from_millis(rng.range(1_000, 4_000)),
    };
    Plan { kind, target, shape, after, hold }
}
